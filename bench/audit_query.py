"""What an auditor's questions cost over a million audit records, through the real CLI.

A journal is generated as the proxy writes it: `records.build(records.RequestFacts(...))`
for every record, appended with `Journal.append_sync` (fsync off: the disk is not what
is measured), so records are chained (`chain.seal`), a signed Ed25519 checkpoint follows
every 1000 records and each file is closed by one when it passes 64 MiB
(`journal-000001.jsonl`, ...). The journal's clock is the traffic's: checkpoints carry
the time of the record before them, and record ids are UUIDv7 of the record's time from
the seeded generator, so the same seed gives the same bytes. `egressguard audit verify
--pubkey` must accept the journal (timed once, for information).

The traffic, `--records` of it (1,000,000) over `--days` (90) up to 2026-12-01 UTC:
about 200 agents in 12 teams (activity skewed between teams and between the agents of a
team), growing over the period, on weekdays more than weekends and in working hours more
than at night; 6 vendors and 18 models with per-team preferences; tokens from log-normal
distributions per kind of model (chat, reasoning, embeddings) and spend at
`policies/prices.yaml` (`limits.load_prices`, `limits.spend_micros`, as the proxy settles
it); about 3 % denials with the proxy's reason codes, statuses and messages (policy,
limits, identity, redaction, CONNECT to a non-vendor host); request redactions on about
8 % of records (EMAIL_ADDRESS, PHONE_NUMBER, PERSON, ..., secrets masked or blocked) and
secrets masked in a few answers; latencies with long tails; vendor 429s and 5xx (and a
two-hour outage of one vendor); about a third of chat requests streamed; clamps, limit
states, credential references, and a policy reload record now and then. Some teams' rules
relay (every attempt recorded): they retry 429s, 5xx and connection errors, fail over to
another vendor, keep a response cache (exact and semantic hits with what they saved,
misses, bypasses) or route models (team downgrades, small prompts, an alias), with what
the routing saved at the two models' prices.

Then each question is run as an auditor runs it, `egressguard audit ... --json` in a
subprocess, wall clock of the whole command (interpreter start, imports, opening or
building the cache, the query, printing), its output parsed and checked against the
generator's own tally:

  load   `audit sql "SELECT count(*) FROM records"` with an empty cache folder
         (`XDG_CACHE_HOME`): reading the journal into DuckDB, plus a trivial query
  (a)    `audit query --since <end - 7 d> --team payments --decision deny --json`:
         the ids must be exactly the generator's
  (b)    `audit stats --by team,model --since <end - 30 d> --json`: per group requests,
         denials, tokens, spend, p50/p95 latency, redactions per entity type, cache hits,
         tokens and dollars saved, failovers and retried requests must be the generator's
  (c)    `audit sql`: requests and spend per team per day over the whole period, checked
         per row

Each of (a)-(c) is run once with an empty cache folder of its own (cold: the load is
part of it) and then 3 times more (warm: the median is the figure). Then, since the
proxy keeps appending to its newest file and the cache reads a changed file again, each
question is run 3 times more with one record (a policy-reload record, which none of the
questions selects) appended to the journal before each run ("live"), and 3 times more
with the second-newest file (closed, full size) made to look changed before each run
("full": what a newest file at its full 64 MiB costs, since the cache reads a changed
file again whole). The journal files sit in the OS page cache throughout (they were just
written or read): "cold" means DuckDB's cache, not the disk.

Target (issue): each question under 3 s with the cache warm (PASS/MISS is printed; the
cold, live and full figures are printed next to it). Exit status 0 when everything ran
and every answer was right, whether or not the target was met; 1 when an answer was
wrong or a command failed; 2 when there is nothing to measure (no journal, or too few
records for question (a) to match any).

    .venv/bin/python bench/audit_query.py [--records 1000000] [--days 90] [--seed 1]
                                          [--runs 3] [--gzip] [--segment-age SECONDS]
                                          [--keep] [--reuse DIR] [--dir DIR]

`--gzip` compresses the closed files as the proxy's housekeeping does; `--segment-age
3600` also rotates every hour of traffic time, as the proxy does by default. `--keep`
keeps the work folder (journal, public key, manifest with the tally) and prints it;
`--reuse DIR` measures an existing one again without generating it (about 1.1 GB and
50 s per million records). About 4 minutes in all for a million records.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import housekeeping
from egressguard.backends import journal as journal_module
from egressguard.backends.journal import Journal, Settings, segments
from egressguard.core import checkpoints, limits, records

REPO = Path(__file__).resolve().parents[1]
END = datetime(2026, 12, 1, tzinfo=UTC)
TARGET_S = 3.0
QUERY_TEAM = "payments"
MANIFEST = "bench-manifest.json"
GENERATOR = "4"  # bump when the generated content changes: a reused folder must match
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# -- the world ----------------------------------------------------------------------------

# team: (share of traffic, agents, stream share of chat requests, redaction rate,
#        vendor preferences, has limits)
TEAMS: dict[str, tuple[float, int, float, float, dict[str, float], bool]] = {
    "support": (22, 30, 0.55, 0.20, {"anthropic": 5, "openai": 3, "google": 1}, True),
    "platform": (18, 26, 0.25, 0.03, {"openai": 4, "anthropic": 3, "mistral": 1,
                                     "groq": 1}, False),
    "research": (14, 22, 0.30, 0.02, {"openai": 3, "anthropic": 3, "google": 3,
                                     "deepseek": 1, "mistral": 1}, True),
    "payments": (9, 18, 0.20, 0.12, {"openai": 4, "anthropic": 2}, True),
    "data-eng": (8, 18, 0.05, 0.06, {"openai": 3, "google": 3, "groq": 1}, False),
    "growth": (7, 16, 0.40, 0.07, {"openai": 3, "google": 2, "anthropic": 1}, True),
    "search": (6, 16, 0.20, 0.02, {"openai": 4, "google": 1, "mistral": 1}, False),
    "mobile": (5, 14, 0.50, 0.04, {"openai": 2, "anthropic": 2, "google": 1}, False),
    "security": (4, 12, 0.10, 0.10, {"anthropic": 3, "openai": 1}, False),
    "legal": (2, 8, 0.35, 0.35, {"anthropic": 4, "openai": 1}, True),
    "finance-ops": (2.5, 10, 0.15, 0.25, {"openai": 3, "anthropic": 1}, True),
    "hr-tools": (1.5, 10, 0.30, 0.40, {"openai": 2, "anthropic": 2}, True),
}
ROLES = ("triage", "drafter", "summarizer", "coder", "reviewer", "classifier", "retriever",
         "batch", "copilot", "router", "extractor", "translator", "planner", "qa",
         "indexer", "notifier")
HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com",
         "google": "generativelanguage.googleapis.com", "mistral": "api.mistral.ai",
         "deepseek": "api.deepseek.com", "groq": "api.groq.com"}


@dataclass(frozen=True, slots=True)
class Model:
    vendor: str
    name: str
    weight: float  # within its vendor
    kind: str  # chat, reasoning, embed
    path: str
    ttft_ms: float  # median time to the first token / to the answer of an embedding
    tokens_per_s: float


MODELS = (
    Model("openai", "gpt-4o-mini", 30, "chat", "/v1/chat/completions", 350, 90),
    Model("openai", "gpt-4.1", 8, "chat", "/v1/chat/completions", 600, 60),
    Model("openai", "gpt-4.1-mini", 12, "chat", "/v1/chat/completions", 400, 80),
    Model("openai", "gpt-5", 5, "reasoning", "/v1/responses", 2500, 50),
    Model("openai", "gpt-5-mini", 12, "reasoning", "/v1/responses", 1200, 80),
    Model("openai", "o4-mini", 4, "reasoning", "/v1/chat/completions", 1800, 70),
    Model("openai", "text-embedding-3-small", 22, "embed", "/v1/embeddings", 120, 0),
    Model("openai", "text-embedding-3-large", 5, "embed", "/v1/embeddings", 160, 0),
    Model("anthropic", "claude-sonnet-4-5", 50, "chat", "/v1/messages", 900, 55),
    Model("anthropic", "claude-haiku-4-5", 40, "chat", "/v1/messages", 450, 110),
    Model("anthropic", "claude-opus-4-1", 6, "reasoning", "/v1/messages", 1800, 30),
    Model("google", "gemini-2.5-flash", 55, "chat", "/v1beta/models/gemini-2.5-flash", 500,
          120),
    Model("google", "gemini-2.5-pro", 15, "reasoning", "/v1beta/models/gemini-2.5-pro",
          2200, 60),
    Model("google", "gemini-2.0-flash-lite", 30, "chat",
          "/v1beta/models/gemini-2.0-flash-lite", 300, 150),
    Model("mistral", "mistral-small-latest", 60, "chat", "/v1/chat/completions", 350, 100),
    Model("mistral", "codestral-latest", 40, "chat", "/v1/chat/completions", 400, 90),
    Model("deepseek", "deepseek-chat", 100, "chat", "/chat/completions", 900, 40),
    Model("groq", "llama-3.1-8b-instant", 100, "chat", "/openai/v1/chat/completions", 150,
          600),
)

# reason, share of denials, status, how the rule is named, message
DENIALS: tuple[tuple[str, float, int, str, str], ...] = (
    ("model_not_allowed", 26, 403, "team",
     "model {model!r} is not allowed; allowed: gpt-4o-mini, gpt-4.1*, claude-haiku-*"),
    ("limit_exceeded", 18, 429, "team",
     "team {team!r} has used its spend_per_day; retry after {retry} s"),
    ("no_rule_matched", 11, 403, "none",
     "no policy rule allows agent {agent!r} (team {team!r}) to use {vendor} chat {path} "
     "with model {model!r}; ask your security team to add a rule"),
    ("denied_by_rule", 10, 403, "org",
     "this request is not allowed"),
    ("redaction_blocked", 10, 403, "team",
     "the request holds {entity}, which policy rule {rule!r} does not let leave; remove it "
     "and send again"),
    ("destination_denied", 8, 403, "none",
     "{host} is not a model vendor egressguard knows; agents may reach only the vendor "
     "catalogue's hosts"),
    ("token_expired", 6, 401, "none",
     "agent token {token} for {agent!r} expired; issue a new one with `egressguard token "
     "issue --agent {agent}`"),
    ("streaming_not_allowed", 3, 403, "team",
     "streaming is not allowed; send the request without `stream`"),
    ("tools_not_allowed", 3, 403, "team",
     "tool use is not allowed; send the request without tools"),
    ("request_too_large", 2, 413, "team",
     "the request body is {bytes} bytes; the limit is 1048576"),
    ("real_key_presented", 2, 403, "none",
     "the request carries what looks like a real {vendor} API key; agents must send their "
     "egressguard token instead (the proxy adds the real key). Rotate the exposed key."),
    ("over_limit_alone", 1, 400, "team",
     "this request alone needs more than team {team!r}'s tokens_per_minute"),
)
ORG_DENY_RULES = ("deny-legacy-models", "no-opus-outside-research", "block-batch-at-peak")
BAD_HOSTS = ("pastebin.com", "api.github.com", "hooks.slack.com", "huggingface.co",
             "storage.googleapis.com", "webhook.site")
PII = (("EMAIL_ADDRESS", "mask", 34), ("PHONE_NUMBER", "mask", 18),
       ("PERSON", "pseudonymize", 20), ("LOCATION", "pseudonymize", 5),
       ("CREDIT_CARD", "mask", 4), ("IBAN_CODE", "mask", 3), ("US_SSN", "mask", 2),
       ("IP_ADDRESS", "mask", 7), ("URL", "log", 3), ("GITHUB_TOKEN", "mask", 2),
       ("AWS_ACCESS_KEY", "mask", 1), ("JWT", "mask", 1))
BLOCKED = ("OPENAI_API_KEY", "AWS_ACCESS_KEY", "PRIVATE_KEY", "GENERIC_SECRET",
           "STRIPE_SECRET_KEY")
ANSWER_SECRETS = ("GITHUB_TOKEN", "AWS_ACCESS_KEY", "GENERIC_SECRET", "JWT")
# the rules that relay: retries, a response cache (team: share of cacheable requests
# answered from it), failover (team: vendor -> fallback model), routing (team downgrades,
# small prompts to a cheaper model, an alias)
RETRIES = ("support", "platform", "payments", "search", "mobile", "data-eng")
CACHES = {"support": 0.22, "search": 0.35, "data-eng": 0.12, "mobile": 0.18}
FALLBACKS = {"support": {"anthropic": "gpt-4.1-mini", "openai": "claude-haiku-4-5"},
             "payments": {"openai": "claude-haiku-4-5"}}
ROUTES = {"support": {"gpt-4.1": "gpt-4.1-mini", "claude-sonnet-4-5": "claude-haiku-4-5"},
          "growth": {"gpt-4.1": "gpt-4o-mini"}, "mobile": {"gpt-4.1": "gpt-4.1-mini"}}
SMALL_PROMPTS = {"platform": ("gpt-4.1", "gpt-4.1-mini", 800)}  # from, to, input tokens under
ALIASES = {"research": ("fast", "gpt-4o-mini", 0.04)}  # alias, model, share of openai chat
BYPASS = (("temperature_absent", 30), ("temperature_not_zero", 10), ("hosted_tool", 2),
          ("several_choices", 1))
OUTAGE = ("anthropic", 41 * DAY_MS + 14 * HOUR_MS, 2 * HOUR_MS)  # vendor, from start, for
HOUR_OF_DAY = (0.25, 0.2, 0.18, 0.2, 0.3, 0.45, 0.7, 1.0, 1.4, 1.7, 1.8, 1.8, 1.7, 1.9,
               2.0, 2.0, 1.9, 1.7, 1.3, 0.9, 0.7, 0.55, 0.4, 0.3)


@dataclass(slots=True)
class Agent:
    name: str
    team: str
    token_id: str
    ip: str
    rule: dict[str, str]  # vendor -> the allowing rule


def world(rng: Random) -> tuple[list[Agent], list[float], dict[str, tuple[list[Model],
                                                                            list[float]]]]:
    """The agents with cumulative activity weights, and each team's models with theirs."""
    agents: list[Agent] = []
    weights: list[float] = []
    for t_index, (team, (share, count, _s, _r, vendors, _l)) in enumerate(TEAMS.items()):
        raw = [rng.paretovariate(1.1) for _ in range(count)]
        total = sum(raw)
        roles = rng.sample(ROLES, k=min(len(ROLES), count))
        for i in range(count):
            role = roles[i % len(roles)]
            name = f"{team}-{role}" + (f"-{i // len(roles) + 1}" if i >= len(roles) else "")
            agents.append(Agent(name, team, f"{rng.getrandbits(64):016x}",
                                f"10.{20 + t_index}.{i // 250}.{i % 250 + 2}",
                                {v: f"{team}-{v}" for v in vendors}))
            weights.append(share * raw[i] / total)
    cumulative = list(_accumulate(weights))
    per_team = {}
    for team, (_share, _count, _s, _r, vendors, _l) in TEAMS.items():
        models = [m for m in MODELS if m.vendor in vendors]
        per_vendor = {v: sum(m.weight for m in models if m.vendor == v) for v in vendors}
        per_team[team] = (models, list(_accumulate(
            vendors[m.vendor] * m.weight / per_vendor[m.vendor] for m in models)))
    return agents, cumulative, per_team


