"""Key pools, retries, vendor failover, model routing and the response cache, end to end:
the real SDKs through the proxy, keys in OpenBao, a fake vendor told to fail."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from egressguard.tools.procs import free_port, wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import AnthropicFactory, OpenAIFactory, fake_key, headers_of
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e
REPO = Path(__file__).parents[2]
METRICS = free_port()
HELLO = [{"role": "user", "content": "Say hello"}]
POLICY = """\
version: 1
prices: prices.yaml
teams: {interns: {}}
agents: {pooled: {}, pooled-too: {}, retried: {}, failover: {}, azure: {}, routed: {},
         cached: {}, breaker: {}}
rules:
  - name: pooled
    match: {agents: [pooled]}
    key_pool: {keys: [pool/openai/a, pool/openai/b], pick: round_robin}
  - name: pooled-too
    match: {agents: [pooled-too]}
    key_pool: [pool/openai/c, pool/openai/d]
  - name: retried
    match: {agents: [retried]}
    retry: {attempts: 3, within: 10s, backoff: 10ms}
  - name: failover
    match: {agents: [failover], vendors: [openai]}
    retry: 2
    fallback:
      - {vendor: anthropic, model: claude-3-5-haiku-latest}
  - name: failover-back
    match: {agents: [failover], vendors: [anthropic]}
    fallback: {vendor: openai, model: gpt-4o-mini}
  - name: breaker
    match: {agents: [breaker]}
    retry: 2
    fallback: {vendor: anthropic, model: claude-3-5-haiku-latest}
  - name: azure
    match: {agents: [azure]}
    fallback: {vendor: azure_openai, host: myco.openai.azure.com, model: gpt-4o,
               deployment: prod-4o}
  - name: routed
    match: {agents: [routed]}
    models: ["gpt-4o-mini", "gpt-4o"]
    route:
      aliases: {fast: gpt-4o-mini}
      teams: {interns: {"gpt-4o": gpt-4o-mini}}
  - name: cached
    match: {agents: [cached]}
    cache: {exact: {ttl: 1h}, semantic: {threshold: 0.9}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("resilience")
    (work / "policy.yaml").write_text(POLICY)
    shutil.copy(REPO / "policies/prices.yaml", work / "prices.yaml")
    with Stack(work, policy=work / "policy.yaml",
               proxy_args=("--metrics-listen", f"127.0.0.1:{METRICS}")) as s:
        for vendor in ("openai", "anthropic"):
            s.put_key(vendor, fake_key(f"sk-{vendor}-"))
        for name in "abcd":
            s.vault.put_secret(f"pool/openai/{name}",
                               {"api_key": fake_key("sk-pool-") + name.upper() * 4})
        s.vault.put_secret("egressguard/vendors/azure_openai",
                           {"api_key": "a" * 32})
        yield s


@pytest.fixture(autouse=True)
def clean(stack: Stack) -> None:
    stack.reset_received()  # faults too


def record(stack: Stack, request_id: str) -> dict[str, Any]:
    return wait_until(lambda: next((r for r in stack.records() if r["id"] == request_id), None),
                      timeout=10, what=f"record {request_id}")


def keys_sent(stack: Stack) -> list[str]:
    return [dict(headers_of(r)).get("authorization", dict(headers_of(r)).get("api-key", ""))
            [-4:] for r in stack.received()]


def metrics() -> str:
    return httpx.get(f"http://127.0.0.1:{METRICS}/metrics", trust_env=False, timeout=5).text


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=extra.pop("model", "gpt-4o"), messages=extra.pop("messages", HELLO),  # type: ignore[arg-type]
        **extra)


def test_a_key_answered_429_rests_and_the_agent_never_notices(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"key": "AAAA", "status": 429, "retry_after": 30})
    client = openai_client(stack.token("pooled"))
    answers = [chat(client) for _ in range(4)]
    assert all(a.parse().choices[0].message.content for a in answers)
    # A answered 429 once and then rested: every later request went to B alone
    assert keys_sent(stack).count("AAAA") == 1 and keys_sent(stack).count("BBBB") == 4
    tried = [record(stack, a.headers["x-egressguard-request-id"])["attempts"] for a in answers]
    first = next(t for t in tried if len(t) == 2)
    assert [(a["key"], a["status"]) for a in first] == [("secret/pool/openai/a", 429),
                                                         ("secret/pool/openai/b", 200)]


