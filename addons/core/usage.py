"""Token usage as vendors report it: in a JSON body or spread over SSE events; and
asking OpenAI-style chat streams for it without the agent seeing the difference."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import orjson

from egressguard.core import sseframe

_INPUT_KEYS = ("prompt_tokens", "input_tokens", "promptTokenCount")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens", "candidatesTokenCount")
# Where a usage object sits when not at the top: Anthropic message_start, Responses API
# events, Cohere v2 message-end, Groq (which always reports it there).
_HOLDERS = ("message", "response", "delta", "x_groq")
_MAX_SSE_LINE = 1 << 20  # a longer line (or event) is not usage; don't buffer it

# Vendors whose chat completions accept `stream_options.include_usage` and answer it as
# OpenAI does (a last chunk with "choices": [] and the usage, "usage": null on the
# others). Left out: mistral (rejects unknown fields; its last chunk has usage anyway),
# together, openrouter and xai (usage without asking, or a different shape), and
# azure_openai (accepted only from api-version 2024-08-01-preview; older ones answer
# 400 "Unrecognized request argument"). The catalogue may take this over as a flag.
STREAM_USAGE_VENDORS = frozenset({"openai", "groq", "deepseek", "fireworks"})

# `"usage": null` as a member: after another one, or first with one after it
_USAGE_NULL = (re.compile(rb',\s*"usage"\s*:\s*null'), re.compile(rb'"usage"\s*:\s*null\s*,'))


@dataclass(slots=True)
class Usage:
    """Tokens as the vendor counted them.

    The cache counts are Anthropic's, billed on top of `input_tokens`; OpenAI and
    Gemini count cached input inside `input_tokens` and it is not broken out here.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    def merge(self, other: Usage) -> None:
        """Later reports win: streams send partial then final counts."""
        for field in dataclasses.fields(self):
            value = getattr(other, field.name)
            if value is not None:
                setattr(self, field.name, value)

    def as_record(self) -> dict[str, int | None] | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def _int(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    return v if type(v) is int else None  # not a bool


def _first_int(d: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    return next((v for k in keys if (v := _int(d, k)) is not None), None)


def _usage_dict(obj: dict[str, Any]) -> dict[str, Any] | None:
    for holder in (obj, *(obj.get(k) for k in _HOLDERS)):
        if isinstance(holder, dict):
            u = holder.get("usage") or holder.get("usageMetadata")
            if isinstance(u, dict):
                # Cohere v2 reports billed units (what is charged) and raw tokens
                counts = u.get("billed_units") or u.get("tokens")
                return counts if isinstance(counts, dict) else u
    return None


def from_object(obj: Any) -> Usage | None:
    """Usage from one parsed response object or SSE event (OpenAI chat/responses and
    compatibles, Anthropic messages and stream events, Gemini, Cohere v2)."""
    if not isinstance(obj, dict) or (u := _usage_dict(obj)) is None:
        return None
    output = _first_int(u, _OUTPUT_KEYS)
    if (thoughts := _int(u, "thoughtsTokenCount")) is not None:  # Gemini bills as output
        output = (output or 0) + thoughts
    inputs = _first_int(u, _INPUT_KEYS)
    total = _first_int(u, ("total_tokens", "totalTokenCount"))
    if output is None and inputs is not None and total == inputs:
        output = 0  # an embedding: all of it input (OpenAI reports no completion count)
    usage = Usage(inputs, output, _int(u, "cache_read_input_tokens"),
                  _int(u, "cache_creation_input_tokens"))
    return usage if usage.as_record() else None


def from_body(body: bytes) -> Usage | None:
    try:
        return from_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


class SseUsage:
    """Watches a server-sent-event stream chunk by chunk and collects usage.

    Observes only; never changes or holds back the bytes it sees.
    """

    def __init__(self) -> None:
        self.usage = Usage()
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        lines = sseframe.LINE_END.split(data) if b"\r" in data else data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_SSE_LINE:
            self._partial = b""
        for line in lines:
            if line.startswith(b"data:") and b"sage" in line:  # usage / usageMetadata
                try:
                    found = from_object(orjson.loads(line[5:]))
                except orjson.JSONDecodeError:
                    continue
                if found:
                    self.usage.merge(found)


def ask_for_stream_usage(vendor_name: str, endpoint_is_chat: bool, body: dict[str, Any]) -> bool:
    """Make a streamed chat completions request ask for usage (mutating `body`).

    True when egressguard asked and the agent had not (or had said no): the extras
    that brings must then be taken out of the agent's stream (`UsageChunkFilter`).
    """
    if vendor_name not in STREAM_USAGE_VENDORS or not endpoint_is_chat \
            or body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if options is None:
        options = body["stream_options"] = {}
    # the agent asked itself, or sent options the vendor should answer as they are
    if not isinstance(options, dict) or options.get("include_usage") not in (None, False):
        return False
    options["include_usage"] = True
    return True


class UsageChunkFilter:
    """Takes out of an OpenAI-style chat completions stream what `include_usage` adds,
    for an agent that did not ask for it: the last chunk, which carries only usage
    (`"choices": []`), and `"usage": null` in every other chunk.

    A mitmproxy stream callable (an empty chunk marks the end) working per SSE event:
    a complete event goes on at once; only an unfinished one is held back, and past
    _MAX_SSE_LINE bytes it goes on unfiltered (no chunk with usage is that long).
    """

    def __init__(self) -> None:
        self._held = b""

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:
            held, self._held = self._held, b""
            return held
        data = self._held + chunk
        out, start = [], 0
        for end in sseframe.event_ends(data, max(0, len(self._held) - sseframe.LOOK_BACK)):
            out.append(_without_added_usage(data[start:end]))
            start = end
        self._held = data[start:]
        if len(self._held) > _MAX_SSE_LINE:
            out.append(self._held)
            self._held = b""
        return b"".join(out)


def _without_added_usage(event: bytes) -> bytes:
    """One SSE event (with its blank line) as it would have been without include_usage."""
    if b'"usage"' not in event:
        return event
    lead = len(event) - len(event.lstrip(b"\r\n"))  # stray blank lines before it
    line = event[lead:].rstrip(b"\r\n")
    if not line.startswith(b"data:") or b"\n" in line or b"\r" in line:
        return event  # every chat completion chunk is a single data line
    payload = line[5:]
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return event
    if not isinstance(chunk, dict) or "usage" not in chunk:
        return event
    usage = chunk.pop("usage")
    if isinstance(usage, dict) and chunk.get("choices") == []:
        return event[:lead]
    if usage is not None:
        return event
    # Cut the bytes rather than re-serialise, so everything else stays as the vendor
    # wrote it; only if what is left parses to the same chunk minus its usage.
    for pattern in _USAGE_NULL:
        trimmed, found = pattern.subn(b"", payload)
        if found == 1 and orjson.loads(trimmed) == chunk:
            return event[:lead] + b"data:" + trimmed + event[lead + len(line):]
    return event
