"""Pass-through hosts: tunnelled untouched (no interception, no key), token required."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from egressguard.tools.stack import REPO_POLICY, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The fake vendor plays a pass-through host (`localhost`, which its cert covers)."""
    workdir = tmp_path_factory.mktemp("passthrough")
    policy = workdir / "policy.yaml"
    policy.write_text(REPO_POLICY.read_text().replace("  - pypi.org\n", "  - localhost\n"))
    s = Stack(workdir, policy=policy)
    # the fake vendor's port is known only once it runs: map localhost after start
    s.start()
    s.stop_proxy()
    s.proxy_args = ("--upstream-map", f"localhost=127.0.0.1:{s.vendor_port}")
    s.start_proxy()
    yield s
    s.stop()


def curl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--proxy", stack.proxy, *args,
         "https://localhost/bench"],
        capture_output=True, text=True, timeout=30, check=False)


def test_passthrough_is_not_intercepted(stack: Stack) -> None:
    token = stack.token("builder")
    # Trusting only the fake's own CA: the agent sees the upstream's certificate, so
    # nothing in between terminated TLS.
    done = curl(stack, "--proxy-user", f"builder:{token}", "--cacert",
                str(stack.pki / "ca.pem"), "-w", "\n%{http_code}")
    assert done.stdout.splitlines() == ['{"ok":true}', "200"], done.stderr
    # and our interception CA would not have been accepted for it
    refused = curl(stack, "--proxy-user", f"builder:{token}", "--cacert", str(stack.ca_cert))
    assert refused.returncode != 0
    records = [r for r in stack.records() if r["host"] == "localhost"]
    assert records and {(r["kind"], r["decision"], r["reason"], r["agent"])
                        for r in records} == {("connect", "allow", "passthrough", "builder")}
    assert all(r["credential"] is None for r in records)  # no key went this way


def test_passthrough_needs_the_proxy_token(stack: Stack) -> None:
    done = curl(stack, "--cacert", str(stack.pki / "ca.pem"), "-o", "/dev/null",
                "-w", "%{http_connect}")
    assert done.stdout == "407"
    denied = [r for r in stack.records() if r["reason"] == "identity_missing"]
    assert denied and denied[-1]["host"] == "localhost" and denied[-1]["kind"] == "connect"

