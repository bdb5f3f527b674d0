"""The local audit journal (`egressguard.backends.journal`): chained, durable, recoverable."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import journal as journal_module
from egressguard.backends.journal import (
    Journal,
    JournalError,
    Settings,
    journal_files,
    read_lines,
    read_records,
)
from egressguard.core.chain import GENESIS, verify

FIRST = "journal-000001.jsonl"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


KEY = Ed25519PrivateKey.generate()


@contextmanager
def opened(directory: Path, fsync: bool = True, **kw: Any) -> Iterator[Journal]:
    journal = Journal(directory, fsync=fsync, **kw)
    journal.open()
    try:
        yield journal
    finally:
        journal.close()


def write(directory: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with opened(directory) as journal:
        return [journal.append_sync(r) for r in records]


def breaks(directory: Path) -> list[str]:
    return [str(p) for p in verify(read_lines([directory])).problems]


def records(directory: Path) -> list[dict[str, Any]]:
    return list(read_records([directory]))


def counted_flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The journal's disk flushes from now on, still really done: one fd each."""
    flushed: list[int] = []
    real = journal_module._datasync

    def counting(fd: int) -> None:
        flushed.append(fd)
        real(fd)

    monkeypatch.setattr(journal_module, "_datasync", counting)
    return flushed


