"""One audit record per request, on disk before the agent sees the end of its response.

Records are written at the flow's last hook: `response` (which mitmproxy runs before
sending a buffered response, and before the end of a streamed one: its bytes flow as
the vendor sends them, its end-of-message waits for the record),
`error`, or `http_connect_error` for a tunnel refused at CONNECT. If the journal
cannot write, the agent does not get the vendor's answer: a buffered response is
replaced by a 503, a streamed one is cut off.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from egressguard.backends.journal import Journal, JournalError
from egressguard.core import records
from egressguard.core.errors import EgressError, SecretUnavailable
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
    if flow.error is not None:
        f.error = flow.error.msg
    if usage is not None:
        f.usage = usage.as_record()
    if secret is not None:
        f.credential = {"path": secret.ref.path, "version": secret.ref.version}
    return f


class Audit:
    def __init__(self) -> None:
        self.journal: Journal | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_journal", str, "",
                          "Directory of the hash-chained audit journal.")
        loader.add_option("egressguard_journal_fsync", bool, True,
                          "fsync each group of records before answering (turn off only "
                          "for throwaway set-ups).")

    def configure(self, updated: set[str]) -> None:
        directory = ctx.options.egressguard_journal
        if {"egressguard_journal", "egressguard_journal_fsync"} & updated and directory:
            if self.journal:
                self.journal.close()
            journal = Journal(Path(directory),
                              fsync=ctx.options.egressguard_journal_fsync)
            try:
                journal.open()
            except (JournalError, OSError) as exc:
                raise exceptions.OptionsError(f"cannot open the audit journal: {exc}") from None
            self.journal = journal

    def running(self) -> None:
        if self.journal is None:
            log.error("no audit journal: set egressguard_journal to a directory")

    def done(self) -> None:
        if self.journal:
            self.journal.close()
            self.journal = None

    @flowstate.fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        dest = flow.metadata.get(flowstate.DESTINATION)
        if not flow.response and dest is not None and dest.passthrough:
            if not await self._write(flow):
                flowstate.refuse(flow, _journal_down())

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
            flowstate.refuse(flow, _journal_down())

    @flowstate.fail_closed
    async def error(self, flow: http.HTTPFlow) -> None:
        await self._write(flow)

    async def policy_event(self, source: str, digest: str | None, loaded: bool,
                           message: str) -> None:
        """Record a policy (re)load, or a reload refused because the file is invalid."""
        assert self.journal is not None
        f = records.RequestFacts(
            id=records.new_id(), started=time.time(), client="", method="", host="",
            path=source, kind="policy", decision="allow" if loaded else "deny",
            reason="policy_loaded" if loaded else "policy_invalid", policy=digest,
            message=message)
        try:
            await self.journal.append(records.build(f))
        except JournalError as exc:
            log.critical("audit record of a policy reload not written: %s", exc)

    async def _write(self, flow: http.HTTPFlow) -> bool:
        """Record `flow` once; False if the journal could not take it."""
        if flow.metadata.get(flowstate.AUDITED):
            return True
        flow.metadata[flowstate.AUDITED] = True
        assert self.journal is not None
        try:
            await self.journal.append(records.build(facts(flow)))
        except JournalError as exc:
            log.critical("audit record for %s not written: %s", flowstate.begin(flow), exc)
            return False
        return True


def _journal_down() -> EgressError:
    return SecretUnavailable("the audit journal cannot be written; egressguard refuses "
                             "traffic it cannot record (operators: check disk space and "
                             "the journal directory)", reason="journal_unavailable")
