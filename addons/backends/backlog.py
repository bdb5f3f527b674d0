"""How far each sink is behind the journal, read from the cursors `egressguard ship`
writes (the journal on disk is all the proxy and the shipper share): records and bytes
not yet delivered, and the age of the oldest of those records. For metrics; blocking
(it stats the journal's files and reads one line per sink), so run in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from egressguard.backends import cursors
from egressguard.backends.journal import Segment, segments


@dataclass(frozen=True, slots=True)
class Backlog:
    sink: str
    cursor: cursors.Cursor | None  # None: the sink has delivered nothing yet
    records: int  # written but not delivered
    bytes: int  # of journal lines not delivered (on-disk bytes)
    oldest_age: float  # seconds since the oldest undelivered record's request began; 0: none


def backlogs(directory: Path, sinks: list[str], seq: int,
             now: float | None = None) -> list[Backlog]:
    """Each sink's backlog in the journal at `directory`, whose last record is `seq`."""
    now = time.time() if now is None else now
    found = segments(directory)
    sizes = {s.number: _size(s) for s in found}
    out = []
    for sink in sinks:
        cursor = cursors.load(directory, sink)
        if cursor is not None:
            segment, offset, done = cursor.segment, cursor.offset, cursor.seq
        else:
            segment, offset, done = (found[0].number if found else 1), 0, 0
        behind = max(0, seq - done)
        size = max(0, sum(n for number, n in sizes.items() if number >= segment) - offset)
        started = _first_start(found, segment, offset) if behind else None
        age = max(0.0, now - started) if started is not None else 0.0
        out.append(Backlog(sink, cursor, behind, size, age))
    return out


def _first_start(found: list[Segment], segment: int, offset: int) -> float | None:
    """The `ts` of the first whole record at or after (`segment`, `offset`)."""
    for s in found:
        if s.number < segment:
            continue
        try:
            with s.open() as f:
                if s.number == segment:
                    f.seek(offset)
                line = f.readline()
        except OSError:
            return None
        if line.endswith(b"\n"):
            try:
                ts = orjson.loads(line).get("ts")
                return datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else None
            except (orjson.JSONDecodeError, AttributeError, ValueError):
                return None
    return None


def _size(s: Segment) -> int:
    try:
        return s.path.stat().st_size
    except FileNotFoundError:
        return 0
