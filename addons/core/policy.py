"""The policy file (version 1, minimal): pass-through hosts and where vendor keys live.

The full rule language arrives with the policy issue; this keeps its shape: a strict,
versioned wire format (YAML) parsed once into a frozen `Policy`, every problem reported
with file:line:column and what is allowed instead.
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from egressguard.core.secret import SecretLocation
from egressguard.core.vendors import Catalogue, catalogue, host_matches, normalize_host
from egressguard.core.yamlsource import ConfigError, Document, Problem, unknown_key_message

VERSION = 1
_TOP = ("version", "passthrough", "secrets")
_SECRETS = ("mount", "field", "path", "vendors", "teams", "agents")
_TEMPLATE_FIELDS = {"vendor", "team", "agent"}
_HOST = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


def _no_overrides() -> Any:
    return dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class SecretPaths:
    """Where each vendor's key lives in Vault KV v2; most specific wins:
    agent > team > vendor > default path. Templates may use {vendor} {team} {agent}."""

    mount: str = "secret"
    field: str = "api_key"
    path: str = "egressguard/vendors/{vendor}"
    vendors: MappingProxyType[str, str] = _no_overrides()
    teams: MappingProxyType[str, str] = _no_overrides()
    agents: MappingProxyType[str, str] = _no_overrides()

    def location_for(self, vendor: str, agent: str | None = None,
                     team: str | None = None) -> SecretLocation:
        template = (
            (agent is not None and self.agents.get(agent))
            or (team is not None and self.teams.get(team))
            or self.vendors.get(vendor)
            or self.path
        )
        path = template.format(vendor=vendor, team=team or "_", agent=agent or "_")
        return SecretLocation(self.mount, path, self.field)


@dataclass(frozen=True, slots=True)
class Policy:
    source: str
    passthrough: tuple[str, ...] = ()
    secrets: SecretPaths = SecretPaths()

    def is_passthrough(self, host: str) -> bool:
        host = normalize_host(host)
        return any(host_matches(p, host) for p in self.passthrough)


def load(path: Path, vendors: Catalogue | None = None) -> Policy:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"cannot read policy: {exc.strerror}")]) \
            from None
    return parse(text, str(path), vendors)


def parse(text: str, source: str, vendors: Catalogue | None = None) -> Policy:
    doc = Document(text, source)
    problems = list(doc.problems)
    policy = _build(doc, vendors or catalogue(), problems)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    return policy


def _build(doc: Document, vendors: Catalogue, problems: list[Problem]) -> Policy:
    data = doc.data
    if not isinstance(data, dict):
        problems.append(doc.where((), "a policy is a mapping with at least `version: 1`"))
        return Policy(doc.source)
    _check_keys(doc, data, (), _TOP, "the policy", problems)
    version = data.get("version")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        problems.append(doc.where(("version",), f"`version: {VERSION}` is required "
                                  f"(found {version!r})"))
    passthrough = _hosts(doc, data.get("passthrough", []), problems)
    secrets = _secrets(doc, data.get("secrets", {}), vendors, problems)
    return Policy(doc.source, passthrough, secrets)


def _check_keys(doc: Document, data: dict[str, Any], path: tuple[str, ...],
                allowed: tuple[str, ...], where: str, problems: list[Problem]) -> None:
    for key in data:
        if key not in allowed:
            problems.append(doc.where((*path, key), unknown_key_message(key, allowed, where)))


def _hosts(doc: Document, value: Any, problems: list[Problem]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(doc.where(("passthrough",), "`passthrough` is a list of host names"))
        return ()
    hosts = []
    for i, host in enumerate(value):
        if not isinstance(host, str) or not _HOST.match(normalize_host(host)):
            problems.append(doc.where(("passthrough", i), f"{host!r} is not a host name or "
                                      "`*.domain` pattern (no schemes, ports or paths)"))
            continue
        hosts.append(normalize_host(host))
    return tuple(hosts)


def _secrets(doc: Document, value: Any, vendors: Catalogue,
             problems: list[Problem]) -> SecretPaths:
    if not isinstance(value, dict):
        problems.append(doc.where(("secrets",), "`secrets` is a mapping"))
        return SecretPaths()
    _check_keys(doc, value, ("secrets",), _SECRETS, "secrets", problems)
    for key in ("mount", "field", "path"):
        if key in value:
            _template(doc, ("secrets", key), value[key], problems)
    maps: dict[str, MappingProxyType[str, str]] = {}
    for key in ("vendors", "teams", "agents"):
        entries = value.get(key, {})
        if not isinstance(entries, dict):
            problems.append(doc.where(("secrets", key), f"`secrets.{key}` maps a name to a "
                                      "path template"))
            entries = {}
        for name, template in entries.items():
            if key == "vendors" and name not in vendors.names:
                problems.append(doc.where(("secrets", key, name), unknown_key_message(
                    name, vendors.names, "secrets.vendors (the vendor catalogue)")))
            _template(doc, ("secrets", key, name), template, problems)
        maps[key] = MappingProxyType(dict(entries))
    base = {k: value[k] for k in ("mount", "field", "path") if isinstance(value.get(k), str)}
    return SecretPaths(**base, **maps)


def _template(doc: Document, path: tuple[str, ...], value: Any,
              problems: list[Problem]) -> None:
    if not isinstance(value, str) or not value.strip("/"):
        problems.append(doc.where(path, f"expected a non-empty string, found {value!r}"))
        return
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        problems.append(doc.where(path, f"bad template {value!r}: {exc}"))
        return
    if unknown := sorted(names - _TEMPLATE_FIELDS):
        problems.append(doc.where(path, f"template {value!r} uses {unknown}; only "
                                  "{vendor}, {team} and {agent} are known"))
