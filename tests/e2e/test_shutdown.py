"""Graceful shutdown of the real proxy: SIGTERM while an agent's stream is running.

The stream finishes whole (or, past the grace, is cut off) with its audit record, the
listening socket closes at once, the journal ends with a signed shutdown checkpoint
and verifies, and the process exits 0.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from egressguard.backends import cursors
from egressguard.tools.fakesiem import SiemControl
from egressguard.tools.procs import free_port, port_open, wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
TEXT = "".join(f"word{i} " for i in range(12))  # streamed a word an event


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("shutdown")) as s:
        s.put_key("openai", fake_key())
        yield s


def restart(stack: Stack, grace: float, *more: str) -> None:
    stack.stop_proxy()
    stack.proxy_args = ("--log-format", "json", "--shutdown-grace", str(grace), *more)
    stack.start_proxy()


def shipping(stack: Stack) -> bool:
    """A shipper holds the journal's ship lock (it is released when the process ends)."""
    try:
        fd = os.open(stack.journal / cursors.DIRECTORY / "ship.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class StreamReader(threading.Thread):
    """An agent reading a streamed chat completion through the proxy, in the background."""

    def __init__(self, client: openai.OpenAI) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.request_id: str | None = None
        self.parts: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=HELLO, stream=True)  # type: ignore[arg-type]
            self.request_id = raw.headers["x-egressguard-request-id"]
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    self.parts.append(chunk.choices[0].delta.content)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.failure = exc

    @property
    def text(self) -> str:
        return "".join(self.parts)


def start_stream(stack: Stack, make: OpenAIFactory) -> StreamReader:
    reader = StreamReader(make(api_key=stack.token("streamer")))
    reader.start()
    wait_until(lambda: reader.parts or reader.failure, timeout=15,
               what="the first streamed words")
    assert reader.failure is None, reader.failure
    return reader


def verify(stack: Stack) -> str:
    """`audit verify` with the signing key's public half; its output."""
    pub = stack.workdir / "audit.pub"
    key = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "pubkey",
                          "--state", str(stack.state)], capture_output=True, text=True,
                         check=True)
    pub.write_text(key.stdout)
    out = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "verify",
                          "--pubkey", str(pub), str(stack.journal)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def record(stack: Stack, request_id: str) -> dict[str, Any]:
    found = [r for r in stack.records() if r["id"] == request_id]
    assert len(found) == 1, [r["id"] for r in stack.records()]
    return found[0]


def ends_with_shutdown_checkpoint(stack: Stack, covered: dict[str, Any]) -> None:
    last = stack.records()[-1]
    assert last["kind"] == "checkpoint" and last["reason"] == "checkpoint_shutdown", last
    assert last["seq"] > covered["seq"]


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2, trust_env=False)
    except httpx.TransportError:
        return 0, {}
    return answer.status_code, answer.json()


def log_lines(stack: Stack) -> str:
    return Path(stack.proxy_log).read_text(errors="replace")


def json_lines(stack: Stack) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log_lines(stack).splitlines()
            if line.startswith("{")]


def test_sigterm_lets_a_stream_finish_and_refuses_new_connections(
        stack: Stack, openai_client: OpenAIFactory, siem: SiemControl) -> None:
    grace = 30.0
    sinks = stack.workdir / "sinks.yaml"
    sinks.write_text("version: 1\nsinks:\n"
                     f"  - {{name: lake, type: http, url: {siem.url}/ndjson}}\n")
    status_port = free_port()
    restart(stack, grace, "--sinks", str(sinks), "--metrics-listen", f"127.0.0.1:{status_port}")
    wait_until(lambda: shipping(stack), timeout=10, what="the shipper to start")
    wait_until(lambda: readiness(status_port)[0] == 200, timeout=10, what="/readyz to be 200")
    stack.script_reply(TEXT, delay=0.25)  # about 3.5s of stream
    reader = start_stream(stack, openai_client)

    stack.signal_proxy(signal.SIGTERM)
    signalled = time.monotonic()
    wait_until(lambda: not port_open(stack.proxy_port), timeout=2,
               what="the listening socket to close")
    late = openai_client(api_key=stack.token("latecomer"))
    with pytest.raises(openai.APIConnectionError):  # refused, not queued behind the stream
        late.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert time.monotonic() - signalled < 3
    assert reader.is_alive()  # the stream still runs meanwhile
    status, body = readiness(status_port)  # load balancers stop sending new agents here
    assert status == 503 and body["checks"]["shutdown"] == {"ok": False, "error": "shutting down"}

    reader.join(timeout=grace)
    assert reader.failure is None, reader.failure
    assert reader.text == TEXT  # whole
    assert stack.wait_proxy(timeout=grace) == 0
    assert time.monotonic() - signalled < grace

    assert reader.request_id is not None
    streamed = record(stack, reader.request_id)
    assert streamed["status"] == 200 and streamed["error"] is None
    assert streamed["usage"]["output_tokens"] > 0
    ends_with_shutdown_checkpoint(stack, streamed)
    verify(stack)
    assert "SIGTERM: shutting down" in log_lines(stack)
    assert not shipping(stack)  # the shipper child was stopped, not orphaned


