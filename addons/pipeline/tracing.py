"""OpenTelemetry traces, off unless `egressguard_otlp_endpoint` names a collector.

One span per audit record of an agent's request (Audit tells its listeners after each
write), named `egressguard VENDOR ENDPOINT`, from the request's arrival to its record
(for a stream: its end), with the record's facts as attributes -- its id
(`egressguard.request_id`), agent, team, vendor, model, decision, reason, rule,
status, token counts, bytes -- and never what could carry a secret or personal data:
no header, key or token, no prompt or answer, no path or query, no client address,
no refusal message. A child span `vendor` covers the wait for the vendor, from the
request leaving egressguard to the end of its answer (an event marks the response
headers); the rest of the parent is egressguard's own time (identity, policy,
redaction, the key from Vault).

Trace context: an agent's `traceparent` (and `tracestate`) makes our span a child of
the agent's; egressguard then takes both headers off the request, and never adds its
own: trace ids are internal, and no vendor reads them. With tracing off the headers
are not looked at (nor the OpenTelemetry packages imported): the request goes as the
agent sent it, as any header that is not a credential does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions, http

from egressguard.core.records import RequestFacts
from egressguard.pipeline import flowstate

if TYPE_CHECKING:
    from egressguard.backends.otlp import Child, Exporter

log = logging.getLogger(__name__)

PARENT = "egressguard.trace_parent"  # (traceparent, tracestate) the agent sent
SENT = "egressguard.trace_sent"  # epoch seconds the request left for the vendor
FLUSH_AT_EXIT = 3.0  # seconds queued spans get at shutdown


class Tracing:
    """Declares the option and makes the spans. Per-request work (the trace context,
    the time a request leaves) is done by a child addon that exists only while tracing
    is on -- the `addons` attribute, as mitmproxy's script loader keeps its scripts --
    so with tracing off mitmproxy calls nothing of it on any request."""

    def __init__(self) -> None:
        self.exporter: Exporter | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_otlp_endpoint", str, "",
                          "Send one span per request over OTLP/HTTP (protobuf) to this URL, "
                          "e.g. http://collector:4318/v1/traces; `env`: the standard "
                          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. Empty: no tracing.")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_otlp_endpoint" not in updated:
            return
        endpoint = ctx.options.egressguard_otlp_endpoint.strip()
        audit = ctx.master.addons.get("audit")
        self._stop(audit)
        if not endpoint:
            return
        if audit is None:
            raise exceptions.OptionsError("tracing needs the audit addon: spans are made "
                                          "from its records")
        try:
            from egressguard.backends.otlp import Exporter, OtlpConfigError
        except ImportError as exc:
            raise exceptions.OptionsError(
                f"tracing needs the OpenTelemetry packages ({exc.name} is missing): "
                "pip install 'egressguard[otel]'") from None
        try:
            self.exporter = Exporter(endpoint, getattr(ctx.options, "egressguard_node", "")
                                     or socket.gethostname())
        except OtlpConfigError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        audit.listeners.append(self.observe)
        child = TraceRequests()
        ctx.master.addons.register(child)
        self.addons = [child]
        log.info("tracing: one span per request to %s", self.exporter.endpoint)

    def done(self) -> None:
        if self.exporter is not None:
            self.exporter.close(FLUSH_AT_EXIT)
            self.exporter = None

    def _stop(self, audit: Any) -> None:
        if self.exporter is not None:
            self.exporter.close(FLUSH_AT_EXIT)
            self.exporter = None
        if audit is not None and self.observe in audit.listeners:
            audit.listeners.remove(self.observe)
        if "addons" in self.__dict__:
            ctx.master.addons.remove(self.addons[0])
            del self.addons

    def observe(self, flow: http.HTTPFlow, f: RequestFacts, written: bool) -> None:
        """Audit's listener: the span of the record just written. What it says is taken
        now; the SDK's part (tens of microseconds: it validates every attribute) runs
        after the hook, so the agent's answer does not wait for it."""
        exporter = self.exporter
        if exporter is None:
            return
        end = f.started + (f.latency_ms or 0.0) / 1000
        span = (_name(flow, f), flow.metadata.get(PARENT), f.started, end,
                attributes(f, written), _error(f), _children(flow, f, end))
        asyncio.get_running_loop().call_soon(_emit, exporter, span)


