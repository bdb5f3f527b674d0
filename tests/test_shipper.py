"""Forwarding the journal (`egressguard.backends.shipper`): every record reaches a sink
at least once and in order, across journal files, compression, receiver outages and
restarts of the shipper; the cursor moves only once a batch is confirmed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import cursors, housekeeping
from egressguard.backends.journal import Journal, Settings, read_records, segments
from egressguard.backends.shipper import ship
from egressguard.backends.sinks import make_sink
from egressguard.core import records
from egressguard.core.sinkconfig import parse_sinks
from egressguard.tools.fakesiem import SiemControl
from egressguard.tools.procs import wait_until

KEY = Ed25519PrivateKey.generate()


def sinks(siem: SiemControl, *names: str) -> list[Any]:
    text = "version: 1\nsinks:\n" + "".join(
        f"  - {{name: {n}, type: http, url: '{siem.url}/ndjson', "
        "batch: {max_records: 7, max_wait: 50ms}, retry: {initial: 50ms, max: 200ms}}\n"
        for n in names)
    return [(make_sink(spec, "node"), spec) for spec in parse_sinks(text, "s.yaml").sinks]


def journal_with(directory: Path, n: int, **settings: Any) -> list[dict[str, Any]]:
    with_key = Journal(directory, key=KEY, settings=Settings(**settings))
    with_key.open()
    try:
        return [with_key.append_sync({"kind": "request", "id": records.new_id(), "n": i})
                for i in range(n)]
    finally:
        with_key.close()


def everything(directory: Path) -> list[str]:
    return [r["id"] for r in read_records([directory])]


async def until(condition: Any, what: str, timeout: float = 15.0) -> None:
    await asyncio.to_thread(wait_until, condition, timeout=timeout, what=what)


def run_until_delivered(directory: Path, siem: SiemControl, names: tuple[str, ...] = ("a",),
                        expected: list[str] | None = None) -> None:
    expected = expected or everything(directory)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(ship(directory, sinks(siem, *names), stop))
        await until(lambda: set(expected) <= set(siem.ids("ndjson")), "every record shipped")
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_every_record_once_in_order_across_files(tmp_path: Path, siem: SiemControl) -> None:
    d = tmp_path / "journal"
    journal_with(d, 40, segment_bytes=1500, checkpoint_records=10)
    assert len(segments(d)) > 3
    run_until_delivered(d, siem)
    docs = [doc["doc"] for doc in siem.received()["ndjson"]["docs"]]
    assert [doc["id"] for doc in docs] == everything(d)  # checkpoints too, in journal order
    assert set(siem.ids("ndjson").values()) == {1}
    cursor = cursors.load(d, "a")
    assert cursor is not None
    assert (cursor.seq, cursor.hash, cursor.delivered) == (docs[-1]["seq"], docs[-1]["hash"],
                                                            len(docs))
    assert cursor.segment == segments(d)[-1].number


def test_an_outage_keeps_the_backlog_on_disk_and_recovery_delivers_all(
        tmp_path: Path, siem: SiemControl, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "journal"
    journal_with(d, 25)
    siem.control("fail", {"status": 503})

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(ship(d, sinks(siem, "a"), stop))
        await until(lambda: (c := cursors.load(d, "a")) is not None and c.error,
                    "the failure recorded in the cursor")
        failing = cursors.load(d, "a")
        assert failing is not None and "HTTP 503" in (failing.error or "")
        assert failing.delivered == 0 and failing.failing_since
        siem.control("recover")
        await until(lambda: set(everything(d)) <= set(siem.ids("ndjson")), "all delivered")
        stop.set()
        await asyncio.wait_for(task, 10)

    with caplog.at_level(logging.WARNING, logger="egressguard.backends.shipper"):
        asyncio.run(scenario())
    assert "sink a: HTTP sink a: HTTP 503" in caplog.text
    cursor = cursors.load(d, "a")
    assert cursor is not None and cursor.error is None and cursor.failing_since is None


def test_a_restart_resumes_after_the_last_confirmed_batch(tmp_path: Path,
                                                          siem: SiemControl) -> None:
    d = tmp_path / "journal"
    first = journal_with(d, 10)
    run_until_delivered(d, siem)
    journal_with(d, 10)  # more records, and the shipper starts again
    run_until_delivered(d, siem)
    assert set(siem.ids("ndjson").values()) == {1}  # nothing confirmed was sent again
    assert [doc["doc"]["id"] for doc in siem.received()["ndjson"]["docs"]] == everything(d)
    assert first[0]["id"] == everything(d)[0]


def test_a_stop_during_an_outage_loses_nothing(tmp_path: Path, siem: SiemControl) -> None:
    d = tmp_path / "journal"
    journal_with(d, 5)
    siem.control("fail", {"status": 500})

    async def failing() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(ship(d, sinks(siem, "a"), stop))
        await until(lambda: (c := cursors.load(d, "a")) is not None and c.error, "a failure")
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(failing())
    assert cursors.load(d, "a").seq == 0  # type: ignore[union-attr]
    siem.control("recover")
    run_until_delivered(d, siem)


def test_a_new_sink_reads_compressed_files_from_the_start(tmp_path: Path,
                                                          siem: SiemControl) -> None:
    d = tmp_path / "journal"
    journal_with(d, 30, segment_bytes=1500)
    run_until_delivered(d, siem, ("a",))
    health = housekeeping.run(d, segments(d)[-1].number + 1, ["a"], housekeeping.Retention())
    assert health.compressed and any(s.compressed for s in segments(d))
    siem.control("reset")
    run_until_delivered(d, siem, ("b",))  # a sink added later
    assert [doc["doc"]["id"] for doc in siem.received()["ndjson"]["docs"]] == everything(d)


def test_a_journal_that_does_not_continue_from_the_cursor_is_reported(
        tmp_path: Path, siem: SiemControl, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "journal"
    journal_with(d, 3)
    cursors.save(d, cursors.Cursor("a", segment=1, offset=0, seq=7, hash="f" * 64))
    with caplog.at_level(logging.ERROR, logger="egressguard.backends.shipper"):
        run_until_delivered(d, siem)
    assert "sink a: the journal does not continue from the last record this sink received " \
           "(seq 7)" in caplog.text
