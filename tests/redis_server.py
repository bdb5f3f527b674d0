"""A real, throw-away `redis-server` on a free loopback port, for tests: in memory only
(no snapshots, no append-only file), stopped by pid."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from egressguard.tools.procs import free_port, port_open, spawn, terminate, wait_until


def _binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed: `make test-deps` installs it "
                           "(Debian package redis-server), or `apt-get install redis-server`")
    return path


class RedisServer:
    """One `redis-server` on 127.0.0.1:`port`, with `password` if given."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RedisServer:
        binary = _binary()
        self._log = Path(tempfile.mkdtemp(prefix="redis-test-")) / "redis.log"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self._log.parent)]
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = spawn(args, log=self._log)
        try:
            wait_until(self._ready, timeout=10, what=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused server would not see SIGTERM
            terminate(proc)
        if self._log is not None:
            shutil.rmtree(self._log.parent, ignore_errors=True)
            self._log = None

    def pause(self) -> None:
        """Stop answering without closing the port (SIGSTOP): a hung server."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _ready(self) -> bool:
        assert self._proc is not None and self._log is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n"
                               + self._log.read_text(errors="replace")[-2000:])
        if not port_open(self.port):
            return False
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)  # +PONG, or -NOAUTH when a password is set: both mean up
            return reply.startswith((b"+PONG", b"-NOAUTH"))
