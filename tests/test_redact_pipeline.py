"""Redaction in the pipeline: what the vendor receives, what the agent gets back, what
the audit record says (counts, never values)."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import brotli
import orjson
import pytest
import zstandard

OPENAI = "api.openai.com"
EMAIL = "jane.roe@example.com"
SECRET = "ghp_" + "Zq8" * 12  # synthetic, shaped like a GitHub token
POLICY = """\
version: 1
agents:
  masker: {}
  pseudo: {}
rules:
  - name: mask-email-block-secrets
    match: {agents: [masker]}
    redact: {EMAIL_ADDRESS: mask, secrets: block}
  - name: pseudonymize-email
    match: {agents: [pseudo]}
    redact: {EMAIL_ADDRESS: pseudonymize}
  - name: everyone-else
"""


@pytest.fixture
def policy_yaml() -> str:
    return POLICY


def chat(pipeline, agent: str, text: str, path: str = "/v1/chat/completions",
         upstream=None, **body: Any):
    token = pipeline.token(agent)
    return pipeline.send(OPENAI, path, headers=[("Authorization", f"Bearer {token}")],
                         body={"model": "gpt-4o-mini", "messages": [
                             {"role": "system", "content": "be brief"},
                             {"role": "user", "content": text}], **body},
                         upstream=upstream)


def sent(flow) -> str:
    return orjson.loads(flow.request.content)["messages"][1]["content"]


def test_an_email_is_masked_before_it_leaves_and_counted(pipeline) -> None:
    flow = chat(pipeline, "masker", f"mail {EMAIL} and {EMAIL.upper()} today")
    assert flow.response.status_code == 200
    assert sent(flow) == "mail <EMAIL_ADDRESS> and <EMAIL_ADDRESS> today"
    [record] = pipeline.records()
    assert record["redactions"] == {"EMAIL_ADDRESS": {"mask": 2}}
    assert EMAIL not in pipeline.journal_bytes().decode()


def test_a_secret_blocks_the_request_naming_only_its_type(pipeline) -> None:
    flow = chat(pipeline, "masker", f"my token is {SECRET}, please debug")
    assert flow.response.status_code == 403
    error = orjson.loads(flow.response.content)["error"]
    assert error["code"] == "redaction_blocked"
    assert error["message"] == ("the request contains GITHUB_TOKEN, which policy rule "
                                "'mask-email-block-secrets' does not let leave; remove it and "
                                "send again")
    assert pipeline.store.asked == []  # no key fetched: nothing was forwarded
    [record] = pipeline.records()
    assert record["redactions"] == {"GITHUB_TOKEN": {"block": 1}}
    assert SECRET not in pipeline.journal_bytes().decode()


def test_a_rule_without_a_plan_sends_the_text_untouched(pipeline) -> None:
    flow = chat(pipeline, "someone", f"mail {EMAIL}")
    assert sent(flow) == f"mail {EMAIL}"
    assert pipeline.records()[0]["redactions"] is None


def test_pseudonyms_go_out_and_the_agent_gets_its_values_back(pipeline) -> None:
    answer = pipeline.Upstream.json({"choices": [{"message": {
        "role": "assistant", "content": "I wrote to <EMAIL_ADDRESS_1>."}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    flow = chat(pipeline, "pseudo", f"write to {EMAIL}", upstream=answer)
    assert sent(flow) == "write to <EMAIL_ADDRESS_1>"
    assert orjson.loads(flow.response.content)["choices"][0]["message"]["content"] == \
        f"I wrote to {EMAIL}."
    assert pipeline.records()[0]["redactions"] == {"EMAIL_ADDRESS": {"pseudonymize": 1}}


def test_pseudonyms_split_across_stream_events_are_restored(pipeline) -> None:
    def event(text: str) -> bytes:
        return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {
            "content": text}}]}) + b"\n\n"

    stream = pipeline.Upstream.sse(event("To <EMAIL"), event("_ADDRESS_1"), event(">, done"),
                                   b"data: [DONE]\n\n")
    token = pipeline.token("pseudo")
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=[
        ("Authorization", f"Bearer {token}")], body={"model": "gpt-4o-mini", "stream": True,
                                                     "messages": [{"role": "user",
                                                                   "content": f"to {EMAIL}"}]})
    received = pipeline.run(flow, upstream=stream)
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                   for line in received.split(b"\n\n") if line.startswith(b"data: {"))
    assert text == f"To {EMAIL}, done"
    assert flow.response.status_code == 200


def test_a_request_whose_text_cannot_be_read_is_refused_under_a_plan(pipeline) -> None:
    token = pipeline.token("masker")
    # (an upload to /v1/files is refused before: files are allowed only when named)
    flow = pipeline.send(OPENAI, "/v1/audio/transcriptions",
                         headers=[("Authorization", f"Bearer {token}")],
                         body=b"--boundary\r\nopaque\r\n")
    assert flow.response.status_code == 403
    assert orjson.loads(flow.response.content)["error"]["code"] == "redaction_not_possible"


def test_unchanged_history_is_scanned_once(pipeline) -> None:
    for _ in range(3):
        chat(pipeline, "masker", f"mail {EMAIL}")
    assert len(pipeline.redact._found) == 2  # the system prompt and the user turn
    assert all(r["redactions"] == {"EMAIL_ADDRESS": {"mask": 1}} for r in pipeline.records())


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate"])
def test_compressed_bodies_are_redacted_and_stay_compressed(pipeline, encoding) -> None:
    encode = {"gzip": gzip.compress, "br": brotli.compress, "deflate": zlib.compress,
              "zstd": zstandard.ZstdCompressor().compress}[encoding]
    token = pipeline.token("masker")
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"mail {EMAIL}"}]})
    flow = pipeline.send(OPENAI, headers=[
        ("Authorization", f"Bearer {token}"), ("content-type", "application/json"),
        ("content-encoding", encoding)], body=encode(body))
    assert flow.response.status_code == 200
    assert flow.request.headers["content-encoding"] == encoding
    assert EMAIL.encode() not in flow.request.raw_content
    assert orjson.loads(flow.request.content)["messages"][0]["content"] == \
        "mail <EMAIL_ADDRESS>"


def test_a_policys_own_detectors_feed_its_plans(pipeline) -> None:
    pipeline.files["policy"].write_text(POLICY + """\
