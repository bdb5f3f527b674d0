"""The counters behind rate limits and budgets: in this process, or in Redis to share
them between replicas. Both check and reserve a request's cost atomically across all
its buckets, and settle it later with what the vendor reported.

The request itself is counted exactly at reservation; tokens and spend are estimates
(`limits.estimate`). So a request whose *estimate* does not fit a remaining budget is
refused even if what it really uses would have fitted, and a settled request may push
a counter past its cap (later requests are then refused until it frees up).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from egressguard.backends import resp
from egressguard.core import limits
from egressguard.core.errors import EgressError
from egressguard.core.limits import Bucket, Cost, Exceeded, Reservation

T = TypeVar("T")


class CountersUnavailable(EgressError):
    """The counters cannot be read or updated; the caller decides to refuse or go on."""

    status = 503
    kind = "api_error"


class Counters(Protocol):
    async def reserve(self, buckets: Sequence[Bucket], cost: Cost,
                      now: float) -> Reservation | Exceeded:
        """Add `cost` to every bucket, or, if that would take any over its cap, change
        nothing and return the refusal with the longest wait."""
        ...

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        """Replace the reserved cost with `actual` in the same windows, where they still
        exist; no counter goes below zero."""
        ...

    async def usage(self, buckets: Sequence[Bucket], now: float) -> dict[Bucket, int]:
        """What each bucket holds at `now` (the sliding estimate, rounded up)."""
        ...

    async def close(self) -> None: ...


def counters_from_url(url: str | None) -> Counters:
    """In-process counters for "" or None; Redis for redis://, rediss:// or unix://."""
    if not url:
        return InProcessCounters()
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{redact(url)!r} is not a Redis URL: use redis://HOST:PORT/DB, "
                         "rediss:// (TLS) or unix:///PATH, or nothing for in-process counters")
    try:
        return RedisCounters(url)
    except ValueError as exc:  # a bad port, database or option
        raise ValueError(f"{redact(url)!r}: {exc}") from None


def redact(url: str) -> str:
    """`url` without user, password or query (a password may be given there too)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class InProcessCounters:
    """Counters in this process's memory, for a single replica. No method awaits
    anything, so each runs whole on the event loop: atomic without locks."""

    PRUNE_EVERY = 60.0  # seconds between sweeps of windows no longer read

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}  # (scope, limit, window id)
        self._expires: dict[tuple[str, str, int], float] = {}
        self._next_prune = 0.0

    async def reserve(self, buckets: Sequence[Bucket], cost: Cost,
                      now: float) -> Reservation | Exceeded:
        self._prune(now)
        wids, weight, counts = limits.window_ids(now), limits.previous_weight(now), self._counts
        keys, refused = [], []
        for b in buckets:
            wid = wids[b.window]
            key = (b.key, b.limit, wid)
            current = counts.get(key, 0)
            previous = counts.get((b.key, b.limit, wid - 1), 0) if b.window == "minute" else 0
            amount = b.amount(cost)
            if not limits.fits(b.cap, current, previous, weight, amount):
                refused.append(limits.exceeded(b, current, previous, amount, now))
            keys.append((key, b.window, amount))
        if refused:
            return max(refused, key=lambda e: e.retry_after)
        for key, window, amount in keys:
            if key not in counts:
                self._expires[key] = limits.counted_until(window, key[2])
            counts[key] = counts.get(key, 0) + amount
        return Reservation(tuple(buckets), cost, now)

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        for b, wid, delta in limits.settlement(reservation, actual):
            key = (b.key, b.limit, wid)
            if key in self._counts:  # else its window is over and pruned
                self._counts[key] = max(0, self._counts[key] + delta)

    async def usage(self, buckets: Sequence[Bucket], now: float) -> dict[Bucket, int]:
        wids, weight = limits.window_ids(now), limits.previous_weight(now)
        out = {}
        for b in buckets:
            wid = wids[b.window]
            current = self._counts.get((b.key, b.limit, wid), 0)
            previous = self._counts.get((b.key, b.limit, wid - 1), 0) \
                if b.window == "minute" else 0
            out[b] = math.ceil(current + previous * weight)
        return out

    async def close(self) -> None:
        pass

    def _prune(self, now: float) -> None:
        """Drop windows nobody reads any more, at most once per PRUNE_EVERY seconds:
        amortised, a sweep costs little per request."""
        if now < self._next_prune:
            return
        self._next_prune = now + self.PRUNE_EVERY
        for key in [k for k, until in self._expires.items() if until <= now]:
            del self._counts[key], self._expires[key]


# KEYS: per bucket, its current window's counter, then the previous minute's (the
# current one again for day and month windows). ARGV: the previous minute's weight,
# then per bucket its cap, amount and the TTL of its current counter. Returns {} when
# granted, else {bucket number (1-based), current, previous} for every bucket that
# refused, having changed nothing.
_RESERVE = """
local weight, refused = tonumber(ARGV[1]), {}
for i = 1, #KEYS / 2 do
  local cap, amount = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local current = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
  local previous, w = 0, 0
  if KEYS[2*i] ~= KEYS[2*i-1] then
    previous, w = tonumber(redis.call('GET', KEYS[2*i]) or '0'), weight
  end
  if not (current + previous * w + amount <= cap) then
    table.insert(refused, i); table.insert(refused, current); table.insert(refused, previous)
  end
