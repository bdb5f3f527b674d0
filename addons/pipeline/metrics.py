"""Prometheus metrics, and health and readiness, on a port of their own
(`egressguard_metrics_listen`): /metrics, /healthz, /readyz.

Request metrics come from the audit record's facts, once per flow: Audit tells its
listeners after each write, so they count what the journal holds and nothing is
worked out twice. The rest (the Vault store's cache and errors, policy reloads,
budgets used, the journal and each sink's backlog) is read when Prometheus scrapes,
from the other addons and the sinks' cursors on disk. Label values come only from
bounded sets: catalogue vendor names, allow/deny, status codes, stable reason codes,
entity types and actions, team names the policy declares; never a path, a model or an
agent name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from mitmproxy import ctx, exceptions, http

from egressguard.backends.statusserver import Answer, StatusServer
from egressguard.core.metrics import (
    OVERHEAD_BUCKETS,
    UPSTREAM_BUCKETS,
    Counter,
    Histogram,
    Metric,
    render,
)
from egressguard.core.records import RequestFacts
from egressguard.pipeline import flowstate
from egressguard.pipeline import scrape as collect
from egressguard.pipeline.scrape import code

log = logging.getLogger(__name__)

SENT = "egressguard.sent"  # epoch seconds the request left the pipeline for the vendor
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATUS = {code: str(code) for code in range(100, 600)}  # the label, without formatting


def parse_listen(text: str) -> tuple[str, int] | None:
    """"HOST:PORT" (IPv6 in brackets) -> (host, port); "" -> None (off)."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise exceptions.OptionsError(f"egressguard_metrics_listen: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "egressguard_requests_total", "Requests recorded, by vendor, kind (request, or "
            "connect: a tunnel refused or passed through), decision and HTTP status the "
            "agent got (none: the connection failed first).",
            ("vendor", "kind", "decision", "status"))
        self.denials = Counter("egressguard_denials_total", "Refused requests, by vendor "
                               "and reason code.", ("vendor", "reason"))
        self.duration = Histogram(
            "egressguard_request_duration_seconds", "From the request's arrival to its "
            "audit record (for a stream: its end).", ("vendor",), UPSTREAM_BUCKETS)
        self.upstream = Histogram(
            "egressguard_upstream_seconds", "From the request leaving egressguard to the "
            "vendor's response headers (time to first byte).", ("vendor",), UPSTREAM_BUCKETS)
        self.overhead = Histogram(
            "egressguard_overhead_seconds", "egressguard's own time per request: the total "
            "less the time waiting for the vendor's answer and its body or stream.",
            ("vendor",), OVERHEAD_BUCKETS)
        self.redactions = Counter(
            "egressguard_redactions_total", "Entities found, by type, action taken and "
            "direction (request, or response: secrets in the answer).",
            ("entity", "action", "direction"))
        self.tokens = Counter("egressguard_tokens_total", "Tokens the vendors reported, by "
                              "vendor, team and direction (input, output).",
                              ("vendor", "team", "direction"))
        self.spend = Counter("egressguard_spend_usd_total", "Spend at the policy's price "
                             "table, by vendor and team.", ("vendor", "team"))
        self.attempts = Counter(
            "egressguard_upstream_attempts_total", "Attempts the relay made (rules with "
            "retry, fallback, cache or a key pool), by vendor and outcome (2xx, 4xx, 429, "
            "5xx, error: no answer, skipped: not sent).", ("vendor", "outcome"))
        self.failovers = Counter("egressguard_failovers_total", "Requests a fallback vendor "
                                 "answered, by the rule's vendor and the fallback's.",
                                 ("vendor", "fallback"))
        self.cache = Counter("egressguard_cache_requests_total", "Requests under a rule with "
                             "a cache, by outcome (hit, miss, bypass) and kind of hit.",
                             ("status", "kind"))
        self.saved = Counter("egressguard_saved_usd_total", "Spend avoided at the policy's "
                             "price table, by team and by what saved it (cache, routing).",
                             ("team", "by"))
        self.unwritten = Counter("egressguard_audit_write_failures_total", "Requests whose "
                                 "audit record could not be written (they were refused).")
        self.listen: tuple[str, int] | None = None
        self.address: tuple[str, int] | None = None  # where the server listens
        self.server: StatusServer | None = None
        self._prober: asyncio.Future[None] | None = None
        self._teams: tuple[object, frozenset[str]] = (None, frozenset())
        self._started = time.time()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_metrics_listen", str, "",
                          "HOST:PORT for /metrics, /healthz and /readyz (empty: off).")
        loader.add_option("egressguard_ready_probe", float, 5.0,
                          "Seconds between readiness probes of Vault (token lookup-self).")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_metrics_listen" in updated:
            self.listen = parse_listen(ctx.options.egressguard_metrics_listen)
        if ctx.options.egressguard_ready_probe <= 0:
            raise exceptions.OptionsError("egressguard_ready_probe must be above 0 seconds")
        audit = ctx.master.addons.get("audit")
        if audit is not None and self.observe not in audit.listeners:
            audit.listeners.append(self.observe)

    async def running(self) -> None:
        if self.listen is None or self.server is not None:
            return
        server = StatusServer({"/metrics": self.scrape, "/healthz": self.health,
                               "/readyz": self.ready})
        try:
            self.address = await server.start(*self.listen)
        except OSError as exc:  # logged as an error: mitmproxy's start-up check exits
            log.error("cannot serve metrics on %s:%d: %s", *self.listen, exc.strerror or exc)
            return
        self.server = server
        self._prober = asyncio.ensure_future(self._probe())
        log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz",
                 *self.address)

    def done(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        if self.server is not None:
            self.server.close()
            self.server = None

    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """After every addon that may refuse or change the request: it leaves now."""
        if flowstate.is_live_request(flow):
            flow.metadata[SENT] = time.time()

    # -- the request path: one call per audit record -------------------------------------
    def observe(self, flow: http.HTTPFlow, f: RequestFacts, written: bool) -> None:
        vendor = f.vendor or "none"
        self.requests.inc((vendor, f.kind, f.decision, _STATUS.get(f.status, "none")))
        if not written:
            self.unwritten.inc()
        if f.decision == "deny":
            self.denials.inc((vendor, code(f.reason)))
        if f.kind != "request" or f.latency_ms is None:
            return
        total = f.latency_ms / 1000
        self.duration.observe((vendor,), total)
        self.overhead.observe((vendor,), max(0.0, total - self._upstream(flow, vendor)))
        if f.redactions or f.response_redactions:
            self._redactions(f)
        if f.attempts or f.cache or f.savings:
            self._resilience(flow, f, vendor)
        if f.usage or f.spend_usd:
            team = self._team(flow, f.team)
            if f.usage:
                self.tokens.inc((vendor, team, "input"), f.usage.get("input_tokens") or 0)
                self.tokens.inc((vendor, team, "output"), f.usage.get("output_tokens") or 0)
            if f.spend_usd:
                self.spend.inc((vendor, team), f.spend_usd)

    def _resilience(self, flow: http.HTTPFlow, f: RequestFacts, vendor: str) -> None:
        for attempt in f.attempts or ():
            self.attempts.inc((attempt["vendor"], _outcome(attempt["status"])))
        if f.served_by:
            self.failovers.inc((vendor, f.served_by["vendor"]))
        if f.cache:
            self.cache.inc((f.cache["status"], f.cache.get("kind", "")))
        if f.savings:
            team = self._team(flow, f.team)
            for by in ("cache", "routing"):
                if amount := f.savings.get(f"{by}_usd"):
                    self.saved.inc((team, by), amount)

    def _redactions(self, f: RequestFacts) -> None:
        for direction, found in (("request", f.redactions),
                                 ("response", f.response_redactions)):
            for entity, actions in (found or {}).items():
                for action, n in actions.items():
                    self.redactions.inc((code(entity), code(action), direction), n)

    def _upstream(self, flow: http.HTTPFlow, vendor: str) -> float:
        """Observe the vendor's time to first byte; return how long the request waited
        on the vendor in all (headers, then body or stream, or a failed connection)."""
        sent, resp = flow.metadata.get(SENT), flow.response
        if sent is None:
            return 0.0  # never left egressguard
        if resp is not None and resp.timestamp_start >= sent:
            self.upstream.observe((vendor,), resp.timestamp_start - sent)
            return (resp.timestamp_end or resp.timestamp_start) - sent
        if flow.error is not None:
            return max(0.0, flow.error.timestamp - sent)
        return 0.0

    def _team(self, flow: http.HTTPFlow, team: str | None) -> str:
        """The team as a label: a team the policy declares, else "other" (or "none")."""
        policy = flow.metadata.get(flowstate.POLICY)
        if policy is not self._teams[0]:
            self._teams = (policy, frozenset(getattr(policy, "teams", ())))
        return "none" if team is None else team if team in self._teams[1] else "other"

    # -- endpoints ----------------------------------------------------------------------
    async def health(self) -> Answer:
        """Answering at all proves the event loop turns."""
        return Answer(200, "text/plain; charset=utf-8", b"ok\n")

    async def ready(self) -> Answer:
        loader, audit = _addon("policyloader"), _addon("audit")
        checks = collect.checks(getattr(loader, "policy", None), ctx.options.confdir,
                                getattr(_addon("inject"), "store", None),
                                getattr(audit, "journal", None))
        if getattr(_addon("shutdown"), "draining", False):  # load balancers: go elsewhere
            checks["shutdown"] = {"ok": False, "error": "shutting down"}
        ready = all(c["ok"] for c in checks.values())
        return Answer(200 if ready else 503, "application/json",
                      orjson.dumps({"ready": ready, "checks": checks}))

    async def scrape(self) -> Answer:
        loader = _addon("policyloader")
        families: list[Metric] = [
            self.requests, self.denials, self.duration, self.upstream, self.overhead,
            self.redactions, self.tokens, self.spend, self.attempts, self.failovers,
            self.cache, self.saved, self.unwritten, *collect.pool_metrics(_addon("inject")),
            *collect.store_metrics(getattr(_addon("inject"), "store", None)),
            *collect.policy_metrics(loader),
            *await collect.budget_metrics(getattr(loader, "policy", None),
                                          getattr(_addon("enforce"), "counters", None)),
            *collect.process_metrics(self._started)]
        text = render(families) + await collect.journal_metrics(_addon("audit"))
        return Answer(200, CONTENT_TYPE, text.encode())

    async def _probe(self) -> None:
        """Ask Vault at start and then every `egressguard_ready_probe` seconds, so
        readiness follows it even while every key is served from the cache."""
        while True:
            store = getattr(_addon("inject"), "store", None)
            try:
                if hasattr(store, "ping"):
                    await store.ping()
            except Exception:  # noqa: BLE001 - readiness must keep following Vault
                log.exception("readiness probe of Vault failed")
            await asyncio.sleep(ctx.options.egressguard_ready_probe)


def _outcome(status: int | None) -> str:
    if status is None:
        return "skipped"
    if status == 0:
        return "error"
    return "429" if status == 429 else f"{status // 100}xx"


def _addon(name: str) -> Any:
    return ctx.master.addons.get(name)
