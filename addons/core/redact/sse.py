"""Rewrite the text of a streamed (SSE) answer, per event and per channel of text.

A model writes its answer token by token, so what egressguard must change — a
pseudonym to restore (`<PERSON_1>`), a secret to mask — usually arrives spread over
several events (`<`, `PERSON`, `_1>`; `sk-pro`, `j-Abc…`), and chunk boundaries fall
anywhere besides. `SseRewriter` frames the bytes into events first (an unfinished
event waits for its end) and reads each event's JSON strings per *channel*: where in
the stream a text continues — its path, with list positions replaced by the entries'
`index`/`item_id`…, and the event's `type`.

The changes themselves are `Stage`s. For each new piece of a channel's text a stage
says how much of its end must wait for more (`pending`: `<PER` may become a
pseudonym, `sk-proj-Ab` may become a key), and rewrites the rest (`rewrite`). While a
channel holds text back, its event and every later one are held too; when the next
piece of that channel comes, the held text moves into it and is decided together with
it. So the agent receives the same text, only later, and events keep their order and
number. At most MAX_HELD_EVENTS events or MAX_HELD_BYTES are held; past that, and at
the end of the stream, held text is decided as it stands.

Events with nothing to change go on byte for byte; in the others only the changed
string literals are rewritten. An event whose JSON spans several `data:` lines (no
vendor sends one) is passed on as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from egressguard.core import sseframe
from egressguard.core.redact.jsontext import LITERAL

MAX_HELD_EVENTS = 1024  # a PEM key streamed a few characters per event takes hundreds
MAX_HELD_BYTES = 1 << 20
MAX_EVENT = 4 << 20  # an unfinished event longer than this goes on untouched
CONTEXT = 64  # characters of a channel's released text a stage may look back on
# Fields whose values say which stream of text a string continues (Anthropic block
# `index`, Responses `output_index`/`content_index`/`item_id`, choice and tool-call
# `index`, Gemini thought parts).
_CHANNEL_KEYS = ("index", "output_index", "content_index", "item_id", "thought")
# Strings in a stream that hold JSON text, so a value written into them is escaped
# once more: OpenAI/Cohere tool-call arguments, Anthropic input_json_delta, Responses
# *.arguments.delta events.
_JSON_TEXT_KEYS = frozenset({"arguments", "partial_json"})


class Stage(Protocol):
    """One kind of change to an answer's text."""

    untouched: frozenset[str]  # keys whose strings this stage leaves alone

    def wants(self, raw: bytes) -> bool:
        """Whether an event's bytes may hold work for this stage (a cheap test: an
        event no stage wants, with no text held back, is not parsed, and `before`
        starts afresh after it)."""
        ...

    def pending(self, text: str, before: str) -> int:
        """Where in `text` (a channel's text not yet released) the part starts that
        must wait for more of the channel; len(text) when nothing must. `before` is
        what the channel released last (up to CONTEXT characters)."""
        ...

    def rewrite(self, text: str, before: str, json_text: bool) -> str:
        """`text`, to be released, changed. `json_text`: it sits inside a string that
        holds JSON, so what is written into it needs JSON escaping."""
        ...


class _Event:
    """One SSE event, kept as bytes: a string value that changes is spliced back, as
    a new literal in place of its old one, when the event goes out."""

    __slots__ = ("raw", "sites")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        # (holder, key, start, end, original): a string value and its literal in `raw`
        self.sites: list[tuple[Any, Any, int, int, str]] = []

    def bytes(self) -> bytes:
        out: list[bytes] = []
        done = 0
        for holder, key, start, end, original in self.sites:
            value = holder[key]
            if value != original:
                out += (self.raw[done:start], orjson.dumps(value))
                done = end
        if not out:
            return self.raw
        out.append(self.raw[done:])
        return b"".join(out)


@dataclass(slots=True)
class _Channel:
    before: str = ""  # what the channel released last, as the vendor wrote it
    held: str = ""  # the end of holder[key], waiting for the channel's next piece
    holder: Any = None
    key: Any = None
    json_text: bool = False
    stages: tuple[Stage, ...] = ()


