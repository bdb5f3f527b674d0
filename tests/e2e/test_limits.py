"""Rate limits, budgets and max_tokens clamps through the real proxy, with counters in
the proxy process and shared by two proxy processes through one real redis-server.

Agents are the official openai and anthropic SDKs and curl (for bodies of an exact
size, so token and spend figures can be worked out by hand). The fake vendor reports
usage deterministically: input tokens = a quarter of the body it received (rounded
down), output tokens = 4 ("Hello from fake openai"). The proxy reserves an estimate
before forwarding: ceil(body bytes / 4) input + max_tokens (4096 if unset) output.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
import redis

from egressguard.tools.stack import REPO_POLICY, Stack
from tests.e2e.conftest import AnthropicFactory, OpenAIFactory
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
RID = "x-egressguard-request-id"
FAKE_OUTPUT_TOKENS = 4  # what the fake vendor reports for every chat answer

# Test 2: a 400-byte body asking for 1000 output tokens is estimated at 100 + 1000;
# the vendor reports 100 + 4. The budget fits one estimate plus three real requests.
BUDGET_BODY_BYTES, BUDGET_MAX_TOKENS = 400, 1000
BUDGET_ESTIMATE = BUDGET_BODY_BYTES // 4 + BUDGET_MAX_TOKENS  # 1100
BUDGET_ACTUAL = BUDGET_BODY_BYTES // 4 + FAKE_OUTPUT_TOKENS  # 104
TOKENS_PER_DAY = BUDGET_ESTIMATE + 3 * BUDGET_ACTUAL  # 1412

# Test 3: gpt-4o at $2.50 / $10.00 per million tokens (policies/prices.yaml). A
# 40,000-byte body with max_tokens 1 is estimated at 10,000 in + 1 out = $0.02501;
# the vendor reports 10,000 in + 4 out = $0.02504.
SPEND_BODY_BYTES = 40_000
SPEND_ESTIMATE_MICROS = 10_000 * 2_500_000 // 10**6 + 1 * 10  # 25,010 micro-USD
SPEND_ACTUAL_MICROS = 10_000 * 2_500_000 // 10**6 + 4 * 10  # 25,040 micro-USD

POLICY = f"""\
version: 1
prices: {REPO_POLICY.parent / "prices.yaml"}
teams:
  finance: {{limits: {{spend_per_day: 0.10}}}}
  shared: {{limits: {{requests_per_minute: 5}}}}
agents:
  rpm-agent: {{limits: {{requests_per_minute: 3}}}}
  rpm-claude: {{limits: {{requests_per_minute: 3}}}}
  budget-agent: {{}}
  clamp-agent: {{}}
  spender: {{team: finance}}
  worker-a: {{team: shared}}
  worker-b: {{team: shared}}
  redis-agent: {{limits: {{requests_per_minute: 1000}}}}
rules:
  - name: clamped
    match: {{agents: [clamp-agent]}}
    max_tokens: 100
    limits:
      agent: {{tokens_per_minute: 1000000}}
  - name: token-budget
    match: {{agents: [budget-agent]}}
    limits:
      agent: {{tokens_per_day: {TOKENS_PER_DAY}}}
  - name: everything
"""


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test policy, and the same with `on_limits_unavailable: allow`."""
    where = tmp_path_factory.mktemp("limits-policies")
    (deny := where / "policy.yaml").write_text(POLICY)
    (allow := where / "allow.yaml").write_text(POLICY + "on_limits_unavailable: allow\n")
    return {"deny": deny, "allow": allow}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, policies: dict[str, Path]) -> Iterator[Stack]:
    """One proxy with in-process counters (replicas are added by the Redis tests)."""
    with Stack(tmp_path_factory.mktemp("limits"), policy=policies["deny"]) as s:
        yield s


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password="pw-" + secrets.token_hex(12)) as server:
        yield server


# -- helpers -----------------------------------------------------------------------------
@dataclass
class Sent:
    """What an agent got back for one request."""

    status: int
    request_id: str
    headers: httpx.Headers
    error: openai.APIStatusError | None = None


