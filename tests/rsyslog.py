"""A real, throw-away `rsyslogd` on free loopback ports, for tests of the syslog senders:
one plain TCP input and one TLS input (RFC 5425), each taking octet-counted frames, and
every message received written raw, one per line, to a file in the test's directory.

It runs in the foreground with its own config, pid file and work directory, and
processes its own internal messages (so nothing goes to the system's /dev/log or
/etc/rsyslog.conf). Stopped by pid.

What rsyslog does to a message (asserted in tests/test_rsyslog.py): the line is
`%rawmsg%`, the frame's payload byte for byte, except that control characters are
escaped as `#` + three octal digits (rsyslog's default
`parser.escapeControlCharactersOnReceive`): a newline inside a message is written
`#012`, CR `#015`, tab `#011`, NUL `#000`; a trailing newline is dropped. A literal
`#012` in the text looks the same, so this cannot be undone -- JSON records, whose
escapes leave no control characters, arrive exact. UTF-8 (and invalid UTF-8) and DEL
are kept as they are.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

from egressguard.tools.fakevendor import make_pki
from egressguard.tools.procs import free_port, port_open, spawn, terminate, wait_until

START_TIMEOUT = 15.0
MAX_MESSAGE_SIZE = 64 * 1024  # rsyslog's default (8k) would truncate large records
_SBIN = ("/usr/sbin", "/sbin")  # not on a non-root PATH
_GTLS = ("/usr/lib/*/rsyslog/lmnsd_gtls.so", "/usr/lib/rsyslog/lmnsd_gtls.so",
         "/usr/lib64/rsyslog/lmnsd_gtls.so")
_CONFIG = """\
global(
  workDirectory="{dir}/work"
  maxMessageSize="{max_size}"
  net.enableDNS="off"
  processInternalMessages="on"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="received") {{
  action(type="omfile" file="{dir}/messages.log" template="raw")
}}
input(type="imtcp" name="plain" address="127.0.0.1" port="{plain}" ruleset="received")
# TLS without client authentication: the server shows its certificate, checks none.
input(type="imtcp" name="tls" address="127.0.0.1" port="{tls}" ruleset="received"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
# rsyslogd's own messages (start, errors), for the failure report
*.* action(type="omfile" file="{dir}/rsyslogd.log")
"""


def _binary() -> str:
    path = shutil.which("rsyslogd", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if path is None:
        raise RuntimeError("rsyslogd is not installed: `make test-deps` installs it "
                           "(Debian package rsyslog), or `apt-get install rsyslog`")
    if not any(glob.glob(pattern) for pattern in _GTLS):
        raise RuntimeError("rsyslog's TLS driver lmnsd_gtls.so is not installed: "
                           "`make test-deps` installs it (Debian package rsyslog-gnutls), "
                           "or `apt-get install rsyslog-gnutls`")
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def close_tls(tls: ssl.SSLSocket) -> None:
    """Send TLS close_notify before closing: rsyslogd logs a session that ends without one
    as an error. It closes without answering in kind, hence the EOF."""
    with contextlib.suppress(ssl.SSLEOFError):
        tls.unwrap()


class Rsyslog:
    """One `rsyslogd` with a plain TCP input on `plain_port` and a TLS input on
    `tls_port` (server certificate issued by `ca_file`), files under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.plain_port, self.tls_port = free_port(), free_port()
        pki = make_pki(directory / "pki")
        self.ca_file, self._cert, self._key = pki.ca_cert, pki.cert, pki.key
        self.messages_file = directory / "messages.log"
        self.config_file = directory / "rsyslog.conf"
        self._pid_file = directory / "rsyslogd.pid"
        self._internal_log = directory / "rsyslogd.log"
        self._output = directory / "rsyslogd.out"
        self._proc: subprocess.Popen[bytes] | None = None
        self._since: dict[Path, int] = {}

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> Rsyslog:
        binary = _binary()
        (self.directory / "work").mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(_CONFIG.format(
            dir=self.directory, max_size=MAX_MESSAGE_SIZE, ca=self.ca_file, cert=self._cert,
            key=self._key, plain=self.plain_port, tls=self.tls_port))
        check = subprocess.run([binary, "-N1", "-f", str(self.config_file)],
                               capture_output=True, text=True, timeout=START_TIMEOUT)
        if check.returncode != 0:
            raise RuntimeError(f"rsyslogd refused its config {self.config_file}:\n"
                               f"{check.stdout}{check.stderr}")
        # a restart appends to both logs: only what this run writes counts
        self._since = {path: _size(path) for path in (self._output, self._internal_log)}
        self._proc = spawn([binary, "-n", "-f", str(self.config_file), "-i",
                            str(self._pid_file)], log=self._output)
        try:
            wait_until(self._started, timeout=START_TIMEOUT,
                       what=f"rsyslogd to start (see {self._internal_log})")
            self._check_listening()
        except Exception as exc:
            report = self.diagnostics()
            self.stop()
            raise RuntimeError(f"rsyslogd did not start: {exc}\n{report}") from exc
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

    def pause(self) -> None:
        """Stop reading (SIGSTOP) without closing the ports: a hung receiver. The kernel
        still accepts (and TCP-acknowledges) bytes until the socket buffers fill."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def messages(self) -> list[bytes]:
        """Every complete line written so far, without its newline."""
        try:
            data = self.messages_file.read_bytes()
        except FileNotFoundError:
            return []
        return data.split(b"\n")[:-1]  # a line still being written is not a message yet

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The messages, once there are at least `count` of them."""
        def enough() -> list[bytes] | None:
            messages = self.messages()
            return messages if len(messages) >= count else None

        try:
            return wait_until(enough, timeout=timeout,
                              what=f"{count} messages in {self.messages_file}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; got {self.messages()!r}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """rsyslogd's own output since it was last started: stderr, internal messages."""
        return "".join(f"--- {path.name} ---\n{self._new_text(path)[-4000:] or '(empty)'}\n"
                       for path in (self._output, self._internal_log))

    def _new_text(self, path: Path) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(self._since.get(path, 0))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts this server (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _started(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"rsyslogd exited with {self._proc.returncode}")
        log = self._new_text(self._internal_log)
        pid = self._pid_file.read_text().strip() if self._pid_file.exists() else ""
        # rsyslogd logs "start" after its inputs are set up (or have failed to be)
        return 'software="rsyslogd"' in log and "] start" in log and pid == str(self._proc.pid)

    def _check_listening(self) -> None:
        # rsyslogd carries on without an input it could not set up (a port in use, a
        # driver missing): what it printed is the only sign. A clean start prints nothing.
        if self._new_text(self._output).strip():
            raise RuntimeError("rsyslogd reported problems while starting")
        if not port_open(self.plain_port):
            raise RuntimeError(f"rsyslogd is not listening on its TCP port {self.plain_port}")
        try:
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw, \
                    self.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                close_tls(tls)
        except OSError as exc:
            raise RuntimeError(f"no TLS handshake on rsyslogd's TLS port {self.tls_port}: "
                               f"{exc}") from exc