class TraceRequests:
    """Tracing's per-request part, there only while tracing is on."""

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """The agent's trace context: kept for our span, taken off the request."""
        headers = flow.request.headers
        if "traceparent" in headers or "tracestate" in headers:
            flow.metadata[PARENT] = (headers.get("traceparent"), headers.get("tracestate"))
            headers.pop("traceparent", None)
            headers.pop("tracestate", None)

    def request(self, flow: http.HTTPFlow) -> None:
        """After every other addon's `request` (Tracing is near the end): the request
        leaves for the vendor now."""
        if flowstate.is_live_request(flow):
            flow.metadata[SENT] = time.time()


def _emit(exporter: Exporter, span: tuple[Any, ...]) -> None:
    name, parent, start, end, attrs, error, children = span
    try:
        exporter.span(name, exporter.parent(*parent) if parent else None, start, end, attrs,
                      error=error, children=children)
    except Exception:  # noqa: BLE001 - a span is never worth more than a log line
        log.exception("span of request %s not made", attrs.get("egressguard.request_id"))


def attributes(f: RequestFacts, written: bool = True) -> dict[str, Any]:
    """What a span says of its request: the record's facts that name no secret, no
    personal data and nothing the agent wrote."""
    out: dict[str, Any] = {
        "egressguard.request_id": f.id, "egressguard.kind": f.kind,
        "egressguard.decision": f.decision, "egressguard.reason": f.reason,
        "egressguard.audit_written": written,
        "http.request.method": f.method or None, "server.address": f.host or None,
        "http.response.status_code": f.status, "egressguard.agent": f.agent,
        "egressguard.team": f.team, "egressguard.rule": f.rule,
        "egressguard.vendor": f.vendor, "gen_ai.provider.name": f.vendor,
        "gen_ai.request.model": f.model, "egressguard.stream": f.stream,
        "http.request.body.size": f.bytes_in, "http.response.body.size": f.bytes_out,
        "egressguard.spend_usd": f.spend_usd,
    }
    if f.usage:
        out["gen_ai.usage.input_tokens"] = f.usage.get("input_tokens")
        out["gen_ai.usage.output_tokens"] = f.usage.get("output_tokens")
    if f.redactions:
        out["egressguard.redactions"] = sum(n for a in f.redactions.values() for n in a.values())
    return {k: v for k, v in out.items() if v is not None}


def _name(flow: http.HTTPFlow, f: RequestFacts) -> str:
    if f.kind != "request":
        return f"egressguard {f.method or f.kind}"
    info = flow.metadata.get(flowstate.REQUEST)
    endpoint = getattr(info, "endpoint", None) or f.method
    return f"egressguard {f.vendor or 'unknown'} {endpoint}"


def _error(f: RequestFacts) -> str | None:
    """A failure of the exchange (not a refusal: that is the proxy doing its job)."""
    if f.error:
        return f.error
    if f.status is not None and f.status >= 500:
        return f.reason if f.decision == "deny" else f"HTTP {f.status}"
    return None


def _children(flow: http.HTTPFlow, f: RequestFacts, end: float) -> tuple[Child, ...]:
    sent = flow.metadata.get(SENT)
    if sent is None:  # never left egressguard
        return ()
    from egressguard.backends.otlp import Child

    resp = flow.response
    events: tuple[tuple[str, float], ...] = ()
    attrs: dict[str, Any] = {"server.address": f.host}
    if resp is not None and resp.timestamp_start >= sent and f.decision != "deny":
        events = (("response headers", resp.timestamp_start),)
        attrs["http.response.status_code"] = resp.status_code
        answered = resp.timestamp_end or end
    elif flow.error is not None:
        answered = flow.error.timestamp
    else:
        answered = end
    return (Child("vendor", sent, max(sent, min(answered, end)), attrs, events),)
