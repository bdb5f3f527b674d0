"""`egressguard ship`: forward the audit journal to the sinks file's sinks, at least once.

Started by `egressguard run --sinks FILE` as a child process it supervises (and which
ends with it), or on its own beside a proxy, e.g. as a sidecar. One shipper per
journal: a lock in the journal's cursors folder keeps a second one out. SIGTERM or
SIGINT ends it after the batch under way; the cursors say where each sink stands.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from egressguard.backends import cursors
from egressguard.backends.shipper import ship
from egressguard.backends.sinks import SinkError, make_sink
from egressguard.core.sinkconfig import load_sinks
from egressguard.core.yamlsource import ConfigError
from egressguard.tools.procs import die_with_parent

log = logging.getLogger("egressguard.ship")


def main(journal: Path, sinks_file: Path, node: str | None, parent: int | None) -> int:
    try:
        config = load_sinks(sinks_file)
    except ConfigError as exc:
        print(f"egressguard ship: invalid sinks file:\n{exc}", file=sys.stderr)
        return 2
    if not config.sinks:
        print(f"egressguard ship: {sinks_file} names no sinks", file=sys.stderr)
        return 2
    lock = _lock(journal)
    if lock is None:
        return 1
    try:
        sinks = [(make_sink(spec, node or socket.gethostname()), spec)
                 for spec in config.sinks]
    except SinkError as exc:
        print(f"egressguard ship: {exc}", file=sys.stderr)
        return 2
    log.info("shipping %s to %s", journal, ", ".join(config.names))
    asyncio.run(_run(journal, sinks, parent))
    os.close(lock)
    return 0


async def _run(journal: Path, sinks: list, parent: int | None) -> None:  # type: ignore[type-arg]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(_watch_parent(parent, stop)) if parent else None
    try:
        await ship(journal, sinks, stop)
    finally:
        if watcher is not None:
            watcher.cancel()


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop once the proxy that started us is gone (a backstop: the kernel sends SIGTERM
    when it dies, see Supervisor)."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the proxy (pid %d) is gone: stopping", parent)
    stop.set()


def _lock(journal: Path) -> int | None:
    folder = journal / cursors.DIRECTORY
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "ship.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        print(f"egressguard ship: another shipper (pid {holder or 'unknown'}) is shipping "
              f"{journal}", file=sys.stderr)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Supervisor:
    """Runs `egressguard ship` beside the proxy and starts it again if it dies."""

    def __init__(self, journal: Path, sinks_file: Path, node: str | None) -> None:
        self.command = [sys.executable, "-m", "egressguard.cli", "ship", "--journal",
                        str(journal), "--sinks", str(sinks_file), "--parent-pid",
                        str(os.getpid())]
        if node:
            self.command += ["--node", node]
        self.process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        wait = 1.0
        while True:
            self.process = subprocess.Popen(  # SIGTERM when the proxy dies, even by kill -9
                self.command, stdin=subprocess.DEVNULL,
                preexec_fn=functools.partial(die_with_parent, signal.SIGTERM))
            code = await asyncio.to_thread(self.process.wait)
            if code == 2:  # a configuration problem: starting again changes nothing
                log.critical("the audit shipper stopped on a configuration error (see "
                             "above); records stay in the journal until it is fixed")
                return
            log.error("the audit shipper exited with %s; starting it again in %.0fs",
                      code, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 30.0)

    async def stop(self, timeout: float = 15.0) -> None:
        if self._task is not None:
            self._task.cancel()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), timeout)
        except TimeoutError:
            process.kill()
