"""The minimal Redis client behind the shared counters (`egressguard.backends.resp`):
its RESP2 parser on streams cut anywhere, its URLs, then against a real redis-server:
pipelining, NOSCRIPT, error replies, credentials, and reconnecting after a restart."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer

from egressguard.backends import resp
from egressguard.backends.resp import (
    Address,
    AuthenticationError,
    NoScriptError,
    Parser,
    ProtocolError,
    Redis,
    ResponseError,
    Script,
)

PASSWORD = "pw-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A password-protected server of the test's own, for tests that stop it."""
    with RedisServer(password=PASSWORD) as s:
        yield s


def key() -> str:
    return f"test-resp-{secrets.token_hex(6)}"


# -- the parser ------------------------------------------------------------------------

STREAM = (b"+OK\r\n"
          b":42\r\n"
          b":-7\r\n"
          b"$5\r\nhello\r\n"
          b"$0\r\n\r\n"
          b"$4\r\na\r\nb\r\n"  # CR LF inside a bulk string
          b"$-1\r\n"
          b"*-1\r\n"
          b"*0\r\n"
          b"-ERR wrong type\r\n"
          b"-NOSCRIPT No matching script\r\n"
          b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n*2\r\n-WRONGPASS no\r\n+QUEUED\r\n")


def plain(reply: Any) -> Any:
    """Replies with error replies as (class name, message), comparable with ==."""
    if isinstance(reply, list):
        return [plain(r) for r in reply]
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    return reply


EXPECTED = ["OK", 42, -7, b"hello", b"", b"a\r\nb", None, None, [],
            ("ResponseError", "ERR wrong type"),
            ("NoScriptError", "NOSCRIPT No matching script"),
            [1, [b"x", None], [("AuthenticationError", "WRONGPASS no"), "QUEUED"]]]


def test_the_parser_reads_every_kind_of_reply() -> None:
    assert plain(Parser().feed(STREAM)) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_the_parser_reads_a_stream_cut_at_any_byte(cut: int) -> None:
    parser = Parser()
    replies = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
    assert plain(replies) == EXPECTED


def test_the_parser_reads_a_stream_a_byte_at_a_time() -> None:
    parser = Parser()
    replies = [r for i in range(len(STREAM)) for r in parser.feed(STREAM[i:i + 1])]
    assert plain(replies) == EXPECTED


@pytest.mark.parametrize("data", [b"?what\r\n", b"$x\r\n", b":1.5\r\n"])
def test_the_parser_refuses_what_is_not_resp2(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        Parser().feed(data)


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert resp.encode(["EVALSHA", "ab", 1, b"k\r\n", 0.25, -3]) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$3\r\nk\r\n\r\n"
        b"$4\r\n0.25\r\n$2\r\n-3\r\n")


# -- URLs ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, fields", [
    ("redis://127.0.0.1:6380/2", ("127.0.0.1", 6380, "", 2, None, None)),
    ("redis://redis.internal", ("redis.internal", 6379, "", 0, None, None)),
    ("redis://:p%40ss@h/0", ("h", 6379, "", 0, None, "p@ss")),
    ("redis://alice:se@cret@h:1/3", ("h", 1, "", 3, "alice", "se@cret")),
    ("redis://h/1?db=4&username=bob&password=pw", ("h", 6379, "", 4, "bob", "pw")),
    ("rediss://user:pw@redis.internal:6380/2",
     ("redis.internal", 6380, "", 2, "user", "pw")),
    ("unix:///run/redis.sock?db=1", ("localhost", 6379, "/run/redis.sock", 1, None, None)),
    ("unix://:pw@/run/redis.sock", ("localhost", 6379, "/run/redis.sock", 0, None, "pw")),
    ("redis://[::1]:7000", ("::1", 7000, "", 0, None, None)),
])
def test_urls(url: str, fields: tuple[object, ...]) -> None:
    a = Address.from_url(url)
    assert (a.host, a.port, a.path, a.db, a.username, a.password) == fields
    assert (a.tls is not None) == url.startswith("rediss:")


def test_rediss_verifies_against_the_system_cas_unless_told_not_to() -> None:
    tls = Address.from_url("rediss://h").tls
    assert tls is not None
    assert (tls.verify_mode, tls.check_hostname) == (ssl.CERT_REQUIRED, True)
    lax = Address.from_url("rediss://h?ssl_cert_reqs=none").tls
    assert lax is not None and (lax.verify_mode, lax.check_hostname) == (ssl.CERT_NONE, False)


@pytest.mark.parametrize("url, message", [
    (f"redis://:{PASSWORD}@h:63x9/0", "Port could not be cast to integer value as '63x9'"),
    (f"redis://:{PASSWORD}@h/zero", "the database (the URL's path or db=) must be a number"),
    (f"redis://h/0?pasword={PASSWORD}", "unknown option 'pasword' in the URL"),
    ("redis://h/0?ssl_cert_reqs=none", "ssl_* options are for rediss:// URLs only"),
    ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional or required"),
    ("unix://", "unix:// needs the socket's path: unix:///PATH"),
])
def test_bad_urls_are_refused_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Address.from_url(url)
    assert str(info.value) == message


# -- against redis-server --------------------------------------------------------------

def test_many_calls_in_flight_on_one_connection_each_get_their_own_reply(
        server: RedisServer) -> None:
    # sizes up to 64 KiB: replies span reads, and reads hold several replies
    payloads = [secrets.token_hex(1 + (i * 7919) % (32 * 1024)) for i in range(200)]

    async def body() -> None:
        client = Redis(server.url, timeout=10)
        try:
            replies = await asyncio.gather(*(client.execute("ECHO", p) for p in payloads))
            connection = client._conn
            counts = await asyncio.gather(*(client.execute("INCR", k) for k in
                                            [key() for _ in range(200)]))
            assert client._conn is connection is not None
        finally:
            await client.close()
        assert replies == [p.encode() for p in payloads]
        assert counts == [1] * 200
    asyncio.run(body())


