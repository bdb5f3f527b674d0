"""Hash chaining and verification (`egressguard.core.chain`): sealing records, signed
checkpoints, and every kind of tampering found, named, and placed by id and seq."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.core import checkpoints
from egressguard.core.chain import (
    DELETED,
    GENESIS,
    INSERTED,
    MODIFIED,
    REORDERED,
    SIGNATURE,
    TRUNCATED,
    UNREADABLE,
    Line,
    record_hash,
    seal,
    verify,
)

KEY = Ed25519PrivateKey.generate()
SOURCE = "journal-000001.jsonl"
Lines = list[bytes]


def chained(n: int, checkpoint_every: int = 0, key: Ed25519PrivateKey = KEY,
            segment: int = 1) -> Lines:
    """`n` records (and a checkpoint after every `checkpoint_every`), chained."""
    out: Lines = []
    prev, seq, since = GENESIS, 0, 0
    for i in range(n):
        seq += 1
        record = seal({"id": f"{i:032x}", "kind": "request", "decision": "allow", "n": i},
                      prev, seq)
        prev, since = record["hash"], since + 1
        out.append(orjson.dumps(record))
        if checkpoint_every and since == checkpoint_every:
            seq += 1
            cp = {"id": f"c{i:031x}", "kind": "checkpoint",
                  "checkpoint": checkpoints.fields("count", segment, seq - since, since,
                                                   key.public_key())}
            record = seal(cp, prev, seq, key)
            prev, since = record["hash"], 0
            out.append(orjson.dumps(record))
    return out


def lines(raw: Lines, source: str = SOURCE, segment: int | None = 1) -> list[Line]:
    out = [Line(source, n, r, segment=segment, last_file=True) for n, r in enumerate(raw, 1)]
    if out:
        out[-1].last_of_file = True
    return out


def problems(raw: Lines, **kw: Any) -> list[tuple[str, int, int | None]]:
    found = verify(lines(raw), **kw).problems
    return [(p.kind, p.line, p.seq) for p in found]


def test_seal_sets_seq_prev_hash_and_the_hash_of_everything_else() -> None:
    record = {"b": 2, "a": 1}
    assert seal(record, GENESIS, 1) is record
    assert (record["seq"], record["prev_hash"]) == (1, GENESIS)
    canonical = b'{"a":1,"b":2,"prev_hash":"' + GENESIS.encode() + b'","seq":1}'
    assert record["hash"] == hashlib.sha256(canonical).hexdigest()
    assert record_hash(record) == record["hash"]  # the hash field itself is left out
    assert record_hash({"seq": 1, "prev_hash": GENESIS, "b": 2, "a": 1}) == record["hash"]


def test_a_checkpoint_is_signed_before_it_is_hashed() -> None:
    record = orjson.loads(chained(3, checkpoint_every=3)[-1])
    assert record["kind"] == "checkpoint"
    assert checkpoints.signature_ok(record, KEY.public_key())
    assert record_hash(record) == record["hash"]  # the signature is inside the hash
    assert record["checkpoint"]["key_id"] == checkpoints.key_id(KEY.public_key())
    other = Ed25519PrivateKey.generate().public_key()
    assert not checkpoints.signature_ok(record, other)


def test_an_intact_chain_has_no_problems() -> None:
    result = verify(lines(chained(10, checkpoint_every=4)), public_key=KEY.public_key())
    assert result.problems == []
    assert (result.records, result.checkpoints, result.signatures) == (12, 2, 2)
    assert (result.first_seq, result.last_seq) == (1, 12)


def _edit(raw: Lines) -> Lines:
    record = orjson.loads(raw[2])
    record["decision"] = "deny"
    return [*raw[:2], orjson.dumps(record), *raw[3:]]


def _rehash_edit(raw: Lines) -> Lines:
    # an attacker who recomputes the edited record's hash breaks the next link instead
    record = orjson.loads(raw[2])
    record["decision"] = "deny"
    return [*raw[:2], orjson.dumps(seal(record, record["prev_hash"], record["seq"])),
            *raw[3:]]


def _delete(raw: Lines) -> Lines:
    return [*raw[:2], *raw[4:]]


def _delete_first(raw: Lines) -> Lines:
    return raw[1:]


def _insert_forged(raw: Lines) -> Lines:
    prev = orjson.loads(raw[1])
    forged = seal({"id": "f" * 32, "kind": "request", "n": 99}, prev["hash"], prev["seq"] + 1)
    return [*raw[:2], orjson.dumps(forged), *raw[2:]]


def _insert_copy(raw: Lines) -> Lines:
    return [*raw[:3], raw[1], *raw[3:]]


def _swap(raw: Lines) -> Lines:
    return [raw[0], raw[2], raw[1], *raw[3:]]


def _garbage(raw: Lines) -> Lines:
    return [*raw[:2], b"this is not json", *raw[2:]]


TAMPERING: list[tuple[str, Callable[[Lines], Lines], list[tuple[str, int, int | None]]]] = [
    ("edit", _edit, [(MODIFIED, 3, 3)]),
    ("edit and rehash", _rehash_edit, [(MODIFIED, 3, 3)]),
    ("delete two", _delete, [(DELETED, 3, 5)]),
    ("delete the first", _delete_first, [(DELETED, 1, 2)]),
    ("insert a forged record", _insert_forged, [(INSERTED, 3, 3)]),
    ("insert a copy", _insert_copy, [(INSERTED, 4, 2)]),
    ("swap two", _swap, [(REORDERED, 2, 3)]),
    ("garbage line", _garbage, [(UNREADABLE, 3, None)]),
]


@pytest.mark.parametrize("name, tamper, expected", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_each_tampering_is_found_named_and_placed(name: str, tamper: Callable[[Lines], Lines],
                                                  expected: list[Any]) -> None:
    assert problems(tamper(chained(8))) == expected


def test_messages_name_what_is_missing_and_where() -> None:
    [problem] = verify(lines(_delete(chained(8)))).problems
    assert str(problem) == (f"{SOURCE}:3 (id {4:032x}, seq 5): deleted: 2 records missing "
                            "before this one (seq 3-4)")


def test_a_swap_is_one_reordering_not_a_deletion() -> None:
    found = verify(lines(_swap(chained(8)))).problems
    assert found[0].kind == REORDERED
    assert "seq 2" in found[0].message and f"{SOURCE}:3" in found[0].message
    assert DELETED not in {p.kind for p in found}


def test_a_partial_last_line_is_truncation() -> None:
    raw = chained(3)
    cut = [*lines(raw[:2]), Line(SOURCE, 3, raw[2][:20], complete=False, segment=1,
                                 last_of_file=True, last_file=True)]
    cut[1].last_of_file = False
    assert [(p.kind, p.line) for p in verify(cut).problems] == [(TRUNCATED, 3)]


def test_a_closed_file_without_its_closing_checkpoint_was_cut_short() -> None:
    first = lines(chained(8, checkpoint_every=4)[:-2], segment=1)  # its end cut off
    first[-1].last_file = False
    for line in first:
        line.last_file = False
    found = verify(first).problems
    assert [(p.kind, p.seq) for p in found] == [(TRUNCATED, 8)]


def test_a_missing_file_is_a_deletion() -> None:
    one = lines(chained(4, checkpoint_every=2)[:3], "journal-000001.jsonl", 1)
    for line in one:
        line.last_file = False
    later = [Line("journal-000003.jsonl", 1, b"{}", segment=3)]
    found = verify([*one, *later]).problems
    assert (found[0].kind, found[0].message) == (
        DELETED, "journal file(s) 2 missing before this one")


def test_a_rewritten_history_fails_the_later_signed_checkpoint() -> None:
    raw = chained(6, checkpoint_every=6)
    # edit record 2 and recompute every hash after it, checkpoint included
    out, prev = [], GENESIS
    for i, line in enumerate(raw):
        record = orjson.loads(line)
        if i == 1:
            record["decision"] = "deny"
        record.pop("hash")
        out.append(orjson.dumps(seal(record, prev, record["seq"])))  # cannot re-sign
        prev = orjson.loads(out[-1])["hash"]
    assert problems(out) == []  # the chain alone cannot tell ...
    assert problems(out, public_key=KEY.public_key()) == [(SIGNATURE, 7, 7)]  # ... the key can


def test_a_checkpoint_that_misstates_its_range_is_modified() -> None:
    raw = chained(8, checkpoint_every=4)
    record = orjson.loads(raw[-1])
    record["checkpoint"]["records"] = 3
    record.pop("hash")
    raw[-1] = orjson.dumps(seal(record, record["prev_hash"], record["seq"], KEY))
    assert problems(raw, public_key=KEY.public_key()) == [(MODIFIED, 10, 10)]


def test_a_journal_pruned_by_retention_starts_later_without_a_problem() -> None:
    raw = chained(8, checkpoint_every=4, segment=2)[5:]  # the first file was removed
    assert verify(lines(raw, "journal-000002.jsonl", 2)).problems == []
