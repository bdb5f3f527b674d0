"""Policy rules and their evaluation: first match wins, default deny.

A rule's `match` selects requests (who is calling, where to, which model); the first
rule whose `match` fits decides. Its constraints (models, endpoints, tools,
streaming, size, max_tokens) then allow, clamp or refuse the request; a request that
breaks a constraint is refused by that rule and never falls through to a later one.
No matching rule: refused.

This is the hot path. `Evaluator` sorts out once per (agent, team) which rules can
apply to that caller, so a request only looks at the rules written for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from egressguard.core.apis import EXPLICIT_ENDPOINTS
from egressguard.core.globs import Globs
from egressguard.core.limits import LimitSpec
from egressguard.core.resilience import Resilience, Route

UNNAMED = "-"  # a missing agent or team name, in counter keys


def _frozen_map() -> Any:
    return field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Subject:
    """An agent or a team as the policy declares it."""

    name: str
    labels: frozenset[str] = frozenset()
    team: str | None = None  # agents only
    limits: LimitSpec | None = None


@dataclass(slots=True)  # built per request: not frozen, which costs 4x; treat as read-only
class Ask:
    """What a request asks for, in the terms rules match on."""

    vendor: str
    host: str
    path: str  # without the query string
    agent: str | None = None
    team: str | None = None  # as the agent's token says
    method: str = "POST"
    model: str | None = None
    endpoint: str = "other"
    # where the output cap lives (apis.CAP_*): "body" readable and settable, "none"
    # nothing is generated, "unseen" generated but the cap is not in this request
    cap: str = "body"
    stream: bool = False
    max_tokens: int | None = None
    tools: tuple[str, ...] = ()
    body_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    agents: Globs | None = None
    teams: Globs | None = None
    labels: frozenset[str] = frozenset()  # all of them, from the agent or its team
    vendors: frozenset[str] | None = None
    hosts: Globs | None = None
    paths: Globs | None = None
    models: Globs | None = None

    def fits_who(self, agent: str | None, team: str | None, labels: frozenset[str]) -> bool:
        return ((self.agents is None or (agent is not None and self.agents(agent)))
                and (self.teams is None or (team is not None and self.teams(team)))
                and self.labels <= labels)

    def fits_what(self, ask: Ask) -> bool:
        """The hot path: `what_misses(ask) is None`, without building the message."""
        return ((self.vendors is None or ask.vendor in self.vendors)
                and (self.hosts is None or self.hosts(ask.host))
                and (self.paths is None or self.paths(ask.path))
                and (self.models is None or (ask.model is not None and self.models(ask.model))))

    def who_misses(self, agent: str | None, team: str | None,
                   labels: frozenset[str]) -> str | None:
        """Why the caller is outside this match (None: inside)."""
        if self.agents is not None and (agent is None or not self.agents(agent)):
            return f"agent {agent!r} is not in {list(self.agents.patterns)}"
        if self.teams is not None and (team is None or not self.teams(team)):
            return f"team {team!r} is not in {list(self.teams.patterns)}"
        if missing := self.labels - labels:
            return f"labels {sorted(missing)} missing (caller has {sorted(labels)})"
        return None

    def what_misses(self, ask: Ask) -> str | None:
        """Why the request is outside this match (None: inside)."""
        if self.vendors is not None and ask.vendor not in self.vendors:
            return f"vendor {ask.vendor!r} is not in {sorted(self.vendors)}"
        if self.hosts is not None and not self.hosts(ask.host):
            return f"host {ask.host!r} is not in {list(self.hosts.patterns)}"
        if self.paths is not None and not self.paths(ask.path):
            return f"path {ask.path!r} is not in {list(self.paths.patterns)}"
        if self.models is not None and (ask.model is None or not self.models(ask.model)):
            return f"model {ask.model!r} is not in {list(self.models.patterns)}"
        return None


@dataclass(frozen=True, slots=True)
class MaxTokens:
    cap: int
    over: str = "clamp"  # or "refuse"; a request that names no cap is always clamped


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match = Match()
    action: str = "allow"  # or "deny"
    reason: str | None = None  # shown to the agent when the rule denies
    models: Globs | None = None
    endpoints: frozenset[str] | None = None
    max_tokens: MaxTokens | None = None
    tools: str | Globs = "allow"  # "allow", "deny", or the tool names allowed
    streaming: bool = True
    max_request_bytes: int | None = None
    redact: Mapping[str, str] = _frozen_map()  # entity type or group -> action, as written
    plan: Mapping[str, str] = _frozen_map()  # the same with groups spread out, for Redact
    answers: Mapping[str, str] = _frozen_map()  # secret type -> mask/log in the answer
    secret: str | None = None  # Vault path template, instead of the `secrets:` default
    key_pool: tuple[str, ...] = ()
    limits: Mapping[str, LimitSpec] = _frozen_map()  # "agent" / "team" -> spec
    route: Route | None = None  # model rewrites: aliases, team downgrades, by objective
    resilience: Resilience = Resilience()  # retries, failover, key pool, cache
    line: int = 0  # where the rule starts in its file, for messages


@dataclass(slots=True)  # built per request: not frozen, which costs 4x; treat as read-only
class Decision:
    allowed: bool
    reason: str  # stable name, recorded in the audit trail
    message: str  # for the agent's developer: what decided and what to change
    rule: Rule | None = None
    agent: str | None = None
    team: str | None = None  # the policy's team for the agent, else its token's
    max_tokens: int | None = None  # set: the request's output cap must become this
    status: int = 403
    model: str | None = None  # set: the rule's route rewrote the model to this
    routed_by: tuple[str, ...] = ()  # what rewrote it ("alias", "team", "objective")
    trace: tuple[str, ...] = ()

    @property
    def rule_name(self) -> str | None:
        return self.rule.name if self.rule else None


class Evaluator:
    """Decides asks against one policy's rules, agents and teams."""

    def __init__(self, rules: tuple[Rule, ...], agents: Mapping[str, Subject],
                 teams: Mapping[str, Subject]) -> None:
        self.rules = rules
        self.agents = agents
        self.teams = teams
        self._callers: dict[tuple[str | None, str | None], tuple[Any, ...]] = {}

    def decide(self, ask: Ask, explain: bool = False) -> Decision:
        if explain:
            return self._explain(ask)
        caller = self._callers.get((ask.agent, ask.team)) or self._caller(ask.agent, ask.team)
        problem, team, candidates, _ = caller
        if problem is not None:
            return Decision(False, "identity_mismatch", problem, None, ask.agent, team)
        for rule in candidates:
            if rule.match.fits_what(ask):
                return _apply(rule, ask, team)
        return _default_deny(ask, team)

    def _explain(self, ask: Ask) -> Decision:
        """decide(), step by step, every rule in order: the slow path, for people."""
        problem, team, candidates, labels = self._caller(ask.agent, ask.team)
        declared = ask.agent in self.agents
        trace = [f"caller: agent {ask.agent!r}" + ("" if declared else " (not declared "
                 "in the policy)") + f", team {team!r}, labels {sorted(labels)}"]
        if problem is not None:
            trace.append(problem)
            return Decision(False, "identity_mismatch", problem, None, ask.agent, team,
                            trace=tuple(trace))
        for rule in self.rules:
            miss = rule.match.who_misses(ask.agent, team, labels) if rule not in candidates \
                else rule.match.what_misses(ask)
            if miss is not None:
                trace.append(f"rule {rule.name!r} (line {rule.line}): no match, {miss}")
                continue
            decision = _apply(rule, ask, team)
            trace.append(f"rule {rule.name!r} (line {rule.line}): matches and decides: "
                         f"{'allow' if decision.allowed else 'deny'} ({decision.reason})")
            return replace(decision, trace=tuple(trace))
        trace.append("no rule matched: denied by default")
        return replace(_default_deny(ask, team), trace=tuple(trace))

    def _caller(self, agent: str | None, token_team: str | None) -> tuple[Any, ...]:
        """(identity problem, effective team, rules that can apply, labels) of a caller."""
        declared = self.agents.get(agent) if agent is not None else None
        problem = None
        team = token_team
        if declared is not None and declared.team is not None:
            if token_team is not None and token_team != declared.team:
                problem = (f"agent {agent!r} holds a token for team {token_team!r} but the "
                           f"policy puts it in team {declared.team!r}; issue it a new token")
            team = declared.team
        labels = (declared.labels if declared else frozenset()) | (
            self.teams[team].labels if team in self.teams else frozenset())
        candidates = tuple(r for r in self.rules
                           if r.match.fits_who(agent, team, labels))
        result = (problem, team, candidates, labels)
        if len(self._callers) >= 65536:  # tokens for undeclared agents are unbounded
            self._callers.clear()
        self._callers[(agent, token_team)] = result
        return result


