"""Token usage (`egressguard.core.usage`) from vendor bodies and SSE streams."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from egressguard.core.usage import (
    STREAM_USAGE_VENDORS,
    SseUsage,
    Usage,
    UsageChunkFilter,
    ask_for_stream_usage,
    from_body,
    from_object,
)


def sse(*events: dict[str, Any] | str, named: bool = False, eol: bytes = b"\n") -> bytes:
    """A server-sent-event stream; `named` adds Anthropic's `event:` lines."""
    out = b""
    for event in events:
        if named and isinstance(event, dict):
            out += b"event: " + event["type"].encode() + eol
        data = event.encode() if isinstance(event, str) else orjson.dumps(event)
        out += b"data: " + data + eol + eol
    return out


OPENAI_CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46,
              "prompt_tokens_details": {"cached_tokens": 0}},
}
OPENAI_RESPONSES = {
    "id": "resp_1", "object": "response", "status": "completed",
    "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
    "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30,
              "input_tokens_details": {"cached_tokens": 0},
              "output_tokens_details": {"reasoning_tokens": 0}},
}
ANTHROPIC_MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 25, "output_tokens": 15, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 0},
}
GEMINI = {
    "candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"},
                    "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5,
                      "totalTokenCount": 13},
    "modelVersion": "gemini-2.0-flash",
}
EMBEDDINGS = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
ANTHROPIC_CACHED = {**ANTHROPIC_MESSAGE, "usage": {
    "input_tokens": 5, "output_tokens": 15, "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 2000}}
GEMINI_THINKING = {**GEMINI, "usageMetadata": {
    "promptTokenCount": 8, "candidatesTokenCount": 5, "thoughtsTokenCount": 40,
    "totalTokenCount": 53}}
COHERE_V2 = {
    "id": "c1", "finish_reason": "COMPLETE",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
    "usage": {"billed_units": {"input_tokens": 6, "output_tokens": 2},
              "tokens": {"input_tokens": 70, "output_tokens": 2}},
}
GROQ_LAST_CHUNK = {  # groq reports usage in x_groq, without being asked
    "id": "chatcmpl-1", "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 23, "completion_tokens": 19,
                                        "queue_time": 0.07, "total_tokens": 42}},
}


@pytest.mark.parametrize("body, expected", [
    (OPENAI_CHAT, (12, 34)),
    (OPENAI_RESPONSES, (10, 20)),
    (ANTHROPIC_MESSAGE, (25, 15)),
    (GEMINI, (8, 5)),
    (EMBEDDINGS, (8, 0)),  # all input: total == prompt, so spend can be settled
    (ANTHROPIC_CACHED, (5, 15)),
    (GEMINI_THINKING, (8, 45)),  # thoughts are billed as output
    ({"usageMetadata": {"promptTokenCount": 3, "thoughtsTokenCount": 4}}, (3, 4)),
    (COHERE_V2, (6, 2)),  # billed units, not raw tokens
    ({"usage": {"tokens": {"input_tokens": 70, "output_tokens": 2}}}, (70, 2)),
    (GROQ_LAST_CHUNK, (23, 19)),
    ({"usage": {"output_tokens": 3}}, (None, 3)),
    ({"choices": [], "usage": None}, None),
    ({"usage": {}}, None),
    ({"usage": {"total_tokens": 5}}, None),
    ({"usage": {"prompt_tokens": "12"}}, None),  # not a number: not usage
    ({"usage": {"prompt_tokens": True}}, None),
    ({"delta": "usage"}, None),  # a Responses API text delta
    ({"usage": [1, 2]}, None),
    ({"error": {"message": "nope"}}, None),
    ([OPENAI_CHAT], None),
    ("usage", None),
])
def test_from_object(body: Any, expected: tuple[int | None, int | None] | None) -> None:
    found = from_object(body)
    if expected is None:
        assert found is None
    else:
        assert (found.input_tokens, found.output_tokens) == expected
        assert found.as_record() == {"input_tokens": expected[0], "output_tokens": expected[1]}
        assert from_body(orjson.dumps(body)) == found


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe", b"data: {}\n\n"])
def test_from_body_of_something_that_is_not_json(body: bytes) -> None:
    assert from_body(body) is None


