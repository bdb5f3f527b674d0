"""OpenTelemetry traces (pipeline/tracing.py, backends/otlp.py), read by a real OTLP/HTTP
receiver on loopback: one span per audit record, the record's facts, the agent's
trace as parent, and never a key, a token or what the agent wrote."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import REAL_KEYS, Pipeline
from mitmproxy import exceptions
from otlp_receiver import OtlpReceiver, Span

from egressguard.backends.otlp import OtlpConfigError, resolve_endpoint
from egressguard.cli import parser
from egressguard.core.secret import SecretLocation
from egressguard.pipeline import flowstate
from egressguard.tools.serve import ServeConfig, mitmproxy_options

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PROMPT = "Write to jane.doe@example.com about case ZEBRA-7731"
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
ERROR = 2  # OTLP status code


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def traced(pipeline: Pipeline, receiver: OtlpReceiver) -> Pipeline:
    pipeline.tctx.options.update(egressguard_otlp_endpoint=receiver.url)
    assert pipeline.tracing.exporter is not None
    # the team's key, where the test policy says team keys live
    pipeline.store.values[SecretLocation("secret", "egressguard/teams/red/openai",
                                         "api_key")] = REAL_KEYS["openai"]
    return pipeline


def exported(pipeline: Pipeline, receiver: OtlpReceiver) -> list[Span]:
    # spans are made just after the hook that wrote the record: let the loop run them
    pipeline.tctx.master.event_loop.run_until_complete(asyncio.sleep(0))
    assert pipeline.tracing.exporter.flush(10)
    return receiver.spans()


def send(pipeline: Pipeline, token: str | None, traceparent: str | None = TRACEPARENT,
         **kw: object) -> object:
    headers = [("authorization", f"Bearer {token}")] if token else []
    if traceparent:
        headers += [("traceparent", traceparent), ("tracestate", "vendor=agent")]
    return pipeline.send("api.openai.com", headers=headers, body=BODY, **kw)


def test_one_span_per_request_with_the_records_facts(traced: Pipeline,
                                                      receiver: OtlpReceiver) -> None:
    token = traced.token("agent-a", team="red")
    flow = send(traced, token)
    record = traced.records()[-1]
    spans = exported(traced, receiver)

    request = [s for s in spans if s.name == "egressguard openai chat"]
    assert len(request) == 1, [s.name for s in spans]
    span = request[0]
    assert span.attributes == {
        "egressguard.request_id": record["id"], "egressguard.kind": "request",
        "egressguard.decision": "allow", "egressguard.reason": "allowed",
        "egressguard.audit_written": True, "egressguard.agent": "agent-a",
        "egressguard.team": "red", "egressguard.rule": "everyone",
        "egressguard.vendor": "openai", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "http.request.method": "POST", "server.address": "api.openai.com",
        "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5,
        "http.request.body.size": record["bytes_in"],
        "http.response.body.size": record["bytes_out"],
    }
    assert record["id"] == flow.response.headers[flowstate.REQUEST_ID_HEADER]
    assert span.status_code == 0 and span.kind == 2  # unset; SERVER
    assert span.resource["service.name"] == "egressguard"
    # the agent's trace is the parent; the agent's headers never reach the vendor
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert "traceparent" not in flow.request.headers
    assert "tracestate" not in flow.request.headers
    vendor = [s for s in spans if s.parent_span_id == span.span_id]
    assert [(s.name, s.kind, s.trace_id) for s in vendor] == [("vendor", 3, TRACE_ID)]
    assert span.start_ns <= vendor[0].start_ns <= vendor[0].end_ns <= span.end_ns
    assert vendor[0].attributes["http.response.status_code"] == 200
    assert vendor[0].events == ["response headers"]


@pytest.mark.parametrize(("case", "decision", "reason", "status", "status_code"), [
    ("no token", "deny", "identity_missing", 401, 0),  # a refusal is not a failure
    ("no key in Vault", "deny", "secret_missing", 503, ERROR),
    ("vendor fails", "allow", "allowed", 500, ERROR),
])
def test_refusals_and_failures_are_spans_too(traced: Pipeline, receiver: OtlpReceiver,
                                             case: str, decision: str, reason: str,
                                             status: int, status_code: int) -> None:
    token = None if case == "no token" else traced.token("agent-b")
    if case == "no key in Vault":
        traced.store.values.clear()
    upstream = traced.Upstream.json({"error": {"message": "boom"}}, status=500) \
        if case == "vendor fails" else None
    send(traced, token, traceparent=None, upstream=upstream)
    record = traced.records()[-1]
    (span,) = [s for s in exported(traced, receiver) if s.parent_span_id == ""]
    assert span.attributes["egressguard.request_id"] == record["id"]
    assert (span.attributes["egressguard.decision"], span.attributes["egressguard.reason"],
            span.attributes["http.response.status_code"]) == (decision, reason, status)
    assert span.status_code == status_code
    assert len(span.trace_id) == 32 and span.trace_id != TRACE_ID  # a trace of its own


def test_no_key_token_or_prompt_leaves_in_a_span(traced: Pipeline,
                                                 receiver: OtlpReceiver) -> None:
    token = traced.token("agent-c", team="red")
    send(traced, token)
    send(traced, None)  # refused: the message names what was missing
    traced.store.values.clear()
    send(traced, token)  # refused: Vault's answer in the message
    exported(traced, receiver)
    payload = receiver.payload()
    assert len(receiver.spans()) >= 4
    for secret in (*REAL_KEYS.values(), token, token.split(".")[1]):
        assert secret.encode() not in payload
    for written in (PROMPT, "jane.doe", "ZEBRA-7731", "example.com"):
        assert written.encode() not in payload
    assert b"127.0.0.1" not in payload and b"secret/" not in payload  # client, key path


def test_off_by_default_the_request_goes_as_sent(pipeline: Pipeline) -> None:
    assert pipeline.tracing.exporter is None
    flow = send(pipeline, pipeline.token())
    assert flow.response.status_code == 200
    assert flow.request.headers["traceparent"] == TRACEPARENT  # not ours to touch then


def test_off_nothing_of_opentelemetry_is_imported() -> None:
    """Loading and configuring the whole pipeline with tracing off imports none of the
    OpenTelemetry packages (nor protobuf, which the exporter needs)."""
    code = """
