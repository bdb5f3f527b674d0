"""The policy in the pipeline (`Enforce`, and `Inject`'s per-rule keys): refusals in the
vendor's shape, clamps on the wire, limits reserved and settled, all in the audit record."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
import pytest

from egressguard.core import limits
from egressguard.core.secret import SecretLocation
from egressguard.tools.procs import free_port

OPENAI, ANTHROPIC = "api.openai.com", "api.anthropic.com"
PRICES = "version: 1\ncurrency: USD\nprices:\n  openai:\n    gpt-4o-mini: {input: 1, output: 2}\n"
POLICY = """\
version: 1
prices: prices.yaml
teams: {red: {}}
agents:
  bot: {team: red}
  pooled: {team: red}
  counted: {team: red}
rules:
  - name: pooled
    match: {agents: [pooled]}
    key_pool: [pool/one, pool/two]
  - name: counted
    match: {agents: [counted]}
    models: [gpt-4o-mini]
    limits:
      agent: {requests_per_minute: 2, tokens_per_day: 100000}
      team: {spend_per_day: 1}
  - name: mini-capped
    match: {agents: [bot], vendors: [openai]}
    models: [gpt-4o-mini]
    max_tokens: 100
    secret: special/{agent}
  - name: anthropic-refused
    match: {vendors: [anthropic]}
    action: deny
    reason: no Anthropic here
