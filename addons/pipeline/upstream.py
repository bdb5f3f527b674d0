"""Where each allowed connection goes: the operator's map, or the address checked for it.

The one owner of "which address does this tunnel reach". At CONNECT, once Egress has
allowed the name:

- a host in `--upstream-map` (`api.openai.com=10.0.0.5:8443`, HOST may be a
  `*.domain` pattern, and may be a pass-through host too) goes to the operator's
  address: air-gapped routing, trusted as the operator's own;
- any other name is resolved once, off the loop and within RESOLVE_TIMEOUT. No answer
  refuses the CONNECT (fail closed), and so does any address that is internal
  (loopback, private, link-local, metadata, ... see core/netguard.py) or the proxy's
  own listening socket. The first address is pinned in the tunnel's Destination and
  every connection of the tunnel goes there, never to a second lookup's answer, so a
  name that changes its answer after the check (DNS rebinding) gains nothing.

The name stays the name (TLS SNI, certificate check, Host header); only the address
connected to changes. The route is set per request (`request.data.host/port`, which
mitmproxy uses to find or open the upstream connection), never by rewriting a
connection's address: inside a CONNECT tunnel mitmproxy derives each request's host
from the tunnel's server address and reuses connections by address, so rewriting it
made every request open a new connection until the per-address limit stalled the
sixth. Pass-through tunnels carry no requests, so for them the connection's address
is what is rewritten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import weakref
from collections.abc import MutableMapping, Sequence
from ipaddress import ip_address
from typing import Protocol

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import server_hooks

from egressguard.core import netguard
from egressguard.core.errors import DestinationDenied
from egressguard.core.vendors import host_matches, normalize_host
from egressguard.pipeline import flowstate
from egressguard.pipeline.flowstate import Destination

Address = tuple[str, int]
RESOLVE_TIMEOUT = 5.0  # seconds for one name's lookup; an agent's CONNECT waits on it


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host`, best first; OSError or TimeoutError if none."""
        ...


class SystemResolver:
    """The system's resolver (getaddrinfo in the loop's executor), under a time limit."""

    def __init__(self, timeout: float = RESOLVE_TIMEOUT) -> None:
        self.timeout = timeout

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.timeout:g}s") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


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
    def __init__(self, resolver: Resolver | None = None) -> None:
        self.map: dict[str, Address] = {}
        self.resolver = resolver or SystemResolver()
        # per agent connection: its tunnel (for pass-through and eager connections),
        # and which name each routed-to address stands for (its SNI)
        self.tunnels: MutableMapping[connection.Client, Destination] = (
            weakref.WeakKeyDictionary())
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
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        dest = flow.metadata.get(flowstate.DESTINATION)
        if flow.response or dest is None:  # refused already, or no Egress (bench)
            return
        try:
            route = self.route(dest.host) or await self.checked_address(dest)
        except DestinationDenied as err:
            flowstate.refuse(flow, err)
            return
        dest = dataclasses.replace(dest, route=route)
        flow.metadata[flowstate.DESTINATION] = self.tunnels[flow.client_conn] = dest

    async def checked_address(self, dest: Destination) -> Address:
        """The address `dest.host` resolves to, if none of its addresses is forbidden."""
        try:
            found = await self.resolver.resolve(dest.host, dest.port)
        except OSError as exc:  # gaierror, TimeoutError
            why = exc.strerror or str(exc) or type(exc).__name__
            raise DestinationDenied(
                f"{dest.host!r} could not be resolved ({why}); egressguard does not connect "
                "to a name it could not check", reason="resolution_failed") from None
        addresses = [self.check(dest, a) for a in found]  # every one: any may be tried
        if not addresses:
            raise DestinationDenied(f"{dest.host!r} resolved to no address",
                                    reason="resolution_failed")
        return str(addresses[0]), dest.port

    def check(self, dest: Destination, text: str) -> netguard.IPAddress:
        literal = netguard.ip_literal(text)
        if literal is None or literal.address is None:
            raise DestinationDenied(f"{dest.host!r} resolved to {text!r}, not an address",
                                    reason="resolution_failed")
        address = literal.address
        if self.is_proxy_itself(address, dest.port):
            raise DestinationDenied(
                f"{dest.host}:{dest.port} is this proxy's own listening address ({address}); "
                "a connection back to the proxy is refused", reason="proxy_loop")
        if (bad := netguard.forbidden(address)) is not None:
            raise DestinationDenied(
                f"{dest.host!r} resolves to {bad.describe()} ({address}); egressguard never "
                "connects agents to internal, loopback or metadata addresses",
                reason="forbidden_address")
        return address

    def is_proxy_itself(self, address: netguard.IPAddress, port: int) -> bool:
        server = ctx.master.addons.get("proxyserver")
        return server is not None and listens_on(server.listen_addrs(), address, port)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        self.tunnels.pop(flow.client_conn, None)  # refused by an addon after this one

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        dest = flow.metadata.get(flowstate.DESTINATION)
        if flowstate.is_live_request(flow) and dest is not None and dest.route is None:
            # Never checked, so nothing may connect for it: refused before a key is fetched.
            flowstate.refuse(flow, DestinationDenied(
                f"no checked address for {dest.host!r}; refused", reason="unrouted"))

    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        dest = flow.metadata.get(flowstate.DESTINATION)
        if dest is None:
            # Without Egress (bench/bare_route.py loads this addon alone) the tunnel's
            # host is still mitmproxy's request.host: routing never rewrites it.
            host = normalize_host(flow.request.host)
            if (target := self.route(host)) is None:
                return
        elif dest.route is None:
            return  # refused at requestheaders
        else:
            host, target = dest.host, dest.route
            if (relay := flow.metadata.get(flowstate.RELAY)) is not None:
                # the relay (pipeline/relay.py) makes the attempts: plain HTTP on loopback
                target = relay
                flow.request.data.scheme = b"http"
        self.names.setdefault(flow.client_conn, {})[target] = host
        # data.*: the public setters would also rewrite the Host header
        flow.request.data.host, flow.request.data.port = target

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        address = data.server.address
        if address is None:
            return
        name = self.names.get(data.client, {}).get(address)
        if name is not None:  # a request routed above: the vendor's name is its SNI
            data.server.sni = name
            return
        dest = self.tunnels.get(data.client)
        if dest is None:
            if target := self.route(normalize_host(address[0])):  # no Egress (bench)
                data.server.address = target
        elif (normalize_host(address[0]), address[1]) == (dest.host, dest.port) and dest.route:
            # A pass-through tunnel (raw TLS from the agent, no requests to route), or
            # a connection opened at CONNECT (connection_strategy=eager).
            data.server.address, data.server.sni = dest.route, dest.host
        else:
            data.server.error = (f"egressguard: {address[0]}:{address[1]} is not the "
                                 f"checked address of this tunnel to {dest.host}")


def listens_on(listen_addrs: Sequence[tuple[object, ...]], address: netguard.IPAddress,
               port: int) -> bool:
    """Whether a connection to address:port reaches one of these listening sockets."""
    for host, listen_port, *_ in listen_addrs:
        if port != listen_port:
            continue
        listen = ip_address(str(host or "::"))
        if listen == address or listen.is_unspecified and _is_local(address):
            return True
    return False


def _is_local(address: netguard.IPAddress) -> bool:
    """Whether `address` belongs to this machine: only a local address can be bound."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(address), 0))
        except OSError:
            return False
    return True
