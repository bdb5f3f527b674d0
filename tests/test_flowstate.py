"""flowstate.fail_closed: an addon that crashes refuses the request, never forwards it."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from mitmproxy.test import tflow, tutils

from egressguard.pipeline import flowstate


class Crashing:
    @flowstate.fail_closed
    def request(self, flow):  # type: ignore[no-untyped-def]
        raise KeyError("something the code did not expect")

    @flowstate.fail_closed
    async def response(self, flow):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


def test_a_crashing_request_hook_refuses_with_500_and_a_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    flow = tflow.tflow()
    Crashing().request(flow)
    assert flow.response is not None and flow.response.status_code == 500
    error = orjson.loads(flow.response.content)["error"]
    assert error["code"] == "internal_error" and "did not forward it" in error["message"]
    assert flowstate.begin(flow) in error["message"]
    assert "Crashing.request failed" in caplog.text


def test_a_crashing_async_hook_on_a_buffered_response_replaces_it() -> None:
    flow = tflow.tflow(resp=True)
    asyncio.run(Crashing().response(flow))
    assert flow.response is not None and flow.response.status_code == 500


def test_a_crashing_hook_on_a_streamed_response_cuts_it_off() -> None:
    flow = tflow.tflow(resp=tutils.tresp())
    assert flow.response is not None
    flow.response.stream = True
    asyncio.run(Crashing().response(flow))
    assert flow.error is not None and flow.error.msg == "Connection killed."
