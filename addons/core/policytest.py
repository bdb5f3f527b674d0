"""Policy tests and explanations: request descriptions in YAML, decided offline.

A test file (`*.test.yaml`) names the policy it tests and lists cases:

    policy: single-team.yaml          # relative to the test file
    cases:
      - name: the support bot may use gpt-4o-mini
        request: {agent: support-bot, vendor: openai, model: gpt-4o-mini}
        expect: {decision: allow, rule: customer-facing, max_tokens: 1024}

A request description is what `egressguard policy explain` takes too (see REQUEST).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egressguard.core import apis, policy
from egressguard.core.rules import Ask, Decision
from egressguard.core.vendors import Catalogue, catalogue
from egressguard.core.yamlsource import ConfigError, Document, Problem, unknown_key_message

REQUEST = ("agent", "team", "vendor", "host", "method", "path", "model", "stream",
           "max_tokens", "tools", "body_bytes")
EXPECT = ("decision", "rule", "reason", "max_tokens", "model", "message")
_CASE = ("name", "request", "expect")
# where each API's main generating endpoint lives, for descriptions without a path
_DEFAULT_PATHS = {
    "openai": "/v1/chat/completions", "anthropic": "/v1/messages",
    "google": "/v1beta/models/{model}:generateContent", "cohere": "/v2/chat",
    "azure_openai": "/openai/deployments/{model}/chat/completions",
}


def ask_from(data: dict[str, Any], vendors: Catalogue | None = None) -> Ask:
    """An Ask from a request description; ValueError says what is wrong with it."""
    vendors = vendors or catalogue()
    if unknown := [k for k in data if k not in REQUEST]:
        raise ValueError(unknown_key_message(unknown[0], REQUEST, "a request description"))
    name = data.get("vendor")
    vendor = vendors.by_name(name) if isinstance(name, str) else None
    if vendor is None:
        raise ValueError(f"`vendor` must name a vendor in the catalogue "
                         f"({', '.join(vendors.names)}); found {name!r}")
    model = data.get("model")
    path = data.get("path") or _DEFAULT_PATHS[vendor.api].format(model=model or "-")
    method = str(data.get("method", "POST")).upper()
    tools = data.get("tools", [])
    if isinstance(tools, str):
        tools = [tools]
    endpoint = apis.endpoint(vendor, method, path)
    return Ask(
        vendor=vendor.name, host=str(data.get("host") or vendor.hosts[0].lstrip("*.")),
        path=path.split("?", 1)[0], agent=data.get("agent"), team=data.get("team"),
        method=method, model=model, endpoint=endpoint, cap=endpoint.cap,
        stream=bool(data.get("stream")),
        max_tokens=data.get("max_tokens"), tools=tuple(str(t) for t in tools),
        body_bytes=int(data.get("body_bytes", 0)))


def explain(loaded: policy.Policy, ask: Ask) -> str:
    """The decision trace, for people."""
    decision = loaded.decide(ask, explain=True)
    lines = [f"request: {ask.method} {ask.vendor} {ask.host}{ask.path} (endpoint "
             f"{ask.endpoint}), model {ask.model!r}, stream {ask.stream}, max_tokens "
             f"{ask.max_tokens}, tools {list(ask.tools)}, {ask.body_bytes} bytes",
             f"policy: {loaded.source} (sha256 {loaded.digest[:12]})", ""]
    lines += [f"  {step}" for step in decision.trace]
    lines += ["", f"decision: {'ALLOW' if decision.allowed else 'DENY'} ({decision.reason})"
              + (f" by rule {decision.rule_name!r}" if decision.rule else ""),
              f"message: {decision.message}"]
    if decision.model is not None:
        lines.append(f"route: model {ask.model} -> {decision.model} "
                     f"(by {', '.join(decision.routed_by)})")
    if decision.max_tokens is not None:
        lines.append(f"clamp: max_tokens {ask.max_tokens} -> {decision.max_tokens}")
    if decision.allowed and decision.rule is not None and decision.rule.resilience.relayed:
        plan = decision.rule.resilience
        lines.append("relayed: " + ", ".join(part for part in (
            f"retry {plan.budget().attempts} attempts within {plan.budget().within:g}s"
            if plan.retry or plan.pool else "",
            f"key pool of {len(plan.pool.keys)} ({plan.pool.pick})" if plan.pool else "",
            "fallback " + ", ".join(f"{f.vendor} {f.model}" for f in plan.fallback)
            if plan.fallback else "",
            "cache" if plan.cache else "") if part))
    if decision.allowed and (scopes := loaded.limit_scopes(decision)):
        lines.append("limits:")
        lines += [f"  {key}: {_limits_text(spec)}" for key, spec in scopes]
    return "\n".join(lines)


def _limits_text(spec: Any) -> str:
    values = ((f.name, getattr(spec, f.name)) for f in dataclasses.fields(spec))
    return ", ".join(f"{name} {value}" for name, value in values if value is not None)


@dataclass(frozen=True, slots=True)
class Outcome:
    file: str
    name: str
    failures: tuple[str, ...]  # empty: passed


def check(decision: Decision, ask: Ask, expect: dict[str, Any]) -> list[str]:
    """What differs between `decision` and what the case expects."""
    sent_max = decision.max_tokens if decision.max_tokens is not None else ask.max_tokens
    got = {"decision": "allow" if decision.allowed else "deny", "rule": decision.rule_name,
           "reason": decision.reason, "max_tokens": sent_max,
           "model": decision.model or ask.model}  # the model sent: after the rule's route
    out = [f"expected {key} {want!r}, got {got[key]!r}" for key, want in expect.items()
           if key in got and got[key] != want]
    if "message" in expect and str(expect["message"]) not in decision.message:
        out.append(f"expected the message to contain {expect['message']!r}, got "
                   f"{decision.message!r}")
    if out:
        out.append(f"(decided: {got['decision']} by rule {decision.rule_name!r}: "
                   f"{decision.message})")
    return out


def find_test_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    return sorted(target.rglob("*.test.yaml"))


def run_file(path: Path) -> Iterator[Outcome]:
    """Every case in one test file; a file that cannot be used raises ConfigError."""
    doc = Document(path.read_text(), str(path))
    data = doc.data
    problems = list(doc.problems)
    if not isinstance(data, dict) or not isinstance(data.get("policy"), str) \
            or not isinstance(data.get("cases"), list):
        problems.append(doc.where((), "a policy test file is a mapping with `policy:` (the "
                                  "policy file, relative to this one) and `cases:` (a list)"))
    if problems:
        raise ConfigError(problems)
    loaded = policy.load(path.parent / data["policy"])
    for i, case in enumerate(data["cases"]):
        name = case.get("name", f"case {i + 1}") if isinstance(case, dict) else f"case {i + 1}"
        try:
            ask, expect = _case(doc, case, i)
        except ConfigError as exc:
            yield Outcome(str(path), str(name), tuple(str(p) for p in exc.problems))
            continue
        yield Outcome(str(path), str(name), tuple(check(loaded.decide(ask), ask, expect)))


def _case(doc: Document, case: Any, i: int) -> tuple[Ask, dict[str, Any]]:
    where = ("cases", i)
    if not isinstance(case, dict):
        raise ConfigError([doc.where(where, "a case is a mapping with name, request, expect")])
    problems: list[Problem] = [doc.where((*where, k), unknown_key_message(k, _CASE, "a case"))
                               for k in case if k not in _CASE]
    expect = case.get("expect")
    if not isinstance(expect, dict) or not expect:
        problems.append(doc.where((*where, "expect"), f"`expect` is a mapping of "
                                  f"{', '.join(EXPECT)}"))
        expect = {}
    problems += [doc.where((*where, "expect", k), unknown_key_message(k, EXPECT, "expect"))
                 for k in expect if k not in EXPECT]
    try:
        ask = ask_from(case.get("request") if isinstance(case.get("request"), dict) else {})
    except ValueError as exc:
        problems.append(doc.where((*where, "request"), str(exc)))
    if problems:
        raise ConfigError(problems)
    return ask, expect


def summary(outcomes: list[Outcome], seconds: float) -> str:
    failed = [o for o in outcomes if o.failures]
    parts = [f"{len(outcomes) - len(failed)} passed"] + ([f"{len(failed)} failed"]
                                                         if failed else [])
    return f"{', '.join(parts)} in {seconds:.2f}s"

