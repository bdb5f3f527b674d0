"""What a rule may do to spend less and fail less: model routing, retries, vendor
failover, key pools and response caching. Plain data read from the policy, and the
pure decisions made with it (which model, how long to back off, which key next).

All of it is opt-in per rule. The request a rule allowed is what is routed, retried,
failed over or cached: policy and redaction have run before any of it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from egressguard.core.globs import Globs

# attempts answered with these are tried again (another key, later, or the fallback)
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
KEY_REFUSED_STATUS = frozenset({401, 403})  # the key is bad: out of its pool
PICKS = ("round_robin", "least_recently_limited")


@dataclass(frozen=True, slots=True)
class Downgrade:
    """Models matching `models` become `to` (a team's downgrade, or by objective)."""

    models: Globs
    to: str


@dataclass(frozen=True, slots=True)
class Objective:
    """Small requests go to a cheaper model: prompts under `under_tokens` (estimated
    as bytes / 4, as the limits estimate them), and without tools if so asked."""

    under_tokens: int
    to: str
    models: Globs | None = None  # only these requested models (None: any)
    without_tools: bool = True

    def fits(self, model: str, prompt_bytes: int, has_tools: bool) -> bool:
        return (prompt_bytes // 4 < self.under_tokens
                and not (self.without_tools and has_tools)
                and (self.models is None or self.models(model)))


def _frozen() -> Any:
    return field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Route:
    aliases: Mapping[str, str] = _frozen()  # name the agent uses -> model sent
    teams: Mapping[str, tuple[Downgrade, ...]] = _frozen()  # team -> its downgrades
    objective: Objective | None = None

    def apply(self, model: str, team: str | None, prompt_bytes: int,
              has_tools: bool) -> tuple[str, tuple[str, ...]]:
        """(model to send, what rewrote it: "alias", "team", "objective"), in that order:
        an alias names the model, a team downgrade and the objective may then lower it."""
        by: list[str] = []
        if (aliased := self.aliases.get(model)) is not None:
            model = aliased
            by.append("alias")
        for downgrade in self.teams.get(team or "", ()):
            if downgrade.models(model) and downgrade.to != model:
                model = downgrade.to
                by.append("team")
                break
        if self.objective is not None and self.objective.to != model \
                and self.objective.fits(model, prompt_bytes, has_tools):
            model = self.objective.to
            by.append("objective")
        return model, tuple(by)


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 3  # in all, the first one included
    within: float = 30.0  # seconds from the first attempt: no attempt starts after
    backoff: float = 0.25  # first pause; doubles each time, with full jitter
    max_backoff: float = 8.0

    def pause(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number `attempt` (2, 3, ...): full jitter over
        an exponential ceiling ("Exponential Backoff And Jitter", AWS), at least the
        vendor's Retry-After when the same key is tried again."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 2))
        pause = (rng or random).uniform(0, ceiling)
        return max(pause, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class Fallback:
    """A vendor to fail over to, with the model to ask it for."""

    vendor: str
    model: str
    secret: str | None = None  # Vault path template; else the policy's `secrets:`
    host: str | None = None  # Azure OpenAI: the resource's host
    deployment: str | None = None  # Azure OpenAI: the deployment (default: `model`)
    api_version: str = "2024-10-21"  # Azure OpenAI


@dataclass(frozen=True, slots=True)
class CachePlan:
    exact_ttl: float | None = None  # seconds; None: no exact-match cache
    semantic_ttl: float | None = None  # seconds; None: no semantic cache
    threshold: float = 0.95  # cosine similarity a semantic hit needs

    @property
    def on(self) -> bool:
        return self.exact_ttl is not None or self.semantic_ttl is not None


@dataclass(frozen=True, slots=True)
class KeyPool:
    keys: tuple[str, ...]  # Vault path templates
    pick: str = "round_robin"  # or "least_recently_limited"


@dataclass(frozen=True, slots=True)
class Resilience:
    """A rule's retries, failover, pool and cache, as one thing the relay runs."""

    retry: Retry | None = None
    fallback: tuple[Fallback, ...] = ()
    pool: KeyPool | None = None
    cache: CachePlan | None = None

    @property
    def relayed(self) -> bool:
        """Whether requests under this rule go through the relay (anything to retry,
        fail over to, rotate away from or replay)."""
        return bool(self.retry or self.fallback or (self.cache and self.cache.on)
                    or (self.pool and len(self.pool.keys) > 1))

    def attempts(self) -> int:
        """Attempts at the rule's own vendor: the retry budget, else one per pooled key."""
        if self.retry is not None:
            return self.retry.attempts
        return len(self.pool.keys) if self.pool else 1

    def budget(self) -> Retry:
        return self.retry or Retry(attempts=self.attempts())
