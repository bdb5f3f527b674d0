"""Agents reach vendors through the real proxy with the real key injected from OpenBao.

Agents are the official openai and anthropic SDKs and curl; the vendor is the local
TLS fake, which records exactly what arrived.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import anthropic
import openai
import orjson
import pytest

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import AnthropicFactory, OpenAIFactory, headers_of

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]


def record_for(stack: Stack, request_id: str) -> dict:
    """The one journal record of a request: on disk before the agent has its response."""
    matches = [r for r in stack.records() if r["id"] == request_id]
    assert len(matches) == 1, f"expected one record for {request_id}, found {len(matches)}"
    return matches[0]


def streamed_record_for(stack: Stack, request_id: str) -> dict:
    """A streamed response's record is durable before the stream's end-of-message is
    sent, but SDKs stop reading at the last event, so wait (bounded) for it."""
    wait_until(
        lambda: any(r["id"] == request_id for r in stack.records()),
        timeout=5,
        what=f"record {request_id}",
    )
    return record_for(stack, request_id)


def curl(
    stack: Stack, url: str, *args: str, proxy_user: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    cmd = [
        "curl",
        "-sS",
        "-i",
        "--max-time",
        "20",
        "--proxy",
        stack.proxy,
        "--cacert",
        str(stack.ca_cert),
        *args,
        url,
    ]
    if proxy_user:
        cmd[1:1] = ["--proxy-user", proxy_user]
    out = subprocess.run(cmd, capture_output=True, check=False, timeout=30).stdout
    # skip the CONNECT response block(s), keep the last response
    blocks = out.split(b"\r\n\r\n")
    while len(blocks) > 1 and blocks[0].startswith(b"HTTP/1.1 200 Connection established"):
        blocks.pop(0)
    head, body = blocks[0], b"\r\n\r\n".join(blocks[1:])
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP") else 0
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# -- the key swap ------------------------------------------------------------------------
def test_openai_sdk_gets_answer_with_real_key_injected(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    token = stack.token("sdk-agent", team="research")
    client = openai_client(api_key=token)
    stack.reset_received()

    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    answer = raw.parse()

    assert answer.choices[0].message.content == "Hello from fake openai"
    [got] = stack.received()
    auth = [v for k, v in headers_of(got) if k in ("authorization", "x-api-key", "api-key")]
    assert auth == [f"Bearer {keys['openai']}"]  # the real key, once, in OpenAI's scheme
    assert token not in orjson.dumps(got["headers"]).decode()  # the placeholder never left
    assert keys["openai"] not in raw.http_response.text  # nor did the agent see the key
    record = record_for(stack, raw.headers["x-egressguard-request-id"])
    assert (
        record
        | {
            "agent": "sdk-agent",
            "team": "research",
            "vendor": "openai",
            "model": "gpt-4o",
            "status": 200,
            "decision": "allow",
        }
        == record
    )
    assert record["usage"] == {
        "input_tokens": answer.usage.prompt_tokens,
        "output_tokens": answer.usage.completion_tokens,
    }
    assert record["credential"]["path"] == "secret/egressguard/vendors/openai"
    assert keys["openai"] not in orjson.dumps(record).decode()


def test_openai_sdk_streams_without_buffering(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    client = openai_client(api_key=stack.token("streamer"))
    arrivals, text = [], []
    with client.chat.completions.with_streaming_response.create(
        model="slow-stream", messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as raw:
        rid = raw.headers["x-egressguard-request-id"]
        for chunk in raw.parse():
            arrivals.append(time.monotonic())
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)

    assert "".join(text) == "Hello from fake openai"
    # The fake pauses 0.3 s between events: buffered, they would arrive together.
    assert arrivals[-1] - arrivals[0] > 1.0
    assert sum(b - a > 0.2 for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 4
    record = streamed_record_for(stack, rid)
    assert record["stream"] is True and record["usage"]["output_tokens"] == 4


def test_every_request_on_a_kept_alive_tunnel_gets_the_key(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    # The upstream map routes every request of the tunnel to the fake vendor; the key
    # stays bound to the name the agent asked for, and the upstream connection is
    # reused: mitmproxy keeps at most 5 per address and client, so a new connection
    # per request would stall the sixth.
    client = openai_client(api_key=stack.token("keepalive-agent"))
    stack.reset_received()
    for _ in range(8):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    got = stack.received()
    assert [[v for k, v in headers_of(r) if k == "authorization"] for r in got] == [
        [f"Bearer {keys['openai']}"]
    ] * 8
    assert {r["host"] for r in stack.records()[-8:]} == {"api.openai.com"}


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_gets_real_key_in_x_api_key(
    stack: Stack, keys: dict, stream: bool, anthropic_client: AnthropicFactory
) -> None:
    token = stack.token("claude-agent")
    client = anthropic_client(api_key=token)
    stack.reset_received()
    if stream:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=HELLO) as s:
            text = "".join(s.text_stream)
    else:
        msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=HELLO)
        text = msg.content[0].text

    assert text == "Hello from fake anthropic"
    [got] = stack.received()
    creds = [(k, v) for k, v in headers_of(got) if k in ("authorization", "x-api-key")]
    assert creds == [("x-api-key", keys["anthropic"])]
    assert token not in orjson.dumps(got).decode()


def test_curl_with_proxy_credentials_and_a_placeholder_key(stack: Stack, keys: dict) -> None:
    token = stack.token("curl-agent")
    stack.reset_received()
    status, headers, body = curl(
        stack,
        "https://api.openai.com/v1/chat/completions",
        "-H",
        "Authorization: Bearer placeholder",
        "-H",
        "content-type: application/json",
        "-d",
        orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO}).decode(),
        proxy_user=f"curl-agent:{token}",
    )

    assert status == 200, body
    [got] = stack.received()
    assert [v for k, v in headers_of(got) if k == "authorization"] == [f"Bearer {keys['openai']}"]
    assert not [k for k, _ in headers_of(got) if k == "proxy-authorization"]
    assert record_for(stack, headers["x-egressguard-request-id"])["agent"] == "curl-agent"


def test_gemini_key_in_query_is_replaced_by_header(stack: Stack, keys: dict) -> None:
    token = stack.token("gemini-agent")
    stack.reset_received()
    status, _, body = curl(
        stack,
        f"https://generativelanguage.googleapis.com/v1beta/models/"
        f"gemini-2.0-flash:generateContent?key={token}&alt=json",
        "-H",
        "content-type: application/json",
        "-d",
        '{"contents":[{"parts":[{"text":"hi"}]}]}',
    )

    assert status == 200, body
    [got] = stack.received()
    assert "key=" not in got["query"] and "alt=json" in got["query"]
    assert [v for k, v in headers_of(got) if k == "x-goog-api-key"] == [keys["google"]]


def test_token_quoted_in_the_prompt_is_not_replaced(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    token = stack.token("quoting-agent")
    client = openai_client(api_key=token)
    stack.reset_received()
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"my key is {token}"}]
    )
    [got] = stack.received()
    assert token in got["body"] and keys["openai"] not in got["body"]


def test_vendor_echo_of_the_real_key_is_scrubbed(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    client = openai_client(api_key=stack.token("echo-agent"))
    answer = client.chat.completions.create(model="echo-headers", messages=HELLO)
    content = answer.choices[0].message.content
    assert "authorization" in content.lower()  # the fake did echo the header
    assert keys["openai"] not in content and "[redacted by egressguard]" in content


# -- refusals ------------------------------------------------------------------------------
def test_no_identity_is_refused_with_a_message_that_says_what_to_do(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    stack.reset_received()
    client = openai_client(api_key="placeholder")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert "egressguard token issue" in str(caught.value)
    assert caught.value.status_code == 401
    assert stack.received() == []


def test_expired_and_revoked_tokens_are_refused(
    stack: Stack, keys: dict, anthropic_client: AnthropicFactory
) -> None:
    expired = stack.token("old-agent", ttl=1, issued_at=time.time() - 60)
    revoked = stack.token("gone-agent")
    stack.revoke(revoked)
    stack.reset_received()
    for token, words in ((expired, "expired"), (revoked, "revoked")):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            anthropic_client(token).messages.create(
                model="claude-sonnet-4-5", max_tokens=8, messages=HELLO
            )
        assert words in str(caught.value)
    assert stack.received() == []
    reasons = {r["reason"] for r in stack.records() if r["decision"] == "deny"}
    assert {"token_expired", "token_revoked"} <= reasons


def test_a_real_vendor_key_sent_by_an_agent_is_refused_and_audited(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    leaked = "sk-proj-" + "Q" * 40
    client = openai_client(
        api_key=leaked, proxy=stack.proxy_url("leaky-agent", stack.token("leaky-agent"))
    )
    stack.reset_received()
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert "real openai API key" in str(caught.value) and leaked not in str(caught.value)
    assert stack.received() == []
    record = [r for r in stack.records() if r["reason"] == "real_key_presented"][-1]
    assert record["agent"] == "leaky-agent" and leaked not in orjson.dumps(record).decode()


def test_unknown_host_is_refused_at_connect_and_audited(stack: Stack) -> None:
    status, _, _ = curl(stack, "https://example.com/", proxy_user=f"a:{stack.token('a')}")
    assert status == 403  # the CONNECT itself is refused: no tunnel, no TLS

    with socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=10) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        answer = b""
        while b"}}" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"not a model vendor" in answer and b"passthrough" in answer
    denied = [r for r in stack.records() if r["host"] == "example.com"]
    assert len(denied) == 2
    assert all(r["kind"] == "connect" and r["decision"] == "deny" for r in denied)
    assert {r["reason"] for r in denied} == {"destination_denied"}


def test_host_header_must_match_the_tunnel(stack: Stack, keys: dict) -> None:
    stack.reset_received()
    status, _, body = curl(
        stack,
        "https://api.openai.com/v1/messages",
        "-H",
        "Host: api.anthropic.com",
        "-H",
        f"x-api-key: {stack.token('fronting-agent')}",
        "-d",
        "{}",
    )
    assert status == 403 and b"host_mismatch" in body
    assert stack.received() == []


def test_missing_key_in_vault_is_a_503_in_the_vendors_shape(stack: Stack) -> None:
    status, _, body = curl(
        stack,
        "https://api.mistral.ai/v1/chat/completions",
        "-H",
        f"Authorization: Bearer {stack.token('m')}",
        "-H",
        "content-type: application/json",
        "-d",
        '{"model":"x"}',
    )
    error = orjson.loads(body)["error"]
    assert status == 503 and error["code"] == "secret_missing"
    assert "egressguard secrets put mistral" in error["message"]


# -- the journal ---------------------------------------------------------------------------
def test_every_request_has_exactly_one_record_and_the_chain_verifies(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    client = openai_client(api_key=stack.token("counter"))
    ids = []
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
        ids.append(raw.headers["x-egressguard-request-id"])
        assert record_for(stack, ids[-1])["status"] == 200  # on disk before we got it
    all_ids = [r["id"] for r in stack.records()]
    assert len(all_ids) == len(set(all_ids))
    verify = subprocess.run(
        [sys.executable, "-m", "egressguard.cli", "audit", "verify", str(stack.journal)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith(f"OK {len(all_ids)} records (seq 1-{len(all_ids)})")
