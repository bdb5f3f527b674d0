"""The rsyslog fixture against a real rsyslogd: RFC 5425 octet-counted frames sent over
plain TCP and TLS land in its file byte for byte, however the writes cut them, and what
rsyslog does to control characters inside a message."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import rsyslog as rsyslog_module
from rsyslog import MAX_MESSAGE_SIZE, Rsyslog, close_tls

from egressguard.tools.fakevendor import make_pki

TRANSPORTS = ["plain", "tls"]
# RFC 5424 section 6.5, example 3: structured data and a UTF-8 message behind a BOM
RFC_EXAMPLE = (b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
               b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
               b'\xef\xbb\xbfAn application event log entry... caf\xc3\xa9')
# what the shippers send: an audit record as JSON, whose escapes keep it on one line
AUDIT_LINE = (b'<110>1 2026-01-02T03:04:05.678Z node-a egressguard 4242 audit '
              b'[egressguard@32473 seq="17"] {"id":"0190a5b2c3d4e5f60718293a4b5c6d7e",'
              b'"kind":"request","message":"line one\\nline two\\t\\u00e9","seq":17}')


def frame(message: bytes) -> bytes:
    """RFC 5425 / RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`."""
    return b"%d %s" % (len(message), message)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path) as rsyslogd:
        yield rsyslogd


@contextmanager
def connect(server: Rsyslog, transport: str) -> Iterator[socket.socket]:
    port = server.tls_port if transport == "tls" else server.plain_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each write its own segment
    if transport == "tls":
        sock = server.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
    try:
        yield sock
        if isinstance(sock, ssl.SSLSocket):
            close_tls(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_octet_counted_messages_land_byte_for_byte(server: Rsyslog, transport: str) -> None:
    with connect(server, transport) as sock:
        sock.sendall(frame(RFC_EXAMPLE))
        sock.sendall(frame(AUDIT_LINE))
    assert server.wait_for(2) == [RFC_EXAMPLE, AUDIT_LINE]


def test_a_large_message_over_tls_is_not_truncated(server: Rsyslog) -> None:
    # several TLS records, and more than rsyslog's default 8k maxMessageSize
    message = b"<110>1 - node-a egressguard - audit - " + b"x" * 40_000
    assert len(message) < MAX_MESSAGE_SIZE
    with connect(server, "tls") as sock:
        sock.sendall(frame(message))
    assert server.wait_for(1) == [message]


def test_tls_client_verifying_against_another_ca_refuses_the_server(
    server: Rsyslog, tmp_path: Path
) -> None:
    other = ssl.create_default_context(cafile=str(make_pki(tmp_path / "other").ca_cert))
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        other.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_frames_in_one_write_and_frames_split_over_writes_arrive_whole(
    server: Rsyslog, transport: str
) -> None:
    several = [b"<14>1 - h app - m%d - several in one write %d" % (i, i) for i in range(3)]
    split = [b"<14>1 - h app - s1 - split inside the length prefix",
             b"<14>1 - h app - s2 - split right after the space",
             b"<14>1 - h app - s3 - split inside a UTF-8 character: \xc3\xa9 here"]
    frames = [frame(m) for m in split]
    cuts = [1, frames[1].index(b" ") + 1, frames[2].index(b"\xc3") + 1]
    with connect(server, transport) as sock:
        sock.sendall(b"".join(frame(m) for m in several) + frames[0][:cuts[0]])
        # rsyslogd has read and written everything before the cut, and not the rest
        assert server.wait_for(3) == several
        for i, cut in enumerate(cuts):
            nxt = frames[i + 1][:cuts[i + 1]] if i + 1 < len(frames) else b""
            sock.sendall(frames[i][cut:] + nxt)
            assert server.wait_for(4 + i)[3 + i] == split[i]
    assert server.wait_for(6) == several + split
    assert len(server.messages()) == 6


@pytest.mark.parametrize(("sent", "written"), [
    # a newline inside a message (octet counting allows it) stays in one line, escaped
    (b"line one\nline two", b"line one#012line two"),
    (b"tab\there", b"tab#011here"),
    (b"crlf\r\nend", b"crlf#015#012end"),
    (b"nul\x00esc\x1b", b"nul#000esc#033"),
    (b"trailing newline\n", b"trailing newline"),  # dropped, not escaped
    (b"literal #012 text", b"literal #012 text"),  # so the escaping cannot be undone
    (b"del\x7f and invalid UTF-8 \xe9", b"del\x7f and invalid UTF-8 \xe9"),  # kept raw
])
def test_control_characters_are_escaped_as_octal_on_one_line(
    server: Rsyslog, sent: bytes, written: bytes
) -> None:
    head = b"<14>1 2026-01-02T03:04:05Z host app - - - "
    with connect(server, "plain") as sock:
        sock.sendall(frame(head + sent) + frame(head + b"next"))
    assert server.wait_for(2) == [head + written, head + b"next"]


def test_stop_ends_rsyslogd_by_pid_and_a_restart_keeps_ports_and_file(
    server: Rsyslog,
) -> None:
    with connect(server, "plain") as sock:
        sock.sendall(frame(b"<14>1 - h app - - - before"))
    server.wait_for(1)
    pid, ports = server.pid, (server.plain_port, server.tls_port)
    server.stop()
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    server.start()
    assert server.pid != pid and (server.plain_port, server.tls_port) == ports
    with connect(server, "tls") as sock:
        sock.sendall(frame(b"<14>1 - h app - - - after"))
    assert server.wait_for(2) == [b"<14>1 - h app - - - before", b"<14>1 - h app - - - after"]


def test_a_port_in_use_fails_loudly_with_rsyslogs_own_error(tmp_path: Path) -> None:
    server = Rsyslog(tmp_path)
    with socket.create_server(("127.0.0.1", server.plain_port)), \
            pytest.raises(RuntimeError, match="Address already in use") as failed:
        server.start()
    assert server.pid is None
    pid = re.search(r'x-pid="(\d+)"', str(failed.value))
    assert pid is not None and not Path(f"/proc/{pid[1]}").exists()  # stopped and reaped


def test_missing_rsyslogd_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rsyslog_module, "_SBIN", ())
    with pytest.raises(RuntimeError, match=r"Debian package rsyslog\)"):
        Rsyslog(tmp_path).start()


def test_missing_gtls_driver_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rsyslog_module, "_GTLS", (str(tmp_path / "lmnsd_gtls.so"),))
    with pytest.raises(RuntimeError, match=r"Debian package rsyslog-gnutls\)"):
        Rsyslog(tmp_path).start()


def test_pause_stops_rsyslogd_and_resume_delivers_what_the_kernel_buffered(
    server: Rsyslog,
) -> None:
    server.pause()
    try:
        state = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "T"  # stopped: reads nothing, yet the port still takes bytes
        with connect(server, "plain") as sock:
            sock.sendall(frame(b"<14>1 - h app - - - sent while paused"))
    finally:
        server.resume()
    assert server.wait_for(1) == [b"<14>1 - h app - - - sent while paused"]