def chat(client: openai.OpenAI, **kwargs: object) -> Sent:
    """One chat completion through the proxy; a refusal is returned, not raised."""
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=kwargs.pop("model", "gpt-4o-mini"), messages=HELLO, **kwargs)
    except openai.APIStatusError as exc:
        return Sent(exc.status_code, exc.response.headers[RID], exc.response.headers, exc)
    return Sent(raw.http_response.status_code, raw.headers[RID], raw.headers)


def body_of_size(size: int, model: str, max_tokens: int) -> bytes:
    """A chat request body of exactly `size` bytes."""
    def make(content: str) -> bytes:
        return orjson.dumps({"model": model, "max_tokens": max_tokens,
                             "messages": [{"role": "user", "content": content}]})

    body = make("x" * (size - len(make(""))))
    assert len(body) == size
    return body


def curl_chat(stack: Stack, token: str, body: bytes, tmp: Path) -> tuple[int, dict, dict]:
    """POST `body` byte for byte to OpenAI's chat endpoint through `stack`'s proxy with
    curl: (status, response headers, response JSON)."""
    sent, head, out = tmp / "sent.json", tmp / "headers.txt", tmp / "answer.json"
    sent.write_bytes(body)
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--proxy", stack.proxy, "--cacert",
         str(stack.ca_cert), "-H", f"Authorization: Bearer {token}", "-H",
         "content-type: application/json", "--data-binary", f"@{sent}", "-D", str(head),
         "-o", str(out), "-w", "%{http_code}", "https://api.openai.com/v1/chat/completions"],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    # -D also holds the proxy's answer to CONNECT: the last block is the response's
    last = [b for b in head.read_bytes().decode().split("\r\n\r\n") if b.strip()][-1]
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(":") for line in last.split("\r\n")[1:])}
    return int(done.stdout), headers, orjson.loads(out.read_bytes())


def record_of(stack: Stack, request_id: str) -> dict:
    """The one record of a request (durable before the agent had its answer)."""
    [record] = [r for r in stack.records() if r["id"] == request_id]
    return record


def retry_after(headers: httpx.Headers | dict) -> int:
    value = headers["retry-after"]
    assert value.isdigit() and int(value) >= 1, value  # whole seconds, at least one
    return int(value)


# -- in process --------------------------------------------------------------------------
def test_requests_per_minute_refuses_the_fourth_with_openai_rate_limit_error(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    """An agent limited to 3 requests a minute gets 3 answers; the 4th is a 429 with
    Retry-After that the openai SDK raises as RateLimitError naming the limit and the
    agent, never forwarded, and audited as limit_exceeded with the counter's state."""
    client = openai_client(api_key=stack.token("rpm-agent"))
    stack.reset_received()
    allowed = [chat(client) for _ in range(3)]
    assert [s.status for s in allowed] == [200] * 3
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)

    err = caught.value
    assert err.status_code == 429
    wait = retry_after(err.response.headers)
    assert "requests_per_minute" in err.message and "agent rpm-agent" in err.message
    assert err.body == {"message": err.body["message"], "type": "requests", "param": None,
                        "code": "limit_exceeded"}  # OpenAI's error shape
    assert len(stack.received()) == 3
    first = record_of(stack, allowed[0].request_id)
    assert first["decision"] == "allow" and first["limits"]["state"] == "reserved"
    assert first["limits"]["scopes"] == ["agent:rpm-agent"]
    assert first["limits"]["estimate"]["requests"] == 1
    refused = record_of(stack, err.response.headers[RID])
    assert (refused["decision"], refused["reason"], refused["rule"], refused["status"]) == \
        ("deny", "limit_exceeded", "everything", 429)
    assert refused["limits"] == {"state": "exceeded", "limit": "requests_per_minute",
                                 "scope": "agent:rpm-agent", "cap": 3, "used": 3, "needed": 1,
                                 "retry_after": wait}


