"""Journal housekeeping (`egressguard.backends.housekeeping`): closed files every sink
has delivered are compressed and removed by age or disk cap; a file a sink still needs
is never touched, and a journal that cannot make room says why it is full."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import cursors, housekeeping
from egressguard.backends.housekeeping import Retention
from egressguard.backends.journal import Journal, Settings, read_lines, read_records, segments
from egressguard.core.chain import verify

KEY = Ed25519PrivateKey.generate()


def journal_of(directory: Path, files: int) -> Journal:
    """A journal with `files` closed files and one being written (left open)."""
    journal = Journal(directory, key=KEY, settings=Settings(segment_bytes=1))
    journal.open()
    for i in range(files):
        journal.append_sync({"kind": "request", "n": i})  # each write closes its file
    return journal


@pytest.fixture
def journal(tmp_path: Path):
    j = journal_of(tmp_path / "journal", 4)
    yield j
    j.close()


def at(directory: Path, sink: str, segment: int) -> None:
    cursors.save(directory, cursors.Cursor(sink, segment=segment))


def names(directory: Path) -> list[str]:
    return [s.path.name for s in segments(directory)]


def test_files_every_sink_has_are_compressed_and_still_verify(journal: Journal) -> None:
    d = journal.directory
    at(d, "siem", 3)
    at(d, "lake", 4)
    health = housekeeping.run(d, journal.segment, ["siem", "lake"], Retention())
    assert health.compressed == ["journal-000001.jsonl", "journal-000002.jsonl"]
    assert names(d) == ["journal-000001.jsonl.gz", "journal-000002.jsonl.gz",
                        "journal-000003.jsonl", "journal-000004.jsonl", "journal-000005.jsonl"]
    result = verify(read_lines([d]), KEY.public_key())
    assert result.problems == [] and result.records == len(list(read_records([d])))


def test_a_file_a_sink_still_needs_is_never_touched(journal: Journal) -> None:
    d = journal.directory
    at(d, "siem", 5)  # one sink is at the end; the other has no cursor yet
    health = housekeeping.run(d, journal.segment, ["siem", "lake"],
                              Retention(max_bytes=1, max_age=0.001))
    assert health.compressed == health.removed == []
    assert names(d)[0] == "journal-000001.jsonl"
    assert health.full is not None and "have not reached sink(s) lake" in health.full


def test_delivered_files_older_than_the_retention_go(journal: Journal) -> None:
    d = journal.directory
    at(d, "siem", 3)
    health = housekeeping.run(d, journal.segment, ["siem"], Retention(max_age=60),
                              now=__import__("time").time() + 3600)
    assert health.removed == ["journal-000001.jsonl.gz", "journal-000002.jsonl.gz"]
    assert names(d)[0] == "journal-000003.jsonl"
    assert verify(read_lines([d]), KEY.public_key()).problems == []  # starts later: fine


def test_over_the_cap_the_oldest_delivered_files_go_first(journal: Journal) -> None:
    d = journal.directory
    at(d, "siem", 5)
    sizes = [s.path.stat().st_size for s in segments(d)]
    cap = sum(sizes) - 1  # one file must go
    health = housekeeping.run(d, journal.segment, ["siem"], Retention(max_bytes=cap,
                                                                       compress=False))
    assert health.removed == ["journal-000001.jsonl"] and health.full is None
    assert health.bytes <= cap


def test_refuse_keeps_everything_and_is_full_over_the_cap(journal: Journal) -> None:
    d = journal.directory
    at(d, "siem", 5)
    health = housekeeping.run(d, journal.segment, ["siem"],
                              Retention(max_bytes=10, when_full="refuse", compress=False))
    assert health.removed == []
    assert health.full is not None and "when_full is refuse" in health.full


def test_without_sinks_every_closed_file_counts_as_delivered(journal: Journal) -> None:
    d = journal.directory
    health = housekeeping.run(d, journal.segment, [], Retention())
    assert len(health.compressed) == 4 and health.undelivered_bytes == 0


def test_a_journal_whose_newest_file_was_compressed_starts_a_new_one(tmp_path: Path) -> None:
    d = tmp_path / "journal"
    journal = Journal(d, key=KEY)
    journal.open()
    journal.append_sync({"kind": "request", "n": 1})
    journal.close()  # its shutdown checkpoint closes the file
    housekeeping.run(d, 2, [], Retention())  # as if the next process had moved on
    assert names(d) == ["journal-000001.jsonl.gz"]
    again = Journal(d, key=KEY)
    again.open()
    again.append_sync({"kind": "request", "n": 9})
    again.close()
    assert names(d)[-1] == f"journal-{again.segment:06d}.jsonl"
    assert verify(read_lines([d]), KEY.public_key()).problems == []
