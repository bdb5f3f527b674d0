"""OpenAI Realtime end to end: the real proxy process, the openai SDK's realtime client
(and a bare `websockets` client, as a browser would connect) through a CONNECT tunnel,
the fake vendor's Realtime endpoint. The vendor gets the real key and redacted text;
the agent gets its own values back, an `error` event for a blocked one, and never the
real key; the journal holds the upgrade and a close record with counts, never values."""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from egressguard.core.credentials import REDACTED
from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import fake_key

pytestmark = pytest.mark.e2e

EMAIL = "maria.lopez@example.org"
PHONE = "(415) 555-0199"  # a fictional 555 number
POLICY = """\
version: 1
agents:
  voice-bot: {}
  plain-bot: {}
rules:
  - name: realtime-redacted
    match: {agents: [voice-bot]}
    models: [echo]
    redact: {EMAIL_ADDRESS: pseudonymize, PHONE_NUMBER: mask, US_SSN: block}
  - name: realtime-plain
    match: {agents: [plain-bot]}
    models: [echo-headers]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("realtime")
    (workdir / "policy.yaml").write_text(POLICY)
    with Stack(workdir, policy=workdir / "policy.yaml") as s:
        yield s


@pytest.fixture(scope="module")
def real_key(stack: Stack) -> str:
    key = fake_key()
    stack.put_key("openai", key)
    return key


@pytest.fixture(autouse=True)
def fresh_vendor(stack: Stack) -> None:
    stack.reset_received()


def ssn() -> str:
    """An SSN-shaped value made at run time (none is committed)."""
    rng = random.SystemRandom()
    return f"{rng.randint(100, 599)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"


def sdk_session(stack: Stack, agent: str, model: str) -> Any:
    """The openai SDK's realtime client, the agent's token as its API key."""
    client = openai.OpenAI(api_key=stack.token(agent), base_url="https://api.openai.com/v1",
                           max_retries=0)
    return client.realtime.connect(model=model, websocket_connection_options={
        "proxy": stack.proxy, "ssl": stack.agent_ssl_context(), "open_timeout": 10})


def until(conn: Any, last: str) -> list[dict[str, Any]]:
    """Events (as sent) up to and including the first of type `last`."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["type"] != last:
        got.append(json.loads(conn.recv_bytes()))
        assert len(got) < 500, [g["type"] for g in got]
    return got


def text(events: list[dict[str, Any]], kind: str = "response.output_text.delta") -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