def _accumulate(values: Any) -> Any:
    total = 0.0
    for v in values:
        total += v
        yield total


def timestamps(rng: Random, n: int, days: int) -> list[int]:
    """`n` epoch milliseconds over `days` up to END, sorted: traffic doubles over the
    period, weekends carry a third of a weekday, working hours (UTC) most of a day."""
    start = int(END.timestamp() * 1000) - days * DAY_MS
    hours = days * 24
    weights = []
    for h in range(hours):
        when = datetime.fromtimestamp((start + h * HOUR_MS) / 1000, UTC)
        weekday = 0.35 if when.weekday() >= 5 else 1.0
        weights.append((1 + h / hours) * weekday * HOUR_OF_DAY[when.hour])
    cumulative = list(_accumulate(weights))
    top = cumulative[-1]
    out = []
    for _ in range(n):
        h = bisect.bisect(cumulative, rng.random() * top)
        out.append(start + min(h, hours - 1) * HOUR_MS + rng.randrange(HOUR_MS))
    out.sort()
    return out


def uuid7(rng: Random, ms: int) -> str:
    """`records.new_id`'s layout (UUIDv7 as 32 hex digits), from the seeded generator."""
    rand = rng.getrandbits(80)
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return f"{value:032x}"


# -- the tally: what the answers must be, counted as the records are made ------------------