def test_anthropic_cache_tokens_are_kept_apart_from_the_record() -> None:
    found = from_object(ANTHROPIC_CACHED)
    assert found == Usage(5, 15, cache_read_input_tokens=2000, cache_creation_input_tokens=100)
    assert found.as_record() == {"input_tokens": 5, "output_tokens": 15}  # record schema v1


def test_usage_merge_keeps_what_later_reports_leave_out() -> None:
    usage = Usage()
    assert usage.as_record() is None
    usage.merge(Usage(25, 1))
    usage.merge(Usage(None, 15))
    assert usage.as_record() == {"input_tokens": 25, "output_tokens": 15}
    usage.merge(Usage(None, None, 7))
    assert usage == Usage(25, 15, cache_read_input_tokens=7)


def _chat_chunk(content: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices,
            "usage": usage}


OPENAI_CHAT_STREAM = sse(
    _chat_chunk(""), _chat_chunk("The usage "), _chat_chunk("is "), _chat_chunk("low."),
    _chat_chunk(None, {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}),
    "[DONE]",
)
OPENAI_RESPONSES_STREAM = sse(
    {"type": "response.created", "response": {"id": "resp_1", "usage": None}},
    {"type": "response.output_text.delta", "delta": "Hi"},
    {"type": "response.completed",
     "response": {"id": "resp_1", "usage": {"input_tokens": 11, "output_tokens": 7}}},
    named=True,
)
ANTHROPIC_STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "content": [],
                                          "usage": {"input_tokens": 25, "output_tokens": 1,
                                                    "cache_read_input_tokens": 300,
                                                    "cache_creation_input_tokens": 0}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
    named=True,
)
GEMINI_STREAM = sse(
    {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}],
     "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 2,
                       "totalTokenCount": 10}},
    {"candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
     "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5,
                       "totalTokenCount": 13}},
    eol=b"\r\n",  # what alt=sse sends
)
COHERE_STREAM = sse(
    {"type": "message-start", "id": "c1", "delta": {"message": {"role": "assistant"}}},
    {"type": "content-delta", "index": 0,
     "delta": {"message": {"content": {"text": "Hi"}}}},
    {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {
        "billed_units": {"input_tokens": 6, "output_tokens": 2},
        "tokens": {"input_tokens": 70, "output_tokens": 2}}}},
    named=True,
)
STREAMS = [
    pytest.param(OPENAI_CHAT_STREAM, (9, 3), id="openai-chat"),
    pytest.param(OPENAI_RESPONSES_STREAM, (11, 7), id="openai-responses"),
    pytest.param(ANTHROPIC_STREAM, (25, 15), id="anthropic"),
    pytest.param(GEMINI_STREAM, (8, 5), id="gemini"),
    pytest.param(COHERE_STREAM, (6, 2), id="cohere-v2"),
    pytest.param(sse(GROQ_LAST_CHUNK, "[DONE]"), (23, 19), id="groq"),
    pytest.param(sse(_chat_chunk("x"), "[DONE]"), (None, None), id="no-usage"),
]


def usage_of(chunks: list[bytes]) -> tuple[int | None, int | None]:
    watcher = SseUsage()
    for chunk in chunks:
        watcher.feed(chunk)
    return watcher.usage.input_tokens, watcher.usage.output_tokens


@pytest.mark.parametrize("stream, expected", STREAMS)
def test_sse_usage_in_one_chunk_and_byte_by_byte(
        stream: bytes, expected: tuple[int | None, int | None]) -> None:
    assert usage_of([stream]) == expected
    assert usage_of([bytes([b]) for b in stream]) == expected


@pytest.mark.parametrize("stream, expected", STREAMS)
@pytest.mark.parametrize("seed", range(25))
def test_sse_usage_does_not_depend_on_chunk_boundaries(
        stream: bytes, expected: tuple[int | None, int | None], seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 30)))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    assert b"".join(chunks) == stream
    assert usage_of(chunks) == expected


def test_anthropic_stream_merges_start_and_last_delta() -> None:
    watcher = SseUsage()
    watcher.feed(ANTHROPIC_STREAM)
    assert watcher.usage == Usage(25, 15, cache_read_input_tokens=300,
                                  cache_creation_input_tokens=0)


