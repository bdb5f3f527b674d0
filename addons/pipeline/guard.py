"""The proxy's own defences: limits on what an agent may send, and protocol abuse.

Before anything costs work (a token check, a key fetch, a byte upstream):
- every agent connection's HTTP layer is wrapped in a `watch.ClientWatch` (head
  buffering cap, header and body timeouts, HTTP/2 stream resets);
- a request is refused when its head has too many fields or bytes (431), when it
  declares a body larger than `egressguard_max_request_body` (413), when it asks to
  switch protocols to anything but a WebSocket (`Upgrade: h2c`) or opens HTTP/2 in
  clear (`PRI *`) (400);
- an HTTP/2 stream the agent has reset is dropped, unsent (rapid reset).

HTTP/2 is preferred when the agent offers it (its SDK's client lists `http/1.1`
first, and mitmproxy follows the client's order). Request smuggling (conflicting
Content-Length / Transfer-Encoding) is refused by mitmproxy's own header validation,
which this addon will not run without.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import MutableMapping

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers import ClientTLSLayer
from mitmproxy.proxy.layers.http import HttpLayer

from egressguard.core import bodies
from egressguard.core.errors import BadRequest, EgressError, HeadersTooLarge, RequestTooLarge
from egressguard.pipeline import flowstate
from egressguard.pipeline.watch import ANSWER_NOW, RESET, ClientWatch, HeadClock, Limits

log = logging.getLogger(__name__)

MAX_HEADERS = 100
IDLE_TIMEOUT = 600  # seconds without a byte either way (mitmproxy's tcp_timeout)


def limit_options(*, max_request_body: int = bodies.MAX_DECODED,
                  max_response_body: int = bodies.MAX_ANSWER,
                  idle_timeout: int = IDLE_TIMEOUT, **egressguard: object) -> dict[str, object]:
    """The options `egressguard run` sets for its limits: ours, and mitmproxy's
    `body_size_limit` (a body without Content-Length is buffered up to it, no further;
    mitmproxy refuses past it) and `tcp_timeout` (idle connections)."""
    return {"egressguard_max_request_body": max_request_body,
            "egressguard_max_response_body": max_response_body,
            "body_size_limit": f"{max(max_request_body, max_response_body)}b",
            "tcp_timeout": idle_timeout,
            **{f"egressguard_{k}": v for k, v in egressguard.items()}}


_WATCHED = {b"upgrade", b"http2-settings", b"content-length"}
_WATCHED_LENGTHS = {len(name) for name in _WATCHED}


def check_head(request: http.Request, limits: Limits, max_headers: int,
               max_body: int) -> EgressError | None:
    """Why a request head is refused, or None. One pass over the raw fields (a few
    microseconds for an SDK's twenty headers): only names of a watched length are
    lower-cased."""
    if request.method == "PRI":
        return BadRequest("HTTP/2 in clear text (h2c prior knowledge) is not supported; "
                          "use HTTP/2 over TLS (ALPN h2) or HTTP/1.1", reason="h2c_refused")
    fields = request.headers.fields
    if len(fields) > max_headers:
        return HeadersTooLarge(f"the request has {len(fields)} header fields; egressguard "
                               f"accepts at most {max_headers}", reason="too_many_headers")
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + 4
        if len(name) in _WATCHED_LENGTHS and (lower := name.lower()) in _WATCHED:
            if err := _watched(lower, value, max_body):
                return err
    if size > limits.max_head:
        return HeadersTooLarge(f"the request headers take {size} bytes; egressguard accepts "
                               f"at most {limits.max_head}", reason="headers_too_large")
    return None


def _watched(name: bytes, value: bytes, max_body: int) -> EgressError | None:
    if name == b"content-length":
        if value.isdigit() and int(value) > max_body:
            return RequestTooLarge(f"the request body is {int(value)} bytes; egressguard "
                                   f"accepts at most {max_body}", reason="body_too_large")
        return None
    if name == b"http2-settings":
        return BadRequest("HTTP2-Settings belongs to an h2c upgrade, which egressguard "
                          "does not do", reason="upgrade_refused")
    for protocol in value.split(b","):  # Upgrade
        token = protocol.strip().split(b"/", 1)[0].lower()
        if token and token != b"websocket":
            return BadRequest(
                f"egressguard does not switch protocols to {token.decode(errors='replace')!r};"
                " use HTTP/2 over TLS (ALPN h2) or HTTP/1.1", reason="upgrade_refused")
    return None


class Guard:
    def __init__(self) -> None:
        self.limits = Limits()
        self.max_headers = MAX_HEADERS
        self.max_body = bodies.MAX_DECODED
        self.clocks: MutableMapping[connection.Client, HeadClock] = weakref.WeakKeyDictionary()
        self.running_ = False

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        d = Limits()
        loader.add_option("egressguard_max_request_body", int, bodies.MAX_DECODED,
                          "Largest request body (bytes, as declared by Content-Length) "
                          "egressguard accepts; larger ones get 413.")
        loader.add_option("egressguard_max_header_bytes", int, d.max_head,
                          "Largest request head in bytes (431 past it).")
        loader.add_option("egressguard_max_headers", int, MAX_HEADERS,
                          "Most header fields in one request (431 past it).")
        loader.add_option("egressguard_header_timeout", float, d.header_timeout,
                          "Seconds an agent has to send a whole request head, from the "
                          "connection (or tunnel) opening or the head's first byte.")
        loader.add_option("egressguard_body_timeout", float, d.body_timeout,
                          "Seconds an agent has to send a whole request body after its head.")
        loader.add_option("egressguard_max_stream_resets", int, d.max_resets,
                          "HTTP/2 streams one agent connection may reset before it is "
                          "closed (rapid reset).")

    def configure(self, updated: set[str]) -> None:
        if self.running_ and (problem := unsafe_mitmproxy_options()):
            raise exceptions.OptionsError(problem)
        o = ctx.options
        numbers = {"egressguard_max_request_body": o.egressguard_max_request_body,
                   "egressguard_max_header_bytes": o.egressguard_max_header_bytes,
                   "egressguard_max_headers": o.egressguard_max_headers,
                   "egressguard_header_timeout": o.egressguard_header_timeout,
                   "egressguard_body_timeout": o.egressguard_body_timeout,
                   "egressguard_max_stream_resets": o.egressguard_max_stream_resets}
        if bad := [f"{k}={v}" for k, v in numbers.items() if v <= 0]:
            raise exceptions.OptionsError(f"must be more than 0: {', '.join(bad)}")
        self.limits = Limits(o.egressguard_max_header_bytes, o.egressguard_header_timeout,
                             o.egressguard_body_timeout, o.egressguard_max_stream_resets)
        self.max_headers, self.max_body = o.egressguard_max_headers, \
            o.egressguard_max_request_body

    def running(self) -> None:
        # checked once every option is set (`egressguard run` sets them after loading
        # the addons); an error logged now stops the start-up
        self.running_ = True
        if problem := unsafe_mitmproxy_options():
            log.error(problem)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        decided = nextlayer.layer
        if isinstance(decided, HttpLayer):
            nextlayer.layer = self._watch(decided)
        elif isinstance(decided, ClientTLSLayer) and isinstance(decided.child_layer, HttpLayer):
            decided.child_layer = self._watch(decided.child_layer)  # TLS to the proxy itself

    def _watch(self, inner: HttpLayer) -> ClientWatch:
        clock = self.clocks.setdefault(inner.context.client, HeadClock())
        return ClientWatch(inner, self.limits, clock, hang_up=hang_up)

    def tls_start_client(self, tls_start: tls.TlsData) -> None:
        """Choose h2 when the agent offers it, whatever its order of preference."""
        app = tls_start.ssl_conn.get_app_data() if tls_start.ssl_conn is not None else None
        if (isinstance(app, dict) and ctx.options.http2 and app.get("client_alpn") is None
                and not app.get("server_alpn")
                and b"h2" in (tls_start.context.client.alpn_offers or ())):
            app["client_alpn"] = b"h2"

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow) or _drop_reset(flow):
            return
        if err := check_head(flow.request, self.limits, self.max_headers, self.max_body):
            flowstate.refuse(flow, err)
            flow.metadata[ANSWER_NOW] = True  # not after reading the body it refuses

    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if flowstate.is_live_request(flow):
            _drop_reset(flow)


def hang_up(client: connection.Client) -> None:
    """Close an abusive agent's socket now, after the CloseConnection command.

    mitmproxy closes a connection by cancelling its reader task; when that task is
    cancelled while queued for the proxy's event lock (which a flood of hooks keeps
    busy), the cancellation escapes before the socket is closed, and the agent never
    sees its connection end. Closing the transport makes sure it does.
    """
    server = ctx.master.addons.get("proxyserver")
    handler = getattr(server, "connections", {}).get(client.id)
    io = getattr(handler, "transports", {}).get(client)
    writer = getattr(io, "writer", None)
    if writer is not None and not writer.is_closing():
        writer.close()


def unsafe_mitmproxy_options() -> str | None:
    """Why mitmproxy's options would undo a defence, or None."""
    o = ctx.options
    if "validate_inbound_headers" in o and not o.validate_inbound_headers:
        return ("validate_inbound_headers must stay on: it is what refuses request "
                "smuggling (conflicting Content-Length and Transfer-Encoding)")
    if "rawtcp" in o and o.rawtcp:
        return ("set rawtcp=false: with it, bytes inside a tunnel that are not HTTP go to "
                "the vendor unidentified and unaudited")
    return None


def _drop_reset(flow: http.HTTPFlow) -> bool:
    """An HTTP/2 stream the agent reset is not sent on (and is recorded as such)."""
    if not flow.metadata.get(RESET):
        return False
    flow.metadata[flowstate.REFUSAL] = BadRequest(
        "the agent reset this HTTP/2 stream (or its connection was closed) before "
        "egressguard sent it on; nothing was sent", reason="stream_reset")
    flow.kill()
    return True
