"""Child processes, free loopback ports and bounded waiting, for tests and dev tools."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], T | None | bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `condition` until it returns something truthy; raise after `timeout` seconds.

    Exceptions raised by the condition count as "not yet" and the last one is chained
    into the TimeoutError so a failing wait says why.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from last_exc
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_PR_SET_PDEATHSIG = 1
STOP_GRACE = 5.0  # seconds after SIGTERM before SIGKILL


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In the child before exec: send it `sig` if the parent dies (Linux only).

    The kernel ties this to the thread that forked, so start children from the thread
    that outlives them (pytest fixtures run on the main thread).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def spawn(args: Sequence[str], log: Path, cwd: Path | None = None,
          env: dict[str, str] | None = None, stdout_pipe: bool = False
          ) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a Ctrl-C for the parent is ours to pass on),
    killed if we die, output appended to `log` (stdout piped instead if asked)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(args), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else out, stderr=out,
            cwd=cwd, env={**os.environ, **(env or {})},
            start_new_session=True, preexec_fn=die_with_parent)


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps the child."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    if proc.stdout is not None:
        proc.stdout.close()


def start_announced(args: Sequence[str], timeout: float = 15.0
                    ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a server that prints one JSON line once it listens (the fake vendor, the
    fake SIEM); the process and that line. Raises if it exits or stays silent."""
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, bufsize=0,
                            preexec_fn=die_with_parent)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    out = bytearray()

    def first_line() -> bytes | None:
        out.extend(proc.stdout.read() or b"")  # type: ignore[union-attr]
        if proc.poll() is not None:
            raise RuntimeError(f"{args[2] if len(args) > 2 else args[0]} exited with "
                               f"{proc.returncode}")
        return bytes(out).partition(b"\n")[0] if b"\n" in out else None

    try:
        line = wait_until(first_line, timeout=timeout, what=f"the JSON line of {args[:3]}")
    except BaseException:
        stop_announced(proc)
        raise
    return proc, json.loads(line)


def stop_announced(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM and its exit code (SIGKILL and raise if it does not stop in time)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stdout:
            proc.stdout.close()
