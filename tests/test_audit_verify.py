"""`egressguard audit verify` on a real journal — rotated files, some gzipped, signed
checkpoints — after each kind of tampering: the first problem is named by kind, record
id and file:line, and the exit code is 0 only for an intact journal."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import housekeeping
from egressguard.backends.journal import Journal, Settings, segments
from egressguard.core import chain, checkpoints, records

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal of 60 requests in several files (checkpoint every 7), the two oldest
    gzipped, its newest still open (no closing checkpoint)."""
    directory = tmp_path_factory.mktemp("audit") / "journal"
    journal = Journal(directory, key=KEY, node="n1",
                      settings=Settings(segment_bytes=6000, checkpoint_records=7))
    journal.open()
    for i in range(60):
        facts = records.RequestFacts(id=records.new_id(), started=1.7e9 + i, client="c:1",
                                     method="POST", host="api.openai.com", path="/v1/x",
                                     agent=f"agent-{i % 3}", status=200, node="n1")
        journal.append_sync(records.build(facts))
    housekeeping.run(directory, 3, [], housekeeping.Retention())  # files 1, 2 -> .gz
    # left open, as a running proxy leaves it: no shutdown checkpoint, lock released
    os.close(journal._fd)
    os.close(journal._lock_fd)
    return directory


@pytest.fixture
def journal(original: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "journal"
    shutil.copytree(original, copy)
    return copy


@pytest.fixture(scope="module")
def pubkey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "audit.pub"
    path.write_bytes(checkpoints.public_pem(KEY))
    return path


def verify(*args: str | Path) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "verify",
                           *map(str, args)], capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def lines_of(path: Path) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def write(path: Path, lines: list[bytes]) -> None:
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def file_of(journal: Path, n: int) -> Path:
    return [s.path for s in segments(journal)][n]


def test_an_intact_journal_verifies_with_its_signatures(journal: Path, pubkey: Path) -> None:
    code, out, err = verify(journal, "--pubkey", pubkey)
    assert (code, err) == (0, "")
    assert out.startswith("OK ") and "signatures verified; chain intact" in out
    assert len([s for s in segments(journal) if s.compressed]) == 2


def _edit(lines: list[bytes]) -> list[bytes]:
    record = orjson.loads(lines[3])
    record["agent"] = "someone-else"
    return [*lines[:3], orjson.dumps(record) + b"\n", *lines[4:]]


def _delete(lines: list[bytes]) -> list[bytes]:
    return [*lines[:3], *lines[4:]]


def _insert(lines: list[bytes]) -> list[bytes]:
    return [*lines[:4], lines[2], *lines[4:]]


def _reorder(lines: list[bytes]) -> list[bytes]:
    return [*lines[:2], lines[3], lines[2], *lines[4:]]


def _cut_end(lines: list[bytes]) -> list[bytes]:
    return lines[:-2]  # the closing checkpoint and the record before it


def _torn(lines: list[bytes]) -> list[bytes]:
    return [*lines[:-1], lines[-1][:30]]


CASES: list[tuple[str, int, Callable[[list[bytes]], list[bytes]], str, int]] = [
    # name, file index, tamper, kind, line of the first problem
    ("edited record in a gzipped file", 0, _edit, "modified", 4),
    ("edited record in a plain file", 2, _edit, "modified", 4),
    ("deleted record", 1, _delete, "deleted", 4),
    ("inserted copy", 2, _insert, "inserted", 5),
    ("reordered records", 2, _reorder, "reordered", 3),
    ("closed file cut short", 1, _cut_end, "truncated", -3),
    ("partial last line", -1, _torn, "truncated", -1),
]


@pytest.mark.parametrize("name, index, tamper, kind, line", CASES, ids=[c[0] for c in CASES])
def test_each_tampering_is_found_and_placed(journal: Path, pubkey: Path, name: str,
                                            index: int, tamper: Callable[..., list[bytes]],
                                            kind: str, line: int) -> None:
    path = file_of(journal, index)
    lines = lines_of(path)
    write(path, tamper(lines))
    line = line if line > 0 else len(lines) + line + 1
    code, out, err = verify(journal, "--pubkey", pubkey)
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith(f"BROKEN {path}:{line}") and f": {kind}: " in first, out
    assert f"the first: {first[len('BROKEN '):]}" in err
    if kind != "truncated" or index != -1:
        assert "(id " in first and ", seq " in first


def test_a_missing_file_is_named(journal: Path) -> None:
    file_of(journal, 1).unlink()
    code, out, _ = verify(journal)
    assert code == 1 and "deleted: journal file(s) 2 missing before this one" in out


def test_a_history_rewritten_with_every_hash_recomputed_fails_its_signatures(
        journal: Path, pubkey: Path) -> None:
    prev, rewritten = chain.GENESIS, []
    for s in segments(journal):
        lines = lines_of(s.path)
        out = []
        for raw in lines:
            record = orjson.loads(raw)
            if record["seq"] == 3:
                record["agent"] = "someone-else"
            record.pop("hash")
            out.append(orjson.dumps(chain.seal(record, prev, record["seq"])) + b"\n")
            prev = orjson.loads(out[-1])["hash"]
        rewritten.append((s.path, out))
    for path, out in rewritten:
        write(path, out)
    assert verify(journal)[0] == 0  # the chain alone is fooled...
    code, out, _ = verify(journal, "--pubkey", pubkey)  # ...the signatures are not
    assert code == 1 and ": signature: " in out.splitlines()[0]


def test_another_key_fails_every_signature(journal: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(checkpoints.public_pem(Ed25519PrivateKey.generate()))
    code, out, err = verify(journal, "--pubkey", other)
    assert code == 1 and out.count(": signature: ") > 3
    assert "0 signatures verified" in err


def test_a_bad_public_key_file_is_a_clear_error(journal: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    code, out, err = verify(journal, "--pubkey", bad)
    assert (code, out) == (2, "") and f"cannot use {bad} as the public key" in err
