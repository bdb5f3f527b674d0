"""Limits and budgets as data (`egressguard.core.limits`): buckets, windows, the
sliding minute, Retry-After, estimates, spend and the price table."""

from __future__ import annotations

import calendar
import dataclasses
import random
from pathlib import Path

import pytest

from egressguard.core import limits
from egressguard.core.limits import (
    Bucket,
    Cost,
    Exceeded,
    LimitSpec,
    Price,
    Reservation,
    estimate,
    spend_micros,
)
from egressguard.core.yamlsource import ConfigError

SHIPPED_PRICES = Path(__file__).resolve().parent.parent / "policies" / "prices.yaml"
SOURCE = "prices.yaml"


def at(*ymd_hms: int) -> float:
    """Epoch seconds of a UTC time: at(2025, 3, 31, 23, 59, 30)."""
    return float(calendar.timegm((*ymd_hms, *(0,) * (6 - len(ymd_hms)))))


MINUTE = at(2025, 3, 14, 9, 26)  # the start of a minute


def test_limit_names_are_the_spec_fields() -> None:
    assert limits.LIMIT_NAMES == tuple(f.name for f in dataclasses.fields(LimitSpec))


def test_buckets_of_a_spec() -> None:
    spec = LimitSpec(requests_per_minute=60, tokens_per_day=1_000_000, spend_per_day=20,
                     spend_per_month=0.015)
    assert limits.buckets("team:payments", spec) == (
        Bucket("team:payments", "requests_per_minute", 60, "minute"),
        Bucket("team:payments", "tokens_per_day", 1_000_000, "day"),
        Bucket("team:payments", "spend_per_day", 20_000_000, "day"),  # micro-USD
        Bucket("team:payments", "spend_per_month", 15_000, "month"),
    )
    assert limits.buckets("agent:a", LimitSpec()) == ()


@pytest.mark.parametrize("limit, metric", [
    ("requests_per_minute", 1), ("tokens_per_minute", 700), ("tokens_per_day", 700),
    ("spend_per_day", 42), ("spend_per_month", 42),
])
def test_a_bucket_counts_its_metric(limit: str, metric: int) -> None:
    assert Bucket("s", limit, 1, "day").amount(Cost(1, 700, 42)) == metric


