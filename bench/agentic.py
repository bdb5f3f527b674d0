"""An agent workload through egressguard while the vendor fails: success rate, added
latency and spend saved by key pools, retries, failover, routing and the cache (issue 9).

One run starts a real egressguard set-up (`egressguard.tools.stack.Stack`: OpenBao, the
local TLS fake vendor, the proxy) with a policy this script writes: N agents in two
teams, and one rule for all of them with a `key_pool` of three OpenAI keys, `retry:
{attempts: 4, within: 20s, backoff: 50ms}`, a `fallback` to Anthropic's
claude-3-5-haiku-latest, a `route` (the alias `fast` for gpt-4o-mini, and
`small_prompts`: gpt-4o requests under 250 tokens, without tools, go to gpt-4o-mini)
and `cache: {exact: {ttl: 1h}}`, priced with the repo's `policies/prices.yaml`.

Each agent is a thread with the real `openai` SDK (`max_retries=0`: every failure the
vendor makes and the agent does not see is egressguard's doing). It holds conversations
of several turns: the message history grows by the user's turn and the model's answer
each time; odd turns are streamed (with `include_usage`); every third
turn, from the second, uses a tool, as two requests (the first offers the tool; the
fake vendor never calls tools, so the agent writes the call the model would have made
into the history, then sends the tool's JSON result with it); the third of every three
turns asks for the alias `fast`; and every other turn the agent also sends a one-off
temperature-0 "lookup" question, from a short list shared by every agent, which the
cache can answer (cache keys are per team, so each team asks the vendor once).
Lookups carry the phase's name, so no phase is answered from another phase's cache.
Between two requests an agent pauses ~100 ms (`--think`, 0.5-1.5 times it, the same
pauses in every phase), as it would to run its tool or read the answer: with 8 agents
back to back, the fake vendor's instant answers would turn the run into a throughput
test of this 2-vCPU machine, and the added latency into queueing.

The workload runs straight to the fake vendor (`direct`: the same SDK and requests,
no proxy; the baseline for added latency, measured in the same run), then through the
proxy once per phase, the fake vendor's faults set before each phase and cleared after
it; that sequence is repeated for several rounds (`--rounds`, each agent holding a
new conversation per phase and round), so that load drifting on a shared machine
falls on every phase alike:

* `healthy`: no faults.
* `one key failing`: pool key `a` answers 429 with `Retry-After: 2`, always.
* `vendor flaky`: OpenAI answers 503 to every 3rd gpt-4o request and drops the
  connection on every 7th gpt-4o-mini request without answering. (The fake vendor lets
  the first fault that matches a request decide it, off-turns included, so two paces
  on the same requests cannot be combined: the model splits them.)
* `vendor down`: OpenAI answers 503 to everything: every request must fail over to
  Anthropic, translated both ways (streams and tool rounds included).

Per phase the run reports requests, successes and the success rate (target: 100 %,
PASS/FAIL), the latency each agent saw (p50, p95) and the p50 added over `direct`
(for all requests, and for those the vendor answered, i.e. without cache hits), and
from the audit records: attempts per request sent to a vendor, requests that needed
more than one attempt, fail-overs (`served_by`), cache hits, and tokens and USD saved
by the cache and USD saved by routing (summed from the records' `savings`), with the
USD spent. Every request that succeeded through the proxy must have its audit record
(status 200), or the run fails.

    .venv/bin/python bench/agentic.py [--agents 8] [--turns 6] [--rounds 5]
                                      [--conversations 1] [--think 100] [--quick] [--keep]

The default run sends 440 requests per phase (2200 in all) in about a minute;
`--quick` (2 agents, 1 round of 3 turns) takes a few seconds.

Exit status: 0 when every phase answered every request, 1 when a phase missed 100 % or
the audit records do not add up, 2 when the set-up could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from mitmproxy.version import VERSION as MITMPROXY_VERSION

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack

REPO = Path(__file__).resolve().parents[1]
REQUEST_ID = "x-egressguard-request-id"
TEAMS = ("research", "support")
POOL = {"a": "AAAA", "b": "BBBB", "c": "CCCC"}  # pool key -> how its value ends
TARGET_SUCCESS = 1.0
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
             "http_proxy", "https_proxy", "all_proxy", "no_proxy")
# the agents section is added per run (`policy_text`)
POLICY = """\
# bench/agentic.py: every agent under a rule with a key pool, retries, a fallback vendor,
# model routing and the exact-match cache (issue 9); one such rule per phase, so the
# circuit breaker one phase opens (per rule) does not reach into the next
version: 1
prices: prices.yaml
teams: {research: {}, support: {}}
rules:
"""
RULE = """\
  - name: {slug}
    match: {{agents: ["{slug}-*"], teams: [research, support], vendors: [openai]}}
    key_pool: [pool/openai/a, pool/openai/b, pool/openai/c]
    retry: {{attempts: 4, within: 20s, backoff: 50ms}}
    fallback: [{{vendor: anthropic, model: claude-3-5-haiku-latest}}]
    route:
      aliases: {{fast: gpt-4o-mini}}
      small_prompts: {{under_tokens: 250, to: gpt-4o-mini, models: [gpt-4o]}}
    cache: {{exact: {{ttl: 1h}}}}