def test_a_stream_longer_than_the_grace_is_cut_off_with_its_record(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    grace = 1.0
    restart(stack, grace)
    stack.script_reply(TEXT, delay=1.0)  # about 14s of stream
    reader = start_stream(stack, openai_client)

    stack.signal_proxy(signal.SIGTERM)
    signalled = time.monotonic()
    assert stack.wait_proxy(timeout=grace + 10) == 0
    took = time.monotonic() - signalled
    assert grace <= took < grace + 4, took  # cut at the bound, not at the stream's end

    reader.join(timeout=10)
    assert reader.failure is not None  # the agent sees its stream end early
    assert 0 < len(reader.text) < len(TEXT)
    assert reader.request_id is not None
    cut = record(stack, reader.request_id)
    assert cut["status"] == 200 and cut["decision"] == "allow"
    assert cut["error"].startswith("cut off at shutdown"), cut["error"]
    assert cut["bytes_out"] > 0
    ends_with_shutdown_checkpoint(stack, cut)
    verify(stack)
    assert "cutting off 1 request(s) still in flight: " + reader.request_id in log_lines(stack)
    said = [line for line in json_lines(stack) if line.get("request_id") == reader.request_id]
    assert [line["message"] for line in said] == [cut["error"]]  # the log names the record


def test_idle_connections_do_not_hold_up_the_exit(stack: Stack,
                                                  openai_client: OpenAIFactory) -> None:
    """Only requests count: an agent's pooled keep-alive connection is simply closed."""
    restart(stack, 30.0)
    stack.reset_received()
    client = openai_client(api_key=stack.token("pooled"))
    client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]

    stack.signal_proxy(signal.SIGTERM)
    signalled = time.monotonic()
    assert stack.wait_proxy(timeout=10) == 0
    assert time.monotonic() - signalled < 5
    assert stack.records()[-1]["reason"] == "checkpoint_shutdown"


def test_a_second_signal_cuts_off_at_once(stack: Stack, openai_client: OpenAIFactory) -> None:
    restart(stack, 60.0)
    stack.script_reply(TEXT, delay=1.0)
    reader = start_stream(stack, openai_client)

    stack.signal_proxy(signal.SIGTERM)
    wait_until(lambda: not port_open(stack.proxy_port), timeout=2,
               what="the listening socket to close")
    stack.signal_proxy(signal.SIGINT)  # an operator's second Ctrl-C
    signalled = time.monotonic()
    assert stack.wait_proxy(timeout=10) == 0
    assert time.monotonic() - signalled < 4
    reader.join(timeout=10)
    assert reader.request_id is not None
    assert record(stack, reader.request_id)["error"].startswith("cut off at shutdown")
    verify(stack)


def test_a_realtime_session_open_at_shutdown_gets_its_close_record(stack: Stack) -> None:
    """mitmproxy calls no websocket_end when the process just stops; the drain closes the
    session's connection itself, so the session's close record is written."""
    restart(stack, 0.5)
    client = openai.OpenAI(api_key=stack.token("voice-agent"),
                           base_url="https://api.openai.com/v1", max_retries=0)
    with client.realtime.connect(model="echo", websocket_connection_options={
            "proxy": stack.proxy, "ssl": stack.agent_ssl_context(), "open_timeout": 10}) as conn:
        conn.session.update(session={"type": "realtime", "instructions": "be brief"})
        upgrade = wait_until(lambda: [r for r in stack.records()
                                      if r["agent"] == "voice-agent" and r["status"] == 101],
                             timeout=10, what="the upgrade's record")[0]
        stack.signal_proxy(signal.SIGTERM)
        assert stack.wait_proxy(timeout=10) == 0

    closed = [r for r in stack.records() if r["reason"] == "websocket_closed"
              and r["websocket"]["upgrade_id"] == upgrade["id"]]
    assert len(closed) == 1
    assert closed[0]["websocket"]["frames_from_agent"] >= 1  # the session.update went through
    ends_with_shutdown_checkpoint(stack, closed[0])
    verify(stack)
