"""Forwarding the journal to its sinks: at least once, in order, resuming after any stop.

The journal on disk is the source of truth; nothing is queued in memory. One
`Forwarder` per sink reads complete lines from its cursor on (`JournalReader`), sends
them in batches, and moves its cursor — persisted atomically — only once the sink has
confirmed the batch. A failed batch is sent again, whole, after a backoff that doubles
up to the sink's `retry.max`, with jitter; meanwhile the backlog simply stays in the
journal. A restart, or a `kill -9`, resumes at the last confirmed batch: records are
delivered at least once (duplicates carry the same `id`), never skipped.

Runs in its own process (`egressguard ship`, started by `egressguard run` when a sinks
file is given), so a slow or hung sink cannot slow the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import orjson

from egressguard.backends import cursors
from egressguard.backends.cursors import Cursor
from egressguard.backends.journal import Segment, segments
from egressguard.backends.sinks import Sink, SinkError
from egressguard.core.sinkconfig import SinkSpec

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at a journal with nothing new


@dataclass(slots=True)
class Entry:
    raw: bytes
    record: dict[str, Any]
    segment: int
    end: int  # offset just after the line


class JournalReader:
    """Complete lines of the journal from a position on, across its files: a file is
    left for the next once a newer one exists and this one has nothing more."""

    def __init__(self, directory: Path, segment: int, offset: int) -> None:
        self.directory = directory
        self.segment, self.offset = segment, offset
        self._file: IO[bytes] | None = None
        self._at: tuple[int, int] | None = None  # (segment, offset) the file is read up to

    def read(self, max_records: int, max_bytes: int) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        while len(out) < max_records and size < max_bytes:
            line = self._line()
            if line is None:
                if not self._next_segment():
                    break
                continue
            raw = line.rstrip(b"\n")
            start = self.offset
            self.offset += len(line)
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.error("journal %s at byte %d: an unreadable line, shipped as it is "
                          "(run `egressguard audit verify`)", self._name(), start)
                record = {"id": None, "unreadable": raw.decode("utf-8", "replace")}
            out.append(Entry(raw, record, self.segment, self.offset))
            size += len(line)
        return out

    def rewind(self, segment: int, offset: int) -> None:
        """Back to a position (a batch that was not delivered is read again)."""
        self.segment, self.offset = segment, offset

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._at = None, None

    def _line(self) -> bytes | None:
        """The next complete line, or None at the end of what is written."""
        f = self._open()
        if f is None:
            return None
        line = f.readline()
        if not line.endswith(b"\n"):  # nothing, or a line still being written
            self._at = None  # read from `offset` again next time
            return None
        self._at = (self.segment, self.offset + len(line))
        return line

    def _open(self) -> IO[bytes] | None:
        if self._file is not None and self._at == (self.segment, self.offset):
            return self._file
        self.close()
        current = self._current()
        if current is None:
            return None
        f = current.open()
        try:
            f.seek(self.offset)
        except (OSError, EOFError):
            f.close()
            return None
        self._file, self._at = f, (self.segment, self.offset)
        return f

    def _current(self) -> Segment | None:
        found = segments(self.directory)
        for s in found:
            if s.number == self.segment:
                return s
        later = [s for s in found if s.number > self.segment]
        if later:  # removed under us (retention of a sink no longer configured): go on
            log.warning("journal file %d is gone; continuing with %d", self.segment,
                        later[0].number)
            self.segment, self.offset = later[0].number, 0
            return later[0]
        return None

    def _next_segment(self) -> bool:
        later = [s for s in segments(self.directory) if s.number > self.segment]
        if not later:
            return False
        self.close()
        self.segment, self.offset = later[0].number, 0
        return True

    def _name(self) -> str:
        return f"journal file {self.segment}"


class Forwarder:
    """Ships the journal to one sink, batch after batch, until `stop` is set."""

    def __init__(self, directory: Path, sink: Sink, spec: SinkSpec) -> None:
        self.directory, self.sink, self.spec = directory, sink, spec
        self.cursor = cursors.load(directory, spec.name) or self._start()
        self.reader = JournalReader(directory, self.cursor.segment, self.cursor.offset)
        self._checked = self.cursor.seq == 0  # the journal continues from the cursor?

    def _start(self) -> Cursor:
        found = segments(self.directory)
        return Cursor(self.spec.name, segment=found[0].number if found else 1)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                batch = await self._gather(stop)
                if batch:
                    await self._deliver(batch, stop)
        finally:
            self.reader.close()

    async def _gather(self, stop: asyncio.Event) -> list[Entry]:
        """What is there, up to the batch limits; a small batch waits `max_wait` for more."""
        limits = self.spec.batch
        batch = self.reader.read(limits.max_records, limits.max_bytes)
        if not batch:
            await _sleep(stop, POLL)
            return []
        waited = time.monotonic() + limits.max_wait
        while len(batch) < limits.max_records and time.monotonic() < waited \
                and not stop.is_set():
            await _sleep(stop, min(POLL, limits.max_wait))
            batch += self.reader.read(limits.max_records - len(batch),
                                      limits.max_bytes - sum(len(e.raw) for e in batch))
        return batch

    async def _deliver(self, batch: list[Entry], stop: asyncio.Event) -> None:
        self._check_continuity(batch[0])
        attempt = 0
        while True:
            try:
                await self.sink.send([e.record for e in batch])
                break
            except SinkError as exc:
                attempt += 1
                wait = self._backoff(attempt)
                self._failing(str(exc))
                log.warning("sink %s: %s (attempt %d; again in %.1fs; %d records wait)",
                            self.spec.name, exc, attempt, wait, len(batch))
                if await _sleep(stop, wait):
                    self.reader.rewind(self.cursor.segment, self.cursor.offset)
                    return  # stopping: the cursor stays before this batch
        last = batch[-1]
        self.cursor = replace(self.cursor, segment=last.segment, offset=last.end,
                              seq=int(last.record.get("seq") or 0),
                              hash=str(last.record.get("hash") or ""),
                              delivered=self.cursor.delivered + len(batch),
                              updated=time.time(), error=None, failing_since=None)
        if self.reader.segment != last.segment:  # the reader moved on: so does the cursor
            self.cursor = replace(self.cursor, segment=self.reader.segment,
                                  offset=self.reader.offset)
        cursors.save(self.directory, self.cursor)
        if attempt:
            log.warning("sink %s: delivering again after %d failed attempts", self.spec.name,
                        attempt)

    def _backoff(self, attempt: int) -> float:
        """Doubling from `retry.initial` to `retry.max`, each wait between half and all
        of it (jitter: replicas that failed together do not retry together)."""
        ceiling = min(self.spec.retry.max, self.spec.retry.initial * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _failing(self, error: str) -> None:
        self.cursor = replace(self.cursor, error=error,
                              failing_since=self.cursor.failing_since or time.time())
        cursors.save(self.directory, self.cursor, durable=False)  # status only

    def _check_continuity(self, first: Entry) -> None:
        if self._checked:
            return
        self._checked = True
        if first.record.get("prev_hash") != self.cursor.hash:
            log.error("sink %s: the journal does not continue from the last record this "
                      "sink received (seq %d): records were changed, or the journal was "
                      "replaced; shipping on from the same position (run `egressguard audit "
                      "verify`)", self.spec.name, self.cursor.seq)


async def ship(directory: Path, sinks: Sequence[tuple[Sink, SinkSpec]],
               stop: asyncio.Event) -> None:
    """Forward to every sink until `stop` is set; then close the sinks."""
    forwarders = [Forwarder(directory, sink, spec) for sink, spec in sinks]
    try:
        await asyncio.gather(*(f.run(stop) for f in forwarders))
    finally:
        for sink, _ in sinks:
            with contextlib.suppress(Exception):
                await sink.close()


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return early (True) once `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