"""


class BenchError(Exception):
    """The benchmark could not measure what it claims to."""


@dataclass(frozen=True)
class Phase:
    name: str
    faults: tuple[dict[str, Any], ...] = ()
    proxied: bool = True


DIRECT = Phase("direct", proxied=False)
PHASES = (
    Phase("healthy"),
    Phase("one key failing", ({"vendor": "openai", "key": POOL["a"], "status": 429,
                               "retry_after": 2},)),
    Phase("vendor flaky", ({"vendor": "openai", "model": "gpt-4o", "status": 503,
                            "every": 3},
                           {"vendor": "openai", "model": "gpt-4o-mini", "status": 0,
                            "every": 7})),
    Phase("vendor down", ({"vendor": "openai", "status": 503},)),
)

# -- the workload -----------------------------------------------------------------------

SYSTEM = (
    "You are the operations assistant of Northwind Energy's engineering team. You help "
    "engineers investigate incidents, read logs and metrics, and write short status "
    "updates for the incident channel. Be precise and brief: say what is known, what is "
    "suspected and what to check next. When a tool can answer a question (order and "
    "ticket lookups), call it instead of guessing. Never include credentials, customer "
    "names or internal hostnames in a status update. Use UTC times. If you are unsure, "
    "say so and propose how to find out."
)
TASKS = (
    "The billing API's p99 latency doubled at 09:40 UTC. Where should I start looking?",
    "Customers report duplicate invoice e-mails since this morning's deploy. Ideas?",
    "Our nightly meter-reading import failed with a timeout. What could cause that?",
    "Error rate on the tariff service is 4 % since 11:00 UTC. Help me triage it.",
    "The support queue grew by 300 tickets in an hour. What should I check first?",
    "A canary of the payments worker crashes on start with exit code 137. Why?",
    "Disk usage on the reporting database grows 2 % per hour. How do I find the cause?",
    "Webhook deliveries to a partner fail with TLS errors since midnight. Next steps?",
)
FOLLOW_UPS = (
    "Here is what I found: the connection pool is at its maximum and requests queue for "
    "up to 800 ms. The deploy at 09:35 raised the worker count from 8 to 16.",
    "Draft a status update for the incident channel from what we know so far.",
    "What would you check next, and which metric would confirm it?",
    "The rollback finished at 10:12 UTC and latency is back to normal. Summarise.",
    "Write the follow-up actions for the post-incident review, as a short list.",
)
LOOKUPS = (
    "What is the refund window, in days, for annual plans? Answer with a number.",
    "Which regions does the standard support plan cover? Answer with a list.",
    "What is the largest attachment a support ticket accepts, in MB?",
)
TOOLS = [{"type": "function", "function": {
    "name": "lookup_order",
    "description": "Look up an order or ticket by its id: status, owner team, last update.",
    "parameters": {"type": "object", "properties": {
        "order_id": {"type": "string", "description": "the order or ticket id"}},
        "required": ["order_id"]},
}}]


@dataclass
class Outcome:
    """One request as the agent saw it."""

    kind: str  # "turn", "tool call", "tool result", "lookup"
    stream: bool
    ok: bool
    ms: float
    request_id: str | None
    text: str = ""
    error: str | None = None


def ask(client: openai.OpenAI, kind: str, stream: bool, **kwargs: Any) -> Outcome:
    """Send one chat completion and read all of it (every streamed chunk)."""
    started = time.perf_counter()
    rid, error = None, None
    try:
        if stream:
            raw = client.chat.completions.with_raw_response.create(
                stream=True, stream_options={"include_usage": True}, **kwargs)
            rid = raw.headers.get(REQUEST_ID)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(**kwargs)
            rid = raw.headers.get(REQUEST_ID)
            text = raw.parse().choices[0].message.content or ""
        ms = (time.perf_counter() - started) * 1000
        if text:
            return Outcome(kind, stream, True, ms, rid, text)
        error = "an empty answer"
    except openai.APIStatusError as exc:
        rid = exc.response.headers.get(REQUEST_ID)
        error = f"HTTP {exc.status_code}: {str(exc.message)[:160]}"
    except openai.APIError as exc:  # no answer, or a stream that broke off
        error = f"{type(exc).__name__}: {str(exc)[:160]}"
    return Outcome(kind, stream, False, (time.perf_counter() - started) * 1000, rid,
                   error=error)


@dataclass(frozen=True)
class Workload:
    conversations: int  # per agent, phase and round
    turns: int  # per conversation
    think: float  # seconds an agent spends between requests, on average


def run_agent(client: openai.OpenAI, agent: int, tag: str, work: Workload,
              round_no: int) -> list[Outcome]:
    """One agent's conversations in one phase of one round, as the module docstring
    describes."""
    done: list[Outcome] = []
    rng = random.Random(f"{agent}/{round_no}")  # the same pauses in every phase

    def send(*args: Any, **kwargs: Any) -> Outcome:
        if done and work.think:  # the tool runs, the agent reads: not proxy time
            time.sleep(work.think * rng.uniform(0.5, 1.5))
        return ask(*args, **kwargs)

    for conv in range(round_no * work.conversations, (round_no + 1) * work.conversations):
        history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        for turn in range(work.turns):
            history.append({"role": "user", "content": TASKS[(agent + conv) % len(TASKS)]
                            if turn == 0 else FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)]})
            model = "fast" if turn % 3 == 2 else "gpt-4o"
            common: dict[str, Any] = {"model": model, "temperature": 0.7, "max_tokens": 400}
            stream = turn % 2 == 1
            if turn % 3 == 1:  # a tool round
                offered = send(client, "tool call", stream, messages=list(history),
                               tools=TOOLS, **common)
                done.append(offered)
                call_id = f"call_{agent}_{conv}_{turn}"
                order = f"ORD-{agent:02d}{conv:02d}{turn:02d}"
                history += [
                    {"role": "assistant", "content": None, "tool_calls": [{
                        "id": call_id, "type": "function", "function": {
                            "name": "lookup_order",
                            "arguments": json.dumps({"order_id": order})}}]},
                    {"role": "tool", "tool_call_id": call_id, "content": json.dumps({
                        "order_id": order, "status": "delayed", "owner_team": "billing",
                        "last_update": "2026-12-07T09:52:00Z",
                        "notes": ["retry scheduled", "customer notified"]})},
                ]
                result = send(client, "tool result", not stream, messages=list(history),
                              tools=TOOLS, **common)
            else:
                result = send(client, "turn", stream, messages=list(history), **common)
            done.append(result)
            history.append({"role": "assistant", "content": result.text or "(no answer)"})
            if turn % 2 == 0:
                question = LOOKUPS[(turn // 2 + conv) % len(LOOKUPS)]
                done.append(send(
                    client, "lookup", False, model="gpt-4o", temperature=0, max_tokens=100,
                    messages=[{"role": "user", "content": f"{question} (bench phase: {tag})"}]))
    return done


# -- phases -------------------------------------------------------------------------------


@dataclass
class PhaseRun:
    phase: Phase
    outcomes: list[Outcome]
    seconds: float = 0.0
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_phase(stack: Stack, clients: list[openai.OpenAI], run: PhaseRun, work: Workload,
              round_no: int) -> list[Outcome]:
    """One round of a phase, its faults on; its outcomes are added to `run`'s."""
    stack.reset_received()  # and the faults' counts: every phase starts afresh
    stack.fail(*run.phase.faults)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(run_agent, c, i, run.phase.name, work, round_no)
                       for i, c in enumerate(clients)]
            outcomes = [o for f in futures for o in f.result()]
    finally:
        stack.fail()
    run.outcomes += outcomes
    run.seconds += time.perf_counter() - started
    return outcomes


