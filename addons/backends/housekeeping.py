"""Keeping the journal's disk use in bounds without losing a record a sink still needs.

Closed journal files (every file but the one being written) that every configured sink
has delivered are gzip-compressed, and removed once older than the retention period,
or, oldest first, while the journal is over its disk cap and `when_full` is
`drop-delivered`. A file some sink has not delivered is never touched. When the journal
is over its cap with nothing left it may remove, `Health.full` says why, and the proxy
refuses new requests until the sinks catch up (or the cap is raised): a request it
cannot record is a request it must not serve. Runs in a worker thread, never on the
event loop (compression reads whole files).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from egressguard.backends import cursors
from egressguard.backends.journal import Segment, segments
from egressguard.core.metrics import number

log = logging.getLogger(__name__)

WHEN_FULL = ("drop-delivered", "refuse")


@dataclass(frozen=True, slots=True)
class Retention:
    max_bytes: int = 0  # the journal's disk cap; 0: none
    max_age: float = 0.0  # seconds a delivered closed file is kept; 0: for ever
    when_full: str = "drop-delivered"  # or "refuse": over the cap, delete nothing
    compress: bool = True  # gzip closed files every sink has delivered


@dataclass(slots=True)
class Health:
    """The journal's disk use after a pass, for logs, metrics and the refusal."""

    bytes: int = 0  # every journal file, the one being written included
    undelivered_bytes: int = 0  # in files some sink has not delivered yet
    files: int = 0
    full: str | None = None  # why appends must be refused, or None
    compressed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    sinks: dict[str, cursors.Cursor | None] = field(default_factory=dict)  # their cursors


def run(directory: Path, active: int, sinks: list[str], retention: Retention,
        now: float | None = None) -> Health:
    """One pass over `directory` whose file `active` is being written."""
    now = time.time() if now is None else now
    through = cursors.delivered_through(directory, sinks)

    def delivered(s: Segment) -> bool:
        return s.number < active and (through is None or s.number < through)

    health = Health()
    for s in segments(directory):
        if delivered(s) and not s.compressed and retention.compress:
            _compress(s)
            health.compressed.append(s.path.name)
    found = segments(directory)
    sizes = {s.number: _size(s.path) for s in found}
    for s in found:
        if delivered(s) and retention.max_age and now - _mtime(s.path) > retention.max_age:
            _remove(s, "older than the retention period", health)
            sizes.pop(s.number)
    total = sum(sizes.values())
    if retention.max_bytes and total > retention.max_bytes \
            and retention.when_full == "drop-delivered":
        for s in found:
            if total <= retention.max_bytes:
                break
            if s.number in sizes and delivered(s):
                total -= sizes.pop(s.number)
                _remove(s, "the journal is over its disk cap", health)
    health.bytes, health.files = total, len(sizes)
    health.sinks = {sink: cursors.load(directory, sink) for sink in sinks}
    health.undelivered_bytes = sum(size for n, size in sizes.items()
                                   if through is not None and n >= through)
    if retention.max_bytes and total > retention.max_bytes:
        waiting = [s for s in sinks if (c := cursors.load(directory, s)) is None
                   or c.segment == through]
        health.full = (
            f"the audit journal holds {total} bytes, over its cap of {retention.max_bytes} "
            + (f"and {health.undelivered_bytes} bytes have not reached sink(s) "
               f"{', '.join(waiting or sinks)} yet" if health.undelivered_bytes else
               "(when_full is refuse)")
            + ": egressguard refuses requests it could not record until there is room")
    return health


def _compress(s: Segment) -> None:
    """`journal-N.jsonl` -> `journal-N.jsonl.gz`, flushed before the plain file goes."""
    target = s.path.with_name(s.path.name + ".gz")
    partial = target.with_name(f".{target.name}.partial")
    with open(s.path, "rb") as src, open(partial, "wb") as raw:
        os.fchmod(raw.fileno(), 0o600)
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.utime(partial, (_mtime(s.path), _mtime(s.path)))  # age counts from the writing
    os.replace(partial, target)
    s.path.unlink()


def _remove(s: Segment, why: str, health: Health) -> None:
    s.path.unlink(missing_ok=True)
    health.removed.append(s.path.name)
    log.warning("audit journal: removed %s, delivered to every sink (%s)", s.path.name, why)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def prometheus(health: Health, node: str | None, seq: int) -> str:
    """The journal's and the sinks' state in Prometheus' text format, for node
    exporter's textfile collector (the alarm a dashboard can page on)."""
    label = f'node="{node or ""}"'
    lines = []

    def gauge(name: str, what: str, samples: list[tuple[str, float]]) -> None:
        lines.extend((f"# HELP {name} {what}", f"# TYPE {name} gauge"))
        # not :g, whose 6 digits turn a timestamp or a seq past a million into a guess
        lines.extend(f"{name}{{{labels}}} {number(value)}" for labels, value in samples)

    gauge("egressguard_journal_bytes", "Bytes in the audit journal's files.",
          [(label, health.bytes)])
    gauge("egressguard_journal_undelivered_bytes", "Bytes in journal files some sink has "
          "not delivered yet.", [(label, health.undelivered_bytes)])
    gauge("egressguard_journal_full", "1 while the journal is at its disk cap and requests "
          "are refused.", [(label, 1 if health.full else 0)])
    gauge("egressguard_journal_seq", "Seq of the last record written.", [(label, seq)])
    if health.sinks:
        each = {sink: f'{label},sink="{sink}"' for sink in health.sinks}
        gauge("egressguard_sink_behind_records", "Records written but not yet delivered to "
              "the sink.", [(each[s], seq - (c.seq if c else 0)) for s, c in health.sinks.items()])
        gauge("egressguard_sink_failing", "1 while the sink's last attempt failed.",
              [(each[s], 1 if c and c.error else 0) for s, c in health.sinks.items()])
        gauge("egressguard_sink_last_delivery_timestamp_seconds", "When the sink last "
              "confirmed a batch (0: never).",
              [(each[s], c.updated if c else 0) for s, c in health.sinks.items()])
    return "\n".join(lines) + "\n"
