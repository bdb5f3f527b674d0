"""The policy cannot be side-stepped through other endpoints, end to end: the official
openai and anthropic SDKs and curl through the real proxy to the fake vendor, keys in
a real OpenBao. What the vendor receives is read back from the fake vendor; every
refusal must also be in the audit journal.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from egressguard.core import forms
from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import AnthropicFactory, OpenAIFactory

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
BATCH_CAP, CAP = 64, 256
POLICY = f"""\
version: 1
agents: {{batcher: {{}}, plain: {{}}}}
rules:
  - name: no-expensive
    match: {{models: [gemini-2.5-pro, claude-opus-4-1]}}
    action: deny
    reason: expensive models are not for agents
  - name: batches
    match: {{agents: [batcher]}}
    endpoints: [chat, messages, batches, files]
    models: [gpt-4o-mini, claude-haiku-4-5]
    max_tokens: {BATCH_CAP}
  - name: everyone
    max_tokens: {CAP}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("sidestep")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    with Stack(workdir / "stack", policy=policy) as s:
        yield s


@pytest.fixture
def vendor(stack: Stack, keys: dict[str, str]) -> Stack:
    stack.reset_received()
    return stack


def received(stack: Stack, path: str) -> list[dict[str, Any]]:
    return [r for r in stack.received() if r["path"] == path]


def record_of(stack: Stack, reason: str) -> dict[str, Any]:
    """The latest audit record of a refusal for `reason`."""
    found: dict[str, Any] = wait_until(lambda: next(
        (r for r in reversed(stack.records()) if r.get("reason") == reason), None),
        timeout=10, what=f"an audit record for {reason}")
    return found


def test_an_openai_batch_file_is_capped_and_only_it_can_start_a_batch(
        vendor: Stack, openai_client: OpenAIFactory) -> None:
    client = openai_client(vendor.token("batcher"))
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": HELLO, **extra}}
             for i, extra in enumerate(({}, {"max_tokens": 4000}))]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    stored = client.files.create(file=("batch.jsonl", data), purpose="batch")
    [upload] = received(vendor, "/v1/files")
    body = upload["body"].encode()
    boundary = body.split(b"\r\n", 1)[0][2:].decode()
    parts = forms.parse(f"multipart/form-data; boundary={boundary}", body)
    sent = [orjson.loads(x) for x in parts["file"].data.splitlines()]
    assert [x["body"]["max_tokens"] for x in sent] == [BATCH_CAP, BATCH_CAP]

    batch = client.batches.create(input_file_id=stored.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.input_file_id == stored.id
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.batches.create(input_file_id="file-uploaded-elsewhere",
                              endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "batch_file_unknown"
    assert len(received(vendor, "/v1/batches")) == 1
    assert record_of(vendor, "batch_file_unknown")["status"] == 403


def test_a_batch_file_with_a_refused_model_never_reaches_the_vendor(
        vendor: Stack, openai_client: OpenAIFactory) -> None:
    client = openai_client(vendor.token("batcher"))
    line = {"custom_id": "big", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": HELLO}}
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.files.create(file=("b.jsonl", orjson.dumps(line)), purpose="batch")
    assert err.value.code == "model_not_allowed"
    assert "line 1 ('big') of the batch: model 'gpt-4o' is not allowed" in str(err.value)
    assert received(vendor, "/v1/files") == []


def test_an_anthropic_batch_has_each_request_governed(
        vendor: Stack, anthropic_client: AnthropicFactory) -> None:
    client = anthropic_client(vendor.token("batcher"))
    ok = client.messages.batches.create(requests=[
        {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 9000,
                                      "messages": HELLO}}])
    assert ok.processing_status == "in_progress"
    [sent] = received(vendor, "/v1/messages/batches")
    assert orjson.loads(sent["body"])["requests"][0]["params"]["max_tokens"] == BATCH_CAP
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        client.messages.batches.create(requests=[
            {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                          "messages": HELLO}},
            {"custom_id": "b", "params": {"model": "claude-opus-4-1", "max_tokens": 10,
                                          "messages": HELLO}}])
    assert "requests[1] ('b') of the batch: expensive models are not for agents" \
        in str(err.value)
    assert len(received(vendor, "/v1/messages/batches")) == 1


def test_endpoints_no_rule_names_are_refused_and_others_governed(
        vendor: Stack, openai_client: OpenAIFactory) -> None:
    client = openai_client(vendor.token("plain"))
    refusals = [
        lambda: client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-1"),
        lambda: client.beta.assistants.create(model="gpt-4o-mini"),
        lambda: client.realtime.client_secrets.create(),
        lambda: client.files.create(file=("x.txt", b"notes"), purpose="user_data"),
    ]
    for call in refusals:
        with pytest.raises(openai.PermissionDeniedError) as err:
            call()
        assert err.value.code == "endpoint_not_allowed"
        assert "allowed only by a rule that names it in `endpoints:`" in str(err.value)
    assert vendor.received() == []
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert answer.choices[0].message.content
    [chat] = received(vendor, "/v1/chat/completions")
    assert orjson.loads(chat["body"])["max_tokens"] == CAP  # none asked: the cap is sent


def curl(stack: Stack, agent: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST `body` to Gemini through the proxy; `--path-as-is` keeps dot segments."""
    out = subprocess.run(
        ["curl", "-sS", "--path-as-is", "--max-time", "20", "--proxy", stack.proxy,
         "--cacert", str(stack.ca_bundle), "-H", f"x-goog-api-key: {stack.token(agent)}",
         "-H", "content-type: application/json", "--data-binary", orjson.dumps(body),
         "-w", "\n%{http_code}", f"https://generativelanguage.googleapis.com{path}"],
        capture_output=True, check=True, timeout=30)
    answer, _, status = out.stdout.rpartition(b"\n")
    return int(status), answer


@pytest.mark.parametrize("path, status, reason", [
    ("/v1beta/models/GEMINI-2.5-PRO:generateContent", 403, "denied_by_rule"),
    ("/v1beta/models/gemini-2.5-pr%6F:streamGenerateContent?alt=sse", 403, "denied_by_rule"),
    ("/v1beta/models/gemini-2.5-flash/../gemini-2.5-pro:generateContent", 400,
     "path_ambiguous"),
    ("/v1beta/models/gemini-2.5-flash%2F..%2Fgemini-2.5-pro:generateContent", 400,
     "path_ambiguous"),
])
def test_a_model_in_the_path_is_governed_in_every_spelling(
        vendor: Stack, path: str, status: int, reason: str) -> None:
    code, answer = curl(vendor, "plain", path, {"contents": [{"parts": [{"text": "hi"}]}]})
    assert code == status
    assert orjson.loads(answer)["error"]["message"]
    assert vendor.received() == []
    assert record_of(vendor, reason)["status"] == status


def test_a_gemini_request_without_a_cap_gets_one(vendor: Stack) -> None:
    code, _ = curl(vendor, "plain", "/v1beta/models/gemini-2.5-flash:generateContent",
                   {"contents": [{"parts": [{"text": "hi"}]}]})
    assert code == 200
    [sent] = received(vendor, "/v1beta/models/gemini-2.5-flash:generateContent")
    assert orjson.loads(sent["body"])["generationConfig"] == {"maxOutputTokens": CAP}
