"""The proxy itself under protocol abuse: HTTP/1.1 and HTTP/2 agents, request smuggling,
h2c, HTTP/2 rapid reset and CONTINUATION floods, slow clients, oversized heads,
connections per agent, and no identity.

Agents are the openai SDK (over an HTTP/2 httpx client) and raw sockets inside a real
CONNECT tunnel (TLS with the stack's CA, frames from the `h2` package). The fake vendor
records every request it receives (`stack.received()`): what must never reach it is
checked there.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import httpx
import openai
import orjson
import pytest

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import headers_of

pytestmark = pytest.mark.e2e
OPENAI = "api.openai.com"
HEADER_TIMEOUT, BODY_TIMEOUT, MAX_RESETS, MAX_CONNECTIONS = 2, 3, 100, 4
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    args = ("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--max-stream-resets", str(MAX_RESETS),
            "--max-agent-connections", str(MAX_CONNECTIONS))
    with Stack(tmp_path_factory.mktemp("protocol"), proxy_args=args) as s:
        yield s


@pytest.fixture(scope="module")
def token(stack: Stack, keys: dict) -> str:
    return stack.token("protocol-agent")


@pytest.fixture
def vendor(stack: Stack) -> Stack:
    """The stack, with the fake vendor's memory of requests cleared."""
    stack.reset_received()
    return stack


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    """Every socket a test opened is closed after it (warnings are errors here)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


# -- raw agents ------------------------------------------------------------------------------

def connect(stack: Stack, *, proxy_auth: str | None = None, host: str = OPENAI,
            timeout: float = 10) -> tuple[socket.socket, bytes]:
    """A CONNECT to the proxy; the socket and the proxy's answer head."""
    sock = socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=timeout)
    _OPEN.append(sock)
    auth = f"Proxy-Authorization: {proxy_auth}\r\n" if proxy_auth else ""
    sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{auth}\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = sock.recv(4096)
        if not piece:
            break
        answer += piece
    return sock, answer


def tunnel(stack: Stack, alpn: str = "http/1.1", **kw: object) -> ssl.SSLSocket:
    """A TLS connection to the vendor's name through a CONNECT tunnel, as an agent has."""
    sock, answer = connect(stack, **kw)  # type: ignore[arg-type]
    assert answer.startswith(b"HTTP/1.1 200"), answer
    ctx = stack.agent_ssl_context()
    ctx.set_alpn_protocols([alpn])
    tls = ctx.wrap_socket(sock, server_hostname=OPENAI)
    _OPEN.append(tls)
    assert tls.selected_alpn_protocol() == alpn
    return tls


def plain(stack: Stack) -> socket.socket:
    """A connection to the proxy's port, as an agent that speaks to it directly."""
    sock = socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=10)
    _OPEN.append(sock)
    return sock


def read_all(sock: socket.socket, responses: int = 1, timeout: float = 10) -> bytes:
    """What the proxy sends, until `responses` whole responses (by Content-Length) have
    come, the proxy closes, or `timeout` passes."""
    sock.settimeout(timeout)
    out = b""
    try:
        while _complete(out) < responses and (piece := sock.recv(65536)):
            out += piece
    except (TimeoutError, ssl.SSLError, ConnectionResetError):
        pass
    return out


def _complete(raw: bytes) -> int:
    done = 0
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        if len(rest) < length:
            break
        done, raw = done + 1, rest[length:]
    return done


