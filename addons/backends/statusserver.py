"""A minimal HTTP/1.1 server for /metrics, /healthz and /readyz, on the proxy's own
event loop and its own port (never through the proxy port, so no agent can reach it by
way of the proxy and no policy, token or audit record is involved).

One request per connection (`Connection: close`), GET or HEAD only, a request head of
at most 8 KiB read within 5 s: enough for Prometheus and a load balancer's probes, and
nothing a slow or hostile client can hold open. Not aiohttp nor prometheus_client's
WSGI server in a thread: each route's handler needs the addons' state, which lives on
this loop, and a thread would need locks around it on the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger(__name__)

HEAD_LIMIT = 8 << 10  # bytes of request line and headers
HEAD_TIMEOUT = 5.0  # seconds to send them
WRITE_TIMEOUT = 10.0  # seconds for the client to take the answer


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes


Route = Callable[[], Awaitable[Answer]]


class StatusServer:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = {path.encode(): route for path, route in routes.items()}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0: any free port); returns the address bound."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=HEAD_LIMIT)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # too slow, too long or cut off: no answer owed
            answer, head_only = await self._answer(head)
            status = HTTPStatus(answer.status)
            writer.write(
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                f"Content-Type: {answer.content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if head_only else answer.body))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[Answer, bool]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _text(400, "bad request\n"), False
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            return _text(404, "not found: try /metrics, /healthz or /readyz\n"), False
        if method not in (b"GET", b"HEAD"):
            return _text(405, "GET or HEAD only\n"), False
        try:
            return await route(), method == b"HEAD"
        except Exception:  # noqa: BLE001 - a broken collector must not kill the server
            log.exception("%s failed", path.decode("ascii", "replace"))
            return _text(500, "internal error; see the proxy log\n"), False


def _text(status: int, text: str) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", text.encode())