def user_text(value: str, event_id: str = "evt_1") -> dict[str, Any]:
    return {"type": "conversation.item.create", "event_id": event_id,
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": value}]}}


def session_received(stack: Stack, frames: int) -> dict[str, Any]:
    """The vendor's record of the session's upgrade once it holds `frames` frames."""
    def ready() -> dict[str, Any] | None:
        found = [r for r in stack.received() if r.get("frames") is not None]
        return found[-1] if found and len(found[-1]["frames"]) >= frames else None
    return wait_until(ready, timeout=10, what=f"{frames} frames at the vendor")


def closes(stack: Stack) -> int:
    return sum(r["websocket"] is not None for r in stack.records())


def records_of_close(stack: Stack, before: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The upgrade record and close record of the session that closed after `before`
    close records were written."""
    def closed() -> tuple[dict[str, Any], dict[str, Any]] | None:
        records = stack.records()
        found = [r for r in records if r["websocket"] is not None]
        if len(found) <= before:
            return None
        close = found[before]
        return next(r for r in records if r["id"] == close["websocket"]["upgrade_id"]), close
    return wait_until(closed, timeout=10, what="the session's close record")


def everything_written(stack: Stack) -> str:
    journal = "".join(p.read_text() for p in stack.journal.glob("*.jsonl"))
    return journal + stack.proxy_output()


def test_the_vendor_sees_the_real_key_and_redacted_text_the_agent_its_own(
        stack: Stack, real_key: str) -> None:
    stack.script_reply("", chunk=3)  # the echo comes back 3 characters a delta
    said, before = f"Please mail {EMAIL} or call {PHONE} about order 7.", closes(stack)
    with sdk_session(stack, "voice-bot", "echo") as conn:
        assert until(conn, "session.created")[-1]["session"]["model"] == "echo"
        conn.send(user_text(said))
        echoed = until(conn, "conversation.item.added")[-1]
        conn.send({"type": "response.create"})
        answer = until(conn, "response.done")
        conn.send({"type": "response.create", "response": {"output_modalities": ["audio"]}})
        spoken = until(conn, "response.done")

    at_vendor = session_received(stack, 3)
    headers = {k.lower(): v for k, v in at_vendor["headers"]}
    assert headers["authorization"] == f"Bearer {real_key}"
    vendor_text = json.loads(at_vendor["frames"][0]["text"])["item"]["content"][0]["text"]
    assert vendor_text == "Please mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER> about order 7."
    # the vendor echoed that 3 characters a delta: the pseudonym over six deltas
    assert sum(e["type"] == "response.output_text.delta" for e in answer) == \
        -(-len(vendor_text) // 3)

    restored = f"Please mail {EMAIL} or call <PHONE_NUMBER> about order 7."
    assert echoed["item"]["content"][0]["text"] == restored
    assert text(answer) == restored
    assert text(spoken, "response.output_audio_transcript.delta") == restored
    audio = [e["delta"] for e in spoken if e["type"] == "response.output_audio.delta"]
    assert audio and all(a == audio[0] for a in audio)  # audio untouched

    upgrade, close = records_of_close(stack, before)
    assert (upgrade["status"], upgrade["model"], upgrade["rule"], upgrade["reason"]) == (
        101, "echo", "realtime-redacted", "allowed")
    assert close["reason"] == "websocket_closed" and close["agent"] == "voice-bot"
    assert close["redactions"] == {"EMAIL_ADDRESS": {"pseudonymize": 1},
                                   "PHONE_NUMBER": {"mask": 1}}
    assert close["websocket"]["frames_from_agent"] == 3
    assert close["websocket"]["closed_by"] == "agent"
    assert close["usage"]["output_tokens"] > 0
    written = everything_written(stack)
    assert EMAIL not in written and "555-0199" not in written and real_key not in written


def browser(stack: Stack, token: str) -> Callable[[], ClientConnection]:
    """A bare WebSocket client offering the key as a subprotocol, as browsers must."""
    ctx: ssl.SSLContext = stack.agent_ssl_context()
    return lambda: connect(
        "wss://api.openai.com/v1/realtime?model=echo", proxy=stack.proxy, ssl=ctx,
        subprotocols=["realtime", f"openai-insecure-api-key.{token}"],  # type: ignore[list-item]
        open_timeout=10)


def test_a_browser_key_is_swapped_and_a_blocked_value_answered_with_an_error(
        stack: Stack, real_key: str) -> None:
    token, number, before = stack.token("voice-bot"), ssn(), closes(stack)
    with browser(stack, token)() as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv())["type"] == "session.created"
        ws.send(json.dumps(user_text(f"my ssn is {number}", event_id="evt_ssn")))
        error = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps(user_text("no numbers this time")))
        after = json.loads(ws.recv(timeout=10))
    assert error["type"] == "error"
    assert error["error"]["code"] == "redaction_blocked"
    assert error["error"]["event_id"] == "evt_ssn"
    assert "US_SSN" in error["error"]["message"] and number not in json.dumps(error)
    assert after["type"] == "conversation.item.added"  # the session went on

    at_vendor = session_received(stack, 1)
    headers = {k.lower(): v for k, v in at_vendor["headers"]}
    assert headers["authorization"] == f"Bearer {real_key}"
    assert headers["sec-websocket-protocol"] == "realtime"
    assert not any(token in v for _, v in at_vendor["headers"])
    assert [json.loads(f["text"])["item"]["content"][0]["text"]
            for f in at_vendor["frames"]] == ["no numbers this time"]

    _, close = records_of_close(stack, before)
    assert close["websocket"]["refused"] == {"redaction_blocked": 1}
    assert close["redactions"] == {"US_SSN": {"block": 1}}
    assert number not in everything_written(stack)


def test_the_model_in_the_url_is_governed_by_the_policy(stack: Stack, real_key: str) -> None:
    with pytest.raises(InvalidStatus) as info, \
            sdk_session(stack, "voice-bot", "gpt-4o-realtime-preview"):
        pass
    response = info.value.response
    assert response.status_code == 403
    error = json.loads(response.body)["error"]
    assert error["code"] == "model_not_allowed"
    assert error["message"] == ("model 'gpt-4o-realtime-preview' is not allowed; allowed: "
                                "echo (policy rule 'realtime-redacted')")
    assert stack.received() == []  # nothing reached the vendor


def test_a_key_the_vendor_echoes_never_reaches_the_agent(stack: Stack, real_key: str) -> None:
    with sdk_session(stack, "plain-bot", "echo-headers") as conn:
        until(conn, "session.created")
        conn.send({"type": "response.create"})
        frames = []
        while not frames or json.loads(frames[-1])["type"] != "response.done":
            frames.append(conn.recv_bytes())
    assert not any(real_key.encode() in f for f in frames)
    assert any(REDACTED in f for f in frames)  # the echo was there, scrubbed
    assert real_key not in everything_written(stack)
