"""ResponseWatch: SSE streamed through unbuffered, usage read, real-key echoes scrubbed."""

from __future__ import annotations

import gzip
import random

import orjson
import pytest

from egressguard.core.credentials import REDACTED
from egressguard.pipeline import flowstate
from egressguard.pipeline.response import StreamTap

OPENAI, ANTHROPIC, GOOGLE = "api.openai.com", "api.anthropic.com", \
    "generativelanguage.googleapis.com"
PATHS = {OPENAI: "/v1/chat/completions", ANTHROPIC: "/v1/messages",
         GOOGLE: "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"}
UPSTREAM_HOOKS = ("requestheaders", "request", "responseheaders")

STREAMS = [
    # id, host, SSE chunks as the vendor sends them, usage the tap must report
    ("openai-include-usage", OPENAI, (
        b'data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7}}\n\n',
        b"data: [DONE]\n\n"), {"input_tokens": 11, "output_tokens": 7}),
    ("openai-event-split-across-chunks", OPENAI, (
        b'data: {"choices":[],"usage":{"prompt_to',
        b'kens":3,"completion_tokens":4}}\n\ndata: [DONE]\n\n'),
     {"input_tokens": 3, "output_tokens": 4}),
    ("openai-no-usage", OPENAI, (b'data: {"choices":[]}\n\n', b"data: [DONE]\n\n"), None),
    ("anthropic", ANTHROPIC, (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":25,"output_tokens":1}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":'
        b'{"text":"Hello"}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}'
        b"\n\n", b'event: message_stop\ndata: {"type":"message_stop"}\n\n'),
     {"input_tokens": 25, "output_tokens": 15}),
    ("gemini-crlf", GOOGLE, (
        b'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]}}],"usageMetadata":'
        b'{"promptTokenCount":4,"candidatesTokenCount":9}}\r\n\r\n',),
     {"input_tokens": 4, "output_tokens": 9}),
]


def auth(pipeline, host):
    token = pipeline.token()
    return [("x-goog-api-key", token)] if host == GOOGLE else [("x-api-key", token)]


@pytest.mark.parametrize(("host", "chunks", "usage"), [pytest.param(*s[1:], id=s[0])
                                                       for s in STREAMS])
def test_sse_is_tapped_and_passes_unchanged(pipeline, host, chunks, usage):
    flow = pipeline.request(pipeline.tunnel(host), PATHS[host], headers=auth(pipeline, host))
    pipeline.run(flow, UPSTREAM_HOOKS, upstream=pipeline.Upstream.sse(*chunks))
    tap = flow.response.stream
    assert isinstance(tap, StreamTap)
    assert [tap(c) for c in chunks] == list(chunks)  # each event goes on as it arrives
    assert tap(b"") == b""
    pipeline.run(flow, ("response",))
    assert flow.metadata[flowstate.USAGE].as_record() == usage
    [record] = pipeline.records()
    assert (record["usage"], record["bytes_out"]) == (usage, sum(map(len, chunks)))


@pytest.mark.parametrize("content_type", ["text/event-stream",
                                          "text/event-stream; charset=utf-8"])
def test_whole_pipeline_delivers_the_stream(pipeline, content_type):
    chunks = STREAMS[0][2]
    upstream = pipeline.Upstream(headers={"content-type": content_type}, chunks=chunks)
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    assert pipeline.run(flow, upstream=upstream) == b"".join(chunks)
    assert flow.response.status_code == 200


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "text/html"])
def test_buffered_responses_are_not_tapped(pipeline, content_type):
    upstream = pipeline.Upstream(headers={"content-type": content_type}, chunks=(b"{}",))
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    pipeline.run(flow, UPSTREAM_HOOKS, upstream=upstream)
    assert not flow.response.stream


ECHOES = [
    # id, content type, content-encoding, body with "{key}" for the real key
    ("json-error", "application/json", None,
     '{"error": {"message": "Incorrect API key provided: {key}"}}'),
    ("json-twice", "application/json", None, '{"a": "{key}", "b": "x{key}x"}'),
    ("gzip-json", "application/json", "gzip", '{"echo": "{key}"}'),
    ("text", "text/plain", None, "your key is {key}"),
]


@pytest.mark.parametrize(("content_type", "encoding", "template"),
                         [pytest.param(*e[1:], id=e[0]) for e in ECHOES])
def test_key_echo_in_buffered_response_is_replaced(pipeline, content_type, encoding,
                                                   template):
    key = pipeline.REAL_KEYS["openai"]
    body = template.replace("{key}", key).encode()
    headers = {"content-type": content_type}
    if encoding:
        headers["content-encoding"] = encoding
    upstream = pipeline.Upstream(headers=headers,
                                 chunks=(gzip.compress(body) if encoding else body,))
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    pipeline.run(flow, upstream=upstream)
    assert flow.response.content == template.replace("{key}", REDACTED.decode()).encode()
    assert key.encode() not in flow.response.content
    assert key.encode() not in pipeline.journal_bytes()


