"""Rate limits and budgets as data: what a policy limits, the counters a request
touches, their windows, the cost reserved before forwarding, and list prices.

Per-minute limits use a sliding-window counter: the current fixed minute plus the
previous one weighted by the share of it still inside the last 60 seconds, so a
burst at a minute boundary cannot pass twice the limit. Days and months are UTC
calendar days and months. Spend is counted in integer micro-USD, so counters add
exactly. The counters themselves live in `egressguard.backends.counters`.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from egressguard.core.globs import is_glob
from egressguard.core.usage import Usage
from egressguard.core.vendors import Catalogue, catalogue
from egressguard.core.yamlsource import (
    ConfigError,
    Document,
    Problem,
    read_source,
    unknown_key_message,
)

Window = Literal["minute", "day", "month"]
Metric = Literal["requests", "tokens", "spend_micros"]  # the `Cost` field a limit counts

_LIMITS: dict[str, tuple[Metric, Window]] = {
    "requests_per_minute": ("requests", "minute"),
    "tokens_per_minute": ("tokens", "minute"),
    "tokens_per_day": ("tokens", "day"),
    "spend_per_day": ("spend_micros", "day"),
    "spend_per_month": ("spend_micros", "month"),
}
LIMIT_NAMES = tuple(_LIMITS)

# When a request does not say how much it may generate, reserve this much output; the
# vendor's own default is often the model's maximum, so any fixed figure is a guess
# that settling corrects. Operators who want tight budgets clamp max_tokens by rule.
DEFAULT_MAX_OUTPUT = 4096
MICROS = 1_000_000  # micro-USD per USD


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits of one scope (an agent, a team, or a rule per agent/team); None = no
    limit. Spend in USD."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    spend_per_day: float | None = None
    spend_per_month: float | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    requests: int
    tokens: int
    spend_micros: int

    def as_record(self) -> dict[str, int | float]:
        """For the audit record: spend in USD."""
        return {"requests": self.requests, "tokens": self.tokens,
                "spend_usd": self.spend_micros / 1_000_000}


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter a request is checked against."""

    key: str  # the scope, e.g. "rule:openai-prod/team:payments"
    limit: str  # one of LIMIT_NAMES
    cap: int  # in the metric's unit: requests, tokens or micro-USD
    window: Window
    metric: Metric = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", _LIMITS[self.limit][0])

    def amount(self, cost: Cost) -> int:
        """The part of `cost` this bucket counts."""
        return getattr(cost, self.metric)  # type: ignore[no-any-return]


@lru_cache(maxsize=4096)  # asked on every request; scopes and specs are few
def buckets(scope_key: str, spec: LimitSpec) -> tuple[Bucket, ...]:
    """One bucket per limit `spec` sets."""
    out = []
    for name, (metric, window) in _LIMITS.items():
        value = getattr(spec, name)
        if value is not None:
            cap = round(value * MICROS) if metric == "spend_micros" else int(value)
            out.append(Bucket(scope_key, name, cap, window))
    return tuple(out)


# -- windows ---------------------------------------------------------------------------