class SseRewriter:
    """A mitmproxy stream callable: SSE bytes in, bytes out, `stages` applied to the
    text of every channel in order; an empty chunk marks the end (and flushes what is
    held). `json_output`: the answer's text is itself JSON (`fields.json_output`)."""

    def __init__(self, stages: Sequence[Stage], json_output: bool = False) -> None:
        self._stages = tuple(stages)
        self._json_output = json_output
        self._buffer = b""  # an unfinished event
        self._skipping = False  # inside an oversized event: bytes go on until its end
        self._queue: list[_Event] = []
        self._queued_bytes = 0
        self._channels: dict[tuple[Any, ...], _Channel] = {}
        self._holding = 0  # channels with text held back

    def __call__(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        if not chunk:  # the end
            if self._buffer and not self._skipping:
                self._event(self._buffer, out)
            elif self._buffer:
                out.append(self._buffer)
            self._buffer = b""
            self._settle(out)
            return b"".join(out)
        data = self._buffer + chunk
        start = 0
        for end in sseframe.event_ends(data, max(0, len(self._buffer) - sseframe.LOOK_BACK)):
            if self._skipping:
                out.append(data[start:end])
                self._skipping = False
            else:
                self._event(data[start:end], out)
            start = end
        self._buffer = data[start:]
        if self._skipping or len(self._buffer) > MAX_EVENT:
            self._settle(out)
            keep = self._buffer[-3:]  # may begin the end of the event
            out.append(self._buffer[:-3])
            self._buffer, self._skipping = keep, True
        return b"".join(out)

    def _settle(self, out: list[bytes]) -> None:
        """Decide every held text as it stands and send every held event."""
        if self._holding:
            for state in self._channels.values():
                if state.held:
                    held, state.held = state.held, ""
                    value: str = state.holder[state.key]
                    state.holder[state.key] = value[:-len(held)] + self._rewrite(
                        held, state, state.json_text)
            self._holding = 0
        out.extend(event.bytes() for event in self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    def _event(self, raw: bytes, out: list[bytes]) -> None:
        event = _Event(raw)
        if self._holding or any(stage.wants(raw) for stage in self._stages):
            self._read(event)
        elif self._channels:  # its text goes by unread: what came before is not known
            self._channels.clear()
        if not self._holding and not self._queue:
            out.append(event.bytes())
            return
        self._queue.append(event)
        self._queued_bytes += len(raw)
        if not self._holding:
            out.extend(e.bytes() for e in self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        elif len(self._queue) > MAX_HELD_EVENTS or self._queued_bytes > MAX_HELD_BYTES:
            self._settle(out)

    def _read(self, event: _Event) -> None:
        raw = event.raw
        at = raw.find(b"data:")
        while at > 0 and raw[at - 1:at] not in (b"\n", b"\r"):
            at = raw.find(b"data:", at + 1)
        if at < 0 or raw.find(b"\ndata:", at + 1) >= 0 or raw.find(b"\rdata:", at + 1) >= 0:
            return  # no data, or more than one data line
        start = at + 5 + (raw[at + 5:at + 6] == b" ")
        ends = [e for e in (raw.find(b"\n", start), raw.find(b"\r", start)) if e >= 0]
        end = min(ends) if ends else len(raw)
        try:
            doc = orjson.loads(raw[start:end])
        except orjson.JSONDecodeError:  # [DONE], or not JSON: nothing to read
            return
        kind = doc.get("type") if isinstance(doc, dict) else None
        literals = list(LITERAL.finditer(raw, start, end))
        strings = list(_in_order(doc, kind))
        if len(literals) != len(strings):  # duplicate keys: cannot tell which is which
            return
        arguments_event = isinstance(kind, str) and kind.endswith("arguments.delta")
        for m, site in zip(literals, strings, strict=True):
            if site is None:
                continue
            holder, key, channel = site
            stages = tuple(s for s in self._stages if key not in s.untouched)
            if not stages:
                continue
            event.sites.append((holder, key, m.start(), m.end(), holder[key]))
            json_text = self._json_output or key in _JSON_TEXT_KEYS \
                or (arguments_event and key == "delta")
            self._site(holder, key, channel, json_text, stages)

    def _site(self, holder: Any, key: Any, channel: tuple[Any, ...], json_text: bool,
              stages: tuple[Stage, ...]) -> None:
        state = self._channels.get(channel)
        if state is None:
            if len(self._channels) >= 4096 and not self._holding:
                self._channels.clear()  # a stream of endless item ids: forget their context
            state = self._channels[channel] = _Channel()
        text: str = holder[key]
        if state.held:  # the held text moves here, to be decided with what follows it
            value: str = state.holder[state.key]
            state.holder[state.key] = value[:-len(state.held)]
            text = state.held + text
            state.held = ""
            self._holding -= 1
        state.stages, state.json_text = stages, json_text
        cut = len(text)
        for stage in stages:
            cut = min(cut, stage.pending(text, state.before))
        released, kept = text[:cut], text[cut:]
        holder[key] = self._rewrite(released, state, json_text) + kept
        if kept:
            state.held, state.holder, state.key = kept, holder, key
            self._holding += 1

    @staticmethod
    def _rewrite(text: str, state: _Channel, json_text: bool) -> str:
        if not text:
            return text
        new = text
        for stage in state.stages:
            new = stage.rewrite(new, state.before, json_text)
        state.before = (state.before + text)[-CONTEXT:]
        return new


def _in_order(doc: Any, kind: Any) -> Iterable[tuple[Any, Any, tuple[Any, ...]] | None]:
    """For every string literal of `doc`'s JSON, in document order: (holder, key,
    channel) for a string value, None for an object key (or a bare string document)."""
    if not isinstance(doc, (dict, list)):
        if isinstance(doc, str):
            yield None
        return
    stack = [_frame(doc, (kind,))]
    while stack:
        node, path, ident, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        key, value = entry
        if ident is not None:  # an object: its key is a literal too
            yield None
            child: tuple[Any, ...] = (*path, ident, key)
        elif isinstance(value, dict) and any(k in value for k in _CHANNEL_KEYS):
            child = path  # an entry that names itself is one channel wherever it sits
        else:
            child = (*path, key)
        if isinstance(value, str):
            yield node, key, child
        elif isinstance(value, (dict, list)):
            stack.append(_frame(value, child))


def _frame(node: Any, path: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...], Any, Any]:
    if isinstance(node, dict):
        ident: tuple[Any, ...] = ()
        for k in _CHANNEL_KEYS:
            if k in node and not isinstance(node[k], (dict, list)):
                ident = (*ident, (k, node[k]))
        return node, path, ident, iter(node.items())
    return node, path, None, enumerate(node)
