"""Key pools, backoff and model routing: the pure decisions the relay and Enforce make."""

from __future__ import annotations

import random

import pytest

from egressguard.core.globs import Globs
from egressguard.core.keypool import DEFAULT_REST, MAX_REST, KeyPools, retry_after_seconds
from egressguard.core.resilience import Downgrade, Objective, Retry, Route

KEYS = ["k/a", "k/b", "k/c"]


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


@pytest.fixture
def pools(clock: list[float]) -> KeyPools:
    return KeyPools(clock=lambda: clock[0])


def test_round_robin_skips_resting_and_refused_keys(pools: KeyPools, clock: list[float]) -> None:
    assert [pools.pick("r", KEYS) for _ in range(4)] == ["k/a", "k/b", "k/c", "k/a"]
    pools.limited("k/b", 30)
    pools.refused("k/c", 401)
    assert {pools.pick("r", KEYS) for _ in range(5)} == {"k/a"}
    assert pools.rests_for(KEYS) == 30  # the refused key is not waiting to come back
    clock[0] += 30
    assert {pools.pick("r", KEYS) for _ in range(4)} == {"k/a", "k/b"}
    assert pools.snapshot() == {"k/b": "ok", "k/c": "refused"}


def test_least_recently_limited_prefers_the_key_limited_longest_ago(
        pools: KeyPools, clock: list[float]) -> None:
    pools.limited("k/a", 1)
    clock[0] += 5
    pools.limited("k/b", 1)
    clock[0] += 5
    assert pools.pick("r", KEYS, "least_recently_limited") == "k/c"  # never limited
    assert pools.pick("r", KEYS[:2], "least_recently_limited") == "k/a"
    assert pools.pick("r", KEYS, "least_recently_limited", exclude=["k/c"]) == "k/a"


def test_every_key_out_gives_none_and_a_policy_reload_brings_refused_ones_back(
        pools: KeyPools) -> None:
    pools.reset_for("digest-1")
    for key in KEYS:
        pools.refused(key, 403)
    assert pools.pick("r", KEYS) is None and pools.rests_for(KEYS) is None
    pools.reset_for("digest-1")  # the same policy: still out
    assert pools.pick("r", KEYS) is None
    pools.reset_for("digest-2")
    assert pools.pick("r", KEYS) == "k/a"


def test_a_rest_follows_retry_after_within_bounds(pools: KeyPools) -> None:
    pools.limited("k/a", None)
    assert pools.rests_for(["k/a"]) == DEFAULT_REST
    pools.limited("k/b", 10 ** 9)
    assert pools.rests_for(["k/b"]) == MAX_REST
    pools.limited("k/b", 1)  # a shorter answer does not cut a rest short
    assert pools.rests_for(["k/b"]) == MAX_REST
    assert [retry_after_seconds(v) for v in ("2", " 1.5 ", "-1", "Wed, 21 Oct 2015", "")] == \
        [2.0, 1.5, None, None, None]


def test_backoff_is_full_jitter_under_a_doubling_ceiling_and_honours_retry_after() -> None:
    retry, rng = Retry(attempts=5, backoff=0.25, max_backoff=1.0), random.Random(7)
    for attempt, ceiling in ((2, 0.25), (3, 0.5), (4, 1.0), (5, 1.0)):
        pauses = [retry.pause(attempt, rng=rng) for _ in range(200)]
        assert 0 <= min(pauses) and max(pauses) <= ceiling and max(pauses) > ceiling * 0.8
    assert retry.pause(2, retry_after=3.0, rng=rng) == 3.0


def test_routing_applies_alias_then_team_then_objective() -> None:
    route = Route(aliases={"fast": "gpt-4o-mini", "smart": "gpt-4o"},
                  teams={"interns": (Downgrade(Globs(("gpt-4o",)), "gpt-4o-mini"),)},
                  objective=Objective(under_tokens=100, to="gpt-4o-mini",
                                      models=Globs(("gpt-4o",))))
    assert route.apply("fast", None, 10_000, False) == ("gpt-4o-mini", ("alias",))
    assert route.apply("smart", "interns", 10_000, False) == ("gpt-4o-mini", ("alias", "team"))
    assert route.apply("gpt-4o", None, 300, False) == ("gpt-4o-mini", ("objective",))
    assert route.apply("gpt-4o", None, 300, True) == ("gpt-4o", ())  # tools: not small
    assert route.apply("gpt-4o", None, 400, False) == ("gpt-4o", ())  # 100 tokens or more
    assert route.apply("o3", None, 10, False) == ("o3", ())  # not a model it lowers
