"""Hash chaining (`egressguard.core.chain`): sealing records and finding every break."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson
import pytest

from egressguard.core.chain import GENESIS, Break, ChainState, record_hash, seal, verify

SOURCE = "journal-000001.jsonl"
EDITED = "content does not match its hash (record edited)"
LINKS = "(record missing, inserted or reordered)"
GARBAGE = "not a chained audit record (unparseable or no hash)"

Lines = list[bytes]


def chained(n: int, prev: str = GENESIS, start: int = 0) -> Lines:
    out = []
    for i in range(start, start + n):
        record = seal({"id": f"{i:032x}", "decision": "allow", "n": i}, prev)
        prev = record["hash"]
        out.append(orjson.dumps(record))
    return out


def breaks(lines: Lines, state: ChainState | None = None) -> list[tuple[int, str]]:
    found = verify(((SOURCE, n, raw) for n, raw in enumerate(lines, 1)), state or ChainState())
    return [(b.line, b.problem) for b in found]


def problems(found: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Breaks with the variable hash prefixes of link problems reduced to their kind."""
    return [(line, LINKS if LINKS in problem else problem) for line, problem in found]


def test_seal_sets_prev_hash_and_the_hash_of_everything_else() -> None:
    record = {"b": 2, "a": 1}
    assert seal(record, GENESIS) is record
    assert record["prev_hash"] == GENESIS
    canonical = b'{"a":1,"b":2,"prev_hash":"' + GENESIS.encode() + b'"}'
    assert record["hash"] == hashlib.sha256(canonical).hexdigest()
    assert record_hash(record) == record["hash"]  # the hash field itself is left out
    assert record_hash({"prev_hash": GENESIS, "b": 2, "a": 1}) == record["hash"]  # key order


def _edit(lines: Lines) -> Lines:
    record = orjson.loads(lines[2])
    record["decision"] = "deny"
    return [*lines[:2], orjson.dumps(record), *lines[3:]]


def _edit_prev_hash(lines: Lines) -> Lines:
    record = orjson.loads(lines[2])
    record["prev_hash"] = "f" * 64
    return [*lines[:2], orjson.dumps(record), *lines[3:]]


def _rehash_edit(lines: Lines) -> Lines:
    # an attacker who recomputes the edited record's hash breaks the next link instead
    record = orjson.loads(lines[2])
    record["decision"] = "deny"
    return [*lines[:2], orjson.dumps(seal(record, record["prev_hash"])), *lines[3:]]


def _delete(lines: Lines) -> Lines:
    return [*lines[:2], *lines[3:]]


def _delete_first(lines: Lines) -> Lines:
    return lines[1:]


def _delete_last(lines: Lines) -> Lines:
    return lines[:-1]  # undetectable from the lines alone: the journal's end moved


def _insert_forged(lines: Lines) -> Lines:
    forged = seal({"id": "f" * 32, "decision": "allow", "n": 99},
                  orjson.loads(lines[1])["hash"])
    return [*lines[:2], orjson.dumps(forged), *lines[2:]]


def _insert_copy(lines: Lines) -> Lines:
    return [*lines[:2], lines[1], *lines[2:]]


def _swap(lines: Lines) -> Lines:
    return [lines[0], lines[2], lines[1], *lines[3:]]


def _garbage(lines: Lines) -> Lines:
    return [*lines[:2], b"this is not json", *lines[2:]]


def _no_hash(lines: Lines) -> Lines:
    record = orjson.loads(lines[2])
    del record["hash"]
    return [*lines[:2], orjson.dumps(record), *lines[3:]]


def _json_but_not_an_object(lines: Lines) -> Lines:
    return [*lines[:2], b"[1, 2, 3]", *lines[2:]]


@pytest.mark.parametrize("tamper, expected", [
    (lambda lines: lines, []),
    (_edit, [(3, EDITED)]),
    (_edit_prev_hash, [(3, LINKS), (3, EDITED)]),
    (_rehash_edit, [(4, LINKS)]),
    (_delete, [(3, LINKS)]),
    (_delete_first, [(1, LINKS)]),
    (_delete_last, []),
    (_insert_forged, [(4, LINKS)]),
    (_insert_copy, [(3, LINKS)]),
    (_swap, [(2, LINKS), (3, LINKS), (4, LINKS)]),
    (_garbage, [(3, GARBAGE)]),
    (_no_hash, [(3, GARBAGE), (4, LINKS)]),
    (_json_but_not_an_object, [(3, GARBAGE)]),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_verify(tamper: Callable[[Lines], Lines], expected: list[tuple[int, str]]) -> None:
    assert problems(breaks(tamper(chained(5)))) == expected


def test_a_link_break_names_both_hashes() -> None:
    lines = _delete(chained(5))
    (line, problem), = breaks(lines)
    claimed = orjson.loads(lines[2])["prev_hash"]
    expected = orjson.loads(lines[1])["hash"]
    assert line == 3
    assert problem == (f"prev_hash {claimed[:12]}… does not match the previous record's "
                       f"hash {expected[:12]}… {LINKS}")


def test_break_names_source_and_line() -> None:
    found = list(verify([("a.jsonl", 7, b"nope")], ChainState()))
    assert found == [Break("a.jsonl", 7, GARBAGE)]
    assert str(found[0]) == f"a.jsonl:7: {GARBAGE}"


def test_state_counts_records_and_carries_across_files() -> None:
    first = chained(3)
    second = chained(4, prev=orjson.loads(first[-1])["hash"], start=3)
    state = ChainState()
    assert breaks(first, state) == []
    assert (state.records, state.prev_hash) == (3, orjson.loads(first[-1])["hash"])
    assert breaks(second, state) == []
    assert state.records == 7
    assert problems(breaks(second)) == [(1, LINKS)]  # the second file alone does not start


@pytest.mark.parametrize("prev", [None, 5, {"x": 1}])
def test_a_prev_hash_that_is_not_a_string_is_a_break(prev: object) -> None:
    lines = chained(3)
    record = orjson.loads(lines[1])
    record["prev_hash"] = prev
    lines[1] = orjson.dumps(record)
    assert [line for line, _ in breaks(lines)] == [2, 2]