def test_requests_per_minute_in_anthropic_shape(
    stack: Stack, keys: dict, anthropic_client: AnthropicFactory
) -> None:
    """The same limit for a Claude agent: anthropic.RateLimitError, with Anthropic's
    own error body ({"type": "error", "error": {"type": "rate_limit_error", ...}})."""
    client = anthropic_client(stack.token("rpm-claude"))
    for _ in range(3):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)

    err = caught.value
    retry_after(err.response.headers)
    body = err.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "requests_per_minute limit of 3" in body["error"]["message"]
    assert "agent rpm-claude" in body["error"]["message"]


def test_token_budget_is_settled_with_the_usage_the_vendor_reported(
    stack: Stack, keys: dict, tmp_path: Path
) -> None:
    """tokens_per_day 1412 holds one estimate (100 + 1000 tokens) but not two; the vendor
    reports 104 tokens a request, and each reservation is settled with that, so 4
    requests pass (3 x 104 + 1100 = 1412) and the 5th is refused with the counter at
    4 x 104 = 416: the budget counts real tokens, not estimates."""
    token = stack.token("budget-agent")
    body = body_of_size(BUDGET_BODY_BYTES, "gpt-4o-mini", BUDGET_MAX_TOKENS)
    stack.reset_received()
    answers = [curl_chat(stack, token, body, tmp_path) for _ in range(5)]

    assert [status for status, _, _ in answers] == [200] * 4 + [429]
    received = stack.received()
    assert len(received) == 4 and {r["body"].encode() for r in received} == {body}
    for _, headers, answer in answers[:4]:
        record = record_of(stack, headers[RID])
        assert record["limits"]["estimate"]["tokens"] == BUDGET_ESTIMATE
        assert answer["usage"]["total_tokens"] == BUDGET_ACTUAL
        assert record["usage"] == {"input_tokens": BUDGET_BODY_BYTES // 4,
                                   "output_tokens": FAKE_OUTPUT_TOKENS}
    _, headers, answer = answers[4]
    wait = retry_after(headers)
    message = answer["error"]["message"]
    assert answer["error"]["code"] == "limit_exceeded"
    assert message.startswith("agent budget-agent (rule token-budget) would go over its "
                              "tokens_per_day limit of 1,412 tokens (used 416 tokens, this "
                              "request 1,100 tokens)")
    refused = record_of(stack, headers[RID])
    assert (refused["decision"], refused["reason"], refused["rule"]) == \
        ("deny", "limit_exceeded", "token-budget")
    assert refused["limits"] == {
        "state": "exceeded", "limit": "tokens_per_day",
        "scope": "rule:token-budget/agent:budget-agent", "cap": TOKENS_PER_DAY,
        "used": 4 * BUDGET_ACTUAL, "needed": BUDGET_ESTIMATE, "retry_after": wait}


def test_spend_budget_refuses_once_the_dollars_are_spent(
    stack: Stack, keys: dict, tmp_path: Path
) -> None:
    """Team finance may spend $0.10 a day. Each request (10,000 input tokens of gpt-4o)
    costs $0.02504 as settled, so 3 pass and the 4th ($0.02501 estimated on top of
    $0.07512) is refused with a message in dollars."""
    token = stack.token("spender")
    body = body_of_size(SPEND_BODY_BYTES, "gpt-4o", 1)
    answers = [curl_chat(stack, token, body, tmp_path) for _ in range(4)]

    assert [status for status, _, _ in answers] == [200] * 3 + [429]
    first = record_of(stack, answers[0][1][RID])
    assert first["limits"]["scopes"] == ["team:finance"]
    assert first["limits"]["estimate"]["spend_usd"] == pytest.approx(
        SPEND_ESTIMATE_MICROS / 1e6)
    _, headers, answer = answers[3]
    wait = retry_after(headers)
    assert answer["error"]["message"].startswith(
        "team finance would go over its spend_per_day limit of $0.10 (used $0.08, this "
        "request $0.03)")
    refused = record_of(stack, headers[RID])
    assert refused["reason"] == "limit_exceeded"
    assert refused["limits"] == {
        "state": "exceeded", "limit": "spend_per_day", "scope": "team:finance",
        "cap": pytest.approx(0.10), "used": pytest.approx(3 * SPEND_ACTUAL_MICROS / 1e6),
        "needed": pytest.approx(SPEND_ESTIMATE_MICROS / 1e6), "retry_after": wait}


