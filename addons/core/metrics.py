"""Prometheus metrics as plain data: counters and histograms the request path updates
with one dict lookup, gauges built at scrape time, and the text exposition format
(version 0.0.4) they are served in.

Not `prometheus_client`: its `labels(...).inc()` takes a lock twice per call and
costs several times what a dict update does (bench/metrics_hotpath.py), and every
update here happens on mitmproxy's event loop, one at a time, so there is nothing to
lock. Each metric caps its number of label sets: past `max_series`, new label sets
are counted under "other", so a bug that lets an unbounded value into a label costs
a bounded amount of memory and scrape time, never an out-of-memory.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

Labels = tuple[str, ...]
OVERFLOW = "other"  # the value of every label of the series past the cap
DEFAULT_MAX_SERIES = 1000

# seconds: egressguard's own time per request is sub-millisecond to tens of ms
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0)
# seconds: a vendor answers in tens of ms (an error) to minutes (a long generation)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)


class Counter:
    """A counter per label set (values in `labelnames` order)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.max_series = max_series
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1) -> None:
        try:
            self.values[labels] += amount
        except KeyError:  # a new label set: admitted while under the cap
            if len(self.values) >= self.max_series:
                labels = (OVERFLOW,) * len(self.labelnames)
            self.values[labels] = self.values.get(labels, 0) + amount

    def samples(self) -> Iterator[tuple[str, Labels, Labels, float]]:
        for labels, value in self.values.items():
            yield self.name, self.labelnames, labels, value


class Histogram:
    """Observations per label set, counted into fixed buckets (upper bounds, seconds)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = UPSTREAM_BUCKETS,
                 max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.bounds = tuple(sorted(buckets))
        self.max_series = max_series
        # per label set: a count per bucket (not cumulative), +Inf's last, then the sum
        self.values: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        try:
            counts = self.values[labels]
        except KeyError:
            counts = self._series(labels)
        counts[bisect_left(self.bounds, value)] += 1  # le="b" holds values == b
        counts[-1] += value

    def _series(self, labels: Labels) -> list[float]:
        if len(self.values) >= self.max_series:
            labels = (OVERFLOW,) * len(self.labelnames)
        return self.values.setdefault(labels, [0] * (len(self.bounds) + 2))

    def samples(self) -> Iterator[tuple[str, Labels, Labels, float]]:
        names = (*self.labelnames, "le")
        les = [*map(number, self.bounds), "+Inf"]
        for labels, counts in self.values.items():
            total = 0.0
            for le, count in zip(les, counts, strict=False):
                total += count
                yield f"{self.name}_bucket", names, (*labels, le), total
            yield f"{self.name}_sum", self.labelnames, labels, counts[-1]
            yield f"{self.name}_count", self.labelnames, labels, total


@dataclass
class Gauge:
    """A metric whose samples are computed at scrape time (kind "gauge", "counter" for
    a count kept elsewhere, e.g. by the Vault store, or "info")."""

    name: str
    help: str
    labelnames: Sequence[str] = ()
    kind: str = "gauge"
    values: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> Gauge:
        self.values.append((labels, value))
        return self

    def samples(self) -> Iterator[tuple[str, Labels, Labels, float]]:
        for labels, value in self.values:
            yield self.name, tuple(self.labelnames), labels, value


Metric = Counter | Histogram | Gauge


def render(metrics: Iterable[Metric]) -> str:
    """The text exposition format; a metric without samples is left out."""
    out: list[str] = []
    for m in metrics:
        samples = list(m.samples())
        if not samples:
            continue
        # info metrics are gauges with the value 1 in the 0.0.4 format
        out += [f"# HELP {m.name} {_escape_help(m.help)}",
                f"# TYPE {m.name} {'gauge' if m.kind == 'info' else m.kind}"]
        for name, labelnames, labels, value in samples:
            out.append(f"{name}{_labels(labelnames, labels)} {number(value)}")
    return "\n".join(out) + "\n" if out else ""


def number(value: float) -> str:
    """A sample value: integers exactly (seq numbers, epoch seconds), floats in full."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Labels) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)) \
        + "}"


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
