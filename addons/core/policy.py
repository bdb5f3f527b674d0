"""The policy file: agents, teams, rules, limits, pass-through hosts and key locations.

A strict, versioned YAML format (documented in policies/README.md, JSON Schema in
policies/policy.schema.json) parsed once into a frozen `Policy`. Every problem is
reported with file:line:column, what was found and what is allowed; problems that
would make the policy do something other than what it says are errors (the policy
does not load), doubtful but harmless things are warnings (see `policylint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from egressguard.core import entities, netguard, policylint
from egressguard.core.apis import ENDPOINTS
from egressguard.core.globs import Globs
from egressguard.core.limits import LIMIT_NAMES, LimitSpec, PriceTable, load_prices
from egressguard.core.redact.detect import Detector
from egressguard.core.resilience import (
    PICKS,
    CachePlan,
    Downgrade,
    Fallback,
    KeyPool,
    Objective,
    Resilience,
    Retry,
    Route,
)
from egressguard.core.rules import (
    UNNAMED,
    Ask,
    Decision,
    Evaluator,
    Match,
    MaxTokens,
    Rule,
    Subject,
)
from egressguard.core.secret import SecretLocation
from egressguard.core.vendors import Catalogue, catalogue, host_matches, normalize_host
from egressguard.core.yamlsource import (
    ConfigError,
    Document,
    Problem,
    Reader,
    kind_of,
    read_source,
    unknown_key_message,
)

VERSION = 1
_TOP = ("version", "agents", "teams", "rules", "passthrough", "secrets", "prices",
        "on_limits_unavailable", "detectors")
_AGENT = ("team", "labels", "limits", "description")
_TEAM = ("labels", "limits", "description")
_RULE = ("name", "description", "match", "action", "reason", "models", "endpoints",
         "max_tokens", "tools", "streaming", "max_request_bytes", "redact", "secret",
         "key_pool", "limits", "route", "retry", "fallback", "cache")
_MATCH = ("agents", "teams", "labels", "vendors", "hosts", "paths", "models")
_SECRETS = ("mount", "field", "path", "vendors", "teams", "agents")
_PASSTHROUGH = ("host", "ports")
DEFAULT_PORTS = frozenset({443})
_TEMPLATE_FIELDS = {"vendor", "team", "agent"}
_HOST = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")

def _no_overrides() -> Any:
    return dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class SecretPaths:
    """Where each vendor's key lives in Vault KV v2; most specific wins:
    rule > agent > team > vendor > default path. Templates may use {vendor} {team}
    {agent}."""

    mount: str = "secret"
    field: str = "api_key"
    path: str = "egressguard/vendors/{vendor}"
    vendors: MappingProxyType[str, str] = _no_overrides()
    teams: MappingProxyType[str, str] = _no_overrides()
    agents: MappingProxyType[str, str] = _no_overrides()

    def location_for(self, vendor: str, agent: str | None = None, team: str | None = None,
                     template: str | None = None) -> SecretLocation:
        template = (
            template
            or (agent is not None and self.agents.get(agent))
            or (team is not None and self.teams.get(team))
            or self.vendors.get(vendor)
            or self.path
        )
        path = template.format(vendor=vendor, team=team or "_", agent=agent or "_")
        return SecretLocation(self.mount, path, self.field)


@dataclass(frozen=True)
class Policy:
    source: str
    digest: str = ""  # sha256 of the file, so records say which policy decided
    passthrough: tuple[str, ...] = ()
    # pass-through pattern -> the ports agents may reach it on (443 unless `ports:`)
    passthrough_ports: Mapping[str, frozenset[int]] = _no_overrides()
    secrets: SecretPaths = SecretPaths()
    agents: Mapping[str, Subject] = _no_overrides()
    teams: Mapping[str, Subject] = _no_overrides()
    rules: tuple[Rule, ...] = ()
    prices: PriceTable | None = None
    on_limits_unavailable: str = "deny"  # or "allow": what to do when Redis is down
    detector: Detector | None = None  # the built-in rules plus the policy's `detectors`
    warnings: tuple[Problem, ...] = ()
    evaluator: Evaluator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluator", Evaluator(self.rules, self.agents, self.teams))

    def decide(self, ask: Ask, explain: bool = False) -> Decision:
        return self.evaluator.decide(ask, explain)

    def is_passthrough(self, host: str) -> bool:
        host = normalize_host(host)
        return any(host_matches(p, host) for p in self.passthrough)

    def allowed_ports(self, host: str) -> frozenset[int]:
        """The ports of every pass-through entry naming `host` (443 for a vendor host)."""
        host = normalize_host(host)
        ports = [ports for p, ports in self.passthrough_ports.items() if host_matches(p, host)]
        return frozenset[int]().union(*ports) if ports else DEFAULT_PORTS

    def limit_scopes(self, decision: Decision) -> list[tuple[str, LimitSpec]]:
        """(counter key, limits) for every limit that applies to an allowed request."""
        agent, team, rule = decision.agent or UNNAMED, decision.team or UNNAMED, decision.rule
        scopes = []
        if rule is not None:
            for scope, who in (("agent", agent), ("team", team)):
                if (spec := rule.limits.get(scope)) is not None:
                    scopes.append((f"rule:{rule.name}/{scope}:{who}", spec))
        if (a := self.agents.get(agent)) is not None and a.limits is not None:
            scopes.append((f"agent:{agent}", a.limits))
        if (t := self.teams.get(team)) is not None and t.limits is not None:
            scopes.append((f"team:{team}", t.limits))
        return scopes


def load(path: Path, vendors: Catalogue | None = None) -> Policy:
    text, digest = read_source(path, "policy")
    return parse(text, str(path), vendors, base=path.parent, digest=digest)


def parse(text: str, source: str, vendors: Catalogue | None = None,
          base: Path | None = None, digest: str | None = None) -> Policy:
    """The policy in `text`; ConfigError listing every error (warnings ride along on
    the policy). `base` is where relative file names (the price table) start."""
    doc = Document(text, source)
    reader = _Reader(doc, vendors or catalogue(), base or Path.cwd())
    policy = reader.policy(digest or hashlib.sha256(text.encode()).hexdigest())
    # lint the parts that parsed even when others did not: every problem at once
    problems = [*doc.problems, *reader.problems,
                *policylint.check(policy, reader.vendors, reader.rule_paths, doc)]
    errors = sorted((p for p in problems if p.severity == "error"),
                    key=lambda p: (p.line, p.column))
    if errors:
        raise ConfigError(errors)
    warnings = tuple(sorted(problems, key=lambda p: (p.line, p.column)))
    return dataclasses.replace(policy, warnings=warnings) if warnings else policy


class _Reader(Reader):
    """Turns the YAML document into a Policy, collecting problems as it goes."""

    def __init__(self, doc: Document, vendors: Catalogue, base: Path) -> None:
        super().__init__(doc)
        self.vendors = vendors
        self.base = base
        self.rule_paths: dict[str, tuple[str | int, ...]] = {}  # rule name -> YAML path

    def policy(self, digest: str) -> Policy:
        data = self.doc.data
        if not isinstance(data, dict):
            self.problem((), "a policy is a mapping with at least `version: 1`")
            return Policy(self.doc.source, digest)
        self.keys(data, (), _TOP, "the policy")
        version = data.get("version")
        if type(version) is not int or version != VERSION:  # not True, not 1.0
            self.problem(("version",), f"`version: {VERSION}` is required (found {version!r})")
        teams = self.subjects(data, "teams", _TEAM)
        agents = self.subjects(data, "agents", _AGENT)
        passthrough = self.passthrough(data.get("passthrough", []))
        return Policy(
            self.doc.source, digest,
            passthrough=tuple(passthrough),
            passthrough_ports=MappingProxyType(passthrough),
            secrets=self.secrets(data.get("secrets", {})),
            agents=agents, teams=teams,
            rules=self.rules(data.get("rules", [])),
            prices=self.prices(data.get("prices")),
            on_limits_unavailable=self.choice(
                data, ("on_limits_unavailable",), ("deny", "allow"), "deny"),
            detector=self.detectors(data.get("detectors")),
        )

    def globs(self, data: dict[str, Any], path: tuple[str | int, ...], key: str,
              what: str) -> Globs | None:
        if key not in data:
            return None
        patterns = self.strings(data[key], (*path, key), what)
        return Globs(patterns) if patterns else None

    # -- sections ----------------------------------------------------------------------
    def passthrough(self, value: Any) -> dict[str, frozenset[int]]:
        """Pattern -> allowed ports, in file order (a host listed twice: both entries' ports)."""
        if not isinstance(value, list):
            self.problem(("passthrough",), "`passthrough` is a list of host names")
            return {}
        hosts: dict[str, frozenset[int]] = {}
        for i, entry in enumerate(value):
            path: tuple[str | int, ...] = ("passthrough", i)
            host, ports = entry, DEFAULT_PORTS
            if isinstance(entry, dict):
                self.keys(entry, path, _PASSTHROUGH, "a pass-through entry")
                if "host" not in entry:
                    self.problem(path, "a pass-through entry needs `host:` (and may have "
                                 "`ports:`)")
                    continue
                host, path = entry["host"], (*path, "host")
                if "ports" in entry:
                    ports = self.ports(entry["ports"], ("passthrough", i, "ports")) or ports
            if (name := self.host(host, path)) is not None:
                hosts[name] = hosts.get(name, frozenset[int]()) | ports
        return hosts

    def host(self, host: Any, path: tuple[str | int, ...]) -> str | None:
        if not isinstance(host, str) or not _HOST.match(normalize_host(host)):
            self.problem(path, f"{host!r} is not a host name or "
                         "`*.domain` pattern (no schemes, ports or paths)")
            return None
        if netguard.ip_literal(host) is not None:
            self.problem(path, f"{host!r} is an IP address; egressguard refuses IP addresses "
                         "whatever the policy says: name the host instead")
            return None
        return normalize_host(host)

    def ports(self, value: Any, path: tuple[str | int, ...]) -> frozenset[int] | None:
        ports = value if isinstance(value, list) else [value]
        bad = [p for p in ports if type(p) is not int or not 0 < p < 65536]
        if not ports or bad:
            shown = value if not isinstance(value, list) or not ports else bad[0]
            self.problem(path, "`ports` is a list of TCP port numbers 1-65535 (e.g. "
                         f"[443, 8443]), found {shown!r}")
            return None
        return frozenset(ports)

    def subjects(self, data: dict[str, Any], section: str,
                 allowed: tuple[str, ...]) -> MappingProxyType[str, Subject]:
        out = {}
        what = "an agent" if section == "agents" else "a team"
        for name, spec in self.mapping(data.get(section), (section,),
                                       f"`{section}`").items():
            path = (section, name)
            if not _NAME.match(str(name)):
                self.problem(path, f"{name!r} is not a valid name (letters, digits, . _ @ -)")
                continue
            spec = self.mapping(spec, path, f"{what} entry") if spec is not None else {}
            self.keys(spec, path, allowed, f"{what} ({section}.{name})")
            labels = self.strings(spec["labels"], (*path, "labels"), "labels") \
                if "labels" in spec else ()
            team = spec.get("team")
            if team is not None and not isinstance(team, str):
                self.problem((*path, "team"), f"`team` is a team name, found {kind_of(team)}")
                team = None
            limits = self.limits(spec["limits"], (*path, "limits")) if "limits" in spec else None
            out[name] = Subject(name, frozenset(labels or ()), team, limits)
        return MappingProxyType(out)

    def limits(self, value: Any, path: tuple[str | int, ...]) -> LimitSpec | None:
        spec = self.mapping(value, path, "`limits`")
        self.keys(spec, path, LIMIT_NAMES, "limits")
        values: dict[str, float | int] = {}
        for name in LIMIT_NAMES:
            if name not in spec:
                continue
            v = spec[name]
            spend = name.startswith("spend")
            ok = (type(v) in (int, float) if spend else type(v) is int) and v > 0
            if not ok:
                self.problem((*path, name), f"`{name}` is {'an amount in USD' if spend else 'a whole number'} above 0, found {v!r} (to refuse everything, write a rule with `action: deny`)")  # noqa: E501
                continue
            values[name] = v
        return LimitSpec(**values) if values else None

    def rules(self, value: Any) -> tuple[Rule, ...]:
        if not isinstance(value, list):
            self.problem(("rules",), f"`rules` is a list of rules, found {kind_of(value)}")
            return ()
        rules = []
        for i, spec in enumerate(value):
            path: tuple[str | int, ...] = ("rules", i)
            if not isinstance(spec, dict):
                self.problem(path, "a rule is a mapping with at least `name`, found "
                             f"{kind_of(spec)}")
                continue
            rule = self.rule(spec, path)
            if rule is not None:
                if rule.name in self.rule_paths:
                    first = self.doc.where(self.rule_paths[rule.name], "").line
                    self.problem((*path, "name"), f"rule name {rule.name!r} is used twice "
                                 f"(first on line {first}); names must be unique")
                    continue
                self.rule_paths[rule.name] = path
                rules.append(rule)
        return tuple(rules)

    def rule(self, spec: dict[str, Any], path: tuple[str | int, ...]) -> Rule | None:
        name = spec.get("name")
        where = f"rule {name!r}" if isinstance(name, str) else f"rules[{path[-1]}]"
        self.keys(spec, path, _RULE, where)
        if not isinstance(name, str) or not _NAME.match(name):
            self.problem((*path, "name") if "name" in spec else path,
                         f"every rule needs a `name` (letters, digits, . _ @ -), found "
                         f"{kind_of(name)}")
            return None
        match = self.match(spec.get("match"), (*path, "match"))
        endpoints = None
        if "endpoints" in spec:
            endpoints = frozenset(self.strings(
                spec["endpoints"], (*path, "endpoints"), "endpoints",
                lambda e: None if e in ENDPOINTS else unknown_key_message(
                    e, ENDPOINTS, "endpoints").replace("unknown key", "unknown endpoint"))
                or ())
        reason = spec.get("reason")
        if reason is not None and not isinstance(reason, str):
            self.problem((*path, "reason"), f"`reason` is text, found {kind_of(reason)}")
            reason = None
        secret = spec.get("secret")
        if secret is not None and not self.template((*path, "secret"), secret):
            secret = None
        pool = self.key_pool(spec["key_pool"], (*path, "key_pool")) if "key_pool" in spec \
            else None
        return Rule(
            name=name, match=match,
            action=self.choice(spec, (*path, "action"), ("allow", "deny"), "allow"),
            reason=reason,
            models=self.globs(spec, path, "models", "models"),
            endpoints=endpoints,
            max_tokens=self.max_tokens(spec["max_tokens"], (*path, "max_tokens"))
            if "max_tokens" in spec else None,
            tools=self.tools(spec["tools"], (*path, "tools")) if "tools" in spec else "allow",
            streaming=self.boolean(spec, (*path, "streaming"), True),
            max_request_bytes=self.size(spec["max_request_bytes"], (*path, "max_request_bytes"))
            if "max_request_bytes" in spec else None,
            redact=(redact := self.redact(spec["redact"], (*path, "redact"))
                    if "redact" in spec else MappingProxyType({})),
            plan=(plan := MappingProxyType(entities.expand(dict(redact)))),
            answers=MappingProxyType(entities.answer_plan(dict(plan))),
            secret=secret, key_pool=pool.keys if pool else (),
            limits=self.rule_limits(spec["limits"], (*path, "limits")) if "limits" in spec
            else MappingProxyType({}),
            route=self.route(spec["route"], (*path, "route")) if "route" in spec else None,
            resilience=Resilience(
                retry=self.retry(spec["retry"], (*path, "retry")) if "retry" in spec else None,
                fallback=self.fallback(spec["fallback"], (*path, "fallback"))
                if "fallback" in spec else (),
                pool=pool,
                cache=self.cache(spec["cache"], (*path, "cache")) if "cache" in spec else None),
            line=self.doc.where(path, "").line,
        )

    # -- spend less, fail less (core/resilience.py) ---------------------------------------
    def key_pool(self, value: Any, path: tuple[str | int, ...]) -> KeyPool | None:
        """A list of key locations, or {keys: [...], pick: round_robin|least_recently_limited}."""
        pick, keys_path = "round_robin", path
        if isinstance(value, dict):
            self.keys(value, path, ("keys", "pick"), "key_pool")
            pick = self.choice(value, (*path, "pick"), PICKS, "round_robin")
            value, keys_path = value.get("keys"), (*path, "keys")
        keys = self.strings(value, keys_path, "key_pool") or ()
        keys = tuple(t for i, t in enumerate(keys) if self.template((*keys_path, i), t))
        return KeyPool(keys, pick) if keys else None

    def retry(self, value: Any, path: tuple[str | int, ...]) -> Retry | None:
        """`retry: N` (attempts in all), or {attempts, within, backoff}."""
        if type(value) is int:
            value = {"attempts": value}
        spec = self.mapping(value, path, "`retry` (attempts in all, or {attempts, within, "
                            "backoff})")
        self.keys(spec, path, ("attempts", "within", "backoff"), "retry")
        attempts = self.positive_int(spec.get("attempts", 3), (*path, "attempts"),
                                     "`retry.attempts` (the first attempt included)")
        if attempts is not None and attempts > 10:
            self.problem((*path, "attempts"), f"`retry.attempts` is at most 10 (found "
                         f"{attempts}): each attempt can hold an agent for a vendor timeout")
            attempts = None
        within = self.duration(spec["within"], (*path, "within")) if "within" in spec else 30.0
        backoff = self.duration(spec["backoff"], (*path, "backoff")) if "backoff" in spec \
            else 0.25
        if attempts is None or within is None or backoff is None:
            return None
        return Retry(attempts, within, backoff)

    def fallback(self, value: Any, path: tuple[str | int, ...]) -> tuple[Fallback, ...]:
        entries = value if isinstance(value, list) else [value]
        out = []
        for i, entry in enumerate(entries):
            where: tuple[str | int, ...] = (*path, i) if isinstance(value, list) else path
            spec = self.mapping(entry, where, "a fallback ({vendor, model, ...})")
            self.keys(spec, where, ("vendor", "model", "secret", "host", "deployment",
                                    "api_version"), "a fallback")
            vendor, model = spec.get("vendor"), spec.get("model")
            if vendor not in self.vendors.names:
                self.problem((*where, "vendor"), unknown_key_message(
                    str(vendor), self.vendors.names, "the vendor catalogue").replace(
                    "unknown key", "unknown vendor") if vendor is not None
                    else "a fallback needs `vendor:`")
                continue
            if not isinstance(model, str) or not model:
                self.problem((*where, "model"), "a fallback needs `model:`, the model to ask "
                             f"{vendor} for")
                continue
            secret = spec.get("secret")
            if secret is not None and not self.template((*where, "secret"), secret):
                continue
            host = spec.get("host")
            if vendor == "azure_openai" and host is None:
                self.problem(where, "an Azure OpenAI fallback needs `host:` (your "
                             "resource, e.g. myco.openai.azure.com)")
                continue
            if host is not None and (host := self.host(host, (*where, "host"))) is None:
                continue
            extra = {k: str(spec[k]) for k in ("deployment", "api_version") if k in spec}
            out.append(Fallback(vendor, model, secret, host, **extra))
        return tuple(out)

    def route(self, value: Any, path: tuple[str | int, ...]) -> Route | None:
        spec = self.mapping(value, path, "`route` ({aliases, teams, small_prompts})")
        self.keys(spec, path, ("aliases", "teams", "small_prompts"), "route")
        aliases = {str(k): v for k, v in self.mapping(
            spec.get("aliases", {}), (*path, "aliases"), "`route.aliases` (name: model)").items()
            if self.model_name(v, (*path, "aliases", k))}
        teams = {}
        for team, downgrades in self.mapping(spec.get("teams", {}), (*path, "teams"),
                                             "`route.teams` (team: {model glob: model})").items():
            where = (*path, "teams", team)
            teams[str(team)] = tuple(
                Downgrade(Globs((str(glob),)), to) for glob, to in self.mapping(
                    downgrades, where, f"team {team}'s downgrades ({{model glob: model}})").items()
                if self.model_name(to, (*where, glob)))
        objective = None
        if "small_prompts" in spec:
            where = (*path, "small_prompts")
            small = self.mapping(spec["small_prompts"], where,
                                 "`small_prompts` ({under_tokens, to, models, without_tools})")
            self.keys(small, where, ("under_tokens", "to", "models", "without_tools"),
                      "small_prompts")
            under = self.positive_int(small.get("under_tokens"), (*where, "under_tokens"),
                                      "`small_prompts.under_tokens`")
            to = small.get("to")
            if under is not None and self.model_name(to, (*where, "to")):
                objective = Objective(under, to, self.globs(small, where, "models", "models"),
                                      self.boolean(small, (*where, "without_tools"), True))
        if not (aliases or teams or objective):
            return None
        return Route(MappingProxyType(aliases), MappingProxyType(teams), objective)

    def model_name(self, value: Any, path: tuple[str | int, ...]) -> bool:
        if isinstance(value, str) and value and "*" not in value:
            return True
        self.problem(path, f"expected the name of a model to send (no globs), found {value!r}")
        return False

    def cache(self, value: Any, path: tuple[str | int, ...]) -> CachePlan | None:
        """{exact: {ttl}, semantic: {ttl, threshold}}; `exact: true` / `ttl` default 1h."""
        spec = self.mapping(value, path, "`cache` ({exact: {ttl}, semantic: {ttl, "
                            "threshold}})")
        self.keys(spec, path, ("exact", "semantic"), "cache")
        ttls: dict[str, float | None] = {"exact": None, "semantic": None}
        threshold = 0.95
        for kind in ttls:
            if kind not in spec or spec[kind] is False:
                continue
            part = {} if spec[kind] is True else self.mapping(
                spec[kind], (*path, kind), f"`cache.{kind}` (true, or {{ttl, ...}})")
            self.keys(part, (*path, kind), ("ttl", "threshold") if kind == "semantic"
                      else ("ttl",), f"cache.{kind}")
            ttls[kind] = self.duration(part["ttl"], (*path, kind, "ttl")) if "ttl" in part \
                else 3600.0
            if "threshold" in part:
                t = part["threshold"]
                if type(t) not in (int, float) or not 0.5 <= t <= 1:
                    self.problem((*path, kind, "threshold"), "`threshold` is a cosine "
                                 f"similarity between 0.5 and 1 (e.g. 0.95), found {t!r}")
                else:
                    threshold = float(t)
        plan = CachePlan(ttls["exact"], ttls["semantic"], threshold)
        return plan if plan.on else None

    def match(self, value: Any, path: tuple[str | int, ...]) -> Match:
        spec = self.mapping(value, path, "`match`")
        self.keys(spec, path, _MATCH, "match")
        vendors = None
        if "vendors" in spec:
            names = self.vendors.names
            vendors = frozenset(self.strings(
                spec["vendors"], (*path, "vendors"), "vendors",
                lambda v: None if v in names else unknown_key_message(
                    v, names, "the vendor catalogue").replace("unknown key", "unknown vendor"))
                or ())
        hosts = None
        if "hosts" in spec:
            patterns = self.strings(spec["hosts"], (*path, "hosts"), "hosts")
            hosts = Globs(tuple(normalize_host(h) for h in patterns)) if patterns else None
        return Match(
            agents=self.globs(spec, path, "agents", "agents"),
            teams=self.globs(spec, path, "teams", "teams"),
            labels=frozenset(self.strings(spec["labels"], (*path, "labels"), "labels") or ())
            if "labels" in spec else frozenset(),
            vendors=vendors, hosts=hosts,
            paths=self.globs(spec, path, "paths", "paths"),
            models=self.globs(spec, path, "models", "models"),
        )

    def max_tokens(self, value: Any, path: tuple[str | int, ...]) -> MaxTokens | None:
        if type(value) is int:  # shorthand: a cap that clamps
            cap = self.positive_int(value, path, "`max_tokens`")
            return MaxTokens(cap) if cap else None
        spec = self.mapping(value, path, "`max_tokens` (a number, or {cap: N, over: clamp|refuse})")
        self.keys(spec, path, ("cap", "over"), "max_tokens")
        cap = self.positive_int(spec.get("cap"), (*path, "cap"), "`max_tokens.cap`")
        over = self.choice(spec, (*path, "over"), ("clamp", "refuse"), "clamp")
        return MaxTokens(cap, over) if cap else None

    def tools(self, value: Any, path: tuple[str | int, ...]) -> str | Globs:
        if value in ("allow", "deny"):
            return str(value)
        if isinstance(value, list):
            names = self.strings(value, path, "tools")
            return Globs(names) if names else "deny"
        self.problem(path, f"`tools` is allow, deny, or a list of the tool names allowed; "
                     f"found {value!r}")
        return "deny"

    def redact(self, value: Any, path: tuple[str | int, ...]) -> MappingProxyType[str, str]:
        plan = {}
        known = (*entities.GROUPS, *entities.PII, *entities.SECRETS)
        for name, action in self.mapping(value, path, "`redact` (entity type: action)").items():
            if name not in known:
                self.problem((*path, name), unknown_key_message(name, known, "redact")
                             .replace("unknown key", "unknown entity type"))
            elif action not in entities.ACTIONS:
                self.problem((*path, name), f"the action for {name} is one of "
                             f"{', '.join(entities.ACTIONS)}; found {action!r}")
            else:
                plan[name] = action
        return MappingProxyType(plan)

    def rule_limits(self, value: Any, path: tuple[str | int, ...]) -> MappingProxyType[str, LimitSpec]:  # noqa: E501
        spec = self.mapping(value, path, "`limits` (per agent and/or per team)")
        self.keys(spec, path, ("agent", "team"), "a rule's limits (each agent / each team)")
        out = {}
        for scope in ("agent", "team"):
            if scope in spec and (limits := self.limits(spec[scope], (*path, scope))):
                out[scope] = limits
        return MappingProxyType(out)

    def detectors(self, value: Any) -> Detector | None:
        """The policy's own detection rules (the shape of redact/rules.yaml), added to
        the built-in ones; None when it has none (the shared default detector)."""
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.problem(("detectors",), "`detectors` is a list of detection rules "
                         "(see addons/core/redact/rules.yaml for their shape)")
            return None
        try:
            return Detector.from_rules(value, self.doc.source, where=lambda path, message:
                                       self.doc.where(("detectors", *path), message))
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return None

    def prices(self, value: Any) -> PriceTable | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.problem(("prices",), f"`prices` is the path of a price table file, found "
                         f"{kind_of(value)}")
            return None
        try:
            return load_prices(self.base / value, self.vendors)
        except ConfigError as exc:
            self.problem(("prices",), f"the price table {value} is not usable:\n  "
                         + "\n  ".join(str(p) for p in exc.problems))
            return None

    def secrets(self, value: Any) -> SecretPaths:
        if not isinstance(value, dict):
            self.problem(("secrets",), "`secrets` is a mapping")
            return SecretPaths()
        self.keys(value, ("secrets",), _SECRETS, "secrets")
        for key in ("mount", "field", "path"):
            if key in value:
                self.template(("secrets", key), value[key])
        maps: dict[str, MappingProxyType[str, str]] = {}
        for key in ("vendors", "teams", "agents"):
            entries = value.get(key, {})
            if not isinstance(entries, dict):
                self.problem(("secrets", key), f"`secrets.{key}` maps a name to a path template")
                entries = {}
            for name, template in entries.items():
                if key == "vendors" and name not in self.vendors.names:
                    self.problem(("secrets", key, name), unknown_key_message(
                        name, self.vendors.names, "secrets.vendors (the vendor catalogue)"))
                self.template(("secrets", key, name), template)
            maps[key] = MappingProxyType(dict(entries))
        base = {k: value[k] for k in ("mount", "field", "path") if isinstance(value.get(k), str)}
        return SecretPaths(**base, **maps)

    def template(self, path: tuple[str | int, ...], value: Any) -> bool:
        if not isinstance(value, str) or not value.strip("/"):
            self.problem(path, f"expected a non-empty string, found {value!r}")
            return False
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            self.problem(path, f"bad template {value!r}: {exc}")
            return False
        if unknown := sorted(names - _TEMPLATE_FIELDS):
            self.problem(path, f"template {value!r} uses {unknown}; only {{vendor}}, "
                         "{team} and {agent} are known")
            return False
        return True