@pytest.mark.parametrize(("model", "asked", "field"), [
    ("gpt-4o", {"max_tokens": 500}, "max_tokens"),
    ("gpt-4o", {}, "max_tokens"),
    ("gpt-5", {"max_completion_tokens": 4000}, "max_completion_tokens"),
])
def test_max_tokens_is_clamped_before_the_vendor_sees_it(
    stack: Stack, keys: dict, openai_client: OpenAIFactory,
    model: str, asked: dict, field: str
) -> None:
    """A rule with `max_tokens: 100`: whatever the agent asked for (500, nothing, or
    4000 as gpt-5's max_completion_tokens) the vendor receives 100 in the field that
    model reads, the record says {from, to}, and the reservation counts 100 output
    tokens, not what was asked."""
    client = openai_client(api_key=stack.token("clamp-agent"))
    stack.reset_received()
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO,
                                                           **asked)

    [got] = stack.received()
    sent = orjson.loads(got["body"])
    other_field = ({"max_tokens", "max_completion_tokens"} - {field}).pop()
    assert sent[field] == 100 and other_field not in sent  # the field that model reads
    record = record_of(stack, raw.headers[RID])
    assert record["clamps"] == {"max_tokens": {"from": asked.get(field), "to": 100}}
    agent_bytes = len(raw.http_request.content)
    assert record["limits"]["estimate"]["tokens"] == -(-agent_bytes // 4) + 100


def test_max_tokens_under_the_cap_is_left_alone_and_anthropic_is_clamped_too(
    stack: Stack, keys: dict, openai_client: OpenAIFactory, anthropic_client: AnthropicFactory
) -> None:
    """50 is under the cap of 100: sent unchanged, no clamp recorded. An Anthropic
    request asking for 1000 is sent with max_tokens 100."""
    token = stack.token("clamp-agent")
    stack.reset_received()
    raw = openai_client(api_key=token).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, max_tokens=50)
    raw_claude = anthropic_client(token).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=1000, messages=HELLO)

    to_openai, to_anthropic = (orjson.loads(r["body"]) for r in stack.received())
    assert to_openai["max_tokens"] == 50 and to_anthropic["max_tokens"] == 100
    assert record_of(stack, raw.headers[RID])["clamps"] is None
    assert record_of(stack, raw_claude.headers[RID])["clamps"] == \
        {"max_tokens": {"from": 1000, "to": 100}}


# -- shared through Redis ----------------------------------------------------------------
def alternate(clients: list[openai.OpenAI], count: int) -> list[tuple[int, Sent]]:
    """`count` requests, the i-th through clients[i % len(clients)]: (which, outcome)."""
    return [(i % len(clients), chat(clients[i % len(clients)])) for i in range(count)]


