"""`make run` as a user follows it: `egressguard run --local-vault` on embedded defaults.

The proxy starts its own persistent OpenBao under --state, prints the lines an agent
needs, and the test then does what the banner says, in a shell: mint a token with the
printed command, store a key with the printed command, and send a request with curl
using the printed environment. There is no internet here, so api.openai.com is mapped
to the local TLS fake vendor (`--upstream-map`, `--upstream-ca`), which records what
arrived.
"""

from __future__ import annotations

import json
import os
import select
import signal
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from egressguard.backends.journal import read_records
from egressguard.tools.localvault import LocalVault
from egressguard.tools.procs import free_port, port_open, spawn, terminate, wait_until
from tests.e2e.conftest import fake_key, headers_of

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies" / "default.yaml"
EGRESSGUARD = Path(sys.executable).with_name("egressguard")
AMBIENT = ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID",
           "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
           "http_proxy", "https_proxy", "all_proxy", "no_proxy")
START_TIMEOUT = 60.0  # a first start initialises OpenBao (raft election) before listening
STOP_TIMEOUT = 10.0  # SIGTERM to exit
SHELL_TIMEOUT = 60.0  # one agent session: token, (key), curl
AGENT = "laptop-agent"  # "AGENT is any name you choose"
DEFAULT_VAULT_PORT = 8200


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without Vault or proxy settings, HOME moved."""
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    env["HOME"] = str(home)
    return env


class FakeVendor:
    """`python -m egressguard.tools.fakevendor` on a free port, with its own test PKI."""

    def __init__(self, workdir: Path) -> None:
        self.pki = workdir / "pki"
        self.proc = spawn([sys.executable, "-m", "egressguard.tools.fakevendor",
                           "--listen", "127.0.0.1:0", "--pki-dir", str(self.pki)],
                          log=workdir / "fakevendor.log", stdout_pipe=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            terminate(self.proc)
            raise RuntimeError(f"fake vendor did not start; see {workdir / 'fakevendor.log'}")
        self.port = int(json.loads(line)["port"])

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"

    def received(self) -> list[dict[str, Any]]:
        """What it received, asked directly (not through the proxy)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        with httpx.Client(base_url=f"https://localhost:{self.port}", verify=ctx,
                          trust_env=False, timeout=10) as client:
            return list(client.get("/_fake/received").json())

    def stop(self) -> None:
        terminate(self.proc)


