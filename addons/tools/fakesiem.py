"""A local fake SIEM: the HTTP endpoints audit records are shipped to, for tests.

It stands in for a Splunk HTTP Event Collector (HEC) and for NDJSON receivers (a generic
HTTP endpoint such as Vector's `http_server` source, and Elasticsearch's `_bulk` API),
over plain HTTP, or TLS when given a PKI (`fakevendor.make_pki`). Syslog is not faked:
tests use a real rsyslogd (`tests/rsyslog.py`).

Routes, with the real services' semantics where a sender can observe them:

    POST /services/collector/event   HEC (also /services/collector, .../event/1.0):
                                     `Authorization: Splunk <token>`; concatenated JSON
                                     envelopes {time, host, source, sourcetype, index,
                                     event, fields}; gzip accepted. Splunk's answers:
                                     {"text":"Success","code":0} (+ "ackId" when acks are
                                     on), 401 code 2/3, 403 code 4, 400 code 5 (no data),
                                     6 (bad format, + "invalid-event-number"), 10 (channel
                                     missing), 11 (invalid channel), 12/13 (event missing
                                     or blank), 503 code 9 (busy, when told to fail).
    POST /services/collector/ack     {"acks":[N,...]} -> {"acks":{"N":bool}}: true once
                                     the ack delay has passed or the ack was released,
                                     reported true once and then forgotten (as Splunk
                                     does). Acks are per channel (`X-Splunk-Request-
                                     Channel` header or `?channel=`, a GUID, required
                                     when acks are on) and count from 0.
    GET  /services/collector/health  {"text":"HEC is healthy","code":17}
    POST /ndjson                     one JSON document per line, gzip accepted;
                                     200 {"received": N}, 400 if a line is not JSON.
    POST /_bulk, POST /{index}/_bulk Elasticsearch bulk: NDJSON action + source lines
                                     (`create` or `index`, `_index`/`_id`), body ending
                                     in a newline, Content-Type application/json or
                                     application/x-ndjson (else 406), gzip accepted;
                                     200 {"took","errors","items":[{"create":{"_index",
                                     "_id","status":201|409,...}}]}, 409 with
                                     version_conflict_engine_exception for an `_id`
                                     already stored.

A request that is refused stores nothing; an accepted one stores every document it
carries, per route, with the record `id` it carries (the `id` of a JSON object, also
inside a string holding JSON; a bulk `_id` when the source has none).

Control API (never recorded, never failed or stalled, no token):

    GET  /_siem/received   {"hec"|"ndjson"|"bulk": {"docs": [{"id", "doc", ...}],
                           "ids": {id: times received}}, bulk also "conflicts": {id: n},
                           "requests": [{"route","method","path","status","headers",
                           "docs"}]} -- every non-control request, in arrival order
    GET  /_siem/status     {"config", "fail", "stall", "held", "pending_acks"}
    POST /_siem/reset      forget documents, requests, bulk ids, acks; end faults
    POST /_siem/fail       {"status": 503, "count": N|null, "retry_after": S|null}:
                           the next N requests (null: all until recover) answer
                           `status` in the route's own error shape (HEC's code 9 for
                           503), with `Retry-After: S` (whole seconds) if given,
                           storing nothing
    POST /_siem/stall      {"seconds": T|null, "count": N|null}: the next N requests
                           (null: all until release/recover) are read whole and then
                           held, answered normally after T seconds (null: on release)
                           -- what a held request carries is stored even if its
                           client gave up: the duplicate an at-least-once retry makes
    POST /_siem/release    answer every held request now and stop stalling
    POST /_siem/recover    stop failing and stalling; answer held requests
    POST /_siem/acks/release  {"channel": C|null, "acks": [N]|null}: those acks (all
                           pending if omitted) become true now
    POST /_siem/config     any of {"hec_token", "hec_ack", "ack_delay": S|null}; null
                           delay: acks become true only when released

POSTs answer with the new status, release/recover/acks/release with {"released": N};
400 for a bad argument, 404 for an unknown endpoint. A held request is held first,
then the fail rule is applied to it. In-process, the
same controls are methods of `FakeSiem`; call them on the loop the server runs on.

    python -m egressguard.tools.fakesiem --listen 127.0.0.1:0 [--pki-dir DIR]
        [--hec-token T] [--hec-ack] [--hec-ack-delay SECONDS|release]

prints one JSON line {"port", "url", "ca"} and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http
import json
import re
import signal
import ssl
import time
import uuid
import zlib
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h11
import httpx

from egressguard.tools.fakevendor import Pki, make_pki

DEFAULT_HEC_TOKEN = "00000000-0000-4000-8000-00000000f00d"
ROUTES = ("hec", "ndjson", "bulk")
_HEC_EVENT_PATHS = {"/services/collector", "/services/collector/event",
                    "/services/collector/event/1.0"}
_HEC_ACK_PATH = "/services/collector/ack"
_HEC_HEALTH_PATHS = {"/services/collector/health", "/services/collector/health/1.0"}
_BULK = re.compile(r"^/(?:(?P<index>[^/_][^/]*)/)?_bulk$")
_BULK_TYPES = ("application/json", "application/x-ndjson",
               "application/vnd.elasticsearch+json", "application/vnd.elasticsearch+x-ndjson")
# Splunk HEC status codes: code -> (HTTP status, text)
_HEC_CODES = {
    0: (200, "Success"), 2: (401, "Token is required"), 3: (401, "Invalid authorization"),
    4: (403, "Invalid token"), 5: (400, "No data"), 6: (400, "Invalid data format"),
    8: (500, "Internal server error"), 9: (503, "Server is busy"),
    10: (400, "Data channel is missing"), 11: (400, "Invalid data channel"),
    12: (400, "Event field is required"), 13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"), 17: (200, "HEC is healthy"),
}
_READ_SIZE = 65536
_CLOSE_TIMEOUT = 5.0


# --- requests and replies (no I/O) ---------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes  # as sent, still gzip-encoded if it was

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def param(self, name: str) -> str | None:
        values = parse_qs(self.query).get(name)
        return values[0] if values else None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class Refused(Exception):
    """A request the route refuses as a whole; nothing it carries is stored."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _json(status: int, obj: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), headers or [])


