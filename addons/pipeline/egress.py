"""Egress control: which destinations agents may reach, decided at CONNECT time.

A vendor host is intercepted; a pass-through host is tunnelled untouched; anything
else (unknown hosts, IP literals, other ports, plain HTTP) is refused with 403. Inside
an intercepted tunnel the TLS SNI and every request's Host must name the host the
tunnel was opened for, so a tunnel to one host cannot carry requests for another.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping

from mitmproxy import connection, http, tls

from egressguard.core.errors import DestinationDenied
from egressguard.core.policy import Policy
from egressguard.core.vendors import catalogue, normalize_host
from egressguard.pipeline import flowstate
from egressguard.pipeline.flowstate import Destination

ALLOWED_PORT = 443


def decide(host: str, port: int, policy: Policy) -> Destination:
    """Where a tunnel to host:port may go; DestinationDenied if nowhere."""
    host = normalize_host(host)
    if port != ALLOWED_PORT:
        raise DestinationDenied(f"port {port} is not allowed; agents reach vendors on "
                                f"port {ALLOWED_PORT} only", reason="port_denied")
    vendor = catalogue().for_host(host)
    if vendor is not None:
        return Destination(host, port, vendor)
    if policy.is_passthrough(host):
        return Destination(host, port, None, passthrough=True)
    raise DestinationDenied(
        f"host {host!r} is not a model vendor and not on the policy's pass-through "
        f"list; if agents need it, add it under `passthrough:` in {policy.source}",
        reason="destination_denied")


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
            flowstate.refuse(flow, DestinationDenied(
                "plain-HTTP proxy requests are not allowed; use https:// so the request "
                "goes through a CONNECT tunnel", reason="plain_http_denied"))
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
        host_header = flow.request.host_header
        if host_header is not None and _host_only(host_header) != dest.host:
            raise DestinationDenied(
                f"Host {_host_only(host_header)!r} does not match the CONNECT target "
                f"{dest.host!r}", reason="host_mismatch")


def _host_only(authority: str) -> str:
    """`Host` header value without its port, normalised."""
    if authority.startswith("["):
        return normalize_host(authority[1:authority.find("]")])
    return normalize_host(authority.rsplit(":", 1)[0] if ":" in authority else authority)