def window_ids(now: float) -> dict[Window, int]:
    """The windows `now` (epoch seconds) falls in: minutes and days since the epoch,
    months since year 0. Computed once per request for all its buckets."""
    t = time.gmtime(now)
    return {"minute": int(now // 60), "day": int(now // 86400),
            "month": t.tm_year * 12 + t.tm_mon - 1}


def window_end(window: Window, wid: int) -> float:
    """When window `wid` ends (epoch seconds)."""
    if window == "minute":
        return (wid + 1) * 60.0
    if window == "day":
        return (wid + 1) * 86400.0
    year, month = divmod(wid + 1, 12)
    return float(calendar.timegm((year, month + 1, 1, 0, 0, 0)))


def counted_until(window: Window, wid: int) -> float:
    """Until when window `wid`'s counter is read: a minute is also the previous minute
    of the next one."""
    return window_end(window, wid) + (60.0 if window == "minute" else 0.0)


def previous_weight(now: float) -> float:
    """The share of the previous minute still inside the 60 seconds before `now`."""
    return 1.0 - (now % 60.0) / 60.0


def fits(cap: int, current: int, previous: int, weight: float, amount: int) -> bool:
    """Whether `amount` more stays within `cap` (`previous` is 0 for day and month
    windows). The Redis script repeats this very expression, so both stores agree."""
    return current + previous * weight + amount <= cap


def retry_after(bucket: Bucket, current: int, previous: int, amount: int, now: float) -> int:
    """Whole seconds (at least 1) until `amount` would fit, if nothing else is added:
    a calendar window's reset, or for a minute the moment enough of the sliding window
    has faded out."""
    left = window_end(bucket.window, window_ids(now)[bucket.window]) - now
    room = bucket.cap - amount  # what the counters may hold for the request to fit
    if bucket.window != "minute":
        wait = left
    elif room < 0:  # never fits; say when both minutes are forgotten
        wait = left + 60.0
    elif current <= room:  # the previous minute must fade (previous > 0, or it would fit)
        wait = left - 60.0 * (room - current) / previous
    else:  # this minute must become the previous one and fade
        wait = left + 60.0 * (1.0 - room / current)
    return max(1, math.ceil(wait))


# -- outcomes --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Exceeded:
    """A refused reservation: which limit, whose, and when to try again."""

    limit: str
    scope: str
    cap: int
    used: int  # what the window holds (the sliding estimate, rounded up)
    needed: int  # this request's estimate
    retry_after: int  # seconds

    @property
    def too_large(self) -> bool:
        """The request alone is over the limit: waiting will not help."""
        return self.needed > self.cap

    @property
    def message(self) -> str:
        who, cap = describe_scope(self.scope), self._show(self.cap)
        if self.too_large:
            return (f"this request alone (estimated {self._show(self.needed)}) is more than "
                    f"the {self.limit} limit of {cap} of {who}; ask for fewer max_tokens "
                    "or send less")
        if self.used >= self.cap:
            what = f"is over its {self.limit} limit of {cap} (used {self._show(self.used)})"
        else:
            what = (f"would go over its {self.limit} limit of {cap} (used "
                    f"{self._show(self.used)}, this request {self._show(self.needed)})")
        return f"{who} {what}; retry after {self.retry_after} s"

    def as_record(self) -> dict[str, Any]:
        """For the audit record: amounts in the limit's unit (USD for spend)."""
        spend = _LIMITS[self.limit][0] == "spend_micros"

        def unit(n: int) -> int | float:
            return n / 1_000_000 if spend else n

        return {"limit": self.limit, "scope": self.scope, "cap": unit(self.cap),
                "used": unit(self.used), "needed": unit(self.needed),
                "retry_after": self.retry_after}

    def _show(self, n: int) -> str:
        metric = _LIMITS[self.limit][0]
        if metric == "spend_micros":  # cents, rounded up: never "used $20.00" when over
            return f"${math.ceil(n / 10_000) / 100:,.2f}"
        return f"{n:,} {metric}"


def exceeded(bucket: Bucket, current: int, previous: int, amount: int,
             now: float) -> Exceeded:
    """The refusal of `amount` by `bucket`, whose windows hold `current`/`previous`."""
    weight = previous_weight(now) if bucket.window == "minute" else 0.0
    return Exceeded(bucket.limit, bucket.key, bucket.cap,
                    math.ceil(current + previous * weight), amount,
                    retry_after(bucket, current, previous, amount, now))


def describe_scope(key: str) -> str:
    """"rule:openai-prod/team:payments" -> "team payments (rule openai-prod)"."""
    parts = [p.replace(":", " ", 1) for p in key.split("/")]
    return parts[-1] + (f" ({', '.join(parts[:-1])})" if len(parts) > 1 else "")


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a granted reservation added: `cost` to each bucket's window at `now`.
    Settling uses the same windows, even after they have rolled over."""

    buckets: tuple[Bucket, ...]
    cost: Cost
    now: float


def settlement(reservation: Reservation, actual: Cost) -> list[tuple[Bucket, int, int]]:
    """(bucket, window id, change) for every counter whose share was not `actual`."""
    wids = window_ids(reservation.now)
    out = []
    for bucket in reservation.buckets:
        delta = bucket.amount(actual) - bucket.amount(reservation.cost)
        if delta:
            out.append((bucket, wids[bucket.window], delta))
    return out


# -- cost ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float


def spend_micros(price: Price, input_tokens: int, output_tokens: int) -> int:
    """What the tokens cost in micro-USD, rounded up. USD per million tokens is
    micro-USD per token; summed in millionths of that, so the sum is exact."""
    pico = (input_tokens * round(price.input_per_mtok * MICROS)
            + output_tokens * round(price.output_per_mtok * MICROS))
    return -(-pico // MICROS)


def settled(usage: Usage | None, price: Price | None) -> Cost | None:
    """What a request cost by the vendor's own counts; None when it reported none.
    Anthropic bills prompt-cache reads and writes on top of `input_tokens`: both count,
    at the input price (reads cost less, writes a quarter more)."""
    if usage is None or usage.input_tokens is None or usage.output_tokens is None:
        return None
    read = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (
        usage.cache_creation_input_tokens or 0)
    return Cost(1, read + usage.output_tokens,
                spend_micros(price, read, usage.output_tokens) if price else 0)


def estimate(body_bytes: int, max_tokens: int | None, price: Price | None,
             choices: int = 1) -> Cost:
    """The cost to reserve before forwarding. A token is about 4 bytes of English and
    more of JSON syntax or other scripts, so bytes/4 over-estimates the prompt on
    purpose: a reservation should err high, and settling gives the rest back. Each of
    `choices` answers (`n`) may run to the cap."""
    input_tokens = -(-body_bytes // 4)
    output_tokens = (DEFAULT_MAX_OUTPUT if max_tokens is None else max(0, max_tokens)) \
        * max(1, choices)
    spend = spend_micros(price, input_tokens, output_tokens) if price is not None else 0
    return Cost(1, input_tokens + output_tokens, spend)


def estimate_batch(costs: Sequence[Cost]) -> Cost:
    """A batch is one request that runs all of its requests: their tokens and spend,
    counted once against per-request limits."""
    return Cost(1, sum(c.tokens for c in costs), sum(c.spend_micros for c in costs))


# -- the price table -------------------------------------------------------------------

PRICES_VERSION = 1
_PRICES_TOP = ("version", "currency", "prices")
_PRICE_KEYS = ("input", "output")


class PriceTable:
    """List prices per vendor and model; built once, read on every request."""

    def __init__(self, source: str, entries: Mapping[str, Sequence[tuple[str, Price]]]) -> None:
        self.source = source
        self.digest = ""  # sha256 of the file, when loaded from one
        self._exact = {vendor: {name: p for name, p in models if not is_glob(name)}
                       for vendor, models in entries.items()}
        self._globs = {vendor: tuple((re.compile(translate(name)), p)
                                     for name, p in models if is_glob(name))
                       for vendor, models in entries.items()}

    def price(self, vendor: str, model: str) -> Price | None:
        """The exact model name's price, else the first glob (in file order) matching it."""
        found = self._exact.get(vendor, {}).get(model)
        if found is not None:
            return found
        return next((p for glob, p in self._globs.get(vendor, ()) if glob.match(model)), None)


def load_prices(path: Path, vendors: Catalogue | None = None) -> PriceTable:
    text, digest = read_source(path, "the price table")
    table = parse_prices(text, str(path), vendors)
    table.digest = digest
    return table


def parse_prices(text: str, source: str, vendors: Catalogue | None = None) -> PriceTable:
    """The price table in `text`; ConfigError listing every problem with its place."""
    doc = Document(text, source)
    problems = list(doc.problems)
    table = _price_table(doc, (vendors or catalogue()).names, problems)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    return table


def _price_table(doc: Document, vendor_names: tuple[str, ...],
                 problems: list[Problem]) -> PriceTable:
    data = doc.data
    if not isinstance(data, dict):
        problems.append(doc.where((), "a price table is a mapping with `version: 1`, "
                                  "`currency: USD` and `prices`"))
        return PriceTable(doc.source, {})
    for key in data:
        if key not in _PRICES_TOP:
            problems.append(doc.where((key,), unknown_key_message(key, _PRICES_TOP,
                                                                  "the price table")))
    version = data.get("version")
    if type(version) is not int or version != PRICES_VERSION:
        problems.append(doc.where(("version",), f"`version: {PRICES_VERSION}` is required "
                                  f"(found {version!r})"))
    if data.get("currency") != "USD":
        problems.append(doc.where(("currency",), "`currency: USD` is required (budgets are "
                                  f"counted in USD; found {data.get('currency')!r})"))
    prices = data.get("prices")
    if not isinstance(prices, dict):
        problems.append(doc.where(("prices",), "`prices` maps a vendor to its models, each "
                                  "`{input: USD, output: USD}` per million tokens"))
        return PriceTable(doc.source, {})
    entries: dict[str, list[tuple[str, Price]]] = {}
    for vendor, models in prices.items():
        path = ("prices", vendor)
        if vendor not in vendor_names:
            problems.append(doc.where(path, unknown_key_message(
                vendor, vendor_names, "prices (the vendor catalogue)")))
        if not isinstance(models, dict):
            problems.append(doc.where(path, f"`prices.{vendor}` maps a model name or glob "
                                      "to `{input: USD, output: USD}` per million tokens"))
            continue
        entries[vendor] = [(model, price) for model, spec in models.items()
                           if (price := _price(doc, (*path, model), spec, problems))]
    return PriceTable(doc.source, entries)


def _price(doc: Document, path: tuple[str, ...], spec: Any,
           problems: list[Problem]) -> Price | None:
    if not isinstance(spec, dict):
        problems.append(doc.where(path, f"the price of {path[-1]!r} is `{{input: USD, "
                                  f"output: USD}}` per million tokens, found {spec!r}"))
        return None
    ok = True
    for key in spec:
        if key not in _PRICE_KEYS:
            problems.append(doc.where((*path, key), unknown_key_message(
                key, _PRICE_KEYS, f"the price of {path[-1]!r}")))
            ok = False
    for key in _PRICE_KEYS:
        value = spec.get(key)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 <= value < math.inf):
            problems.append(doc.where((*path, key) if key in spec else path,
                                      f"`{key}` is USD per million tokens, a number of 0 "
                                      f"or more; found {value!r}"))
            ok = False
    return Price(float(spec["input"]), float(spec["output"])) if ok else None