def hec_reply(code: int, **extra: Any) -> Reply:
    status, text = _HEC_CODES[code]
    return _json(status, {"text": text, "code": code, **extra})


_ES_PRODUCT = [("X-Elastic-Product", "Elasticsearch")]  # the official clients check it


def es_error(status: int, kind: str, reason: str) -> Reply:
    cause = {"type": kind, "reason": reason}
    return _json(status, {"error": {"root_cause": [cause], **cause}, "status": status},
                 _ES_PRODUCT)


def decoded_body(req: Request) -> bytes:
    """The body without its Content-Encoding; ValueError if it cannot be undone."""
    encoding = (req.header("content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return req.body
    if encoding != "gzip":
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    try:
        return gzip.decompress(req.body)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"body is not valid gzip: {exc}") from exc


def record_id(doc: Any) -> str | None:
    """The audit record id a document carries: its `id`, also inside a JSON string."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def parse_hec_events(body: bytes) -> list[dict[str, Any]]:
    """Concatenated HEC event envelopes (whitespace between them allowed)."""
    if not body.strip():
        raise Refused(hec_reply(5))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(hec_reply(6, **{"invalid-event-number": 0})) from None
    decoder, pos, events = json.JSONDecoder(), 0, []
    while (pos := len(text) - len(text[pos:].lstrip())) < len(text):
        n = {"invalid-event-number": len(events)}
        try:
            event, pos = decoder.raw_decode(text, pos)
        except ValueError:
            raise Refused(hec_reply(6, **n)) from None
        if not isinstance(event, dict):
            raise Refused(hec_reply(6, **n))
        if "event" not in event:
            raise Refused(hec_reply(12, **n))
        if event["event"] in ("", None):
            raise Refused(hec_reply(13, **n))
        events.append(event)
    return events


def parse_ndjson(body: bytes) -> list[Any]:
    try:
        lines = body.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise Refused(_json(400, {"error": f"body is not UTF-8: {exc}"})) from None
    docs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line))
        except ValueError as exc:
            raise Refused(_json(400, {"error": f"line {number} is not JSON: {exc}"})) from None
    if not docs:
        raise Refused(_json(400, {"error": "no documents in the body"}))
    return docs


@dataclass(frozen=True)
class BulkOp:
    action: str  # create | index
    index: str
    id: str | None
    source: Any


def parse_bulk(body: bytes, path_index: str | None) -> list[BulkOp]:
    """Action and source line pairs, as Elasticsearch reads them: all or nothing."""
    if not body.endswith(b"\n"):
        raise Refused(es_error(400, "illegal_argument_exception",
                               "The bulk request must be terminated by a newline [\\n]"))
    try:
        lines = [ln.rstrip("\r") for ln in body.decode("utf-8").split("\n")[:-1]]
    except UnicodeDecodeError as exc:
        raise Refused(es_error(400, "parse_exception", f"body is not UTF-8: {exc}")) from None
    ops, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        action = _bulk_json(lines[i], i + 1)
        if not isinstance(action, dict) or len(action) != 1:
            raise Refused(es_error(400, "illegal_argument_exception",
                                   f"Malformed action/metadata line [{i + 1}], expected "
                                   "an object with exactly one action"))
        [(name, meta)] = action.items()
        if name not in ("create", "index") or not isinstance(meta, dict):
            raise Refused(es_error(400, "illegal_argument_exception",
                                   f"Malformed action/metadata line [{i + 1}]: the fake "
                                   f"SIEM takes create and index actions, got {name!r}"))
        if i + 1 >= len(lines):
            raise Refused(es_error(400, "illegal_argument_exception",
                                   f"action [{name}] on line [{i + 1}] has no source line"))
        index = meta.get("_index") or path_index
        if not index:
            raise Refused(es_error(400, "action_request_validation_exception",
                                   "Validation Failed: 1: index is missing;"))
        doc_id = meta.get("_id")
        ops.append(BulkOp(name, str(index), None if doc_id is None else str(doc_id),
                          _bulk_json(lines[i + 1], i + 2)))
        i += 2
    if not ops:
        raise Refused(es_error(400, "action_request_validation_exception",
                               "Validation Failed: 1: no requests added;"))
    return ops


def _bulk_json(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise Refused(es_error(400, "x_content_parse_exception",
                               f"[{number}:1] could not parse line: {exc}")) from None


# --- the receiver's state --------------------------------------------------------------


@dataclass
class _Rule:
    """A fault injected by the control API: for `remaining` requests, None: until ended."""

    remaining: int | None
    status: int = 0
    retry_after: int | None = None  # HTTP's Retry-After is whole seconds
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "status": self.status or None,
                "retry_after": self.retry_after, "seconds": self.seconds}


@dataclass
class _Ack:
    ready_at: float | None  # time.monotonic(); None: only when released
    released: bool = False

    def ready(self) -> bool:
        return self.released or (self.ready_at is not None and time.monotonic() >= self.ready_at)


class FakeSiem:
    """HEC, NDJSON and `_bulk` receiver on asyncio + h11; TLS if given a PKI."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, pki: Pki | None = None,
                 hec_token: str = DEFAULT_HEC_TOKEN, hec_ack: bool = False,
                 ack_delay: float | None = 0.0) -> None:
        self.host, self.port, self.pki = host, port, pki
        self.hec_token, self.hec_ack, self.ack_delay = hec_token, hec_ack, ack_delay
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._release = asyncio.Event()
        self._held = 0
        self.reset()

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.host}:{self.port}"

    # -- control (the /_siem/ API calls these) ------------------------------------------

    def reset(self) -> None:
        self.docs: dict[str, list[dict[str, Any]]] = {r: [] for r in ROUTES}
        self.requests: list[dict[str, Any]] = []
        self.conflicts: Counter[str] = Counter()
        self._stored: dict[tuple[str, str], int] = {}  # bulk (index, _id) -> version
        self._next_ack: dict[str, int] = {}
        self._acks: dict[tuple[str, int], _Ack] = {}
        self.recover()

    def fail(self, status: int, count: int | None = None,
             retry_after: int | None = None) -> None:
        self._fail: _Rule | None = _Rule(count, status=status, retry_after=retry_after)

    def stall(self, seconds: float | None = None, count: int | None = None) -> None:
        self._stall: _Rule | None = _Rule(count, seconds=seconds)

    def release(self) -> int:
        """Answer every held request now and stop stalling; how many were held."""
        self._stall, held = None, self._held
        self._release.set()
        self._release = asyncio.Event()
        return held

    def recover(self) -> int:
        """Stop failing and stalling; how many held requests were released."""
        self._fail = None
        return self.release()

    def release_acks(self, channel: str | None = None, acks: list[int] | None = None) -> int:
        hits = [k for k in self._acks
                if (channel is None or k[0] == channel) and (acks is None or k[1] in acks)]
        for key in hits:
            self._acks[key].released = True
        return len(hits)

    def received(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            route: {"docs": list(docs), "ids": dict(Counter(d["id"] for d in docs if d["id"]))}
            for route, docs in self.docs.items()}
        out["bulk"]["conflicts"] = dict(self.conflicts)
        out["requests"] = list(self.requests)
        return out

    def status(self) -> dict[str, Any]:
        return {"config": {"hec_token": self.hec_token, "hec_ack": self.hec_ack,
                           "ack_delay": self.ack_delay},
                "fail": self._fail.to_json() if self._fail else None,
                "stall": self._stall.to_json() if self._stall else None,
                "held": self._held,
                "pending_acks": len(self._acks)}

    # -- serving ------------------------------------------------------------------------

    async def start(self) -> int:
        ctx = None
        if self.pki is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.pki.cert, self.pki.key)
            ctx.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=ctx)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await _serve_connection(self, reader, writer)
        except asyncio.CancelledError:
            pass  # stop() ends this connection; asyncio's callback would report the cancel
        finally:
            self._connections.pop(task, None)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Idle keep-alive and held connections would otherwise keep wait_closed() waiting.
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def handle(self, req: Request) -> Reply:
        """The answer to one request: control, or a route (held / failed as told)."""
        if req.path.startswith("/_siem/"):
            return self._control(req)
        route = _route_of(req)
        entry = {"route": route, "method": req.method, "path": req.path, "status": None,
                 "headers": {n.lower(): v for n, v in req.headers}, "docs": 0}
        self.requests.append(entry)
        if stall := self._take("_stall"):
            await self._hold(stall.seconds)
        if fail := self._take("_fail"):
            reply = self._failure(fail, route)
        else:
            before = sum(len(d) for d in self.docs.values())
            reply = self._dispatch(route, req)
            entry["docs"] = sum(len(d) for d in self.docs.values()) - before
        entry["status"] = reply.status
        return reply

    def _take(self, name: str) -> _Rule | None:
        """The fault rule `name` if it applies to this request (one use of its count)."""
        rule: _Rule | None = getattr(self, name)
        if rule is None or rule.remaining is None:
            return rule
        rule.remaining -= 1
        if rule.remaining == 0:
            setattr(self, name, None)
        return rule

    async def _hold(self, seconds: float | None) -> None:
        self._held += 1
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), seconds)
        finally:
            self._held -= 1

    @staticmethod
    def _failure(rule: _Rule, route: str | None) -> Reply:
        headers = [] if rule.retry_after is None else [("Retry-After", str(rule.retry_after))]
        if route and route.startswith("hec"):
            text = "Server is busy" if rule.status == 503 else http.HTTPStatus(rule.status).phrase
            reply = _json(rule.status, {"text": text, "code": 9 if rule.status == 503 else 8})
        else:
            reply = es_error(rule.status, "fake_siem_failure",
                             f"the fake SIEM answers {rule.status}, as told by /_siem/fail")
        reply.headers += headers
        return reply

    def _dispatch(self, route: str | None, req: Request) -> Reply:
        try:
            if route == "hec":
                return self._hec_event(req)
            if route == "hec_ack":
                return self._hec_ack(req)
            if route == "hec_health":
                return hec_reply(17)
            if route == "ndjson":
                return self._ndjson(req)
            if route == "bulk":
                return self._bulk(req)
        except Refused as refused:
            return refused.reply
        return _json(404, {"error": f"the fake SIEM has no route for {req.method} {req.path}"})

    # -- Splunk HEC ---------------------------------------------------------------------

    def _hec_auth(self, req: Request, ack: bool) -> str | None:
        """Checks token and channel as Splunk does; the channel (None if not sent)."""
        auth = req.header("authorization")
        if auth is None:
            raise Refused(hec_reply(2))
        scheme, _, token = auth.strip().partition(" ")
        if scheme != "Splunk" or not token.strip():
            raise Refused(hec_reply(3))
        if token.strip() != self.hec_token:
            raise Refused(hec_reply(4))
        channel = req.header("x-splunk-request-channel") or req.param("channel")
        if channel is None:
            if ack:
                raise Refused(hec_reply(10))
            return None
        try:
            uuid.UUID(channel)
        except ValueError:
            raise Refused(hec_reply(11)) from None
        return channel

    def _hec_event(self, req: Request) -> Reply:
        channel = self._hec_auth(req, self.hec_ack)
        try:
            events = parse_hec_events(decoded_body(req))
        except ValueError:
            raise Refused(hec_reply(6, **{"invalid-event-number": 0})) from None
        ack_id = None
        if self.hec_ack:
            assert channel is not None
            ack_id = self._next_ack.get(channel, 0)
            self._next_ack[channel] = ack_id + 1
            ready = None if self.ack_delay is None else time.monotonic() + self.ack_delay
            self._acks[(channel, ack_id)] = _Ack(ready)
        self.docs["hec"] += [{"id": record_id(e["event"]), "doc": e, "channel": channel,
                              "ack_id": ack_id} for e in events]
        return hec_reply(0) if ack_id is None else hec_reply(0, ackId=ack_id)

    def _hec_ack(self, req: Request) -> Reply:
        if not self.hec_ack:
            self._hec_auth(req, ack=False)
            return hec_reply(14)
        channel = self._hec_auth(req, ack=True)
        try:
            asked = json.loads(decoded_body(req))["acks"]
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in asked):
                raise TypeError("ack ids must be integers")
        except (ValueError, KeyError, TypeError):
            raise Refused(hec_reply(6)) from None
        answer = {}
        for ack_id in asked:
            ack = self._acks.get((str(channel), ack_id))
            answer[str(ack_id)] = bool(ack and ack.ready())
            if answer[str(ack_id)]:  # Splunk reports an ack true once, then forgets it
                del self._acks[(str(channel), ack_id)]
        return _json(200, {"acks": answer})

    # -- NDJSON and Elasticsearch _bulk ---------------------------------------------------

    def _ndjson(self, req: Request) -> Reply:
        try:
            docs = parse_ndjson(decoded_body(req))
        except ValueError as exc:
            raise Refused(_json(400, {"error": str(exc)})) from None
        self.docs["ndjson"] += [{"id": record_id(d), "doc": d} for d in docs]
        return _json(200, {"received": len(docs)})

    def _bulk(self, req: Request) -> Reply:
        content_type = (req.header("content-type") or "").split(";")[0].strip().lower()
        if content_type not in _BULK_TYPES:
            return _json(406, {"error": f"Content-Type header [{content_type}] is not "
                                        "supported", "status": 406}, _ES_PRODUCT)
        try:
            body = decoded_body(req)
        except ValueError as exc:
            raise Refused(es_error(400, "parse_exception", str(exc))) from None
        match = _BULK.match(req.path)
        ops = parse_bulk(body, match["index"] if match else None)
        items = [{op.action: self._bulk_apply(op)} for op in ops]
        errors = any("error" in next(iter(i.values())) for i in items)
        return _json(200, {"took": 1, "errors": errors, "items": items}, _ES_PRODUCT)

    def _bulk_apply(self, op: BulkOp) -> dict[str, Any]:
        doc_id = op.id or uuid.uuid4().hex[:20]
        version = self._stored.get((op.index, doc_id))
        head = {"_index": op.index, "_id": doc_id}
        if version is not None and op.action == "create":
            self.conflicts[record_id(op.source) or doc_id] += 1
            return {**head, "status": 409, "error": {
                "type": "version_conflict_engine_exception",
                "reason": f"[{doc_id}]: version conflict, document already exists "
                          f"(current version [{version}])",
                "index_uuid": "fakesiem", "shard": "0", "index": op.index}}
        version = (version or 0) + 1
        self._stored[(op.index, doc_id)] = version
        self.docs["bulk"].append({"id": record_id(op.source) or doc_id, "doc": op.source,
                                  "index": op.index, "_id": doc_id, "action": op.action})
        return {**head, "_version": version, "result": "created" if version == 1 else "updated",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": len(self.docs["bulk"]) - 1, "_primary_term": 1,
                "status": 201 if version == 1 else 200}

    # -- the control API ----------------------------------------------------------------

    def _control(self, req: Request) -> Reply:
        action = req.path.removeprefix("/_siem/")
        try:
            args = json.loads(req.body) if req.body.strip() else {}
            if not isinstance(args, dict):
                raise TypeError("the body must be a JSON object")
            if (req.method, action) == ("GET", "received"):
                return _json(200, self.received())
            if (req.method, action) == ("GET", "status"):
                return _json(200, self.status())
            if req.method != "POST":
                raise LookupError
            return _json(200, self._control_post(action, args))
        except LookupError:
            return _json(404, {"error": f"no control endpoint {req.method} {req.path}"})
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": f"{req.path}: {exc}"})

    def _control_post(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        known = {"reset": set(), "fail": {"status", "count", "retry_after"},
                 "stall": {"seconds", "count"}, "release": set(), "recover": set(),
                 "acks/release": {"channel", "acks"},
                 "config": {"hec_token", "hec_ack", "ack_delay"}}
        if action not in known:
            raise LookupError(action)
        if unknown := set(args) - known[action]:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known[action])}")
        if action == "reset":
            self.reset()
        elif action == "fail":
            status = args.get("status")
            if not isinstance(status, int) or not 200 <= status <= 599:
                raise ValueError(f"status must be an HTTP status 200-599, got {status!r}")
            self.fail(status, _count(args), _count(args, "retry_after", minimum=0))
        elif action == "stall":
            self.stall(_seconds(args, "seconds"), _count(args))
        elif action == "release":
            return {"released": self.release()}
        elif action == "recover":
            return {"released": self.recover()}
        elif action == "acks/release":
            acks = args.get("acks")
            if acks is not None and not all(isinstance(a, int) for a in acks):
                raise ValueError("acks must be a list of integers")
            return {"released": self.release_acks(args.get("channel"), acks)}
        else:
            self._configure(args)
        return self.status()

    def _configure(self, args: dict[str, Any]) -> None:
        if "hec_token" in args:
            if not isinstance(args["hec_token"], str) or not args["hec_token"]:
                raise ValueError("hec_token must be a non-empty string")
            self.hec_token = args["hec_token"]
        if "hec_ack" in args:
            if not isinstance(args["hec_ack"], bool):
                raise ValueError("hec_ack must be true or false")
            self.hec_ack = args["hec_ack"]
        if "ack_delay" in args:
            self.ack_delay = _seconds(args, "ack_delay")


