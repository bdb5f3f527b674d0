"""Air-gapped routing: send a vendor host's traffic to another address.

`--upstream-map api.openai.com=10.0.0.5:8443` keeps the name (TLS SNI, certificate
check, Host header) and changes only the address connected to. HOST may be a
`*.domain` pattern, and may be a pass-through host too.

The route is set per request (`request.data.host/port`, which mitmproxy uses to find
or open the upstream connection), never by rewriting a connection's address:
inside a CONNECT tunnel mitmproxy derives each request's host from the tunnel's
server address and reuses connections by address, so rewriting it made every
request open a new connection until the per-address limit stalled the sixth.
Pass-through tunnels carry no requests, so for them the connection's address is
what is rewritten.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping, Sequence

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import server_hooks

from egressguard.core.vendors import host_matches, normalize_host
from egressguard.pipeline import flowstate

Address = tuple[str, int]


def parse_map(entries: Sequence[str]) -> dict[str, Address]:
    mapping = {}
    for entry in entries:
        host, sep, target = entry.partition("=")
        addr, colon, port = target.rpartition(":")
        if not sep or not colon or not port.isdigit() or not host or not addr:
            raise exceptions.OptionsError(
                f"upstream map entry {entry!r} must look like HOST=ADDRESS:PORT")
        mapping[normalize_host(host)] = (addr.strip("[]"), int(port))
    return mapping


class UpstreamMap:
    def __init__(self) -> None:
        self.map: dict[str, Address] = {}
        # per agent connection: which name each routed-to address stands for (its SNI)
        self.names: MutableMapping[connection.Client, dict[Address, str]] = (
            weakref.WeakKeyDictionary())

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_upstream_map", Sequence[str], [],
                          "HOST=ADDRESS:PORT: connect to ADDRESS:PORT for HOST (repeatable).")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_upstream_map" in updated:
            self.map = parse_map(ctx.options.egressguard_upstream_map)

    def route(self, host: str) -> Address | None:
        return self.map.get(host) or next(
            (t for pattern, t in self.map.items() if host_matches(pattern, host)), None)

    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if not self.map or not flowstate.is_live_request(flow):
            return
        dest = flow.metadata.get(flowstate.DESTINATION)
        # Without Egress (bench/bare_route.py loads this addon alone) the tunnel's
        # host is still mitmproxy's request.host: routing never rewrites it.
        host = dest.host if dest is not None else normalize_host(flow.request.host)
        if target := self.route(host):
            self.names.setdefault(flow.client_conn, {})[target] = host
            # data.*: the public setters would also rewrite the Host header
            flow.request.data.host, flow.request.data.port = target

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.map or data.server.address is None:
            return
        name = self.names.get(data.client, {}).get(data.server.address)
        if name is not None:  # a request routed above: the vendor's name is its SNI
            data.server.sni = name
        elif target := self.route(normalize_host(data.server.address[0])):
            # A pass-through tunnel: raw TLS from the agent, no requests to route.
            data.server.address = target
