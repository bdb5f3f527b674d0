"""The counters behind limits (`egressguard.backends.counters`): the same behaviour
from the in-process store and from Redis (a real redis-server on a free port), then
what only Redis has: clients sharing a budget, expiry, and outages."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio
from redis_server import RedisServer
from test_limits import MINUTE, at

from egressguard.backends.counters import (
    Counters,
    CountersUnavailable,
    InProcessCounters,
    RedisCounters,
    counters_from_url,
    redact,
)
from egressguard.core import limits
from egressguard.core.limits import Bucket, Cost, Exceeded, Reservation

Make = Callable[[], Counters]
ONE = Cost(1, 0, 0)  # a request, nothing else
NOON = at(2025, 3, 14, 12)
PASSWORD = "pw-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["in-process", "redis"])
def make(request: pytest.FixtureRequest) -> Make:
    """Makes counters of one kind; call it inside the test's event loop. Redis counters
    made in one test share a key prefix (one budget) no other test uses."""
    if request.param == "in-process":
        return InProcessCounters
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{secrets.token_hex(6)}:"
    # timeouts are the outage tests' concern; these must not fail on a busy machine
    return lambda: RedisCounters(server.url, prefix=prefix, timeout=5)


def drive(make: Make, body: Callable[[Counters], Awaitable[None]]) -> None:
    """Run `body` with fresh counters in a new event loop, closing them after."""
    async def main() -> None:
        counters = make()
        try:
            await body(counters)
        finally:
            await counters.close()
    asyncio.run(main())


async def admit_all(c: Counters, buckets: list[Bucket], cost: Cost,
                    now: float) -> tuple[int, Exceeded]:
    """Reserve `cost` until refused: how many were admitted, and the refusal."""
    for admitted in range(1000):
        result = await c.reserve(buckets, cost, now)
        if isinstance(result, Exceeded):
            return admitted, result
    raise AssertionError("never refused")


def test_reserve_until_the_cap(make: Make) -> None:
    rpm = Bucket("team:red", "requests_per_minute", 3, "minute")

    async def body(c: Counters) -> None:
        reservation = await c.reserve([rpm], ONE, MINUTE + 20)
        assert reservation == Reservation((rpm,), ONE, MINUTE + 20)
        assert await admit_all(c, [rpm], ONE, MINUTE + 20) == (2, Exceeded(
            "requests_per_minute", "team:red", 3, used=3, needed=1, retry_after=60))
        assert await c.usage([rpm], MINUTE + 20) == {rpm: 3}
    drive(make, body)


def test_a_refusal_changes_nothing_anywhere(make: Make) -> None:
    agent = [Bucket("agent:a", "requests_per_minute", 10, "minute"),
             Bucket("agent:a", "tokens_per_day", 1000, "day")]
    team = [Bucket("team:red", "tokens_per_day", 1500, "day")]

    async def body(c: Counters) -> None:
        assert isinstance(await c.reserve(agent + team, Cost(1, 900, 0), NOON), Reservation)
        refused = await c.reserve(agent + team, Cost(1, 200, 0), NOON)
        assert refused == Exceeded("tokens_per_day", "agent:a", 1000, used=900, needed=200,
                                   retry_after=12 * 3600)
        assert list((await c.usage(agent + team, NOON)).values()) == [1, 900, 900]
    drive(make, body)


def test_the_longest_wait_is_reported(make: Make) -> None:
    rpm = Bucket("agent:a", "requests_per_minute", 1, "minute")
    day = Bucket("agent:a", "tokens_per_day", 100, "day")

    async def body(c: Counters) -> None:
        assert isinstance(await c.reserve([rpm, day], Cost(1, 100, 0), NOON), Reservation)
        for order in ([rpm, day], [day, rpm]):
            refused = await c.reserve(order, Cost(1, 1, 0), NOON)
            assert isinstance(refused, Exceeded)
            assert (refused.limit, refused.retry_after) == ("tokens_per_day", 12 * 3600)
    drive(make, body)


def test_settle_gives_back_and_takes_more(make: Make) -> None:
    buckets = limits.buckets("team:red", limits.LimitSpec(
        requests_per_minute=100, tokens_per_day=10_000, spend_per_day=1.0))

    async def usage(c: Counters) -> list[int]:
        return list((await c.usage(buckets, NOON)).values())

    async def body(c: Counters) -> None:
        first = await c.reserve(buckets, Cost(1, 4000, 50_000), NOON)
        assert isinstance(first, Reservation)
        await c.settle(first, Cost(1, 1000, 20_000))
        assert await usage(c) == [1, 1000, 20_000]
        second = await c.reserve(buckets, Cost(1, 4000, 50_000), NOON)
        assert isinstance(second, Reservation)
        assert await usage(c) == [2, 5000, 70_000]
        await c.settle(second, Cost(1, 6000, 90_000))  # more than estimated
        assert await usage(c) == [2, 7000, 110_000]
    drive(make, body)


def test_settle_never_goes_below_zero(make: Make) -> None:
    day = Bucket("agent:a", "tokens_per_day", 10_000, "day")

    async def body(c: Counters) -> None:
        await c.reserve([day], Cost(1, 500, 0), NOON)
        await c.settle(Reservation((day,), Cost(1, 9000, 0), NOON), Cost(1, 0, 0))
        assert await c.usage([day], NOON) == {day: 0}
        await c.reserve([day], Cost(1, 500, 0), NOON)
        assert await c.usage([day], NOON) == {day: 500}
    drive(make, body)


def test_settle_after_a_rollover_changes_the_window_reserved_in(make: Make) -> None:
    day = Bucket("agent:a", "tokens_per_day", 1000, "day")
    tpm = Bucket("agent:a", "tokens_per_minute", 1000, "minute")
    late, early = at(2025, 3, 14, 23, 59, 59), at(2025, 3, 15, 0, 0, 10)

    async def body(c: Counters) -> None:
        first = await c.reserve([day, tpm], Cost(1, 800, 0), late)
        assert isinstance(first, Reservation)
        # the next day; 800 * 50/60 of the last minute still counts
        assert isinstance(await c.reserve([day, tpm], Cost(1, 100, 0), early), Reservation)
        await c.settle(first, Cost(1, 200, 0))
        assert await c.usage([day, tpm], late) == {day: 200, tpm: 200}
        assert await c.usage([day, tpm], early) == {day: 100,
                                                    tpm: math.ceil(100 + 200 * 50 / 60)}
    drive(make, body)


def test_the_minute_slides(make: Make) -> None:
    rpm = [Bucket("agent:a", "requests_per_minute", 10, "minute")]

    async def body(c: Counters) -> None:
        assert await admit_all(c, rpm, ONE, MINUTE + 50) == (10, Exceeded(
            "requests_per_minute", "agent:a", 10, used=10, needed=1, retry_after=10 + 6))
        # just past the boundary the previous minute still counts almost fully
        assert await admit_all(c, rpm, ONE, MINUTE + 60.5) == (0, Exceeded(
            "requests_per_minute", "agent:a", 10, used=10, needed=1, retry_after=6))
        # a quarter through: 10 * 0.75 = 7.5 counts, room for 2
        assert await admit_all(c, rpm, ONE, MINUTE + 75) == (2, Exceeded(
            "requests_per_minute", "agent:a", 10, used=10, needed=1, retry_after=3))
        # three quarters: 2 + 10 * 0.25 = 4.5, room for 5
        admitted, _ = await admit_all(c, rpm, ONE, MINUTE + 105)
        assert admitted == 5
        # the minute after: 7 * 0.5 = 3.5 of the last one counts, room for 6
        admitted, _ = await admit_all(c, rpm, ONE, MINUTE + 150)
        assert admitted == 6
        assert await c.usage(rpm, MINUTE + 150) == {rpm[0]: math.ceil(6 + 7 * 0.5)}
    drive(make, body)


def test_a_day_rolls_over_at_midnight_utc(make: Make) -> None:
    day = [Bucket("team:red", "tokens_per_day", 1000, "day")]

    async def body(c: Counters) -> None:
        assert isinstance(await c.reserve(day, Cost(1, 1000, 0), NOON), Reservation)
        refused = await c.reserve(day, Cost(1, 1, 0), at(2025, 3, 14, 23, 59))
        assert isinstance(refused, Exceeded) and refused.retry_after == 60
        assert isinstance(await c.reserve(day, Cost(1, 1000, 0), at(2025, 3, 15)),
                          Reservation)
    drive(make, body)


def test_a_month_rolls_over_on_the_first_utc(make: Make) -> None:
    month = [Bucket("team:red", "spend_per_month", 1_000_000, "month")]

    async def body(c: Counters) -> None:
        assert isinstance(await c.reserve(month, Cost(1, 0, 999_999), at(2025, 3, 1)),
                          Reservation)
        refused = await c.reserve(month, Cost(1, 0, 2), at(2025, 3, 31, 12))
        assert refused == Exceeded("spend_per_month", "team:red", 1_000_000, used=999_999,
                                   needed=2, retry_after=12 * 3600)
        assert "would go over its spend_per_month limit of $1.00" in refused.message
        assert isinstance(await c.reserve(month, Cost(1, 0, 1_000_000), at(2025, 4, 1)),
                          Reservation)
        assert list((await c.usage(month, at(2025, 4, 1))).values()) == [1_000_000]
    drive(make, body)


def test_concurrent_reservations_never_over_admit(make: Make) -> None:
    rpm = [Bucket("team:red", "requests_per_minute", 10, "minute")]

    async def body(c: Counters) -> None:
        results = await asyncio.gather(*(c.reserve(rpm, ONE, NOON) for _ in range(50)))
        assert sum(isinstance(r, Reservation) for r in results) == 10
        assert await c.usage(rpm, NOON) == {rpm[0]: 10}
    drive(make, body)


def test_usage_of_no_buckets(make: Make) -> None:
    async def body(c: Counters) -> None:
        assert await c.usage([], NOON) == {}
    drive(make, body)


def test_in_process_counters_forget_windows_no_longer_read() -> None:
    buckets = limits.buckets("a", limits.LimitSpec(requests_per_minute=5, tokens_per_day=9))
    counters = InProcessCounters()

    async def body() -> None:
        await counters.reserve(buckets, ONE, NOON)
        await counters.reserve(buckets, ONE, NOON + 60)  # NOON's minute is read as previous
        assert len(counters._counts) == 3
        await counters.reserve(buckets, ONE, NOON + 3 * 86400)
        assert len(counters._counts) == 2  # only the current minute and day
    asyncio.run(body())


# -- Redis only ------------------------------------------------------------------------

def test_two_clients_share_one_budget(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(6)}:"
    rpm = [Bucket("team:red", "requests_per_minute", 10, "minute")]

    async def body() -> None:
        first, second = (RedisCounters(redis_server.url, prefix=prefix, timeout=5),
                         RedisCounters(redis_server.url, prefix=prefix, timeout=5))
        try:
            results = await asyncio.gather(*(c.reserve(rpm, ONE, NOON)
                                             for _ in range(25) for c in (first, second)))
            assert sum(isinstance(r, Reservation) for r in results) == 10
            assert await first.usage(rpm, NOON) == await second.usage(rpm, NOON) == {rpm[0]: 10}
        finally:
            await first.close()
            await second.close()
    asyncio.run(body())


def test_redis_counters_expire_after_their_window(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(6)}:"
    buckets = limits.buckets("a", limits.LimitSpec(requests_per_minute=5, tokens_per_day=9,
                                                   spend_per_month=1))
    now = time.time()

    async def body() -> None:
        counters, raw = RedisCounters(redis_server.url, prefix=prefix), \
            redis.asyncio.from_url(redis_server.url)
        try:
            await counters.reserve(buckets, Cost(1, 1, 1), now)
            keys = sorted([k async for k in raw.scan_iter(f"{prefix}*")])
            ttls = {k.decode().split("|")[1]: await raw.ttl(k) for k in keys}
        finally:
            await counters.close()
            await raw.aclose()
        wids = limits.window_ids(now)
        for limit, window in (("requests_per_minute", "minute"), ("tokens_per_day", "day"),
                              ("spend_per_month", "month")):
            expected = limits.counted_until(window, wids[window]) - now + counters.CLOCK_SKEW
            assert expected - 2 <= ttls[limit] <= expected + 1, limit
    asyncio.run(body())


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A password-protected server of the test's own, for tests that stop or pause it."""
    with RedisServer(password=PASSWORD) as server:
        yield server


