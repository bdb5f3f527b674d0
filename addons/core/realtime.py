"""OpenAI Realtime over a WebSocket, as plain data: what the upgrade carries, what each
frame of the session may hold, and what a session adds to the audit trail.

    split_subprotocols  the browser's credential (`Sec-WebSocket-Protocol:
                        openai-insecure-api-key.<key>`) taken out of the offer
    query_model         the model the upgrade names (`/v1/realtime?model=…`)
    read_agent_frame    one frame from the agent: bounded, parsed, checked; the text
                        fields the vendor's model reads, for the rule's redaction plan
    error_event         a refusal as the Realtime `error` event the agent's SDK parses
    VendorEvents        the vendor's frames on their way back: key echoes scrubbed,
                        secrets masked and pseudonyms restored per channel of text
    Session             one session's state and counts, summarised for its close record

A refused frame is dropped and answered with an `error` event; the session goes on,
as it does when the vendor itself rejects an event (the agent may correct and resend).
Nothing here logs or keeps a value: refusals name entity types, counts name types
and actions.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from egressguard.core import usage
from egressguard.core.bodies import MAX_DECODED
from egressguard.core.credentials import KeyScrubber
from egressguard.core.errors import (
    BadRequest,
    EgressError,
    PolicyDenied,
    RequestTooLarge,
    vendor_error_body,
)
from egressguard.core.records import RequestFacts
from egressguard.core.redact import actions, fields
from egressguard.core.redact.sse import SseRewriter, Stage

MAX_FRAME = MAX_DECODED  # bytes of one agent frame egressguard reads, as for a body

# ---- the upgrade -------------------------------------------------------------------

# How a browser, which cannot set headers on a WebSocket, sends its OpenAI key.
KEY_SUBPROTOCOL = "openai-insecure-api-key."


def split_subprotocols(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """The subprotocols of `Sec-WebSocket-Protocol` header values, without the ones
    that carry a credential, and those credentials. Vendors choose one of the offered
    subprotocols (`realtime`), never the credential, so the offer still works."""
    kept: list[str] = []
    found: list[str] = []
    for value in values:
        for item in value.split(","):
            name = item.strip()
            if name[:len(KEY_SUBPROTOCOL)].lower() == KEY_SUBPROTOCOL:
                found.append(name[len(KEY_SUBPROTOCOL):])
            elif name:
                kept.append(name)
    return kept, found


# Where the upgrade names its model: it has no body. OpenAI `?model=`; Azure's preview
# realtime path `?deployment=`.
_MODEL_PARAMETERS = ("model", "deployment")


def query_model(query: Iterable[tuple[str, str]]) -> str | None:
    """The model a realtime URL names; ValueError when it names two different ones
    (which one would the vendor run?)."""
    named = {v for k, v in query if k in _MODEL_PARAMETERS}
    if len(named) > 1:
        raise ValueError(f"the URL names {len(named)} models ({', '.join(sorted(named))})")
    return next(iter(named), None) or None


def session_model(body: Any) -> str | None:
    """The model a realtime POST names in its `session` (client secrets)."""
    session = body.get("session") if isinstance(body, dict) else None
    model = session.get("model") if isinstance(session, dict) else None
    return model if isinstance(model, str) and model else None


# ---- frames from the agent -----------------------------------------------------------

# Client events with no text for a model: audio buffers, cancellations, item bookkeeping.
_NO_TEXT = frozenset({
    "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "output_audio_buffer.clear", "response.cancel", "conversation.item.delete",
    "conversation.item.retrieve", "conversation.item.truncate",
})
# In an event of a type this module does not know, every string is read but these:
# ids, names of things and settings, and audio.
_OPAQUE = frozenset({
    "type", "event_id", "id", "item_id", "previous_item_id", "call_id", "response_id",
    "object", "model", "voice", "audio", "format", "role", "status", "modalities",
    "output_modalities", "tool_choice", "conversation", "name",
})


@dataclass(slots=True)
class AgentFrame:
    """A client event the agent sent: parsed, with the slots of every text the
    vendor's model reads (edited in place by redaction; `event` is then sent again)."""

    event: dict[str, Any]
    slots: list[fields.Slot]

    @property
    def event_id(self) -> str | None:
        value = self.event.get("event_id")
        return value if isinstance(value, str) else None


