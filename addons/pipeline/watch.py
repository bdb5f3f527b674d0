"""What an agent may do before any addon sees a request: a layer around mitmproxy's
HTTP layer of each agent connection.

mitmproxy buffers an HTTP/1 request head until it is complete, however long it grows
or however slowly it comes, and runs the addons for an HTTP/2 stream even when the
client has already reset it. No hook sees those bytes, so `ClientWatch` does: it
passes every event through to the HTTP layer unchanged and then looks at the result.

- HTTP/1: more than `max_head` bytes waiting unparsed (a head without its end, a
  chunk-size line without its end, data piled up behind a request) → 431 and close.
- A request head not complete within `header_timeout` seconds of the connection (or
  tunnel) opening, or of its first byte (slowloris) → 408 and close; a request body
  not complete within `body_timeout` of its head → 408 and close.
- HTTP/2: the frame headers the client sends are read (`h2scan`). A stream the client
  resets is marked on its flow (`RESET`), so the pipeline drops it before anything is
  sent upstream; past `max_resets` resets the connection is closed (rapid reset).

Idle connections are mitmproxy's own `tcp_timeout`. The layer reads two mitmproxy
internals, `HttpLayer.connections`/`.streams` and `Http1Server.buf`/`.state`;
tests/test_guard.py fails if a mitmproxy upgrade moves them.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import Http1Server, HttpLayer, HttpRequestHeadersHook

from egressguard.core import h2scan
from egressguard.core.errors import (
    BadRequest,
    EgressError,
    HeadersTooLarge,
    RequestTimedOut,
    vendor_error_body,
)

log = logging.getLogger(__name__)

RESET = "egressguard.client_reset"  # flow metadata: the agent reset this HTTP/2 stream
# flow metadata: the refusal set at requestheaders goes out at once and the connection
# closes, instead of mitmproxy first reading (and buffering) the body it refuses
ANSWER_NOW = "egressguard.answer_now"


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int = 64 << 10  # bytes of an HTTP/1 request head (and of anything unparsed)
    header_timeout: float = 30.0
    body_timeout: float = 300.0
    max_resets: int = 200  # HTTP/2 streams one connection may reset


@dataclass(slots=True)
class HeadClock:
    """When the agent connection began waiting for a request head that has not come
    yet; shared by the watches of one connection (the proxy connection and the TLS
    tunnel inside it), so the CONNECT, the handshake and the first request count as
    one wait."""

    since: float | None = None
    # the innermost watch, which times the wait and answers; weak, because the clock is
    # kept per client connection and the watch holds that connection
    owner: weakref.ref[ClientWatch] | None = None


class ClientWatch(layer.Layer):
    def __init__(self, inner: HttpLayer, limits: Limits, clock: HeadClock,
                 now: Callable[[], float] = time.monotonic,
                 hang_up: Callable[[connection.Client], None] = lambda client: None) -> None:
        super().__init__(inner.context)
        self.context.layers.remove(self)  # a pass-through: not a layer of the stack
        self.inner, self.limits, self.head, self.now = inner, limits, clock, now
        self.hang_up = hang_up  # closes the agent's socket itself (see Guard.hang_up)
        self.client = inner.context.client
        self.frames: h2scan.FrameScanner | None = None
        self.bodies: dict[int, float] = {}  # request bodies being received: id -> since
        self.resets = 0
        self._tunnel_armed = False
        self._seen_data = False
        # wake-ups asked of mitmproxy and when each is due. Each is a task sleeping in
        # mitmproxy, so at most the earliest is kept pending: it re-arms for the next
        # deadline when it fires (one per request would be 60,000 sleeping tasks at
        # 200 requests/s with the 300 s body timeout)
        self._wakeups: dict[commands.RequestWakeup, float] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"ClientWatch({self.inner!r})"

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from self.handle_event(event)  # pragma: no cover - handle_event is used

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup) and event.command in self._wakeups:
            del self._wakeups[event.command]
            if not self._closed:
                yield from self._check_deadlines()
            if not self._closed:
                yield from self._rearm()
            return
        if self._h2c_preface(event):
            yield from self._close(BadRequest(
                "HTTP/2 in clear text (h2c prior knowledge) is not supported; use HTTP/2 "
                "over TLS (ALPN h2) or HTTP/1.1", reason="h2c_refused"))
            return
        for command in self.inner.handle_event(event):
            yield command
            if isinstance(command, commands.CloseConnection) \
                    and command.connection is self.client \
                    and not getattr(command, "half_close", False):
                # mitmproxy closes it (an HTTP/2 protocol error, say): nothing more to
                # watch, and the socket is closed for sure (see Guard.hang_up)
                self._closed = True
                self.hang_up(self.client)
        if self._closed:
            return
        if isinstance(event, events.HookCompleted) \
                and isinstance(event.command, HttpRequestHeadersHook):
            yield from self._answer_now(event.command.flow)
        elif isinstance(event, events.Start):
            if self.client.alpn == b"h2":
                self.frames = h2scan.FrameScanner()
            yield from self._waiting_for_head()
        elif isinstance(event, events.DataReceived) and event.connection is self.client:
            if self.frames is not None:
                yield from self._h2_frames(self.frames.feed(event.data))
            else:
                yield from self._h1_state()

    def _h2c_preface(self, event: events.Event) -> bool:
        """The first bytes of an HTTP/1 connection are HTTP/2's preface: the agent
        speaks h2c, which mitmproxy would only half-parse."""
        if self._seen_data or not isinstance(event, events.DataReceived) \
                or event.connection is not self.client:
            return False
        self._seen_data = True
        return self.client.alpn != b"h2" and event.data.startswith(h2scan.PREFACE[:14])

    def _answer_now(self, flow: http.HTTPFlow) -> layer.CommandGenerator[None]:
        """An HTTP/1 refusal marked ANSWER_NOW, while the body is still coming: sent now,
        then the connection closed (mitmproxy would answer once it had the whole body)."""
        conn = self.inner.connections.get(self.client)
        if flow.metadata.get(ANSWER_NOW) and flow.response is not None \
                and isinstance(conn, Http1Server) and conn.state == conn.read_body:
            self._closed = True
            response = flow.response.copy()
            response.headers["connection"] = "close"
            yield commands.SendData(self.client, http1.assemble_response(response))
            yield commands.CloseConnection(self.client)

    # -- HTTP/1 -------------------------------------------------------------------------
    def _h1_state(self) -> layer.CommandGenerator[None]:
        conn = self.inner.connections.get(self.client)
        if not isinstance(conn, Http1Server):
            return
        if len(conn.buf) > self.limits.max_head:
            yield from self._close(HeadersTooLarge(
                f"the request head (or data sent ahead of a response) passed "
                f"{self.limits.max_head} bytes, the most egressguard buffers",
                reason="headers_too_large"), answer=conn.state == conn.read_headers)
            return
        state = conn.state
        if state == conn.read_headers:
            if conn.buf:
                yield from self._waiting_for_head()
        elif state == conn.passthrough:
            connect = conn.request is not None and conn.request.method == "CONNECT"
            if connect and not self._tunnel_armed:  # the tunnel's first request is next
                self._tunnel_armed = True
                self.head.since = None
                yield from self._waiting_for_head()
            elif not connect:
                self.head.since = None  # a WebSocket: no more heads on this connection
        else:
            self.head.since = None
        if state == conn.read_body:
            if 1 not in self.bodies:
                self.bodies[1] = self.now()
                yield from self._wake_in(self.limits.body_timeout)
        else:
            self.bodies.clear()

    # -- HTTP/2 -------------------------------------------------------------------------
    def _h2_frames(self, frames: list[h2scan.Frame]) -> layer.CommandGenerator[None]:
        for frame in frames:
            if frame.type in (h2scan.HEADERS, h2scan.CONTINUATION):
                if frame.flags & h2scan.END_HEADERS:
                    self.head.since = None
                else:
                    yield from self._waiting_for_head()
                if frame.type == h2scan.HEADERS:
                    if frame.flags & h2scan.END_STREAM:
                        self.bodies.pop(frame.stream_id, None)
                    elif frame.stream_id not in self.bodies:
                        self.bodies[frame.stream_id] = self.now()
                        yield from self._wake_in(self.limits.body_timeout)
            elif frame.type == h2scan.DATA and frame.flags & h2scan.END_STREAM:
                self.bodies.pop(frame.stream_id, None)
            elif frame.type == h2scan.RST_STREAM:
                self.bodies.pop(frame.stream_id, None)
                self._mark_reset(frame.stream_id)
                self.resets += 1
                if self.resets > self.limits.max_resets:
                    yield from self._close(None, log_reason=(
                        f"{self.resets} HTTP/2 streams reset by the client, more than "
                        f"{self.limits.max_resets} (rapid reset)"))
                    return

    def _mark_reset(self, stream_id: int) -> None:
        self._mark(getattr(self.inner.streams.get(stream_id), "flow", None))

    @staticmethod
    def _mark(flow: object) -> None:
        if isinstance(flow, http.HTTPFlow) and flow.response is None:
            flow.metadata[RESET] = True

    # -- deadlines ----------------------------------------------------------------------
    def _waiting_for_head(self) -> layer.CommandGenerator[None]:
        now, fresh = self.now(), self.head.since is None
        if fresh:
            self.head.since = now
        if fresh or self._owner() is not self:
            self.head.owner = weakref.ref(self)
            yield from self._wake_in(self.head.since + self.limits.header_timeout - now)

    def _owner(self) -> ClientWatch | None:
        return self.head.owner() if self.head.owner is not None else None

    def _wake_in(self, delay: float) -> layer.CommandGenerator[None]:
        delay = max(delay, 0.0)
        due = self.now() + delay
        if self._wakeups and min(self._wakeups.values()) <= due:
            return  # an earlier one is pending; it re-arms for this deadline
        wakeup = commands.RequestWakeup(delay)
        self._wakeups[wakeup] = due
        yield wakeup

    def _rearm(self) -> layer.CommandGenerator[None]:
        """After a wake-up: one for the next deadline still running, if any."""
        deadlines = [t + self.limits.body_timeout for t in self.bodies.values()]
        if self._owner() is self and self.head.since is not None:
            deadlines.append(self.head.since + self.limits.header_timeout)
        if deadlines:
            yield from self._wake_in(min(deadlines) - self.now())

    def _check_deadlines(self) -> layer.CommandGenerator[None]:
        now = self.now()
        since = self.head.since
        if self._owner() is self and since is not None \
                and now - since >= self.limits.header_timeout:
            yield from self._close(RequestTimedOut(
                f"the request head was not complete within {self.limits.header_timeout:g}s "
                "(egressguard_header_timeout)", reason="header_timeout"))
            return
        started = {sid: t for sid, t in self.bodies.items()
                   if sid == 1 and self.frames is None or sid in self.inner.streams}
        self.bodies = started  # streams mitmproxy has finished with are not waited for
        if started and now - min(started.values()) >= self.limits.body_timeout:
            yield from self._close(RequestTimedOut(
                f"the request body was not complete within {self.limits.body_timeout:g}s "
                "(egressguard_body_timeout)", reason="body_timeout"))

    def _close(self, err: EgressError | None, *, answer: bool = True,
               log_reason: str = "") -> layer.CommandGenerator[None]:
        """Close the agent connection; an HTTP/1 agent waiting for an answer gets `err`
        in the OpenAI error shape (no vendor is known before a request parses)."""
        self._closed = True
        log.warning("closing the connection from %s: %s", _peer(self.client),
                    log_reason or (err.message if err else ""))
        for stream in self.inner.streams.values():  # none of its requests goes on now
            self._mark(getattr(stream, "flow", None))
        if err is not None and answer and self.frames is None:
            conn = self.inner.connections.get(self.client)
            if isinstance(conn, Http1Server) and conn.state in (conn.read_headers,
                                                                conn.read_body):
                yield commands.SendData(self.client, _http1_error(err))
        yield commands.CloseConnection(self.client)
        self.hang_up(self.client)


def _http1_error(err: EgressError) -> bytes:
    return http1.assemble_response(http.Response.make(
        err.status, vendor_error_body(err, None),
        {"content-type": "application/json", "connection": "close"}))


def _peer(client: object) -> str:
    peer = getattr(client, "peername", None)
    return f"{peer[0]}:{peer[1]}" if peer else "?"
