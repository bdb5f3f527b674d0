"""Guard and its ClientWatch layer: request-head limits, h2c, slow clients, HTTP/2 resets.

The addon runs in the whole pipeline (`pipeline` fixture). The layer runs over a real
mitmproxy HttpLayer, fed events by hand with a clock the test moves, and its commands
(wake-ups, bytes to the agent, closing) are what is checked.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable

import h2.config
import h2.connection
import orjson
import pytest
from mitmproxy import connection, exceptions, http, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import (
    Http1Server,
    HttpLayer,
    HTTPMode,
    HttpRequestHeadersHook,
)
from mitmproxy.test import taddons

from egressguard.pipeline import flowstate
from egressguard.pipeline.guard import Guard, limit_options, unsafe_mitmproxy_options
from egressguard.pipeline.watch import ANSWER_NOW, RESET, ClientWatch, HeadClock, Limits

OPENAI = "api.openai.com"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def auth(pipeline) -> list[tuple[str, str]]:
    return [("Authorization", "Bearer " + pipeline.token())]


# -- request heads the addon refuses ------------------------------------------------------

HEADS = [
    # id, method, extra headers, status, reason (None: goes on to the vendor)
    ("plain", "POST", [], 200, None),
    ("websocket-upgrade-goes-on", "GET", [("Connection", "Upgrade"),
                                          ("Upgrade", "websocket")], 200, None),
    ("h2c-upgrade", "POST", [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                             ("HTTP2-Settings", "AAMAAABkAAQAAP__")], 400, "upgrade_refused"),
    ("h2c-upgrade-case-and-list", "POST", [("upgrade", "foo/1, H2C")], 400, "upgrade_refused"),
    ("http2-settings-alone", "POST", [("HTTP2-Settings", "AAMAAABk")], 400, "upgrade_refused"),
    ("h2c-prior-knowledge", "PRI", [], 400, "h2c_refused"),
    ("101-headers", "POST", [(f"x-h{i}", "v") for i in range(101)], 431, "too_many_headers"),
    ("one-huge-header", "POST", [("x-big", "a" * 70_000)], 431, "headers_too_large"),
    ("declared-body-too-large", "POST", [("Content-Length", str(64 << 20))], 413,
     "body_too_large"),
]


@pytest.mark.parametrize(("method", "extra", "status", "reason"),
                         [pytest.param(*h[1:], id=h[0]) for h in HEADS])
def test_request_heads_are_limited(pipeline, method, extra, status, reason):
    tunnel = pipeline.tunnel(OPENAI)
    flow = pipeline.request(tunnel, method=method, headers=[*auth(pipeline), *extra],
                            body=BODY if method == "POST" and not reason else b"")
    pipeline.run(flow)
    assert flow.response.status_code == status
    if reason is None:
        assert flowstate.REFUSAL not in flow.metadata
        return
    error = orjson.loads(flow.response.content)["error"]
    assert error["code"] == reason
    assert pipeline.store.asked == []  # refused before a key was fetched
    [record] = pipeline.records()
    assert (record["decision"], record["reason"]) == ("deny", reason)
    message = error["message"]
    assert {"upgrade_refused": "does not", "h2c_refused": "HTTP/2 in clear text",
            "too_many_headers": "at most 100", "headers_too_large": "at most 65536",
            "body_too_large": "at most 16777216"}[reason] in message


def test_a_stream_the_agent_reset_is_dropped_unsent(pipeline):
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline), body=BODY)
    flow.metadata[RESET] = True  # what ClientWatch marks when RST_STREAM arrives
    pipeline.run(flow)
    assert flow.error is not None and flow.response is None
    assert pipeline.store.asked == []
    [record] = pipeline.records()
    assert (record["decision"], record["reason"]) == ("deny", "stream_reset")


def test_a_reset_during_the_request_hooks_still_drops_it(pipeline):
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline), body=BODY)
    pipeline.run(flow, ["requestheaders"])
    flow.metadata[RESET] = True  # the RST came while the pipeline was working on it
    pipeline.run(flow, ["request"])
    assert flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE


# -- options -------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["egressguard_max_request_body", "egressguard_header_timeout",
                                    "egressguard_body_timeout", "egressguard_max_headers",
                                    "egressguard_max_stream_resets"])
def test_limits_must_be_positive(pipeline, option):
    with pytest.raises(exceptions.OptionsError, match=f"must be more than 0: {option}=0"):
        pipeline.tctx.options.update(**{option: 0})


def test_mitmproxy_options_that_undo_a_defence_stop_the_start():
    with taddons.context(Guard()) as tctx:  # mitmproxy's defaults: rawtcp on
        Proxyserver().load(tctx.options)  # declares validate_inbound_headers
        assert "rawtcp=false" in (unsafe_mitmproxy_options() or "")
        tctx.options.update(rawtcp=False)
        assert unsafe_mitmproxy_options() is None
        tctx.options.update(validate_inbound_headers=False)
        assert "request smuggling" in (unsafe_mitmproxy_options() or "")


def test_run_sets_mitmproxys_body_limit_and_idle_timeout():
    opts = limit_options(max_request_body=10, max_response_body=30, idle_timeout=99,
                         header_timeout=2.0)
    assert opts["body_size_limit"] == "30b" and opts["tcp_timeout"] == 99
    assert opts["egressguard_header_timeout"] == 2.0


# -- ClientWatch over a real HttpLayer -----------------------------------------------------

class Clock:
    """The watch's clock, and the event loop's timers: wake-ups the watch asks for are
    delivered by `wake` once the clock has passed them, as mitmproxy would."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: dict[commands.RequestWakeup, float] = {}

    def __call__(self) -> float:
        return self.now

    def track(self, cmds: list[commands.Command]) -> list[commands.Command]:
        for c in cmds:
            if isinstance(c, commands.RequestWakeup):
                self.timers[c] = self.now + c.delay
        return cmds


