"""One audit record per request, on disk before the agent sees the end of its response.

Records are written at the flow's last hook: `response` (which mitmproxy runs before
sending a buffered response, and before the end of a streamed one: its bytes flow as
the vendor sends them, its end-of-message waits for the record),
`error`, or `http_connect_error` for a tunnel refused at CONNECT. If the journal
cannot write, the agent does not get the vendor's answer: a buffered response is
replaced by a 503, a streamed one is cut off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http

from egressguard.backends import housekeeping
from egressguard.backends.journal import Journal, JournalError, JournalFull, Settings
from egressguard.backends.signing import SigningKeyError, load_signing_key
from egressguard.core import limits, records
from egressguard.core.errors import EgressError, SecretUnavailable
from egressguard.core.limits import PriceTable
from egressguard.core.sinkconfig import load_sinks
from egressguard.core.usage import Usage
from egressguard.core.yamlsource import ConfigError
from egressguard.pipeline import flowstate
from egressguard.pipeline.response import StreamTap

log = logging.getLogger(__name__)


def facts(flow: http.HTTPFlow) -> records.RequestFacts:
    """Everything the pipeline learned about `flow`, as plain data."""
    meta = flow.metadata
    rid = flowstate.begin(flow)  # a flow that failed before any of our hooks ran too
    started, perf_start = meta[flowstate.STARTED]
    req, resp = flow.request, flow.response
    dest = meta.get(flowstate.DESTINATION)
    principal = meta.get(flowstate.PRINCIPAL)
    info = meta.get(flowstate.REQUEST)
    refusal: EgressError | None = meta.get(flowstate.REFUSAL)
    secret = meta.get(flowstate.SECRET)
    usage = meta.get(flowstate.USAGE)
    f = records.RequestFacts(
        id=rid, started=started,
        client="{}:{}".format(*flow.client_conn.peername[:2]),
        method=req.method, host=dest.host if dest else req.pretty_host,
        path=req.path.split("?", 1)[0] if req.method != "CONNECT" else "",
        kind="connect" if req.method == "CONNECT" else "request",
        latency_ms=round((time.perf_counter() - perf_start) * 1000, 3),
        bytes_in=len(req.raw_content or b""),
    )
    if principal is not None:
        f.agent, f.team, f.token_id = principal.agent, principal.team, principal.token_id
    if (policy := meta.get(flowstate.POLICY)) is not None:
        f.policy = policy.digest or None
    if (decision := meta.get(flowstate.DECISION)) is not None:
        f.rule = decision.rule_name
        f.team = decision.team
    f.clamps = meta.get(flowstate.CLAMPS)
    f.limits = meta.get(flowstate.LIMITS)
    f.redactions = meta.get(flowstate.REDACTIONS)
    if (mask := meta.get(flowstate.ANSWER_MASK)) is not None:
        f.response_redactions = mask.record()
    if dest is not None and dest.vendor is not None:
        f.vendor = dest.vendor.name
    if info is not None:
        f.model, f.stream = info.model, info.stream
    if refusal is not None:
        f.decision, f.reason, f.message = "deny", refusal.reason, refusal.message
    elif dest is not None and dest.passthrough:
        f.reason = "passthrough"
    if resp is not None:
        f.status = resp.status_code
        tap = resp.stream if isinstance(resp.stream, StreamTap) else None
        f.bytes_out = tap.bytes if tap else len(resp.raw_content or b"")
        if refusal is None and resp.timestamp_start and req.timestamp_end:
            f.upstream_ms = round((resp.timestamp_start - req.timestamp_end) * 1000, 3)
    if flow.error is not None:  # a flow shutdown cut off says so (not "client disconnected")
        f.error = meta.get(flowstate.SHUTDOWN_CUT) or flow.error.msg
    f.routing, f.cache = meta.get(flowstate.ROUTING), meta.get(flowstate.CACHE)
    f.attempts, f.served_by = meta.get(flowstate.ATTEMPTS) or None, meta.get(flowstate.SERVED_BY)
    if usage is not None:
        _spend(f, usage, policy.prices if policy is not None and refusal is None else None)
    if secret is not None:
        f.credential = {"path": secret.ref.path, "version": secret.ref.version}
    return f


def _spend(f: records.RequestFacts, usage: Usage, prices: PriceTable | None) -> None:
    """Usage and spend at the price of what served the request (a fallback's model, if
    one answered); what the cache and the routing saved against what was asked for."""
    f.usage = usage.as_record()
    served = f.served_by or {"vendor": f.vendor, "model": f.model}

    def cost(vendor: str | None, model: str | None) -> float | None:
        price = prices.price(vendor, model) if prices and vendor and model else None
        settled = limits.settled(usage, price) if price else None
        return settled.spend_micros / 1_000_000 if settled else None

    f.spend_usd = cost(served["vendor"], served["model"])
    if (f.cache or {}).get("status") == "hit":  # nothing was sent: nothing spent
        tokens = sum(v for k, v in f.usage.items() if k in ("input_tokens", "output_tokens")
                     and isinstance(v, int))
        f.savings = {"cache_tokens": tokens, "cache_usd": f.spend_usd}
        f.usage, f.spend_usd = None, 0.0
    elif f.routing is not None:  # at the rule's vendor: a failover's price is not routing's
        asked, routed = cost(f.vendor, f.routing["requested_model"]), cost(f.vendor, f.model)
        if asked is not None and routed is not None:
            f.savings = {"routing_usd": round(asked - routed, 9)}


_JOURNAL_OPTIONS = {
    "egressguard_journal", "egressguard_journal_fsync", "egressguard_node",
    "egressguard_signing_key", "egressguard_journal_segment_bytes",
    "egressguard_journal_segment_age", "egressguard_checkpoint_records",
    "egressguard_checkpoint_seconds"}
_HOUSEKEEPING_OPTIONS = {
    "egressguard_sinks", "egressguard_journal_max_bytes", "egressguard_journal_retention",
    "egressguard_journal_when_full"}
HOUSEKEEPING_EVERY = 5.0  # seconds between passes
METRICS_FILE = "egressguard.prom"  # for node exporter's textfile collector
# told of every request record once its write ended: (flow, facts, written to disk)
Listener = Callable[[http.HTTPFlow, records.RequestFacts, bool], None]


class Audit:
    def __init__(self) -> None:
        self.journal: Journal | None = None
        self.sinks: list[str] = []
        self.retention = housekeeping.Retention()
        self.health = housekeeping.Health()
        self._housekeeper: asyncio.Task[None] | None = None
        self.clock = ClockWatch()
        self.listeners: list[Listener] = []  # e.g. pipeline/metrics.py

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_journal", str, "",
                          "Directory of the hash-chained audit journal.")
        loader.add_option("egressguard_journal_fsync", bool, True,
                          "fsync each group of records before answering (turn off only "
                          "for throwaway set-ups).")
        loader.add_option("egressguard_node", str, "",
                          "Name of this instance in its records (default: the host name).")
        loader.add_option("egressguard_signing_key", str, "",
                          "Ed25519 key that signs checkpoints: a file (created 0600 if "
                          "missing) or vault:MOUNT/PATH#FIELD. Empty: no checkpoints.")
        loader.add_option("egressguard_journal_segment_bytes", int, 64 << 20,
                          "Start a new journal file past this size.")
        loader.add_option("egressguard_journal_segment_age", float, 3600.0,
                          "Start a new journal file after this many seconds.")
        loader.add_option("egressguard_checkpoint_records", int, 1000,
                          "Write a signed checkpoint every this many records.")
        loader.add_option("egressguard_checkpoint_seconds", float, 60.0,
                          "Write a signed checkpoint this many seconds after a record.")
        loader.add_option("egressguard_sinks", str, "",
                          "Sinks file: journal files are kept until every sink has them.")
        loader.add_option("egressguard_journal_max_bytes", int, 0,
                          "Disk cap of the journal (0: none).")
        loader.add_option("egressguard_journal_retention", float, 0.0,
                          "Seconds a journal file every sink has is kept (0: for ever).")
        loader.add_option("egressguard_journal_when_full", str, "drop-delivered",
                          "At the disk cap: drop-delivered (remove the oldest files every "
                          "sink has) or refuse (remove nothing); requests that cannot be "
                          "recorded are refused either way.")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if _HOUSEKEEPING_OPTIONS & updated:
            self._configure_housekeeping()
        directory = o.egressguard_journal
        if not (_JOURNAL_OPTIONS & updated and directory):
            return
        settings = Settings(segment_bytes=o.egressguard_journal_segment_bytes,
                            segment_age=o.egressguard_journal_segment_age,
                            checkpoint_records=o.egressguard_checkpoint_records,
                            checkpoint_seconds=o.egressguard_checkpoint_seconds)
        if min(settings.segment_bytes, settings.checkpoint_records) <= 0 or \
                min(settings.segment_age, settings.checkpoint_seconds) <= 0:
            raise exceptions.OptionsError("journal segment size and age, and checkpoint "
                                          "records and seconds, must be above 0")
        try:
            key = load_signing_key(o.egressguard_signing_key,
                                   getattr(o, "egressguard_vault_timeout", 2.0)) \
                if o.egressguard_signing_key else None
        except SigningKeyError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        if self.journal:
            self.journal.close()
        journal = Journal(Path(directory), fsync=o.egressguard_journal_fsync,
                          settings=settings, key=key,
                          node=o.egressguard_node or socket.gethostname())
        try:
            journal.open()
        except (JournalError, OSError) as exc:
            raise exceptions.OptionsError(f"cannot open the audit journal: {exc}") from None
        self.journal = journal

    def _configure_housekeeping(self) -> None:
        o = ctx.options
        if o.egressguard_journal_when_full not in housekeeping.WHEN_FULL:
            raise exceptions.OptionsError(
                f"egressguard_journal_when_full is one of {', '.join(housekeeping.WHEN_FULL)}; "
                f"found {o.egressguard_journal_when_full!r}")
        if o.egressguard_journal_max_bytes < 0 or o.egressguard_journal_retention < 0:
            raise exceptions.OptionsError("the journal's disk cap and retention are 0 (none) "
                                          "or above")
        try:
            self.sinks = load_sinks(Path(o.egressguard_sinks)).names \
                if o.egressguard_sinks else []
        except ConfigError as exc:
            raise exceptions.OptionsError(f"invalid sinks file:\n{exc}") from None
        self.retention = housekeeping.Retention(
            max_bytes=o.egressguard_journal_max_bytes, max_age=o.egressguard_journal_retention,
            when_full=o.egressguard_journal_when_full)

    def running(self) -> None:
        if self.journal is None:
            log.error("no audit journal: set egressguard_journal to a directory")
            return
        self._housekeeper = asyncio.ensure_future(self._keep_house())

    def done(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        if self.journal:
            self.journal.close()
            self.journal = None

    async def _keep_house(self) -> None:
        while True:
            await self.keep_house()
            await asyncio.sleep(HOUSEKEEPING_EVERY)

    async def keep_house(self) -> None:
        """One pass: compress, retire and cap the journal's files, off the event loop;
        turn requests away while the journal is full, loudly."""
        journal = self.journal
        if journal is None:
            return
        if journal.failed:  # room again after a full disk? (it says so itself)
            journal.recover()
        if (jump := self.clock.jumped()) is not None:
            message = f"by {jump:+.0f}s (now {records.rfc3339(time.time())})"
            log.warning("the wall clock jumped %s: record times, token expiry and limit "
                        "windows follow the new time; the journal's order and chain do not "
                        "depend on it", message)
            await self._own_event("clock", "clock_jump", message)
        try:
            health = await asyncio.to_thread(housekeeping.run, journal.directory,
                                             journal.segment, self.sinks, self.retention)
        except OSError as exc:
            log.error("audit journal housekeeping failed: %s", exc)
            return
        _replace(journal.directory / METRICS_FILE,
                 housekeeping.prometheus(health, journal.node, journal.seq))
        if health.full and not journal.full:
            log.critical("AUDIT JOURNAL FULL, refusing requests: %s", health.full)
        elif journal.full and not health.full:
            log.warning("audit journal has room again: serving requests")
        elif health.full:
            log.critical("audit journal still full: %s", health.full)
        journal.full, self.health = health.full, health

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request that could not be recorded is refused before it goes anywhere."""
        if not flowstate.is_live_request(flow) or self.journal is None:
            return
        if self.journal.full or self.journal.failed:
            flowstate.refuse(flow, self._down())

    @flowstate.fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        dest = flow.metadata.get(flowstate.DESTINATION)
        if not flow.response and dest is not None and dest.passthrough:
            if not await self._write(flow):
                flowstate.refuse(flow, self._down())

    @flowstate.fail_closed
    async def http_connect_error(self, flow: http.HTTPFlow) -> None:
        await self._write(flow)

    @flowstate.fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        if await self._write(flow):
            return
        assert flow.response is not None
        if isinstance(flow.response.stream, StreamTap):
            flow.kill()  # the stream must not complete unaudited
        else:
            flowstate.refuse(flow, self._down())

    @flowstate.fail_closed
    async def error(self, flow: http.HTTPFlow) -> None:
        await self._write(flow)

    async def websocket_end(self, flow: http.HTTPFlow) -> None:
        """A WebSocket session's second record, with its frame and redaction counts,
        linked to its upgrade's record (`realtime.Session.summarise`). The session is
        over: a journal that cannot take it can only be reported."""
        session = flow.metadata.get(flowstate.WEBSOCKET)
        if session is None or self.journal is None:
            return
        f = facts(flow)
        f.id, f.node = records.new_id(), self.journal.node
        session.summarise(f, upgrade_id=flowstate.begin(flow))
        try:
            await self.journal.append(records.build(f))
        except JournalError as exc:
            log.critical("audit record of the close of WebSocket session %s not written: %s",
                         flowstate.begin(flow), exc)

    async def policy_event(self, source: str, digest: str | None, loaded: bool,
                           message: str) -> None:
        """Record a policy (re)load, or a reload refused because the file is invalid."""
        await self._own_event("policy", "policy_loaded" if loaded else "policy_invalid",
                              message, decision="allow" if loaded else "deny", path=source,
                              policy=digest)

    async def _own_event(self, kind: str, reason: str, message: str, **facts: Any) -> None:
        """Record something egressguard itself did or saw (no agent in it)."""
        assert self.journal is not None
        f = records.RequestFacts(
            id=records.new_id(), started=time.time(), client="", method="", host="",
            path=facts.pop("path", ""), kind=kind, decision=facts.pop("decision", "allow"),
            reason=reason, message=message, node=self.journal.node, **facts)
        try:
            await self.journal.append(records.build(f))
        except JournalError as exc:
            log.critical("audit record of a %s event not written: %s", kind, exc)

    def _down(self) -> EgressError:
        return _journal_down(self.journal.full if self.journal else None)

    async def _write(self, flow: http.HTTPFlow) -> bool:
        """Record `flow` once; False if the journal could not take it."""
        if flow.metadata.get(flowstate.AUDITED):
            return True
        flow.metadata[flowstate.AUDITED] = True
        assert self.journal is not None
        f = facts(flow)
        f.node = self.journal.node
        try:
            await self.journal.append(records.build(f))
            written = True
        except JournalFull:
            written = False  # said loudly by housekeeping, not once per request
        except JournalError as exc:
            log.critical("audit record for %s not written: %s", flowstate.begin(flow), exc)
            written = False
        for listener in self.listeners:
            try:
                listener(flow, f, written)
            except Exception:  # noqa: BLE001 - the record is written: the request goes on
                log.exception("audit listener %r failed", listener)
        return written


class ClockWatch:
    """Notices the wall clock stepping (NTP correcting a drifted clock, a VM resumed, an
    operator's `date -s`): the monotonic clock does not step, so their difference
    changes by the size of the jump."""

    TOLERANCE = 2.0  # seconds: slewing and scheduling noise stay below

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def jumped(self) -> float | None:
        """Seconds the wall clock jumped since the last call, or None."""
        offset = time.time() - time.monotonic()
        jump, self._offset = offset - self._offset, offset
        return jump if abs(jump) > self.TOLERANCE else None


def _replace(path: Path, text: str) -> None:
    """Write a whole file so a reader never sees half of it."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


def _journal_down(full: str | None = None) -> EgressError:
    if full:
        return SecretUnavailable(f"egressguard refuses requests it cannot record: {full}",
                                 reason="journal_full")
    return SecretUnavailable("the audit journal cannot be written; egressguard refuses "
                             "traffic it cannot record (operators: check disk space and "
                             "the journal directory)", reason="journal_unavailable")