def test_sse_usage_skips_broken_and_oversized_lines() -> None:
    stream = (b"data: {\"usage\": broken\n\n"
              + b"data: " + b"x" * (1 << 20) + b" usage" + b"\n\n"
              + sse(_chat_chunk(None, {"prompt_tokens": 2, "completion_tokens": 1})))
    assert usage_of([stream[:100], stream[100:(1 << 20) + 50], stream[(1 << 20) + 50:]]) \
        == (2, 1)


# --- asking a chat stream for usage -------------------------------------------------------

STREAMED = {"model": "gpt-4o", "messages": [], "stream": True}
ASKED = {"include_usage": True}

ASK = [
    # id, vendor, chat endpoint, body, body afterwards, filter the agent's stream
    ("no-options", "openai", True, STREAMED, {**STREAMED, "stream_options": ASKED}, True),
    ("null-options", "openai", True, {**STREAMED, "stream_options": None},
     {**STREAMED, "stream_options": ASKED}, True),
    ("said-no", "openai", True, {**STREAMED, "stream_options": {"include_usage": False}},
     {**STREAMED, "stream_options": ASKED}, True),
    ("other-options-kept", "openai", True,
     {**STREAMED, "stream_options": {"include_obfuscation": False}},
     {**STREAMED, "stream_options": {"include_obfuscation": False, **ASKED}}, True),
    ("agent-asked", "openai", True, {**STREAMED, "stream_options": ASKED},
     {**STREAMED, "stream_options": ASKED}, False),
    ("malformed-options", "openai", True, {**STREAMED, "stream_options": "yes"},
     {**STREAMED, "stream_options": "yes"}, False),
    ("malformed-include", "openai", True,
     {**STREAMED, "stream_options": {"include_usage": "yes"}},
     {**STREAMED, "stream_options": {"include_usage": "yes"}}, False),
    ("not-streamed", "openai", True, {"model": "gpt-4o"}, {"model": "gpt-4o"}, False),
    ("stream-not-bool", "openai", True, {"stream": "true"}, {"stream": "true"}, False),
    ("not-chat", "openai", False, STREAMED, STREAMED, False),
    ("groq", "groq", True, STREAMED, {**STREAMED, "stream_options": ASKED}, True),
    ("mistral-rejects-it", "mistral", True, STREAMED, STREAMED, False),
    ("azure-depends-on-version", "azure_openai", True, STREAMED, STREAMED, False),
    ("anthropic", "anthropic", True, STREAMED, STREAMED, False),
]


@pytest.mark.parametrize(("vendor", "chat", "body", "after", "hide"),
                         [pytest.param(*c[1:], id=c[0]) for c in ASK])
def test_ask_for_stream_usage(vendor: str, chat: bool, body: dict[str, Any],
                              after: dict[str, Any], hide: bool) -> None:
    body = orjson.loads(orjson.dumps(body))  # a copy: the table is shared
    assert ask_for_stream_usage(vendor, chat, body) is hide
    assert body == after


def test_stream_usage_vendors_are_in_the_catalogue() -> None:
    from egressguard.core.vendors import catalogue
    assert STREAM_USAGE_VENDORS <= set(catalogue().names)


def _openai_chunk(content: str | None, usage: Any = None, **extra: Any) -> bytes:
    """Compact, as OpenAI writes them; `usage=...` (Ellipsis) leaves the field out."""
    choices = [] if content is None else [
        {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}]
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
             "model": "gpt-4o-mini", "choices": choices, **extra}
    if usage is not ...:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


COUNTS = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
WORDS = ["", "The usage ", "is ", "l\u00f6w."]
WITH_USAGE = b"".join([*(_openai_chunk(w, None, obfuscation="x") for w in WORDS),
                       _openai_chunk(None, COUNTS, obfuscation="x"), b"data: [DONE]\n\n"])
WITHOUT_USAGE = b"".join([*(_openai_chunk(w, ..., obfuscation="x") for w in WORDS),
                          b"data: [DONE]\n\n"])


def filtered(chunks: list[bytes]) -> list[bytes]:
    """What the agent gets per chunk, then at the end of the stream."""
    f = UsageChunkFilter()
    return [f(c) for c in chunks] + [f(b"")]


