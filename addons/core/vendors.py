"""The vendor catalogue (`vendors.yaml`) as frozen data, and host -> vendor matching."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from egressguard.core.yamlsource import ConfigError, Document, Path_, Problem, unknown_key_message

# The request shapes a vendor can speak (`apis.py` knows each one's paths and bodies);
# every OpenAI-compatible vendor speaks `openai`.
APIS = ("openai", "azure_openai", "anthropic", "google", "cohere")
ERROR_SHAPES = ("openai", "anthropic", "google", "cohere")
_KEYS = ("hosts", "inject", "credentials", "key_patterns", "error_shape", "model_in_path",
         "api", "models")
_REQUIRED = ("hosts", "inject", "error_shape", "api", "models")


@dataclass(frozen=True, slots=True)
class Injection:
    header: str
    prefix: str = ""

    def value(self, key: str) -> str:
        return self.prefix + key


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str
    hosts: tuple[str, ...]
    inject: Injection
    credential_headers: frozenset[str]  # lower-case names stripped from every request
    credential_query: frozenset[str]
    key_patterns: tuple[re.Pattern[str], ...]
    error_shape: str
    model_in_path: re.Pattern[str] | None = None
    api: str = "openai"  # one of APIS
    # models the vendor is known to serve, only to warn about policy globs that match
    # none of them; None: any name (Azure deployments are named by the customer)
    models: tuple[str, ...] | None = None

    def serves(self, host: str) -> bool:
        return any(host_matches(pattern, host) for pattern in self.hosts)


def normalize_host(host: str) -> str:
    """Lower-case, without the trailing dot of a fully-qualified name."""
    return host.lower().rstrip(".")


def host_matches(pattern: str, host: str) -> bool:
    """`pattern` is an exact name or `*.suffix` (at least one label before the suffix)."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class Catalogue:
    """All known vendors; built once, read on every request."""

    def __init__(self, vendors: tuple[Vendor, ...]) -> None:
        self.vendors = vendors
        self.names = tuple(v.name for v in vendors)
        # exact names answer with one dict lookup; first match wins on overlaps
        self._exact = {h: v for v in reversed(vendors) for h in v.hosts if not h.startswith("*.")}

    def __iter__(self) -> Iterator[Vendor]:
        return iter(self.vendors)

    def by_name(self, name: str) -> Vendor | None:
        return next((v for v in self.vendors if v.name == name), None)

    def for_host(self, host: str) -> Vendor | None:
        host = normalize_host(host)
        vendor = self._exact.get(host)
        if vendor is not None:
            return vendor
        return next((v for v in self.vendors if v.serves(host)), None)

    def looks_like_real_key(self, value: str) -> str | None:
        """Name of the vendor whose key format `value` matches, if any; where several
        match (OpenAI's `sk-` covers `sk-ant-`), the longest literal prefix wins."""
        best: tuple[int, int] | None = None  # (prefix length, -catalogue position)
        for position, vendor in enumerate(self.vendors):
            for pattern in vendor.key_patterns:
                if pattern.match(value):
                    score = (_literal_prefix_length(pattern.pattern), -position)
                    best = max(best, score) if best else score
        return self.vendors[-best[1]].name if best else None


def _literal_prefix_length(pattern: str) -> int:
    """How many literal characters a `^...` pattern starts with."""
    m = re.match(r"\^([A-Za-z0-9_-]*)", pattern)
    return len(m.group(1)) if m else 0


def load_catalogue(text: str, source: str) -> Catalogue:
    """The catalogue in YAML `text`; ConfigError naming file:line:column of each problem."""
    doc = Document(text, source)
    problems = doc.problems + [doc.where(path, msg) for path, msg in _problems(doc.data)]
    if problems:
        raise ConfigError(problems)
    return _build(doc.data)


def parse_catalogue(data: Any) -> Catalogue:
    """The catalogue in already-parsed `data`; ConfigError listing every problem."""
    if problems := [Problem("<catalogue>", 1, 1, msg) for _, msg in _problems(data)]:
        raise ConfigError(problems)
    return _build(data)


def _problems(data: Any) -> Iterator[tuple[Path_, str]]:
    vendors = data.get("vendors") if isinstance(data, dict) else None
    if not isinstance(vendors, dict) or not vendors:
        yield (), "the catalogue needs a `vendors:` mapping of vendor names to specs"
        return
    for name, spec in vendors.items():
        at: Path_ = ("vendors", name)
        if not isinstance(spec, dict):
            yield at, f"vendor {name!r} must be a mapping of {', '.join(_REQUIRED)}"
            continue
        yield from (((*at, key), unknown_key_message(key, _KEYS, f"vendor {name!r}"))
                    for key in spec if key not in _KEYS)
        yield from ((at, f"vendor {name!r} has no `{key}`")
                    for key in _REQUIRED if key not in spec)
        for key, allowed in (("api", APIS), ("error_shape", ERROR_SHAPES)):
            if key in spec and spec[key] not in allowed:
                yield (*at, key), _not_one_of(f"vendor {name!r}: {key}", spec[key], allowed)
        if "models" in spec and (problem := _models_problem(spec["models"])):
            yield (*at, "models"), f"vendor {name!r}: models {problem}"


def _not_one_of(what: str, value: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{what} {value!r} is not one of {', '.join(allowed)}{hint}"


def _models_problem(models: Any) -> str | None:
    if models == "any":
        return None
    if not isinstance(models, list) or not models or not all(
            isinstance(m, str) and m for m in models):
        return "must be a list of model names, or `any` where the customer names them"
    twice = next((m for i, m in enumerate(models) if m in models[:i]), None)
    return f"lists {twice!r} twice" if twice is not None else None


def _build(data: dict[str, Any]) -> Catalogue:
    universal = data.get("universal_credentials", {})
    headers = frozenset(h.lower() for h in universal.get("headers", []))
    query = frozenset(universal.get("query", []))
    vendors = []
    for name, spec in data["vendors"].items():
        inject = Injection(**spec["inject"])
        creds = spec.get("credentials", {})
        vendors.append(Vendor(
            name=name,
            hosts=tuple(normalize_host(h) for h in spec["hosts"]),
            inject=inject,
            credential_headers=headers | {inject.header.lower()}
            | {h.lower() for h in creds.get("headers", [])},
            credential_query=query | frozenset(creds.get("query", [])),
            key_patterns=tuple(re.compile(p) for p in spec.get("key_patterns", [])),
            error_shape=spec["error_shape"],
            model_in_path=re.compile(spec["model_in_path"]) if "model_in_path" in spec else None,
            api=spec["api"],
            models=None if spec["models"] == "any" else tuple(spec["models"]),
        ))
    return Catalogue(tuple(vendors))


@cache
def catalogue() -> Catalogue:
    """The built-in catalogue, parsed once."""
    text = resources.files("egressguard.core").joinpath("vendors.yaml").read_text()
    return load_catalogue(text, "vendors.yaml")