def read_agent_frame(data: bytes, is_text: bool, *, plan: Mapping[str, str], rule: str,
                     model: str | None) -> AgentFrame:
    """One frame from the agent, or the EgressError it is refused with: too large,
    not a JSON object, audio (or a binary frame) where the rule redacts — egressguard
    cannot read speech, so under a plan it does not forward it — or a `session.update`
    that names another model than the one the upgrade was decided on."""
    if len(data) > MAX_FRAME:
        raise RequestTooLarge(f"the frame is {len(data)} bytes; egressguard reads frames "
                              f"of up to {MAX_FRAME} bytes", reason="frame_too_large")
    if not is_text:
        if plan:
            raise _unredactable("a binary frame", plan, rule)
        return AgentFrame({}, [])
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the frame is not a JSON event ({exc.msg} at byte {exc.pos}); "
                         "nothing of it was forwarded", reason="frame_not_json") from None
    if not isinstance(event, dict):
        raise BadRequest("the frame is not a JSON object with a `type`; nothing of it was "
                         "forwarded", reason="frame_not_json")
    kind = event.get("type")
    if plan and (where := _audio_in(event, kind)):
        raise _unredactable(where, plan, rule)
    if kind == "session.update":
        _check_model(event.get("session"), model)
    return AgentFrame(event, event_slots(event))


def _unredactable(what: str, plan: Mapping[str, str], rule: str) -> PolicyDenied:
    return PolicyDenied(
        f"policy rule {rule!r} redacts {', '.join(sorted(plan))}, and egressguard cannot "
        f"read {what} for them, so it was not forwarded; send text, or ask for a rule "
        "without `redact` for voice sessions", reason="redaction_not_possible")


def _audio_in(event: dict[str, Any], kind: Any) -> str | None:
    """Where the event carries audio, if it does."""
    if kind == "input_audio_buffer.append":
        return "audio (input_audio_buffer.append)"
    for item in _items(event, kind):
        for _, part in _dicts(item.get("content")):
            if part.get("audio"):
                return f"audio ({kind}: a {part.get('type') or 'content'} part)"
    return None


def _check_model(session: Any, model: str | None) -> None:
    asked = session.get("model") if isinstance(session, dict) else None
    if asked is not None and asked != model:
        raise PolicyDenied(
            f"the session was allowed for model {model!r}; session.update cannot change it "
            f"to {str(asked)!r}: open a new session with ?model=", reason="model_change_refused")


def _items(event: dict[str, Any], kind: Any) -> list[dict[str, Any]]:
    if kind == "conversation.item.create":
        item = event.get("item")
        return [item] if isinstance(item, dict) else []
    response = event.get("response") if kind == "response.create" else None
    listed = response.get("input") if isinstance(response, dict) else None
    return [item for _, item in _dicts(listed)]


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] \
        if isinstance(value, list) else []


def event_slots(event: dict[str, Any]) -> list[fields.Slot]:
    """Every text of a client event the vendor's model reads (what `fields` reads of a
    Responses request, for the same shapes): instructions and prompt variables of
    `session.update` and `response.create`, transcription prompts, each item's text,
    transcripts, function call arguments and outputs, response metadata. Tool
    definitions are not read, as in `fields`. An event of a type not known here has
    every string read but ids, settings and audio: a new event type fails closed."""
    kind = event.get("type")
    if kind in _NO_TEXT:
        return []
    if kind in ("session.update", "transcription_session.update"):
        session = event.get("session")
        slots = fields.text_slots("openai", "responses", session)  # instructions, prompt
        for path in (("input_audio_transcription",), ("audio", "input", "transcription")):
            holder = _at(session, path)
            if isinstance(holder, dict) and isinstance(holder.get("prompt"), str):
                slots.append(fields.Slot(holder, "prompt", ("session", *path, "prompt")))
        return slots
    if kind == "response.create":
        # a response's options are a Responses request: instructions, input, metadata
        slots = fields.text_slots("openai", "responses", event.get("response"))
    elif kind == "conversation.item.create":
        slots = fields.text_slots("openai", "responses", {"input": _items(event, kind)})
    else:
        return _every_string(event)
    for n, item in enumerate(_items(event, kind)):  # a spoken turn's transcript is text
        where = ("item",) if kind == "conversation.item.create" else ("response", "input", n)
        for i, part in _dicts(item.get("content")):
            if isinstance(part.get("transcript"), str):
                slots.append(fields.Slot(part, "transcript", (*where, "content", i, "transcript")))
    return slots


def _at(holder: Any, path: Sequence[str]) -> Any:
    for key in path:
        holder = holder.get(key) if isinstance(holder, dict) else None
    return holder