def warm_up(clients: list[openai.OpenAI]) -> None:
    """Connections (CONNECT, both TLS handshakes), leaf certificates and the Vault keys
    of the pool, before anything is measured."""
    def one(client: openai.OpenAI) -> None:
        for stream in (False, True):
            got = ask(client, "warm-up", stream, model="gpt-4o-mini", max_tokens=20,
                      messages=[{"role": "user", "content": "ping"}])
            if not got.ok:
                raise RuntimeError(f"warm-up request failed: {got.error}")
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(one, clients))


def attach_records(stack: Stack, runs: list[PhaseRun], timeout: float = 30.0) -> None:
    """Each proxied request's audit record, by request id: every request the proxy
    answered must have one, and every success one with status 200."""
    wanted = {o.request_id for r in runs if r.phase.proxied for o in r.outcomes
              if o.request_id}
    missing = [o for r in runs if r.phase.proxied for o in r.outcomes
               if o.ok and not o.request_id]
    if missing:
        raise BenchError(f"{len(missing)} answers through the proxy had no {REQUEST_ID}")

    def complete() -> dict[str, dict[str, Any]] | None:
        found = {r["id"]: r for r in stack.records() if r.get("id") in wanted}
        return found if len(found) == len(wanted) else None

    try:
        found = wait_until(complete, timeout=timeout, interval=0.25,
                           what=f"{len(wanted)} audit records")
    except TimeoutError:
        have = {r.get("id") for r in stack.records()}
        raise BenchError(f"{len(wanted - have)} of {len(wanted)} requests have no audit "
                         "record") from None
    for run in (r for r in runs if r.phase.proxied):
        run.records = {o.request_id: found[o.request_id] for o in run.outcomes
                       if o.request_id}
        bad = [o.request_id for o in run.outcomes
               if o.ok and run.records[o.request_id].get("status") != 200]
        if bad:
            raise BenchError(f"{run.phase.name}: {len(bad)} answered requests have a record "
                             f"without status 200, e.g. {bad[0]}")


