"""A real, throw-away `haproxy` as the TCP load balancer in front of proxy replicas, for
tests: round robin per connection, no TLS termination (agents send CONNECT and then
their own TLS, which only the proxy can answer), a TCP health check per server, and an
admin socket to read per-server state and connection counts. Stopped by pid.

`deploy/compose.yaml` puts the same kind of balancer in front of its replicas; this
one runs on a free loopback port with its files in a temporary directory (the admin
socket's path must stay under the 108 bytes a Unix socket address holds).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from egressguard.tools.procs import free_port, spawn, terminate, wait_until

START_TIMEOUT = 15.0
_SBIN = ("/usr/sbin", "/sbin")  # not on a non-root PATH
_CONFIG = """\
global
  maxconn 512
  stats socket {dir}/admin.sock mode 600 level admin
defaults
  mode tcp
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  timeout check 1s
frontend agents
  bind 127.0.0.1:{port}
  default_backend egressguard
backend egressguard
  balance roundrobin
{servers}
"""


def _binary() -> str:
    path = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if path is None:
        raise RuntimeError("haproxy is not installed: `make test-deps` installs it "
                           "(Debian package haproxy), or `apt-get install haproxy`")
    return path


class HAProxy:
    """One `haproxy` listening on 127.0.0.1:`port`, balancing TCP connections over
    `servers` (name -> loopback port) by round robin."""

    def __init__(self, servers: dict[str, int]) -> None:
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
        config.write_text(_CONFIG.format(dir=self._dir, port=self.port, servers="\n".join(
            f"  server {name} 127.0.0.1:{port} check inter 500ms fall 2 rise 1"
            for name, port in self.servers.items())))
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