detectors:
  - id: acme-service-key
    entity: GENERIC_SECRET
    pattern: 'acme_live_[a-z0-9]{24}'
""")
    pipeline.policyloader.configure({"egressguard_policy"})
    flow = chat(pipeline, "masker", "use acme_live_" + "k3y9" * 6 + " for the call")
    assert flow.response.status_code == 403
    assert pipeline.records()[-1]["redactions"] == {"GENERIC_SECRET": {"block": 1}}


AWS_KEY = "AKIA" + "Q7ZX3M2B" * 2  # synthetic, shaped like an AWS access key id


def _delta(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {
        "content": text}}]}) + b"\n\n"


def test_a_secret_in_the_answer_is_masked_and_counted(pipeline) -> None:
    answer = pipeline.Upstream.json({"choices": [{"message": {
        "role": "assistant", "content": f"Try {AWS_KEY} for the bucket."}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    flow = chat(pipeline, "masker", "which key?", upstream=answer)
    assert orjson.loads(flow.response.content)["choices"][0]["message"]["content"] == \
        "Try <AWS_ACCESS_KEY> for the bucket."
    [record] = pipeline.records()
    assert record["response_redactions"] == {"AWS_ACCESS_KEY": {"mask": 1}}
    assert record["redactions"] is None  # the request itself held nothing
    assert AWS_KEY not in pipeline.journal_bytes().decode()


def test_a_secret_streamed_over_events_is_masked(pipeline) -> None:
    pieces = ["Try ", AWS_KEY[:3], AWS_KEY[3:9], AWS_KEY[9:], " now"]
    stream = pipeline.Upstream.sse(*map(_delta, pieces), b"data: [DONE]\n\n")
    token = pipeline.token("masker")
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=[
        ("Authorization", f"Bearer {token}")], body={"model": "gpt-4o-mini", "stream": True,
                                                     "messages": [{"role": "user",
                                                                   "content": "key?"}]})
    received = pipeline.run(flow, upstream=stream)
    assert AWS_KEY[3:].encode() not in received
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                   for line in received.split(b"\n\n") if line.startswith(b"data: {"))
    assert text == "Try <AWS_ACCESS_KEY> now"
    assert pipeline.records()[-1]["response_redactions"] == {"AWS_ACCESS_KEY": {"mask": 1}}


def test_a_plan_without_secret_types_leaves_answers_as_they_are(pipeline) -> None:
    answer = pipeline.Upstream.json({"choices": [{"message": {
        "role": "assistant", "content": f"Try {AWS_KEY}."}}]})
    flow = chat(pipeline, "pseudo", "which key?", upstream=answer)
    assert AWS_KEY in orjson.loads(flow.response.content)["choices"][0]["message"]["content"]
    assert pipeline.records()[0]["response_redactions"] is None


def test_unchanged_history_is_masked_once(pipeline, monkeypatch) -> None:
    from egressguard.core.redact import actions
    applied = []
    real = actions.apply
    monkeypatch.setattr(actions, "apply", lambda *a: applied.append(a[0]) or real(*a))
    for _ in range(3):
        flow = chat(pipeline, "masker", f"mail {EMAIL}")
        assert sent(flow) == "mail <EMAIL_ADDRESS>"
    assert applied == [f"mail {EMAIL}"]  # the outcome is reused, not recomputed
    assert all(r["redactions"] == {"EMAIL_ADDRESS": {"mask": 1}} for r in pipeline.records())


def test_a_reused_outcome_never_carries_another_conversations_pseudonyms(pipeline) -> None:
    other = "li.wei@example.net"
    token = pipeline.token("pseudo")

    def ask(opening: str) -> str:
        flow = pipeline.send(OPENAI, "/v1/chat/completions", headers=[
            ("Authorization", f"Bearer {token}")], body={"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": opening},
                {"role": "user", "content": f"cc {EMAIL}"}]})
        return orjson.loads(flow.request.content)["messages"][1]["content"]

    assert ask(f"write to {other}") == "cc <EMAIL_ADDRESS_2>"  # its 2nd address
    assert ask("a new conversation") == "cc <EMAIL_ADDRESS_1>"  # its 1st: not reused