def assert_hidden(secret: str, err: BaseException) -> None:
    for shown in (str(err), repr(err), getattr(err, "message", ""),
                  "".join(traceback.format_exception(err))):
        assert secret not in shown


TIMEOUT = 0.5
SLACK = 0.3  # scheduling on a busy test machine


@pytest.mark.parametrize("outage, said", [
    ("stopped", "cannot be reached"),
    ("paused", f"did not answer within {TIMEOUT:g} s"),
])
def test_an_outage_is_reported_in_time_without_the_password(
        own_redis: RedisServer, outage: str, said: str) -> None:
    rpm = Bucket("team:red", "requests_per_minute", 10, "minute")

    async def body() -> None:
        counters, fresh = (RedisCounters(own_redis.url, timeout=TIMEOUT),
                           RedisCounters(own_redis.url, timeout=TIMEOUT))
        try:
            reservation = await counters.reserve([rpm], ONE, NOON)
            assert isinstance(reservation, Reservation)
            if outage == "stopped":
                own_redis.stop()
            else:
                own_redis.pause()
            calls = {"reserve": lambda: counters.reserve([rpm], ONE, NOON),
                     "settle": lambda: counters.settle(reservation, Cost(0, 0, 0)),
                     "usage": lambda: counters.usage([rpm], NOON),
                     "a first call": lambda: fresh.reserve([rpm], ONE, NOON)}
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(CountersUnavailable) as info:
                    await call()
                assert time.monotonic() - started < TIMEOUT + SLACK, name
                err = info.value
                assert (err.status, err.reason) == (503, "limits_unavailable")
                assert err.message.startswith(
                    "rate limits and budgets cannot be checked: Redis at "
                    f"redis://127.0.0.1:{own_redis.port}/0 {said}"), err.message
                assert_hidden(PASSWORD, err)
        finally:
            own_redis.resume()
            await counters.close()
            await fresh.close()
    asyncio.run(body())


