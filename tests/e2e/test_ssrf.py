"""SSRF and domain fronting through the real proxy: every refusal answered and audited.

Agents are raw sockets (to send spellings and headers no client library would, over
HTTP/1.1 and, with the `h2` package, HTTP/2) and curl. The pass-through list names
`localhost` (which resolves through /etc/hosts, to loopback) on 443 and on the proxy's
own port, and a `.invalid` name.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import orjson
import pytest

from egressguard.tools.stack import REPO_POLICY, Stack
from tests.e2e.conftest import fake_key

pytestmark = pytest.mark.e2e

TIMEOUT = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("ssrf")
    policy = workdir / "policy.yaml"
    s = Stack(workdir, policy=policy)
    policy.write_text(REPO_POLICY.read_text().replace(
        "  - pypi.org\n",
        f"  - {{host: localhost, ports: [443, {s.proxy_port}]}}\n  - nothing.invalid\n"))
    with s:
        s.put_key("openai", fake_key())
        yield s


@pytest.fixture(scope="module")
def token(stack: Stack) -> str:
    return stack.token("prober")


def connect(stack: Stack, target: str, token: str) -> tuple[int, dict]:
    """Send `CONNECT target` byte for byte; (status, JSON error) of the answer."""
    auth = base64.b64encode(f"prober:{token}".encode()).decode()
    with socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=TIMEOUT) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
        return read_response(sock)


def read_response(sock: socket.socket | ssl.SSLSocket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body) if body.startswith(b"{") else {"raw": body}


def _length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def record_for(stack: Stack, host: str, reason: str) -> dict:
    """The audit record of the refusal (records are durable before the answer)."""
    found = [r for r in stack.records() if (r["host"], r["reason"]) == (host, reason)]
    assert found, f"no {reason} record for {host}"
    return found[-1]


SPELLINGS = [
    # CONNECT target, host as recorded, in the message
    ("127.1:443", "127.1", "'127.1' is the IP address 127.0.0.1, a loopback address"),
    ("0x7f.1:443", "0x7f.1", "is the IP address 127.0.0.1, a loopback address"),
    ("0X7F.0.0.1:443", "0x7f.0.0.1", "is the IP address 127.0.0.1"),
    ("017700000001:443", "017700000001", "is the IP address 127.0.0.1"),
    ("2130706433:443", "2130706433", "is the IP address 127.0.0.1"),
    ("0177.0x0.1:443", "0177.0x0.1", "is the IP address 127.0.0.1"),
    ("127.0.0.1.:443", "127.0.0.1", "is the IP address 127.0.0.1"),
    ("[::1]:443", "::1", "is the IP address ::1, a loopback address"),
    ("[::ffff:127.0.0.1]:443", "::ffff:127.0.0.1", "(127.0.0.1 in IPv4-mapped form)"),
    ("[64:ff9b::7f00:1]:443", "64:ff9b::7f00:1", "(127.0.0.1 in NAT64 form)"),
    ("[2002:a9fe:a9fe::]:443", "2002:a9fe:a9fe::",
     "a cloud metadata address (169.254.169.254 in 6to4 form)"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]:443", "2001:0:4136:e378:8000:63bf:80ff:fffe",
     "(127.0.0.1 in Teredo client form)"),
    ("[fe80::1%25eth0]:443", "fe80::1%25eth0", "is the IP address fe80::1, a link-local"),
    ("169.254.169.254:443", "169.254.169.254", "a cloud metadata address"),
    ("0251.0376.0251.0376:443", "0251.0376.0251.0376", "a cloud metadata address"),
    ("[fd00:ec2::254]:443", "fd00:ec2::254", "a cloud metadata address"),
    ("100.100.100.200:443", "100.100.100.200", "a cloud metadata address"),
    ("10.0.0.1:443", "10.0.0.1", "a private address"),
    ("100.64.0.1:443", "100.64.0.1", "a carrier-grade NAT address"),
    ("224.0.0.1:443", "224.0.0.1", "a multicast address"),
    ("8.8.8.8:443", "8.8.8.8", "'8.8.8.8' is the IP address 8.8.8.8; agents reach "
                               "destinations by name only, whatever the policy says"),
]


@pytest.mark.parametrize(("target", "host", "message"), SPELLINGS)
def test_connect_to_an_ip_literal_is_refused_in_every_spelling(
        stack: Stack, token: str, target: str, host: str, message: str) -> None:
    status, body = connect(stack, target, token)
    assert status == 403
    assert body["error"]["code"] == "ip_literal_denied"
    assert message in body["error"]["message"]
    assert message in record_for(stack, host, "ip_literal_denied")["message"]


@pytest.mark.parametrize("target", ["%31%32%37.0.0.1:443",
                                    "\uff11\uff12\uff17.\uff10.\uff10.\uff11:443"])
def test_spellings_mitmproxy_cannot_parse_are_refused_before_egressguard(
        stack: Stack, token: str, target: str) -> None:
    """Percent-encoded and full-width hosts never reach a hook: mitmproxy answers 400
    (netguard would read them as 127.0.0.1 too, see test_netguard)."""
    status, body = connect(stack, target, token)
    assert status == 400 and b"Bad HTTP request line" in body["raw"]


def test_curl_to_an_ip_literal_is_refused(stack: Stack, token: str) -> None:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--proxy", stack.proxy, "--proxy-user",
         f"prober:{token}", "-o", "/dev/null", "-w", "%{http_connect}",
         "https://0x7f.1/latest/meta-data/"],
        capture_output=True, text=True, timeout=20, check=False)
    assert done.stdout == "403"
    # curl sends the canonical form: refused all the same
    assert record_for(stack, "127.0.0.1", "ip_literal_denied")


@pytest.mark.parametrize(("target", "host", "reason", "message"), [
    ("localhost:443", "localhost", "forbidden_address",
     "'localhost' resolves to a loopback address (127.0.0.1); egressguard never connects "
     "agents to internal, loopback or metadata addresses"),
    ("LOCALHOST.:443", "localhost", "forbidden_address", "resolves to a loopback address"),
    ("nothing.invalid:443", "nothing.invalid", "resolution_failed",
     "'nothing.invalid' could not be resolved ("),
])
def test_allowed_names_are_resolved_and_checked(stack: Stack, token: str, target: str,
                                                host: str, reason: str, message: str) -> None:
    status, body = connect(stack, target, token)
    assert status == 403
    assert body["error"]["code"] == reason and message in body["error"]["message"]
    record = record_for(stack, host, reason)
    assert (record["kind"], record["decision"], record["agent"]) == ("connect", "deny", "prober")


def test_connect_back_to_the_proxy_is_refused(stack: Stack, token: str) -> None:
    status, body = connect(stack, f"localhost:{stack.proxy_port}", token)
    assert status == 403
    assert body["error"] == {
        "message": f"localhost:{stack.proxy_port} is this proxy's own listening address "
                   "(127.0.0.1); a connection back to the proxy is refused",
        "type": "invalid_request_error", "param": None, "code": "proxy_loop"}
    assert record_for(stack, "localhost", "proxy_loop")
    status, body = connect(stack, f"127.0.0.1:{stack.proxy_port}", token)
    assert (status, body["error"]["code"]) == (403, "ip_literal_denied")


def test_ports_follow_the_policy(stack: Stack, token: str) -> None:
    status, body = connect(stack, "localhost:8443", token)
    assert status == 403 and body["error"]["code"] == "port_denied"
    assert f"(allowed: 443, {stack.proxy_port})" in body["error"]["message"]
    status, body = connect(stack, "api.openai.com:8443", token)
    assert body["error"]["code"] == "port_denied"


def test_plain_http_to_a_metadata_address_is_refused(stack: Stack, token: str) -> None:
    auth = base64.b64encode(f"prober:{token}".encode()).decode()
    with socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n"
                     b"Host: 169.254.169.254\r\nProxy-Authorization: Basic "
                     + auth.encode() + b"\r\n\r\n")
        status, body = read_response(sock)
    assert status == 403 and body["error"]["code"] == "ip_literal_denied"
    assert record_for(stack, "169.254.169.254", "ip_literal_denied")["kind"] == "request"


# -- domain fronting inside an intercepted tunnel --------------------------------------

def tunnel(stack: Stack, alpn: str) -> ssl.SSLSocket:
    """A TLS connection inside a CONNECT tunnel to api.openai.com, speaking `alpn`."""
    raw = socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=TIMEOUT)
    raw.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = stack.agent_ssl_context()
    ctx.set_alpn_protocols([alpn])
    tls = ctx.wrap_socket(raw, server_hostname="api.openai.com")
    assert tls.selected_alpn_protocol() == alpn
    return tls


def h2_get(stack: Stack, headers: list[tuple[str, str]]) -> tuple[int, dict]:
    """One HTTP/2 GET with exactly these headers (pseudo-headers included): the status
    and JSON body, or (0, {"reset": error code}) if the stream or connection is reset."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    status, body, ended = 0, b"", False
    with tunnel(stack, "h2") as tls:
        tls.sendall(conn.data_to_send())
        while not ended and (data := tls.recv(65536)):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(len(event.data), event.stream_id)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return 0, {"reset": h2.errors.ErrorCodes(event.error_code).name}
                ended = ended or isinstance(event, h2.events.StreamEnded)
            tls.sendall(conn.data_to_send())
    return status, orjson.loads(body)


