"""What /metrics and /readyz read when they are asked, from the other addons' state:
the Vault store's counts, the policy loader's reloads, the team limits' windows, the
journal and each sink's cursor on disk, the process. Each function takes the addon
(or its part) it reads, so the Metrics addon stays a thin adapter and this reads as a
list of what is exported. Label values are codes, team names the policy declares and
sink names from the sinks file: bounded sets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from egressguard.backends import housekeeping
from egressguard.backends.backlog import backlogs
from egressguard.backends.counters import Counters, CountersUnavailable
from egressguard.core import limits
from egressguard.core.metrics import Gauge, Metric, render
from egressguard.core.policy import Policy

_CODE = re.compile(r"[A-Za-z0-9_]{1,64}")  # reasons, entity types, actions


def code(value: str) -> str:
    """A label value that must be a code (reason, entity type, action): else "other"."""
    return value if _CODE.fullmatch(value) else "other"


# -- /readyz -----------------------------------------------------------------------------
def checks(policy: Policy | None, confdir: str, store: object, journal: Any
           ) -> dict[str, dict[str, Any]]:
    """Each readiness check's outcome and, when it fails, why: fixed texts and reason
    codes, never a key, a token or an address."""
    ca = Path(confdir).expanduser() / "mitmproxy-ca.pem"
    return {
        "policy": {"ok": True, "sha256": policy.digest} if policy is not None
        else _failed("no policy loaded"),
        "ca": {"ok": True} if ca.is_file()
        else _failed("the interception CA (mitmproxy-ca.pem) is not in the certs directory"),
        "secret_store": _store_check(store),
        "journal": _failed("no audit journal") if journal is None
        else _failed("the audit journal cannot be written") if journal.failed
        else _failed("the audit journal is full") if journal.full
        else {"ok": True},
    }


def _failed(why: str, **more: Any) -> dict[str, Any]:
    return {"ok": False, "error": why, **more}


def _store_check(store: object) -> dict[str, Any]:
    if store is None:
        return _failed("no secret store configured")
    stats = getattr(store, "stats", None)
    if stats is None:  # a store that cannot be probed (the tests' in-memory one)
        return {"ok": True}
    if stats.up is None:
        return _failed("Vault has not answered yet")
    if not stats.up:
        return _failed(f"Vault did not answer ({stats.down_reason})",
                       reason=stats.down_reason, last_answer=stats.last_answer or None)
    return {"ok": True}


# -- /metrics ----------------------------------------------------------------------------
def pool_metrics(inject: object) -> list[Metric]:
    """Each pooled key the vendors have answered for: 1 in its state (ok, resting after
    a 429, refused after a 401/403 and out of its pool)."""
    pools = getattr(inject, "pools", None)
    if pools is None or not pools.keys:
        return []
    gauge = Gauge("egressguard_pool_key_state", "Keys of rules' key pools the vendors have "
                  "answered for, by key location and state (ok, resting, refused).",
                  ("key", "state"))
    for key, state in sorted(pools.snapshot().items()):
        gauge.add((key, state), 1)
    return [gauge]


def store_metrics(store: object) -> list[Metric]:
    """The Vault store's cache and errors (`VaultStore.stats`)."""
    stats = getattr(store, "stats", None)
    if stats is None:
        return []
    errors = Gauge("egressguard_secret_store_errors_total", "Vault calls (key reads and "
                   "readiness probes) that failed, by reason.", ("reason",), "counter")
    for reason, n in stats.errors.items():
        errors.add((code(reason),), n)
    return [
        Gauge("egressguard_secret_cache_hits_total", "Vendor keys served from the cache.",
              kind="counter").add((), stats.cache_hits),
        Gauge("egressguard_secret_cache_misses_total", "Vendor keys not in the cache "
              "(read from Vault, or waiting on a read under way).",
              kind="counter").add((), stats.cache_misses),
        errors,
        Gauge("egressguard_secret_store_up", "1 if Vault answered the last call.")
        .add((), 1 if stats.up else 0),
        Gauge("egressguard_secret_store_last_answer_timestamp_seconds", "When Vault last "
              "answered (0: never).").add((), stats.last_answer)]


