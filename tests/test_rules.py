"""Policy decisions (`Policy.decide`): first match, constraints, clamps, identity, explain."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import pytest

from egressguard.core import policy
from egressguard.core.globs import Globs
from egressguard.core.rules import Ask, Decision

POLICY = """\
version: 1
teams:
  research: {labels: [engineering]}
  support: {}
agents:
  reader: {team: research}
  intern: {team: research, labels: [intern]}
  triage: {team: support, labels: [customer-facing]}
rules:
  - name: interns
    match: {labels: [intern]}
    models: [gpt-4o-mini]
    max_tokens: 100
  - name: research-openai
    match: {teams: [research], vendors: [openai]}
    models: ["gpt-5*", "gpt-4o*"]
    endpoints: [chat, responses, embeddings]
    max_tokens: {cap: 8000, over: refuse}
  - name: support
    match: {teams: [support]}
    streaming: false
    tools: ["zendesk_*", lookup]
    max_request_bytes: 1KiB
  - name: research-no-tools
    match: {labels: [engineering], vendors: [anthropic]}
    tools: deny
  - name: undeclared-with-token-team
    match: {teams: [research], agents: ["ext-*"]}
"""


def decide(text: str = POLICY, **ask: Any) -> Decision:
    return policy.parse(textwrap.dedent(text), "p.yaml").decide(make_ask(**ask))


def make_ask(**kw: Any) -> Ask:
    defaults: dict[str, Any] = {"vendor": "openai", "host": "api.openai.com",
                                "path": "/v1/chat/completions", "endpoint": "chat"}
    return Ask(**{**defaults, **kw})


def test_the_first_matching_rule_decides() -> None:
    d = decide(agent="reader", model="gpt-5")
    assert (d.allowed, d.rule_name, d.reason, d.team) == (True, "research-openai", "allowed",
                                                          "research")


def test_a_broken_constraint_refuses_and_never_falls_through() -> None:
    # the intern is also in research, whose rule would allow gpt-5: the intern rule decides
    d = decide(agent="intern", model="gpt-5")
    assert (d.allowed, d.rule_name, d.reason, d.status) == (False, "interns",
                                                           "model_not_allowed", 403)
    assert d.message == ("model 'gpt-5' is not allowed; allowed: gpt-4o-mini "
                         "(policy rule 'interns')")


def test_no_matching_rule_is_a_default_deny() -> None:
    d = decide(agent="reader", vendor="google", host="generativelanguage.googleapis.com",
               model="gemini-2.5-pro")
    assert (d.allowed, d.rule, d.reason) == (False, None, "no_rule_matched")
    assert "no policy rule allows agent 'reader' (team 'research')" in d.message
    assert "ask your security team to add a rule" in d.message


def test_a_policy_without_rules_denies_everything() -> None:
    assert decide("version: 1\n", agent="a").reason == "no_rule_matched"


def test_a_rule_without_match_matches_everything() -> None:
    d = decide("version: 1\nrules:\n  - name: all\n", agent=None, vendor="mistral",
               host="api.mistral.ai")
    assert (d.allowed, d.rule_name) == (True, "all")


def test_a_token_for_another_team_than_the_policy_says_is_refused() -> None:
    d = decide(agent="reader", team="support", model="gpt-5")
    assert (d.allowed, d.reason, d.rule) == (False, "identity_mismatch", None)
    assert "token for team 'support' but the policy puts it in team 'research'" in d.message


def test_an_undeclared_agent_keeps_its_token_team_and_that_teams_labels() -> None:
    d = decide(agent="ext-bot", team="research", vendor="anthropic",
               host="api.anthropic.com", path="/v1/messages", endpoint="messages",
               tools=("search",))
    # research's label `engineering` reached it: research-no-tools decided
    assert (d.allowed, d.rule_name, d.reason) == (False, "research-no-tools",
                                                  "tools_not_allowed")
    assert decide(agent="ext-bot", team="research", vendor="mistral",
                  host="api.mistral.ai").rule_name == "undeclared-with-token-team"
    assert decide(agent="ext-bot", vendor="mistral", host="api.mistral.ai").reason == \
        "no_rule_matched"


@pytest.mark.parametrize("ask, reason, status", [
    ({"agent": "reader", "model": "gpt-5", "endpoint": "images"}, "endpoint_not_allowed", 403),
    ({"agent": "triage", "stream": True}, "streaming_not_allowed", 403),
    ({"agent": "triage", "tools": ("zendesk_search", "shell")}, "tool_not_allowed", 403),
    ({"agent": "triage", "tools": ("<unnamed>",)}, "tool_not_allowed", 403),
    ({"agent": "triage", "body_bytes": 1025}, "request_too_large", 413),
    ({"agent": "reader", "model": "gpt-5", "max_tokens": 8001}, "max_tokens_over_cap", 400),
    ({"agent": "reader", "model": "gpt-5", "cap": "unseen", "endpoint": "chat"},
     "max_tokens_unenforceable", 403),
])
def test_each_constraint_refuses_with_its_reason(ask: dict[str, Any], reason: str,
                                                 status: int) -> None:
    d = decide(**ask)
    assert (d.allowed, d.reason, d.status) == (False, reason, status)
    assert d.message.endswith(f"(policy rule {d.rule_name!r})")


def test_tool_allow_lists_take_globs_and_name_what_is_refused() -> None:
    assert decide(agent="triage", tools=("zendesk_search", "lookup")).allowed
    d = decide(agent="triage", tools=("zendesk_search", "rm_rf", "shell"))
    assert "tools ['rm_rf', 'shell'] are not allowed; allowed: zendesk_*, lookup" in d.message


def test_a_deny_rule_says_its_reason() -> None:
    d = decide(agent="triage", vendor="anthropic", host="api.anthropic.com",
               path="/v1/messages", endpoint="messages", body_bytes=2048)
    # `support` matched first and refused the size: rules decide in order
    assert d.rule_name == "support"
    d = decide("""\
        version: 1
        rules:
          - name: nope
            action: deny
            reason: not today
        """, agent="x")
    assert (d.allowed, d.reason, d.message) == (False, "denied_by_rule",
                                                "not today (policy rule 'nope')")


@pytest.mark.parametrize("asked, cap, over, endpoint_cap, sent, allowed", [
    (None, 100, "clamp", "body", 100, True),  # no cap asked: set one
    (500, 100, "clamp", "body", 100, True),
    (50, 100, "clamp", "body", None, True),  # under the cap: untouched
    (100, 100, "refuse", "body", None, True),
    (None, 100, "refuse", "body", 100, True),  # refuse mode still sets a missing cap
    (101, 100, "refuse", "body", None, False),
    (None, 100, "clamp", "none", None, True),  # embeddings, listings: nothing to cap
])
def test_max_tokens(asked: int | None, cap: int, over: str, endpoint_cap: str,
                    sent: int | None, allowed: bool) -> None:
    d = decide(f"""\
        version: 1
        rules:
          - name: capped
            max_tokens: {{cap: {cap}, over: {over}}}
        """, agent="a", max_tokens=asked, cap=endpoint_cap)
    assert (d.allowed, d.max_tokens) == (allowed, sent)


@pytest.mark.parametrize("match, ask, matches", [
    ("{hosts: ['*.openai.azure.com']}", {"host": "x.openai.azure.com"}, True),
    ("{hosts: ['*.openai.azure.com']}", {"host": "api.openai.com"}, False),
    ("{paths: ['/v1/chat/*']}", {"path": "/v1/chat/completions"}, True),
    ("{paths: ['/v1/chat/*']}", {"path": "/v1/embeddings"}, False),
    ("{models: ['gpt-4o*']}", {"model": "gpt-4o-mini"}, True),
    ("{models: ['gpt-4o*']}", {"model": None}, False),  # a model rule needs a model
    ("{models: ['gpt-4o*']}", {"model": "GPT-4O"}, False),  # case-sensitive
    ("{vendors: [openai, mistral]}", {"vendor": "mistral"}, True),
    ("{agents: ['bot-?']}", {"agent": "bot-1"}, True),
    ("{agents: ['bot-?']}", {"agent": "bot-10"}, False),
    ("{agents: [a]}", {"agent": None}, False),
])
def test_match_keys(match: str, ask: dict[str, Any], matches: bool) -> None:
    text = f"version: 1\nagents: {{a: {{}}}}\nrules:\n  - name: r\n    match: {match}\n"
    assert decide(text, **{"agent": "a", **ask}).allowed is matches


def test_labels_must_all_be_present_from_agent_or_team() -> None:
    text = """\
        version: 1
        teams: {t: {labels: [prod]}}
        agents:
          both: {team: t, labels: [pci]}
          one: {team: t}
        rules:
          - name: pci-prod
            match: {labels: [pci, prod]}
        """
    assert decide(text, agent="both").allowed
    assert decide(text, agent="one").reason == "no_rule_matched"


def test_explain_walks_every_rule_in_order_and_decides_the_same() -> None:
    loaded = policy.parse(POLICY, "p.yaml")
    ask = make_ask(agent="triage", vendor="anthropic", host="api.anthropic.com",
                   path="/v1/messages", endpoint="messages", stream=True)
    d = loaded.decide(ask, explain=True)
    assert d.trace == (
        "caller: agent 'triage', team 'support', labels ['customer-facing']",
        "rule 'interns' (line 10): no match, labels ['intern'] missing (caller has "
        "['customer-facing'])",
        "rule 'research-openai' (line 14): no match, team 'support' is not in ['research']",
        "rule 'support' (line 19): matches and decides: deny (streaming_not_allowed)",
    )
    assert dataclasses.replace(d, trace=()) == loaded.decide(ask)


def test_explain_of_a_default_deny_and_of_an_unknown_caller() -> None:
    loaded = policy.parse(POLICY, "p.yaml")
    d = loaded.decide(make_ask(agent="nobody", vendor="mistral", host="api.mistral.ai"),
                      explain=True)
    assert d.trace[0] == "caller: agent 'nobody' (not declared in the policy), team None, " \
        "labels []"
    assert d.trace[-1] == "no rule matched: denied by default"
    assert len(d.trace) == 2 + len(loaded.rules)


def test_limit_scopes_name_rule_agent_and_team() -> None:
    loaded = policy.parse(textwrap.dedent("""\
        version: 1
        teams: {t: {limits: {requests_per_minute: 10}}}
        agents: {a: {team: t, limits: {tokens_per_day: 1000}}}
        rules:
          - name: r
            limits:
              agent: {requests_per_minute: 5}
              team: {tokens_per_minute: 100000}
        """), "p.yaml")
    d = loaded.decide(make_ask(agent="a"))
    assert [key for key, _ in loaded.limit_scopes(d)] == [
        "rule:r/agent:a", "rule:r/team:t", "agent:a", "team:t"]
    d = loaded.decide(make_ask(agent="loner"))
    assert [key for key, _ in loaded.limit_scopes(d)] == ["rule:r/agent:loner",
                                                          "rule:r/team:-"]


def test_the_per_caller_cache_is_bounded() -> None:
    loaded = policy.parse("version: 1\nrules:\n  - name: all\n", "p.yaml")
    for i in range(5000):
        assert loaded.decide(make_ask(agent=f"agent-{i}")).allowed
    assert len(loaded.evaluator._callers) <= 65536


@pytest.mark.parametrize("general, specific, covers", [
    (["*"], ["anything", "a*"], True),
    (["gpt-4o*"], ["gpt-4o-mini", "gpt-4o-2024-*"], True),
    (["gpt-4o*"], ["gpt-4*"], False),
    (["a", "b"], ["b"], True),
    (["a"], ["a", "c"], False),
    (["x?"], ["xy"], True),
    (["x?"], ["x*"], False),  # cannot tell: say no
])
def test_glob_coverage(general: list[str], specific: list[str], covers: bool) -> None:
    assert Globs(tuple(general)).covers(Globs(tuple(specific))) is covers