def _every_string(event: dict[str, Any]) -> list[fields.Slot]:
    slots: list[fields.Slot] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(event, ())]
    while stack:
        node, path = stack.pop()
        entries = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in entries:
            if isinstance(key, str) and key in _OPAQUE:
                continue
            if isinstance(value, str):
                slots.append(fields.Slot(node, key, (*path, key)))
            elif isinstance(value, (dict, list)):
                stack.append((value, (*path, key)))
    return slots


def error_event(err: EgressError, event_id: str | None = None) -> bytes:
    """`err` as a Realtime `error` event: the OpenAI error object (message, type,
    code = the refusal's reason) plus the `event_id` of the client event it answers."""
    error = orjson.loads(vendor_error_body(err, "openai"))["error"]
    return orjson.dumps({"type": "error", "event_id": f"event_egressguard_{secrets.token_hex(8)}",
                         "error": {**error, "event_id": event_id}})


# ---- frames from the vendor ----------------------------------------------------------

_AUDIO_DELTAS = frozenset({"response.audio.delta", "response.output_audio.delta"})
_USAGE_EVENT = re.compile(rb'"type"\s*:\s*"response\.done"')


class _Shielded:
    """A stage that also leaves audio and event ids alone (sse.Stage)."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self.untouched = frozenset(stage.untouched) | {"audio", "event_id", "previous_item_id"}

    def wants(self, raw: bytes) -> bool:
        return self._stage.wants(raw)

    def pending(self, text: str, before: str) -> int:
        return self._stage.pending(text, before)

    def rewrite(self, text: str, before: str, json_text: bool) -> str:
        return self._stage.rewrite(text, before, json_text)


class SessionRestore:
    """Restores a session's pseudonyms (sse.Stage): an `actions.Reidentifier` made
    again whenever the session has pseudonymised a new value, since the agent's later
    frames add to the table the vendor's answers draw on."""

    untouched = actions.Reidentifier.untouched

    def __init__(self, pseudonyms: actions.Pseudonyms) -> None:
        self._pseudonyms = pseudonyms
        self._size = -1
        self._current = actions.Reidentifier(pseudonyms)

    def _now(self) -> actions.Reidentifier:
        if len(self._pseudonyms) != self._size:
            self._size = len(self._pseudonyms)
            self._current = actions.Reidentifier(self._pseudonyms)
        return self._current

    def wants(self, raw: bytes) -> bool:
        return self._now().wants(raw)

    def pending(self, text: str, before: str) -> int:
        return self._now().pending(text, before)

    def rewrite(self, text: str, before: str, json_text: bool) -> str:
        return self._now().rewrite(text, before, json_text)


Frame = tuple[bytes, bool]  # (data, is_text)


class VendorEvents:
    """The vendor's frames on their way to the agent.

    Every frame loses any echo of the real key (`KeyScrubber`, as for HTTP answers).
    With `stages` (the rule's answer mask, the session's pseudonyms) each JSON event
    goes through an `sse.SseRewriter`, framed as one SSE event: per channel of text
    (`item_id`, `content_index`, event type), the end of a `*.delta` that may be the
    start of a pseudonym or a secret waits for that channel's next delta, and the
    events after it wait with it, so a value split over frames is restored or masked
    whole and the agent gets every event, in order, the same number of them. Any other
    event ends that wait (its text is complete: `*.done`, items, errors), as do a
    binary or non-JSON frame. Audio deltas go through unread, in their place.

    `feed` therefore returns the frames to send now: none, one or several."""

    def __init__(self, keys: Sequence[bytes], stages: Sequence[Stage] = ()) -> None:
        self._scrubber = KeyScrubber(keys)
        self._rewriter = SseRewriter([_Shielded(s) for s in stages]) if stages else None
        self._nonce = secrets.token_hex(8).encode()
        self._aside: dict[int, bytes] = {}  # audio frames waiting in the rewriter
        self._serial = 0
        self.usage = usage.Usage()

    def feed(self, data: bytes, is_text: bool) -> list[Frame]:
        data = self._scrubber.scrub(data)
        if not is_text:
            return [*self._flush(), (data, False)]
        kind = _leading_type(data)  # as OpenAI writes events: no need to parse them twice
        if kind in _AUDIO_DELTAS:  # most frames of a voice session
            return [(data, True)] if self._rewriter is None else \
                self._split(self._rewriter(self._set_aside(data)))
        doc: Any = None
        if kind == "response.done" or kind is None and _USAGE_EVENT.search(data):
            doc = _parse(data)
            self._count(doc)
        if self._rewriter is None:
            return [(data, True)]
        if kind is None or b"\n" in data or b"\r" in data:
            doc = _parse(data) if doc is None else doc
            kind = doc.get("type") if isinstance(doc, dict) else None
            if not isinstance(kind, str):  # not an event: nothing to rewrite or pass it
                return [*self._flush(), (data, True)]
            data = orjson.dumps(doc)  # one SSE event: no line break may stand inside it
        if kind in _AUDIO_DELTAS:
            event = self._set_aside(data)
        else:
            event = b"data: " + data + b"\n\n"
        out = self._rewriter(event)
        if not kind.endswith(".delta"):
            out += self._rewriter(b"")  # settle: every held text is complete now
        return self._split(out)

    def finish(self) -> list[Frame]:
        """What is still held when the session ends (nothing can be sent then; for tests
        and for a vendor that closes in the middle of a delta)."""
        return self._flush()

    def _flush(self) -> list[Frame]:
        return self._split(self._rewriter(b"")) if self._rewriter is not None else []

    def _count(self, doc: Any) -> None:
        found = usage.from_object(doc)
        if found is not None:  # each response.done reports its own response: add them up
            for name in ("input_tokens", "output_tokens"):
                add = getattr(found, name)
                if add is not None:
                    setattr(self.usage, name, (getattr(self.usage, name) or 0) + add)

    def _set_aside(self, data: bytes) -> bytes:
        self._serial += 1
        self._aside[self._serial] = data
        return b'data: {"egressguard_aside_' + self._nonce + b'":' + \
            str(self._serial).encode() + b"}\n\n"

    def _split(self, out: bytes) -> list[Frame]:
        frames: list[Frame] = []
        marker = b'data: {"egressguard_aside_' + self._nonce + b'":'
        for event in out.split(b"\n\n")[:-1]:
            if event.startswith(marker):
                frames.append((self._aside.pop(int(event[len(marker):-1])), True))
            else:
                frames.append((event[6:], True))  # without `data: `
        return frames


