"""OpenTelemetry traces from the real proxy, to a real OTLP/HTTP receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from otlp_receiver import OtlpReceiver, Span

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key, headers_of

pytestmark = pytest.mark.e2e
TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
PROMPT = "Summarise the ticket from jane.doe@example.com (case ZEBRA-7731)"
QUICKLY = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "egressguard-e2e"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          receiver: OtlpReceiver) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("tracing"), proxy_args=("--otlp-endpoint", receiver.url))
    try:
        s.start(proxy=False)
        s.start_proxy(env=QUICKLY)
        yield s
    finally:
        s.stop()


def span_of(receiver: OtlpReceiver, request_id: str) -> Span:
    def found() -> list[Span]:
        return [s for s in receiver.spans()
                if s.attributes.get("egressguard.request_id") == request_id]

    (span,) = wait_until(found, timeout=10, what=f"the span of {request_id}")
    return span


def test_real_sdk_requests_become_spans_under_the_agents_trace(
        stack: Stack, receiver: OtlpReceiver, openai_client: OpenAIFactory) -> None:
    key = fake_key()
    stack.put_key("openai", key)
    stack.reset_received()
    token = stack.token("tracer", team="research")
    client = openai_client(api_key=token)
    messages = [{"role": "user", "content": PROMPT}]

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages,  # type: ignore[arg-type]
        extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    plain_id = raw.headers["x-egressguard-request-id"]
    streamed = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
    stream_id = streamed.headers["x-egressguard-request-id"]
    assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)

    plain, stream = span_of(receiver, plain_id), span_of(receiver, stream_id)
    # The stream's record is written when the proxy sees its end, which may be
    # after the SDK has read the last chunk: wait for it rather than race it.
    wanted = {plain_id, stream_id}
    records = wait_until(lambda: (r := {r["id"]: r for r in stack.records()}).keys() >= wanted
                         and r, timeout=10, what="both audit records")
    for span in (plain, stream):
        record = records[span.attributes["egressguard.request_id"]]
        assert span.name == "egressguard openai chat"
        assert span.attributes["egressguard.agent"] == record["agent"] == "tracer"
        assert span.attributes["egressguard.team"] == "research"
        assert span.attributes["gen_ai.request.model"] == record["model"]
        assert span.attributes["egressguard.decision"] == "allow"
        assert span.attributes["http.response.status_code"] == record["status"] == 200
        assert span.attributes["gen_ai.usage.output_tokens"] == \
            record["usage"]["output_tokens"] > 0
        assert span.resource["service.name"] == "egressguard-e2e"
        assert [c.name for c in receiver.spans() if c.parent_span_id == span.span_id] == \
            ["vendor"]
    assert stream.attributes["egressguard.stream"] is True
    assert (plain.trace_id, plain.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert stream.parent_span_id == "" and stream.trace_id != TRACE_ID

    sent = [dict(headers_of(r)) for r in stack.received()]
    assert len(sent) == 2 and all("traceparent" not in h for h in sent)
    payload = receiver.payload()
    for secret in (key, token, PROMPT, "jane.doe", "ZEBRA-7731"):
        assert secret.encode() not in payload


def test_spans_still_queued_are_sent_at_shutdown(stack: Stack, receiver: OtlpReceiver,
                                                 openai_client: OpenAIFactory) -> None:
    stack.stop_proxy()
    stack.start_proxy(env={**QUICKLY, "OTEL_BSP_SCHEDULE_DELAY": "600000"})  # 10 minutes
    stack.put_key("openai", fake_key())
    raw = openai_client(api_key=stack.token("last-words")).chat.completions.with_raw_response \
        .create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])  # type: ignore
    request_id = raw.headers["x-egressguard-request-id"]
    stack.stop_proxy()  # SIGTERM: the queue is exported before the exit
    assert [s.attributes["egressguard.agent"] for s in receiver.spans()
            if s.attributes.get("egressguard.request_id") == request_id] == ["last-words"]