LIMITS = Limits(max_head=1000, header_timeout=5, body_timeout=10, max_resets=5)


def watch(alpn: bytes | None = None, limits: Limits = LIMITS,
          clock: Clock | None = None) -> tuple[ClientWatch, list[commands.Command]]:
    """A started ClientWatch around an HttpLayer (a proxy's HTTP/1 connection, or an
    HTTP/2 one when `alpn` is h2), and the commands the start gave."""
    opts = options.Options()
    Proxyserver().load(opts)
    client = connection.Client(peername=("192.0.2.1", 1234), sockname=("127.0.0.1", 8080),
                               timestamp_start=time.time(),
                               state=connection.ConnectionState.OPEN, alpn=alpn)
    tctx = context.Context(client, opts)
    clock = clock or Clock()
    w = ClientWatch(HttpLayer(tctx, HTTPMode.regular), limits, HeadClock(), clock)
    return w, clock.track(list(w.handle_event(events.Start())))


def feed(w: ClientWatch, data: bytes) -> list[commands.Command]:
    clock = w.now
    cmds = list(w.handle_event(events.DataReceived(w.client, data)))
    return clock.track(cmds) if isinstance(clock, Clock) else cmds


def wake(w: ClientWatch, clock: Clock, seconds: float) -> list[commands.Command]:
    """Move the clock and deliver the wake-ups that are due."""
    clock.now += seconds
    out: list[commands.Command] = []
    for wakeup, due in list(clock.timers.items()):
        if due <= clock.now:
            del clock.timers[wakeup]
            out += clock.track(list(w.handle_event(events.Wakeup(wakeup))))
    return out


def closed_with(cmds: Iterable[commands.Command]) -> tuple[bool, dict | None]:
    """(was the connection closed, the error body sent to the agent if any)."""
    cmds = list(cmds)
    sent = [c.data for c in cmds if isinstance(c, commands.SendData)
            and c.data.startswith(b"HTTP/1.1 ")]
    body = orjson.loads(sent[-1].split(b"\r\n\r\n", 1)[1]) if sent else None
    return any(isinstance(c, commands.CloseConnection) for c in cmds), body


HEAD = b"POST http://api.openai.com/v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"


def test_a_closed_connection_leaves_nothing_behind():
    """The per-connection clock must not keep its connection alive (it did: the clock
    held the watch, the watch the connection, so a WeakKeyDictionary never let go)."""
    guard = Guard()
    w, _ = watch()
    inner = guard._watch(HttpLayer(w.inner.context, HTTPMode.regular))
    list(inner.handle_event(events.Start()))  # the watch owns the connection's clock now
    assert len(guard.clocks) == 1 and guard.clocks[w.client].since is not None
    del w, inner
    gc.collect()
    assert len(guard.clocks) == 0


def test_mitmproxy_internals_the_watch_reads_are_there():
    w, _ = watch()
    conn = w.inner.connections[w.client]
    assert isinstance(conn, Http1Server)
    assert conn.state == conn.read_headers and len(conn.buf) == 0
    assert {"read_body", "passthrough"} <= set(dir(conn)) and w.inner.streams == {}


def test_a_head_sent_slowly_is_cut_off_with_408():
    clock = Clock()
    w, started = watch(clock=clock)
    assert [c.delay for c in started if isinstance(c, commands.RequestWakeup)] == [5]
    for byte in HEAD:  # slowloris: one byte a second keeps mitmproxy's idle timer happy
        assert closed_with(feed(w, bytes([byte])))[0] is False
        if clock.now - 1000 < 4:
            clock.now += 1
    closed, body = closed_with(wake(w, clock, 1))
    assert closed and body["error"]["code"] == "header_timeout"
    assert "within 5s" in body["error"]["message"]


def test_a_head_in_time_is_not_cut_off():
    clock = Clock()
    w, _ = watch(clock=clock)
    cmds = feed(w, HEAD + b"Content-Length: 0\r\n\r\n")
    assert any(isinstance(c, HttpRequestHeadersHook) for c in cmds)
    assert closed_with(wake(w, clock, 60)) == (False, None)


