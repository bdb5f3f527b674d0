"""Token usage (`egressguard.core.usage`) from vendor bodies and SSE streams."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from egressguard.core.usage import SseUsage, Usage, from_body, from_object


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


@pytest.mark.parametrize("body, expected", [
    (OPENAI_CHAT, (12, 34)),
    (OPENAI_RESPONSES, (10, 20)),
    (ANTHROPIC_MESSAGE, (25, 15)),
    (GEMINI, (8, 5)),
    (EMBEDDINGS, (8, None)),
    ({"usage": {"output_tokens": 3}}, (None, 3)),
    ({"choices": [], "usage": None}, None),
    ({"usage": {}}, None),
    ({"usage": {"total_tokens": 5}}, None),
    ({"usage": {"prompt_tokens": "12"}}, None),  # not a number: not usage
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
        assert found == Usage(*expected)
        assert found.as_record() == {"input_tokens": expected[0], "output_tokens": expected[1]}
        assert from_body(orjson.dumps(body)) == found


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe", b"data: {}\n\n"])
def test_from_body_of_something_that_is_not_json(body: bytes) -> None:
    assert from_body(body) is None


def test_usage_merge_keeps_what_later_reports_leave_out() -> None:
    usage = Usage()
    assert usage.as_record() is None
    usage.merge(Usage(25, 1))
    usage.merge(Usage(None, 15))
    assert usage.as_record() == {"input_tokens": 25, "output_tokens": 15}


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
                                          "usage": {"input_tokens": 25, "output_tokens": 1}}},
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
STREAMS = [
    pytest.param(OPENAI_CHAT_STREAM, (9, 3), id="openai-chat"),
    pytest.param(OPENAI_RESPONSES_STREAM, (11, 7), id="openai-responses"),
    pytest.param(ANTHROPIC_STREAM, (25, 15), id="anthropic"),
    pytest.param(GEMINI_STREAM, (8, 5), id="gemini"),
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


def test_sse_usage_skips_broken_and_oversized_lines() -> None:
    stream = (b"data: {\"usage\": broken\n\n"
              + b"data: " + b"x" * (1 << 20) + b" usage" + b"\n\n"
              + sse(_chat_chunk(None, {"prompt_tokens": 2, "completion_tokens": 1})))
    assert usage_of([stream[:100], stream[100:(1 << 20) + 50], stream[(1 << 20) + 50:]]) \
        == (2, 1)
