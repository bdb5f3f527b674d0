"""mitmproxy's own lines about an agent connection name the request they concern.

Our hooks log with the flow's request id (`flowstate.fail_closed` sets it). mitmproxy
logs what happens to connections from its connection handler instead, outside any
hook, with the agent's address as `client`: a protocol error, a request it refused as
malformed, "server disconnect", a failed upstream connection. This addon remembers,
per agent connection, the requests in flight and the last one, and a filter on
mitmproxy's connection logger adds `request_id` to such a line when it is clear which
request it is about: the one in flight on that connection, or, with none in flight,
the last one (what happens on a connection after a request -- the vendor closing it,
the agent hanging up -- follows from that request). With several in flight at once
(HTTP/2 multiplexing) the line names none rather than guess.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import connection, http

from egressguard.pipeline import flowstate

LOGGER = "mitmproxy.proxy.server"  # where mitmproxy's ConnectionHandler.log writes
LINGER = 5.0  # seconds a closed connection is remembered: its last lines come after


class _Connection:
    __slots__ = ("live", "last")

    def __init__(self) -> None:
        self.live: set[str] = set()  # request ids in flight
        self.last: str | None = None  # the request that started last

    def request_id(self) -> str | None:
        if not self.live:
            return self.last
        if len(self.live) == 1:
            return next(iter(self.live))
        return None


class ConnectionLogs:
    def __init__(self) -> None:
        self.connections: dict[object, _Connection] = {}  # by the agent's address
        self.filter = _Filter(self.connections)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        logger = logging.getLogger(LOGGER)
        if self.filter not in logger.filters:
            logger.addFilter(self.filter)

    def done(self) -> None:
        logging.getLogger(LOGGER).removeFilter(self.filter)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        peer = flow.client_conn.peername
        conn = self.connections.get(peer)
        if conn is None:
            conn = self.connections[peer] = _Connection()
        rid = flow.metadata.get(flowstate.REQUEST_ID) or flowstate.begin(flow)
        conn.live.add(rid)
        conn.last = rid

    def response(self, flow: http.HTTPFlow) -> None:
        self._ended(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._ended(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        peer = client.peername
        conn = self.connections.get(peer)
        if conn is None:
            return
        # the handler logs the server side's disconnects after this hook
        asyncio.get_running_loop().call_later(LINGER, self._forget, peer, conn)

    def _ended(self, flow: http.HTTPFlow) -> None:
        conn = self.connections.get(flow.client_conn.peername)
        if conn is not None:
            conn.live.discard(flow.metadata.get(flowstate.REQUEST_ID))

    def _forget(self, peer: object, conn: _Connection) -> None:
        if self.connections.get(peer) is conn:  # not a new connection from the same port
            del self.connections[peer]


class _Filter(logging.Filter):
    """Adds `request_id` to a line of mitmproxy's about an agent connection."""

    def __init__(self, connections: dict[object, _Connection]) -> None:
        super().__init__()
        self.connections = connections

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            peer = getattr(record, "client", None)
            conn = self.connections.get(peer) if peer is not None else None
            if conn is not None and (rid := conn.request_id()) is not None:
                record.request_id = rid
        return True
