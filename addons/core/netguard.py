"""Which network addresses agents must never reach, however the address is spelled.

Pure functions, no I/O. `ip_literal` recognises a host that is an IP address in any
notation a resolver or URL parser would accept (`127.1`, `0x7f.1`, `017700000001`,
`2130706433`, bracketed, zone-scoped or percent-encoded IPv6, full-width digits,
trailing dots), so a literal cannot pass for a name. `forbidden` says why an address
is off limits (loopback, private, link-local, cloud metadata, ...) and looks inside
IPv6 addresses that carry an IPv4 one (mapped, NAT64, 6to4, Teredo, ISATAP), so an
internal target cannot come back in a translated spelling.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from urllib.parse import unquote

IPAddress = IPv4Address | IPv6Address

# kind -> how a message names it ("host x resolves to <phrase>")
KINDS = {
    "unspecified": "the unspecified address",
    "this_network": "a 'this network' address (0.0.0.0/8)",
    "loopback": "a loopback address",
    "private": "a private address",
    "link_local": "a link-local address",
    "cgnat": "a carrier-grade NAT address (100.64.0.0/10)",
    "metadata": "a cloud metadata address",
    "multicast": "a multicast address",
    "broadcast": "the broadcast address",
    "benchmarking": "a benchmarking address",
    "documentation": "a documentation address",
    "nat64_local": "a local-use NAT64 address",
    "reserved": "a reserved address",
}

# First match wins: the specific (metadata endpoints) before the ranges holding them.
_NETWORKS: tuple[tuple[IPv4Network | IPv6Network, str], ...] = tuple(
    (ip_network(net), kind) for net, kind in (
        # cloud metadata, time and DNS endpoints reachable from inside a VM or task
        ("169.254.169.254/32", "metadata"),  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        ("169.254.169.253/32", "metadata"),  # AWS VPC DNS
        ("169.254.169.123/32", "metadata"),  # AWS time sync
        ("169.254.170.2/32", "metadata"),  # AWS ECS task credentials
        ("169.254.170.23/32", "metadata"),  # AWS EKS pod identity
        ("169.254.0.23/32", "metadata"),  # Tencent Cloud
        ("100.100.100.200/32", "metadata"),  # Alibaba Cloud
        ("168.63.129.16/32", "metadata"),  # Azure WireServer: a public address
        ("192.0.0.192/32", "metadata"),  # Oracle Cloud (classic)
        ("fd00:ec2::254/128", "metadata"),  # AWS IMDS over IPv6
        ("fd00:ec2::253/128", "metadata"),
        ("fd00:ec2::123/128", "metadata"),
        ("fd00:ec2::23/128", "metadata"),  # AWS EKS pod identity over IPv6
        ("fd20:ce::254/128", "metadata"),  # GCP metadata over IPv6
        ("255.255.255.255/32", "broadcast"),
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "this_network"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link_local"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast (deprecated)
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "nat64_local"),
        ("::/8", "reserved"),  # IPv4-compatible and other early assignments
        ("100::/64", "reserved"),  # discard-only
        ("2001::/32", "reserved"),  # Teredo: tunnels to an address hidden in it
        ("2001:2::/48", "benchmarking"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("2001:10::/28", "reserved"),  # ORCHID
        ("2001:20::/28", "reserved"),  # ORCHIDv2
        ("5f00::/16", "reserved"),  # SRv6 SIDs
        ("fc00::/7", "private"),  # unique local
        ("fe80::/10", "link_local"),
        ("fec0::/10", "private"),  # site-local (deprecated)
        ("ff00::/8", "multicast"),
    )
)
# (version, network, netmask) as integers: a CONNECT checks every resolved address
_RANGES = tuple((n.version, int(n.network_address), int(n.netmask), kind)
                for n, kind in _NETWORKS)
_NAT64 = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # SIIT "IPv4-translated"
_COMPATIBLE = IPv6Network("::/96")
_TRANSLATIONS = {"IPv4-mapped", "IPv4-translated", "NAT64"}

# The last label of a host that WHATWG URL parsing reads as a number: such a host is
# an IPv4 address or invalid, never a name.
_NUMERIC_LABEL = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})  # IDNA label separators


@dataclass(frozen=True, slots=True)
class IpLiteral:
    """A host that spells an IP address. `address` is None when it is shaped like one
    (numeric last label, a colon) but is not a valid address."""

    spelled: str
    address: IPAddress | None


@dataclass(frozen=True, slots=True)
class Forbidden:
    """Why an address is off limits; `via` names the IPv6 form `embedded` came in."""

    address: IPAddress
    kind: str  # a key of KINDS
    via: str | None = None
    embedded: IPv4Address | None = None

    def describe(self) -> str:
        what = KINDS[self.kind]
        return what if self.via is None else f"{what} ({self.embedded} in {self.via} form)"


def ip_literal(host: str) -> IpLiteral | None:
    """The address `host` spells, or None if `host` is a name."""
    text = _unspell(host)
    if ":" in text:
        address, _, _zone = text.partition("%")  # fe80::1%eth0: the zone is not the address
        try:
            return IpLiteral(host, IPv6Address(address))
        except ValueError:
            return IpLiteral(host, None)
    labels = text.rstrip(".").split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return IpLiteral(host, _ipv4(labels))


def forbidden(address: IPAddress) -> Forbidden | None:
    """Why agents may not reach `address`, or None for a public address."""
    if (exact := _classify(address)) is not None and exact.kind == "metadata":
        return exact
    if isinstance(address, IPv6Address) and (carried := _embedded(address)):
        for via, inner in carried:
            if (found := forbidden(inner)) is not None:
                return Forbidden(address, found.kind, via, inner)
        if all(via in _TRANSLATIONS for via, _ in carried):
            return None  # reaches exactly the public IPv4 address it carries
    if exact is not None:
        return exact
    if not address.is_global:  # anything the registry marks special that we did not name
        return Forbidden(address, "reserved")
    return None


def _classify(address: IPAddress) -> Forbidden | None:
    version, value = address.version, int(address)
    for net_version, network, netmask, kind in _RANGES:
        if net_version == version and value & netmask == network:
            return Forbidden(address, kind)
    return None


def _embedded(address: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """Every IPv4 address `address` carries, with the name of the form it uses."""
    low32 = IPv4Address(int(address) & 0xFFFFFFFF)
    found: list[tuple[str, IPv4Address]] = []
    if (mapped := address.ipv4_mapped) is not None:
        found.append(("IPv4-mapped", mapped))
    if address in _TRANSLATED:
        found.append(("IPv4-translated", low32))
    if address in _COMPATIBLE and int(address) > 1:
        found.append(("IPv4-compatible", low32))
    if address in _NAT64:
        found.append(("NAT64", low32))
    if address in _NAT64_LOCAL:
        found.append(("local-use NAT64", low32))
    if (sixtofour := address.sixtofour) is not None:
        found.append(("6to4", sixtofour))
    if (teredo := address.teredo) is not None:
        found += [("Teredo server", teredo[0]), ("Teredo client", teredo[1])]
    if (int(address) >> 32) & 0xFDFFFFFF == 0x5EFE:  # ISATAP interface id ::[0200:]5efe:v4
        found.append(("ISATAP", low32))
    return found


def _unspell(host: str) -> str:
    """`host` as a resolver would read it: brackets off, percent-escapes decoded (the
    IPv4 part only: a zone id may hold a `%25`), NFKC-folded, lower case."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" not in text:
        for _ in range(3):  # %2531 -> %31 -> 1, bounded
            decoded = unquote(text)
            if decoded == text:
                break
            text = decoded
    elif "%" in text:
        address, _, zone = text.partition("%")
        text = f"{unquote(address)}%{zone}"
    text = unicodedata.normalize("NFKC", text).translate(_DOTS).lower()
    if text.startswith("[") and text.endswith("]"):  # it was encoded too
        text = text[1:-1]
    return text


def _ipv4(labels: list[str]) -> IPv4Address | None:
    """inet_aton / WHATWG parsing: 1-4 parts, each decimal, octal (leading 0) or hex
    (0x); the last part fills the bytes the others leave."""
    if len(labels) > 4:
        return None
    parts = []
    for label in labels:
        if not _NUMERIC_LABEL.fullmatch(label):  # also keeps int()'s "+1", "1_0", " 1" out
            return None
        base, digits = (16, label[2:]) if label[:2] in ("0x", "0X") else \
            (8, label[1:]) if len(label) > 1 and label[0] == "0" else (10, label)
        try:
            parts.append(int(digits, base) if digits else 0)
        except ValueError:  # 8 or 9 in an octal part
            return None
    *head, last = parts
    if any(p > 0xFF for p in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = last
    for i, part in enumerate(head):
        value |= part << (8 * (3 - i))
    return IPv4Address(value)