def test_evalsha_falls_back_to_eval_after_script_flush(server: RedisServer) -> None:
    script = Script("return {KEYS[1], ARGV[1] + 1}")
    k = key()

    async def body() -> None:
        client = Redis(server.url, timeout=5)
        try:
            await client.execute("SCRIPT", "FLUSH")
            with pytest.raises(NoScriptError):
                await client.execute("EVALSHA", script.sha, 0)
            assert await client.evalsha(script, [k], [1]) == [k.encode(), 2]
            assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
            await client.execute("SCRIPT", "FLUSH")
            results = await asyncio.gather(*(client.evalsha(script, [k], [n])
                                             for n in range(20)))
            assert results == [[k.encode(), n + 1] for n in range(20)]
        finally:
            await client.close()
    asyncio.run(body())


def test_mget_and_select(own_server: RedisServer) -> None:
    k = key()

    async def body() -> None:
        db3, db0 = (Redis(own_server.url.replace("/0", "/3"), timeout=5),
                    Redis(own_server.url, timeout=5))
        try:
            assert await db3.execute("SET", k, 7) == "OK"
            assert await db3.mget([k, key()]) == [b"7", None]
            assert await db0.mget([k]) == [None]
        finally:
            await db3.close()
            await db0.close()
    asyncio.run(body())


def test_error_replies_are_raised_and_the_connection_goes_on(server: RedisServer) -> None:
    k = key()

    async def body() -> None:
        client = Redis(server.url, timeout=5)
        try:
            await client.execute("SET", k, "x")
            results = await asyncio.gather(
                client.execute("INCR", k), client.execute("GET", k),
                client.evalsha(Script("return redis.error_reply('no good')"), [], []),
                client.execute("NOSUCHCOMMAND"), client.execute("ECHO", "still here"),
                return_exceptions=True)
        finally:
            await client.close()
        unknown = results[3]
        assert isinstance(unknown, ResponseError)
        assert str(unknown).startswith("ERR unknown command")
        results[3] = "unknown"
        assert [plain(r) if isinstance(r, Exception) else r for r in results] == [
            ("ResponseError", "ERR value is not an integer or out of range"), b"x",
            ("ResponseError", "no good"), "unknown", b"still here"]
    asyncio.run(body())


def assert_hidden(secret: str, err: BaseException) -> None:
    for shown in (str(err), repr(err), "".join(traceback.format_exception(err))):
        assert secret not in shown


@pytest.mark.parametrize("auth", ["wrong", "none"])
def test_refused_credentials_are_an_authentication_error_without_the_password(
        own_server: RedisServer, auth: str) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    url = own_server.url.replace(PASSWORD, wrong) if auth == "wrong" \
        else own_server.url.replace(f":{PASSWORD}@", "")

    async def body() -> None:
        client = Redis(url, timeout=5)
        try:
            results = await asyncio.gather(*(client.execute("PING") for _ in range(5)),
                                           return_exceptions=True)
        finally:
            await client.close()
        for err in results:
            assert isinstance(err, AuthenticationError), err
            assert str(err).startswith("WRONGPASS" if auth == "wrong" else "NOAUTH")
            assert_hidden(wrong, err)
            assert_hidden(PASSWORD, err)
    asyncio.run(body())


def test_calls_in_flight_fail_when_the_server_goes_and_the_next_call_reconnects(
        own_server: RedisServer) -> None:
    k = key()

    async def body() -> None:
        client = Redis(own_server.url, timeout=5)
        try:
            assert await client.execute("INCR", k) == 1
            blocked = [asyncio.ensure_future(client.execute("BLPOP", key(), 4)),
                       asyncio.ensure_future(client.execute("ECHO", "behind it"))]
            await asyncio.sleep(0.1)  # written, and BLPOP waiting in the server
            own_server.stop()
            for call in blocked:
                with pytest.raises(ConnectionError):
                    await call
            with pytest.raises(ConnectionRefusedError):
                await client.execute("PING")
            own_server.start()  # the same port, empty
            assert await client.execute("INCR", k) == 1
        finally:
            await client.close()
    asyncio.run(body())


def test_a_server_that_stops_answering_times_out_the_call_and_its_followers(
        own_server: RedisServer) -> None:
    async def body() -> None:
        client = Redis(own_server.url, timeout=0.3)
        try:
            assert await client.execute("PING") == "PONG"
            own_server.pause()
            first = asyncio.ensure_future(client.execute("PING"))
            await asyncio.sleep(0.1)
            second = asyncio.ensure_future(client.execute("PING"))
            with pytest.raises(TimeoutError):
                await first
            with pytest.raises(ConnectionAbortedError):  # the connection went with it
                await second
            with pytest.raises(TimeoutError):  # connecting to a paused server
                await client.execute("PING")
            own_server.resume()
            assert await client.execute("PING") == "PONG"
        finally:
            own_server.resume()
            await client.close()
    asyncio.run(body())


def test_a_reply_of_the_wrong_kind_is_not_mistaken(server: RedisServer) -> None:
    async def body() -> None:
        client = Redis(server.url, timeout=5)
        try:
            with pytest.raises(ResponseError):
                await client.mget([])  # MGET needs a key: an error reply, not a list
        finally:
            await client.close()
    asyncio.run(body())