# -- figures ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(p) - 1]


@dataclass
class Figures:
    name: str
    requests: int
    ok: int
    seconds: float
    p50: float
    p95: float
    p50_sent: float  # without cache hits
    proxy_p50: float = float("nan")  # the records' latency_ms
    upstream_p50: float = float("nan")  # the records' upstream_ms (the relay's time)
    attempts: list[int] = field(default_factory=list)  # per request sent to a vendor
    failovers: int = 0
    cache_hits: int = 0
    cache_tokens: int = 0
    cache_usd: float = 0.0
    routed: int = 0
    routing_usd: float = 0.0
    spend_usd: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    @property
    def passed(self) -> bool:
        return self.rate >= TARGET_SUCCESS


def figures(run: PhaseRun) -> Figures:
    ok = [o for o in run.outcomes if o.ok]
    hit = {rid for rid, r in run.records.items() if (r.get("cache") or {}).get("status")
           == "hit"}
    f = Figures(run.phase.name, len(run.outcomes), len(ok), run.seconds,
                percentile([o.ms for o in ok], 50), percentile([o.ms for o in ok], 95),
                percentile([o.ms for o in ok if o.request_id not in hit], 50))
    answered = [r for r in run.records.values() if r.get("status") == 200]
    f.proxy_p50 = percentile([r["latency_ms"] for r in answered
                              if r.get("latency_ms") is not None], 50)
    f.upstream_p50 = percentile([r["upstream_ms"] for r in answered
                                 if r.get("upstream_ms") is not None], 50)
    for r in run.records.values():
        if r.get("attempts"):
            f.attempts.append(len(r["attempts"]))
        f.failovers += bool(r.get("served_by"))
        f.cache_hits += r["id"] in hit
        f.routed += bool(r.get("routing"))
        savings = r.get("savings") or {}
        f.cache_tokens += savings.get("cache_tokens") or 0
        f.cache_usd += savings.get("cache_usd") or 0.0
        f.routing_usd += savings.get("routing_usd") or 0.0
        f.spend_usd += r.get("spend_usd") or 0.0
    return f