def test_a_body_sent_slowly_is_cut_off_with_408():
    clock = Clock()
    w, _ = watch(clock=clock)
    feed(w, HEAD + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    assert closed_with(wake(w, clock, 9)) == (False, None)
    feed(w, b"x" * 10)
    closed, body = closed_with(wake(w, clock, 1))
    assert closed and body["error"]["code"] == "body_timeout"


def test_a_refusal_of_the_head_goes_out_before_the_body_is_read():
    w, _ = watch()
    [hook] = [c for c in feed(w, HEAD + b"Content-Length: 5000000\r\n\r\n" + b"x" * 10)
              if isinstance(c, HttpRequestHeadersHook)]
    hook.flow.response = http.Response.make(413, b'{"error": {}}')  # as Guard refuses it
    hook.flow.metadata[ANSWER_NOW] = True
    cmds = list(w.handle_event(events.HookCompleted(hook)))
    sent = [c.data for c in cmds if isinstance(c, commands.SendData)]
    assert sent[-1].startswith(b"HTTP/1.1 413") and b"connection: close" in sent[-1]
    assert isinstance(cmds[-1], commands.CloseConnection)


def test_an_endless_head_is_refused_at_the_buffer_cap():
    w, _ = watch()
    assert closed_with(feed(w, HEAD + b"X-Pad: " + b"a" * 800)) == (False, None)
    closed, body = closed_with(feed(w, b"a" * 200))  # still no end of head: 1000 bytes
    assert closed and body["error"]["code"] == "headers_too_large"


def test_an_endless_chunk_size_line_is_refused_too():
    w, _ = watch()
    feed(w, HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    closed, body = closed_with(feed(w, b"f" * 1001))
    assert closed and body is None  # mid-request: nothing to answer on, just closed


def test_h2c_prior_knowledge_is_refused_before_mitmproxy_parses_it():
    w, _ = watch()
    closed, body = closed_with(feed(w, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
    assert closed and body["error"]["code"] == "h2c_refused"


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


H2_HEAD = [(":method", "GET"), (":scheme", "https"), (":authority", "api.openai.com"),
           (":path", "/v1/models")]


def requested(cmds: Iterable[commands.Command]) -> list:
    return [c.flow for c in cmds if isinstance(c, HttpRequestHeadersHook)]


def test_http2_streams_the_agent_reset_are_marked_before_any_hook_returns():
    w, _ = watch(b"h2")
    client = h2_client()
    client.send_headers(1, H2_HEAD, end_stream=True)
    client.reset_stream(1)
    client.send_headers(3, H2_HEAD, end_stream=True)
    flows = requested(feed(w, client.data_to_send()))
    assert len(flows) == 2
    assert flows[0].metadata.get(RESET) is True  # dropped by Guard at requestheaders
    assert RESET not in flows[1].metadata


def test_rapid_reset_closes_the_connection_and_drops_every_pending_stream():
    w, _ = watch(b"h2")
    client = h2_client()
    for sid in range(1, 2 * 8, 2):  # 8 resets, 5 allowed
        client.send_headers(sid, H2_HEAD, end_stream=True)
        client.reset_stream(sid)
    client.send_headers(17, H2_HEAD, end_stream=True)  # after the budget: never sent on
    cmds = feed(w, client.data_to_send())
    flows = requested(cmds)
    assert closed_with(cmds)[0] and w.resets == 6
    assert len(flows) == 9 and all(f.metadata.get(RESET) for f in flows)


def test_an_http2_header_block_never_finished_is_cut_off():
    clock = Clock()
    w, _ = watch(b"h2", clock=clock)
    client = h2_client()
    feed(w, client.data_to_send())
    assert closed_with(wake(w, clock, 4)) == (False, None)  # the connection's first head
    block = client.encoder.encode(H2_HEAD)
    frame = len(block).to_bytes(3, "big") + bytes([0x1, 0x0]) + (1).to_bytes(4, "big")
    feed(w, frame + block)  # HEADERS without END_HEADERS: CONTINUATION should follow
    closed, body = closed_with(wake(w, clock, 5))
    assert closed and body is None  # HTTP/2: closed, no HTTP/1 answer



def test_only_the_earliest_wake_up_is_pending_and_it_re_arms():
    """Each wake-up is a task sleeping in mitmproxy (for up to the 300 s body timeout):
    the watch keeps only the earliest pending, and still enforces every deadline."""
    clock = Clock()
    w, _ = watch(clock=clock)  # the head's wake-up, due in 5 s
    feed(w, HEAD + b"Content-Length: 100\r\n\r\n" + b"x" * 10)  # a body that stalls
    assert len(clock.timers) == 1  # the body's deadline (10 s) is later: not armed yet
    assert closed_with(wake(w, clock, 5)) == (False, None)  # fires, re-arms for the body
    assert [round(due - clock.now) for due in clock.timers.values()] == [5]
    closed, body = closed_with(wake(w, clock, 5))
    assert closed and body["error"]["code"] == "body_timeout"
