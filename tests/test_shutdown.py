"""The Shutdown addon in process: what counts as in flight, the drain waiting for it,
and what a cut-off flow's record says. The real signal, sockets and process exit are
tests/e2e/test_shutdown.py."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from conftest import Pipeline
from mitmproxy import exceptions, flow, websocket

from egressguard.cli import parser
from egressguard.pipeline import flowstate, shutdown
from egressguard.tools.serve import ServeConfig, mitmproxy_options

HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def started(pipeline: Pipeline) -> Any:
    """A request through `request`: on its way to the vendor."""
    tunnel = pipeline.tunnel("api.openai.com")
    f = pipeline.request(tunnel, headers=[("authorization", f"Bearer {pipeline.token()}")],
                         body=HELLO)
    pipeline.run(f, ["requestheaders", "request"])
    assert f.response is None
    return f


def spin(pipeline: Pipeline, seconds: float) -> None:
    pipeline.tctx.master.event_loop.run_until_complete(asyncio.sleep(seconds))


def drain(pipeline: Pipeline, grace: float) -> asyncio.Future[None]:
    pipeline.tctx.options.update(egressguard_shutdown_grace=grace)
    task = asyncio.ensure_future(pipeline.shutdown.drain(),
                                 loop=pipeline.tctx.master.event_loop)
    spin(pipeline, 0.05)
    return task


def finish(pipeline: Pipeline, task: asyncio.Future[None]) -> None:
    pipeline.tctx.master.event_loop.run_until_complete(asyncio.wait_for(task, 5))
    spin(pipeline, 0)  # master.shutdown() sets should_exit from the loop


def test_a_request_is_in_flight_from_its_head_to_its_record(pipeline: Pipeline) -> None:
    f = started(pipeline)
    assert list(pipeline.shutdown.in_flight.values()) == [f]
    pipeline.run(f, ["responseheaders", "response"])
    assert pipeline.shutdown.in_flight == {}

    failed = started(pipeline)
    failed.error = flow.Error("Client disconnected.")
    pipeline.hook("error", failed)
    assert pipeline.shutdown.in_flight == {}


def test_a_websocket_session_is_in_flight_until_it_ends(pipeline: Pipeline) -> None:
    f = started(pipeline)
    f.websocket = websocket.WebSocketData()
    pipeline.run(f, ["responseheaders", "response"], upstream=pipeline.Upstream(status=101))
    assert list(pipeline.shutdown.in_flight.values()) == [f]
    pipeline.shutdown.websocket_end(f)
    assert pipeline.shutdown.in_flight == {}


def test_the_drain_waits_for_what_is_in_flight_then_shuts_down(pipeline: Pipeline) -> None:
    f = started(pipeline)
    task = drain(pipeline, grace=30)
    assert pipeline.shutdown.draining and not task.done()
    assert not pipeline.tctx.master.should_exit.is_set()

    pipeline.run(f, ["responseheaders", "response"])
    finish(pipeline, task)
    assert pipeline.tctx.master.should_exit.is_set()
    assert flowstate.SHUTDOWN_CUT not in f.metadata
    assert f.response.headers["connection"] == "close"  # HTTP/1: go elsewhere next time
    record = pipeline.records()[-1]
    assert record["id"] == f.metadata[flowstate.REQUEST_ID] and record["error"] is None


def test_past_the_grace_a_flow_is_cut_off_and_its_record_says_so(pipeline: Pipeline) -> None:
    f = started(pipeline)
    task = drain(pipeline, grace=0.1)
    spin(pipeline, 0.3)
    assert f.metadata[flowstate.SHUTDOWN_CUT].startswith("cut off at shutdown: still running")
    assert not task.done()  # waiting for the cut flow's record

    f.error = flow.Error("Client disconnected.")  # what mitmproxy makes of the closed socket
    pipeline.hook("error", f)
    finish(pipeline, task)
    assert pipeline.tctx.master.should_exit.is_set()
    record = pipeline.records()[-1]
    assert record["id"] == f.metadata[flowstate.REQUEST_ID]
    assert record["error"] == f.metadata[flowstate.SHUTDOWN_CUT]
    assert "(--shutdown-grace 0.1)" in record["error"]


def test_a_drain_that_fails_still_stops_the_proxy(pipeline: Pipeline,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("mitmproxy moved its servers")

    monkeypatch.setattr(shutdown, "_stop_listening", broken)
    finish(pipeline, drain(pipeline, grace=30))
    assert pipeline.tctx.master.should_exit.is_set()
    assert "draining failed; stopping now" in caplog.text


def test_an_http2_answer_during_the_drain_is_left_alone(pipeline: Pipeline) -> None:
    pipeline.shutdown.draining = True
    f = started(pipeline)
    f.request.http_version = "HTTP/2.0"
    pipeline.run(f, ["responseheaders", "response"])
    assert "connection" not in f.response.headers  # a connection header is invalid in h2


@pytest.mark.parametrize("grace", [-1.0, math.nan, math.inf])
def test_the_grace_is_zero_or_more_seconds(pipeline: Pipeline, grace: float) -> None:
    with pytest.raises(exceptions.OptionsError, match="egressguard_shutdown_grace"):
        pipeline.tctx.options.update(egressguard_shutdown_grace=grace)


@pytest.mark.parametrize(("given", "grace"), [([], 30.0), (["--shutdown-grace", "2.5"], 2.5),
                                              (["--shutdown-grace", "0"], 0.0)])
def test_run_takes_the_grace_to_the_option(given: list[str], grace: float) -> None:
    args = parser().parse_args(["run", *given])
    config = ServeConfig(shutdown_grace=args.shutdown_grace)
    assert mitmproxy_options(config, None)["egressguard_shutdown_grace"] == grace  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_run_refuses_a_grace_that_is_not_seconds(value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["run", "--shutdown-grace", value])
    assert exited.value.code == 2
    assert "--shutdown-grace" in capsys.readouterr().err