def status_and_error(raw: bytes) -> tuple[int, str]:
    """The first response's status and its error message (JSON or mitmproxy's HTML)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, orjson.loads(body.split(b"HTTP/1.1 ", 1)[0])["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return status, body.decode(errors="replace")


def other_agent_works(stack: Stack, token: str) -> None:
    """Another agent, at the same time, still gets its answer promptly."""
    started = time.monotonic()
    with httpx.Client(proxy=stack.proxy, verify=stack.agent_ssl_context(), timeout=10,
                      trust_env=False) as client:
        answer = client.post(f"https://{OPENAI}/v1/chat/completions", content=BODY,
                             headers={"Authorization": f"Bearer {token}",
                                      "content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 5


def proxy_rss_kib(stack: Stack) -> int:
    status = Path(f"/proc/{stack.proxy_pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


# -- HTTP/1.1 and HTTP/2 agents --------------------------------------------------------------

def test_http2_agent_gets_its_answer_with_the_key_injected_and_recorded(stack, keys, token,
                                                                         vendor):
    http_client = httpx.Client(http2=True, proxy=stack.proxy, verify=stack.agent_ssl_context(),
                               trust_env=False, timeout=30)
    client = openai.OpenAI(api_key=token, base_url=f"https://{OPENAI}/v1", max_retries=0,
                           http_client=http_client)
    with client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert raw.http_response.http_version == "HTTP/2"  # the SDK offers http/1.1 first
    assert raw.parse().choices[0].message.content == streamed == "Hello from fake openai"
    received = vendor.received()
    assert len(received) == 2
    assert ("authorization", f"Bearer {keys['openai']}") in headers_of(received[0])
    rid = raw.http_response.headers["x-egressguard-request-id"]
    record = next(r for r in stack.wait_records(1) if r["id"] == rid)
    assert (record["agent"], record["status"], record["decision"]) == (
        "protocol-agent", 200, "allow")


def test_no_identity_never_reaches_the_vendor(stack, vendor):
    sock = tunnel(stack)  # CONNECT without Proxy-Authorization, request without a key
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(BODY), BODY))
    status, message = status_and_error(read_all(sock))
    assert status == 401 and "no agent identity" in message
    sock, answer = connect(stack, host="pypi.org")  # a pass-through host: a blind tunnel
    assert answer.startswith(b"HTTP/1.1 407")
    direct = plain(stack)
    direct.sendall(b"GET http://api.openai.com/v1/models HTTP/1.1\r\n"
                   b"Host: api.openai.com\r\n\r\n")
    assert read_all(direct).startswith(b"HTTP/1.1 403")
    assert vendor.received() == []


# -- request smuggling ------------------------------------------------------------------------

SMUGGLED = b"GET /v1/smuggled HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)

SMUGGLING = [
    # id, framing headers, body (the smuggled request follows it), refusal text or None
    ("CL.TE", b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n"
     % (len(CHUNKED) + len(SMUGGLED)), CHUNKED, "both transfer-encoding and content-length"),
    ("TE.CL", b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", CHUNKED,
     "both transfer-encoding and content-length"),
    ("two-content-lengths", b"Content-Length: %d\r\nContent-Length: %d\r\n"
     % (len(BODY), len(BODY) + len(SMUGGLED)), BODY, "content-length"),
    ("content-length-list", b"Content-Length: %d, %d\r\n" % (len(BODY), len(BODY)), BODY,
     "content-length"),
    ("te-xchunked", b"Transfer-Encoding: xchunked\r\n", CHUNKED, "unknown transfer-encoding"),
    ("te-chunked-identity", b"Transfer-Encoding: chunked, identity\r\n", CHUNKED,
     "unknown transfer-encoding"),
    ("te-twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", CHUNKED,
     "unknown transfer-encoding header: 'chunked, identity'"),
    ("te-tab-and-cl", b"Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n", CHUNKED,
     "both transfer-encoding and content-length"),
    ("te-space-before-colon", b"Transfer-Encoding : chunked\r\n", CHUNKED,
     "invalid header name"),
    ("te-folded", b"Transfer-Encoding: identity\r\n chunked\r\n", CHUNKED,
     "unknown transfer-encoding"),
    # normalised: read as plain chunked, so what follows is a request of its own, checked
    # (and refused: no token) like any other
    ("te-leading-space", b"Transfer-Encoding:  chunked\r\n", CHUNKED, None),
    ("te-upper-case", b"Transfer-Encoding: CHUNKED\r\n", CHUNKED, None),
]


@pytest.mark.parametrize(("framing", "body", "refusal"),
                         [pytest.param(*s[1:], id=s[0]) for s in SMUGGLING])
def test_smuggling_probes_never_get_a_request_past_the_proxy(stack, token, vendor, framing,
                                                            body, refusal):
    sock = tunnel(stack)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Content-Type: application/json\r\n" + framing + b"\r\n" + body + SMUGGLED)
    raw = read_all(sock, 1 if refusal else 2)
    paths = [r["path"] for r in vendor.received()]
    assert "/v1/smuggled" not in paths
    status, message = status_and_error(raw)
    if refusal is None:
        assert (status, paths) == (200, ["/v1/chat/completions"])
        assert vendor.received()[0]["body"] == BODY.decode()
        assert b"HTTP/1.1 401" in raw  # the trailing request was read as a request: no token
    else:
        assert (status, paths) == (400, [])
        assert refusal in message.replace("&#x27;", "'")


# -- h2c and bytes that are not HTTP -----------------------------------------------------------

def test_an_h2c_upgrade_is_refused(stack, token, vendor):
    sock = tunnel(stack)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                 b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    status, message = status_and_error(read_all(sock))
    assert status == 400 and "does not switch protocols to 'h2c'" in message
    assert vendor.received() == []


@pytest.mark.parametrize("where", ["to-the-proxy", "inside-a-tunnel"])
def test_h2c_prior_knowledge_is_refused(stack, vendor, where):
    sock = tunnel(stack) if where == "inside-a-tunnel" else plain(stack)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    status, message = status_and_error(read_all(sock))
    assert status == 400 and "HTTP/2 in clear text (h2c prior knowledge)" in message
    assert vendor.received() == []


def test_bytes_that_are_not_http_never_reach_the_vendor(stack, vendor):
    sock = tunnel(stack)  # with mitmproxy's rawtcp these would be piped to the vendor
    sock.sendall(b"\x16\x03 hello, not HTTP at all\r\n\r\n")
    assert read_all(sock).startswith(b"HTTP/1.1 400")
    assert vendor.received() == []


# -- HTTP/2 floods ------------------------------------------------------------------------------

H2_HEAD = [(":method", "GET"), (":scheme", "https"), (":authority", OPENAI),
           (":path", "/v1/models")]


def h2_tunnel(stack: Stack) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    sock = tunnel(stack, alpn="h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def closed_by_proxy(sock: ssl.SSLSocket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass  # closed (abruptly counts)
    except TimeoutError:
        return False
    return True


def rapid_reset(stack: Stack, token: str, streams: int = 1000) -> None:
    """One connection opening `streams` requests the vendor would answer, each cancelled
    at once (CVE-2023-44487), written as fast as the socket takes them."""
    sock, conn = h2_tunnel(stack)
    for sid in range(1, 2 * streams, 2):
        conn.send_headers(sid, [*H2_HEAD, ("authorization", f"Bearer {token}")],
                          end_stream=True)
        conn.reset_stream(sid)
    try:
        sock.sendall(conn.data_to_send())
    except (ssl.SSLError, OSError):
        pass  # cut off while still writing
    other_agent_works(stack, token)  # during the flood
    assert closed_by_proxy(sock)


def test_rapid_reset_sends_nothing_upstream_and_is_cut_off(stack, token, vendor):
    rapid_reset(stack, token)  # the first also warms the allocator up
    rss_before = proxy_rss_kib(stack)
    for _ in range(4):
        rapid_reset(stack, token)
    # only the other agent's five requests: not one of the 5000 streams went upstream
    assert [r["path"] for r in vendor.received()] == ["/v1/chat/completions"] * 5
    growth = proxy_rss_kib(stack) - rss_before
    assert growth < 16 << 10, f"the proxy grew by {growth} KiB in four floods"
    dropped = wait_until(lambda: [r for r in stack.records() if r["reason"] == "stream_reset"],
                         what="records of the dropped streams")
    assert all(r["decision"] == "deny" for r in dropped)
    assert len(dropped) < 5 * (MAX_RESETS + 200)  # bounded work per connection


def test_a_continuation_flood_is_cut_off(stack, token, vendor):
    sock, conn = h2_tunnel(stack)
    block = conn.encoder.encode([*H2_HEAD, ("authorization", f"Bearer {token}")])
    junk = conn.encoder.encode([("x-junk", "a" * 1000)])

    def frame(kind: int, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload))[1:] + bytes([kind, 0]) + struct.pack(">I", 1) \
            + payload

    sent = 0
    try:
        sock.sendall(frame(0x1, block))  # HEADERS without END_HEADERS
        while sent < 10_000:  # then CONTINUATION frames without end
            sock.sendall(frame(0x9, junk))
            sent += 1
    except (ssl.SSLError, OSError):
        pass
    assert sent < 10_000  # the proxy hung up long before the flood ended
    assert closed_by_proxy(sock)
    assert vendor.received() == []
    other_agent_works(stack, token)


# -- slow agents and oversized heads -------------------------------------------------------------

def dribble(sock: socket.socket, data: bytes, every: float = 0.25) -> float:
    """Send `data` a byte at a time; seconds until the proxy stopped taking it."""
    started = time.monotonic()
    try:
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(every)
    except (ssl.SSLError, OSError):
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("where", ["connect", "inside-a-tunnel"])
def test_a_head_sent_one_byte_at_a_time_is_cut_off(stack, where):
    if where == "connect":
        sock = plain(stack)
        head = b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
    else:
        sock = tunnel(stack)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
    took = dribble(sock, head + b"X-Slow: " + b"a" * 200)
    assert HEADER_TIMEOUT - 0.5 < took < HEADER_TIMEOUT + 3
    status, message = status_and_error(read_all(sock))
    assert status == 408
    assert f"request head was not complete within {HEADER_TIMEOUT}s" in message


def test_a_body_sent_one_byte_at_a_time_is_cut_off(stack, token, vendor):
    sock = tunnel(stack)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    took = dribble(sock, b" " * 1000)
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + 3
    status, message = status_and_error(read_all(sock))
    assert status == 408 and f"body was not complete within {BODY_TIMEOUT}s" in message
    assert vendor.received() == []


def test_an_endless_head_is_cut_off_at_the_buffer_cap(stack, vendor):
    sock = tunnel(stack)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Endless: " + b"a" * (1 << 20))
    except (ssl.SSLError, OSError):
        pass
    status, message = status_and_error(read_all(sock))
    assert status == 431 and "the most egressguard buffers" in message
    assert vendor.received() == []


@pytest.mark.parametrize(("extra", "status", "reason"), [
    (b"".join(b"X-H%d: v\r\n" % i for i in range(150)), 431, "too_many_headers"),
    (b"Content-Length: %d\r\n" % (20 << 20), 413, "body_too_large"),
    (b"Content-Length: %d\r\nExpect: 100-continue\r\n" % (20 << 20), 413, "body_too_large"),
    # past mitmproxy's own body_size_limit too: refused (by egressguard) before it reacts
    (b"Content-Length: %d\r\n" % (1 << 30), 413, "body_too_large"),
])
def test_heads_past_the_limits_get_the_vendors_error_shape_at_once(stack, token, vendor, extra,
                                                                   status, reason):
    sock = tunnel(stack)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n" + extra + b"\r\n")
    raw = read_all(sock, 2 if b"Expect" in extra else 1)
    assert time.monotonic() - started < 2  # not after the body it refuses: none was sent
    raw = raw.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 %d" % status)
    error = orjson.loads(raw.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == reason
    assert vendor.received() == []
    record = wait_until(lambda: [r for r in stack.records() if r["reason"] == reason],
                        what=f"the {reason} record")[-1]
    assert (record["decision"], record["status"]) == ("deny", status)


# -- connections per agent -----------------------------------------------------------------------

def test_an_agent_past_its_connection_cap_gets_429_until_one_closes(stack):
    auth = "Basic " + __import__("base64").b64encode(
        f"capped-agent:{stack.token('capped-agent')}".encode()).decode()
    held = [connect(stack, proxy_auth=auth) for _ in range(MAX_CONNECTIONS)]
    assert all(answer.startswith(b"HTTP/1.1 200") for _, answer in held)
    extra, answer = connect(stack, proxy_auth=auth)
    assert answer.startswith(b"HTTP/1.1 429") and b"retry-after: 1" in answer.lower()
    extra.close()
    held.pop()[0].close()
    wait_until(lambda: connect(stack, proxy_auth=auth)[1].startswith(b"HTTP/1.1 200"),
               timeout=5, what="a connection slot to free up")
