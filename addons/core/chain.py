"""Hash chaining of audit records, and verification of a chained journal.

Each record carries `seq` (1 for the first record, then one more each), `prev_hash`
(the previous record's `hash`, or GENESIS for the first) and `hash` = SHA-256 of the
record's canonical JSON (sorted keys) without the `hash` field. Checkpoint records are
signed besides (`checkpoints`). Editing, deleting, inserting or reordering any record
breaks the chain from that point on; a journal file cut short loses its closing
checkpoint or ends in a partial line.

`Verifier` reads a journal line by line (any number of files, in order) and reports
each problem once, named by kind — modified, deleted, inserted, reordered, truncated,
unreadable, signature — with the record's id, seq, file and line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from egressguard.core import checkpoints

GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def seal(record: dict[str, Any], prev_hash: str, seq: int,
         key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """`record` with its chain fields set (mutates and returns it); a checkpoint record
    is signed with `key` first, so its hash covers the signature."""
    record["seq"] = seq
    record["prev_hash"] = prev_hash
    if key is not None and record.get("checkpoint") is not None:
        checkpoints.sign(record, key)
    record["hash"] = record_hash(record)
    return record


# -- verification ---------------------------------------------------------------------------

MODIFIED, DELETED, INSERTED, REORDERED = "modified", "deleted", "inserted", "reordered"
TRUNCATED, UNREADABLE, SIGNATURE = "truncated", "unreadable", "signature"


@dataclass(slots=True)
class Problem:
    """One thing wrong with a journal, where it shows."""

    kind: str
    source: str
    line: int
    message: str
    id: str | None = None
    seq: int | None = None
    missing: set[int] = field(default_factory=set)  # DELETED: the seqs not seen (yet)

    def __str__(self) -> str:
        what = ", ".join(x for x in (f"id {self.id}" if self.id else "",
                                     f"seq {self.seq}" if self.seq else "") if x)
        return f"{self.source}:{self.line}{f' ({what})' if what else ''}: {self.kind}: " \
               f"{self.message}"


@dataclass(slots=True)
class Line:
    """One line of a journal file: `complete` is False for a last line with no newline
    (a write cut off)."""

    source: str
    number: int
    raw: bytes
    complete: bool = True
    segment: int | None = None  # the file's segment number, when it has one
    last_of_file: bool = False
    last_file: bool = False


@dataclass(slots=True)
class Verifier:
    """Checks a journal's lines in order; `public_key` also checks checkpoint signatures.

    Feed every line to `line`, then call `finish`; `problems` holds what was found,
    first problem first."""

    public_key: Ed25519PublicKey | None = None
    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    checkpoints: int = 0
    signatures: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    last_hash: str = GENESIS
    _checkpointed: int = 0  # seq of the last checkpoint
    _ids: dict[str, int] = field(default_factory=dict)  # id -> seq, to name a copy
    _segment: int | None = None
    _last_kind: str | None = None
    _previous: tuple[dict[str, Any], Line] | None = None  # the last record in the chain
    _twin: tuple[dict[str, Any], Line] | None = None  # a second record with its seq
    _unclosed: list[Problem] = field(default_factory=list)  # files without a last checkpoint

    def line(self, line: Line) -> None:
        if line.segment is not None:
            self._segment_start(line)
        if not line.complete:
            self._add(TRUNCATED, line, "the file ends in a partial record (a write cut "
                      "off, or the file was cut short)")
            return
        try:
            record = orjson.loads(line.raw)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("hash"), str) \
                or not isinstance(record.get("seq"), int):
            self._add(UNREADABLE, line, "not a chained audit record (unparseable, or no "
                      "hash or seq)")
            return
        self._record(record, line)

    def finish(self) -> list[Problem]:
        if self._twin is not None:  # nothing came after it to tell: the later is the odd one
            twin, self._twin = self._twin, None
            self._add(INSERTED, twin[1], f"a record inserted: seq {twin[0]['seq']} appears "
                      "twice", twin[0])
        if self.checkpoints:  # a journal that checkpoints closes every file with one
            self.problems += self._unclosed
        self._unclosed = []
        self.problems.sort(key=lambda p: (p.source, p.line))
        return self.problems

    @property
    def intact(self) -> bool:
        return not self.problems

    # -- per record ---------------------------------------------------------------------
    def _record(self, record: dict[str, Any], line: Line) -> None:
        seq, rid = record["seq"], record.get("id") if isinstance(record.get("id"), str) \
            else None
        self.records += 1
        if record_hash(record) != record["hash"]:
            self._add(MODIFIED, line, "the content does not match its hash: the record was "
                      "edited", record)
        self._link(record, line)
        if record.get("kind") == "checkpoint":
            self._checkpoint(record, line)
        if rid is not None:
            self._ids.setdefault(rid, seq)
        self._last_kind = record.get("kind")
        if line.segment is not None and line.last_of_file and not line.last_file \
                and self._last_kind != "checkpoint":  # a problem if the journal checkpoints
            self._unclosed.append(Problem(
                TRUNCATED, line.source, line.number, "the file does not end with its closing "
                "checkpoint: records after this one were cut off", rid, seq))

    def _link(self, record: dict[str, Any], line: Line) -> None:
        seq, prev = record["seq"], record.get("prev_hash")
        if self._twin is not None:
            self._settle_twin(record)
        if self.first_seq is None:  # where the chain starts: records before it removed
            self.first_seq = seq
            if seq == 1 and prev != GENESIS:
                self._add(MODIFIED, line, "the first record does not start the chain",
                          record)
            elif seq > 1 and line.segment == 1:
                self._add(DELETED, line, f"the journal starts at seq {seq}: "
                          f"{_count(set(range(1, seq)))} missing before it", record)
        else:
            expected = self.last_seq + 1
            if seq > expected:
                missing = set(range(expected, seq))
                self._add(DELETED, line, f"{_count(missing)} missing before this one (seq "
                          f"{_span(missing)})", record, missing)
            elif seq == self.last_seq and self._previous is not None:
                self._twin = (record, line)  # which of the two is genuine: the next tells
                return
            elif seq < expected:
                self._out_of_place(record, line)
                return  # the chain goes on from the record before it
            elif prev != self.last_hash and self._previous is not None:
                self._add(MODIFIED, self._previous[1], f"this record was replaced or edited "
                          f"and re-hashed: the next (seq {seq}) does not link to it",
                          self._previous[0])
        self.last_seq, self.last_hash = seq, record["hash"]
        self._previous = (record, line)

    def _settle_twin(self, record: dict[str, Any]) -> None:
        """Two records with one seq: the one the next record links to is genuine."""
        assert self._twin is not None and self._previous is not None
        twin, self._twin = self._twin, None
        if record.get("prev_hash") == twin[0]["hash"]:  # the earlier one was inserted
            inserted, self._previous = self._previous, twin
            self.last_hash = twin[0]["hash"]
        else:
            inserted = twin
        self._add(INSERTED, inserted[1], f"a record inserted: seq {inserted[0]['seq']} "
                  "appears twice and the chain goes on from the other one", inserted[0])

    def _out_of_place(self, record: dict[str, Any], line: Line) -> None:
        seq, rid = record["seq"], record.get("id")
        for gap in self.problems:
            if gap.kind == DELETED and seq in gap.missing:  # not deleted: moved
                gap.missing.discard(seq)
                gap.kind = REORDERED
                gap.message = f"records are out of order: seq {seq} (id {rid}) comes later, " \
                              f"at {line.source}:{line.number}"
                return
        if rid in self._ids:
            self._add(INSERTED, line, f"a copy of the record seq {self._ids[rid]} inserted "
                      f"after seq {self.last_seq}", record)
        else:
            self._add(INSERTED, line, f"seq {seq} after seq {self.last_seq}: a record "
                      "inserted (or moved back)", record)

    def _checkpoint(self, record: dict[str, Any], line: Line) -> None:
        self.checkpoints += 1
        cp = record.get("checkpoint")
        if not isinstance(cp, dict):
            self._add(UNREADABLE, line, "a checkpoint record without its checkpoint", record)
            return
        if self._checkpointed and (cp.get("first_seq") != self._checkpointed + 1
                                   or cp.get("records") != record["seq"] - cp["first_seq"]):
            self._add(MODIFIED, line, f"the checkpoint claims seq {cp.get('first_seq')} and "
                      f"{cp.get('records')} records; the chain since the last checkpoint "
                      f"(seq {self._checkpointed}) says otherwise", record)
        if self._segment is not None and cp.get("segment") != self._segment:
            self._add(MODIFIED, line, f"a checkpoint of journal file {cp.get('segment')} "
                      f"found in file {self._segment}", record)
        if self.public_key is not None:
            if checkpoints.signature_ok(record, self.public_key):
                self.signatures += 1
            else:
                self._add(SIGNATURE, line, "the checkpoint's signature does not verify with "
                          "the given public key: the records it covers were rewritten, or "
                          f"another key signed it (key_id {cp.get('key_id')})", record)
        self._checkpointed = record["seq"]

    def _segment_start(self, line: Line) -> None:
        if line.number != 1 or line.segment is None:
            return
        if self._segment is not None and line.segment != self._segment + 1:
            gone = set(range(self._segment + 1, line.segment))
            self._add(DELETED, line, f"journal file(s) {_span(gone)} missing before this one")
        self._segment = line.segment

    def _add(self, kind: str, line: Line, message: str, record: dict[str, Any] | None = None,
             missing: set[int] | None = None) -> None:
        rid = record.get("id") if record else None
        seq = record.get("seq") if record else None
        self.problems.append(Problem(kind, line.source, line.number, message,
                                     rid if isinstance(rid, str) else None,
                                     seq if isinstance(seq, int) else None, missing or set()))


def verify(lines: Iterable[Line], public_key: Ed25519PublicKey | None = None) -> Verifier:
    """A Verifier fed `lines`: its `problems`, counts, and where the chain ends."""
    verifier = Verifier(public_key)
    for line in lines:
        verifier.line(line)
    verifier.finish()
    return verifier


def _count(seqs: set[int]) -> str:
    return "1 record" if len(seqs) == 1 else f"{len(seqs)} records"


def _span(numbers: set[int]) -> str:
    low, high = min(numbers), max(numbers)
    return str(low) if low == high else f"{low}-{high}"