def test_a_key_answered_401_is_taken_out_and_reported(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"key": "DDDD", "status": 401})
    client = openai_client(stack.token("pooled-too"))
    for _ in range(3):
        assert chat(client).parse().choices[0].message.content
    assert keys_sent(stack).count("DDDD") == 1 and keys_sent(stack).count("CCCC") == 3
    assert "key pool/openai/d taken out of its pool: the vendor answered 401" in \
        stack.proxy_output()
    assert 'egressguard_pool_key_state{key="pool/openai/d",state="refused"} 1' in metrics()


def test_5xx_and_dropped_connections_are_retried_before_the_first_byte(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"status": 503, "times": 1}, {"status": 0, "times": 1})
    client = openai_client(stack.token("retried"))
    raw = chat(client, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Hello from fake openai"
    attempts = record(stack, raw.headers["x-egressguard-request-id"])["attempts"]
    assert [a["status"] for a in attempts] == [503, 0, 200]
    assert attempts[1]["error"]


def test_never_after_streaming_began(stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"after_bytes": 60})
    client = openai_client(stack.token("retried"))
    with pytest.raises(openai.APIError):
        raw = chat(client, stream=True)
        list(raw.parse())
    assert len(stack.received()) == 1  # the agent had bytes: no second attempt


def test_every_attempt_failing_gives_the_vendors_own_last_answer(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"status": 500})
    client = openai_client(stack.token("retried"))
    with pytest.raises(openai.InternalServerError) as failed:
        chat(client)
    assert failed.value.status_code == 500 and len(stack.received()) == 3


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
def test_openai_fails_over_to_anthropic_in_the_openai_shape(
        stack: Stack, openai_client: OpenAIFactory, stream: bool) -> None:
    stack.fail({"vendor": "openai", "status": 503})
    client = openai_client(stack.token("failover"))
    raw = chat(client, stream=stream, max_tokens=50,
               messages=[{"role": "system", "content": "Be brief."}, *HELLO])
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        answer = raw.parse()
        text, model = answer.choices[0].message.content, answer.model
        assert model == "claude-3-5-haiku-latest"
    assert text == "Hello from fake anthropic"
    sent = stack.received()
    assert [r["path"] for r in sent] == ["/v1/chat/completions"] * 2 + ["/v1/messages"]
    assert json.loads(sent[-1]["body"])["system"] == "Be brief."
    rec = record(stack, raw.headers["x-egressguard-request-id"])
    assert rec["served_by"] == {"vendor": "anthropic", "model": "claude-3-5-haiku-latest"}
    assert rec["vendor"] == "openai" and rec["usage"]["output_tokens"] > 0
    assert rec["spend_usd"] > 0  # at the fallback's price
    assert 'egressguard_failovers_total{vendor="openai",fallback="anthropic"}' in metrics()


def test_anthropic_fails_over_to_openai_in_the_anthropic_shape(
        stack: Stack, anthropic_client: AnthropicFactory) -> None:
    stack.fail({"vendor": "anthropic", "status": 529})
    client = anthropic_client(stack.token("failover"))
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=50,
                                messages=HELLO) as stream:  # type: ignore[arg-type]
        message = stream.get_final_message()
    assert message.content[0].text == "Hello from fake openai"  # type: ignore[union-attr]
    assert message.model == "gpt-4o-mini" and message.usage.output_tokens > 0


def test_a_vendor_that_keeps_failing_is_skipped_for_its_fallback(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"vendor": "openai", "status": 503})
    client = openai_client(stack.token("breaker"))
    for _ in range(3):  # each: two attempts at OpenAI, then Anthropic
        assert chat(client).parse().choices[0].message.content == "Hello from fake anthropic"
    stack.reset_received()  # faults too: OpenAI is back, but the breaker does not know yet
    answer = chat(client)
    assert answer.parse().choices[0].message.content == "Hello from fake anthropic"
    assert [r["path"] for r in stack.received()] == ["/v1/messages"]
    attempts = record(stack, answer.headers["x-egressguard-request-id"])["attempts"]
    assert attempts[0]["status"] is None and "fallback goes first" in attempts[0]["error"]
    assert "rule breaker: its vendor failed 3 requests in a row" in stack.proxy_output()


def test_openai_fails_over_to_azure(stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"vendor": "openai", "status": 502})
    answer = chat(openai_client(stack.token("azure")))
    assert answer.parse().choices[0].message.content
    azure = stack.received()[-1]
    assert azure["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert ("api-key", "a" * 32) in headers_of(azure)


def test_a_request_that_cannot_be_translated_does_not_fail_over(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"vendor": "openai", "status": 503})
    with pytest.raises(openai.InternalServerError):
        chat(openai_client(stack.token("failover")), n=2)
    assert all(r["path"] == "/v1/chat/completions" for r in stack.received())


