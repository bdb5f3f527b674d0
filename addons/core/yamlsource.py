"""Strict YAML reading with positions: duplicate keys are errors, every value keeps
the file:line:column it came from so messages can point at it."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]
# libyaml's parser when PyYAML was built with it: several times faster on big policies
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int  # 1-based
    column: int  # 1-based
    message: str
    severity: str = "error"  # or "warning": reported, but the file still loads

    def __str__(self) -> str:
        kind = "warning: " if self.severity == "warning" else ""
        return f"{self.source}:{self.line}:{self.column}: {kind}{self.message}"


class ConfigError(Exception):
    """One or more problems in a configuration file."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class Document:
    """Plain data from a YAML file, plus where each value is (`where(path)`)."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self._marks: dict[Path_, yaml.Mark] = {}
        try:
            node = yaml.compose(text, Loader=_LOADER)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([Problem(source, mark.line + 1 if mark else 1,
                                       mark.column + 1 if mark else 1,
                                       f"not valid YAML: {problem}")]) from None
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")  # one constructor for every scalar
        self.data: Any = self._convert(node, ()) if node is not None else None

    def where(self, path: Path_, message: str, severity: str = "error") -> Problem:
        """A problem located at `path` (or its closest known parent)."""
        while path and path not in self._marks:
            path = path[:-1]
        mark = self._marks.get(path)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Problem(self.source, line, col, message, severity)

    def _convert(self, node: yaml.Node, path: Path_) -> Any:
        self._marks[path] = node.start_mark
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problems.append(Problem(
                        self.source, key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1, "keys must be plain names, not "
                        "lists or mappings"))
                    continue
                key = key_node.value
                if key in out:
                    first = self._marks[(*path, key)]
                    self.problems.append(Problem(
                        self.source, key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        f"duplicate key {key!r} (first defined on line {first.line + 1})"))
                    continue
                out[key] = self._convert(value_node, (*path, key))
                self._marks[(*path, key)] = key_node.start_mark
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True) \
            if node.tag != "tag:yaml.org,2002:str" else node.value


def read_source(path: Path, what: str) -> tuple[str, str]:
    """(text, sha256 of the file's bytes) of a UTF-8 file; ConfigError if unreadable.

    The digest is of the bytes as stored, so it is what `sha256sum` prints, CRLF
    line ends included."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"cannot read {what}: {exc.strerror}")]) \
            from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError([Problem(str(path), line, column, f"{what} is not UTF-8 text "
                                   f"(byte 0x{raw[exc.start]:02x})")]) from None
    return text, hashlib.sha256(raw).hexdigest()


def unknown_key_message(key: str, allowed: list[str] | tuple[str, ...], where: str) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} in {where}{hint} (allowed: {', '.join(allowed)})"
