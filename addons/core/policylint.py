"""Checks on a policy that parsed: does it do what its author meant?

Errors: the policy says something it cannot mean (a rule no request can reach, a
name nobody has, a limit no request can fit). Warnings: probably a mistake, but the
policy still does exactly what it says (a model glob that matches no model the
catalogue knows: vendors add models faster than catalogues do).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from egressguard.core.globs import Globs, is_glob
from egressguard.core.limits import DEFAULT_MAX_OUTPUT, LimitSpec
from egressguard.core.rules import Match, Rule
from egressguard.core.vendors import Catalogue
from egressguard.core.yamlsource import Document, Problem, unknown_key_message

if TYPE_CHECKING:
    from egressguard.core.policy import Policy

Path_ = tuple[str | int, ...]


def check(policy: Policy, vendors: Catalogue, rule_paths: dict[str, Path_],
          doc: Document) -> list[Problem]:
    out: list[Problem] = []

    def at(path: Path_, message: str, severity: str = "error") -> None:
        out.append(doc.where(path, message, severity))

    for name, agent in policy.agents.items():
        if agent.team is not None and agent.team not in policy.teams:
            at(("agents", name, "team"), _unknown("team", agent.team, policy.teams))
    for scope, subjects in (("agents", policy.agents), ("teams", policy.teams)):
        for name, subject in subjects.items():
            if subject.limits is not None:
                _limits(policy, subject.limits, (scope, name, "limits"), None, at)
    labels = {label for s in (*policy.agents.values(), *policy.teams.values())
              for label in s.labels}
    for i, rule in enumerate(policy.rules):
        path = rule_paths[rule.name]
        _references(policy, rule.match, labels, (*path, "match"), at)
        for earlier in policy.rules[:i]:
            if covers(earlier.match, rule.match):
                at(path, f"rule {rule.name!r} can never match: rule {earlier.name!r} (line "
                   f"{earlier.line}) comes first and matches every request it would "
                   "(the first matching rule decides); move it up or narrow the earlier one")
                break
        _models(vendors, rule, path, at)
        if rule.action == "deny" and _has_constraints(rule):
            at(path, f"rule {rule.name!r} denies, so its constraints and limits are never "
               "used", "warning")
        if rule.secret is not None and rule.key_pool:
            at((*path, "key_pool"), "a rule names either one `secret` or a `key_pool`, not both")
        for scope, spec in rule.limits.items():
            _limits(policy, spec, (*path, "limits", scope), rule, at)
    return out


def covers(a: Match, b: Match) -> bool:
    """Every request `b` matches, `a` matches too (conservative)."""
    def globs(x: Globs | None, y: Globs | None) -> bool:
        return x is None or (y is not None and x.covers(y))

    return (a.labels <= b.labels  # the cheap set checks first: this runs for every pair
            and (a.vendors is None or (b.vendors is not None and b.vendors <= a.vendors))
            and globs(a.agents, b.agents) and globs(a.teams, b.teams)
            and globs(a.hosts, b.hosts) and globs(a.paths, b.paths)
            and globs(a.models, b.models))


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    if not known:
        return f"unknown {kind} {name!r}: the policy declares no {kind}s (add it under `{kind}s:`)"
    return unknown_key_message(name, known, f"the policy's {kind}s").replace(
        "unknown key", f"unknown {kind}")


def _references(policy: Policy, match: Match, labels: set[str], path: Path_, at) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    for i, pattern in enumerate(match.agents.patterns if match.agents else ()):
        if not is_glob(pattern) and pattern not in policy.agents:
            at((*path, "agents", i), _unknown("agent", pattern, policy.agents))
    for i, pattern in enumerate(match.teams.patterns if match.teams else ()):
        if not is_glob(pattern) and pattern not in policy.teams:
            at((*path, "teams", i), _unknown("team", pattern, policy.teams))
    for label in sorted(match.labels - labels):
        at((*path, "labels"), f"no agent or team has the label {label!r}"
           + (f" (labels in use: {', '.join(sorted(labels))})" if labels else ""))


def _models(vendors: Catalogue, rule: Rule, path: Path_, at) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    scope = [v for v in vendors if rule.match.vendors is None or v.name in rule.match.vendors]
    known = [m for v in scope if v.models is not None for m in v.models]
    if not known:
        return  # only customer-named models (Azure deployments) in scope
    for where, globs in ((("match", "models"), rule.match.models), (("models",), rule.models)):
        for i, pattern in enumerate(globs.patterns if globs else ()):
            if not any(map(Globs((pattern,)), known)):
                at((*path, *where, i), f"model pattern {pattern!r} matches no model the "
                   f"vendor catalogue knows for {', '.join(v.name for v in scope)}; check "
                   "the spelling", "warning")


def _has_constraints(rule: Rule) -> bool:
    return any((rule.models, rule.endpoints, rule.max_tokens, rule.tools != "allow",
                not rule.streaming, rule.max_request_bytes, rule.limits, rule.redact,
                rule.secret, rule.key_pool))


def _limits(policy: Policy, spec: LimitSpec, path: Path_, rule: Rule | None, at) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    if (spec.spend_per_day or spec.spend_per_month) and policy.prices is None:
        at(path, "spend limits need a price table: add `prices: prices.yaml` (vendor and "
           "model prices per million tokens) at the top of the policy")
    cap = rule.max_tokens.cap if rule is not None and rule.max_tokens else None
    for name in ("tokens_per_minute", "tokens_per_day"):
        value = getattr(spec, name)
        if value is None:
            continue
        if cap is not None and value < cap:
            at((*path, name), f"{name} {value} is below the rule's max_tokens cap {cap}: a "
               "request at the cap could never be let through; lower the cap or raise the limit")
        elif cap is None and value < DEFAULT_MAX_OUTPUT:
            at((*path, name), f"{name} {value} is below {DEFAULT_MAX_OUTPUT}, the output "
               "estimate of a request that sets no max_tokens: such requests are refused; "
               "give the rule a max_tokens cap", "warning")
    day, minute = spec.tokens_per_day, spec.tokens_per_minute
    if day and minute and day < minute:
        at((*path, "tokens_per_minute"), "tokens_per_minute is above tokens_per_day, so it "
           "can never be what stops a request", "warning")
    if spec.spend_per_day and spec.spend_per_month and spec.spend_per_day > spec.spend_per_month:
        at((*path, "spend_per_day"), "spend_per_day is above spend_per_month, so it can never "
           "be what stops a request", "warning")