def test_two_proxies_share_a_team_budget_through_one_redis(
    stack: Stack, keys: dict, openai_client: OpenAIFactory, redis_server: RedisServer
) -> None:
    """Team `shared` may send 5 requests a minute. Two proxy processes on one Redis,
    requests alternating between them (worker-a via A, worker-b via B): exactly 5 are
    answered in all, then both proxies refuse; their journals together hold 5 allows
    and the refusals, and Redis holds the team's counter at 5. The same two proxies
    with in-process counters each allow 5: 10 in all."""
    with stack.replica("redis-a", limits_store=redis_server.url) as a, \
            stack.replica("redis-b", limits_store=redis_server.url) as b:
        proxies = [a, b]
        clients = [openai_client(api_key=a.token("worker-a"), proxy=a.proxy),
                   openai_client(api_key=b.token("worker-b"), proxy=b.proxy)]
        stack.reset_received()
        shared = alternate(clients, 8)

        assert [sent.status for _, sent in shared] == [200] * 5 + [429] * 3
        assert {which for which, sent in shared if sent.status == 429} == {0, 1}
        assert len(stack.received()) == 5
        records = [record_of(proxies[which], sent.request_id) for which, sent in shared]
        assert [r["decision"] for r in records] == ["allow"] * 5 + ["deny"] * 3
        assert all(r["limits"]["scopes"] == ["team:shared"] for r in records[:5])
        for (_, sent), record in zip(shared[5:], records[5:], strict=True):
            assert isinstance(sent.error, openai.RateLimitError)
            assert "team shared is over its requests_per_minute limit of 5" in sent.error.message
            assert record["reason"] == "limit_exceeded"
            assert record["limits"] | {"retry_after": 0} == {
                "state": "exceeded", "limit": "requests_per_minute", "scope": "team:shared",
                "cap": 5, "used": 5, "needed": 1, "retry_after": 0}
            assert record["limits"]["retry_after"] == retry_after(sent.headers)
        # both journals together: nothing else was recorded for these agents
        ours = [r for p in proxies for r in p.records() if r["team"] == "shared"]
        assert sorted(r["decision"] for r in ours) == ["allow"] * 5 + ["deny"] * 3
        with redis.Redis.from_url(redis_server.url) as direct:
            keys_ = list(direct.scan_iter("egressguard:team:shared|requests_per_minute|*"))
            assert sum(int(direct.get(k) or 0) for k in keys_) == 5

        for proxy in proxies:  # the same two proxies, each counting on its own
            proxy.limits_store = ""
            proxy.stop_proxy()
            proxy.start_proxy()
        alone = alternate(clients, 12)

        assert [sent.status for _, sent in alone] == [200] * 10 + [429] * 2
        assert [which for which, sent in alone if sent.status == 429] == [0, 1]


def test_redis_down_denies_with_a_503_that_names_it_without_the_password(
    stack: Stack, keys: dict, openai_client: OpenAIFactory, redis_with_password: RedisServer
) -> None:
    """on_limits_unavailable: deny (the default). With Redis (password-protected) up, a
    request passes; with it stopped, the next is a 503 in OpenAI's shape naming the
    Redis address but not the password, nothing reaches the vendor, and the record says
    `limits.state: unavailable`. Redis restarted on the same port: requests pass again."""
    server = redis_with_password
    password = server.password
    assert password
    with stack.replica("redis-deny", limits_store=server.url) as proxy:
        client = openai_client(api_key=proxy.token("redis-agent"), proxy=proxy.proxy)
        assert chat(client).status == 200

        server.stop()
        stack.reset_received()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                             messages=HELLO)
        err = caught.value
        assert err.status_code == 503 and stack.received() == []
        assert err.body["code"] == "limits_unavailable"
        assert f"Redis at redis://127.0.0.1:{server.port}/0 cannot be reached" in err.message
        record = record_of(proxy, err.response.headers[RID])
        assert (record["decision"], record["reason"], record["status"]) == \
            ("deny", "limits_unavailable", 503)
        assert record["limits"] == {"state": "unavailable"}
        assert password not in err.response.text
        assert password not in orjson.dumps(proxy.records()).decode()
        assert password not in proxy.proxy_output()

        server.start()  # same port
        stack.reset_received()
        assert chat(client).status == 200
        assert len(stack.received()) == 1


def test_redis_down_with_on_limits_unavailable_allow_lets_requests_through(
    stack: Stack, keys: dict, openai_client: OpenAIFactory, redis_with_password: RedisServer,
    policies: dict[str, Path]
) -> None:
    """on_limits_unavailable: allow. With Redis stopped, the request is answered, the
    vendor receives it, and the record says `limits.state: unavailable_allowed`."""
    server = redis_with_password
    with stack.replica("redis-allow", policy=policies["allow"],
                       limits_store=server.url) as proxy:
        client = openai_client(api_key=proxy.token("redis-agent"), proxy=proxy.proxy)
        first = chat(client)
        assert record_of(proxy, first.request_id)["limits"]["state"] == "reserved"

        server.stop()
        stack.reset_received()
        sent = chat(client)

        assert sent.status == 200 and len(stack.received()) == 1
        record = record_of(proxy, sent.request_id)
        assert (record["decision"], record["limits"]) == \
            ("allow", {"state": "unavailable_allowed"})
        assert server.password and server.password not in proxy.proxy_output()