import sys
import egressguard
from mitmproxy.test import taddons
with taddons.context(*egressguard.addons, loadcore=False) as tctx:
    tctx.options.update(egressguard_otlp_endpoint="")
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "google.protobuf")))
print(loaded or "none")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "none", out.stdout


def test_turning_tracing_off_again_stops_the_spans(traced: Pipeline,
                                                   receiver: OtlpReceiver) -> None:
    traced.tctx.options.update(egressguard_otlp_endpoint="")
    assert traced.tracing.exporter is None
    assert traced.tracing.observe not in traced.audit.listeners
    send(traced, traced.token())
    assert receiver.spans() == []


@pytest.mark.parametrize(("given", "env", "expected"), [
    ("http://collector:4318/v1/traces", {}, "http://collector:4318/v1/traces"),
    ("env", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otel.example/v1/traces"},
     "https://otel.example/v1/traces"),
    ("env", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
     "http://collector:4318/v1/traces"),
    ("env", {}, OtlpConfigError),  # `env` without the variables: an error, not localhost
    ("collector:4318", {}, OtlpConfigError),
    ("ftp://collector/v1/traces", {}, OtlpConfigError),
])
def test_endpoints(monkeypatch: pytest.MonkeyPatch, given: str, env: dict[str, str],
                   expected: str | type[Exception]) -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if isinstance(expected, str):
        assert resolve_endpoint(given) == expected
    else:
        with pytest.raises(expected):
            resolve_endpoint(given)


def test_a_bad_endpoint_is_an_options_error(pipeline: Pipeline) -> None:
    with pytest.raises(exceptions.OptionsError, match="not an http"):
        pipeline.tctx.options.update(egressguard_otlp_endpoint="collector:4318")


def test_without_the_otel_extra_tracing_is_an_options_error(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "egressguard.backends.otlp", None)  # not installed
    with pytest.raises(exceptions.OptionsError, match=r"pip install 'egressguard\[otel\]'"):
        pipeline.tctx.options.update(egressguard_otlp_endpoint="http://127.0.0.1:4318/v1/traces")
    assert pipeline.tracing.exporter is None


@pytest.mark.parametrize(("env", "given", "expected"), [
    ({}, [], ""),  # off by default
    ({}, ["--otlp-endpoint", "http://collector:4318/v1/traces"],
     "http://collector:4318/v1/traces"),
    ({"EGRESSGUARD_OTLP_ENDPOINT": "env"}, [], "env"),
    # the standard variable alone does not turn tracing on
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, [], ""),
])
def test_run_turns_tracing_on_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                              env: dict[str, str], given: list[str],
                                              expected: str) -> None:
    for name in ("EGRESSGUARD_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = parser().parse_args(["run", *given])
    options = mitmproxy_options(ServeConfig(otlp_endpoint=args.otlp_endpoint), None)  # type: ignore[arg-type]
    assert options["egressguard_otlp_endpoint"] == expected


def test_a_malformed_traceparent_starts_a_trace_of_its_own(traced: Pipeline,
                                                           receiver: OtlpReceiver) -> None:
    flow = send(traced, traced.token("agent-d", team="red"), traceparent="00-not-a-trace-01")
    (span,) = [s for s in exported(traced, receiver) if s.name == "egressguard openai chat"]
    assert span.parent_span_id == "" and len(span.trace_id) == 32
    assert "traceparent" not in flow.request.headers  # still not forwarded