def latency_table(direct: Figures, phases: list[Figures]) -> str:
    rows = ["| phase | requests | ok | success | p50 / p95 ms | added p50 ms | added p50 ms, "
            "vendor-answered | wall s | target 100 % |",
            "|---|---|---|---|---|---|---|---|---|"]
    for f in [direct, *phases]:
        added = "—" if f is direct else f"{f.p50 - direct.p50:+.1f}"
        added_sent = "—" if f is direct else f"{f.p50_sent - direct.p50:+.1f}"
        verdict = "—" if f is direct else ("PASS" if f.passed else "**FAIL**")
        rows.append(f"| {f.name} | {f.requests} | {f.ok} | {f.rate:.1%} | {f.p50:.1f} / "
                    f"{f.p95:.1f} | {added} | {added_sent} | {f.seconds:.1f} | {verdict} |")
    return "\n".join(rows)


def resilience_table(phases: list[Figures]) -> str:
    rows = ["| phase | in proxy / upstream p50 ms | attempts/req (max) | retried | "
            "fail-overs | cache hits | cache saved tokens / USD | routed | routing saved USD "
            "| spent USD |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for f in phases:
        mean = statistics.fmean(f.attempts) if f.attempts else 0.0
        retried = sum(n > 1 for n in f.attempts)
        rows.append(f"| {f.name} | {f.proxy_p50:.1f} / {f.upstream_p50:.1f} | {mean:.2f} "
                    f"({max(f.attempts, default=0)}) | {retried} | "
                    f"{f.failovers} | {f.cache_hits} | {f.cache_tokens} / "
                    f"{f.cache_usd:.6f} | {f.routed} | {f.routing_usd:.6f} | "
                    f"{f.spend_usd:.6f} |")
    return "\n".join(rows)


def failures(runs: list[PhaseRun], limit: int = 5) -> str:
    lines = []
    for run in runs:
        bad = [o for o in run.outcomes if not o.ok]
        for o in bad[:limit]:
            lines.append(f"  {run.phase.name}: {o.kind}{' (streamed)' if o.stream else ''}, "
                         f"request {o.request_id}: {o.error}")
        if len(bad) > limit:
            lines.append(f"  {run.phase.name}: ... and {len(bad) - limit} more")
    return "\n".join(lines)


# -- set-up -------------------------------------------------------------------------------


def slug(phase: Phase) -> str:
    return phase.name.replace(" ", "-")


def policy_text(agents: list[str]) -> str:
    rules = "".join(RULE.format(slug=slug(p)) for p in PHASES)
    lines = "".join(f"  {slug(p)}-{a}: {{team: {TEAMS[i % len(TEAMS)]}}}\n"
                    for p in PHASES for i, a in enumerate(agents))
    return f"{POLICY}{rules}agents:\n{lines}"


def fake_key(ending: str = "") -> str:
    """A key-shaped value made at run time (nothing key-like is committed)."""
    return f"sk-bench-{secrets.token_hex(16)}{ending}"


def start(workdir: Path, agents: list[str]) -> Stack:
    (workdir / "policy.yaml").write_text(policy_text(agents))
    shutil.copy(REPO / "policies" / "prices.yaml", workdir / "prices.yaml")
    stack = Stack(workdir, policy=workdir / "policy.yaml").start()
    try:
        stack.put_key("anthropic", fake_key())
        for name, ending in POOL.items():
            stack.vault.put_secret(f"pool/openai/{name}", {"api_key": fake_key(ending)})
    except BaseException:
        stack.stop()
        raise
    return stack


def clients_for(stack: Stack, agents: list[str]) -> tuple[dict[str, list[openai.OpenAI]],
                                                          list[openai.OpenAI]]:
    """(through the proxy: per phase, one per agent with its token; straight to the fake
    vendor)."""
    def client(base_url: str, api_key: str, **http: Any) -> openai.OpenAI:
        return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=60,
                             http_client=openai.DefaultHttpxClient(trust_env=False, **http))

    proxied = {p.name: [client("https://api.openai.com/v1", stack.token(f"{slug(p)}-{a}"),
                               proxy=stack.proxy, verify=stack.agent_ssl_context())
                        for a in agents] for p in PHASES}
    vendor_ca = ssl.create_default_context(cafile=str(stack.pki / "ca.pem"))
    # the fake's certificate names localhost too; it takes /v1/chat/completions there as
    # OpenAI's, and wants a key (any)
    direct = [client(f"https://localhost:{stack.vendor_port}/v1", fake_key(), verify=vendor_ca)
              for _ in agents]
    return proxied, direct


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"mitmproxy {MITMPROXY_VERSION}, openai {openai.__version__}, load average {load}")


