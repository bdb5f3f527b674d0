"""Air-gapped routing: send a vendor host's traffic to another address.

`--upstream-map api.openai.com=10.0.0.5:8443` keeps the name (TLS SNI, certificate
check, Host header) and changes only the address connected to. HOST may be a
`*.domain` pattern.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import server_hooks

from egressguard.core.vendors import host_matches, normalize_host


def parse_map(entries: Sequence[str]) -> dict[str, tuple[str, int]]:
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
        self.map: dict[str, tuple[str, int]] = {}

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_upstream_map", Sequence[str], [],
                          "HOST=ADDRESS:PORT: connect to ADDRESS:PORT for HOST (repeatable).")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_upstream_map" in updated:
            self.map = parse_map(ctx.options.egressguard_upstream_map)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.map or data.server.address is None:
            return
        host = normalize_host(data.server.address[0])
        target = self.map.get(host) or next(
            (t for pattern, t in self.map.items() if host_matches(pattern, host)), None)
        if target:
            data.server.sni = data.server.sni or host
            data.server.address = target