def _count(args: dict[str, Any], key: str = "count", minimum: int = 1) -> int | None:
    value = args.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < minimum):
        raise ValueError(f"{key} must be an integer >= {minimum} or null, got {value!r}")
    return value


def _seconds(args: dict[str, Any], key: str) -> float | None:
    value = args.get(key)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                              or value < 0):
        raise ValueError(f"{key} must be a number of seconds >= 0 or null, got {value!r}")
    return None if value is None else float(value)


def _route_of(req: Request) -> str | None:
    if req.path in _HEC_EVENT_PATHS and req.method == "POST":
        return "hec"
    if req.path == _HEC_ACK_PATH and req.method == "POST":
        return "hec_ack"
    if req.path in _HEC_HEALTH_PATHS and req.method == "GET":
        return "hec_health"
    if req.path == "/ndjson" and req.method == "POST":
        return "ndjson"
    if _BULK.match(req.path) and req.method in ("POST", "PUT"):
        return "bulk"
    return None


# --- HTTP/1.1 over asyncio ---------------------------------------------------------------


async def _serve_connection(siem: FakeSiem, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while await _serve_one(siem, conn, reader, writer):
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        with suppress(h11.LocalProtocolError, OSError):
            await _send(conn, writer, _json(exc.error_status_hint, {"error": str(exc)}))
    except OSError:
        pass  # the client hung up
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
        except (OSError, TimeoutError):
            writer.transport.abort()


async def _serve_one(siem: FakeSiem, conn: h11.Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
    """Answer one request; True if the connection may carry another."""
    request = await _next_event(conn, reader)
    if not isinstance(request, h11.Request):
        return False
    if conn.they_are_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
    body = bytearray()
    while isinstance(event := await _next_event(conn, reader), h11.Data):
        body += event.data
    path, _, query = request.target.decode("latin-1").partition("?")
    headers = [(n.decode("latin-1"), v.decode("latin-1"))
               for n, v in request.headers.raw_items()]
    reply = await siem.handle(Request(request.method.decode("ascii"), path, query, headers,
                                      bytes(body)))
    await _send(conn, writer, reply)
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(_READ_SIZE))
    return event


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
    headers = [("content-type", "application/json"), ("content-length", str(len(reply.body))),
               *reply.headers]
    response = h11.Response(status_code=reply.status, headers=headers,
                            reason=http.HTTPStatus(reply.status).phrase.encode())
    for event in (response, h11.Data(data=reply.body), h11.EndOfMessage()):
        writer.write(conn.send(event) or b"")
    await writer.drain()


# --- CLI -------------------------------------------------------------------------------


async def _serve_until_signalled(siem: FakeSiem) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await siem.start()
    try:
        ca = str(siem.pki.ca_cert) if siem.pki else None
        print(json.dumps({"port": siem.port, "url": siem.url, "ca": ca}), flush=True)
        await stopping.wait()
    finally:
        await siem.stop()


@dataclass(frozen=True)
class SiemControl:
    """A client of a running fake SIEM's control API (`/_siem/…`), for tests and
    benchmarks in other processes."""

    url: str
    ca: Path | None = None

    def http(self, timeout: float = 10) -> httpx.Client:
        # plain HTTP has nothing to verify; skip loading the default CA bundle each time
        verify: str | bool = str(self.ca) if self.ca else self.url.startswith("https:")
        return httpx.Client(base_url=self.url, verify=verify, timeout=timeout)

    def control(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.http() as client:
            return client.post(f"/_siem/{action}", json=body or {}).raise_for_status().json()

    def received(self) -> dict[str, Any]:
        with self.http() as client:
            return client.get("/_siem/received").raise_for_status().json()

    def status(self) -> dict[str, Any]:
        with self.http() as client:
            return client.get("/_siem/status").raise_for_status().json()

    def ids(self, route: str) -> dict[str, int]:
        """Record id -> how many times `route` (hec, ndjson, bulk) received it."""
        return dict(self.received()[route]["ids"])


def _delay(value: str) -> float | None:
    if value == "release":
        return None
    seconds = float(value)
    if seconds < 0:
        raise ValueError(value)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egressguard.tools.fakesiem",
        description="Serve a fake SIEM (Splunk HEC, NDJSON, Elasticsearch _bulk); print "
                    "{port, url, ca} as one JSON line. Control API under /_siem/.",
    )
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="HOST:PORT to listen on; port 0 picks a free one")
    parser.add_argument("--pki-dir", type=Path,
                        help="serve TLS with the CA and leaf cert in DIR (created if missing)")
    parser.add_argument("--hec-token", default=DEFAULT_HEC_TOKEN,
                        help="the HEC token accepted (default: %(default)s)")
    parser.add_argument("--hec-ack", action="store_true",
                        help="indexer acknowledgement on: channel required, ackId answered")
    parser.add_argument("--hec-ack-delay", type=_delay, default=0.0, metavar="SECONDS|release",
                        help="seconds until an ack reads true; `release`: only when released")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
    pki = make_pki(args.pki_dir) if args.pki_dir else None
    asyncio.run(_serve_until_signalled(FakeSiem(
        host, int(port), pki, args.hec_token, args.hec_ack, args.hec_ack_delay)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