# -- main ---------------------------------------------------------------------------------


def measure(stack: Stack, args: argparse.Namespace, agents: list[str],
            say: Callable[[str], None]) -> list[PhaseRun]:
    proxied, direct = clients_for(stack, agents)
    try:
        warm_up(direct)
        for clients in proxied.values():
            warm_up(clients)
        work = Workload(args.conversations, args.turns, args.think / 1000)
        runs = [PhaseRun(phase, []) for phase in (DIRECT, *PHASES)]
        for round_no in range(args.rounds):  # phases interleaved: drift hits them alike
            done = []
            for run in runs:
                got = run_phase(stack, proxied[run.phase.name] if run.phase.proxied
                                else direct, run, work, round_no)
                done.append(f"{run.phase.name} {sum(o.ok for o in got)}/{len(got)}")
            say(f"  round {round_no + 1}/{args.rounds}: {', '.join(done)} answered")
        attach_records(stack, runs)
        return runs
    finally:
        for c in (*(c for cs in proxied.values() for c in cs), *direct):
            c.close()


def report(runs: list[PhaseRun], say: Callable[[str], None]) -> int:
    """Print the tables; 0 if every phase answered every request, else 1."""
    direct, *phases = [figures(r) for r in runs]
    say("\nSuccess and latency as the agents saw them (added: p50 over the direct "
        "baseline of this run; vendor-answered: cache hits left out):\n")
    say(latency_table(direct, phases))
    say("\nFrom the audit records (in proxy: latency_ms, upstream: upstream_ms, the part "
        "spent in the relay's attempts and pauses; attempts: per request sent to a vendor, "
        "fallback included; retried: requests needing more than one):\n")
    say(resilience_table(phases))
    if bad := failures(runs):
        say(f"\nFailed requests:\n{bad}")
    missed = [f.name for f in phases if not f.passed]
    say("\n" + (f"FAIL: {', '.join(missed)} below 100 % success" if missed else
                "PASS: every phase answered every request"))
    return 1 if missed or direct.ok < direct.requests else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=8, help="agents running in parallel")
    p.add_argument("--turns", type=int, default=6, help="turns per conversation")
    p.add_argument("--conversations", type=int, default=1,
                   help="conversations each agent holds, one after the other, per phase "
                        "and round")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds; each runs every phase once, in order")
    p.add_argument("--think", type=float, default=100.0,
                   help="milliseconds an agent pauses between its requests, on average "
                        "(running its tool, reading the answer; 0: back to back)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (2 agents, 1 round of 1 conversation of 3 turns)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = p.parse_args(argv)
    if args.quick:
        args.agents, args.turns, args.conversations, args.rounds = 2, 3, 1, 1
    if min(args.agents, args.turns, args.conversations, args.rounds) < 1:
        p.error("--agents, --turns, --conversations and --rounds are at least 1")
    if args.think < 0:
        p.error("--think is milliseconds >= 0")
    for var in PROXY_ENV:  # our clients talk to the proxy named here only
        os.environ.pop(var, None)

    agents = [f"agent-{i + 1}" for i in range(args.agents)]
    workdir = Path(tempfile.mkdtemp(prefix="egressguard-agentic-"))
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    say(f"egressguard agentic workload benchmark -- {machine()}")
    say(f"{args.agents} agents in 2 teams; per phase, {args.rounds} round(s) of "
        f"{args.conversations} conversation(s) of {args.turns} turns per agent, "
        f"~{args.think:g} ms between an agent's requests")
    status = 2
    try:
        stack = start(workdir, agents)
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"bench: the set-up did not start: {exc}", file=sys.stderr)
        print(f"work directory (logs): {workdir}", file=sys.stderr)
        return 2
    try:
        try:
            runs = measure(stack, args, agents, say)
        finally:
            stack.stop()
        status = report(runs, say)
    except (BenchError, TimeoutError, RuntimeError, OSError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        status = 1
    finally:
        if args.keep or status != 0:  # the logs say why it failed
            print(f"work directory (logs): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
