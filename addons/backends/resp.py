"""A minimal asyncio Redis client for the shared limit counters: RESP2 over one
pipelined connection, and only what they need (EVALSHA falling back to EVAL, MGET).

redis-py spent about a millisecond of CPU per request in its connection pool, command
packing and asyncio streams; here a call encodes its command, writes it and waits on a
future that `data_received` resolves in order. Every command written is in flight at
once on the one connection (Redis answers in the order it was sent), so a burst of
requests neither waits for a pooled connection nor opens one each.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Arg = str | bytes | int | float


class RedisError(Exception):
    """Anything this client raises besides `TimeoutError` and `OSError`."""


class ResponseError(RedisError):
    """Redis answered with an error reply (e.g. a failing script)."""


class NoScriptError(ResponseError):
    """EVALSHA of a script Redis does not hold (after a restart or SCRIPT FLUSH)."""


class AuthenticationError(ResponseError):
    """Redis refused our credentials, or lets them do less than we asked
    (WRONGPASS, NOAUTH, NOPERM, or any error answering AUTH)."""


class ProtocolError(RedisError):
    """Bytes that are not RESP2: the connection is dropped."""


def error_reply(message: str) -> ResponseError:
    """The exception an error reply stands for."""
    code = message.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return NoScriptError(message)
    if code in ("WRONGPASS", "NOAUTH", "NOPERM"):
        return AuthenticationError(message)
    return ResponseError(message)


# -- RESP2 -----------------------------------------------------------------------------

def failure(exc: BaseException, timeout: float) -> str:
    """What went wrong talking to Redis, as the end of "Redis at ADDRESS …"."""
    if isinstance(exc, TimeoutError):
        return f"did not answer within {timeout:g} s"
    if isinstance(exc, AuthenticationError):
        return f"refused our credentials ({exc})"
    if isinstance(exc, OSError):
        return f"cannot be reached ({exc})"
    return f"failed ({type(exc).__name__}: {exc})"


def encode(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()  # shortest exact float; Lua's tonumber reads it
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """The reply starting at `pos` and where the next begins; `_Incomplete` if `buf`
    ends first. Error replies are returned as exceptions, not raised (in an array
    they are just elements)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos], buf[pos + 1:end]
    if kind == 0x3A:  # ':' integer
        return int(line), end + 2
    if kind == 0x24:  # '$' bulk string, or nil at -1
        n = int(line)
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            raise _Incomplete
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 0x2A:  # '*' array, or nil at -1
        n = int(line)
        if n < 0:
            return None, end + 2
        items, pos = [], end + 2
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # '+' simple string
        return line.decode(), end + 2
    if kind == 0x2D:  # '-' error
        return error_reply(line.decode(errors="replace")), end + 2
    raise ProtocolError(f"not a RESP2 reply: {bytes(buf[pos:pos + 20])!r}")


class Parser:
    """Replies from a byte stream cut anywhere."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The replies `data` completes, in order (error replies as exceptions)."""
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # the usual case: whole replies in one read, no copy
        replies, pos = [], 0
        try:
            while pos < len(buf):
                reply, pos = _parse(buf, pos)
                replies.append(reply)
        except _Incomplete:
            pass
        except ValueError as exc:  # a length or integer that is not a number
            raise ProtocolError(f"not a RESP2 reply: {exc}") from None
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < len(buf):
            self._buf[:] = buf[pos:]
        return replies


# -- where to connect ------------------------------------------------------------------

_SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
                "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
              "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class Address:
    host: str = "localhost"
    port: int = 6379
    path: str = ""  # a Unix socket instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> Address:
        """redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss:// (TLS, verified against
        the system's CAs unless ssl_* options say otherwise) or unix://[…@]/PATH; the
        query may also give db, username and password. Errors never show a value."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported scheme {parts.scheme!r}")
        query = {k: unquote(v[0]) for k, v in parse_qs(parts.query).items() if v}
        unknown = set(query) - {"db", "username", "password", *_SSL_OPTIONS}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} in the URL")
        if parts.scheme != "rediss" and set(query) & set(_SSL_OPTIONS):
            raise ValueError("ssl_* options are for rediss:// URLs only")
        username = query.get("username") or (unquote(parts.username)
                                             if parts.username else None)
        password = query.get("password") or (unquote(parts.password)
                                             if parts.password is not None else None)
        db = query.get("db") or ("" if parts.scheme == "unix" else
                                 unquote(parts.path).replace("/", ""))
        if not (db or "0").isdigit():
            raise ValueError("the database (the URL's path or db=) must be a number")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// needs the socket's path: unix:///PATH")
            return cls(path=unquote(parts.path), db=int(db or 0), username=username or None,
                       password=password or None)
        return cls(host=parts.hostname or "localhost", port=parts.port or 6379,
                   db=int(db or 0), username=username or None, password=password or None,
                   tls=_tls_context(query) if parts.scheme == "rediss" else None)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"),
                                         capath=query.get("ssl_ca_path"))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError("ssl_cert_reqs must be none, optional or required")
    check = query.get("ssl_check_hostname", "true" if reqs != "none" else "false")
    context.check_hostname = check.lower() in ("1", "true", "yes", "y")
    context.verify_mode = _CERT_REQS[reqs]
    if "ssl_certfile" in query:
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    return context


# -- the connection --------------------------------------------------------------------

class _Handshake:
    """Stands in the reply queue for AUTH or SELECT: an error there ends the connection."""

    __slots__ = ("auth",)

    def __init__(self, auth: bool) -> None:
        self.auth = auth


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come (queued while it opens, behind
    AUTH and SELECT), replies handed to their futures in order. Any failure fails
    every call in flight and leaves the client to open a new one on its next call."""

    def __init__(self, client: Redis, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._client = client
        self._waiting: deque[asyncio.Future[Any] | _Handshake] = deque()
        self._queued: list[bytes] | None = []  # until connected
        self._transport: asyncio.Transport | None = None
        self._parser = Parser()
        self._failed: BaseException | None = None
        address = client.address
        if address.password is not None:
            auth: list[Arg] = ["AUTH", address.password]
            if address.username:
                auth.insert(1, address.username)
            self._handshake(auth, auth=True)
        if address.db:
            self._handshake(["SELECT", address.db], auth=False)
        self._opening = loop.create_task(self._open())

    def _handshake(self, args: list[Arg], auth: bool) -> None:
        assert self._queued is not None
        self._queued.append(encode(args))
        self._waiting.append(_Handshake(auth))

    async def _open(self) -> None:
        address = self._client.address
        try:
            if address.path:
                await self.loop.create_unix_connection(lambda: self, address.path,
                                                       ssl=address.tls)
            else:
                await self.loop.create_connection(
                    lambda: self, address.host, address.port, ssl=address.tls,
                    server_hostname=address.host if address.tls else None)
        except OSError as exc:  # refused, unresolvable, TLS (ssl.SSLError is one)
            self.fail(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport) and self._queued is not None
        if self._failed is not None:  # timed out or closed while connecting
            transport.abort()
            return
        self._transport = transport
        queued, self._queued = self._queued, None
        if queued:
            transport.write(b"".join(queued))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc if isinstance(exc, OSError) else
                  ConnectionResetError("Redis closed the connection"))

    def send(self, data: bytes, future: asyncio.Future[Any]) -> None:
        if self._failed is not None:
            future.set_exception(self._failed)
            return
        self._waiting.append(future)
        if self._transport is not None:
            self._transport.write(data)
        else:
            assert self._queued is not None
            self._queued.append(data)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        waiting = self._waiting
        for reply in replies:
            if not waiting:
                self.fail(ProtocolError("a reply to no command"))
                return
            waiter = waiting.popleft()
            if isinstance(waiter, _Handshake):
                if isinstance(reply, ResponseError):
                    self.fail(AuthenticationError(str(reply)) if waiter.auth else reply)
                    return
            elif waiter.done():  # its caller timed out or was cancelled
                continue
            elif isinstance(reply, ResponseError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def fail(self, exc: BaseException) -> None:
        """Close for good: every call in flight gets `exc`, later ones a new connection."""
        if self._failed is not None:
            return
        self._failed = exc
        self._client._forget(self)
        if not self._opening.done() and asyncio.current_task() is not self._opening:
            self._opening.cancel()
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            waiter = self._waiting.popleft()
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_exception(exc)


class Script:
    """A Lua script and its SHA-1, which EVALSHA names it by."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class Redis:
    """A client on one pipelined connection, opened on the first call and again on
    the call after any failure. Each call, connecting included, is bounded by
    `timeout` seconds and raises `TimeoutError` past it; a call that times out also
    closes the connection (Redis answers in order, so the calls behind it would be as
    late, and a connection that stopped answering may be dead), failing the calls in
    flight with `ConnectionError`. Other failures: `OSError` (cannot connect, the
    connection was lost), `ResponseError` (an error reply; `AuthenticationError` for
    credentials), `ProtocolError`. Calls are never retried. Made anywhere, but used in
    one event loop: the connection belongs to the loop it was opened in."""

    def __init__(self, url: str, timeout: float) -> None:
        self.address = Address.from_url(url)
        self.timeout = timeout
        self._conn: _Connection | None = None

    async def execute(self, *args: Arg) -> Any:
        """One command's reply; an error reply is raised."""
        return await self._execute(encode(args), asyncio.get_running_loop().time()
                                   + self.timeout)

    async def evalsha(self, script: Script, keys: Sequence[Arg],
                      args: Sequence[Arg]) -> Any:
        """Run `script` by its SHA-1, sending its source (EVAL, which also caches it)
        only if Redis does not hold it; within one `timeout` in all."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        tail = [len(keys), *keys, *args]
        try:
            return await self._execute(encode(["EVALSHA", script.sha, *tail]), deadline)
        except NoScriptError:
            return await self._execute(encode(["EVAL", script.source, *tail]), deadline)

    async def mget(self, keys: Sequence[Arg]) -> list[bytes | None]:
        return await self.execute("MGET", *keys)  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.fail(ConnectionAbortedError("the client was closed"))

    async def _execute(self, data: bytes, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is None:
            conn = self._conn = _Connection(self, loop)
        future: asyncio.Future[Any] = loop.create_future()
        conn.send(data, future)
        timer = loop.call_at(deadline, self._expire, conn, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, conn: _Connection, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        future.set_exception(TimeoutError(f"Redis did not answer within {self.timeout:g} s"))
        conn.fail(ConnectionAbortedError(
            f"closed after a call got no answer within {self.timeout:g} s"))

    def _forget(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