def test_response_without_echo_is_untouched(pipeline):
    body = orjson.dumps({"id": "x", "choices": []})
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    pipeline.run(flow, upstream=pipeline.Upstream(chunks=(body,)))
    assert flow.response.raw_content == body


@pytest.mark.parametrize("cut", [1, 5, 20, -1])
def test_key_echo_split_across_sse_chunks_is_replaced(pipeline, cut):
    key = pipeline.REAL_KEYS["openai"].encode()
    event = b'data: {"echo": "' + key + b'"}\n\n'
    at = event.index(key) + (cut if cut > 0 else len(key) + cut)
    chunks = (event[:at], event[at:], b"data: [DONE]\n\n")
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    sent = pipeline.run(flow, upstream=pipeline.Upstream.sse(*chunks))
    assert sent == event.replace(key, REDACTED) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("upstream_status", [200, 404, 500])
def test_request_id_header_is_set(pipeline, upstream_status):
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    pipeline.run(flow, upstream=pipeline.Upstream.json({}, status=upstream_status))
    rid = flow.response.headers[flowstate.REQUEST_ID_HEADER]
    assert rid == flow.metadata[flowstate.REQUEST_ID]
    assert len(rid) == 32
    assert pipeline.records()[0]["id"] == rid


def test_refusals_are_not_tapped_or_rewritten(pipeline):
    flow = pipeline.send(OPENAI, upstream=pipeline.Upstream.sse(b"data: x\n\n"))
    assert flow.response.status_code == 401
    assert not flow.response.stream
    assert flow.response.headers[flowstate.REQUEST_ID_HEADER] == \
        flow.metadata[flowstate.REQUEST_ID]
    assert flowstate.USAGE not in flow.metadata


# --- usage egressguard asked for, hidden from the agent ------------------------------------

CHAT = {"model": "gpt-4o", "messages": [], "stream": True}


def openai_stream(include_usage: bool, echo: bytes = b"") -> bytes:
    """An OpenAI chat stream as the vendor writes it, with or without include_usage."""
    null = ',"usage":null' if include_usage else ""
    events = [b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"%s"}}]%s}\n\n'
              % (word, null.encode()) for word in (b"Hi", echo, b" there")]
    if include_usage:
        events.append(b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":11,'
                      b'"completion_tokens":7,"total_tokens":18}}\n\n')
    return b"".join([*events, b"data: [DONE]\n\n"])


def sent_to_agent(tap: StreamTap, chunks: list[bytes]) -> list[bytes]:
    """What mitmproxy sends on, chunk by chunk (a list return is several chunks)."""
    out: list[bytes] = []
    for chunk in (*chunks, b""):
        got = tap(chunk)
        out += [got] if isinstance(got, bytes) else got
    return out


def streamed_chat(pipeline, body, vendor_stream, seed):
    flow = pipeline.request(pipeline.tunnel(OPENAI), body=body,
                            headers=auth(pipeline, OPENAI))
    pipeline.run(flow, UPSTREAM_HOOKS, upstream=pipeline.Upstream.sse(vendor_stream))
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(vendor_stream)), 12))
    chunks = [vendor_stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(vendor_stream)],
                                                 strict=True)]
    sent = sent_to_agent(flow.response.stream, chunks)
    pipeline.run(flow, ("response",))
    return flow, sent


@pytest.mark.parametrize("seed", range(10))
def test_usage_asked_by_egressguard_is_read_then_hidden(pipeline, seed):
    vendor_stream = openai_stream(include_usage=True)
    flow, sent = streamed_chat(pipeline, CHAT, vendor_stream, seed)
    assert b"".join(sent) == openai_stream(include_usage=False)
    assert b"" not in sent[:-1]  # an empty chunk would end a chunked HTTP/1 response
    [record] = pipeline.records()
    assert record["usage"] == {"input_tokens": 11, "output_tokens": 7}
    assert record["bytes_out"] == len(vendor_stream)


def test_usage_the_agent_asked_for_passes_untouched(pipeline):
    body = {**CHAT, "stream_options": {"include_usage": True}}
    vendor_stream = openai_stream(include_usage=True)
    flow, sent = streamed_chat(pipeline, body, vendor_stream, seed=0)
    assert flow.response.stream.hide is None
    assert b"".join(sent) == vendor_stream
    assert pipeline.records()[0]["usage"] == {"input_tokens": 11, "output_tokens": 7}


