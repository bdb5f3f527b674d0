"""Redaction end to end: the real proxy, the openai and anthropic SDKs, Presidio for
names. The vendor never sees the values; the agent gets its own values back where
they were pseudonymised; the journal holds counts, never values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from secret_registry import register

from egressguard.tools.stack import Stack

pytestmark = pytest.mark.e2e

# registered: the secret sweep looks for each in every log and record at the end
EMAIL = register("maria.lopez@example.org", "PII: e-mail address")
NAME = register("Maria Lopez", "PII: person name")
SECRET = register("sk-ant-oat01-" + "Q7x" * 30,  # synthetic, an Anthropic OAuth token's shape
                  "secret an agent sent")
POLICY = """\
version: 1
agents:
  support-bot: {}
rules:
  - name: support-redacted
    match: {agents: [support-bot]}
    redact: {EMAIL_ADDRESS: mask, PERSON: pseudonymize, secrets: block}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("redaction")
    (workdir / "policy.yaml").write_text(POLICY)
    with Stack(workdir, policy=workdir / "policy.yaml") as s:
        yield s


def vendor_text(stack: Stack) -> str:
    return str(stack.received()[-1]["body"])


def ask(client: openai.OpenAI, text: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": text}], **kw)


def test_the_vendor_sees_pseudonyms_and_masks_the_agent_its_names(
        stack: Stack, keys: dict[str, str], openai_client) -> None:
    client = openai_client(api_key=stack.token("support-bot"))
    answer = ask(client, f"Please reply to {NAME} at {EMAIL} about the refund.")
    seen = vendor_text(stack)
    assert NAME not in seen and EMAIL not in seen
    assert "<PERSON_1>" in seen and "<EMAIL_ADDRESS>" in seen
    # the echo comes back with the name restored; the mask stays a mask
    assert answer.choices[0].message.content == \
        f"Please reply to {NAME} at <EMAIL_ADDRESS> about the refund."
    record = stack.wait_records(1)[-1]
    assert record["redactions"] == {"EMAIL_ADDRESS": {"mask": 1},
                                    "PERSON": {"pseudonymize": 1}}
    journal = b"".join(p.read_bytes() for p in stack.journal.glob("*.jsonl")).decode()
    assert NAME not in journal and EMAIL not in journal


def test_a_streamed_answer_gets_its_names_back(stack: Stack, keys: dict[str, str],
                                               openai_client) -> None:
    client = openai_client(api_key=stack.token("support-bot"))
    stream = ask(client, f"Tell {NAME} the parcel left Madrid.", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"Tell {NAME} the parcel left Madrid."
    assert NAME not in vendor_text(stack)


def test_a_secret_is_refused_by_type_never_by_value(stack: Stack, keys: dict[str, str],
                                                    openai_client) -> None:
    before = len(stack.received())
    client = openai_client(api_key=stack.token("support-bot"))
    with pytest.raises(openai.PermissionDeniedError) as info:
        ask(client, f"my claude token is {SECRET}.")
    assert "ANTHROPIC_OAUTH_TOKEN" in str(info.value) and SECRET not in str(info.value)
    assert len(stack.received()) == before  # nothing reached the vendor
    record = stack.wait_records(1)[-1]
    assert (record["reason"], record["redactions"]) == (
        "redaction_blocked", {"ANTHROPIC_OAUTH_TOKEN": {"block": 1}})


# A credential the vendor's model writes out on its own (it was in no request): shaped
# like a GitHub token, synthetic.
LEAKED = register("ghp_" + "Wd3kP9" * 6, "secret a model wrote")


@pytest.fixture
def leaky_vendor(stack: Stack) -> Iterator[None]:
    stack.script_reply(f"Sure: clone with {LEAKED} and push.", chunk=5)
    yield
    stack.reset_received()


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
def test_a_secret_the_model_writes_never_reaches_the_openai_agent(
        stack: Stack, keys: dict[str, str], openai_client, leaky_vendor: None,
        streamed: bool) -> None:
    client = openai_client(api_key=stack.token("support-bot"))
    response = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "how do I clone?"}],
        stream=streamed)
    text = "".join(c.choices[0].delta.content or "" for c in response if c.choices) \
        if streamed else response.choices[0].message.content
    assert text == "Sure: clone with <GITHUB_TOKEN> and push."
    record = stack.wait_records(1)[-1]
    assert record["response_redactions"] == {"GITHUB_TOKEN": {"mask": 1}}
    journal = b"".join(p.read_bytes() for p in stack.journal.glob("*.jsonl")).decode()
    assert LEAKED not in journal and LEAKED[4:20] not in stack.proxy_output()


def test_a_secret_the_model_writes_never_reaches_the_anthropic_agent(
        stack: Stack, keys: dict[str, str], anthropic_client, leaky_vendor: None) -> None:
    client = anthropic_client(api_key=stack.token("support-bot"))
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=[
            {"role": "user", "content": "how do I clone?"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "Sure: clone with <GITHUB_TOKEN> and push."
    assert stack.wait_records(1)[-1]["response_redactions"] == {"GITHUB_TOKEN": {"mask": 1}}
