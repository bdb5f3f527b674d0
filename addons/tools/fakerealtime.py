"""The fake vendor's OpenAI Realtime endpoint: `GET /v1/realtime?model=M` upgraded to a
WebSocket (h11 for the handshake, wsproto for frames).

Every frame the client sends is recorded on the upgrade's `Received.frames` (text as
sent, binary as base64), so a test sees what the vendor got. It answers as the GA
Realtime API does, enough for the openai SDK to parse: `session.created` at the start,
`session.updated` and `conversation.item.added` echoing what it was sent, and to
`response.create` a response streamed as `response.output_text.delta` events (or
`response.output_audio_transcript.delta` and `response.output_audio.delta` when the
response asks for audio), then the `*.done` events and `response.done` with usage.
What the response says: the scripted reply (`/_fake/reply`, `chunk` characters per
delta), else per model — `echo` the text of the last item received, `echo-headers`
the upgrade's headers — else a greeting. Anything it cannot read gets an `error` event.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from typing import Any
from urllib.parse import parse_qs

import h11
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

PATH = re.compile(r"^(?:/openai)?/v1/realtime$")
_ids = itertools.count(1)


def is_upgrade(method: str, path: str, headers: list[tuple[str, str]]) -> bool:
    """A WebSocket upgrade to the Realtime path."""
    upgrade = next((v for k, v in headers if k.lower() == "upgrade"), "")
    return method == "GET" and bool(PATH.match(path)) and upgrade.lower() == "websocket"


async def serve(conn: h11.Connection, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, received: Any, script: Any) -> None:
    """Accept the upgrade `received` (a fakevendor.Received, already recorded) on
    `conn` and run the session until either side closes."""
    key = received.header("sec-websocket-key") or ""
    headers = [("upgrade", "websocket"), ("connection", "Upgrade"),
               ("sec-websocket-accept", generate_accept_token(key.encode()).decode())]
    offered = [p.strip() for p in (received.header("sec-websocket-protocol") or "").split(",")]
    if "realtime" in offered:
        headers.append(("sec-websocket-protocol", "realtime"))
    writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
    ws = Connection(ConnectionType.SERVER)
    session = _Session(received, script)
    pending, _ = conn.trailing_data
    await _send(writer, ws, session.start())
    data: bytes | None = bytes(pending)
    while True:
        if data:
            ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                received.frames.append({"text": event.data})
                await _send(writer, ws, session.answer(event.data))
            elif isinstance(event, BytesMessage):
                received.frames.append({"binary": base64.b64encode(event.data).decode()})
                await _send(writer, ws, [_error("binary frames are not accepted")])
            elif isinstance(event, Ping):
                writer.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                writer.write(ws.send(event.response()))
                await writer.drain()
                return
        data = await reader.read(65536)
        if not data:
            return


async def _send(writer: asyncio.StreamWriter, ws: Connection, events: list[dict[str, Any]]
                ) -> None:
    for event in events:  # one frame each, drained: the client sees each as it happens
        writer.write(ws.send(TextMessage(data=json.dumps(event, separators=(",", ":")))))
        await writer.drain()


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": f"event_fake{next(_ids)}", **fields}


def _error(message: str, code: str = "invalid_event") -> dict[str, Any]:
    return _event("error", error={"type": "invalid_request_error", "code": code,
                                  "message": message, "param": None, "event_id": None})


class _Session:
    def __init__(self, received: Any, script: Any) -> None:
        self.received, self.script = received, script
        self.model = (parse_qs(received.query).get("model") or [""])[0]
        self.id = f"sess_fake{next(_ids)}"
        self.session: dict[str, Any] = {"instructions": "", "output_modalities": ["text"]}
        self.last_text = ""
        self.input_chars = 0

    def start(self) -> list[dict[str, Any]]:
        return [_event("session.created", session=self._session())]

    def _session(self) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.session", "type": "realtime",
                "model": self.model, **self.session}

    def answer(self, text: str) -> list[dict[str, Any]]:
        try:
            event = json.loads(text)
        except ValueError as exc:
            return [_error(f"the event is not JSON: {exc}")]
        if not isinstance(event, dict):
            return [_error("an event must be a JSON object")]
        self.input_chars += len(text)
        kind = event.get("type")
        if kind == "session.update" and isinstance(event.get("session"), dict):
            self.session.update(event["session"])
            return [_event("session.updated", session=self._session())]
        if kind == "conversation.item.create" and isinstance(event.get("item"), dict):
            item = {"id": f"item_fake{next(_ids)}", "object": "realtime.item",
                    "status": "completed", **event["item"]}
            texts = [p.get("text") or p.get("transcript") or ""
                     for p in item.get("content") or [] if isinstance(p, dict)]
            self.last_text = " ".join(t for t in texts if isinstance(t, str))
            return [_event("conversation.item.added", previous_item_id=None, item=item),
                    _event("conversation.item.done", previous_item_id=None, item=item)]
        if kind == "response.create":
            options = event.get("response") if isinstance(event.get("response"), dict) else {}
            modalities = options.get("output_modalities") or self.session.get(
                "output_modalities") or ["text"]
            return self._response("audio" in modalities)
        if kind in ("input_audio_buffer.append", "input_audio_buffer.commit",
                    "input_audio_buffer.clear", "response.cancel"):
            return []
        return [_error(f"the fake vendor does not know event type {kind!r}")]

    def _text(self) -> str:
        if self.script is not None and self.model != "echo":
            return str(self.script.text)
        if self.model == "echo":
            return self.last_text
        if self.model == "echo-headers":
            return "\n".join(f"{name}: {value}" for name, value in self.received.headers)
        return "Hello from fake openai realtime"

    def _chunks(self, text: str) -> list[str]:
        if self.script is not None and self.script.chunk:
            n = self.script.chunk
            return [text[i:i + n] for i in range(0, len(text), n)]
        return re.findall(r"\S+\s*", text) or [text]

    def _response(self, audio: bool) -> list[dict[str, Any]]:
        rid, iid = f"resp_fake{next(_ids)}", f"item_fake{next(_ids)}"
        text = self._text()
        chunks = self._chunks(text)
        at = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        kind = "output_audio" if audio else "output_text"
        part = {"type": kind, "transcript": text} if audio else {"type": kind, "text": text}
        empty = {**part, "transcript": ""} if audio else {**part, "text": ""}
        item = {"id": iid, "object": "realtime.item", "type": "message", "status": "completed",
                "role": "assistant", "content": [part]}
        usage = {"total_tokens": 0, "input_tokens": max(1, self.input_chars // 4),
                 "output_tokens": len(chunks)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        events = [
            _event("response.created", response={"id": rid, "object": "realtime.response",
                                                  "status": "in_progress", "output": []}),
            _event("response.output_item.added", response_id=rid, output_index=0,
                   item={**item, "status": "in_progress", "content": []}),
            _event("response.content_part.added", **at, part=empty),
        ]
        for chunk in chunks:
            if audio:
                events.append(_event("response.output_audio_transcript.delta", **at, delta=chunk))
                events.append(_event("response.output_audio.delta", **at,
                                     delta=base64.b64encode(b"\x00\x01" * 24).decode()))
            else:
                events.append(_event("response.output_text.delta", **at, delta=chunk))
        if audio:
            events += [_event("response.output_audio.done", **at),
                       _event("response.output_audio_transcript.done", **at, transcript=text)]
        else:
            events.append(_event("response.output_text.done", **at, text=text))
        events += [
            _event("response.content_part.done", **at, part=part),
            _event("response.output_item.done", response_id=rid, output_index=0, item=item),
            _event("response.done", response={"id": rid, "object": "realtime.response",
                                              "status": "completed", "output": [item],
                                              "usage": usage}),
        ]
        return events