"""
KEYS = {"special/bot", "pool/one", "pool/two"}


@pytest.fixture
def policy_yaml(tmp_path) -> str:
    (tmp_path / "prices.yaml").write_text(PRICES)
    return POLICY


@pytest.fixture
def secrets(secrets):
    return {**secrets, **{SecretLocation("secret", p, "api_key"): f"key-at-{p}" for p in KEYS}}


def chat(pipeline, agent: str = "bot", host: str = OPENAI, path: str = "/v1/chat/completions",
         **body: Any):
    token = pipeline.token(agent, "red")
    header = ("x-api-key", token) if host == ANTHROPIC else ("Authorization", f"Bearer {token}")
    return pipeline.send(host, path, headers=[header],
                         body={"model": "gpt-4o-mini", "messages": [], **body})


def error_of(flow) -> dict[str, Any]:
    return orjson.loads(flow.response.content)


def settled(pipeline) -> None:
    """Let the background settlements of finished flows run."""
    if pending := list(pipeline.enforce._settling):
        pipeline.tctx.master.event_loop.run_until_complete(asyncio.gather(*pending))


def test_a_refusal_names_the_rule_in_the_vendors_shape_and_sends_nothing(pipeline) -> None:
    flow = chat(pipeline, model="gpt-4o")
    assert flow.response.status_code == 403
    assert error_of(flow)["error"] == {
        "message": "model 'gpt-4o' is not allowed; allowed: gpt-4o-mini (policy rule "
                   "'mini-capped')", "type": "invalid_request_error", "param": None,
        "code": "model_not_allowed"}
    assert pipeline.store.asked == []  # no key fetched, nothing forwarded
    [record] = pipeline.records()
    digest = hashlib.sha256(POLICY.encode()).hexdigest()
    assert {k: record[k] for k in ("decision", "reason", "rule", "policy", "team", "status")} == {
        "decision": "deny", "reason": "model_not_allowed", "rule": "mini-capped",
        "policy": digest, "team": "red", "status": 403}


def test_a_deny_rule_answers_anthropic_in_anthropic_shape(pipeline) -> None:
    flow = chat(pipeline, host=ANTHROPIC, path="/v1/messages")
    assert flow.response.status_code == 403
    assert error_of(flow) == {"type": "error", "error": {
        "type": "permission_error", "message": "no Anthropic here (policy rule "
                                               "'anthropic-refused')"}}


def test_a_default_deny_has_no_rule(pipeline) -> None:
    flow = chat(pipeline, agent="stranger")
    assert error_of(flow)["error"]["code"] == "no_rule_matched"
    [record] = pipeline.records()
    assert (record["rule"], record["reason"]) == (None, "no_rule_matched")


@pytest.mark.parametrize("asked, field, sent", [
    ({"max_tokens": 5000}, "max_tokens", 100),
    ({"max_completion_tokens": 5000}, "max_completion_tokens", 100),
    ({}, "max_tokens", 100),
])
def test_max_tokens_is_clamped_on_the_wire_and_recorded(pipeline, asked, field, sent) -> None:
    flow = chat(pipeline, **asked)
    assert flow.response.status_code == 200
    upstream = orjson.loads(flow.request.content)
    assert upstream[field] == sent and upstream["model"] == "gpt-4o-mini"
    [record] = pipeline.records()
    assert record["clamps"] == {"max_tokens": {"from": asked.get(field), "to": sent}}
    assert record["rule"] == "mini-capped"


def test_a_request_under_the_cap_is_sent_as_the_agent_wrote_it(pipeline) -> None:
    body = {"model": "gpt-4o-mini", "messages": [], "max_tokens": 50}
    token = pipeline.token("bot", "red")
    flow = pipeline.send(OPENAI, headers=[("Authorization", f"Bearer {token}")],
                         body=orjson.dumps(body))
    assert flow.request.content == orjson.dumps(body)
    assert pipeline.records()[0]["clamps"] is None


def test_a_rules_secret_and_key_pool_choose_the_key(pipeline) -> None:
    chat(pipeline)
    for _ in range(3):
        chat(pipeline, agent="pooled")
    assert [loc.path for loc in pipeline.store.asked] == [
        "special/bot", "pool/one", "pool/two", "pool/one"]
    assert [r["credential"]["path"] for r in pipeline.records()] == [
        "secret/special/bot", "secret/pool/one", "secret/pool/two", "secret/pool/one"]


def test_limits_refuse_with_429_retry_after_and_the_limit_named(pipeline) -> None:
    ok = [chat(pipeline, agent="counted", max_tokens=10) for _ in range(2)]
    assert [f.response.status_code for f in ok] == [200, 200]
    refused = chat(pipeline, agent="counted", max_tokens=10)
    assert refused.response.status_code == 429
    # sliding window: the two requests fade out over the next minute
    assert 1 <= int(refused.response.headers["retry-after"]) <= 120
    message = error_of(refused)["error"]["message"]
    assert message.startswith("agent counted (rule counted) is over its requests_per_minute "
                              "limit of 2")
    assert len(pipeline.store.asked) == 2  # the refused one never reached the key store
    records = pipeline.records()
    assert [r["limits"]["state"] for r in records] == ["reserved", "reserved", "exceeded"]
    assert records[0]["limits"]["scopes"] == ["rule:counted/agent:counted",
                                              "rule:counted/team:red"]
    assert {k: records[2]["limits"][k] for k in ("limit", "scope", "cap", "used")} == {
        "limit": "requests_per_minute", "scope": "rule:counted/agent:counted", "cap": 2,
        "used": 2}
    assert (records[2]["reason"], records[2]["status"]) == ("limit_exceeded", 429)


def test_the_reservation_is_settled_with_the_reported_usage(pipeline) -> None:
    flow = chat(pipeline, agent="counted", max_tokens=1000)
    assert flow.response.status_code == 200
    estimate = pipeline.records()[0]["limits"]["estimate"]
    assert estimate["tokens"] > 1000  # prompt bytes / 4 + max_tokens
    settled(pipeline)
    policy = flow.metadata["egressguard.policy"]
    (spec,) = [s for key, s in policy.limit_scopes(flow.metadata["egressguard.decision"])
               if key == "rule:counted/agent:counted"]
    buckets = limits.buckets("rule:counted/agent:counted", spec)
    used = pipeline.tctx.master.event_loop.run_until_complete(
        pipeline.enforce.counters.usage(buckets, time.time()))
    by_limit = {b.limit: n for b, n in used.items()}
    # the fake vendor reported 3 input + 5 output tokens
    assert by_limit == {"requests_per_minute": 1, "tokens_per_day": 8}


def test_prompt_cache_tokens_count_as_input(pipeline) -> None:
    token = pipeline.token("counted", "red")
    usage = {"input_tokens": 10, "cache_read_input_tokens": 100,
             "cache_creation_input_tokens": 1000, "output_tokens": 5}
    flow = pipeline.send(OPENAI, headers=[("Authorization", f"Bearer {token}")],
                         body={"model": "gpt-4o-mini", "max_tokens": 10},
                         upstream=pipeline.Upstream.json({"usage": usage}))
    assert flow.response.status_code == 200
    settled(pipeline)
    spec = flow.metadata["egressguard.policy"].rules[1].limits["agent"]
    used = pipeline.tctx.master.event_loop.run_until_complete(pipeline.enforce.counters.usage(
        limits.buckets("rule:counted/agent:counted", spec), time.time()))
    assert {b.limit: n for b, n in used.items()}["tokens_per_day"] == 1115


def test_spend_needs_a_price_for_the_model(pipeline) -> None:
    pipeline.files["policy"].write_text(POLICY.replace("models: [gpt-4o-mini]\n    limits",
                                                       "limits"))
    pipeline.policyloader.configure({"egressguard_policy"})
    flow = chat(pipeline, agent="counted", model="gpt-4.1")
    assert flow.response.status_code == 403
    assert error_of(flow)["error"]["code"] == "no_price"
    assert "has no price in the policy's price table" in error_of(flow)["error"]["message"]


@pytest.mark.parametrize("mode, status, state", [("deny", 503, "unavailable"),
                                                 ("allow", 200, "unavailable_allowed")])
def test_an_unreachable_counter_store(pipeline, mode, status, state) -> None:
    pipeline.files["policy"].write_text(POLICY + f"on_limits_unavailable: {mode}\n")
    pipeline.policyloader.configure({"egressguard_policy"})
    # a real connection to a port nothing listens on; the password must not leak
    pipeline.tctx.options.update(
        egressguard_limits_store=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    flow = chat(pipeline, agent="counted", max_tokens=10)
    assert flow.response.status_code == status
    [record] = pipeline.records()
    assert record["limits"] == {"state": state}
    if status == 503:
        message = error_of(flow)["error"]["message"]
        assert "127.0.0.1" in message and "hunter2" not in message
        assert pipeline.store.asked == []
    assert "hunter2" not in pipeline.journal_bytes().decode()
