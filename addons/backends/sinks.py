"""Where audit records go: syslog (RFC 5424 over TCP or TLS), Splunk HEC, HTTP NDJSON.

Each sink sends one batch of journal records and returns only once the receiver has
taken it; anything else raises `SinkError` and the shipper sends the batch again (so
delivery is at least once; every record carries its `id` for de-duplication):

- syslog: octet-counted frames (RFC 5425/6587) on one kept-open connection. Syslog
  acknowledges nothing, so a batch counts as delivered once the receiving host's TCP
  stack has acknowledged every byte (the socket's send queue is empty, read with
  SIOCOUTQ on Linux); a connection the receiver closed is noticed before the next batch.
- Splunk HEC: `/services/collector/event`, one JSON event per record; with `ack`, a batch
  counts only once Splunk reports it indexed (channel + `/services/collector/ack`).
- HTTP: NDJSON, or Elasticsearch `_bulk` with `create` and the record id as `_id` (a
  resent record is a 409 conflict, which counts as delivered).

Credentials come from the environment or a file named in the sinks file, are read
once when the sink is made, and appear in no message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import os
import ssl
import struct
import termios
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from egressguard.core import logs, mappings
from egressguard.core.sinkconfig import SinkSpec

Record = dict[str, Any]
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # bytes sent but not yet acknowledged


class SinkError(Exception):
    """A batch was not delivered; the message says why, never a credential."""


class Sink(Protocol):
    name: str

    async def send(self, records: list[Record]) -> None: ...

    async def close(self) -> None: ...


def make_sink(spec: SinkSpec, node: str | None) -> Sink:
    """The sink `spec` describes; SinkError if a credential or file it names is missing."""
    kinds: dict[str, Callable[[SinkSpec, str | None], Sink]] = {
        "syslog": SyslogSink, "splunk_hec": HecSink, "http": HttpSink}
    return kinds[spec.type](spec, node)


# -- syslog ---------------------------------------------------------------------------------

_SEVERITY = {"deny": 4, "allow": 6}  # warning, informational
_SD_ID = "egressguard@32473"  # enterprise number 32473: reserved for documentation


class SyslogSink:
    def __init__(self, spec: SinkSpec, node: str | None) -> None:
        self.name = spec.name
        self._spec = spec
        self._host, self._port = spec.option("host"), spec.option("port")
        self._facility = int(spec.option("facility"))
        self._app = spec.option("app_name")
        self._hostname = spec.option("hostname") or node or "-"
        self._json = mappings.json_mapping(spec.mapping) if spec.option("format") == "json" \
            else None
        self._tls = _tls_context(spec) if spec.option("transport") == "tls" else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def message(self, record: Record) -> bytes:
        """One RFC 5424 message: PRI, version, timestamp, host, app, procid, msgid
        (the record's kind), structured data naming the record, and the body."""
        severity = 3 if record.get("error") else _SEVERITY.get(record.get("decision"), 5)
        if record.get("kind") == "checkpoint":
            severity = 5  # notice
        body = orjson.dumps(self._json(record)) if self._json else \
            mappings.cef(record).encode()
        sd = f'[{_SD_ID} id="{record["id"]}" seq="{record.get("seq", 0)}"]'
        head = (f"<{self._facility * 8 + severity}>1 {record['ts']} {self._hostname} "
                f"{self._app} - {record.get('kind', '-')} {sd} ")
        return head.encode() + body

    async def send(self, records: list[Record]) -> None:
        frames = b"".join(b"%d %s" % (len(m), m) for m in map(self.message, records))
        try:
            await self._connected()
            assert self._writer is not None
            self._writer.write(frames)
            await asyncio.wait_for(self._writer.drain(), self._spec.timeout)
            await asyncio.wait_for(self._acknowledged(), self._spec.timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.close()
            raise SinkError(f"syslog {self._host}:{self._port}: {_why(exc)}") from None

    async def _connected(self) -> None:
        if self._reader is not None and self._reader.at_eof():  # the receiver hung up
            await self.close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(
                self._host, self._port, ssl=self._tls,
                server_hostname=(self._spec.option("server_name") or self._host)
                if self._tls else None), self._spec.timeout)

    async def _acknowledged(self) -> None:
        """Wait until the receiver's TCP stack has acknowledged every byte sent."""
        assert self._writer is not None
        sock = self._writer.get_extra_info("socket")
        if sock is None:
            return
        while True:
            if self._reader is not None and self._reader.at_eof():
                raise ConnectionResetError("the receiver closed the connection")
            try:
                unacknowledged = struct.unpack("i", fcntl.ioctl(
                    sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                return  # not a platform that tells: drained is as far as it goes
            if unacknowledged == 0:
                return
            await asyncio.sleep(0.002)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)


# -- Splunk HEC -----------------------------------------------------------------------------

class HecSink:
    def __init__(self, spec: SinkSpec, node: str | None) -> None:
        self.name = spec.name
        self._spec = spec
        base = str(spec.option("url")).rstrip("/")
        self._url = base if base.endswith("/services/collector/event") else \
            f"{base}/services/collector/event"
        self._ack_url = self._url.rsplit("/event", 1)[0] + "/ack"
        token = _credential(spec.option("token"), spec.name, "token")
        self._headers = {"Authorization": f"Splunk {token}"}
        self._ack = bool(spec.option("ack"))
        if self._ack:  # indexer acknowledgement works per channel
            self._headers["X-Splunk-Request-Channel"] = str(uuid.uuid4())
        self._map = mappings.json_mapping(spec.mapping)
        self._fields = {k: v for k in ("index", "sourcetype", "source")
                        if (v := spec.option(k)) is not None}
        self._host = spec.option("host") or node
        self._client = _http_client(spec)

    def event(self, record: Record) -> bytes:
        event = {"time": _epoch(record["ts"]), **self._fields, "event": self._map(record)}
        if self._host:
            event["host"] = self._host
        return orjson.dumps(event)

    async def send(self, records: list[Record]) -> None:
        body = b"\n".join(map(self.event, records))
        answer = await _post(self._client, self._url, body, self._headers,
                             self._spec.option("gzip"), f"HEC {self.name}")
        if answer.get("code", 0) != 0:
            raise SinkError(f"HEC {self.name}: {answer.get('text') or answer}")
        if self._ack:
            if "ackId" not in answer:
                raise SinkError(f"HEC {self.name}: acknowledgement is on, but Splunk gave no "
                                "ackId: enable indexer acknowledgement on the token")
            await self._indexed(int(answer["ackId"]))

    async def _indexed(self, ack_id: int) -> None:
        deadline = time.monotonic() + float(self._spec.option("ack_timeout"))
        wait = 0.2
        while True:
            answer = await _post(self._client, self._ack_url,
                                 orjson.dumps({"acks": [ack_id]}), self._headers, False,
                                 f"HEC {self.name} ack")
            if (answer.get("acks") or {}).get(str(ack_id)) is True:
                return
            if time.monotonic() + wait > deadline:
                raise SinkError(f"HEC {self.name}: batch {ack_id} not indexed within "
                                f"{self._spec.option('ack_timeout'):g}s")
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)

    async def close(self) -> None:
        await self._client.aclose()


# -- HTTP NDJSON / Elasticsearch _bulk ---------------------------------------------------

_DELIVERED = {200, 201, 409}  # a _bulk create: made, or there already (a resend)


class HttpSink:
    def __init__(self, spec: SinkSpec, node: str | None) -> None:
        self.name = spec.name
        self._spec = spec
        self._url = str(spec.option("url"))
        self._bulk = spec.option("format") == "elastic_bulk"
        self._index = spec.option("index")
        self._map = mappings.json_mapping(spec.mapping)
        self._headers = {"Content-Type": "application/x-ndjson", **spec.option("headers")}
        if spec.option("auth") is not None:
            self._headers[spec.option("auth_header")] = _credential(
                spec.option("auth"), spec.name, "auth")
        self._client = _http_client(spec)

    def body(self, records: list[Record]) -> bytes:
        lines = []
        for record in records:
            if self._bulk:
                lines.append(orjson.dumps({"create": {"_index": self._index,
                                                      "_id": record["id"]}}))
            lines.append(orjson.dumps(self._map(record)))
        return b"\n".join(lines) + b"\n"

    async def send(self, records: list[Record]) -> None:
        answer = await _post(self._client, self._url, self.body(records), self._headers,
                             self._spec.option("gzip"), f"HTTP sink {self.name}")
        if self._bulk and answer.get("errors"):
            failed = [item for entry in answer.get("items", []) for item in entry.values()
                      if item.get("status") not in _DELIVERED]
            if failed:
                error = failed[0].get("error") or {}
                raise SinkError(f"HTTP sink {self.name}: {len(failed)} of {len(records)} "
                                f"documents refused ({failed[0].get('status')} "
                                f"{error.get('type', '')})")

    async def close(self) -> None:
        await self._client.aclose()


# -- shared ---------------------------------------------------------------------------------

async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str],
                compress: bool, what: str) -> dict[str, Any]:
    if compress:
        body, headers = gzip.compress(body, 5), {**headers, "Content-Encoding": "gzip"}
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise SinkError(f"{what}: {_why(exc)}") from None
    if response.status_code // 100 != 2:
        raise SinkError(f"{what}: HTTP {response.status_code} {_excerpt(response)}")
    try:
        answer = response.json() if response.content else {}
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _http_client(spec: SinkSpec) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = bool(spec.option("verify_tls", True))
    if spec.option("ca"):
        verify = ssl.create_default_context(cafile=spec.option("ca"))
    # trust_env off: an HTTPS_PROXY set for agents (often this very proxy) is not the
    # way to the SIEM
    return httpx.AsyncClient(verify=verify, timeout=spec.timeout, trust_env=False)


def _tls_context(spec: SinkSpec) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=spec.option("ca"))
    if spec.option("client_cert"):
        context.load_cert_chain(spec.option("client_cert"), spec.option("client_key"))
    return context


def _credential(source: tuple[str, str] | None, sink: str, what: str) -> str:
    if source is None:
        raise SinkError(f"sink {sink}: no {what} configured")
    kind, name = source
    if kind == "env":
        value = os.environ.get(name, "")
        if not value:
            raise SinkError(f"sink {sink}: the environment variable {name} ({what}) is not "
                            "set")
        logs.register_secret(value.strip(), "SINK_CREDENTIAL")
        return value.strip()
    try:
        value = Path(name).read_text().strip()
    except OSError as exc:
        raise SinkError(f"sink {sink}: cannot read its {what} from {name}: "
                        f"{exc.strerror}") from None
    if not value:
        raise SinkError(f"sink {sink}: {name} ({what}) is empty")
    logs.register_secret(value, "SINK_CREDENTIAL")
    return value


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200] + ("…" if len(text) > 200 else "")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
