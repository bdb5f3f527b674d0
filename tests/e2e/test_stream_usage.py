"""Streamed token usage through the real proxy: egressguard asks OpenAI for it when the
agent did not, hides what that adds from the agent, and records the counts.

Agents are the official openai and anthropic SDKs and curl; the fake vendor records
the body that reached it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import AnthropicFactory, OpenAIFactory

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
ASKED = {"include_usage": True}


def record_for(stack: Stack, request_id: str) -> dict:
    """A streamed response's record is durable before the stream's end-of-message is
    sent, but SDKs stop reading at the last event, so wait (bounded) for it."""
    wait_until(lambda: any(r["id"] == request_id for r in stack.records()), timeout=5,
               what=f"record {request_id}")
    [record] = [r for r in stack.records() if r["id"] == request_id]
    return record


def fake_input_tokens(received: dict) -> int:
    """What the fake vendor counts as input: a quarter of the body it received."""
    return max(1, len(received["body"].encode()) // 4)


def test_openai_stream_is_asked_for_usage_the_agent_does_not_see(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    client = openai_client(api_key=stack.token("quiet-streamer"))
    stack.reset_received()
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HELLO, stream=True
    ) as raw:
        rid = raw.headers["x-egressguard-request-id"]
        chunks = list(raw.parse())

    [got] = stack.received()
    assert orjson.loads(got["body"])["stream_options"] == ASKED
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from fake openai"
    assert all(c.choices for c in chunks)  # no usage-only last chunk
    assert not [c for c in chunks if "usage" in c.model_fields_set]  # nor "usage": null
    assert record_for(stack, rid)["usage"] == {"input_tokens": fake_input_tokens(got),
                                               "output_tokens": 4}


def test_openai_stream_the_agent_asked_usage_of_is_unchanged(
    stack: Stack, keys: dict, openai_client: OpenAIFactory
) -> None:
    client = openai_client(api_key=stack.token("counting-streamer"))
    stack.reset_received()
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options=ASKED
    ) as raw:
        rid = raw.headers["x-egressguard-request-id"]
        chunks = list(raw.parse())

    [got] = stack.received()
    assert orjson.loads(got["body"])["stream_options"] == ASKED
    *content, last = chunks
    assert all("usage" in c.model_fields_set and c.usage is None for c in content)
    assert last.choices == [] and last.usage is not None
    assert record_for(stack, rid)["usage"] == {"input_tokens": last.usage.prompt_tokens,
                                               "output_tokens": last.usage.completion_tokens}


def test_curl_sees_the_raw_stream_it_asked_for(stack: Stack, keys: dict, tmp_path: Path) -> None:
    token = stack.token("curl-streamer")
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    head = tmp_path / "headers"
    out = subprocess.run(
        ["curl", "-sS", "-N", "--max-time", "20", "--proxy", stack.proxy,
         "--proxy-user", f"curl-streamer:{token}", "--cacert", str(stack.ca_cert),
         "-D", str(head), "-H", "Authorization: Bearer placeholder",
         "-H", "content-type: application/json", "-d", orjson.dumps(body).decode(),
         "https://api.openai.com/v1/chat/completions"],
        capture_output=True, check=True, timeout=30,
    ).stdout

    events = out.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert len(events) == 8  # role, four words, finish, [DONE]: exactly as without usage
    assert b"usage" not in out
    rid = next(line.split(b":", 1)[1].strip().decode() for line in head.read_bytes().splitlines()
               if line.lower().startswith(b"x-egressguard-request-id:"))
    assert record_for(stack, rid)["usage"]["output_tokens"] == 4


def test_anthropic_stream_records_input_and_output_tokens(
    stack: Stack, keys: dict, anthropic_client: AnthropicFactory
) -> None:
    client = anthropic_client(api_key=stack.token("claude-streamer"))
    stack.reset_received()
    with client.messages.with_streaming_response.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=HELLO, stream=True
    ) as raw:
        rid = raw.headers["x-egressguard-request-id"]
        events = list(raw.parse())

    [got] = stack.received()
    assert "stream_options" not in orjson.loads(got["body"])  # only OpenAI-style chat
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert record_for(stack, rid)["usage"] == {"input_tokens": fake_input_tokens(got),
                                               "output_tokens": 4}
