"""`egressguard audit tail` and `audit verify` over journal files."""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

import orjson

from egressguard.backends.journal import journal_files, read_lines
from egressguard.core import chain

_COLUMNS = ("ts", "agent", "vendor", "method", "path", "model", "status", "decision",
            "reason")


def tail(journal: Path, lines: int, as_json: bool) -> int:
    if not journal_files(journal):
        print(f"egressguard: no journal files in {journal}", file=sys.stderr)
        return 1
    recent = deque(read_lines([journal]), maxlen=lines)
    if as_json:
        for _, _, raw in recent:
            sys.stdout.buffer.write(raw + b"\n")
        return 0
    rows = [[_cell(orjson.loads(raw).get(c)) for c in _COLUMNS] for _, _, raw in recent]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    for row in [list(_COLUMNS), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def verify(paths: list[Path]) -> int:
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"egressguard: no such file or directory: {', '.join(map(str, missing))}",
              file=sys.stderr)
        return 2
    state = chain.ChainState()
    breaks = list(chain.verify(read_lines(paths), state))
    for b in breaks:
        print(f"BROKEN {b}")
    if breaks:
        print(f"{len(breaks)} break(s) in {state.records} records: the journal has been "
              "altered or damaged at the lines above", file=sys.stderr)
        return 1
    if state.records == 0:
        print("egressguard: no records found", file=sys.stderr)
        return 1
    noun = "record" if state.records == 1 else "records"
    print(f"OK {state.records} {noun}, chain intact, last hash {state.prev_hash}")
    return 0