def test_append_sync_writes_chained_lines_that_verify(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    written = write(directory, [{"n": i} for i in range(3)])
    assert [r["n"] for r in written] == [0, 1, 2]
    assert written[0]["prev_hash"] == GENESIS
    assert [r["prev_hash"] for r in written[1:]] == [r["hash"] for r in written[:-1]]
    assert records(directory) == written
    assert breaks(directory) == []
    raw = (directory / FIRST).read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 3


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    write(directory, [{"n": 1}])
    assert mode(directory) == 0o700
    assert {p.name: mode(p) for p in directory.iterdir()} == {FIRST: 0o600,
                                                              "journal.lock": 0o600}
    assert (directory / "journal.lock").read_text() == f"{os.getpid()}\n"


def test_concurrent_async_appends_are_all_durable_chained_and_in_order(
        tmp_path: Path) -> None:
    directory = tmp_path / "journal"

    async def main() -> list[dict[str, Any]]:
        with opened(directory) as journal:
            return await asyncio.gather(*(journal.append({"n": i}) for i in range(200)))

    returned = asyncio.run(main())
    assert [r["n"] for r in returned] == list(range(200))
    on_disk = records(directory)
    assert on_disk == returned
    assert breaks(directory) == []


def test_appends_from_one_loop_iteration_share_one_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed = counted_flushes(monkeypatch)

    async def main() -> None:
        with opened(tmp_path / "journal") as journal:
            await asyncio.gather(*(journal.append({"n": i}) for i in range(50)))
            await journal.append({"n": 50})

    asyncio.run(main())
    assert len(flushed) == 2  # the 50 gathered records, then the last one
    assert len(records(tmp_path / "journal")) == 51


def test_a_sync_append_after_pending_async_ones_keeps_chain_order(tmp_path: Path) -> None:
    directory = tmp_path / "journal"

    async def main() -> None:
        with opened(directory) as journal:
            pending = asyncio.ensure_future(journal.append({"n": 1}))
            await asyncio.sleep(0)  # chained and queued, not yet committed
            journal.append_sync({"n": 2})
            await pending

    asyncio.run(main())
    assert [r["n"] for r in records(directory)] == [1, 2]
    assert breaks(directory) == []


def test_a_batch_committed_early_is_not_flushed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed = counted_flushes(monkeypatch)

    async def main() -> None:
        with opened(tmp_path / "journal") as journal:
            pending = asyncio.ensure_future(journal.append({"n": 1}))
            await asyncio.sleep(0)  # queued, its commit scheduled
            journal.append_sync({"n": 2})  # commits the batch first, then its own line
            await pending
            for _ in range(3):  # the scheduled commit runs, with nothing left to do
                await asyncio.sleep(0)
            assert len(flushed) == 2

    asyncio.run(main())
    assert [r["n"] for r in records(tmp_path / "journal")] == [1, 2]


def test_an_acknowledged_async_append_is_already_on_disk(tmp_path: Path) -> None:
    directory = tmp_path / "journal"

    async def main() -> None:
        with opened(directory) as journal:
            for i in range(5):
                record = await journal.append({"n": i})
                assert records(directory)[-1] == record

    asyncio.run(main())


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    old = write(directory, [{"n": 1}, {"n": 2}])
    new = write(directory, [{"n": 3}])
    assert new[0]["prev_hash"] == old[-1]["hash"]
    assert [r["n"] for r in records(directory)] == [1, 2, 3]
    assert breaks(directory) == []


def test_an_empty_newest_file_continues_from_the_older_one(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    with opened(directory, key=KEY) as journal:  # closed by its shutdown checkpoint
        old = [journal.append_sync({"n": 1})]
    (directory / "journal-000002.jsonl").touch(mode=0o600)
    new = write(directory, [{"n": 2}])
    assert journal_files(directory)[-1].name == "journal-000002.jsonl"
    assert new[0]["prev_hash"] != old[-1]["hash"]  # the checkpoint came between
    assert new[0]["seq"] == old[-1]["seq"] + 2
    assert breaks(directory) == []


@pytest.mark.parametrize("torn", [b'{"n":3,"prev_ha', b"{", b"\x00\x00\x00"])
def test_a_torn_final_line_is_moved_aside_and_the_chain_continues(
        tmp_path: Path, torn: bytes) -> None:
    directory = tmp_path / "journal"
    old = write(directory, [{"n": 1}, {"n": 2}])
    with open(directory / FIRST, "ab") as f:
        f.write(torn)  # a crash in the middle of a write: no newline

    new = write(directory, [{"n": 4}])

    aside, = directory.glob(f"{FIRST}.torn-*")
    assert aside.read_bytes() == torn
    assert new[0]["prev_hash"] == old[-1]["hash"]
    assert [r["n"] for r in records(directory)] == [1, 2, 4]
    assert breaks(directory) == []


def test_a_file_holding_only_a_torn_line_starts_from_genesis(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    directory.mkdir(mode=0o700)
    (directory / FIRST).write_bytes(b'{"n":1,"ha')
    new = write(directory, [{"n": 2}])
    assert new[0]["prev_hash"] == GENESIS
    assert breaks(directory) == []


def test_the_torn_file_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    write(directory, [{"n": 1}])
    with open(directory / FIRST, "ab") as f:
        f.write(b'{"n":2')
    write(directory, [{"n": 3}])
    aside, = directory.glob(f"{FIRST}.torn-*")
    assert mode(aside) == 0o600


def test_a_second_journal_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    with opened(directory):
        with pytest.raises(JournalError, match="is in use by another egressguard process") \
                as info:
            Journal(directory).open()
        assert f"pid {os.getpid()}" in str(info.value)
    with opened(directory) as journal:  # free again once the first is closed
        journal.append_sync({"n": 1})


@pytest.mark.parametrize("last", [b"not json\n", b'{"n":1}\n', b"[1]\n"])
def test_an_unreadable_last_line_refuses_to_open(tmp_path: Path, last: bytes) -> None:
    directory = tmp_path / "journal"
    write(directory, [{"n": 1}])
    with open(directory / FIRST, "ab") as f:
        f.write(last)
    journal = Journal(directory)
    with pytest.raises(JournalError, match="is unreadable; run `egressguard audit verify"):
        journal.open()


def test_a_failed_open_releases_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    write(directory, [{"n": 1}])
    path = directory / FIRST
    good = path.read_bytes()
    path.write_bytes(good + b"damaged\n")
    with pytest.raises(JournalError, match="unreadable"):
        Journal(directory).open()
    path.write_bytes(good)  # the operator moves the damage aside
    write(directory, [{"n": 2}])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_write_raises_and_refuses_further_appends(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    with opened(directory) as journal:
        journal.append_sync({"n": 1})
        # the disk fills up under a running journal
        os.close(journal._fd)
        journal._fd = os.open("/dev/full", os.O_WRONLY)
        with pytest.raises(JournalError, match="audit journal write failed"):
            journal.append_sync({"n": 2})
        with pytest.raises(JournalError, match="is not writable"):
            journal.append_sync({"n": 3})

        async def append() -> None:
            await journal.append({"n": 4})

        with pytest.raises(JournalError, match="is not writable"):
            asyncio.run(append())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_journal_takes_appends_again_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "journal"
    with opened(directory) as journal:
        journal.append_sync({"n": 1})
        segment = journal.path
        os.close(journal._fd)
        journal._fd = os.open("/dev/full", os.O_WRONLY)
        with pytest.raises(JournalError):
            journal.append_sync({"n": 2})
        with open(segment, "ab") as f:  # what a write cut short by ENOSPC leaves
            f.write(b'{"n":2,"seq":2,"ha')
        monkeypatch.setattr(journal_module, "RECOVERY_ROOM", 1 << 60)
        assert not journal.recover() and journal.failed  # no room yet
        monkeypatch.setattr(journal_module, "RECOVERY_ROOM", 0)

        assert journal.recover() and not journal.failed
        journal.append_sync({"n": 3})
    assert [r["n"] for r in records(directory)] == [1, 3]
    assert [r["seq"] for r in records(directory)] == [1, 2]
    assert breaks(directory) == []
    assert [p.name for p in directory.glob("*.torn-*")] != []  # set aside, not lost


def test_read_lines_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n\n{"a":2}\n{"a"')
    got = [(line.number, line.raw, line.complete, line.last_of_file)
           for line in read_lines([path])]
    assert got == [(1, b'{"a":1}', True, False), (3, b'{"a":2}', True, False),
                   (4, b'{"a"', False, True)]
    assert orjson.loads(list(read_lines([path]))[1].raw) == {"a": 2}


# -- rotation and checkpoints ---------------------------------------------------------------

def kinds(directory: Path) -> list[str]:
    return [r["kind"] for r in records(directory)]


def signed_ok(directory: Path) -> tuple[list[str], int]:
    result = verify(read_lines([directory]), KEY.public_key())
    return [str(p) for p in result.problems], result.signatures


def test_a_full_file_is_closed_by_a_signed_checkpoint_and_the_next_one_started(
        tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    with opened(directory, key=KEY, settings=Settings(segment_bytes=400)) as journal:
        for i in range(6):
            journal.append_sync({"kind": "request", "n": i})
        assert journal.segment > 1
    files = journal_files(directory)
    assert [p.name for p in files][:2] == [FIRST, "journal-000002.jsonl"]
    for path in files[:-1]:  # every closed file ends with its rotation checkpoint
        last = orjson.loads(path.read_bytes().splitlines()[-1])
        assert (last["kind"], last["checkpoint"]["reason"]) == ("checkpoint", "rotation")
        assert last["checkpoint"]["segment"] == int(path.name[8:14])
    assert [r["seq"] for r in records(directory)] == list(range(1, len(records(directory)) + 1))
    problems, signatures = signed_ok(directory)
    assert problems == [] and signatures == kinds(directory).count("checkpoint")


def test_checkpoints_every_n_records_cover_exactly_those(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    with opened(directory, key=KEY, settings=Settings(checkpoint_records=3)) as journal:
        for i in range(7):
            journal.append_sync({"kind": "request", "n": i})
    written = records(directory)
    marks = [(r["seq"], r["checkpoint"]["first_seq"], r["checkpoint"]["records"],
              r["checkpoint"]["reason"]) for r in written if r["kind"] == "checkpoint"]
    assert marks == [(4, 1, 3, "count"), (8, 5, 3, "count"), (10, 9, 1, "shutdown")]
    assert signed_ok(directory) == ([], 3)


def test_an_idle_journal_checkpoints_after_the_interval(tmp_path: Path) -> None:
    directory = tmp_path / "journal"

    async def main() -> None:
        with opened(directory, key=KEY, settings=Settings(checkpoint_seconds=0.05)) as journal:
            await journal.append({"kind": "request", "n": 1})
            deadline = asyncio.get_running_loop().time() + 5
            while kinds(directory)[-1] != "checkpoint":  # bounded: fails after 5 s
                assert asyncio.get_running_loop().time() < deadline, kinds(directory)
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [r["checkpoint"]["reason"] for r in records(directory)
            if r["kind"] == "checkpoint"] == ["interval"]  # nothing new: no shutdown one


def test_an_old_file_is_rotated_at_the_next_write(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "journal"
    clock = [1_000_000.0]
    monkeypatch.setattr(journal_module.time, "time", lambda: clock[0])
    with opened(directory, key=KEY, settings=Settings(segment_age=60)) as journal:
        journal.append_sync({"kind": "request", "n": 1})
        clock[0] += 61
        journal.append_sync({"kind": "request", "n": 2})
        assert journal.segment == 2
    assert signed_ok(directory)[0] == []


def test_seq_and_checkpoints_carry_on_across_restarts(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    settings = Settings(checkpoint_records=4)
    for _ in range(3):
        with opened(directory, key=KEY, settings=settings) as journal:
            for i in range(3):
                journal.append_sync({"kind": "request", "n": i})
    assert [r["seq"] for r in records(directory)] == list(range(1, len(records(directory)) + 1))
    assert signed_ok(directory)[0] == []


def test_a_crash_leaves_the_next_checkpoint_covering_every_record_since(
        tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    journal = Journal(directory, key=KEY, settings=Settings(checkpoint_records=100))
    journal.open()
    for i in range(5):
        journal.append_sync({"kind": "request", "n": i})
    os.close(journal._fd)  # killed: no shutdown checkpoint, the lock goes with the process
    os.close(journal._lock_fd)
    with opened(directory, key=KEY) as again:
        again.append_sync({"kind": "request", "n": 5})
    last = records(directory)[-1]
    assert (last["checkpoint"]["first_seq"], last["checkpoint"]["records"]) == (1, 6)
    assert signed_ok(directory)[0] == []
