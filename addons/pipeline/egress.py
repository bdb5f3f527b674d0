"""Egress control: which destinations agents may reach, decided at CONNECT time.

A vendor host is intercepted; a pass-through host is tunnelled untouched; anything
else (unknown hosts, IP literals in any spelling, ports the policy does not allow,
plain HTTP) is refused with 403. Inside an intercepted tunnel the TLS SNI and every
request's Host, `:authority` and absolute-form target must name the host the tunnel
was opened for, so a tunnel to one host cannot carry requests for another (domain
fronting). Where an allowed name may connect to -- its addresses checked and pinned --
is UpstreamMap's decision (pipeline/upstream.py).

Plain HTTP stays refused whatever the policy says: the agent's token (and, for a
vendor, the real key egressguard would add) would cross the network in clear.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping

from mitmproxy import connection, http, tls

from egressguard.core import netguard
from egressguard.core.errors import DestinationDenied
from egressguard.core.policy import DEFAULT_PORTS, Policy
from egressguard.core.vendors import catalogue, normalize_host
from egressguard.pipeline import flowstate
from egressguard.pipeline.flowstate import Destination


def decide(host: str, port: int, policy: Policy) -> Destination:
    """Where a tunnel to host:port may go; DestinationDenied if nowhere."""
    if (err := ip_literal_refusal(host)) is not None:
        raise err  # before any name logic: no policy entry can allow an address
    host = normalize_host(host)
    vendor = catalogue().for_host(host)
    if vendor is not None:
        _check_port(host, port, DEFAULT_PORTS, "model vendors are reached on port 443 only")
        return Destination(host, port, vendor)
    if policy.is_passthrough(host):
        _check_port(host, port, policy.allowed_ports(host),
                    "to allow another, list it under the host's `ports:` in the "
                    f"`passthrough:` section of {policy.source}")
        return Destination(host, port, None, passthrough=True)
    raise DestinationDenied(
        f"host {host!r} is not a model vendor and not on the policy's pass-through "
        f"list; if agents need it, add it under `passthrough:` in {policy.source}",
        reason="destination_denied")


def ip_literal_refusal(host: str) -> DestinationDenied | None:
    """The refusal for a `host` that spells an IP address, in any notation."""
    literal = netguard.ip_literal(host)
    if literal is None:
        return None
    if literal.address is None:
        what = "is shaped like an IP address but is not a valid one"
    else:
        bad = netguard.forbidden(literal.address)
        what = f"is the IP address {literal.address}" + (f", {bad.describe()}" if bad else "")
    return DestinationDenied(f"{host!r} {what}; agents reach destinations by name only, "
                             "whatever the policy says", reason="ip_literal_denied")


def _check_port(host: str, port: int, allowed: frozenset[int], hint: str) -> None:
    if port not in allowed:
        ports = ", ".join(map(str, sorted(allowed)))
        raise DestinationDenied(f"port {port} is not allowed for {host!r} (allowed: {ports}); "
                                f"{hint}", reason="port_denied")


class Egress:
    def __init__(self) -> None:
        self.tunnels: MutableMapping[connection.Client, Destination] = (
            weakref.WeakKeyDictionary())
        self.fronted: weakref.WeakSet[connection.Client] = weakref.WeakSet()

    @flowstate.fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            dest = decide(flow.request.host, flow.request.port,
                          flow.metadata[flowstate.POLICY])
        except DestinationDenied as err:
            flow.metadata[flowstate.DESTINATION] = Destination(
                normalize_host(flow.request.host), flow.request.port, None)
            flowstate.refuse(flow, err)
            return
        flow.metadata[flowstate.DESTINATION] = dest

    def http_connected(self, flow: http.HTTPFlow) -> None:
        # Only now, when no addon refused the CONNECT, does the connection become
        # a tunnel to `dest`.
        self.tunnels[flow.client_conn] = flow.metadata[flowstate.DESTINATION]

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        dest = self.tunnels.get(data.context.client)
        sni = data.client_hello.sni
        if dest is None:
            return  # not after one of our CONNECTs; every request in it is refused
        if sni is not None and normalize_host(sni) != dest.host:
            # Domain fronting: never tunnel it blind. Intercept instead, so each
            # request inside gets an audited refusal.
            self.fronted.add(data.context.client)
            return
        if dest.passthrough:
            data.ignore_connection = True

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        dest = self.tunnels.get(flow.client_conn)
        request = flow.request
        if dest is None or not flow.client_conn.tls_established or request.scheme != "https" \
                or request.port != dest.port:
            # Not a request inside one of our TLS tunnels: an absolute-form proxy
            # request, also when the agent speaks TLS to the proxy itself.
            flow.metadata[flowstate.DESTINATION] = Destination(
                normalize_host(request.pretty_host), request.port, None)
            flowstate.refuse(flow, ip_literal_refusal(request.host) or DestinationDenied(
                "plain-HTTP proxy requests are not allowed (the token would cross the "
                "network in clear); use https:// so the request goes through a CONNECT "
                "tunnel", reason="plain_http_denied"))
            return
        flow.metadata[flowstate.DESTINATION] = dest  # also for a refusal's vendor shape
        try:
            self._check(flow, dest)
        except DestinationDenied as err:
            flowstate.refuse(flow, err)

    def _check(self, flow: http.HTTPFlow, dest: Destination) -> None:
        if flow.client_conn in self.fronted:
            raise DestinationDenied(
                f"TLS server name does not match the CONNECT target {dest.host!r}",
                reason="sni_mismatch")
        # HTTP/2's Host (`:authority`), or an absolute-form target (`GET https://other/`)
        authority = flow.request.authority
        if authority and _host_only(authority) != dest.host:
            what = ":authority" if flow.request.is_http2 else "request target"
            raise DestinationDenied(
                f"{what} {_host_only(authority)!r} does not match the CONNECT target "
                f"{dest.host!r}", reason="host_mismatch")
        for host_header in flow.request.headers.get_all("host"):  # also beside :authority
            if _host_only(host_header) != dest.host:
                raise DestinationDenied(
                    f"Host {_host_only(host_header)!r} does not match the CONNECT target "
                    f"{dest.host!r}", reason="host_mismatch")


def _host_only(authority: str) -> str:
    """`Host` header value without its port, normalised."""
    if authority.startswith("["):
        return normalize_host(authority[1:authority.find("]")])
    return normalize_host(authority.rsplit(":", 1)[0] if ":" in authority else authority)
