"""What metrics add to each request, in microseconds: egressguard's own counters and
histograms (`pipeline/metrics.py`: the `request` hook's time stamp plus `observe` on
the record's facts) against the same updates through `prometheus_client`, if it is
installed (it is not a dependency; `pip install prometheus-client` to compare). Also
the cost of one scrape (rendering) at a realistic number of series.

    .venv/bin/python bench/metrics_hotpath.py [--calls 200000] [--repeat 5]

Figures are the best of `--repeat` runs (the least disturbed by other work on the
machine), per call.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from types import SimpleNamespace

from egressguard.core import metrics as core_metrics
from egressguard.core.records import RequestFacts
from egressguard.pipeline import flowstate
from egressguard.pipeline.metrics import SENT, Metrics

POLICY = SimpleNamespace(teams={"research": None, "support": None})


def facts(redacted: bool) -> RequestFacts:
    return RequestFacts(
        id="x", started=time.time(), client="127.0.0.1:5000", method="POST",
        host="api.openai.com", path="/v1/chat/completions", vendor="openai",
        team="research", status=200, latency_ms=41.5, usage={"input_tokens": 30,
                                                             "output_tokens": 120},
        spend_usd=0.00027,
        redactions={"EMAIL_ADDRESS": {"mask": 2}} if redacted else None)


def flow() -> SimpleNamespace:
    now = time.time()
    return SimpleNamespace(
        live=True, error=None, response=SimpleNamespace(timestamp_start=now + 0.03,
                                                        timestamp_end=now + 0.04),
        metadata={SENT: now, flowstate.POLICY: POLICY})


def ours(calls: int, repeat: int, redacted: bool) -> float:
    m, f, fl = Metrics(), facts(redacted), flow()
    live = SimpleNamespace(live=True, response=None, error=None, metadata={})

    def one() -> None:
        m.request(live)
        m.observe(fl, f, True)

    return min(timeit.repeat(one, number=calls, repeat=repeat)) / calls * 1e6


def theirs(calls: int, repeat: int, redacted: bool) -> float | None:
    try:
        import prometheus_client as pc
    except ImportError:
        return None
    reg = pc.CollectorRegistry()
    requests = pc.Counter("rq", "", ("vendor", "kind", "decision", "status"), registry=reg)
    duration = pc.Histogram("d", "", ("vendor",), registry=reg,
                            buckets=core_metrics.UPSTREAM_BUCKETS)
    upstream = pc.Histogram("u", "", ("vendor",), registry=reg,
                            buckets=core_metrics.UPSTREAM_BUCKETS)
    overhead = pc.Histogram("o", "", ("vendor",), registry=reg,
                            buckets=core_metrics.OVERHEAD_BUCKETS)
    tokens = pc.Counter("t", "", ("vendor", "team", "direction"), registry=reg)
    spend = pc.Counter("s", "", ("vendor", "team"), registry=reg)
    redactions = pc.Counter("r", "", ("entity", "action", "direction"), registry=reg)
    f = facts(redacted)

    def one() -> None:
        requests.labels(f.vendor, f.kind, f.decision, str(f.status)).inc()
        duration.labels(f.vendor).observe(0.0415)
        upstream.labels(f.vendor).observe(0.03)
        overhead.labels(f.vendor).observe(0.0015)
        for entity, actions in (f.redactions or {}).items():
            for action, n in actions.items():
                redactions.labels(entity, action, "request").inc(n)
        tokens.labels(f.vendor, f.team, "input").inc(30)
        tokens.labels(f.vendor, f.team, "output").inc(120)
        spend.labels(f.vendor, f.team).inc(f.spend_usd)

    return min(timeit.repeat(one, number=calls, repeat=repeat)) / calls * 1e6


def scrape_ms(repeat: int) -> tuple[int, float]:
    """Render a page with every vendor x several statuses and reasons observed."""
    m = Metrics()
    vendors = ["openai", "anthropic", "google", "azure_openai", "mistral", "cohere", "groq",
               "openrouter", "deepseek", "xai", "together", "fireworks"]
    for v in vendors:
        for status in ("200", "400", "401", "403", "429", "500", "503"):
            m.requests.inc((v, "request", "allow" if status == "200" else "deny", status))
        for reason in ("no_rule_matched", "limit_exceeded", "token_expired"):
            m.denials.inc((v, reason))
        for h in (m.duration, m.upstream, m.overhead):
            h.observe((v,), 0.01)
        for team in ("research", "support", "other"):
            m.tokens.inc((v, team, "input"), 1)
            m.tokens.inc((v, team, "output"), 1)
            m.spend.inc((v, team), 0.1)
    families = [m.requests, m.denials, m.duration, m.upstream, m.overhead, m.tokens, m.spend]
    text = core_metrics.render(families)
    series = sum(1 for line in text.splitlines() if not line.startswith("#"))
    best = min(timeit.repeat(lambda: core_metrics.render(families), number=20,
                             repeat=repeat)) / 20
    return series, best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())  # Metrics() needs none; to be sure
    for redacted in (False, True):
        label = "with 1 redaction entry" if redacted else "no redaction"
        mine = ours(args.calls, args.repeat, redacted)
        other = theirs(args.calls, args.repeat, redacted)
        line = f"per request ({label}): egressguard {mine:.2f} us"
        if other is not None:
            line += f", prometheus_client {other:.2f} us ({other / mine:.1f}x)"
        print(line)
    series, ms = scrape_ms(args.repeat)
    print(f"one scrape's rendering, {series} series: {ms:.2f} ms")


if __name__ == "__main__":
    main()