def h2_headers(token: str, authority: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "https"), (":authority", authority),
            (":path", "/v1/models"), ("authorization", f"Bearer {token}"), *extra]


def test_http2_authority_must_name_the_connect_target(stack: Stack, token: str) -> None:
    status, body = h2_get(stack, h2_headers(token, "api.openai.com"))
    assert status == 200 and body["object"] == "list"  # HTTP/2 through the tunnel works
    status, body = h2_get(stack, h2_headers(token, "api.anthropic.com"))
    assert status == 403
    assert body["error"]["code"] == "host_mismatch"
    assert body["error"]["message"] == (":authority 'api.anthropic.com' does not match "
                                        "the CONNECT target 'api.openai.com'")
    record = record_for(stack, "api.openai.com", "host_mismatch")
    assert record["credential"] is None  # refused before any key was fetched


def test_http2_host_header_beside_the_authority_is_refused(stack: Stack, token: str) -> None:
    """mitmproxy's HTTP/2 stack resets a request whose Host differs from :authority before
    any hook runs (Egress would refuse it too, see test_egress)."""
    stack.reset_received()
    status, body = h2_get(stack, h2_headers(token, "api.openai.com",
                                            ("host", "api.anthropic.com")))
    assert (status, body) == (0, {"reset": "PROTOCOL_ERROR"})
    assert stack.received() == []


def test_absolute_form_target_inside_a_tunnel_is_refused(stack: Stack, token: str) -> None:
    with tunnel(stack, "http/1.1") as tls:
        tls.sendall(b"GET https://evil.example/v1/models HTTP/1.1\r\n"
                    b"Host: api.openai.com\r\nAuthorization: Bearer " + token.encode()
                    + b"\r\nConnection: close\r\n\r\n")
        status, body = read_response(tls)
    assert status == 403
    assert body["error"]["code"] == "host_mismatch"
    assert body["error"]["message"] == ("request target 'evil.example' does not match the "
                                        "CONNECT target 'api.openai.com'")