def split(stream: bytes, rng: random.Random, most: int = 30) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, most))))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_filter_gives_the_stream_the_agent_would_have_had(eol: bytes) -> None:
    stream, expected = (s.replace(b"\n", eol) for s in (WITH_USAGE, WITHOUT_USAGE))
    assert b"".join(filtered([stream])) == expected
    assert b"".join(filtered([bytes([b]) for b in stream])) == expected
    watcher = SseUsage()  # the vendor's bytes still carry the usage
    watcher.feed(stream)
    assert watcher.usage.as_record() == {"input_tokens": 9, "output_tokens": 3}


@pytest.mark.parametrize("seed", range(50))
def test_filter_does_not_depend_on_chunk_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    stream = WITH_USAGE.replace(b"\n", rng.choice([b"\n", b"\r\n"]))
    expected = WITHOUT_USAGE.replace(b"\n", b"\r\n" if b"\r" in stream else b"\n")
    assert b"".join(filtered(split(stream, rng))) == expected


def test_filter_passes_a_complete_event_at_once_and_holds_only_the_rest() -> None:
    first, second = _openai_chunk("a"), _openai_chunk("b")
    f = UsageChunkFilter()
    assert f(first) == _openai_chunk("a", ...)
    assert f(second[:10]) == b""
    assert f(second[10:-1]) == b""  # "\n" of "\n\n" still to come
    assert f(b"\n" + first[:5]) == _openai_chunk("b", ...)
    assert f(first[5:]) == _openai_chunk("a", ...)
    assert f(b"data: unfinished") == b""
    assert f(b"") == b"data: unfinished"  # the end of the stream lets it go


UNCHANGED = [
    # events the filter must pass byte for byte
    ("done", b"data: [DONE]\n\n"),
    ("no-usage", _openai_chunk("x", ...)),
    ("usage-on-a-chunk-with-choices", _openai_chunk("x", COUNTS)),
    ("no-choices-no-usage", _openai_chunk(None, ...,
                                          prompt_filter_results=[{"prompt_index": 0}])),
    ("not-json", b'data: {"usage": null\n\n'),
    ("not-an-object", b'data: ["usage", null]\n\n'),
    ("two-data-lines", b'data: {"choices": [],\ndata: "usage": {"a": 1}}\n\n'),
    ("named-event", b'event: x\ndata: {"choices":[],"usage":{"a":1}}\n\n'),
    ("comment", b': "usage"\n\n'),
    ("nested-null-usage-only", b'data: {"a":{"usage":null},"b":{"x":1,"usage":null}}\n\n'),
    ("escaped-key", b'data: {"\\u0075sage":null,"a":{"b":1,"usage":null}}\n\n'),
]


@pytest.mark.parametrize("event", [pytest.param(e, id=i) for i, e in UNCHANGED])
def test_filter_leaves_other_events_alone(event: bytes) -> None:
    assert filtered([event]) == [event, b""]


@pytest.mark.parametrize(("event", "expected"), [
    (b'data: {"usage":null,"id":"x"}\n\n', b'data: {"id":"x"}\n\n'),
    (b'data: {"id": "x", "usage": null}\n\n', b'data: {"id": "x"}\n\n'),
    (b'data:{"id":"x","usage":null,"o":"y"}\r\n\r\n', b'data:{"id":"x","o":"y"}\r\n\r\n'),
    (b'data: {"choices":[],"usage":null}\n\n', b'data: {"choices":[]}\n\n'),
    (b'\ndata: {"choices":[],"usage":{"a":1}}\n\n', b"\n"),
    (b'data: {"a":1,"usage":null,"b":{"c":1,"usage":null}}\n\n',
     b'data: {"a":1,"b":{"c":1,"usage":null}}\n\n'),
    (b'data: {"a":{"usage":null},"usage":null,"b":{"x":1,"usage":null}}\n\n',
     b'data: {"a":{"usage":null},"b":{"x":1,"usage":null}}\n\n'),
])
def test_filter_cuts_only_the_top_level_null_usage(event: bytes, expected: bytes) -> None:
    assert b"".join(filtered([event])) == expected


def test_filter_lets_a_huge_unfinished_event_go_unfiltered() -> None:
    huge = b'data: {"choices":[],"usage":null,"x":"' + b"y" * (1 << 20)
    f = UsageChunkFilter()
    assert f(huge[:1000]) == b""
    assert f(huge[1000:]) == huge  # past the cap: on at once, as it is
    assert f(b'"}\n\n' + _openai_chunk("a")) == b'"}\n\n' + _openai_chunk("a", ...)
    assert f(b"") == b""