def policy_metrics(loader: Any) -> list[Metric]:
    """The policy in force and the reloads (`PolicyLoader`)."""
    policy: Policy | None = getattr(loader, "policy", None)
    if policy is None:
        return []
    reloads = Gauge("egressguard_policy_reloads_total", "Policy reloads, by result "
                    "(failure: the file was invalid; the last good policy stayed).",
                    ("result",), "counter")
    for result, n in loader.reloads.items():
        reloads.add((result,), n)
    prices = policy.prices.digest if policy.prices is not None else ""
    return [
        Gauge("egressguard_policy_info", "The policy in force (sha256 of the file and of "
              "its price table).", ("sha256", "prices_sha256"), "info")
        .add((policy.digest, prices), 1),
        reloads,
        Gauge("egressguard_policy_reload_failing", "1 while the policy file on disk is "
              "invalid (the last good one is in force).")
        .add((), 1 if loader.reload_failing else 0)]


async def budget_metrics(policy: Policy | None, counters: Counters | None) -> list[Metric]:
    """Each policy team's limits: what the current window holds, and the cap (from the
    counters Enforce reserves against: in process or Redis)."""
    if policy is None or counters is None:
        return []
    scoped = [(name, b) for name, team in sorted(policy.teams.items()) if team.limits
              for b in limits.buckets(f"team:{name}", team.limits)]
    if not scoped:
        return []
    up = Gauge("egressguard_limits_store_up", "1 if the limit counters answered.")
    try:
        used = await counters.usage([b for _, b in scoped], time.time())
    except CountersUnavailable:
        return [up.add((), 0)]
    what = ("team", "limit")
    in_use = Gauge("egressguard_team_limit_used", "What the team's current window holds "
                   "(requests, tokens, or USD for spend limits).", what)
    caps = Gauge("egressguard_team_limit", "The team's limit, in the same unit.", what)
    for team, b in scoped:
        unit = 1 / limits.MICROS if b.metric == "spend_micros" else 1
        in_use.add((team, b.limit), used.get(b, 0) * unit)
        caps.add((team, b.limit), b.cap * unit)
    return [up.add((), 1), in_use, caps]


async def journal_metrics(audit: Any) -> str:
    """The textfile's journal and sink gauges (`housekeeping.prometheus`, with the
    cursors read now), and each sink's backlog in bytes and age (`Audit`)."""
    journal = getattr(audit, "journal", None)
    if journal is None:
        return ""
    seq = journal.seq
    behind = await asyncio.to_thread(backlogs, journal.directory, audit.sinks, seq)
    health = dataclasses.replace(audit.health, sinks={b.sink: b.cursor for b in behind})
    node = (journal.node or "",)
    by_sink = ("node", "sink")
    size = Gauge("egressguard_sink_behind_bytes", "Journal bytes not yet delivered to the "
                 "sink.", by_sink)
    age = Gauge("egressguard_sink_oldest_undelivered_age_seconds", "Age of the oldest "
                "record not yet delivered to the sink (0: none waiting).", by_sink)
    for b in behind:
        size.add((*node, b.sink), b.bytes)
        age.add((*node, b.sink), round(b.oldest_age, 3))
    failed = Gauge("egressguard_journal_failed", "1 while the journal cannot be written "
                   "(requests are refused).", ("node",))
    return housekeeping.prometheus(health, journal.node, seq) + render(
        [failed.add(node, 1 if journal.failed else 0), size, age])


def process_metrics(started: float) -> list[Metric]:
    cpu = os.times()
    out: list[Metric] = [
        Gauge("egressguard_build_info", "egressguard's version.", ("version",), "info")
        .add((_version(),), 1),
        Gauge("process_start_time_seconds", "When the proxy started.").add((), started),
        Gauge("process_cpu_seconds_total", "CPU time used by the proxy.", kind="counter")
        .add((), round(cpu.user + cpu.system, 3))]
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        out.append(Gauge("process_resident_memory_bytes", "Resident memory.")
                   .add((), pages * os.sysconf("SC_PAGE_SIZE")))
        out.append(Gauge("process_open_fds", "Open file descriptors.")
                   .add((), len(os.listdir("/proc/self/fd"))))
    except (OSError, ValueError, IndexError):  # not Linux
        pass
    return out


def _version() -> str:
    try:
        return version("egressguard")
    except PackageNotFoundError:
        return "unknown"