_LEADING_TYPE = re.compile(rb'\{\s*"type"\s*:\s*"([a-z0-9_.]{1,100})"\s*[,}]')


def _leading_type(data: bytes) -> str | None:
    """The event's `type` when it is the first key of the object (so surely the event's
    own), as OpenAI writes every event; None otherwise."""
    m = _LEADING_TYPE.match(data)
    return m.group(1).decode() if m else None


def _parse(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


# ---- the session ---------------------------------------------------------------------

@dataclass(slots=True)
class Session:
    """One WebSocket session through egressguard: its pseudonyms, the vendor's side,
    and the counts its close record carries (`summarise`)."""

    vendor: VendorEvents
    plan: Mapping[str, str] = field(default_factory=dict)
    rule: str = ""
    model: str | None = None
    pseudonyms: actions.Pseudonyms = field(default_factory=actions.Pseudonyms)
    frames_from_agent: int = 0
    frames_to_agent: int = 0
    bytes_from_agent: int = 0
    bytes_to_agent: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason -> frames
    redactions: Counter[tuple[str, str]] = field(default_factory=Counter)
    in_flight: int = 0  # frames handed to mitmproxy to send to the agent, not yet seen
    close_code: int | None = None
    closed_by: str | None = None  # "agent" or "vendor"

    def __repr__(self) -> str:  # counts only: a session holds pseudonymised values
        return (f"<Session: {self.frames_from_agent} frames from the agent, "
                f"{self.frames_to_agent} to it>")

    def count(self, found: Mapping[str, Mapping[str, int]]) -> None:
        """Add one frame's redaction counts ({entity: {action: n}})."""
        for entity, by_action in found.items():
            for action, n in by_action.items():
                self.redactions[(entity, action)] += n

    def redaction_record(self) -> dict[str, dict[str, int]] | None:
        out: dict[str, dict[str, int]] = {}
        for (entity, action), n in sorted(self.redactions.items()):
            out.setdefault(entity, {})[action] = n
        return out or None

    def summarise(self, facts: RequestFacts, upgrade_id: str) -> None:
        """Make `facts` (of the upgrade's flow, with a new id) the session's close
        record: linked to the upgrade's record, with the session's counts."""
        facts.reason = "websocket_closed"
        facts.bytes_in, facts.bytes_out = self.bytes_from_agent, self.bytes_to_agent
        facts.redactions = self.redaction_record()
        facts.websocket = {
            "upgrade_id": upgrade_id,
            "frames_from_agent": self.frames_from_agent,
            "frames_to_agent": self.frames_to_agent,
            "refused": dict(sorted(self.refused.items())) or None,
            "close_code": self.close_code,
            "closed_by": self.closed_by,
        }
