"""A whole egressguard set-up on loopback: real OpenBao, the fake vendor, the proxy.

Used by the end-to-end tests, `egressguard demo` and the benchmarks: each process
starts on a free port, is waited for on a condition (never a fixed sleep) and is
stopped by process id. `Stack.replica` adds more proxy processes on the same OpenBao,
fake vendor, token key and CA, as replicas behind a load balancer would run (each
with its own port, journal and log), e.g. to share limits through one Redis.
"""

from __future__ import annotations

import json
import select
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from egressguard.backends.journal import read_records
from egressguard.core import tokens
from egressguard.core.policy import load as load_policy
from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.fakevendor import VENDOR_HOSTS
from egressguard.tools.procs import STOP_GRACE, free_port, port_open, spawn, terminate, wait_until

REPO_POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


class Stack:
    def __init__(self, workdir: Path, policy: Path | None = None,
                 proxy_args: tuple[str, ...] = (), limits_store: str = "",
                 vault_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.policy = policy or REPO_POLICY
        self.proxy_args = proxy_args  # more `egressguard run` flags
        self.limits_store = limits_store  # `--limits-store`: "" counts in the proxy process
        # how the proxy logs in to OpenBao (e.g. VAULT_ROLE_ID + VAULT_SECRET_ID); None:
        # the dev server's root token. VAULT_ADDR is always the stack's OpenBao.
        self.vault_env = vault_env
        self.state = workdir / "var"
        self.journal = workdir / "journal"
        self.certs = workdir / "certs"
        self.pki = workdir / "pki"
        self.vault = OpenBaoDev()
        self.vendor_port = 0
        self.proxy_port = free_port()
        self._vendor: subprocess.Popen[bytes] | None = None
        self._proxy: subprocess.Popen[bytes] | None = None
        self._authority: tokens.TokenAuthority | None = None
        self._parent: Stack | None = None  # a replica runs only a proxy, on its parent's parts
        self._replicas: list[Stack] = []

    # -- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, proxy: bool = True) -> Stack:
        """Start OpenBao, the fake vendor and (unless `proxy` is false, e.g. to set
        OpenBao up before any proxy logs in) the proxy; a replica starts its proxy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._parent is not None:
            self.start_proxy()
            return self
        try:
            self.vault.start()
            self._start_vendor()
            self._authority = tokens.TokenAuthority(
                tokens.load_or_create_key(self.state / "token.key"),
                tokens.RevocationList(self.state / "revoked-tokens"))
            if proxy:
                self.start_proxy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this stack started (its replicas' too); a replica stops
        only its own proxy."""
        for replica in self._replicas:
            replica.stop()
        self.stop_proxy()
        if self._parent is not None:
            return
        terminate(self._vendor)
        self._vendor = None
        self.vault.stop()

    def replica(self, name: str, policy: Path | None = None,
                proxy_args: tuple[str, ...] | None = None,
                limits_store: str | None = None,
                vault_env: dict[str, str] | None = None) -> Stack:
        """Another proxy on this stack's OpenBao, fake vendor, token key and CA, with its
        own port, journal and log under `workdir/name`; policy, flags, limits store and
        Vault log-in are this stack's unless given. Not started: use `start()` or `with`.
        Stopped by its own `stop()` or, at the latest, by this stack's."""
        assert self._authority is not None, "start the stack before adding replicas"
        other = Stack(self.workdir / name, policy or self.policy,
                      self.proxy_args if proxy_args is None else proxy_args,
                      self.limits_store if limits_store is None else limits_store,
                      self.vault_env if vault_env is None else vault_env)
        other.state, other.certs, other.pki = self.state, self.certs, self.pki
        other.vault, other.vendor_port = self.vault, self.vendor_port
        other._authority, other._parent = self._authority, self
        self._replicas.append(other)
        return other

    def start_proxy(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        """Start (again) the proxy; `env` overrides its Vault settings."""
        mapping = [f"{host}=127.0.0.1:{self.vendor_port}" for host in VENDOR_HOSTS
                   if host != "localhost"]
        args = [sys.executable, "-m", "egressguard.cli", "run", "--quiet",
                "--listen", f"127.0.0.1:{self.proxy_port}", "--policy", str(self.policy),
                "--state", str(self.state), "--journal", str(self.journal),
                "--certs", str(self.certs), "--upstream-ca", str(self.pki / "ca.pem"),
                *[a for m in mapping for a in ("--upstream-map", m)],
                # always given, so an EGRESSGUARD_LIMITS_STORE around us does not count
                "--limits-store", self.limits_store,
                # drained and closed (shutdown checkpoint) before `terminate` would kill it
                "--shutdown-grace", str(STOP_GRACE / 2), *self.proxy_args]
        login = {"VAULT_TOKEN": self.vault.root_token} if self.vault_env is None \
            else self.vault_env
        env = {"VAULT_ADDR": self.vault.addr, **login, **(env or {})}
        self._proxy = spawn(args, log=self.proxy_log, cwd=self.workdir, env=env)
        proc = self._proxy

        wait_until(lambda: proc.poll() is not None or port_open(self.proxy_port),
                   timeout=timeout, what="egressguard to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{self.proxy_output()}")

    def stop_proxy(self) -> None:
        terminate(self._proxy)
        self._proxy = None

    def kill_proxy(self) -> None:
        """`kill -9` the proxy: no shutdown, no last checkpoint (a crash)."""
        if self._proxy is not None:
            self._proxy.kill()
            self._proxy.wait()
            self._proxy = None

    def wait_proxy(self, timeout: float) -> int:
        """The proxy's exit code once it exits (after a signal); raises TimeoutError if it
        is still running after `timeout` seconds (it is then left running)."""
        if self._proxy is None:
            raise RuntimeError("the proxy was not started")
        try:
            code = self._proxy.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the proxy still runs after {timeout}s") from None
        self._proxy = None
        return code

    def signal_proxy(self, sig: int) -> None:
        """Send `sig` (e.g. SIGHUP: reload the policy) to the running proxy."""
        if self._proxy is None or self._proxy.poll() is not None:
            raise RuntimeError(f"the proxy is not running:\n{self.proxy_output()}")
        self._proxy.send_signal(sig)

    @property
    def proxy_pid(self) -> int:
        """The running proxy's process id (e.g. to read its memory use)."""
        if self._proxy is None or self._proxy.poll() is not None:
            raise RuntimeError(f"the proxy is not running:\n{self.proxy_output()}")
        return self._proxy.pid

    @property
    def proxy_log(self) -> Path:
        return self.workdir / "proxy.log"

    def proxy_output(self) -> str:
        return self.proxy_log.read_text(errors="replace") if self.proxy_log.exists() else ""

    def _start_vendor(self, timeout: float = 20.0) -> None:
        self._vendor = spawn([sys.executable, "-m", "egressguard.tools.fakevendor",
                              "--listen", "127.0.0.1:0", "--pki-dir", str(self.pki)],
                             log=self.workdir / "fakevendor.log", stdout_pipe=True)
        assert self._vendor.stdout is not None
        ready, _, _ = select.select([self._vendor.stdout], [], [], timeout)
        line = self._vendor.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("fake vendor did not start; see fakevendor.log")
        self.vendor_port = int(json.loads(line)["port"])

    # -- what a test or demo does with it ----------------------------------------------------
    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def proxy_url(self, agent: str, token: str) -> str:
        return f"http://{agent}:{token}@127.0.0.1:{self.proxy_port}"

    @property
    def ca_bundle(self) -> Path:
        """What agents trust: system roots + the interception CA."""
        return self.certs / "egressguard-ca-bundle.pem"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "egressguard-ca.pem"

    def agent_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def token(self, agent: str = "agent-1", team: str | None = None, ttl: int = 3600,
              issued_at: float | None = None) -> str:
        assert self._authority is not None
        return self._authority.issue(agent, team, ttl, now=issued_at)[0]

    def revoke(self, token: str) -> None:
        assert self._authority is not None
        principal = self._authority.verify(token)
        tokens.RevocationList(self.state / "revoked-tokens").add(principal.token_id)

    def put_key(self, vendor: str, value: str, agent: str | None = None,
                team: str | None = None) -> int:
        """Store a vendor key where the policy says this agent's key lives."""
        where = load_policy(self.policy).secrets.location_for(vendor, agent, team)
        return self.vault.put_secret(where.path, {where.field: value}, mount=where.mount)

    def received(self) -> list[dict[str, Any]]:
        """What the fake vendor received, in order (asked directly, not via the proxy)."""
        with self._vendor_client() as client:
            return list(client.get("/_fake/received").json())

    def reset_received(self) -> None:
        """Forget what the fake vendor received, any scripted reply and any faults."""
        with self._vendor_client() as client:
            client.post("/_fake/reset")

    def script_reply(self, text: str, chunk: int | None = None, delay: float = 0.0) -> None:
        """Make the fake vendor's models answer `text` (streamed `chunk` characters per
        event, `delay` seconds between events) until `reset_received`."""
        with self._vendor_client() as client:
            client.post("/_fake/reply", json={"text": text, "chunk": chunk, "delay": delay}
                        ).raise_for_status()

    def fail(self, *faults: dict[str, Any]) -> None:
        """Make the fake vendor fail requests as `faults` say, replacing any earlier ones
        (none: fail nothing), e.g. `fail({"vendor": "openai", "key": "-a", "status": 429,
        "times": 2})`; the fields are in `egressguard.tools.fakevendor`'s docstring.
        `reset_received` clears them too."""
        with self._vendor_client() as client:
            client.post("/_fake/faults", json={"faults": list(faults)}).raise_for_status()

    def _vendor_client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        return httpx.Client(base_url=f"https://localhost:{self.vendor_port}", verify=ctx,
                            trust_env=False, timeout=10)

    def records(self) -> list[dict[str, Any]]:
        return list(read_records([self.journal])) if self.journal.exists() else []

    def wait_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The journal once it holds at least `count` records."""
        return wait_until(lambda: (r := self.records()) and len(r) >= count and r,
                          timeout=timeout, what=f"{count} audit records")

