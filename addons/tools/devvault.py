"""A real, throw-away OpenBao dev server (`bao server -dev`) for tests and the demo.

Dev mode keeps everything in memory, starts unsealed with a known root token and
KV v2 mounted at `secret/`, so a test gets a real secret store in about a second.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hvac
import requests

from egressguard.tools.localvault import bao_binary
from egressguard.tools.procs import STOP_GRACE, free_port, port_open, spawn, terminate, wait_until


def _free_port_pair() -> int:
    """A free port whose successor is free too: dev mode puts its cluster listener on port+1."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not port_open(port + 1):
            return port
    raise RuntimeError("no free pair of adjacent loopback ports")


class OpenBaoDev:
    """One `bao server -dev` process on 127.0.0.1:`port` with a known root token."""

    def __init__(self, port: int | None = None, root_token: str | None = None) -> None:
        self.port = port if port is not None else _free_port_pair()
        self.root_token = root_token if root_token is not None else secrets.token_hex(16)
        self.addr = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._clients: list[hvac.Client] = []

    def __enter__(self) -> OpenBaoDev:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> OpenBaoDev:
        if self._proc is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="openbao-dev-"))
        self._proc = spawn(
            [
                str(bao_binary()), "server", "-dev",
                f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                # Otherwise dev mode writes its token to the developer's ~/.vault-token.
                "-dev-no-store-token",
            ],
            log=self.log_path, cwd=self._workdir)
        # Backstop for a test that forgets stop(); PDEATHSIG covers a killed test process.
        atexit.register(self.stop)
        try:
            wait_until(self._ready, timeout=timeout, what=f"OpenBao dev server on {self.addr}")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def log_path(self) -> Path:
        """Server output of the current run (gone after stop)."""
        assert self._workdir is not None, "not started"
        return self._workdir / "openbao.log"

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                f"bao exited with {self._proc.returncode}; see {self.log_path}:\n"
                + self.log_path.read_text(errors="replace")[-2000:]
            )
        with self._raw_client() as client:
            # A dict only on 200: initialised, unsealed and active, as dev mode ends up.
            status = client.sys.read_health_status(method="GET")
        return isinstance(status, dict) and not status["sealed"] and not status["standby"]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        for client in self._clients:
            client.adapter.close()
        self._clients.clear()
        workdir, self._workdir = self._workdir, None
        if proc is None:
            return
        terminate(proc)
        wait_until(lambda: not port_open(self.port), timeout=STOP_GRACE, what="port to close")
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start on the same port and token; dev storage is in memory, so empty."""
        self.stop()
        self.start()

    def client(self) -> hvac.Client:
        """A root client; closed by stop(), so tests need not close it."""
        client = self._new_client()
        self._clients.append(client)
        return client

    def put_secret(self, path: str, data: dict[str, object], mount: str = "secret") -> int:
        """Write a KV v2 secret; returns its new version."""
        with self._raw_client() as client:
            result = client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, mount_point=mount
            )
        return int(result["data"]["version"])

    @contextlib.contextmanager
    def _raw_client(self) -> Iterator[hvac.Client]:
        client = self._new_client()
        try:
            yield client
        finally:
            client.adapter.close()

    def _new_client(self) -> hvac.Client:
        session = requests.Session()
        session.trust_env = False  # a test may set HTTP(S)_PROXY for the proxy under test
        return hvac.Client(url=self.addr, token=self.root_token, timeout=5, session=session)
