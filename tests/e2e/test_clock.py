"""The proxy's wall clock steps back and forth (libfaketime, preloaded into the real
proxy process only): each jump is recorded in the audit trail, requests keep flowing,
the chain still verifies, and token expiry follows the new time."""

from __future__ import annotations

import glob
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime

import openai
import pytest

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
LIBFAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if LIBFAKETIME is None:
        pytest.fail("libfaketime is missing: `make test` installs it (Debian: faketime)")
    with Stack(tmp_path_factory.mktemp("clock")) as s:
        s.clock = s.workdir / "faketime"  # type: ignore[attr-defined]
        s.clock.write_text("+0\n")  # type: ignore[attr-defined]
        s.stop_proxy()
        # the wall clock only: a real clock step leaves CLOCK_MONOTONIC alone too
        s.start_proxy(env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME_NO_CACHE": "1",
                           "FAKETIME_TIMESTAMP_FILE": str(s.clock),  # type: ignore[attr-defined]
                           "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
        yield s


def step(stack: Stack, offset: str) -> dict:
    """Set the proxy's clock to real time `offset` ("-1h"), and wait for its record."""
    seen = len(clock_records(stack))
    stack.clock.write_text(f"{offset}\n")  # type: ignore[attr-defined]
    return wait_until(lambda: (r := clock_records(stack)) and len(r) > seen and r[-1],
                      timeout=20, what="the clock jump's audit record")


def clock_records(stack: Stack) -> list[dict]:
    return [r for r in stack.records() if r["kind"] == "clock"]


def when(record: dict) -> datetime:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))


def jumped(record: dict) -> float:
    return float(record["message"].split()[1].rstrip("s"))


def test_a_step_back_is_recorded_and_traffic_goes_on(stack: Stack,
                                                     openai_client: OpenAIFactory) -> None:
    stack.put_key("openai", fake_key())
    client = openai_client(api_key=stack.token("clock"))
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    before = stack.records()[-1]

    record = step(stack, "-1h")
    assert record["reason"] == "clock_jump" and abs(jumped(record) + 3600) < 30
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    after = [r for r in stack.records() if r["kind"] == "request"][-1]
    assert (when(before) - when(after)).total_seconds() > 3000  # later, yet stamped earlier
    assert after["seq"] > before["seq"]  # the chain's order is the truth
    assert "the wall clock jumped by -36" in stack.proxy_output()


def test_a_step_forward_expires_tokens_by_the_new_time(stack: Stack,
                                                       openai_client: OpenAIFactory) -> None:
    stack.put_key("openai", fake_key())
    hour, day = stack.token("short", ttl=3600), stack.token("long", ttl=86400)
    openai_client(api_key=hour).chat.completions.create(model="gpt-4o", messages=HELLO)

    record = step(stack, "+2h")
    assert abs(jumped(record) - 3 * 3600) < 60 or abs(jumped(record) - 2 * 3600) < 60
    with pytest.raises(openai.AuthenticationError) as expired:
        openai_client(api_key=hour).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert "has expired; mint a new one" in str(expired.value)
    openai_client(api_key=day).chat.completions.create(model="gpt-4o", messages=HELLO)


def test_the_trail_across_jumps_verifies(stack: Stack) -> None:
    stack.stop_proxy()
    verified = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "verify",
                               str(stack.journal)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert len(clock_records(stack)) >= 2
