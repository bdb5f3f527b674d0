"""The relay's hop: what mitmproxy sends it carries no credential, only a one-time ticket,
and the relay answers nothing without one. (End to end: tests/e2e/test_resilience.py.)"""

from __future__ import annotations

import asyncio

import pytest

from egressguard.core.secret import SecretLocation
from egressguard.pipeline import flowstate
from egressguard.pipeline.relay import TICKET_HEADER, Breaker

POLICY = """\
version: 1
agents: {bot: {}, plain: {}}
rules:
  - name: retried
    match: {agents: [bot]}
    retry: 3
    key_pool: [pool/one, pool/two]
  - name: plain
    match: {agents: [plain]}
"""


@pytest.fixture
def policy_yaml() -> str:
    return POLICY


@pytest.fixture
def secrets(secrets):
    return {**secrets, **{SecretLocation("secret", p, "api_key"): f"sk-pooled-{p[-3:]}-" + "x" * 24
                          for p in ("pool/one", "pool/two")}}


def relayed(pipeline, agent: str):
    pipeline.relay.address = ("127.0.0.1", 9)  # as if running: no server is needed here
    token = pipeline.token(agent)
    return pipeline.send("api.openai.com", headers=[("Authorization", f"Bearer {token}")],
                         body={"model": "gpt-4o-mini", "messages": []}), token


def test_the_relayed_request_carries_a_ticket_and_no_credential(pipeline) -> None:
    flow, token = relayed(pipeline, "bot")
    sent = dict(flow.request.headers)
    assert TICKET_HEADER in sent and len(sent[TICKET_HEADER]) >= 32
    assert not any("sk-pooled" in v or token in v for v in flow.request.headers.values())
    assert "authorization" not in {k.lower() for k in sent}
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("http", "127.0.0.1", 9)
    ticket = pipeline.relay.tickets[sent[TICKET_HEADER]]
    assert ticket.secret is flow.metadata[flowstate.SECRET]  # the key stays in the process
    assert ticket.key in ("pool/one", "pool/two")


def test_rules_without_retry_failover_pool_or_cache_are_not_relayed(pipeline) -> None:
    flow, _ = relayed(pipeline, "plain")
    assert flowstate.RELAY not in flow.metadata and not pipeline.relay.tickets
    assert flow.request.scheme == "https" and "authorization" in flow.request.headers


def test_the_relay_answers_nothing_without_a_valid_ticket(pipeline) -> None:
    relay = pipeline.relay

    async def ask(ticket: str) -> bytes:
        relay.running()
        await asyncio.sleep(0.05)  # the server accepts on the next loop iterations
        assert relay.address is not None
        reader, writer = await asyncio.open_connection(*relay.address)
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
                     f"{TICKET_HEADER}: {ticket}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        relay.done()
        return answer

    loop = pipeline.tctx.master.event_loop
    assert loop.run_until_complete(ask("forged")).startswith(b"HTTP/1.1 403")
    assert loop.run_until_complete(ask("")).startswith(b"HTTP/1.1 403")


def test_the_breaker_opens_after_failures_in_a_row_and_half_opens_after_its_cool_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("egressguard.pipeline.relay.time.monotonic", lambda: now[0])
    breaker = Breaker()
    breaker.failed("r")
    breaker.failed("r")
    breaker.succeeded("r")  # not in a row
    breaker.failed("r")
    breaker.failed("r")
    assert breaker.open_until("r") is None
    breaker.failed("r")
    assert breaker.open_until("r") == Breaker.COOL_DOWN
    now[0] += Breaker.COOL_DOWN
    assert breaker.open_until("r") is None  # half-open: the next request tries the vendor
    breaker.failed("r")  # and fails: open again at once
    assert breaker.open_until("r") == Breaker.COOL_DOWN
    breaker.succeeded("r")
    assert breaker.open_until("r") is None and breaker.open_until("other") is None


def test_a_websocket_upgrade_is_never_relayed(pipeline) -> None:
    pipeline.relay.address = ("127.0.0.1", 9)
    token = pipeline.token("bot")
    flow = pipeline.send("api.openai.com", "/v1/realtime?model=gpt-4o-realtime-preview",
                         method="GET", headers=[
                             ("Authorization", f"Bearer {token}"), ("Upgrade", "websocket"),
                             ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
                             ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    assert flowstate.RELAY not in flow.metadata and not pipeline.relay.tickets
    assert flow.request.scheme == "https"
