"""The vendor catalogue (`vendors.yaml`) as frozen data, and host -> vendor matching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


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


def parse_catalogue(data: dict) -> Catalogue:
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
        ))
    return Catalogue(tuple(vendors))


@cache
def catalogue() -> Catalogue:
    """The built-in catalogue, parsed once."""
    text = resources.files("egressguard.core").joinpath("vendors.yaml").read_text()
    return parse_catalogue(yaml.safe_load(text))
