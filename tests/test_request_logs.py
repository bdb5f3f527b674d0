"""Log lines name the request they concern: the id of its audit record.

Our hooks (flowstate.fail_closed sets logs.REQUEST_ID around each) and mitmproxy's own
lines about a connection (pipeline/connlogs.py) alike.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from conftest import Pipeline
from mitmproxy.test import tflow

from egressguard.core import logs
from egressguard.pipeline import flowstate
from egressguard.pipeline.connlogs import LOGGER

HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
log = logging.getLogger("egressguard.test")


class Lines:
    """What a JSON handler on the root logger wrote, one dict per line."""

    def __init__(self) -> None:
        self.out = io.StringIO()

    def all(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.out.getvalue().splitlines()]

    def with_message(self, text: str) -> dict[str, Any]:
        found = [line for line in self.all() if text in line["message"]]
        assert len(found) == 1, self.all()
        return found[0]


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines()
    handler = logging.StreamHandler(captured.out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield captured
    finally:
        root.removeHandler(handler)


def call(hook: Any, flow: Any) -> None:
    result = hook(flow)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


# -- our hooks -----------------------------------------------------------------------
def test_a_warning_in_a_hook_names_the_flows_audit_record(pipeline: Pipeline,
                                                          lines: Lines) -> None:
    """Through the whole pipeline: the key is missing (Inject warns, in an async hook)."""
    pipeline.store.values.clear()
    flow = pipeline.send("api.openai.com", headers=[("authorization",
                                                     f"Bearer {pipeline.token()}")],
                         body=HELLO)
    assert flow.response is not None and flow.response.status_code == 503
    record = pipeline.records()[-1]
    assert record["reason"] == "secret_missing"
    line = lines.with_message("refusing openai request")
    assert line["level"] == "warning"
    assert line["request_id"] == record["id"] == flow.response.headers["x-egressguard-request-id"]


class Hooks:
    """A sync and an async hook that log, and ones that raise."""

    def __init__(self) -> None:
        self.background: asyncio.Future[None] | None = None

    @flowstate.fail_closed
    def sync_hook(self, flow: Any) -> None:
        log.warning("sync hook ran")

    @flowstate.fail_closed
    async def async_hook(self, flow: Any) -> None:
        await asyncio.sleep(0)
        log.warning("async hook ran")

    @flowstate.fail_closed
    async def spawning_hook(self, flow: Any) -> None:
        async def later() -> None:
            await asyncio.sleep(0.01)
            log.warning("background task ran")

        self.background = asyncio.ensure_future(later())
        await self.background

    @flowstate.fail_closed
    def raising_hook(self, flow: Any) -> None:
        raise RuntimeError("boom")


@pytest.mark.parametrize(("hook", "message"), [
    ("sync_hook", "sync hook ran"),
    ("async_hook", "async hook ran"),
    ("spawning_hook", "background task ran"),  # tasks a hook starts inherit the id
    ("raising_hook", "raising_hook failed on request"),  # fail_closed's own line
])
def test_fail_closed_sets_the_request_id_around_the_hook(lines: Lines, hook: str,
                                                         message: str) -> None:
    flow = tflow.tflow()
    call(getattr(Hooks(), hook), flow)
    line = lines.with_message(message)
    assert line["request_id"] == flow.metadata[flowstate.REQUEST_ID]
    assert logs.REQUEST_ID.get() is None  # reset after the hook: nothing leaks out


def test_two_flows_each_log_their_own_id(lines: Lines) -> None:
    hooks, first, second = Hooks(), tflow.tflow(), tflow.tflow()

    async def both() -> None:  # interleaved on one loop, as mitmproxy runs hooks
        await asyncio.gather(hooks.async_hook(first), hooks.async_hook(second))

    asyncio.run(both())
    ids = [line["request_id"] for line in lines.all() if line["message"] == "async hook ran"]
    assert sorted(ids) == sorted(f.metadata[flowstate.REQUEST_ID] for f in (first, second))


def test_a_line_outside_any_hook_has_no_request_id(lines: Lines) -> None:
    log.warning("between requests")
    assert "request_id" not in lines.with_message("between requests")


# -- mitmproxy's lines about a connection ------------------------------------------------
def tunnel_from(pipeline: Pipeline, port: int) -> Any:
    """A tunnel from its own agent address (mitmproxy's test clients share one)."""
    flow = pipeline.tunnel("api.openai.com")
    flow.client_conn.peername = ("127.0.0.1", port)
    return flow


def mitm_line(client: Any, message: str) -> None:
    """As mitmproxy's ConnectionHandler.log writes it."""
    logging.getLogger(LOGGER).warning(message, extra={"client": client.peername})


def test_mitmproxys_line_names_the_request_on_its_connection(pipeline: Pipeline,
                                                             lines: Lines) -> None:
    token = pipeline.token()
    tunnel = tunnel_from(pipeline, 50001)
    first = pipeline.request(tunnel, headers=[("authorization", f"Bearer {token}")],
                             body=HELLO)
    pipeline.run(first, ["requestheaders", "request"])
    mitm_line(tunnel.client_conn, "while the first is in flight")

    pipeline.run(first, ["responseheaders", "response"])
    mitm_line(tunnel.client_conn, "server disconnect after it")

    other = tunnel_from(pipeline, 50002)  # another agent connection
    mitm_line(other.client_conn, "on a connection without requests")

    first_id = pipeline.records()[-1]["id"]
    assert first_id == first.metadata[flowstate.REQUEST_ID]
    assert lines.with_message("while the first is in flight")["request_id"] == first_id
    assert lines.with_message("server disconnect after it")["request_id"] == first_id
    assert "request_id" not in lines.with_message("on a connection without requests")


def test_with_two_requests_in_flight_mitmproxys_line_names_neither(pipeline: Pipeline,
                                                                   lines: Lines) -> None:
    """HTTP/2: several streams on one connection; a connection-level line is not
    attributed by guess. Once one has ended, the other is the one in flight."""
    token = pipeline.token()
    tunnel = tunnel_from(pipeline, 50003)
    flows = [pipeline.request(tunnel, headers=[("authorization", f"Bearer {token}")],
                              body=HELLO) for _ in range(2)]
    for flow in flows:
        pipeline.run(flow, ["requestheaders", "request"])
    mitm_line(tunnel.client_conn, "two in flight")
    pipeline.run(flows[0], ["responseheaders", "response"])
    mitm_line(tunnel.client_conn, "one left")

    assert "request_id" not in lines.with_message("two in flight")
    assert lines.with_message("one left")["request_id"] == \
        flows[1].metadata[flowstate.REQUEST_ID]