@dataclass(slots=True)
class Group:
    requests: int = 0
    denials: int = 0
    tokens_in: int | None = None
    tokens_out: int | None = None
    spend_micros: int | None = None
    latencies: list[float] = field(default_factory=list)
    redactions: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    saved_tokens: int | None = None
    saved_usd: float | None = None  # cache and routing
    failovers: int = 0
    retried: int = 0


@dataclass(slots=True)
class Tally:
    end_ms: int
    lines: int = 0  # every record in the journal, checkpoints included
    kinds: Counter[str] = field(default_factory=Counter)
    query_ids: set[str] = field(default_factory=set)
    stats: dict[tuple[str | None, str | None], Group] = field(default_factory=dict)
    daily: dict[tuple[str | None, int], list[int | None]] = field(default_factory=dict)
    content: Counter[str] = field(default_factory=Counter)
    spend_micros: int = 0

    @property
    def query_since_ms(self) -> int:
        return self.end_ms - 7 * DAY_MS

    @property
    def stats_since_ms(self) -> int:
        return self.end_ms - 30 * DAY_MS

    def add(self, f: records.RequestFacts, ms: int, spend: int | None) -> None:
        self.kinds[f.kind] += 1
        if f.kind not in ("request", "connect"):
            return
        if ms >= self.query_since_ms and f.team == QUERY_TEAM and f.decision == "deny":
            self.query_ids.add(f.id)
        if ms >= self.stats_since_ms:
            g = self.stats.setdefault((f.team, f.model), Group())
            g.requests += f.kind == "request"
            g.denials += f.decision == "deny"
            if f.usage is not None:
                if f.usage["input_tokens"] is not None:
                    g.tokens_in = (g.tokens_in or 0) + f.usage["input_tokens"]
                if f.usage["output_tokens"] is not None:
                    g.tokens_out = (g.tokens_out or 0) + f.usage["output_tokens"]
            if spend is not None:
                g.spend_micros = (g.spend_micros or 0) + spend
            if f.latency_ms is not None:
                g.latencies.append(f.latency_ms)
            for found in (f.redactions, f.response_redactions):
                for entity, actions in (found or {}).items():
                    g.redactions[entity] += sum(actions.values())
            g.cache_hits += (f.cache or {}).get("status") == "hit"
            g.failovers += f.served_by is not None
            g.retried += len(f.attempts or []) > 1
            if (tokens := (f.savings or {}).get("cache_tokens")) is not None:
                g.saved_tokens = (g.saved_tokens or 0) + tokens
            usd = [v for k, v in (f.savings or {}).items() if k != "cache_tokens"
                   and v is not None]
            if usd:
                g.saved_usd = (g.saved_usd or 0.0) + sum(usd)
        if f.kind == "request":
            row = self.daily.setdefault((f.team, ms // DAY_MS), [0, None])
            row[0] = int(row[0] or 0) + 1
            if spend is not None:
                row[1] = (row[1] or 0) + spend

    def to_json(self) -> dict[str, Any]:
        return {"end_ms": self.end_ms, "lines": self.lines, "kinds": dict(self.kinds),
                "query_ids": sorted(self.query_ids),
                "stats": [[k[0], k[1], g.requests, g.denials, g.tokens_in, g.tokens_out,
                           g.spend_micros, g.latencies, dict(g.redactions), g.cache_hits,
                           g.saved_tokens, g.saved_usd, g.failovers, g.retried]
                          for k, g in self.stats.items()],
                "daily": [[k[0], k[1], *v] for k, v in self.daily.items()],
                "content": dict(self.content), "spend_micros": self.spend_micros}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        t = cls(data["end_ms"], data["lines"], Counter(data["kinds"]),
                set(data["query_ids"]), content=Counter(data["content"]),
                spend_micros=data["spend_micros"])
        for team, model, *g in data["stats"]:
            t.stats[(team, model)] = Group(*g[:6], Counter(g[6]), *g[7:])
        for team, day, count, spend in data["daily"]:
            t.daily[(team, day)] = [count, spend]
        return t


# -- the generator ------------------------------------------------------------------------

MODEL = {m.name: m for m in MODELS}


@dataclass(frozen=True, slots=True)
class Attempt:
    status: int  # 0: no answer
    error: str | None
    upstream_ms: float | None
    overhead: float  # ms in the proxy (a retry's backoff too)
    label: str  # for the summary


def lognormal(rng: Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


class Traffic:
    """RequestFacts in time order, as the proxy would have recorded them."""

    def __init__(self, seed: int, n: int, days: int) -> None:
        self.rng = Random(seed)
        self.agents, self.agent_weights, self.team_models = world(self.rng)
        self.times = timestamps(self.rng, n, days)
        self.start_ms = int(END.timestamp() * 1000) - days * DAY_MS
        self.prices = limits.load_prices(REPO / "policies" / "prices.yaml")
        self.price = {(m.vendor, m.name): self.prices.price(m.vendor, m.name) for m in MODELS}
        missing = [k for k, p in self.price.items() if p is None]
        if missing:
            raise SystemExit(f"bench: no price in policies/prices.yaml for {missing}")
        self.denial_weights = list(_accumulate(d[1] for d in DENIALS))
        self.pii_weights = list(_accumulate(p[2] for p in PII))
        self.bypass_weights = list(_accumulate(b[1] for b in BYPASS))
        # a policy reload every ~12 days; digests are what the records name
        reloads = sorted(self.rng.randrange(self.start_ms, self.times[-1])
                         for _ in range(max(1, days // 12)))
        self.reloads = [(ms, hashlib.sha256(f"policy-{seed}-{i}".encode()).hexdigest())
                        for i, ms in enumerate(reloads)]
        self.policy = hashlib.sha256(f"policy-{seed}-initial".encode()).hexdigest()
        self.content: Counter[str] = Counter()  # what was generated, for the summary

    def __iter__(self) -> Any:
        reloads = list(self.reloads)
        for ms in self.times:
            while reloads and reloads[0][0] <= ms:
                at, self.policy = reloads.pop(0)
                yield at, records.RequestFacts(
                    id=uuid7(self.rng, at), started=at / 1000, client="", method="", host="",
                    path="/etc/egressguard/policy.yaml", kind="policy", node="egress-1",
                    reason="policy_loaded", policy=self.policy,
                    message="policy loaded: 12 teams, 61 rules, prices from prices.yaml"), None
            yield (ms, *self.request(ms))

    def request(self, ms: int) -> tuple[records.RequestFacts, int | None]:
        rng = self.rng
        agent = self.agents[bisect.bisect(self.agent_weights,
                                          rng.random() * self.agent_weights[-1])]
        team = agent.team
        _share, _count, stream_share, redact_rate, _vendors, has_limits = TEAMS[team]
        models, weights = self.team_models[team]
        model = models[bisect.bisect(weights, rng.random() * weights[-1])]
        asked, model, by = self.route(rng, team, model)
        stream = model.kind != "embed" and rng.random() < stream_share
        path = model.path
        if model.vendor == "google":
            path += ":streamGenerateContent" if stream else (
                ":generateContent")
        f = records.RequestFacts(
            id=uuid7(rng, ms), started=ms / 1000,
            client=f"{agent.ip}:{rng.randrange(32768, 61000)}", method="POST",
            host=HOSTS[model.vendor], path=path, node="egress-1", agent=agent.name,
            team=team, token_id=agent.token_id, vendor=model.vendor, model=model.name,
            stream=stream, policy=self.policy, rule=agent.rule[model.vendor])
        # tokens, as the vendor would count them
        if model.kind == "embed":
            tin, tout = int(min(8191, lognormal(rng, 450, 1.0))) + 1, 0  # all input
        else:
            tin = int(min(180_000, lognormal(rng, 1800 if model.kind == "chat" else 3500,
                                             1.1))) + 20
            tout = int(min(32_000, lognormal(rng, 320 if model.kind == "chat" else 1400,
                                             0.9))) + 1
        small = SMALL_PROMPTS.get(team)
        if small and asked is None and model.name == small[0] and tin < small[2]:
            asked, model, by = model.name, MODEL[small[1]], ["objective"]
            f.model = model.name
        if asked is not None:
            f.routing = {"requested_model": asked, "model": model.name, "by": by}
        f.bytes_in = tin * 4 + rng.randrange(200, 900)
        if rng.random() < redact_rate * 0.8:  # redacted in the request
            f.redactions = self.redactions(rng)
        if rng.random() < 0.03:
            return self.denied(f, ms, agent, model, has_limits)
        c = self.content
        if has_limits:
            estimate = limits.estimate(f.bytes_in, 4096, self.price[(model.vendor, model.name)])
            f.limits = {"state": "reserved", "scopes": [f"team:{team}", f"agent:{agent.name}"],
                        "estimate": estimate.as_record()}
        if model.kind != "embed" and rng.random() < 0.02:
            f.clamps = {"max_tokens": {"from": rng.choice((16384, 32000, 64000)),
                                       "to": 8192}}
        f.credential = {"path": f"egressguard/vendors/{model.vendor}",
                        "version": 3 if model.vendor == "openai" else 1}
        if team in CACHES:
            if (hit := self.cache(rng, f, team, model, tin, tout)) is not None:
                return f, hit
        # what the vendor did, on every attempt the rule allows
        served, attempts = model, [self.answer(rng, model, ms, stream, tout)]
        if (team in RETRIES or team in FALLBACKS) and attempts[0].status != 200 and \
                rng.random() < 0.9:
            fallback = FALLBACKS.get(team, {}).get(model.vendor)
            if fallback and attempts[0].status != 429:  # 5xx or no answer: fail over
                served = MODEL[fallback]
                f.served_by = {"vendor": served.vendor, "model": served.name}
                c["failovers"] += 1
            attempts.append(self.answer(rng, served, ms, stream, tout, retry=True))
            c["retried"] += 1
        if team in RETRIES or team in FALLBACKS or team in CACHES:
            f.attempts = [{"vendor": m.vendor, "model": m.name,
                           "key": f"egressguard/vendors/{m.vendor}", "status": a.status,
                           "error": a.error, "ms": a.upstream_ms or 0.0}
                          for m, a in zip((model, served), attempts, strict=False)]
        last = attempts[-1]
        c[last.label] += 1
        f.status, f.error, f.upstream_ms = last.status or None, last.error, last.upstream_ms
        overhead = sum(a.overhead for a in attempts)
        if last.status == 200:
            f.usage = {"input_tokens": tin, "output_tokens": tout}
            f.bytes_out = (rng.randrange(12_000, 40_000) if model.kind == "embed" else
                           tout * (14 if stream else 4) + rng.randrange(300, 700))
            if rng.random() < 0.004:
                f.response_redactions = {rng.choice(ANSWER_SECRETS): {"mask": 1}}
            c["streamed 200s"] += stream
        else:
            f.bytes_out = rng.randrange(80, 400) if last.status else 0
        f.latency_ms = round(sum(a.upstream_ms or 0.0 for a in attempts) + overhead, 3)
        spend = None
        if f.usage is not None:  # as `limits.settled`, at the price of what answered
            spend = limits.spend_micros(self.price[(served.vendor, served.name)], tin, tout)
            f.spend_usd = spend / 1_000_000
            if asked is not None and (asked_price := self.prices.price(model.vendor, asked)):
                saved = limits.spend_micros(asked_price, tin, tout) - spend
                f.savings = {"routing_usd": round(saved / 1_000_000, 9)}
                c["routing saved micros"] += saved
        return f, spend

    def route(self, rng: Random, team: str, model: Model) -> tuple[str | None, Model,
                                                                      list[str]]:
        """What the agent asked for (None: not routed), what is sent, and why."""
        alias = ALIASES.get(team)
        if alias and model.vendor == "openai" and model.kind == "chat" and \
                rng.random() < alias[2]:
            return alias[0], MODEL[alias[1]], ["alias"]
        if (to := ROUTES.get(team, {}).get(model.name)) is not None:
            return model.name, MODEL[to], ["team"]
        return None, model, []

    def cache(self, rng: Random, f: records.RequestFacts, team: str, model: Model, tin: int,
              tout: int) -> int | None:
        """The cache's part: a bypass or a miss (None: ask the vendor) or a hit, answered
        here: spend 0, and what the answer cost when it was bought saved."""
        if model.kind != "embed" and rng.random() < 0.43:
            why = BYPASS[bisect.bisect(self.bypass_weights,
                                       rng.random() * self.bypass_weights[-1])][0]
            f.cache = {"status": "bypass", "why": why}
            return None
        if rng.random() >= CACHES[team]:
            f.cache = {"status": "miss"}
            return None
        semantic = model.kind != "embed" and rng.random() < 0.3
        f.cache = {"status": "hit", "kind": "semantic",
                   "similarity": round(rng.uniform(0.92, 0.995), 4)} if semantic else \
            {"status": "hit", "kind": "exact"}
        bought = limits.spend_micros(self.price[(model.vendor, model.name)], tin, tout)
        f.savings = {"cache_tokens": tin + tout, "cache_usd": bought / 1_000_000}
        f.status, f.spend_usd, f.upstream_ms = 200, 0.0, None
        f.latency_ms = round(lognormal(rng, 30 if semantic else 3.5, 0.5), 3)
        f.bytes_out = tout * (14 if f.stream else 4) + rng.randrange(300, 700)
        self.content["cache hits"] += 1
        return 0

    def answer(self, rng: Random, model: Model, ms: int, stream: bool, tout: int,
               retry: bool = False) -> Attempt:
        """One attempt at the vendor: its status (0: no answer), how long it took."""
        overhead = lognormal(rng, 3.2, 0.5) + (lognormal(rng, 400, 0.6) if retry else 0.0)
        vendor, from_ms, length = OUTAGE
        outage = model.vendor == vendor and 0 <= ms - self.start_ms - from_ms < length
        r = rng.random()
        if (outage and r < 0.45) or r < 0.004:
            status = rng.choice((500, 502, 503, 504, 529) if model.vendor == "anthropic"
                                else (500, 502, 503, 504))
            return Attempt(status, None, round(lognormal(
                rng, 900 if status != 504 else 60_000, 0.7), 3), overhead, "vendor 5xx")
        if r < 0.013:
            return Attempt(429, None, round(lognormal(rng, 120, 0.5), 3), overhead,
                           "vendor 429")
        if r < 0.0135:
            error = rng.choice(("Server disconnected", "peer closed connection without "
                                "sending complete message body", "TLS handshake failed"))
            return Attempt(0, error, None, overhead + lognormal(rng, 20_000, 1.0),
                           "connection errors")
        generation = tout / model.tokens_per_s * 1000 if model.tokens_per_s else 0.0
        ttft = lognormal(rng, model.ttft_ms, 0.6)
        if rng.random() < 0.01:
            ttft *= rng.uniform(4, 15)  # the vendor's long tail
        return Attempt(200, None, round(ttft if stream else ttft + generation, 3),
                       overhead + (generation if stream else 0.0), "vendor 200s")

    def denied(self, f: records.RequestFacts, ms: int, agent: Agent, model: Model,
               has_limits: bool) -> tuple[records.RequestFacts, None]:
        rng = self.rng
        reason, _w, status, rule, message = DENIALS[bisect.bisect(
            self.denial_weights, rng.random() * self.denial_weights[-1])]
        f.decision, f.reason, f.status = "deny", reason, status
        f.latency_ms = round(lognormal(rng, 1.8, 0.6), 3)
        f.bytes_out = rng.randrange(180, 420)
        f.rule = {"team": f.rule, "none": None, "org": rng.choice(ORG_DENY_RULES)}[rule]
        entity = ""
        if reason == "redaction_blocked":
            entity = rng.choice(BLOCKED)
            f.redactions = {**(f.redactions or {}), entity: {"block": 1}}
        else:
            f.redactions = None  # refused before redaction
        if reason == "token_expired":  # no principal: the record names no agent
            f.agent = f.team = f.token_id = None
        if reason == "destination_denied":  # a tunnel refused at CONNECT
            f.kind, f.method, f.path = "connect", "CONNECT", ""
            f.host = rng.choice(BAD_HOSTS)
            f.vendor = f.model = f.stream = None
            f.bytes_in = 0
        if reason == "limit_exceeded" and has_limits:
            cap = rng.choice((50.0, 200.0, 500.0))
            f.limits = {"state": "exceeded", "limit": "spend_per_day", "scope": f"team:{f.team}",
                        "cap": cap, "used": round(cap * rng.uniform(0.97, 1.0), 6),
                        "needed": round(rng.uniform(0.05, 3.0), 6),
                        "retry_after": rng.randrange(60, 40_000)}
        f.message = message.format(model=f.model, team=f.team or agent.team,
                                   agent=f.agent or agent.name, vendor=f.vendor, path=f.path,
                                   rule=f.rule, entity=entity, host=f.host,
                                   token=f.token_id or agent.token_id, bytes=f.bytes_in,
                                   retry=rng.randrange(60, 40_000))
        if f.rule and rule != "none":
            f.message += f" (policy rule {f.rule!r})"
        self.content[f"deny {reason}"] += 1
        return f, None

    def redactions(self, rng: Random) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for _ in range(1 + (rng.random() < 0.35) + (rng.random() < 0.1)):
            entity, action, _w = PII[bisect.bisect(self.pii_weights,
                                                   rng.random() * self.pii_weights[-1])]
            n = 1 + int(rng.expovariate(0.7))
            out.setdefault(entity, {})[action] = out.get(entity, {}).get(action, 0) + n
        return out


@dataclass(slots=True)
class Generated:
    seconds: float
    lines: int
    files: int
    bytes: int


class _Clock:
    """The journal's `time` module, reading the traffic's clock (checkpoint times)."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


def key_for(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"egressguard-bench-audit-query-{seed}".encode()).digest())


def generate(directory: Path, n: int, days: int, seed: int, segment_age: float | None,
             gzip: bool) -> tuple[Tally, Generated]:
    traffic = Traffic(seed, n, days)
    tally = Tally(int(END.timestamp() * 1000))
    clock = _Clock()
    ids = Random(seed + 1)
    saved = journal_module.time, records.new_id
    journal_module.time = clock  # type: ignore[assignment]
    records.new_id = lambda now=None: uuid7(ids, int(clock.now * 1000))  # checkpoints' ids
    journal = Journal(directory, fsync=False, key=key_for(seed), node="egress-1",
                      settings=Settings(segment_age=segment_age or float("inf")))
    t0 = time.perf_counter()
    try:
        clock.now = traffic.times[0] / 1000
        journal.open()
        for i, (ms, facts, spend) in enumerate(traffic, 1):
            clock.now = ms / 1000
            journal.append_sync(records.build(facts))
            tally.add(facts, ms, spend)
            tally.spend_micros += spend or 0
            c = traffic.content
            c["requests" if facts.kind == "request" else facts.kind] += 1
            c["denials"] += facts.decision == "deny" and facts.kind != "policy"
            c["with request redactions"] += facts.redactions is not None
            c["with answer redactions"] += facts.response_redactions is not None
            c["streamed"] += bool(facts.stream)
            c["routed"] += facts.routing is not None
            c["cached"] += facts.cache is not None
            if i % 100_000 == 0:
                print(f"  {i:,} records, {time.perf_counter() - t0:.0f} s", flush=True)
        journal.close()
    finally:
        journal_module.time, records.new_id = saved  # type: ignore[assignment]
    seconds = time.perf_counter() - t0
    if gzip:  # as the proxy's housekeeping does once every sink has a closed file
        t1 = time.perf_counter()
        housekeeping.run(directory, journal.segment, [], housekeeping.Retention())
        print(f"  closed files gzipped in {time.perf_counter() - t1:.0f} s", flush=True)
    tally.lines = journal.seq
    tally.kinds["checkpoint"] = journal.seq - sum(tally.kinds.values())
    tally.content = traffic.content
    files = segments(directory)
    return tally, Generated(seconds, journal.seq, len(files),
                            sum(s.path.stat().st_size for s in files))


# -- running the CLI ---------------------------------------------------------------------

def cli() -> list[str]:
    script = Path(sys.executable).parent / "egressguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "egressguard.cli"]


@dataclass(slots=True)
class Run:
    seconds: float
    out: str


class CommandFailed(Exception):
    pass


def run(args: Sequence[str], cache_home: Path | None) -> Run:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)} if cache_home else None
    t0 = time.perf_counter()
    done = subprocess.run([*cli(), *args], capture_output=True, text=True, env=env,
                          check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not done.stdout.strip():
        raise CommandFailed(f"`egressguard {' '.join(args)}` exited {done.returncode} "
                            f"with {len(done.stdout)} bytes out; stderr: "
                            f"{done.stderr.strip()[-2000:]}")
    return Run(seconds, done.stdout)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rows(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


# -- the questions and their checks ----------------------------------------------------

@dataclass(slots=True)
class Question:
    name: str
    args: list[str]
    check: Callable[[str], str | None]  # the problem with an answer, or None


def check_count(tally: Tally) -> Callable[[str], str | None]:
    def check(out: str) -> str | None:
        got = rows(out)[0]["n"]
        return None if got == tally.lines else f"{got} records loaded, {tally.lines} written"
    return check


def check_query(tally: Tally) -> Callable[[str], str | None]:
    def check(out: str) -> str | None:
        got = [r["id"] for r in rows(out)]
        if len(got) != len(set(got)):
            return "an id appears twice"
        if set(got) != tally.query_ids:
            return (f"{len(got)} records, expected {len(tally.query_ids)}; "
                    f"{len(set(got) - tally.query_ids)} unexpected, "
                    f"{len(tally.query_ids - set(got))} missing")
        bad = [r for r in rows(out) if r["team"] != QUERY_TEAM or r["decision"] != "deny"]
        return f"{len(bad)} rows outside the filters" if bad else None
    return check


def quantile_cont(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = q * (len(s) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(s) - 1)
    return s[low] + (s[high] - s[low]) * (pos - low)


def check_stats(tally: Tally) -> Callable[[str], str | None]:
    def check(out: str) -> str | None:
        got = {(r["team"], r["model"]): r for r in rows(out)}
        if set(got) != set(tally.stats):
            return f"{len(got)} groups, expected {len(tally.stats)}"
        problems = []
        for key, g in tally.stats.items():
            r = got[key]
            spend = None if g.spend_micros is None else g.spend_micros / 1_000_000
            expect = {"requests": g.requests, "denials": g.denials, "tokens_in": g.tokens_in,
                      "tokens_out": g.tokens_out,
                      "redactions": {k: v for k, v in g.redactions.items()},
                      "cache_hits": g.cache_hits, "saved_tokens": g.saved_tokens,
                      "failovers": g.failovers, "retried": g.retried}
            for name, want in expect.items():
                if r[name] != want:
                    problems.append(f"{key} {name}: {r[name]} != {want}")
            if (r["spend_usd"] is None) != (spend is None) or (
                    spend is not None and abs(r["spend_usd"] - spend) > 2e-6):
                problems.append(f"{key} spend_usd: {r['spend_usd']} != {spend}")
            if (r["saved_usd"] is None) != (g.saved_usd is None) or (
                    g.saved_usd is not None and abs(r["saved_usd"] - g.saved_usd) > 2e-6):
                problems.append(f"{key} saved_usd: {r['saved_usd']} != {g.saved_usd}")
            for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95)):
                want_q = quantile_cont(g.latencies, q)
                if (r[name] is None) != (want_q is None) or (
                        want_q is not None and abs(r[name] - want_q) > 0.051):
                    problems.append(f"{key} {name}: {r[name]} != {want_q}")
        total = sum(r["requests"] for r in got.values())
        want_total = sum(g.requests for g in tally.stats.values())
        if total != want_total:
            problems.append(f"requests add up to {total}, not {want_total}")
        return "; ".join(problems[:3]) or None
    return check


DAILY_SQL = ("SELECT team, day, count(*) AS requests, sum(spend_usd) AS spend_usd "
             "FROM records WHERE kind = 'request' GROUP BY team, day ORDER BY team, day")


def check_daily(tally: Tally) -> Callable[[str], str | None]:
    def check(out: str) -> str | None:
        got = {}
        for r in rows(out):
            day = datetime.fromisoformat(r["day"]).replace(tzinfo=UTC)
            got[(r["team"], int(day.timestamp() * 1000) // DAY_MS)] = r
        if set(got) != set(tally.daily):
            return f"{len(got)} team-days, expected {len(tally.daily)}"
        for key, (count, spend) in tally.daily.items():
            r = got[key]
            if r["requests"] != count:
                return f"{key}: {r['requests']} requests, expected {count}"
            want = None if spend is None else spend / 1_000_000
            if (r["spend_usd"] is None) != (want is None) or (
                    want is not None and abs(r["spend_usd"] - want) > 1e-6):
                return f"{key}: spend {r['spend_usd']}, expected {want}"
        return None
    return check


def questions(journal: Path, tally: Tally) -> list[Question]:
    where = ["--journal", str(journal)]
    return [
        Question("(a) query: 7 days, one team, denials",
                 ["audit", "query", *where, "--since", iso(tally.query_since_ms), "--team",
                  QUERY_TEAM, "--decision", "deny", "--json"], check_query(tally)),
        Question("(b) stats --by team,model, 30 days",
                 ["audit", "stats", *where, "--by", "team,model", "--since",
                  iso(tally.stats_since_ms), "--json"], check_stats(tally)),
        Question("(c) sql: requests and spend per team per day, all 90 days",
                 ["audit", "sql", *where, "--json", DAILY_SQL], check_daily(tally)),
    ]


# -- the run -----------------------------------------------------------------------------

def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // (1 << 20) for line in
                Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    import duckdb
    return (f"{os.cpu_count()} CPUs ({model}), {mem} GB RAM, Python "
            f"{platform.python_version()}, DuckDB {duckdb.__version__}")


def median_run(args: Sequence[str], cache: Path | None, runs: int,
               check: Callable[[str], str | None] | None,
               before: Callable[[], None] | None = None) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        if before:
            before()
        r = run(args, cache)
        if check and (problem := check(r.out)):
            raise CommandFailed(f"wrong answer from `{' '.join(args[:2])}`: {problem}")
        times.append(r.seconds)
    return statistics.median(times), times


def phase(q: Question, cache: Path, runs: int, before: Callable[[], None]) -> float:
    median, times = median_run(q.args, cache, runs, q.check, before)
    print(f"  {q.name[:3]} {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    return median


def grow(journal: Path, seed: int, count: list[int]) -> Callable[[], None]:
    """Append one record to the journal as the proxy would (reopen, append, close with a
    shutdown checkpoint): a policy-reload record, which none of the questions selects."""
    def append() -> None:
        j = Journal(journal, fsync=False, key=key_for(seed), node="egress-1")
        j.open()
        j.append_sync(records.build(records.RequestFacts(
            id=records.new_id(), started=time.time(), client="", method="", host="",
            path="/etc/egressguard/policy.yaml", kind="policy", node="egress-1",
            reason="policy_loaded", policy="0" * 64, message="bench: the journal grows")))
        j.close()
        count[0] += 1
    return append


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=3, help="warm runs per question (median)")
    p.add_argument("--segment-age", type=float, metavar="SECONDS",
                   help="also rotate after this much traffic time (the proxy's default is "
                   "3600; default here: by size only, 64 MiB)")
    p.add_argument("--gzip", action="store_true", help="gzip the closed files, as the "
                   "proxy's housekeeping does once every sink has them")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--reuse", type=Path, metavar="DIR",
                   help="a folder kept by --keep: measure its journal, do not generate")
    p.add_argument("--dir", type=Path, help="where the work folder goes (default: the "
                   "temporary folder's disk)")
    args = p.parse_args(argv)
    print(f"audit query benchmark -- {machine()}, load average {load()}")
    if args.reuse:
        work = args.reuse
        try:
            manifest = orjson.loads((work / MANIFEST).read_bytes())
        except OSError as exc:
            print(f"bench: {work} is not a kept work folder: {exc}", file=sys.stderr)
            return 2
        if manifest["generator"] != GENERATOR:
            print(f"bench: {work} was generated by another version of this script; "
                  "generate again", file=sys.stderr)
            return 2
        tally = Tally.from_json(manifest["tally"])
        gen = Generated(**manifest["generated"])
        print(f"reusing {work}: {manifest['records']:,} records, seed {manifest['seed']} "
              f"(generated in {gen.seconds:.0f} s)")
        seed = manifest["seed"]
    else:
        work = Path(tempfile.mkdtemp(prefix="egressguard-auditq-", dir=args.dir))
        seed = args.seed
        print(f"generating {args.records:,} records over {args.days} days (seed {seed}) "
              f"into {work}")
        try:
            tally, gen = generate(work / "journal", args.records, args.days, seed,
                                  args.segment_age, args.gzip)
        except Exception:
            traceback.print_exc()
            print("bench: the journal could not be generated", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            return 2
        (work / "pubkey.pem").write_bytes(checkpoints.public_pem(key_for(seed)))
        manifest = {"generator": GENERATOR, "seed": seed, "records": args.records,
                    "days": args.days, "segment_age": args.segment_age, "gzip": args.gzip,
                    "generated": {
                        "seconds": gen.seconds, "lines": gen.lines, "files": gen.files,
                        "bytes": gen.bytes}, "tally": tally.to_json()}
        (work / MANIFEST).write_bytes(orjson.dumps(manifest))
    journal = work / "journal"
    if not tally.query_ids:
        print(f"bench: no {QUERY_TEAM} denial in the last 7 days to query: generate more "
              "records (--records)", file=sys.stderr)
        return 2
    try:
        return measure(work, journal, tally, gen, seed, fresh=not args.reuse,
                       runs=args.runs)
    except CommandFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep or args.reuse:
            print(f"\nwork folder kept: {work} (rerun with --reuse {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, journal: Path, tally: Tally, gen: Generated, seed: int, fresh: bool,
            runs: int) -> int:
    c = tally.content
    n = c["requests"] + c["connect"]
    print(f"\njournal: {gen.lines:,} lines ({tally.kinds['request']:,} requests, "
          f"{tally.kinds['connect']:,} refused CONNECTs, {tally.kinds['policy']} policy "
          f"reloads, {tally.kinds['checkpoint']:,} checkpoints) in {gen.files} files "
          f"({sum(s.compressed for s in segments(journal))} gzipped), "
          f"{gen.bytes / (1 << 20):,.0f} MiB on disk; generated in {gen.seconds:.1f} s "
          f"({gen.lines / gen.seconds:,.0f} lines/s)")
    print(f"content: {c['denials'] / n:.1%} denials, {c['with request redactions'] / n:.1%} "
          f"with request redactions, {c['with answer redactions'] / n:.2%} with secrets "
          f"masked in the answer, {c['streamed'] / n:.1%} streamed, vendor 429s "
          f"{c['vendor 429'] / n:.2%}, 5xx {c['vendor 5xx'] / n:.2%}, connection errors "
          f"{c['connection errors'] / n:.2%}; spend ${tally.spend_micros / 1e6:,.2f}")
    print(f"relay: {c['cache hits'] / max(1, c['cached']):.1%} of {c['cached']:,} requests "
          f"under a cache answered from it, {c['routed'] / n:.1%} routed (saving "
          f"${c['routing saved micros'] / 1e6:,.2f}), {c['retried']:,} retried, "
          f"{c['failovers']:,} failed over")
    top = sorted(((k.removeprefix("deny "), v) for k, v in c.items() if k.startswith("deny ")),
                 key=lambda kv: -kv[1])
    print("denials by reason: " + ", ".join(f"{k} {v:,}" for k, v in top))
    caches = work / "caches"
    shutil.rmtree(caches, ignore_errors=True)
    caches.mkdir()
    results: list[tuple[str, float, float, list[float]]] = []  # name, cold, warm, runs

    if fresh:
        print(f"\nload average {load()}; verifying the journal ...", flush=True)
        v = run(["audit", "verify", "--pubkey", str(work / "pubkey.pem"), str(journal)], None)
        if not v.out.startswith("OK "):
            raise CommandFailed(f"audit verify: {v.out.strip()}")
        print(f"`audit verify --pubkey`: {v.seconds:.1f} s -- {v.out.strip()[:120]}")

    startup, startup_all = median_run(["audit", "sql", "--help"], None, runs, None)
    print(f"\nCLI start-up (`egressguard audit sql --help`): median {startup:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in startup_all)})")

    count = ["audit", "sql", "--journal", str(journal), "--json",
             "SELECT count(*) AS n FROM records"]
    print(f"load average {load()}; loading the journal into an empty cache ...", flush=True)
    first = run(count, caches / "load")
    if problem := check_count(tally)(first.out):
        raise CommandFailed(f"count: {problem}")
    warm, warm_all = median_run(count, caches / "load", runs, check_count(tally))
    results.append(("load: `sql \"SELECT count(*) FROM records\"`", first.seconds, warm,
                    warm_all))
    cache_files = list((caches / "load" / "egressguard").glob("*.duckdb"))
    cache_size = sum(f.stat().st_size for f in cache_files)
    print(f"cold {first.seconds:.2f} s, warm median {warm:.2f} s; cache file "
          f"{cache_size / (1 << 20):,.0f} MiB")

    qs = questions(journal, tally)
    for i, q in enumerate(qs):
        cache = caches / f"q{i}"
        print(f"load average {load()}; {q.name} ...", flush=True)
        cold = run(q.args, cache)
        if problem := q.check(cold.out):
            raise CommandFailed(f"wrong answer from {q.name}: {problem}")
        warm, warm_all = median_run(q.args, cache, runs, q.check)
        results.append((q.name, cold.seconds, warm, warm_all))
        print(f"  cold {cold.seconds:.2f} s, warm {', '.join(f'{t:.2f}' for t in warm_all)} "
              f"s; {len(cold.out.splitlines())} rows, answer checked", flush=True)

    files = segments(journal)
    newest = files[-1].path.stat().st_size
    print(f"load average {load()}; live: one record appended before each run (the newest "
          f"file is {newest / (1 << 20):.0f} MiB) ...", flush=True)
    appended = [0]
    append = grow(journal, seed, appended)
    try:
        live = [phase(q, caches / f"q{i}", runs, append) for i, q in enumerate(qs)]
    finally:  # so --reuse counts them: a record and a shutdown checkpoint each
        tally.lines += 2 * appended[0]
        manifest = orjson.loads((work / MANIFEST).read_bytes())
        manifest["tally"]["lines"] = tally.lines
        (work / MANIFEST).write_bytes(orjson.dumps(manifest))

    full: list[float] = []
    if len(files) > 1:  # a newest file at its full size: a closed one, made to look changed
        closed = files[-2].path
        st = closed.stat()
        print(f"load average {load()}; full: {closed.name} ({st.st_size / (1 << 20):.0f} MiB "
              "on disk) made to look changed before each run ...", flush=True)

        def touch() -> None:
            os.utime(closed, ns=(time.time_ns(), time.time_ns()))
        try:
            full = [phase(q, caches / f"q{i}", runs, touch) for i, q in enumerate(qs)]
        finally:
            os.utime(closed, ns=(st.st_atime_ns, st.st_mtime_ns))

    print(f"\nload average {load()}\n")
    print(f"| question | cold: empty cache, s | warm: median of {runs}, s | warm runs, s | "
          f"live: newest file ({newest / (1 << 20):.0f} MiB) grew, s | a full-size file "
          f"re-read, s | warm < {TARGET_S:.0f} s (target) | cold < {TARGET_S:.0f} s |")
    print("|---|---|---|---|---|---|---|---|")
    for j, (name, cold_s, warm_s, warm_all) in enumerate(results):
        live_s = f"{live[j - 1]:.2f}" if j >= 1 else "-"
        full_s = f"{full[j - 1]:.2f}" if j >= 1 and full else "-"
        target = ("PASS" if warm_s < TARGET_S else "MISS") if j else "(no target)"
        print(f"| {name} | {cold_s:.2f} | {warm_s:.2f} | "
              f"{' / '.join(f'{t:.2f}' for t in warm_all)} | {live_s} | {full_s} | "
              f"{target} | {'yes' if cold_s < TARGET_S else 'no'} |")
    met = all(r[2] < TARGET_S for r in results[1:])
    print(f"\nTarget (each question under {TARGET_S:.0f} s, warm cache): "
          f"{'met' if met else 'MISSED'}. CLI start-up alone: {startup:.2f} s. Every answer "
          "matched the generator's tally.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