def test_a_wrong_password_is_reported_without_it(own_redis: RedisServer) -> None:
    wrong = "wrong-" + secrets.token_hex(8)

    async def body() -> None:
        counters = RedisCounters(own_redis.url.replace(PASSWORD, wrong))
        try:
            with pytest.raises(CountersUnavailable) as info:
                await counters.reserve([Bucket("a", "tokens_per_day", 1, "day")], ONE, NOON)
        finally:
            await counters.close()
        assert "refused our credentials" in info.value.message
        assert_hidden(wrong, info.value)
    asyncio.run(body())


def test_a_script_error_is_reported(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(6)}:"
    day = Bucket("a", "tokens_per_day", 10, "day")

    async def body() -> None:
        counters, raw = RedisCounters(redis_server.url, prefix=prefix), \
            redis.asyncio.from_url(redis_server.url)
        try:
            await raw.set(f"{prefix}a|tokens_per_day|{limits.window_ids(NOON)['day']}", "x")
            with pytest.raises(CountersUnavailable) as info:
                await counters.reserve([day], ONE, NOON)
        finally:
            await counters.close()
            await raw.aclose()
        assert "failed (ResponseError: " in info.value.message
    asyncio.run(body())


@pytest.mark.parametrize("url, kind", [
    (None, InProcessCounters),
    ("", InProcessCounters),
    ("redis://127.0.0.1:6379/0", RedisCounters),
    ("rediss://user:pw@redis.internal:6380/2", RedisCounters),
    ("unix:///run/redis.sock?db=1", RedisCounters),
])
def test_counters_from_url(url: str | None, kind: type) -> None:
    counters = counters_from_url(url)  # Redis is not contacted until first used
    assert isinstance(counters, kind)
    asyncio.run(counters.close())


@pytest.mark.parametrize("url, message", [
    (f"http://admin:{PASSWORD}@redis.internal:6379/0",
     "'http://redis.internal:6379/0' is not a Redis URL: use redis://HOST:PORT/DB, "
     "rediss:// (TLS) or unix:///PATH, or nothing for in-process counters"),
    (f"redis://:{PASSWORD}@redis.internal:63x9/0",
     "'redis://redis.internal:63x9/0': Port could not be cast to integer value as '63x9'"),
])
def test_a_bad_url(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        counters_from_url(url)
    assert str(info.value) == message


@pytest.mark.parametrize("url, shown", [
    ("redis://:secret@10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
    ("rediss://user:se@cret@host/1", "rediss://host/1"),
    ("unix:///run/redis.sock?db=0&password=secret", "unix:///run/redis.sock"),
])
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
