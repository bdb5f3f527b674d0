"""Shell-style globs (`*`, `?`, `[...]`) for policy matching, compiled once.

A pattern list is split into literal names (one set lookup) and real globs (one
combined regex), so matching costs the same for 1 or 50 patterns. Matching is
case-sensitive: model names, paths and agent names are.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

_WILD = re.compile(r"[*?\[]")


def is_glob(pattern: str) -> bool:
    return bool(_WILD.search(pattern))


@dataclass(frozen=True, slots=True)
class Globs:
    patterns: tuple[str, ...]
    _literals: frozenset[str] = field(init=False, repr=False, compare=False)
    _globs: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        globs = tuple(p for p in self.patterns if is_glob(p))
        object.__setattr__(self, "_literals",
                           frozenset(p for p in self.patterns if not is_glob(p)))
        object.__setattr__(self, "_globs", globs)
        object.__setattr__(self, "_regex", re.compile(
            "|".join(f"(?:{fnmatch.translate(p)})" for p in globs)) if globs else None)

    def __call__(self, value: str) -> bool:
        return value in self._literals or (
            self._regex is not None and self._regex.match(value) is not None)

    def covers(self, other: Globs) -> bool:
        """True when every value `other` matches is also matched here (conservative:
        False when it cannot tell)."""
        return all(self(name) for name in other._literals) and all(
            any(_covers(mine, theirs) for mine in self.patterns) for theirs in other._globs)


def _covers(general: str, specific: str) -> bool:
    if general == specific or general == "*":
        return True
    if not is_glob(specific):
        return fnmatch.fnmatchcase(specific, general)
    # `abc*` covers every pattern that starts with the literal `abc`
    prefix = general[:-1]
    return general.endswith("*") and not is_glob(prefix) and specific.startswith(prefix)
