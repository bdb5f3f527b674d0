"""Which key of a rule's pool a request gets, and what the vendor said about each key.

A key (one resolved Vault location) answered with 429 rests until the vendor's
Retry-After has passed; a key answered with 401/403 is taken out of its pool until
the policy is reloaded (rotate it in Vault, then reload). Picking skips both. State
is per process: each replica learns about a limited key from its own attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)
DEFAULT_REST = 10.0  # seconds a 429 without Retry-After rests its key
MAX_REST = 3600.0  # a Retry-After beyond this is not believed


@dataclass(slots=True)
class KeyState:
    rest_until: float = 0.0
    limited_at: float = 0.0  # last 429 (0: never), for least_recently_limited
    refused: str | None = None  # why it is out of the pool (401/403), if it is


class KeyPools:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.keys: dict[str, KeyState] = {}  # resolved location -> what we know of it
        self._turns: dict[str, int] = {}  # pool (rule name) -> requests given a key
        self._policy: str | None = None

    def reset_for(self, policy_digest: str) -> None:
        """A new policy: refused keys get another chance (the operator rotated them)."""
        if policy_digest != self._policy:
            self._policy = policy_digest
            for state in self.keys.values():
                state.refused = None

    def pick(self, pool: str, keys: Sequence[str], how: str = "round_robin",
             exclude: Sequence[str] = ()) -> str | None:
        """A usable key of `keys` (resolved locations), or None if every one rests,
        is refused or is excluded (already tried by this request)."""
        now = self.clock()
        usable = [k for k in keys if k not in exclude and self.usable(k, now)]
        if not usable:
            return None
        if how == "least_recently_limited":
            return min(usable, key=lambda k: self.keys[k].limited_at if k in self.keys else 0.0)
        turn = self._turns.get(pool, 0)
        self._turns[pool] = turn + 1
        return usable[turn % len(usable)]

    def usable(self, key: str, now: float | None = None) -> bool:
        state = self.keys.get(key)
        return state is None or (state.refused is None
                                 and state.rest_until <= (self.clock() if now is None else now))

    def rests_for(self, keys: Sequence[str]) -> float | None:
        """Seconds until the first of `keys` that is only resting may be used again."""
        now = self.clock()
        waits = [s.rest_until - now for k in keys if (s := self.keys.get(k)) is not None
                 and s.refused is None and s.rest_until > now]
        return min(waits) if waits else None

    def limited(self, key: str, retry_after: float | None) -> None:
        now = self.clock()
        state = self.keys.setdefault(key, KeyState())
        rest = DEFAULT_REST if retry_after is None else min(max(retry_after, 0.0), MAX_REST)
        state.rest_until, state.limited_at = max(state.rest_until, now + rest), now

    def refused(self, key: str, status: int) -> None:
        state = self.keys.setdefault(key, KeyState())
        if state.refused is None:
            state.refused = f"the vendor answered {status}"
            log.error("key %s taken out of its pool: the vendor answered %d; rotate it in "
                      "Vault and reload the policy to bring it back", key, status)

    def snapshot(self) -> dict[str, str]:
        """location -> "ok" / "resting" / "refused", for metrics and doctor."""
        now = self.clock()
        return {k: "refused" if s.refused else "resting" if s.rest_until > now else "ok"
                for k, s in self.keys.items()}


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds (delta-seconds; an HTTP date is rare from
    model vendors and read as unknown)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