@pytest.mark.parametrize("now, minute, day, month", [
    (0.0, 0, 0, 1970 * 12),
    (at(2025, 3, 14, 9, 26, 59) + 0.999, MINUTE // 60, 20161, 2025 * 12 + 2),
    (at(2025, 12, 31, 23, 59, 59), at(2025, 12, 31, 23, 59) // 60, 20453, 2025 * 12 + 11),
    (at(2026, 1, 1), at(2026, 1, 1) // 60, 20454, 2026 * 12),
])
def test_window_ids(now: float, minute: float, day: int, month: int) -> None:
    assert limits.window_ids(now) == {"minute": minute, "day": day, "month": month}


@pytest.mark.parametrize("window, now, end", [
    ("minute", MINUTE + 59.5, MINUTE + 60),
    ("day", at(2025, 3, 14, 23, 59, 59), at(2025, 3, 15)),
    ("month", at(2025, 12, 31, 23), at(2026, 1, 1)),  # December -> January
    ("month", at(2024, 2, 10), at(2024, 3, 1)),  # a leap year's February
    ("month", at(2025, 1, 1), at(2025, 2, 1)),
])
def test_window_end(window: limits.Window, now: float, end: float) -> None:
    wid = limits.window_ids(now)[window]
    assert limits.window_end(window, wid) == end
    # a minute is read for one more minute, as the previous one
    assert limits.counted_until(window, wid) == end + (60 if window == "minute" else 0)


@pytest.mark.parametrize("second, weight", [(0, 1.0), (15, 0.75), (30, 0.5), (59.4, 0.01)])
def test_previous_weight(second: float, weight: float) -> None:
    assert limits.previous_weight(MINUTE + second) == pytest.approx(weight)


@pytest.mark.parametrize("current, previous, weight, amount, fits", [
    (9, 0, 1.0, 1, True),  # exactly at the cap is allowed
    (10, 0, 1.0, 1, False),
    (0, 10, 0.95, 1, False),  # just after the boundary: no second burst
    (0, 10, 0.5, 5, True),
    (0, 10, 0.5, 6, False),
    (0, 0, 1.0, 11, False),  # too large alone
])
def test_fits(current: int, previous: int, weight: float, amount: int, fits: bool) -> None:
    assert limits.fits(10, current, previous, weight, amount) is fits


@pytest.mark.parametrize("window, now, current, previous, amount, wait", [
    # calendar windows: until the reset, whatever the counts
    ("day", at(2025, 3, 14, 23), 10, 0, 1, 3600),
    ("day", at(2025, 3, 14, 23, 59, 59) + 0.5, 10, 0, 1, 1),  # never 0
    ("month", at(2025, 3, 31, 12), 10, 0, 1, 12 * 3600),
    # minute, the previous minute must fade: at :15, 2 + 10 * 0.75 + 1 > 10; at :18
    # the weight is 0.7 and 2 + 7 + 1 fits
    ("minute", MINUTE + 15, 2, 10, 1, 3),
    # minute, this minute must fade as the next one's previous: 40 s left, then
    # 10 * w <= 9 once w <= 0.9, 6 s into the next minute
    ("minute", MINUTE + 20, 10, 0, 1, 46),
    # too large for the cap: when both minutes are forgotten
    ("minute", MINUTE + 20, 0, 0, 11, 100),
])
def test_retry_after(window: limits.Window, now: float, current: int, previous: int,
                     amount: int, wait: int) -> None:
    bucket = Bucket("s", {"minute": "requests_per_minute", "day": "tokens_per_day",
                          "month": "spend_per_month"}[window], 10, window)
    assert limits.retry_after(bucket, current, previous, amount, now) == wait


def test_retry_after_is_the_first_second_that_fits() -> None:
    """For the sliding minute: after `retry_after` seconds the request fits, a second
    earlier it did not (with nothing else added meanwhile)."""
    rng = random.Random(7)
    bucket = Bucket("s", "tokens_per_minute", 1000, "minute")
    checked = 0
    while checked < 500:
        now = MINUTE + rng.uniform(0, 60)
        current, previous, amount = (rng.randint(0, 1000), rng.randint(0, 1000),
                                     rng.randint(1, 1000))
        if limits.fits(1000, current, previous, limits.previous_weight(now), amount):
            continue
        wait = limits.retry_after(bucket, current, previous, amount, now)
        assert _fits_later(current, previous, amount, now, wait)
        assert wait == 1 or not _fits_later(current, previous, amount, now, wait - 1)
        checked += 1


def _fits_later(current: int, previous: int, amount: int, now: float, wait: float) -> bool:
    """Whether the counts, left alone, admit `amount` at `now + wait`."""
    later = now + wait
    if later // 60 == now // 60:
        return limits.fits(1000, current, previous, limits.previous_weight(later), amount)
    if later // 60 == now // 60 + 1:
        return limits.fits(1000, 0, current, limits.previous_weight(later), amount)
    return amount <= 1000


@pytest.mark.parametrize("exceeded, message", [
    (Exceeded("spend_per_day", "rule:openai-prod/team:payments", 20_000_000, 20_125_001,
              3_000, 3600),
     "team payments (rule openai-prod) is over its spend_per_day limit of $20.00 "
     "(used $20.13); retry after 3600 s"),
    (Exceeded("tokens_per_day", "agent:build-bot", 1_000_000, 999_000, 4_200, 120),
     "agent build-bot would go over its tokens_per_day limit of 1,000,000 tokens "
     "(used 999,000 tokens, this request 4,200 tokens); retry after 120 s"),
    (Exceeded("requests_per_minute", "team:red", 60, 60, 1, 7),
     "team red is over its requests_per_minute limit of 60 requests (used 60 requests); "
     "retry after 7 s"),
    (Exceeded("tokens_per_minute", "rule:r/agent:a", 10_000, 0, 12_000, 100),
     "this request alone (estimated 12,000 tokens) is more than the tokens_per_minute "
     "limit of 10,000 tokens of agent a (rule r); ask for fewer max_tokens or send less"),
])
def test_exceeded_message(exceeded: Exceeded, message: str) -> None:
    assert exceeded.message == message
    assert exceeded.too_large is (exceeded.needed > exceeded.cap)


def test_exceeded_from_counts() -> None:
    bucket = Bucket("team:red", "requests_per_minute", 10, "minute")
    assert limits.exceeded(bucket, 2, 10, 1, MINUTE + 15) == Exceeded(
        "requests_per_minute", "team:red", 10, 10, 1, 3)  # 2 + 10 * 0.75 = 9.5 -> 10
    assert limits.exceeded(bucket, 2, 10, 1, MINUTE + 15).as_record() == {
        "limit": "requests_per_minute", "scope": "team:red", "cap": 10, "used": 10,
        "needed": 1, "retry_after": 3}


@pytest.mark.parametrize("body_bytes, max_tokens, price, cost", [
    (0, None, None, Cost(1, limits.DEFAULT_MAX_OUTPUT, 0)),
    (1, 100, None, Cost(1, 101, 0)),  # a started token counts
    (4000, 100, None, Cost(1, 1100, 0)),
    (4001, 0, None, Cost(1, 1001, 0)),
    # 1001 in at $2.50/M = 2502.5 micro-USD, 500 out at $10/M = 5000
    (4001, 500, Price(2.5, 10.0), Cost(1, 1501, 7503)),
])
def test_estimate(body_bytes: int, max_tokens: int | None, price: Price | None,
                  cost: Cost) -> None:
    assert estimate(body_bytes, max_tokens, price) == cost


@pytest.mark.parametrize("price, tokens_in, tokens_out, micros", [
    (Price(2.5, 10.0), 1_000_000, 1_000_000, 12_500_000),  # exactly $12.50
    (Price(0.15, 0.60), 1, 0, 1),  # 0.15 micro-USD: rounded up
    (Price(0.1, 0.4), 10, 0, 1),  # exactly 1, not 1.0000000000000002 -> 2
    (Price(0.1, 0.4), 0, 30, 12),
    (Price(0.075, 0.3), 3, 7, 3),  # 0.225 + 2.1
    (Price(0.0, 0.0), 5, 5, 0),
])
def test_spend_micros(price: Price, tokens_in: int, tokens_out: int, micros: int) -> None:
    assert spend_micros(price, tokens_in, tokens_out) == micros


def test_settlement_uses_the_windows_of_the_reservation() -> None:
    day, minute = (Bucket("a", "tokens_per_day", 10**6, "day"),
                   Bucket("a", "requests_per_minute", 10, "minute"))
    now = at(2025, 3, 14, 23, 59, 59)
    reservation = Reservation((day, minute), Cost(1, 1000, 0), now)
    ids = limits.window_ids(now)
    assert limits.settlement(reservation, Cost(1, 400, 0)) == [(day, ids["day"], -600)]
    assert limits.settlement(reservation, Cost(1, 1000, 0)) == []
    assert limits.settlement(reservation, Cost(0, 1200, 0)) == [
        (day, ids["day"], 200), (minute, ids["minute"], -1)]


@pytest.mark.parametrize("key, described", [
    ("team:payments", "team payments"),
    ("rule:openai-prod/team:payments", "team payments (rule openai-prod)"),
    ("rule:r/agent:a:b", "agent a:b (rule r)"),
])
def test_describe_scope(key: str, described: str) -> None:
    assert limits.describe_scope(key) == described


# -- the price table -------------------------------------------------------------------

@pytest.mark.parametrize("vendor, model, price", [
    ("openai", "gpt-4o", Price(2.5, 10.0)),
    ("openai", "gpt-4o-2024-05-13", Price(5.0, 15.0)),  # exact beats the glob below it
    ("openai", "gpt-4o-2024-08-06", Price(2.5, 10.0)),
    ("openai", "gpt-4o-mini-2024-07-18", Price(0.15, 0.6)),
    ("openai", "gpt-5-nano", Price(0.05, 0.4)),
    ("openai", "text-embedding-3-small", Price(0.02, 0.0)),
    ("anthropic", "claude-opus-4-5-20251101", Price(5.0, 25.0)),  # first glob in order
    ("anthropic", "claude-opus-4-1-20250805", Price(15.0, 75.0)),
    ("anthropic", "claude-sonnet-4-5-20250929", Price(3.0, 15.0)),
    ("anthropic", "claude-haiku-4-5", Price(1.0, 5.0)),
    ("anthropic", "claude-3-5-haiku-latest", Price(0.8, 4.0)),
    ("google", "gemini-2.5-pro", Price(1.25, 10.0)),
    ("google", "gemini-2.0-flash-001", Price(0.1, 0.4)),
    ("mistral", "mistral-small-latest", Price(0.1, 0.3)),
    ("openai", "GPT-4o", None),  # case-sensitive
    ("openai", "gpt-4o-2024", None),
    ("openai", "claude-sonnet-4", None),  # another vendor's model
    ("cohere", "command-r", None),  # a vendor without prices
])
def test_shipped_prices(vendor: str, model: str, price: Price | None) -> None:
    table = limits.load_prices(SHIPPED_PRICES)
    assert table.source == str(SHIPPED_PRICES)
    assert table.price(vendor, model) == price


def test_globs_match_in_file_order_after_exact_names() -> None:
    table = limits.parse_prices("""\
version: 1
currency: USD
prices:
  openai:
    "m-*": {input: 1, output: 1}
    "m-[ab]*": {input: 2, output: 2}
    m-a1: {input: 3, output: 3}
    "m-?": {input: 4, output: 4}
""", SOURCE)
    assert [table.price("openai", m) for m in ("m-a1", "m-a2", "m-x", "m-", "n-x")] == [
        Price(3, 3), Price(1, 1), Price(1, 1), Price(1, 1), None]


def price_problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(ConfigError) as info:
        limits.parse_prices(text, SOURCE)
    assert all(p.source == SOURCE for p in info.value.problems)
    assert str(info.value).startswith(f"{SOURCE}:")
    return [(p.line, p.column, p.message) for p in info.value.problems]


@pytest.mark.parametrize("text, problems", [
    ("- a\n", [(1, 1, "a price table is a mapping with `version: 1`, `currency: USD` and "
                      "`prices`")]),
    ("version: 2\ncurrency: EUR\nprices: {}\n", [
        (1, 1, "`version: 1` is required (found 2)"),
        (2, 1, "`currency: USD` is required (budgets are counted in USD; found 'EUR')")]),
    ("version: 1\ncurrency: USD\nprice: {}\n", [
        (3, 1, "unknown key 'price' in the price table; did you mean 'prices'? "
               "(allowed: version, currency, prices)"),
        (1, 1, "`prices` maps a vendor to its models, each `{input: USD, output: USD}` per "
               "million tokens")]),
    ("version: 1\ncurrency: USD\nprices:\n  opnai:\n    gpt-4o: {input: 1, output: 2}\n", [
        (4, 3, "unknown key 'opnai' in prices (the vendor catalogue); did you mean 'openai'? "
               "(allowed: " + ", ".join(limits.catalogue().names) + ")")]),
    ("version: 1\ncurrency: USD\nprices:\n  openai: [gpt-4o]\n", [
        (4, 3, "`prices.openai` maps a model name or glob to `{input: USD, output: USD}` "
               "per million tokens")]),
    ("version: 1\ncurrency: USD\nprices:\n  openai:\n    gpt-4o: 2.5\n", [
        (5, 5, "the price of 'gpt-4o' is `{input: USD, output: USD}` per million tokens, "
               "found 2.5")]),
    ("version: 1\ncurrency: USD\nprices:\n  openai:\n"
     "    gpt-4o: {input: -1, output: '2', cached: 1}\n    o3: {input: .nan}\n"
     "    o4-mini: {input: 1, output: true}\n", [
         (5, 14, "`input` is USD per million tokens, a number of 0 or more; found -1"),
         (5, 25, "`output` is USD per million tokens, a number of 0 or more; found '2'"),
         (5, 38, "unknown key 'cached' in the price of 'gpt-4o' (allowed: input, output)"),
         (6, 10, "`input` is USD per million tokens, a number of 0 or more; found nan"),
         (6, 5, "`output` is USD per million tokens, a number of 0 or more; found None"),
         (7, 25, "`output` is USD per million tokens, a number of 0 or more; found True")]),
    ("version: 1\ncurrency: USD\nprices:\n  openai:\n    gpt-4o: {input: 1, output: 2}\n"
     "    gpt-4o: {input: 1, output: 2}\n", [
         (6, 5, "duplicate key 'gpt-4o' (first defined on line 5)")]),
])
def test_price_table_problems(text: str, problems: list[tuple[int, int, str]]) -> None:
    assert sorted(price_problems(text)) == sorted(problems)


def test_a_missing_price_table() -> None:
    with pytest.raises(ConfigError) as info:
        limits.load_prices(Path("/nonexistent/prices.yaml"))
    assert str(info.value) == ("/nonexistent/prices.yaml:1:1: cannot read the price table: "
                               "No such file or directory")
