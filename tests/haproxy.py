"""A real, throw-away `haproxy` as the TCP load balancer in front of proxy replicas, for
tests, run from `deploy/haproxy/haproxy.cfg` as shipped: its balancing (`balance
source`, consistent hashing), its /readyz health checks and its timeouts are the
deploy file's own. Only what cannot hold outside compose is changed, each by an exact
string replacement that must match once (so a change to the deploy file the test cannot
follow fails loudly instead of being silently skipped): the listening address (a free
loopback port), each server's address (127.0.0.1 and the replica's port; its health
check on the replica's own metrics port), plus an admin socket, the test's own
addition, to read per-server state and connection counts. Stopped by pid.

Its files are in a temporary directory (the admin socket's path must stay under the 108
bytes a Unix socket address holds).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from egressguard.tools.procs import free_port, spawn, terminate, wait_until

START_TIMEOUT = 15.0
_SBIN = ("/usr/sbin", "/sbin")  # not on a non-root PATH
DEPLOY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
DEPLOY_PORT = 8080  # where compose's haproxy listens and its replicas' proxies listen
DEPLOY_CHECK = "default-server check port 9090 "  # the replicas' --metrics-listen port


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"{DEPLOY_CONFIG} no longer holds {old!r} once ({count} "
                             "times): update tests/haproxy.py's substitutions to follow it")
    return text.replace(old, new)


def deploy_servers() -> list[str]:
    """The server names of the deploy config's backend (compose's replica services)."""
    return re.findall(r"^\s*server\s+(\S+)\s", DEPLOY_CONFIG.read_text(), re.M)


def deploy_config(port: int, servers: dict[str, tuple[int, int]], admin_socket: Path) -> str:
    """deploy/haproxy/haproxy.cfg on loopback: listening on 127.0.0.1:`port`, each server
    (name -> (proxy port, metrics port)) at 127.0.0.1, its /readyz health check on its
    own metrics port (both replicas are on one host here, not on 9090 each)."""
    text = DEPLOY_CONFIG.read_text()
    text = _replace_once(text, "\nglobal\n", "\nglobal\n    # the test's own addition\n"
                         f"    stats socket {admin_socket} mode 600 level admin\n")
    text = _replace_once(text, f"\n    bind :{DEPLOY_PORT}\n", f"\n    bind 127.0.0.1:{port}\n")
    _replace_once(text, DEPLOY_CHECK, DEPLOY_CHECK)  # overridden per server below
    for name, (proxy_port, metrics_port) in servers.items():
        text = _replace_once(text, f"\n    server {name} {name}:{DEPLOY_PORT}\n",
                             f"\n    server {name} 127.0.0.1:{proxy_port} port {metrics_port}\n")
    left = [line for line in re.findall(r"^\s*server\s.*$", text, re.M)
            if " 127.0.0.1:" not in line]
    if left:
        raise AssertionError(f"{DEPLOY_CONFIG} has servers the test did not place: {left}")
    return text


def _binary() -> str:
    path = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if path is None:
        raise RuntimeError("haproxy is not installed: `make test-deps` installs it "
                           "(Debian package haproxy), or `apt-get install haproxy`")
    return path


class HAProxy:
    """One `haproxy` on the deploy config, listening on 127.0.0.1:`port`, balancing TCP
    connections over `servers` (name -> (proxy port, metrics port) on loopback)."""

    def __init__(self, servers: dict[str, tuple[int, int]]) -> None:
        self.servers = dict(servers)
        self.port = free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What agents put in HTTPS_PROXY (credentials apart)."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> HAProxy:
        binary = _binary()
        self._dir = Path(tempfile.mkdtemp(prefix="haproxy-test-"))
        config = self._dir / "haproxy.cfg"
        config.write_text(deploy_config(self.port, self.servers, self._dir / "admin.sock"))
        check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True,
                               text=True, timeout=START_TIMEOUT, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config {config}:\n{check.stderr}")
        # -db: stay in the foreground, so the pid we hold is the one that serves
        self._proc = spawn([binary, "-db", "-f", str(config)], log=self._dir / "haproxy.log")
        try:
            wait_until(self._all_up, timeout=START_TIMEOUT,
                       what=f"haproxy on port {self.port} with every server UP")
        except Exception as exc:
            log = self.log()
            self.stop()
            raise RuntimeError(f"haproxy did not come up: {exc}\n{log}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log(self) -> str:
        path = self._dir / "haproxy.log" if self._dir else None
        return path.read_text(errors="replace")[-4000:] if path and path.exists() else ""

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` per server of the backend: status (UP, DOWN, ...), stot (the
        connections it was given in all), scur (open now), ..."""
        assert self._dir is not None, "not started"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self._dir / "admin.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
        return {row["svname"]: row for row in rows
                if row["pxname"] == "egressguard" and row["svname"] in self.servers}

    def connections(self) -> dict[str, int]:
        """How many connections each server was given."""
        return {name: int(row["stot"]) for name, row in self.stats().items()}

    def _all_up(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self._proc.returncode}")
        stats = self.stats()  # raises (not yet) until the admin socket answers
        return len(stats) == len(self.servers) and \
            all(row["status"] == "UP" for row in stats.values())
