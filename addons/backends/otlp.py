"""OpenTelemetry spans out over OTLP/HTTP (protobuf), for pipeline/tracing.py.

Imported only when tracing is on: the SDK, protobuf and the exporter's HTTP client
cost start-up time and memory a proxy without a collector should not pay. Spans are
handed to a BatchSpanProcessor (a bounded queue and a worker thread that exports), so
making one costs the event loop microseconds and a slow or absent collector costs it
nothing; when the queue is full, spans are dropped (and the SDK says so), never
traffic. The standard OTEL_* variables for the exporter (headers, timeout,
compression, certificates), the batch processor (OTEL_BSP_*), the sampler and
OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES are honoured.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import requests
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from egressguard.core import logs

log = logging.getLogger(__name__)

ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
Attributes = Mapping[str, str | bool | int | float]


class OtlpConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Child:
    """A span inside the request's span (e.g. the wait for the vendor)."""

    name: str
    start: float  # epoch seconds
    end: float
    attributes: Attributes = field(default_factory=dict)
    events: tuple[tuple[str, float], ...] = ()  # (name, epoch seconds)


def resolve_endpoint(endpoint: str) -> str:
    """The URL spans go to: `endpoint`, or with `env` the standard variables'."""
    if endpoint == "env":
        traces, base = (os.environ.get(v, "").strip() for v in ENV_ENDPOINTS)
        endpoint = traces or (base.rstrip("/") + "/v1/traces" if base else "")
        if not endpoint:
            raise OtlpConfigError("otlp endpoint `env` needs OTEL_EXPORTER_OTLP_TRACES_"
                                  "ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT set")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtlpConfigError(f"otlp endpoint {endpoint!r} is not an http(s):// URL, e.g. "
                              "http://collector:4318/v1/traces")
    if parts.password:
        logs.register_secret(unquote(parts.password), "OTLP_PASSWORD")
    return endpoint


class Exporter:
    """A tracer whose spans go to one OTLP/HTTP endpoint."""

    def __init__(self, endpoint: str, node: str) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        for header in os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                                     os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")).split(","):
            logs.register_secret(unquote(header.partition("=")[2].strip()), "OTLP_HEADER")
        session = requests.Session()
        session.trust_env = False  # the collector directly, never through the agents' proxy
        resource = Resource.create({
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or "egressguard",
            "service.instance.id": node})
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint, session=session)))
        self.tracer = self.provider.get_tracer("egressguard")
        self._propagator = TraceContextTextMapPropagator()

    def parent(self, traceparent: str | None, tracestate: str | None) -> Context | None:
        """The agent's span as our span's parent (W3C trace context); None if absent
        or invalid."""
        if not traceparent:
            return None
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        context = self._propagator.extract(carrier)
        return context if trace.get_current_span(context).get_span_context().is_valid \
            else None

    def span(self, name: str, parent: Context | None, start: float, end: float,
             attributes: Attributes, error: str | None = None,
             children: tuple[Child, ...] = ()) -> None:
        """One finished span (times in epoch seconds), with its children."""
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes, start_time=_ns(start))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        if children and span.is_recording():
            inside = trace.set_span_in_context(span)
            for c in children:
                child = self.tracer.start_span(c.name, context=inside, kind=SpanKind.CLIENT,
                                               attributes=c.attributes, start_time=_ns(c.start))
                for event, at in c.events:
                    child.add_event(event, timestamp=_ns(at))
                child.end(end_time=_ns(c.end))
        span.end(end_time=_ns(end))

    def flush(self, timeout: float) -> bool:
        """Export what is queued (for tests); False if it took longer than `timeout`."""
        return self.provider.force_flush(int(timeout * 1000))

    def close(self, timeout: float) -> None:
        """Export what is queued and stop, waiting at most `timeout` seconds: a
        collector that does not answer must not hold up the proxy's exit."""
        worker = threading.Thread(target=self.provider.shutdown, name="otlp-shutdown",
                                  daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            log.warning("spans still queued for %s were not exported within %gs",
                        self.endpoint, timeout)


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1e9)
