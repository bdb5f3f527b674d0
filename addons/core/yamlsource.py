"""Strict YAML reading with positions: duplicate keys are errors, every value keeps
the file:line:column it came from so messages can point at it."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable
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


_SIZE = re.compile(r"^(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20,
               "GB": 10**9, "GiB": 2**30}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Reader:
    """Reads values out of a Document with the checks every configuration file needs,
    collecting problems at their file:line:column instead of stopping at the first."""

    SIZE, SIZE_UNITS = _SIZE, _SIZE_UNITS

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def problem(self, path: Path_, message: str) -> None:
        self.problems.append(self.doc.where(path, message))

    def keys(self, data: dict[str, Any], path: tuple[str | int, ...],
             allowed: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in allowed:
                self.problem((*path, key), unknown_key_message(key, allowed, where))

    def mapping(self, value: Any, path: tuple[str | int, ...], what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"{what} is a mapping, found {kind_of(value)}")
            return {}
        return value

    def strings(self, value: Any, path: tuple[str | int, ...], what: str,
                check: Callable[[str], str | None] | None = None) -> tuple[str, ...] | None:
        """A list of strings (a single string is a list of one)."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.problem(path, f"{what} is a non-empty list of strings, found {kind_of(value)}")
            return None
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.problem((*path, i), f"{what}: expected a string, found {kind_of(item)}")
            elif check is not None and (why := check(item)):
                self.problem((*path, i), why)
            else:
                out.append(item)
        return tuple(out)

    def boolean(self, data: dict[str, Any], path: tuple[str | int, ...], default: bool) -> bool:
        value = data.get(path[-1], default)
        if type(value) is not bool:
            self.problem(path, f"`{path[-1]}` is true or false, found {value!r}")
            return default
        return value

    def choice(self, data: dict[str, Any], path: tuple[str | int, ...],
               allowed: tuple[str, ...], default: str) -> str:
        value = data.get(path[-1], default)
        if value not in allowed:
            self.problem(path, f"`{path[-1]}` is one of {', '.join(allowed)}; found {value!r}")
            return default
        return str(value)

    def positive_int(self, value: Any, path: tuple[str | int, ...], what: str) -> int | None:
        if type(value) is not int or value <= 0:
            self.problem(path, f"{what} is a whole number above 0, found {value!r}")
            return None
        return value

    def size(self, value: Any, path: tuple[str | int, ...]) -> int | None:
        if type(value) is int and value > 0:
            return value
        m = _SIZE.match(value.strip()) if isinstance(value, str) else None
        if not m or int(m.group(1)) == 0:
            self.problem(path, f"a size is bytes or a number with B, KB, KiB, MB, MiB, GB or "
                         f"GiB (e.g. 256KiB), above 0; found {value!r}")
            return None
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]

    def duration(self, value: Any, path: Path_) -> float | None:
        """Seconds, from a number or a number with ms, s, m, h or d (e.g. 1.5s, 10m)."""
        if type(value) in (int, float) and value > 0:
            return float(value)
        m = _DURATION.match(value.strip()) if isinstance(value, str) else None
        if not m or float(m.group(1)) == 0:
            self.problem(path, f"a duration is seconds or a number with ms, s, m, h or d "
                         f"(e.g. 1.5s, 10m), above 0; found {value!r}")
            return None
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off as booleans
        return f"{str(value).lower()} (write yes/no/on/off in quotes to mean the word)"
    return {dict: "a mapping", list: "a list", str: f"the text {value!r}"}.get(
        type(value), repr(value))