def test_a_fallback_that_refuses_too_leaves_the_agent_its_own_vendors_failure(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    stack.fail({"vendor": "openai", "status": 503}, {"vendor": "anthropic", "status": 400})
    with pytest.raises(openai.InternalServerError) as failed:
        chat(openai_client(stack.token("failover")))
    assert failed.value.status_code == 503  # OpenAI's, in OpenAI's shape
    assert "/v1/messages" in [r["path"] for r in stack.received()]


def test_routing_rewrites_the_model_and_the_record_keeps_both(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    answer = chat(openai_client(stack.token("routed")), model="fast")
    assert answer.parse().model == "gpt-4o-mini"
    rec = record(stack, answer.headers["x-egressguard-request-id"])
    assert rec["model"] == "gpt-4o-mini"
    assert rec["routing"] == {"requested_model": "fast", "model": "gpt-4o-mini",
                              "by": ["alias"]}
    intern = chat(openai_client(stack.token("routed", team="interns")))
    rec = record(stack, intern.headers["x-egressguard-request-id"])
    assert rec["routing"]["by"] == ["team"] and rec["savings"]["routing_usd"] > 0
    assert json.loads(stack.received()[-1]["body"])["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
def test_deterministic_answers_come_from_the_cache(
        stack: Stack, openai_client: OpenAIFactory, stream: bool) -> None:
    client = openai_client(stack.token("cached"))
    question = [{"role": "user", "content": f"What is the capital of France? ({stream})"}]

    def ask() -> tuple[str, dict[str, Any]]:
        raw = chat(client, messages=question, temperature=0, stream=stream)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content
        return text, record(stack, raw.headers["x-egressguard-request-id"])

    first, miss = ask()
    wait_until(lambda: ask()[1]["cache"]["status"] == "hit", timeout=10, what="a cache hit")
    sent = len(stack.received())
    second, hit = ask()
    assert first == second and miss["cache"] == {"status": "miss"}
    assert hit["cache"] == {"status": "hit", "kind": "exact"} and hit["attempts"] is None
    assert hit["usage"] is None and hit["spend_usd"] == 0.0
    assert hit["savings"]["cache_tokens"] > 0 and hit["savings"]["cache_usd"] > 0
    assert len(stack.received()) == sent  # the vendor was not asked


def test_similar_questions_hit_the_semantic_cache_and_sampled_ones_bypass(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    client = openai_client(stack.token("cached"))

    def ask(question: str) -> dict[str, Any]:
        raw = chat(client, temperature=0, messages=[{"role": "user", "content": question}])
        return record(stack, raw.headers["x-egressguard-request-id"])

    # stored once it is an exact hit (and indexed before it is stored)
    wait_until(lambda: ask("How do I reset my password?")["cache"]["status"] == "hit",
               timeout=10, what="the first answer stored")
    similar = ask("What are the steps to reset my password?")
    assert similar["cache"]["kind"] == "semantic" and similar["cache"]["similarity"] >= 0.9
    sampled = chat(client, temperature=0.7)
    assert record(stack, sampled.headers["x-egressguard-request-id"])["cache"]["status"] == \
        "bypass"


def test_replicas_share_cached_answers_through_redis(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    """An answer one replica bought is served by the other from Redis; with Redis gone a
    lookup is a miss and the request is answered by the vendor, never refused."""
    question = [{"role": "user", "content": "Which port does HTTPS use?"}]
    with RedisServer() as redis_server:
        flags = ("--cache-store", redis_server.url)
        with stack.replica("cache-a", proxy_args=flags) as a, \
                stack.replica("cache-b", proxy_args=flags) as b:
            via_a = openai_client(a.token("cached"), proxy=a.proxy)
            via_b = openai_client(b.token("cached"), proxy=b.proxy)
            first = chat(via_a, messages=question, temperature=0)
            assert record(a, first.headers["x-egressguard-request-id"])["cache"] == \
                {"status": "miss"}
            hit = wait_until(lambda: (r := record(b, chat(via_b, messages=question,
                                                          temperature=0).headers[
                "x-egressguard-request-id"]))["cache"]["status"] == "hit" and r,
                timeout=10, what="replica b to answer from a's cached answer")
            assert hit["cache"]["kind"] == "exact"
            sent = len(stack.received())  # (b may have asked once before a had stored it)
            assert chat(via_b, messages=question, temperature=0).parse().choices[0]
            assert len(stack.received()) == sent  # b answered from Redis
            redis_server.stop()
            other = [{"role": "user", "content": "Which port does SSH use?"}]
            down = chat(via_b, messages=other, temperature=0)
            assert down.parse().choices[0].message.content
            assert record(b, down.headers["x-egressguard-request-id"])["cache"] == \
                {"status": "miss"}
