"""How many audit records per second the journal sustains, with fsync group commit.

The journal as the proxy runs it — records chained and signed checkpoints every 1000,
segments rotated at 64 MiB, one write and one fdatasync per loop iteration's batch —
driven by N asyncio tasks that each append a realistic request record (about 900
bytes, built with `records.build`) and wait for it to be durable before appending the
next, as N concurrent requests do. Reported per N: records/s, flushes/s, records per
flush, and the p50/p99 wait of one append. The same with fsync off shows what the disk
costs; a bare write+fdatasync loop of the same size on the same disk is the floor.

    .venv/bin/python bench/journal.py [--seconds 5] [--concurrency 1 16 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import journal as journal_module
from egressguard.backends.journal import Journal, Settings, read_lines
from egressguard.core import chain, checkpoints, records


def record(i: int) -> dict[str, object]:
    return records.build(records.RequestFacts(
        id=records.new_id(), started=time.time(), client="10.0.3.17:51234", method="POST",
        host="api.openai.com", path="/v1/chat/completions", node="egress-1",
        agent=f"agent-{i % 50}", team="research", token_id="0123456789abcdef",
        vendor="openai", model="gpt-4o-mini", stream=True, policy="ab" * 32,
        rule="research-openai", limits={"state": "reserved", "scopes": ["team:research"]},
        redactions={"EMAIL_ADDRESS": {"mask": 2}}, status=200, latency_ms=812.5,
        upstream_ms=640.2, bytes_in=4123, bytes_out=18234,
        usage={"input_tokens": 1031, "output_tokens": 412},
        credential={"path": "secret/egressguard/vendors/openai", "version": 3}))


async def drive(journal: Journal, tasks: int, seconds: float) -> tuple[int, list[float]]:
    waits: list[float] = []
    deadline = time.perf_counter() + seconds

    async def agent(n: int) -> None:
        i = n
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await journal.append(record(i))
            waits.append(time.perf_counter() - t0)
            i += tasks

    await asyncio.gather(*(agent(n) for n in range(tasks)))
    return len(waits), waits


def run(directory: Path, tasks: int, seconds: float, fsync: bool) -> dict[str, float]:
    flushes = [0]
    real = journal_module._datasync

    def counting(fd: int) -> None:
        flushes[0] += 1
        real(fd)

    journal_module._datasync = counting
    journal = Journal(directory, fsync=fsync, key=Ed25519PrivateKey.generate(),
                      settings=Settings())
    journal.open()
    try:
        t0 = time.perf_counter()
        count, waits = asyncio.run(drive(journal, tasks, seconds))
        elapsed = time.perf_counter() - t0
    finally:
        journal.close()
        journal_module._datasync = real
    waits.sort()
    return {"records/s": count / elapsed, "flushes/s": flushes[0] / elapsed,
            "per flush": count / max(1, flushes[0]),
            "p50 ms": 1000 * waits[len(waits) // 2],
            "p99 ms": 1000 * waits[min(len(waits) - 1, int(len(waits) * 0.99))]}


def floor(directory: Path, size: int, seconds: float = 2.0) -> tuple[float, float]:
    """Plain write+fdatasync of one record, as fast as the disk allows: (per s, p50 ms)."""
    fd = os.open(directory / "floor", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = b"x" * (size - 1) + b"\n"
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            os.write(fd, line)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return len(times) / seconds, 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--dir", type=Path, help="where to write (default: a temporary folder "
                   "on the disk of /tmp)")
    args = p.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="egressguard-journal-", dir=args.dir))
    size = len(str(record(0))) + 180  # with its chain fields
    print(f"journal benchmark -- {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {base}")
    per_s, p50 = floor(base, size)
    print(f"the disk's floor: write+fdatasync of one {size}-byte line: {per_s:.0f}/s, "
          f"p50 {p50:.2f} ms\n")
    print("| appending tasks | fsync | records/s | flushes/s | records per flush | "
          "append p50 ms | append p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for n in args.concurrency:
        for fsync in (True, False):
            directory = base / f"c{n}-{'fsync' if fsync else 'nofsync'}"
            r = run(directory, n, args.seconds, fsync)
            per_flush = f"{r['per flush']:.1f}" if r["flushes/s"] else "-"
            print(f"| {n} | {'on' if fsync else 'off'} | {r['records/s']:.0f} | "
                  f"{r['flushes/s']:.0f} | {per_flush} | {r['p50 ms']:.2f} | "
                  f"{r['p99 ms']:.2f} |", flush=True)
            result = chain.verify(read_lines([directory]))
            if result.problems or not result.checkpoints:
                print(f"bench: the journal does not verify: {result.problems[:1]}",
                      file=sys.stderr)
                return 1
    print(f"\nevery journal verified (chain intact, {checkpoints.ALGORITHM} checkpoints "
          "every 1000 records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
