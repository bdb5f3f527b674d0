"""What the operations features add to each request, in nanoseconds per call:

- request ids in logs: `flowstate.fail_closed` setting and resetting `logs.REQUEST_ID`
  around a hook, against the same wrapper without it (a request runs about 20 wrapped
  hooks);
- mitmproxy calling the per-request hooks of ConnectionLogs, Shutdown and Tracing
  (off: it then has no hooks), against an addon with none. Most of a hook's cost is
  mitmproxy's own dispatch (`Hook.args()` builds the argument list with
  `dataclasses.fields`, about 1 µs on the development VM);
- with tracing on, the span the SDK makes after the record (attributes validated,
  queued for the exporter thread), with and without the `vendor` child.

    .venv/bin/python bench/ops_hotpath.py [--calls 200000] [--repeat 7]

Figures are the best of `--repeat` runs (the least disturbed by other work), per call.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
import timeit
from collections.abc import Callable
from typing import Any

from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import taddons, tflow

from egressguard.core.records import RequestFacts
from egressguard.pipeline import flowstate
from egressguard.pipeline.connlogs import ConnectionLogs
from egressguard.pipeline.shutdown import Shutdown
from egressguard.pipeline.tracing import Tracing, attributes


def without_request_id(hook: Callable[..., Any]) -> Callable[..., Any]:
    """fail_closed as it was before request ids: try/except only."""
    @functools.wraps(hook)
    def guarded(self: object, flow: Any) -> None:
        try:
            hook(self, flow)
        except Exception:  # noqa: BLE001 - as fail_closed
            pass

    return guarded


class Hooks:
    def bare(self, flow: Any) -> None:
        pass

    before = without_request_id(bare)
    now = flowstate.fail_closed(bare)


def best(fn: Callable[[], object], calls: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=calls, repeat=repeat)) / calls * 1e9


def request_ids(calls: int, repeat: int) -> None:
    hooks, flow = Hooks(), tflow.tflow()
    flowstate.begin(flow)
    base = best(lambda: hooks.before(flow), calls, repeat)
    now = best(lambda: hooks.now(flow), calls, repeat)
    print(f"fail_closed per hook: {base:.0f} ns before, {now:.0f} ns with the request id "
          f"(+{now - base:.0f} ns; x20 hooks = +{(now - base) * 20 / 1000:.1f} µs a request)")


class Empty:
    pass


def dispatch(calls: int, repeat: int) -> None:
    addons = {"none": Empty(), "ConnectionLogs": ConnectionLogs(), "Shutdown": Shutdown(),
              "Tracing (off)": Tracing()}
    with taddons.context(*addons.values(), loadcore=False) as tctx:
        manager, loop = tctx.master.addons, tctx.master.event_loop
        flow = tflow.tflow(resp=True)
        flowstate.begin(flow)
        events = [hook(flow) for hook in (HttpRequestHeadersHook, HttpRequestHook,
                                          HttpResponseHeadersHook, HttpResponseHook)]

        async def one_request(addon: object, n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                for event in events:
                    await manager.invoke_addon(addon, event)
            return (time.perf_counter() - start) / n * 1e9

        n = max(1, calls // 20)
        runs = {name: min(loop.run_until_complete(one_request(a, n)) for _ in range(repeat))
                for name, a in addons.items()}
    for name, ns in runs.items():
        if name != "none":
            print(f"{name}: +{(ns - runs['none']) / 1000:.1f} µs a request "
                  f"(4 request hooks dispatched to it)")


def spans(calls: int, repeat: int) -> None:
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "600000")  # no export meanwhile
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(calls * repeat * 2 + 10))
    logging.disable(logging.CRITICAL)
    from egressguard.backends.otlp import Child, Exporter

    exporter = Exporter("http://127.0.0.1:9/v1/traces", "bench")
    now = time.time()
    f = RequestFacts(id="0" * 32, started=now, client="", method="POST",
                     host="api.openai.com", path="/v1/chat/completions", agent="a",
                     team="t", vendor="openai", model="gpt-4o", status=200, latency_ms=5.0,
                     usage={"input_tokens": 30, "output_tokens": 120})
    child = (Child("vendor", now, now + 0.004, {"server.address": f.host},
                   (("response headers", now + 0.001),)),)
    n = max(1, calls // 100)
    alone = best(lambda: exporter.span("egressguard openai chat", None, now, now + 0.005,
                                       attributes(f)), n, repeat)
    nested = best(lambda: exporter.span("egressguard openai chat", None, now, now + 0.005,
                                        attributes(f), children=child), n, repeat)
    print(f"tracing on, per request: span {alone / 1000:.0f} µs, span + vendor child "
          f"{nested / 1000:.0f} µs (after the record's hook, off the answer's path)")
    os._exit(0)  # the exporter thread would try the dead endpoint at exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    request_ids(args.calls, args.repeat)
    dispatch(args.calls, args.repeat)
    spans(args.calls, args.repeat)


if __name__ == "__main__":
    main()