@pytest.mark.parametrize("seed", range(10))
def test_hidden_usage_and_key_scrubbing_together(pipeline, seed):
    key = pipeline.REAL_KEYS["openai"].encode()
    flow, sent = streamed_chat(pipeline, CHAT, openai_stream(True, echo=key), seed)
    assert b"".join(sent) == openai_stream(False, echo=REDACTED)
    assert b"" not in sent[:-1]


def test_a_chunk_that_is_all_held_back_sends_nothing(pipeline):
    key = pipeline.REAL_KEYS["openai"].encode()
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    pipeline.run(flow, UPSTREAM_HOOKS, upstream=pipeline.Upstream.sse(b""))
    tap = flow.response.stream
    assert tap(b'data: "') == b'data: "'
    assert tap(key[:5]) == []  # could be the start of the key: held, and b"" is not sent
    assert tap(b'"\n\n') == key[:5] + b'"\n\n'


# -- answers are read with a bound ---------------------------------------------------------

def test_a_buffered_answer_that_decodes_past_the_limit_is_refused(pipeline):
    pipeline.tctx.options.update(egressguard_max_response_body=1 << 20)
    bomb = gzip.compress(b" " * (8 << 20))
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    pipeline.run(flow, upstream=pipeline.Upstream(
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        chunks=(bomb,)))
    assert flow.response.status_code == 502
    error = orjson.loads(flow.response.content)["error"]
    assert error["code"] == "answer_too_large"
    assert "decodes to more than 1048576 bytes" in error["message"]
    [record] = pipeline.records()
    assert (record["decision"], record["reason"]) == ("deny", "answer_too_large")


def gzip_pieces(data: bytes, size: int) -> tuple[bytes, ...]:
    encoded = gzip.compress(data)
    return tuple(encoded[i:i + size] for i in range(0, len(encoded), size))


def test_a_compressed_stream_is_decoded_scrubbed_and_passed_on_decoded(pipeline):
    key = pipeline.REAL_KEYS["openai"].encode()
    events = (b'data: {"choices":[{"delta":{"content":"your key: ' + key + b'"}}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
              b"data: [DONE]\n\n")
    flow = pipeline.request(pipeline.tunnel(OPENAI), headers=auth(pipeline, OPENAI))
    sent = pipeline.run(flow, upstream=pipeline.Upstream(
        headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
        chunks=gzip_pieces(events, 25)))
    assert sent == events.replace(key, REDACTED)  # decoded: the header is gone too
    assert "content-encoding" not in flow.response.headers
    assert flow.metadata[flowstate.USAGE].as_record() == {"input_tokens": 3,
                                                           "output_tokens": 4}


STREAM_FAILURES = [
    # id, host, headers, chunks, reason
    ("line-too-long", OPENAI, {}, (b'data: {"a": "' + b"x" * 3000, b"x" * 3000, b'"}\n\n'),
     "sse_line_too_long"),
    ("line-too-long-anthropic", ANTHROPIC, {}, (b"data: " + b"x" * 5000,), "sse_line_too_long"),
    ("bomb-in-a-piece", OPENAI, {"content-encoding": "gzip"},
     (gzip.compress(b"data: " + b" " * (2 << 20)),), "answer_too_large"),
    ("unknown-encoding", OPENAI, {"content-encoding": "compress"}, (b"\x1f\x9d...",),
     "answer_undecodable"),
    ("corrupt-gzip", OPENAI, {"content-encoding": "gzip"}, (b"not gzip at all",),
     "answer_undecodable"),
]


@pytest.mark.parametrize(("host", "headers", "chunks", "reason"),
                         [pytest.param(*f[1:], id=f[0]) for f in STREAM_FAILURES])
def test_a_stream_egressguard_cannot_read_ends_with_an_error_event(pipeline, host, headers,
                                                                   chunks, reason):
    pipeline.tctx.options.update(egressguard_max_sse_line=4096,
                                 egressguard_max_response_body=1 << 20)
    first = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    flow = pipeline.request(pipeline.tunnel(host), PATHS[host], headers=auth(pipeline, host))
    sent = pipeline.run(flow, upstream=pipeline.Upstream(
        headers={"content-type": "text/event-stream", **headers},
        chunks=(first, *chunks, b"data: after\n\n") if not headers else chunks))
    head, _, error_event = sent.rpartition(b"event: error\ndata: ")
    # what came before went on as it came; the error is an event of its own, and nothing
    # of the vendor's follows it
    assert head in (first, b"") or head.startswith(first) and head.endswith(b"x\n\n")
    body = orjson.loads(error_event)
    if host == ANTHROPIC:
        assert body["type"] == "error" and "longer than 4096" in body["error"]["message"]
    else:
        assert body["error"]["code"] == reason
    assert flow.metadata[flowstate.REFUSAL].reason == reason
