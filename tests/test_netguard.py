"""netguard: IP literals in every spelling, and the address ranges agents never reach."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest

from egressguard.core.netguard import KINDS, forbidden, ip_literal

LITERALS = [
    # spelling, the address it is (None: shaped like one but invalid)
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),  # inet_aton: the last part fills the remaining bytes
    ("127.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0X7F.0.0.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),  # octal
    ("0177.0.0.01", "127.0.0.1"),
    ("00000177.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),  # decimal
    ("0x7f.0.0x0.1", "127.0.0.1"),
    ("0177.0x0.1", "127.0.0.1"),  # mixed: octal, hex, and a 16-bit last part
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("127.1..", "127.0.0.1"),
    (" 127.0.0.1 ", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x.0x.0x.0x", "0.0.0.0"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("2852039166", "169.254.169.254"),
    ("%31%32%37.0.0.1", "127.0.0.1"),  # percent-encoded
    ("%2531%2532%2537.1", "127.0.0.1"),  # twice
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),  # full-width digits
    ("127\u30020\u30020\u30021", "127.0.0.1"),  # ideographic full stops
    ("127\uff0e0\uff0e0\uff0e1", "127.0.0.1"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("::", "::"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("[::FFFF:7F00:1]", "::ffff:7f00:1"),
    ("::127.0.0.1", "::7f00:1"),
    ("64:ff9b::127.0.0.1", "64:ff9b::7f00:1"),
    ("2002:7f00:1::", "2002:7f00:1::"),
    ("fe80::1%eth0", "fe80::1"),  # zone id
    ("[fe80::1%25eth0]", "fe80::1"),  # zone id, percent-encoded as in a URL
    ("fe80::1%1", "fe80::1"),
    ("%3a%3a1", "::1"),
    ("[%3A%3A1]", "::1"),
    ("fd00:ec2::254", "fd00:ec2::254"),
    ("8.8.8.8", "8.8.8.8"),
    # shaped like an address, not a valid one: still never a name
    ("1.2.3.4.5", None),
    ("256.1.1.1", None),
    ("1.16777216", None),  # the last part overflows the bytes left to it
    ("08.1", None),  # 8 is no octal digit
    ("foo.1", None),  # a numeric last label makes a host an IPv4 address or nothing
    ("foo.0x1", None),
    ("1..1", None),
    ("+1.1", None),
    ("1_0.1", None),
    ("::ffff:127.1", None),
    ("::gg", None),
    ("127.0.0.1:443", None),
]

NAMES = ["api.openai.com", "API.OpenAI.com.", "localhost", "pypi.org", "1e3", "0b1",
         "127.0.0.1.nip.io", "x1", "1x", "0x7f.example", "_"]


@pytest.mark.parametrize(("spelled", "address"), LITERALS)
def test_ip_literal_in_every_spelling(spelled: str, address: str | None) -> None:
    literal = ip_literal(spelled)
    assert literal is not None and literal.spelled == spelled
    assert literal.address == (ip_address(address) if address else None)


@pytest.mark.parametrize("name", NAMES)
def test_names_are_not_literals(name: str) -> None:
    assert ip_literal(name) is None


@pytest.mark.parametrize(("spelled", "address"),
                         [(s, a) for s, a in LITERALS if a and ":" not in a and s.isascii()
                          and "%" not in s and not s.endswith(".")
                          and s != "0x.0x.0x.0x"])  # URL parsers' spelling: glibc refuses
def test_ipv4_spellings_agree_with_inet_aton(spelled: str, address: str) -> None:
    """What the C library would connect to is what we classify."""
    assert socket.inet_ntoa(socket.inet_aton(spelled.strip())) == address


FORBIDDEN = [
    # address, kind, form the IPv4 address came in (None: the address itself)
    ("127.0.0.1", "loopback", None),
    ("127.255.255.254", "loopback", None),
    ("0.0.0.0", "unspecified", None),
    ("0.1.2.3", "this_network", None),
    ("10.1.2.3", "private", None),
    ("172.16.0.1", "private", None),
    ("172.31.255.255", "private", None),
    ("192.168.1.1", "private", None),
    ("100.64.0.1", "cgnat", None),
    ("100.127.255.254", "cgnat", None),
    ("169.254.1.1", "link_local", None),
    ("169.254.169.254", "metadata", None),
    ("169.254.170.2", "metadata", None),
    ("100.100.100.200", "metadata", None),
    ("168.63.129.16", "metadata", None),  # public, and still the Azure host agent
    ("fd00:ec2::254", "metadata", None),
    ("fd20:ce::254", "metadata", None),
    ("224.0.0.1", "multicast", None),
    ("239.255.255.250", "multicast", None),
    ("255.255.255.255", "broadcast", None),
    ("240.0.0.1", "reserved", None),
    ("192.0.0.8", "reserved", None),
    ("192.0.2.1", "documentation", None),
    ("198.51.100.7", "documentation", None),
    ("203.0.113.9", "documentation", None),
    ("198.18.0.1", "benchmarking", None),
    ("198.19.255.255", "benchmarking", None),
    ("::", "unspecified", None),
    ("::1", "loopback", None),
    ("fc00::1", "private", None),
    ("fd12:3456::1", "private", None),
    ("fe80::1", "link_local", None),
    ("febf::1", "link_local", None),
    ("fec0::1", "private", None),
    ("ff02::1", "multicast", None),
    ("2001:db8::1", "documentation", None),
    ("3fff::1", "documentation", None),
    ("2001:2::1", "benchmarking", None),
    ("100::1", "reserved", None),
    ("64:ff9b:1::808:808", "nat64_local", None),
    ("2001:0:808:808::f7f7:f7f7", "reserved", None),  # Teredo, even between public ends
    # IPv4 inside IPv6: judged by the IPv4 address
    ("::ffff:127.0.0.1", "loopback", "IPv4-mapped"),
    ("::ffff:10.0.0.1", "private", "IPv4-mapped"),
    ("::ffff:169.254.169.254", "metadata", "IPv4-mapped"),
    ("::ffff:0:127.0.0.1", "loopback", "IPv4-translated"),
    ("::127.0.0.1", "loopback", "IPv4-compatible"),
    ("::169.254.169.254", "metadata", "IPv4-compatible"),
    ("64:ff9b::127.0.0.1", "loopback", "NAT64"),
    ("64:ff9b::a9fe:a9fe", "metadata", "NAT64"),
    ("64:ff9b::192.168.0.1", "private", "NAT64"),
    ("64:ff9b:1::10.0.0.1", "private", "local-use NAT64"),
    ("2002:7f00:1::1", "loopback", "6to4"),
    ("2002:a9fe:a9fe::", "metadata", "6to4"),
    ("2002:c0a8:101::1", "private", "6to4"),
    ("2001:0:7f00:1::1", "loopback", "Teredo server"),
    # Teredo client 127.0.0.1, obfuscated (xor 0xffffffff) in the last 32 bits
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback", "Teredo client"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private", "Teredo client"),  # 10.0.0.1
    ("fe80::5efe:7f00:1", "loopback", "ISATAP"),
    ("2001:4860::200:5efe:a00:1", "private", "ISATAP"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "104.18.6.192", "162.159.140.245",
          "100.63.255.255", "100.128.0.0", "172.32.0.1", "169.253.255.255", "198.20.0.1",
          "2606:4700::6810:1", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8",
          "64:ff9b::8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "kind", "via"), FORBIDDEN)
def test_forbidden_ranges(address: str, kind: str, via: str | None) -> None:
    found = forbidden(ip_address(address))
    assert found is not None
    assert (found.kind, found.via) == (kind, via)
    assert found.describe().startswith(KINDS[kind])
    if via is not None:
        assert f" in {via} form)" in found.describe()


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden(ip_address(address)) is None


@pytest.mark.parametrize(("spelled", "kind"), [
    ("0x7f.1", "loopback"), ("2130706433", "loopback"), ("[::ffff:7f00:1]", "loopback"),
    ("0251.0376.0251.0376", "metadata"), ("[fe80::1%25eth0]", "link_local"),
    ("012.1", "private"), ("%31%30.0.0.1", "private"), ("0x64.0x40.0.1", "cgnat"),
])
def test_every_spelling_is_judged_by_the_address_it_spells(spelled: str, kind: str) -> None:
    literal = ip_literal(spelled)
    assert literal is not None and literal.address is not None
    found = forbidden(literal.address)
    assert found is not None and found.kind == kind


def test_describe_names_the_carried_address() -> None:
    found = forbidden(ip_address("2002:7f00:1::1"))
    assert found is not None
    assert found.describe() == "a loopback address (127.0.0.1 in 6to4 form)"
