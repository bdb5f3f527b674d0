"""Where each sink stands in the journal: one small JSON file per sink, replaced
atomically after every delivery.

The shipper writes a sink's cursor once the sink has confirmed a batch; the journal's
housekeeping reads every configured sink's cursor to know which closed files all of
them are past (and so may be compressed or removed). A cursor names the next line to
send (`segment`, `offset` into its uncompressed bytes) and the record delivered last
(`seq`, `hash`), so a restarted shipper resumes where it stopped and can tell when the
journal no longer continues from there.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from egressguard.core.chain import GENESIS

DIRECTORY = "cursors"


@dataclass(frozen=True, slots=True)
class Cursor:
    sink: str
    segment: int = 1  # the journal file the next line is in
    offset: int = 0  # where that line starts, in the file's uncompressed bytes
    seq: int = 0  # of the last record delivered; 0: none yet
    hash: str = GENESIS  # of the last record delivered
    delivered: int = 0  # records delivered, over every run
    updated: float = 0.0  # when the last batch was confirmed (epoch seconds)
    error: str | None = None  # why the last attempt failed, if it did
    failing_since: float | None = None  # since when the sink has been failing

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)


def path(directory: Path, sink: str) -> Path:
    return directory / DIRECTORY / f"{sink}.json"


def load(directory: Path, sink: str) -> Cursor | None:
    """The sink's cursor, or None when it has none yet (or it is unreadable: the
    shipper then starts from the oldest file the journal still holds)."""
    try:
        data = orjson.loads(path(directory, sink).read_bytes())
        return Cursor(**{k: v for k, v in data.items() if k in Cursor.__slots__})
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


def save(directory: Path, cursor: Cursor, durable: bool = True) -> None:
    """Replace the sink's cursor atomically (write, flush, rename, flush the folder)."""
    folder = directory / DIRECTORY
    folder.mkdir(mode=0o700, exist_ok=True)
    target = path(directory, cursor.sink)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, cursor.to_json())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    if durable:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def delivered_through(directory: Path, sinks: list[str]) -> int | None:
    """The lowest journal file number any sink is still in (every file before it has
    reached every sink); None when there are no sinks (nothing waits for delivery)."""
    if not sinks:
        return None
    positions = []
    for sink in sinks:
        cursor = load(directory, sink)
        positions.append(cursor.segment if cursor is not None else 0)
    return min(positions)
