"""Hash chaining of audit records, and verification of a chained sequence.

Each record carries `prev_hash` (the previous record's `hash`, or GENESIS for the
first) and `hash` = SHA-256 of the record's canonical JSON (sorted keys) without the
`hash` field. Editing, deleting, inserting or reordering any record breaks the chain
from that point on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def seal(record: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    """`record` with its chain fields set (mutates and returns it)."""
    record["prev_hash"] = prev_hash
    record["hash"] = record_hash(record)
    return record


@dataclass(frozen=True, slots=True)
class Break:
    """Where and why a chain does not verify."""

    source: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.problem}"


@dataclass(slots=True)
class ChainState:
    prev_hash: str = GENESIS
    records: int = 0


def verify(lines: Iterable[tuple[str, int, bytes]], state: ChainState) -> Iterator[Break]:
    """Check (source, line number, raw line) triples in order; yield every break.

    After a break the chain is re-anchored on the offending record so one edit is
    reported once, not once per following record.
    """
    for source, lineno, raw in lines:
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record = None
        claimed = record.get("hash") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(claimed, str):
            yield Break(source, lineno, "not a chained audit record (unparseable or no hash)")
            continue
        prev = record.get("prev_hash")
        if prev != state.prev_hash:
            yield Break(source, lineno, f"prev_hash {str(prev)[:12]}… does not match the "
                        f"previous record's hash {state.prev_hash[:12]}… (record missing, "
                        "inserted or reordered)")
        if record_hash(record) != claimed:
            yield Break(source, lineno, "content does not match its hash (record edited)")
        state.prev_hash = claimed
        state.records += 1
