"""The local audit journal: append-only JSONL files, hash-chained, fsync'd in groups.

`Journal.append` returns once the record is on disk. Appends from the event loop are
handed to one writer thread that writes everything pending with one write() and one
fsync() (group commit), so concurrent requests share the cost of a disk flush and the
loop never blocks on I/O. A lock file keeps a second process out of the directory.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from egressguard.core import chain

log = logging.getLogger(__name__)

PATTERN = "journal-*.jsonl"


class JournalError(Exception):
    pass


def journal_files(directory: Path) -> list[Path]:
    """The journal's files, oldest first."""
    return sorted(directory.glob(PATTERN))


def read_lines(paths: list[Path]) -> Iterator[tuple[str, int, bytes]]:
    """(file, line number, raw line) for every complete line of `paths`, in order.
    A directory stands for its journal files."""
    for path in paths:
        if path.is_dir():
            yield from read_lines(journal_files(path))
            continue
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield str(path), n, line.rstrip(b"\n")


def read_records(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for _, _, raw in read_lines(paths):
        yield orjson.loads(raw)


class Journal:
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self._fsync = fsync
        self._prev_hash = chain.GENESIS
        self._fd = -1
        self._lock_fd = -1
        self._pending: list[tuple[bytes, asyncio.Future[None] | None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self.path: Path | None = None

    # -- life cycle -------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock()
        try:
            files = journal_files(self.directory)
            self.path = files[-1] if files else self.directory / "journal-000001.jsonl"
            self._prev_hash = self._recover(self.path) if files else self._prev_hash
        except BaseException:
            os.close(self._lock_fd)  # so a repaired directory can be opened again
            self._lock_fd = -1
            raise
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._thread = threading.Thread(target=self._writer, name="egressguard-journal",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread:
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- appending --------------------------------------------------------------
    async def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain `record`, and return it once it is durably on disk.

        Raises JournalError if the journal cannot write: callers must then refuse
        to serve, not carry on unaudited.
        """
        line = self._chain(record)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(line, fut)
        await fut
        return record

    def append_sync(self, record: dict[str, Any]) -> dict[str, Any]:
        """Blocking append, for command-line tools (no event loop)."""
        line = self._chain(record)
        done = threading.Event()
        self._enqueue(line, None, done)
        done.wait()
        if self._failure:
            raise JournalError(f"audit journal write failed: {self._failure}")
        return record

    def _chain(self, record: dict[str, Any]) -> bytes:
        if self._failure:
            raise JournalError(f"audit journal {self.path} is not writable: {self._failure}")
        chain.seal(record, self._prev_hash)
        self._prev_hash = record["hash"]
        return orjson.dumps(record) + b"\n"

    def _enqueue(self, line: bytes, fut: asyncio.Future[None] | None,
                 done: threading.Event | None = None) -> None:
        with self._cond:
            self._pending.append((line, fut if fut is not None else done))  # type: ignore[arg-type]
            self._cond.notify()

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
                batch, self._pending = self._pending, []
            error: BaseException | None = None
            try:
                data = b"".join(line for line, _ in batch)
                while data:
                    data = data[os.write(self._fd, data):]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                error = self._failure = exc
                log.critical("audit journal write failed, refusing traffic: %s", exc)
            self._resolve([waiter for _, waiter in batch], error)

    @staticmethod
    def _resolve(waiters: list[Any], error: BaseException | None) -> None:
        """Wake everyone in a batch: one call into each event loop, not one per record."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for waiter in waiters:
            if isinstance(waiter, threading.Event):
                waiter.set()
            else:
                by_loop.setdefault(waiter.get_loop(), []).append(waiter)

        def settle(futures: list[asyncio.Future[None]]) -> None:
            for fut in futures:
                if fut.done():
                    continue
                if error:
                    fut.set_exception(JournalError(f"audit journal write failed: {error}"))
                else:
                    fut.set_result(None)

        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(settle, futures)

    # -- start-up -----------------------------------------------------------------
    def _lock(self) -> None:
        lock_path = self.directory / "journal.lock"
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise JournalError(
                f"journal directory {self.directory} is in use by another egressguard "
                f"process (pid {holder or 'unknown'}); give each replica its own --journal"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    def _recover(self, path: Path) -> str:
        """The last record's hash; a torn final line (crash mid-write, never
        acknowledged to an agent) is moved aside to `<file>.torn-<time>`."""
        size = path.stat().st_size
        if size == 0:
            return self._prev_from_older(path)
        with open(path, "rb+") as f:
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n") + 1
                torn = tail[cut:]
                keep = size - len(torn)
                aside = path.with_name(f"{path.name}.torn-{int(time.time())}")
                fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(torn)
                f.truncate(keep)
                log.warning("journal %s ended in a torn record (%d bytes); moved to %s",
                            path, len(torn), aside)
                tail = tail[:cut]
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not last:
            return self._prev_from_older(path)
        try:
            return str(orjson.loads(last)["hash"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise JournalError(
                f"the last record of {path} is unreadable; run `egressguard audit verify "
                f"{self.directory}` and move the damaged file aside") from None

    def _prev_from_older(self, path: Path) -> str:
        older = [p for p in journal_files(self.directory) if p < path]
        return self._recover(older[-1]) if older else chain.GENESIS