end
if #refused > 0 then return refused end
for i = 1, #KEYS / 2 do
  redis.call('INCRBY', KEYS[2*i-1], ARGV[3*i])
  redis.call('EXPIRE', KEYS[2*i-1], ARGV[3*i+1])
end
return refused
"""

# KEYS: counters; ARGV: the change to each. A counter that expired stays gone (its
# window is over); none goes below zero. KEEPTTL needs Redis 6.
_SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], ARGV[i]) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 0
"""


class RedisCounters:
    """Counters in Redis, shared by every replica pointed at it. A reservation is one
    Lua script (one round trip) that checks and adds for all buckets at once.

    All calls share one connection (`resp.Redis`), pipelined: a burst of requests
    writes its scripts at once and Redis answers them in order, so nobody waits for a
    pooled connection or opens one of their own; it is opened on the first call, and
    again on the call after a failure.

    Every failure (unreachable, slower than `timeout`, refused credentials, a script
    error) raises `CountersUnavailable`. Calls are not retried: a retried reservation
    could count twice. One that times out after Redis applied it stays counted, which
    errs toward refusing. A timeout also drops the connection (the calls queued behind
    it fail too), so a connection that went dead silently is not kept."""

    # Counters outlive their window by this much, for replicas whose clocks are behind.
    CLOCK_SKEW = 60

    def __init__(self, url: str, prefix: str = "egressguard:", timeout: float = 0.5) -> None:
        self.address = redact(url)
        self.prefix = prefix
        self.timeout = timeout
        self._redis = resp.Redis(url, timeout=timeout)  # the whole call, connecting included
        self._reserve = resp.Script(_RESERVE)
        self._settle = resp.Script(_SETTLE)

    async def reserve(self, buckets: Sequence[Bucket], cost: Cost,
                      now: float) -> Reservation | Exceeded:
        wids, weight = limits.window_ids(now), limits.previous_weight(now)
        keys: list[str] = []
        args: list[int | float] = [weight]
        for b in buckets:
            keys += self._keys(b, wids[b.window])
            ttl = math.ceil(limits.counted_until(b.window, wids[b.window]) - now)
            args += [b.cap, b.amount(cost), ttl + self.CLOCK_SKEW]
        refused = await self._call(self._redis.evalsha(self._reserve, keys, args))
        if not refused:
            return Reservation(tuple(buckets), cost, now)
        found = []
        for n in range(0, len(refused), 3):
            i, current_value, previous_value = refused[n:n + 3]
            b = buckets[i - 1]
            found.append(limits.exceeded(b, current_value, previous_value,
                                         b.amount(cost), now))
        return max(found, key=lambda e: e.retry_after)

    async def settle(self, reservation: Reservation, actual: Cost) -> None:
        changes = limits.settlement(reservation, actual)
        if changes:
            await self._call(self._redis.evalsha(
                self._settle, [self._key(b, wid) for b, wid, _ in changes],
                [delta for _, _, delta in changes]))

    async def usage(self, buckets: Sequence[Bucket], now: float) -> dict[Bucket, int]:
        if not buckets:
            return {}
        wids, weight = limits.window_ids(now), limits.previous_weight(now)
        keys = [k for b in buckets for k in self._keys(b, wids[b.window])]
        values = [int(v or 0) for v in await self._call(self._redis.mget(keys))]
        return {b: math.ceil(values[2 * i] + (values[2 * i + 1] * weight
                                               if b.window == "minute" else 0))
                for i, b in enumerate(buckets)}

    async def close(self) -> None:
        await self._redis.close()

    def _key(self, bucket: Bucket, wid: int) -> str:
        return f"{self.prefix}{bucket.key}|{bucket.limit}|{wid}"

    def _keys(self, bucket: Bucket, wid: int) -> tuple[str, str]:
        """The counter of window `wid` and of the minute before it (for day and month
        windows the same counter again, which tells the script there is none)."""
        current = self._key(bucket, wid)
        return current, self._key(bucket, wid - 1) if bucket.window == "minute" else current

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call  # bounded by `timeout` in resp.Redis
        except (resp.RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise CountersUnavailable(self._explain(exc), reason="limits_unavailable") from exc

    def _explain(self, exc: Exception) -> str:
        what = resp.failure(exc, self.timeout)
        if isinstance(exc, resp.AuthenticationError):
            what += "; check the user and password in the URL"
        return (f"rate limits and budgets cannot be checked: Redis at {self.address} {what}. "
                "Check that Redis is running and reachable from the proxy and that the "
                "counters URL is right")
