"""docs/threat-model.md stays true: every threat and fault row names at least one test,
and every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "threat-model.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def rows() -> list[tuple[str, str]]:
    """(section, row) of every table row under "Threats…" and "Faults…"."""
    section, found = "", []
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("| ") and not line.startswith(("| Threat", "| Fault", "|---")) \
                and section.startswith(("Threats", "Faults")):
            found.append((section, line))
    return found


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")}


def test_every_row_names_a_test() -> None:
    found = rows()
    assert len(found) > 50
    missing = [row[:80] for _, row in found if not REFERENCE.search(row.rsplit("|", 2)[-2])]
    assert missing == []


def test_every_test_named_exists() -> None:
    wrong = []
    for _, row in rows():
        for file, name in REFERENCE.findall(row):
            path = REPO / file
            if not path.exists():
                wrong.append(f"{file}: no such file")
            elif name and name not in defined_tests(path):
                wrong.append(f"{file}::{name}: no such test")
            elif not defined_tests(path):
                wrong.append(f"{file}: holds no tests")
    assert wrong == []