def _default_deny(ask: Ask, team: str | None) -> Decision:
    message = (f"no policy rule allows agent {ask.agent!r} (team {team!r}) to use "
               f"{ask.vendor} {ask.endpoint} {ask.path}"
               + (f" with model {ask.model!r}" if ask.model else "")
               + "; ask your security team to add a rule")
    return Decision(False, "no_rule_matched", message, None, ask.agent, team)


def _apply(rule: Rule, ask: Ask, team: str | None) -> Decision:
    def deny(reason: str, message: str, status: int = 403) -> Decision:
        return Decision(False, reason, f"{message} (policy rule {rule.name!r})", rule,
                        ask.agent, team, status=status)

    if rule.action == "deny":
        return deny("denied_by_rule", rule.reason or "this request is not allowed")
    routed, routed_by = None, ()
    if rule.route is not None and ask.model is not None and ask.cap == "body":
        # constraints hold for the model that will be sent, not the name asked for
        model, routed_by = rule.route.apply(ask.model, team, ask.body_bytes, bool(ask.tools))
        if routed_by:
            routed, ask = model, replace(ask, model=model)
    if rule.models is not None and ask.model is not None and not rule.models(ask.model):
        return deny("model_not_allowed", f"model {ask.model!r} is not allowed; allowed: "
                    f"{', '.join(rule.models.patterns)}")
    if rule.models is not None and ask.model is None and ask.cap != "none" \
            and ask.endpoint != "batches":  # a batch's requests are decided one by one
        return deny("model_required", f"only some models are allowed and this {ask.endpoint} "
                    "request names none (a stored prompt or assistant would choose it); "
                    "name the model in the request")
    if rule.endpoints is not None and ask.endpoint not in rule.endpoints:
        return deny("endpoint_not_allowed", f"the {ask.endpoint} endpoint is not allowed; "
                    f"allowed: {', '.join(sorted(rule.endpoints))}")
    if rule.endpoints is None and ask.endpoint in EXPLICIT_ENDPOINTS:
        return deny("endpoint_not_allowed", f"the {ask.endpoint} endpoint ({ask.method} "
                    f"{ask.path}) is allowed only by a rule that names it in `endpoints:`, "
                    "since what it lets through is not checked like a direct request; ask "
                    "your security team")
    if ask.stream and not rule.streaming:
        return deny("streaming_not_allowed", "streaming is not allowed; send the request "
                    "without `stream`")
    if ask.tools and rule.tools != "allow":
        if rule.tools == "deny":
            return deny("tools_not_allowed", "tool use is not allowed; send the request "
                        "without tools")
        assert isinstance(rule.tools, Globs)
        if refused := [t for t in ask.tools if not rule.tools(t)]:
            return deny("tool_not_allowed", f"tools {refused} are not allowed; allowed: "
                        f"{', '.join(rule.tools.patterns)}")
    if rule.max_request_bytes is not None and ask.body_bytes > rule.max_request_bytes:
        return deny("request_too_large", f"the request body is {ask.body_bytes} bytes; the "
                    f"limit is {rule.max_request_bytes}", status=413)
    clamp = None
    if rule.max_tokens is not None and ask.cap == "unseen":
        return deny("max_tokens_unenforceable", f"this rule caps max_tokens, and the output "
                    f"cap of a {ask.endpoint} request to {ask.path} is not in the request "
                    "for egressguard to check")
    if rule.max_tokens is not None and ask.cap == "body":
        cap = rule.max_tokens.cap
        if ask.max_tokens is None or (ask.max_tokens > cap and rule.max_tokens.over == "clamp"):
            clamp = cap
        elif ask.max_tokens > cap:
            return deny("max_tokens_over_cap", f"max_tokens {ask.max_tokens} is over the cap "
                        f"of {cap}; ask for {cap} or fewer", status=400)
    return Decision(True, "allowed", f"allowed by policy rule {rule.name!r}", rule, ask.agent,
                    team, max_tokens=clamp, status=200, model=routed, routed_by=routed_by)
