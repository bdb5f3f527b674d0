"""FailureTable: failed token checks per client address, fixed windows, bounded size."""

from __future__ import annotations

import pytest

from egressguard.core.throttle import FailureTable, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # same host's /64
    ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
    ("not-an-address", "not-an-address"),
])
def test_clients_are_counted_per_address_and_ipv6_per_64(address, key):
    assert client_key(address) == key


def test_blocked_after_limit_failures_until_the_window_ends():
    clock = Clock()
    table = FailureTable(3, 60, clock=clock)
    for _ in range(2):
        table.fail("192.0.2.7")
    assert table.blocked("192.0.2.7") == 0  # two failures: may try again
    clock.now += 10
    table.fail("192.0.2.7")
    assert table.blocked("192.0.2.7") == 50  # window started at the first failure
    assert table.blocked("192.0.2.8") == 0  # others are not affected
    clock.now += 49.5
    assert table.blocked("192.0.2.7") == 1  # rounded up: Retry-After never says 0 early
    clock.now += 0.5
    assert table.blocked("192.0.2.7") == 0
    table.fail("192.0.2.7")  # a new window
    assert table.blocked("192.0.2.7") == 0


def test_an_ipv6_host_cannot_step_through_its_64():
    table = FailureTable(2, 60, clock=Clock())
    table.fail("2001:db8::1")
    table.fail("2001:db8::2")
    assert table.blocked("2001:db8::ffff") == 60


def test_the_table_never_holds_more_than_its_size():
    table = FailureTable(1, 60, size=100, clock=Clock())
    for i in range(10_000):
        table.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(table) == 100
    assert table.blocked("10.0.39.15") == 60  # the most recent are kept
    assert table.blocked("10.0.0.0") == 0  # the oldest forgotten


def test_limit_zero_counts_nothing():
    table = FailureTable(0, 60, clock=Clock())
    for _ in range(100):
        table.fail("192.0.2.7")
    assert table.blocked("192.0.2.7") == 0 and len(table) == 0
