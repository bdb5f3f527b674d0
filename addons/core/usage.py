"""Token usage as vendors report it: in a JSON body or spread over SSE events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_INPUT_KEYS = ("prompt_tokens", "input_tokens", "promptTokenCount")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens", "candidatesTokenCount")
_MAX_SSE_LINE = 1 << 20  # a longer line is not usage; don't buffer it


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None

    def merge(self, other: Usage) -> None:
        """Later reports win: streams send partial then final counts."""
        if other.input_tokens is not None:
            self.input_tokens = other.input_tokens
        if other.output_tokens is not None:
            self.output_tokens = other.output_tokens

    def as_record(self) -> dict[str, int | None] | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def _first_int(d: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int):
            return v
    return None


def from_object(obj: Any) -> Usage | None:
    """Usage from one parsed response object or SSE event (OpenAI chat/responses,
    Anthropic messages and stream events, Gemini)."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage") or obj.get("usageMetadata")
    for outer in ("message", "response"):  # anthropic message_start, responses events
        if not u and isinstance(obj.get(outer), dict):
            u = obj[outer].get("usage")
    if not isinstance(u, dict):
        return None
    usage = Usage(_first_int(u, _INPUT_KEYS), _first_int(u, _OUTPUT_KEYS))
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
        lines = data.split(b"\n")
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