class LocalRun:
    """`egressguard run --local-vault` with every file under `workdir`, as `make run`
    starts it, plus the upstream map to the fake vendor."""

    def __init__(self, workdir: Path, vendor: FakeVendor, vault_port: int | None) -> None:
        self.workdir, self.vendor, self.vault_port = workdir, vendor, vault_port
        self.state = workdir / "var"
        self.journal = workdir / "journal"
        self.certs = workdir / "certs"
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = workdir / "run-0.log"
        self.starts = 0

    @property
    def openbao(self) -> LocalVault:
        return LocalVault(self.state / "openbao")

    def start(self) -> str:
        """Start the proxy and return its banner once it listens."""
        self.starts += 1
        self.port = free_port()
        self.log = self.workdir / f"run-{self.starts}.log"
        port_flag = ["--local-vault-port", str(self.vault_port)] if self.vault_port else []
        args = [str(EGRESSGUARD), "run", "--local-vault", *port_flag,
                "--listen", f"127.0.0.1:{self.port}", "--state", str(self.state),
                "--journal", str(self.journal), "--certs", str(self.certs),
                "--policy", str(POLICY),
                "--upstream-map", f"api.openai.com=127.0.0.1:{self.vendor.port}",
                "--upstream-ca", str(self.vendor.ca)]
        with pytest.MonkeyPatch.context() as mp:
            for var in AMBIENT:  # spawn() adds os.environ: no developer Vault, no proxy
                mp.delenv(var, raising=False)
            mp.setenv("HOME", str(self.home))
            self.proc = spawn(args, log=self.log, cwd=self.workdir)
        proc = self.proc

        def listening_or_exited() -> bool:
            # wait_until retries on exceptions, so an early exit is returned, not raised.
            return proc.poll() is not None or (
                "Audit records:" in self.output() and port_open(self.port))

        wait_until(listening_or_exited, timeout=START_TIMEOUT, what="egressguard run to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"egressguard run exited with {proc.returncode}:\n"
                               + self.output())
        return self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C or a service manager would; the proxy must exit by itself."""
        proc, self.proc = self.proc, None
        assert proc is not None and proc.poll() is None, self.output()
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_TIMEOUT)
        finally:
            terminate(proc)  # only if it did not exit; reaps it either way

    def close(self) -> None:
        """Everything this run started, the detached OpenBao included."""
        terminate(self.proc)
        self.proc = None
        self.openbao.stop()

    # -- what the user does with the banner -------------------------------------------
    def agent_session(self, banner: str, *, key: str | None = None,
                      cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        """In bash: optionally the printed `secrets put` with `key` on stdin, then the
        printed export lines (AGENT replaced by a name, as the banner says) and one
        chat completion with curl. stdout ends with the HTTP status on its own line."""
        exports = [line.strip().replace("AGENT", AGENT) for line in banner.splitlines()
                   if line.startswith("  export ")]
        store = [f'printf "%s\\n" "$FAKE_KEY" | {secrets_put_line(banner)}'] if key else []
        script = "\n".join([
            "set -euo pipefail", *store, *exports,
            'test -n "$EGRESSGUARD_TOKEN"',
            'curl -sS --max-time 20 --cacert "$SSL_CERT_FILE" -w "\\n%{http_code}\\n" '
            '-H "Authorization: Bearer $OPENAI_API_KEY" -H "content-type: application/json" '
            "-d '{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", "
            "\"content\": \"hi\"}]}' https://api.openai.com/v1/chat/completions",
        ])
        env = clean_env(self.home) | ({"FAKE_KEY": key} if key else {})
        return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=SHELL_TIMEOUT, check=False)

    def records(self) -> list[dict[str, Any]]:
        return list(read_records([self.journal])) if self.journal.exists() else []


def secrets_put_line(banner: str) -> str:
    lines = banner.splitlines()
    at = lines.index("Store a vendor key (read from stdin, never echoed):")
    return lines[at + 1].strip()


def status_of(session: subprocess.CompletedProcess[str]) -> int:
    assert session.returncode == 0, session.stdout + session.stderr
    return int(session.stdout.rstrip("\n").rsplit("\n", 1)[-1])


def injected(vendor: FakeVendor) -> str:
    last = vendor.received()[-1]
    return [v for k, v in headers_of(last) if k == "authorization"][0]


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVendor]:
    fake = FakeVendor(tmp_path_factory.mktemp("vendor"))
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory,
        vendor: FakeVendor) -> Iterator[tuple[LocalRun, str]]:
    """One `run --local-vault` (vault on a free port) and its banner; left running."""
    local = LocalRun(tmp_path_factory.mktemp("run-local"), vendor, vault_port=free_port())
    try:
        banner = local.start()
        yield local, banner
    finally:
        local.close()


def test_banner_prints_the_exact_agent_lines(run: tuple[LocalRun, str]) -> None:
    local, banner = run
    lines = banner.splitlines()

    assert (f"egressguard: local OpenBao at http://127.0.0.1:{local.vault_port} "
            f"(state in {local.state / 'openbao'})") in lines
    assert (f"  export EGRESSGUARD_TOKEN=$({EGRESSGUARD} token issue --state "
            f"{local.state.resolve()} --agent AGENT)") in lines
    assert (f"  export HTTPS_PROXY=http://AGENT:$EGRESSGUARD_TOKEN@127.0.0.1:{local.port}"
            in lines)
    assert (f"  export SSL_CERT_FILE={(local.certs / 'egressguard-ca-bundle.pem').resolve()}"
            in lines)
    assert any(line.startswith("  export OPENAI_API_KEY=$EGRESSGUARD_TOKEN")
               for line in lines)
    assert secrets_put_line(banner).startswith(
        f"{EGRESSGUARD} secrets put openai --state {local.state.resolve()}")


def test_local_openbao_state_is_private(run: tuple[LocalRun, str]) -> None:
    local, _ = run
    openbao = local.state / "openbao"

    assert mode(openbao) == 0o700
    assert mode(openbao / "data") == 0o700
    for private in ("init.json", "proxy-token"):
        assert mode(openbao / private) == 0o600, private
    assert local.openbao.is_running()
    assert mode(local.state / "token.key") == 0o600


def test_following_the_banner_sends_the_stored_key(run: tuple[LocalRun, str],
                                                   vendor: FakeVendor) -> None:
    local, banner = run
    key = fake_key()

    session = local.agent_session(banner, key=key)

    assert status_of(session) == 200, session.stdout
    assert "stored openai key at secret/egressguard/vendors/openai" in session.stderr
    assert key not in session.stdout + session.stderr
    received = vendor.received()[-1]
    assert received["path"] == "/v1/chat/completions"
    assert injected(vendor) == f"Bearer {key}"
    assert not any("egt1." in v for _, v in headers_of(received)), "agent token leaked"
    record = wait_until(lambda: [r for r in local.records() if r["agent"] == AGENT],
                        timeout=10, what="the journal record")[-1]
    assert (record["vendor"], record["status"], record["decision"]) == ("openai", 200, "allow")
    assert record["credential"]["path"] == "secret/egressguard/vendors/openai"
    assert key not in local.output()


def test_printed_secrets_command_works_from_any_directory(run: tuple[LocalRun, str],
                                                          tmp_path: Path) -> None:
    local, banner = run
    key = fake_key()

    stored = subprocess.run(["bash", "-c", secrets_put_line(banner)], input=key + "\n",
                            env=clean_env(local.home), cwd=tmp_path, capture_output=True,
                            text=True, timeout=SHELL_TIMEOUT, check=False)

    assert stored.returncode == 0, stored.stderr
    assert key not in stored.stdout + stored.stderr


def test_restart_reuses_the_initialised_openbao_and_its_keys(run: tuple[LocalRun, str],
                                                             vendor: FakeVendor) -> None:
    local, banner = run
    key = fake_key()
    assert status_of(local.agent_session(banner, key=key)) == 200
    init = local.state / "openbao" / "init.json"
    init_before = (init.read_bytes(), init.stat().st_mtime_ns, init.stat().st_ino)

    assert local.stop() == 0, local.output()
    assert not port_open(local.port)
    local.openbao.stop()  # the store too: its keys must come back from disk
    assert not port_open(local.vault_port or DEFAULT_VAULT_PORT)

    banner = local.start()
    assert "local OpenBao at" in banner
    assert (init.read_bytes(), init.stat().st_mtime_ns, init.stat().st_ino) == init_before
    session = local.agent_session(banner)  # no key stored this time
    assert status_of(session) == 200, session.stdout
    assert injected(vendor) == f"Bearer {key}"


def test_make_run_default_vault_port(tmp_path: Path, vendor: FakeVendor) -> None:
    """What `make run` does: no port flag, so OpenBao on 8200 (only if that is free)."""
    if port_open(DEFAULT_VAULT_PORT):
        pytest.skip(f"port {DEFAULT_VAULT_PORT} is in use on this machine")
    local = LocalRun(tmp_path, vendor, vault_port=None)
    try:
        try:
            banner = local.start()
        except RuntimeError as exc:
            if f"port {DEFAULT_VAULT_PORT} on 127.0.0.1 is already in use" in str(exc):
                pytest.skip(f"port {DEFAULT_VAULT_PORT} was taken meanwhile")
            raise
        assert f"local OpenBao at http://127.0.0.1:{DEFAULT_VAULT_PORT} " in banner
        key = fake_key()
        assert status_of(local.agent_session(banner, key=key)) == 200
        assert injected(vendor) == f"Bearer {key}"
        assert local.stop() == 0, local.output()
    finally:
        local.close()
    assert not local.openbao.is_running()
