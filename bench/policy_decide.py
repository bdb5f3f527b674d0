"""What deciding a request costs: `Policy.decide` over a large generated policy.

Writes a realistic large policy as YAML in a temporary directory (500 rules, 200
agents in 20 teams with labels, team and agent limits, spend limits with the repo's
price table; rules mixing every match key and constraint), loads it with
`egressguard.core.policy.load` (timed: that is what start-up and every hot reload
pay), checks that it lints clean, then times `Policy.decide(ask)` one call at a time
over a mix of asks: many agents, vendors, models and endpoints; allowed, clamped,
refused by a constraint, by a deny rule, by default; undeclared agents; tokens that
name the wrong team. Each call is timed with `time.perf_counter_ns` after a warm-up;
the first call for each caller (the per-caller rule filter, cold) is timed apart.

It also times what the proxy does around `decide` on every request (`ask_of` needs a
live flow, so its parts are timed on typical bodies: `apis.endpoint`,
`apis.max_tokens`, `apis.tool_names`, building the `Ask`) and, for an allowed request
under limits, the limit bookkeeping (`limit_scopes`, buckets, price, estimate, an
in-process reserve and settle), so the whole per-request policy cost is visible.

    .venv/bin/python bench/policy_decide.py [--calls 200000] [--seed 1] [--keep]

Target (issue): decide() p50 under 50 µs. Exit status 0 whether or not it is met
(PASS/MISS is printed); 1 if the generated policy does not load or lints with errors.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml

from egressguard.backends.counters import InProcessCounters, RedisCounters
from egressguard.core import apis, limits, policy
from egressguard.core.globs import Globs
from egressguard.core.policytest import ask_from
from egressguard.core.rules import Ask, Evaluator
from egressguard.core.vendors import catalogue
from egressguard.core.yamlsource import ConfigError, Document

REPO = Path(__file__).resolve().parents[1]
PRICES = REPO / "policies" / "prices.yaml"
TARGET_P50_US = 50.0
N_RULES = 500
N_TEAMS = 20
AGENTS_PER_TEAM = 10
DISTINCT_ASKS = 6000

# -- the generated policy ----------------------------------------------------------------

TEAMS = ("research", "support", "platform", "search", "ads", "payments", "fraud", "growth",
         "legal", "hr-tools", "data-eng", "ml-infra", "security", "sales", "marketing",
         "docs", "mobile", "web", "billing", "compliance")
TEAM_LABELS = {
    "research": ["engineering"], "platform": ["engineering"], "search": ["engineering"],
    "ml-infra": ["engineering", "batch"], "data-eng": ["engineering", "batch"],
    "security": ["engineering"], "mobile": ["engineering"], "web": ["engineering"],
    "support": ["customer-facing"], "sales": ["customer-facing"],
    "legal": ["regulated"], "compliance": ["regulated"], "payments": ["pci"],
    "billing": ["pci"],
}
ROLES = ("summarizer", "triage", "indexer", "reviewer", "planner", "coder", "batch-1",
         "batch-2", "chat-bot", "intern-bot")

# per vendor: frontier model globs, cheaper models, embedding models (None: no such API)
MODELS: dict[str, tuple[list[str], list[str], list[str] | None]] = {
    "openai": (["gpt-5*", "o3*", "o4-mini*"], ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano",
               "gpt-5-nano"], ["text-embedding-3-*"]),
    "anthropic": (["claude-opus-4*", "claude-sonnet-4*"], ["claude-haiku-4-5*",
                  "claude-3-5-haiku-*"], None),
    "google": (["gemini-2.5-pro*"], ["gemini-2.5-flash*", "gemini-2.0-flash*"],
               ["gemini-embedding-*", "text-embedding-004"]),
    "mistral": (["mistral-large-*", "magistral-*"], ["mistral-small-*", "ministral-*"],
                ["mistral-embed", "codestral-embed"]),
    "cohere": (["command-a-*"], ["command-r*"], ["embed-*"]),
    "groq": (["openai/gpt-oss-*", "llama-3.3-*"], ["llama-3.1-8b-instant"], None),
    "deepseek": (["deepseek-reasoner"], ["deepseek-chat"], None),
    "xai": (["grok-4*"], ["grok-3-mini", "grok-code-fast-*"], None),
    "together": (["deepseek-ai/*", "Qwen/*"], ["meta-llama/*"], None),
}
EMBED_PATHS = {"openai": ["/v1/embeddings"], "mistral": ["/v1/embeddings"],
               "google": ["*:embedContent", "*:batchEmbedContents"],
               "cohere": ["/v2/embed", "/v1/embed"]}
TOOLS = ("search_docs", "lookup_customer", "zendesk_create", "zendesk_update", "run_sql",
         "fetch_url", "send_email", "web_search", "code_interpreter", "mcp:github")


class PolicyGen:
    """Builds the policy as plain data (dumped to YAML) and remembers, for the asks,
    which vendors and models each team's rules were written for."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vendors = catalogue()
        self.team_vendors: dict[str, list[str]] = {}
        self.team_agents: dict[str, list[str]] = {}
        self.denies_rest: set[str] = set()  # teams whose last rule refuses the rest
        self.rules: list[dict[str, Any]] = []

    def known_models(self, vendor: str, globs: Iterable[str]) -> list[str]:
        """Catalogue models that the globs match: what an agent would really ask for."""
        match = Globs(tuple(globs))
        return [m for m in self.vendors.by_name(vendor).models or () if match(m)]  # type: ignore[union-attr]

    def build(self) -> dict[str, Any]:
        rng = self.rng
        teams: dict[str, Any] = {}
        agents: dict[str, Any] = {}
        for i, team in enumerate(TEAMS):
            spec: dict[str, Any] = {"description": f"the {team} team"}
            if team in TEAM_LABELS:
                spec["labels"] = TEAM_LABELS[team]
            if i % 3 == 0:
                spec["limits"] = {"spend_per_month": 20000, "spend_per_day": 1500}
            elif i % 3 == 1:
                spec["limits"] = {"spend_per_day": 200, "tokens_per_minute": 2_000_000}
            teams[team] = spec
            names = [f"{team}-{role}" for role in ROLES]
            self.team_agents[team] = names
            for role, name in zip(ROLES, names, strict=True):
                a: dict[str, Any] = {"team": team}
                if role == "intern-bot":
                    a["labels"] = ["intern"]
                elif role == "chat-bot":
                    a["labels"] = ["customer-facing", "prod"]
                elif rng.random() < 0.3:
                    a["labels"] = ["prod"]
                if rng.random() < 0.25:
                    a["limits"] = {"requests_per_minute": rng.choice((60, 120, 600))}
                agents[name] = a
            pool = ["openai", "anthropic", "google"] + rng.sample(
                ["mistral", "cohere", "groq", "deepseek", "xai", "together"], 2)
            self.team_vendors[team] = pool
            if i % 2 == 0:
                self.denies_rest.add(team)

        head, tail = self.head_rules(), self.tail_rules()
        per_team = [self.team_rules(team) for team in TEAMS]
        fixed = len(head) + len(tail) + sum(len(r) for r in per_team)
        extra = N_RULES - fixed  # agent-specific rules, spread over the teams
        assert extra >= 0, fixed
        for n in range(extra):
            team = TEAMS[n % N_TEAMS]
            # agent rules go first in the team's section (the most specific first)
            per_team[n % N_TEAMS].insert(0, self.agent_rule(team, n // N_TEAMS))
        self.rules = head + [r for rules in per_team for r in rules] + tail
        return {"version": 1, "prices": str(PRICES), "teams": teams, "agents": agents,
                "passthrough": ["pypi.org", "files.pythonhosted.org"],
                "secrets": {"path": "egressguard/vendors/{vendor}",
                            "teams": {"payments": "egressguard/teams/payments/{vendor}"}},
                "rules": self.rules}

    def head_rules(self) -> list[dict[str, Any]]:
        """Organisation-wide rules first: every caller's candidates start with these."""
        return [
            {"name": "no-fine-tuning", "match": {"paths": ["*/fine_tuning/*", "*/fine_tuning"]},
             "action": "deny", "reason": "fine-tuning goes through the ML platform team"},
            {"name": "no-assistants", "match": {"paths": ["*/assistants*", "*/threads*"]},
             "action": "deny", "reason": "the Assistants API is being retired"},
            {"name": "no-openrouter", "match": {"vendors": ["openrouter"]}, "action": "deny",
             "reason": "use the vendors' own APIs"},
            {"name": "no-video", "match": {"vendors": ["google"], "models": ["veo-*", "imagen-*"]},
             "action": "deny", "reason": "image and video generation need a legal review"},
            {"name": "interns-small-models", "match": {"labels": ["intern"]},
             "models": ["gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5*",
                        "gemini-2.5-flash-lite"],
             "max_tokens": 2048, "tools": "deny",
             "limits": {"agent": {"spend_per_day": 5, "requests_per_minute": 30}}},
            {"name": "regulated-azure-eu", "match": {"labels": ["regulated"],
             "vendors": ["azure_openai"], "hosts": ["eu-*.openai.azure.com"]},
             "endpoints": ["chat", "responses", "embeddings"],
             "redact": {"pii": "mask", "secrets": "block"}},
            {"name": "regulated-nowhere-else", "match": {"labels": ["regulated"]},
             "action": "deny", "reason": "regulated teams use the EU Azure resource only"},
            {"name": "customer-facing-no-images",
             "match": {"labels": ["customer-facing"], "paths": ["*/images/*"]},
             "action": "deny", "reason": "customer-facing agents do not generate images"},
            {"name": "pci-no-tools", "match": {"labels": ["pci"], "vendors": ["openai",
             "anthropic"]}, "models": ["gpt-4.1*", "gpt-4o*", "claude-sonnet-4*"],
             "tools": ["lookup_customer", "search_docs"], "max_tokens": {"cap": 4096,
             "over": "refuse"}, "streaming": False},
            {"name": "moderation-for-all", "match": {"vendors": ["openai", "mistral"],
             "paths": ["/v1/moderations", "/v1/chat/moderations"]},
             "endpoints": ["other"]},
            {"name": "model-listing", "match": {"paths": ["/v1/models", "/v1/models/*",
             "/v1beta/models"]}, "endpoints": ["models"]},
        ]

    def team_rules(self, team: str) -> list[dict[str, Any]]:
        rng, out = self.rng, []
        vendors = self.team_vendors[team]
        out.append({"name": f"{team}-batch-jobs",
                    "match": {"agents": [f"{team}-batch-*"], "teams": [team],
                              "vendors": [vendors[0]]},
                    "endpoints": ["batches", "files", "chat", "responses"],
                    "max_request_bytes": "20MiB",
                    "limits": {"agent": {"tokens_per_day": 50_000_000}}})
        for vendor in vendors:
            frontier, cheap, embed = MODELS[vendor]
            if embed is not None:
                match: dict[str, Any] = {"teams": [team], "vendors": [vendor]}
                if vendor in EMBED_PATHS and rng.random() < 0.5:
                    match["paths"] = EMBED_PATHS[vendor]
                else:
                    match["models"] = embed
                out.append({"name": f"{team}-{vendor}-embeddings", "match": match,
                            "endpoints": ["embeddings"], "max_request_bytes": "2MiB",
                            "limits": {"team": {"requests_per_minute": 3000}}})
            frontier_rule: dict[str, Any] = {
                "name": f"{team}-{vendor}-frontier",
                "match": {"teams": [team], "vendors": [vendor], "models": frontier},
                "max_tokens": rng.choice((8000, 16000, 32000)),
                "limits": {"agent": {"requests_per_minute": rng.choice((60, 300)),
                                     "tokens_per_minute": 2_000_000}}}
            if rng.random() < 0.3:
                frontier_rule["key_pool"] = [f"egressguard/teams/{team}/{vendor}-a",
                                             f"egressguard/teams/{team}/{vendor}-b"]
            out.append(frontier_rule)
            general: dict[str, Any] = {
                "name": f"{team}-{vendor}",
                "match": {"teams": [team], "vendors": [vendor]},
                "models": cheap + ([frontier[0]] if rng.random() < 0.3 else []),
                "endpoints": ["chat", "responses", "messages", "models"],
                "max_tokens": rng.choice((1024, 4096, {"cap": 4096, "over": "refuse"}))}
            if team in ("support", "sales") or rng.random() < 0.3:
                general["tools"] = rng.sample(TOOLS, 4)
                general["streaming"] = False
            out.append(general)
        out.append({"name": f"{team}-azure", "match": {"teams": [team],
                    "vendors": ["azure_openai"], "hosts": [f"{team}-*.openai.azure.com"]},
                    "models": [f"{team}-gpt-4o*", f"{team}-gpt-5*"],
                    "secret": f"egressguard/teams/{team}/azure"})
        if team in self.denies_rest:
            out.append({"name": f"{team}-nothing-else", "match": {"teams": [team]},
                        "action": "deny", "reason": f"{team} has no access to that vendor "
                        "or model; see its rules"})
        return out

    def agent_rule(self, team: str, n: int) -> dict[str, Any]:
        """One agent's own rule (for one vendor), ahead of its team's."""
        rng = self.rng
        agent = self.team_agents[team][n % (AGENTS_PER_TEAM - 1)]  # not the intern
        vendor = self.team_vendors[team][n % 3]
        frontier, cheap, _ = MODELS[vendor]
        rule: dict[str, Any] = {
            "name": f"{agent}-{vendor}-{n}",
            "match": {"agents": [agent], "vendors": [vendor]},
            "models": rng.sample(cheap, min(2, len(cheap))) + frontier[:1],
            "tools": rng.sample(TOOLS, 3),
            "max_tokens": rng.choice((2048, 8000)),
            "limits": {"agent": {"requests_per_minute": 120}},
        }
        if n >= 3:  # a second rule for the same agent and vendor: narrower path
            rule["match"]["paths"] = ["/v1/chat/completions", "/v1/responses",
                                      "/v1/messages", "*:generateContent"][n % 4:n % 4 + 1]
            rule["name"] = f"{agent}-{vendor}-path-{n}"
        return rule

    def tail_rules(self) -> list[dict[str, Any]]:
        """Rules for whoever the team sections did not decide for."""
        return [
            {"name": "engineering-deepseek", "match": {"labels": ["engineering"],
             "vendors": ["deepseek"]}, "models": ["deepseek-chat"], "max_tokens": 4096},
            {"name": "engineering-groq", "match": {"labels": ["engineering"],
             "vendors": ["groq"]}, "models": ["llama-*", "openai/gpt-oss-*"],
             "max_tokens": 4096},
            {"name": "data-teams-together", "match": {"teams": ["data-*", "ml-*"],
             "vendors": ["together", "fireworks"]}, "endpoints": ["chat", "batches", "files"]},
            {"name": "batch-label-anthropic-batches", "match": {"labels": ["batch"],
             "vendors": ["anthropic"], "paths": ["/v1/messages/batches*"]},
             "endpoints": ["batches"], "max_tokens": 8000},
            {"name": "sandbox-openai", "match": {"agents": ["sandbox-*"], "vendors": ["openai"]},
             "models": ["gpt-4o-mini", "gpt-5-nano"], "max_tokens": 512, "tools": "deny",
             "limits": {"agent": {"requests_per_minute": 20, "spend_per_day": 1}}},
            {"name": "sandbox-anthropic", "match": {"agents": ["sandbox-*"],
             "vendors": ["anthropic"]}, "models": ["claude-haiku-4-5*"], "max_tokens": 512},
            {"name": "ci-openai", "match": {"agents": ["ci-*"], "vendors": ["openai"],
             "paths": ["/v1/chat/completions"]}, "models": ["gpt-4o-mini"],
             "max_tokens": 256, "streaming": False},
            {"name": "everyone-mistral-small", "match": {"vendors": ["mistral"],
             "models": ["mistral-small-*", "ministral-*"]}, "max_tokens": 2048},
            {"name": "everyone-openai-small-embeddings", "match": {"vendors": ["openai"],
             "models": ["text-embedding-3-small"]}, "endpoints": ["embeddings"]},
            {"name": "no-xai-for-customer-facing", "match": {"labels": ["customer-facing"],
             "vendors": ["xai"]}, "action": "deny", "reason": "not approved for customers"},
        ]


def write_policy(directory: Path, seed: int) -> tuple[Path, PolicyGen]:
    gen = PolicyGen(seed)
    data = gen.build()
    path = directory / "large-policy.yaml"
    path.write_text("# generated by bench/policy_decide.py\n"
                    + yaml.safe_dump(data, sort_keys=False, width=100))
    return path, gen


# -- the asks ----------------------------------------------------------------------------

def request_mix(gen: PolicyGen, n: int, seed: int) -> list[dict[str, Any]]:
    """Request descriptions (as `policy test` takes them), in a realistic mix."""
    rng = random.Random(seed + 1)
    out = []
    declared = [a for agents in gen.team_agents.values() for a in agents]
    team_of = {a: t for t, agents in gen.team_agents.items() for a in agents}
    undeclared = ([f"sandbox-{i}" for i in range(40)] + [f"ci-{i}" for i in range(40)]
                  + [f"tmp-bot-{i}" for i in range(120)])
    for _ in range(n):
        roll = rng.random()
        agent = rng.choice(declared)
        team = team_of[agent]
        req: dict[str, Any] = {"agent": agent}
        if roll < 0.04:  # a token naming the wrong team
            req["team"] = rng.choice([t for t in TEAMS if t != team])
        elif roll < 0.14:  # not in the policy's agents: a sandbox, a CI job, anyone
            req["agent"] = rng.choice(undeclared)
            team = rng.choice((None, None, *TEAMS))
            if team:
                req["team"] = team
        if roll < 0.07:  # a vendor the team was not given (deny-rest, tail, or default)
            vendor = rng.choice([v for v in MODELS if v not in gen.team_vendors.get(
                team or "", [])] + ["fireworks", "openrouter"])
        else:
            vendor = rng.choice(gen.team_vendors.get(team or "", ["openai"]) + ["openai"])
        req["vendor"] = vendor
        frontier, cheap, embed = MODELS.get(vendor, ([], ["some-model"], None))
        kind = rng.random()
        if kind < 0.10 and embed:
            req["model"] = rng.choice(gen.known_models(vendor, embed) or embed)
            req["path"] = {"google": f"/v1beta/models/{req['model']}:embedContent",
                           "cohere": "/v2/embed"}.get(vendor, "/v1/embeddings")
        elif kind < 0.13:  # fine-tuning, listing, moderation, batches
            req["path"] = rng.choice(("/v1/fine_tuning/jobs", "/v1/models", "/v1/moderations",
                                      "/v1/batches", "/v1/files"))
            req["method"] = "GET" if req["path"] == "/v1/models" else "POST"
        else:
            pool = (frontier if kind < 0.45 else cheap) if vendor in MODELS else cheap
            if kind > 0.95:  # a model the rule does not list
                pool = [m for f, c, _ in MODELS.values() for m in c]
            models = gen.known_models(vendor, pool) if vendor in MODELS else []
            req["model"] = rng.choice(models or ["some-model"])
            if rng.random() < 0.05 and vendor == "anthropic":
                req["path"] = "/v1/messages/batches"
            if rng.random() < 0.3:
                req["tools"] = rng.sample(TOOLS, rng.choice((1, 2, 3)))
            if rng.random() < 0.6:
                req["max_tokens"] = rng.choice((256, 1024, 4000, 8000, 20000))
            req["stream"] = rng.random() < 0.4
            req["body_bytes"] = rng.choice((200, 2000, 30000))
        if rng.random() < 0.03:  # an Azure deployment of the team
            req.update(vendor="azure_openai", host=f"{team or 'x'}-prod.openai.azure.com",
                       model=f"{team or 'x'}-gpt-4o-mini", path=None)
            req.pop("path")
            if "regulated" in TEAM_LABELS.get(team or "", []):
                req["host"] = "eu-legal.openai.azure.com"
        out.append(req)
    return out


# -- timing ------------------------------------------------------------------------------

def percentiles(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)
    n = len(s)

    def at(q: float) -> float:
        return s[min(n - 1, int(q * n))] / 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": s[-1] / 1000,
            "mean": sum(s) / n / 1000}


def fmt(p: dict[str, float]) -> str:
    return (f"p50 {p['p50']:7.2f}  p90 {p['p90']:7.2f}  p99 {p['p99']:7.2f}  "
            f"max {p['max']:8.1f}  mean {p['mean']:7.2f} µs")


def timer_overhead(n: int = 200_000) -> float:
    """What `t0 = perf_counter_ns(); ...; t1 - t0` costs with nothing in between (p50, µs)."""
    clock, out = time.perf_counter_ns, []
    for _ in range(n):
        t0 = clock()
        out.append(clock() - t0)
    return percentiles(out)["p50"]


def time_calls(fn: Callable[[Any], object], args: list[Any], calls: int) -> list[int]:
    clock, out = time.perf_counter_ns, []
    append = out.append
    for i in range(calls):
        a = args[i % len(args)]
        t0 = clock()
        fn(a)
        append(clock() - t0)
    return out


def micro(fn: Callable[[], object], n: int = 50_000) -> dict[str, float]:
    """One call at a time; returns percentiles in µs."""
    clock, out = time.perf_counter_ns, []
    for _ in range(min(n, 2000)):
        fn()
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return percentiles(out)


# -- typical request bodies, for the Ask's parts ------------------------------------------

def _fn(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": "does " + name,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


BODIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "openai chat, 3 tools": ("openai", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "max_tokens": 1024, "stream": True,
        "messages": [{"role": "system", "content": "You are a helpful agent."},
                     {"role": "user", "content": "Summarise ticket 4711 " * 20}],
        "tools": [_fn("search_docs"), _fn("lookup_customer"), _fn("run_sql")]}),
    "openai chat, no tools": ("openai", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}]}),
    "openai responses, built-ins": ("openai", "/v1/responses", {
        "model": "gpt-5", "input": "find the latest release notes", "max_output_tokens": 4000,
        "tools": [{"type": "web_search"}, {"type": "code_interpreter", "container": {
            "type": "auto"}}, {"type": "mcp", "server_label": "github",
            "server_url": "https://example.invalid/mcp"}]}),
    "anthropic messages, 2 tools": ("anthropic", "/v1/messages", {
        "model": "claude-sonnet-4-5", "max_tokens": 8000,
        "messages": [{"role": "user", "content": "review this diff " * 30}],
        "tools": [{"name": "fetch_url", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search"}]}),
    "gemini generateContent": ("google", "/v1beta/models/gemini-2.5-flash:generateContent", {
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
        "generationConfig": {"maxOutputTokens": 2048},
        "tools": [{"functionDeclarations": [{"name": "search_docs"}, {"name": "run_sql"}]},
                  {"googleSearch": {}}]}),
}


def ask_parts(vendor_name: str, path: str, body: dict[str, Any]) -> dict[str, Callable[[], object]]:
    vendor = catalogue().by_name(vendor_name)
    assert vendor is not None
    endpoint = apis.endpoint(vendor, "POST", path)
    raw = orjson.dumps(body)

    def build_ask() -> Ask:
        return Ask(vendor=vendor.name, host=vendor.hosts[0], path=path, agent="a", team="t",
                   method="POST", model=body.get("model"), endpoint=endpoint,
                   cap=endpoint.cap, stream=bool(body.get("stream")), max_tokens=1024,
                   tools=("x",), body_bytes=len(raw))

    def whole() -> Ask:
        e = apis.endpoint(vendor, "POST", path.split("?", 1)[0])
        return Ask(vendor=vendor.name, host=vendor.hosts[0], path=path, agent="a", team="t",
                   method="POST", model=body.get("model"), endpoint=e, cap=e.cap,
                   stream=bool(body.get("stream")),
                   max_tokens=apis.max_tokens(vendor.api, e, body),
                   tools=apis.tool_names(vendor.api, e, body), body_bytes=len(raw))

    return {
        "apis.endpoint": lambda: apis.endpoint(vendor, "POST", path),
        "apis.max_tokens": lambda: apis.max_tokens(vendor.api, endpoint, body),
        "apis.tool_names": lambda: apis.tool_names(vendor.api, endpoint, body),
        "Ask(...)": build_ask,
        "all of the above (as ask_of)": whole,
        f"(for scale: orjson.loads, {len(raw)} B)":
            lambda: orjson.loads(raw),
    }


def drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (InProcessCounters) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the coroutine suspended")


# -- main --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200_000, help="timed decide() calls")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the generated policy")
    args = p.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"policy decide benchmark -- {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, load average {load}", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="egressguard-policy-bench-"))
    try:
        return run(args, workdir)
    finally:
        if args.keep:
            print(f"generated policy kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> int:
    path, gen = write_policy(workdir, args.seed)
    text = path.read_text()

    # -- parse ------------------------------------------------------------------------
    loads: list[float] = []
    lint_times: list[float] = []
    loaded = None
    check = policy.policylint.check

    def timed_check(*a: Any, **kw: Any) -> Any:  # the lint, timed where load calls it
        t0 = time.perf_counter()
        try:
            return check(*a, **kw)
        finally:
            lint_times.append(time.perf_counter() - t0)

    policy.policylint.check = timed_check  # type: ignore[assignment]
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                loaded = policy.load(path)
            except ConfigError as exc:
                print(f"FAILED: the generated policy does not load:\n{exc}", file=sys.stderr)
                return 1
            loads.append(time.perf_counter() - t0)
    finally:
        policy.policylint.check = check  # type: ignore[assignment]
    assert loaded is not None
    yaml_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        Document(text, str(path))
        yaml_times.append(time.perf_counter() - t0)
    warnings = [w for w in loaded.warnings if w.severity == "warning"]
    print(f"\npolicy: {len(loaded.rules)} rules, {len(loaded.agents)} agents, "
          f"{len(loaded.teams)} teams, {len(text.splitlines())} lines of YAML "
          f"({len(text) / 1024:.0f} KiB); lint: 0 errors, {len(warnings)} warnings")
    for w in warnings[:5]:
        print(f"  {w}")
    print(f"policy.load (YAML, checks, lint, price table): first {loads[0] * 1000:.0f} ms, "
          f"median of 3 {statistics.median(loads) * 1000:.0f} ms; of which the policy's "
          f"YAML document {statistics.median(yaml_times) * 1000:.0f} ms (yaml.compose, "
          f"SafeLoader), the lint {statistics.median(lint_times) * 1000:.0f} ms")

    # -- the asks ---------------------------------------------------------------------
    asks = [ask_from(r) for r in request_mix(gen, DISTINCT_ASKS, args.seed)]
    callers = {(a.agent, a.team) for a in asks}
    outcomes = collections.Counter(
        "allowed (clamped)" if (d := loaded.decide(a)).allowed and d.max_tokens is not None
        else "allowed" if d.allowed else d.reason for a in asks)
    print(f"\nasks: {len(asks)} distinct, from {len(callers)} callers "
          f"({sum(1 for a in callers if a[0] not in loaded.agents)} not declared); "
          "decisions:")
    for reason, n in outcomes.most_common():
        print(f"  {reason:<28} {n / len(asks):6.1%}")
    considered = collections.Counter()
    for a in asks:
        candidates = loaded.evaluator._callers[(a.agent, a.team)][2]
        considered[len(candidates)] += 1
    sizes = sorted(considered.elements())
    print(f"rules that can apply to a caller (looked at in order): median "
          f"{statistics.median(sizes)}, max {sizes[-1]} of {len(loaded.rules)}")

    # -- cold: the first call per caller -------------------------------------------------
    cold_eval = Evaluator(loaded.rules, loaded.agents, loaded.teams)
    first: dict[tuple[str | None, str | None], Ask] = {}
    for a in asks:
        first.setdefault((a.agent, a.team), a)
    cold = time_calls(cold_eval.decide, list(first.values()), len(first))
    print(f"\nfirst call per caller (cold per-caller cache), {len(cold)} callers:\n  "
          f"{fmt(percentiles(cold))}")

    # -- warm ----------------------------------------------------------------------------
    rng = random.Random(args.seed + 2)
    order = asks[:]
    rng.shuffle(order)
    overhead = timer_overhead()
    time_calls(loaded.decide, order, min(args.calls, 50_000))  # warm-up
    warm = time_calls(loaded.decide, order, args.calls)
    p = percentiles(warm)
    by_outcome: dict[str, list[int]] = collections.defaultdict(list)
    labels = {id(a): ("allowed" if (d := loaded.decide(a)).allowed else d.reason)
              for a in order}
    for i, ns in enumerate(warm):
        by_outcome[labels[id(order[i % len(order)])]].append(ns)
    gc_on = gc.isenabled()
    print(f"\nPolicy.decide, warm, {args.calls} calls over the {len(order)} asks "
          f"(timer overhead p50 {overhead:.2f} µs, included; gc "
          f"{'on' if gc_on else 'off'}):\n  {fmt(p)}")
    for reason, ns in sorted(by_outcome.items(), key=lambda kv: -len(kv[1])):
        q = percentiles(ns)
        print(f"    {reason:<26} {len(ns) / len(warm):6.1%}  p50 {q['p50']:6.2f}  "
              f"p99 {q['p99']:6.2f} µs")
    print(f"target: decide() p50 < {TARGET_P50_US:g} µs: "
          f"{'PASS' if p['p50'] < TARGET_P50_US else 'MISS'} ({p['p50']:.2f} µs)")

    # -- around decide ---------------------------------------------------------------------
    print("\nbuilding the Ask (the parts of enforce.ask_of), per call:")
    for name, (vendor, vpath, body) in BODIES.items():
        print(f"  {name}:")
        for part, fn in ask_parts(vendor, vpath, body).items():
            print(f"    {part:<34} {fmt(micro(fn, 20_000))}")

    limit_costs(loaded, asks)
    return 0


def limit_costs(loaded: policy.Policy, asks: list[Ask]) -> None:
    """For an allowed request under the most limits: what Enforce does after decide."""
    ranked = sorted((a for a in asks if loaded.decide(a).allowed),
                    key=lambda a: len(loaded.limit_scopes(loaded.decide(a))))
    ask = ranked[-1]
    decision = loaded.decide(ask)
    scopes = loaded.limit_scopes(decision)
    prices = loaded.prices
    assert prices is not None and ask.model is not None
    counters = InProcessCounters()

    def prepare() -> tuple[list[limits.Bucket], limits.Cost]:
        sc = loaded.limit_scopes(decision)
        buckets = [b for key, spec in sc for b in limits.buckets(key, spec)]
        price = prices.price(ask.vendor, ask.model) if ask.model else None
        return buckets, limits.estimate(ask.body_bytes, ask.max_tokens, price)

    buckets, cost = prepare()
    # settled back to nothing, so that thousands of reservations never fill a limit;
    # every counter still changes, as a real settlement's do
    actual = limits.Cost(0, 0, 0)

    def reserve_settle() -> None:
        r = drive(counters.reserve(buckets, cost, time.time()))
        drive(counters.settle(r, actual))

    print(f"\nlimits, for an allowed request with {len(scopes)} scopes / {len(buckets)} "
          f"counters ({', '.join(k for k, _ in scopes)}):")
    print(f"  {'limit_scopes+buckets+price+estimate':<38}{fmt(micro(prepare))}")
    print(f"  {'InProcessCounters reserve+settle':<38}{fmt(micro(reserve_settle))}")
    try:
        from overhead import BenchError, redis_server  # bench/ is this script's directory
        with tempfile.TemporaryDirectory(prefix="egressguard-redis-") as tmp, \
                redis_server(Path(tmp)) as (url, _):
            asyncio.run(redis_costs(url, buckets, cost, actual))
    except (BenchError, OSError, TimeoutError) as exc:
        print(f"  RedisCounters: not measured ({exc})")


async def redis_costs(url: str, buckets: list[limits.Bucket], cost: limits.Cost,
                      actual: limits.Cost, n: int = 3000) -> None:
    """Reserve and settle against a real local redis-server, one request at a time:
    each is one round trip (a Lua script); CPU is this process's, i.e. the proxy's."""
    counters = RedisCounters(url)
    try:
        for _ in range(300):
            await counters.settle(await counters.reserve(buckets, cost, time.time()), actual)
        reserve, settle = [], []
        clock = time.perf_counter_ns
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            t0 = clock()
            r = await counters.reserve(buckets, cost, time.time())
            t1 = clock()
            await counters.settle(r, actual)
            settle.append(clock() - t1)
            reserve.append(t1 - t0)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await counters.close()
    print(f"  {'RedisCounters.reserve (local Redis)':<38}{fmt(percentiles(reserve))}")
    print(f"  {'RedisCounters.settle':<38}{fmt(percentiles(settle))}")
    print(f"  {'  reserve+settle, per request:':<38}wall {wall / n * 1e6:7.1f} µs, of which "
          f"CPU in this process {cpu / n * 1e6:7.1f} µs")


if __name__ == "__main__":
    sys.exit(main())
