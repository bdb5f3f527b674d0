"""Vendor failover translation (`egressguard.core.translate`) between OpenAI chat
completions and Anthropic messages: requests, answers and streams, each checked by
the official SDK of the agent's side parsing what egressguard would send it."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from egressguard.core import translate
from egressguard.core.translate import (
    ANTHROPIC,
    FAMILIES,
    OPENAI,
    StreamTranslator,
    Untranslatable,
)

FALLBACK = "fallback-model"
TEXT = "Héllo 世界 🎉"  # two- three- and four-byte UTF-8 sequences to split
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
OPENAI_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_SCHEMA}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather in a city",
                  "input_schema": WEATHER_SCHEMA}


def anthropic_sse(*events: dict[str, Any], eol: bytes = b"\n") -> bytes:
    return b"".join(b"event: " + e["type"].encode() + eol + b"data: " + orjson.dumps(e)
                    + eol + eol for e in events)


def openai_sse(*chunks: dict[str, Any] | str, eol: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c))
                    + eol + eol for c in chunks)


# What Anthropic streams for a text answer followed by a tool call (the documented
# event sequence, with a ping where Anthropic sends them).
ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {
        "id": "msg_01XFD", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_read_input_tokens": 5,
                  "cache_creation_input_tokens": 0, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo"}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "text_delta", "text": " 世界 🎉"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01T1", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
]
ANTHROPIC_STREAM = anthropic_sse(*ANTHROPIC_EVENTS)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": "chatcmpl-9x", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-x", "choices": choices, **extra}


OPENAI_CHUNKS: list[dict[str, Any] | str] = [
    chunk({"role": "assistant", "content": "", "refusal": None}, usage=None),
    chunk({"content": "Héllo"}, usage=None),
    chunk({"content": " 世界 🎉"}, usage=None),
    chunk({"tool_calls": [{"index": 0, "id": "call_A1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}, usage=None),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Pa'}}]}, usage=None),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}, usage=None),
    chunk({}, "tool_calls", usage=None),
    chunk(usage={"prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
                 "prompt_tokens_details": {"cached_tokens": 5}}),
    "[DONE]",
]
OPENAI_STREAM = openai_sse(*OPENAI_CHUNKS)

ANTHROPIC_ANSWER = {
    "id": "msg_01XFD", "type": "message", "role": "assistant", "model": "claude-x",
    "content": [{"type": "text", "text": TEXT},
                {"type": "tool_use", "id": "toolu_01T1", "name": "get_weather",
                 "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 25, "cache_read_input_tokens": 5,
              "cache_creation_input_tokens": 0, "output_tokens": 42}}
OPENAI_ANSWER = {
    "id": "chatcmpl-9x", "object": "chat.completion", "created": 1, "model": "gpt-x",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": TEXT, "refusal": None,
        "tool_calls": [{"id": "call_A1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}],
    "usage": {"prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
              "prompt_tokens_details": {"cached_tokens": 5}}}


# ---- egressguard as the agent's SDK meets it: a vendor that fails over ---------------

def relay(source: str, answer: dict[str, Any] | bytes, sent: list[dict[str, Any]],
          step: int = 7) -> Callable[[httpx2.Request], httpx2.Response]:
    """A transport answering the agent's SDK as egressguard would after failing over:
    its request translated (kept in `sent`), `answer` (the fallback's, in the other
    family) translated back; a stream fed to the translator `step` bytes at a time."""
    target = OPENAI if source == ANTHROPIC else ANTHROPIC

    def handle(request: httpx2.Request) -> httpx2.Response:
        body = orjson.loads(request.content)
        sent.append(translate.request(body, source, target, FALLBACK))
        if isinstance(answer, dict):
            return httpx2.Response(200, json=translate.response(answer, source, target, FALLBACK))
        usage = (body.get("stream_options") or {}).get("include_usage") is True
        stream = StreamTranslator(source, target, FALLBACK, usage)
        out = b"".join(stream.feed(answer[i:i + step]) for i in range(0, len(answer), step))
        return httpx2.Response(200, content=out + stream.close(),
                               headers={"content-type": "text/event-stream"})
    return handle


def openai_agent(handler: Callable[[httpx2.Request], httpx2.Response]) -> openai.OpenAI:
    return openai.OpenAI(api_key="egressguard-token", base_url="http://vendor.test/v1",
                         max_retries=0, _strict_response_validation=True,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def anthropic_agent(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="egressguard-token", base_url="http://vendor.test",
                               max_retries=0, _strict_response_validation=True,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


QUESTION = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"}]


def test_openai_agent_streams_an_anthropic_answer() -> None:
    sent: list[dict[str, Any]] = []
    with openai_agent(relay(OPENAI, ANTHROPIC_STREAM, sent)) as client, \
            client.chat.completions.stream(
                model="gpt-4o", messages=QUESTION, tools=[OPENAI_TOOL],  # type: ignore[list-item]
                stream_options={"include_usage": True}) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert sent == [{"model": FALLBACK, "max_tokens": 4096, "system": "Be brief.",
                     "messages": [{"role": "user", "content": "Weather in Paris?"}],
                     "stream": True, "tools": [ANTHROPIC_TOOL]}]
    assert "".join(deltas) == TEXT
    choice = final.choices[0]
    assert (choice.message.content, choice.finish_reason) == (TEXT, "tool_calls")
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name) == ("toolu_01T1", "get_weather")  # type: ignore[union-attr]
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert (final.id, final.model) == ("chatcmpl-msg_01XFD", FALLBACK)
    assert final.usage is not None and final.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
        "prompt_tokens_details": {"cached_tokens": 5}}


def test_anthropic_agent_streams_an_openai_answer() -> None:
    sent: list[dict[str, Any]] = []
    with anthropic_agent(relay(ANTHROPIC, OPENAI_STREAM, sent)) as client, \
            client.messages.stream(
                model="claude-sonnet-4-5", max_tokens=500, system="Be brief.",
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[ANTHROPIC_TOOL]) as stream:  # type: ignore[list-item]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert sent == [{"model": FALLBACK, "max_completion_tokens": 500, "stream": True,
                     "stream_options": {"include_usage": True},
                     "messages": QUESTION, "tools": [OPENAI_TOOL]}]
    assert text == TEXT
    assert [b.model_dump(exclude_none=True) for b in final.content] == [
        {"type": "text", "text": TEXT},
        {"type": "tool_use", "id": "call_A1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert (final.id, final.model, final.stop_reason) == ("msg_chatcmpl-9x", FALLBACK, "tool_use")
    assert (final.usage.input_tokens, final.usage.output_tokens,
            final.usage.cache_read_input_tokens) == (25, 42, 5)


def test_openai_agent_gets_an_anthropic_answer() -> None:
    sent: list[dict[str, Any]] = []
    with openai_agent(relay(OPENAI, ANTHROPIC_ANSWER, sent)) as client:
        answer = client.chat.completions.create(model="gpt-4o", messages=QUESTION,  # type: ignore[arg-type]
                                                max_completion_tokens=300, user="u-7")
    assert sent[0]["max_tokens"] == 300 and sent[0]["metadata"] == {"user_id": "u-7"}
    assert isinstance(answer, ChatCompletion)
    assert answer.model_dump(exclude_none=True, exclude={"created"}) == {
        "id": "chatcmpl-msg_01XFD", "object": "chat.completion", "model": FALLBACK,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": TEXT, "tool_calls": [{
                "id": "toolu_01T1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
                  "prompt_tokens_details": {"cached_tokens": 5}}}


def test_anthropic_agent_gets_an_openai_answer() -> None:
    sent: list[dict[str, Any]] = []
    with anthropic_agent(relay(ANTHROPIC, OPENAI_ANSWER, sent)) as client:
        answer = client.messages.create(model="claude-sonnet-4-5", max_tokens=300,
                                        messages=[{"role": "user", "content": "Hi"}])
    assert sent == [{"model": FALLBACK, "max_completion_tokens": 300,
                     "messages": [{"role": "user", "content": "Hi"}]}]
    assert answer.model_dump(exclude_none=True) == {
        "id": "msg_chatcmpl-9x", "type": "message", "role": "assistant", "model": FALLBACK,
        "content": [{"type": "text", "text": TEXT},
                    {"type": "tool_use", "id": "call_A1", "name": "get_weather",
                     "input": {"city": "Paris"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 25, "output_tokens": 42, "cache_read_input_tokens": 5,
                  "cache_creation_input_tokens": 0}}


# ---- streams, event by event ----------------------------------------------------------

CREATED = re.compile(rb'"created":\d+')


def run(stream: StreamTranslator, data: bytes, cuts: list[int]) -> bytes:
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return CREATED.sub(b'"created":0', b"".join(stream.feed(p) for p in pieces) + stream.close())


def sse_payloads(data: bytes) -> list[tuple[str | None, str]]:
    return [translate._parse_event(e) for e in data.split(b"\n\n") if e]


STREAMS = [  # (source, target, the target's stream)
    pytest.param(OPENAI, ANTHROPIC, ANTHROPIC_STREAM, id="anthropic-to-openai"),
    pytest.param(ANTHROPIC, OPENAI, OPENAI_STREAM, id="openai-to-anthropic"),
]


@pytest.mark.parametrize(("source", "target", "upstream"), STREAMS)
def test_split_anywhere_gives_the_same_stream(source: str, target: str, upstream: bytes) -> None:
    whole = run(StreamTranslator(source, target, FALLBACK, True), upstream, [])
    for cut in range(1, len(upstream)):
        assert run(StreamTranslator(source, target, FALLBACK, True), upstream, [cut]) == whole
    one_by_one = list(range(1, len(upstream)))
    assert run(StreamTranslator(source, target, FALLBACK, True), upstream, one_by_one) == whole


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
@pytest.mark.parametrize(("source", "target", "events"), [
    (OPENAI, ANTHROPIC, lambda eol: anthropic_sse(*ANTHROPIC_EVENTS, eol=eol)),
    (ANTHROPIC, OPENAI, lambda eol: openai_sse(*OPENAI_CHUNKS, eol=eol))])
def test_any_line_ending_gives_the_same_stream(
        source: str, target: str, events: Callable[[bytes], bytes], eol: bytes) -> None:
    want = run(StreamTranslator(source, target, FALLBACK, True), events(b"\n"), [])
    upstream = events(eol)
    assert run(StreamTranslator(source, target, FALLBACK, True), upstream,
               list(range(1, len(upstream)))) == want


def test_utf8_split_inside_a_character() -> None:
    upstream = anthropic_sse(ANTHROPIC_EVENTS[0], ANTHROPIC_EVENTS[1], ANTHROPIC_EVENTS[4])
    emoji = upstream.index("🎉".encode())
    stream = StreamTranslator(OPENAI, ANTHROPIC, FALLBACK, False)
    out = stream.feed(upstream[:emoji + 2])
    out += stream.feed(upstream[emoji + 2:])
    assert orjson.loads(sse_payloads(out)[-1][1])["choices"][0]["delta"] == {"content": " 世界 🎉"}


def test_openai_chunks_are_what_openai_sends() -> None:
    out = run(StreamTranslator(OPENAI, ANTHROPIC, FALLBACK, True), ANTHROPIC_STREAM, [])
    payloads = [data for _, data in sse_payloads(out)]
    assert payloads[-1] == "[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    for each in chunks:
        ChatCompletionChunk.model_validate(each)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:6]] == [
        {"content": "Héllo"}, {"content": " 世界 🎉"},
        {"tool_calls": [{"index": 0, "id": "toolu_01T1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}]
    assert chunks[6]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 72


def test_openai_chunks_carry_no_usage_unless_asked() -> None:
    out = run(StreamTranslator(OPENAI, ANTHROPIC, FALLBACK, False), ANTHROPIC_STREAM, [])
    payloads = [data for _, data in sse_payloads(out)]
    assert payloads[-1] == "[DONE]"
    assert not any("usage" in orjson.loads(p) for p in payloads[:-1])
    assert orjson.loads(payloads[-2])["choices"][0]["finish_reason"] == "tool_calls"


def test_anthropic_events_are_what_anthropic_sends() -> None:
    out = run(StreamTranslator(ANTHROPIC, OPENAI, FALLBACK, False), OPENAI_STREAM, [])
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    events = []
    for name, data in sse_payloads(out):
        event = adapter.validate_python(orjson.loads(data))
        assert name == event.type
        events.append(event)
    assert [(e.type, getattr(e, "index", None)) for e in events] == [
        ("message_start", None), ("content_block_start", 0), ("content_block_delta", 0),
        ("content_block_delta", 0), ("content_block_stop", 0), ("content_block_start", 1),
        ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None)]
    assert events[-2].delta.stop_reason == "tool_use"
    assert (events[-2].usage.input_tokens, events[-2].usage.output_tokens) == (25, 42)


@pytest.mark.parametrize(("reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter")])
def test_stop_reasons_become_finish_reasons(reason: str, finish: str) -> None:
    answer = {**ANTHROPIC_ANSWER, "stop_reason": reason}
    assert translate.response(answer, OPENAI, ANTHROPIC, FALLBACK)[
        "choices"][0]["finish_reason"] == finish
    events = [*ANTHROPIC_EVENTS[:6], {"type": "message_delta", "delta": {"stop_reason": reason},
                                      "usage": {"output_tokens": 3}}, {"type": "message_stop"}]
    out = run(StreamTranslator(OPENAI, ANTHROPIC, FALLBACK, False), anthropic_sse(*events), [])
    assert orjson.loads(sse_payloads(out)[-2][1])["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(("finish", "reason"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("content_filter", "refusal")])
def test_finish_reasons_become_stop_reasons(finish: str, reason: str) -> None:
    answer = copy.deepcopy(OPENAI_ANSWER)
    answer["choices"][0]["finish_reason"] = finish
    assert translate.response(answer, ANTHROPIC, OPENAI, FALLBACK)["stop_reason"] == reason
    upstream = openai_sse(chunk({"content": "x"}), chunk({}, finish), "[DONE]")
    out = run(StreamTranslator(ANTHROPIC, OPENAI, FALLBACK, False), upstream, [])
    assert orjson.loads(sse_payloads(out)[-2][1])["delta"]["stop_reason"] == reason


def test_an_anthropic_error_mid_stream_reaches_the_openai_agent() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream = anthropic_sse(*ANTHROPIC_EVENTS[:4], error)
    with openai_agent(relay(OPENAI, upstream, [])) as client:
        stream = client.chat.completions.create(model="gpt-4o", messages=QUESTION,  # type: ignore[arg-type]
                                                stream=True)
        with pytest.raises(openai.APIError, match="Overloaded"):
            list(stream)
    out = run(StreamTranslator(OPENAI, ANTHROPIC, FALLBACK, False), upstream, [])
    assert b"[DONE]" not in out and out.endswith(
        b'data: {"error":{"message":"Overloaded","type":"overloaded_error",'
        b'"param":null,"code":null}}\n\n')


def test_an_openai_error_mid_stream_reaches_the_anthropic_agent() -> None:
    error = {"error": {"message": "Rate limit reached", "type": "requests",
                       "code": "rate_limit_exceeded", "param": None}}
    upstream = openai_sse(*OPENAI_CHUNKS[:2], error)
    with anthropic_agent(relay(ANTHROPIC, upstream, [])) as client:
        stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=10, stream=True,
                                        messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(anthropic.APIError, match="Rate limit reached"):
            list(stream)
    out = run(StreamTranslator(ANTHROPIC, OPENAI, FALLBACK, False), upstream, [])
    name, data = sse_payloads(out)[-1]
    assert (name, orjson.loads(data)) == ("error", {"type": "error", "error": {
        "type": "rate_limit_error", "message": "Rate limit reached"}})


@pytest.mark.parametrize(("source", "target", "upstream", "end"), [
    pytest.param(OPENAI, ANTHROPIC, anthropic_sse(*ANTHROPIC_EVENTS[:-1]), b"data: [DONE]\n\n",
                 id="anthropic-without-message_stop"),
    pytest.param(ANTHROPIC, OPENAI, openai_sse(*OPENAI_CHUNKS[:-1]),
                 b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
                 id="openai-without-DONE"),
])
def test_a_stream_that_said_why_it_stopped_ends_properly(
        source: str, target: str, upstream: bytes, end: bytes) -> None:
    stream = StreamTranslator(source, target, FALLBACK, False)
    stream.feed(upstream)
    assert stream.close().endswith(end)


@pytest.mark.parametrize(("source", "target", "upstream"), [
    pytest.param(OPENAI, ANTHROPIC, anthropic_sse(*ANTHROPIC_EVENTS[:5]), id="anthropic"),
    pytest.param(ANTHROPIC, OPENAI, openai_sse(*OPENAI_CHUNKS[:5]), id="openai"),
])
def test_a_stream_cut_short_is_not_completed(source: str, target: str, upstream: bytes) -> None:
    stream = StreamTranslator(source, target, FALLBACK, True)
    assert stream.feed(upstream)
    assert stream.close() == b""


def test_an_unterminated_last_event_still_counts() -> None:
    stream = StreamTranslator(ANTHROPIC, OPENAI, FALLBACK, False)
    stream.feed(OPENAI_STREAM.removesuffix(b"\n\n"))
    assert stream.close().endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_azure_style_prompt_filter_chunk_starts_nothing() -> None:
    stream = StreamTranslator(ANTHROPIC, OPENAI, FALLBACK, False)
    assert stream.feed(openai_sse({"id": "", "object": "", "created": 0, "model": "",
                                   "choices": [], "prompt_filter_results": []})) == b""
    assert b'"id":"msg_chatcmpl-9x"' in stream.feed(openai_sse(OPENAI_CHUNKS[1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_same_family_streams_pass_through(family: str) -> None:
    stream = StreamTranslator(family, family, FALLBACK, True)
    assert stream.feed(b"data: {\"x\"") == b"data: {\"x\"" and stream.close() == b""


# ---- requests: OpenAI chat -> Anthropic ----------------------------------------------

def to_anthropic(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return translate.request({"model": "gpt-4o", **body}, OPENAI, ANTHROPIC, FALLBACK)


def to_openai(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    body.setdefault("max_tokens", 100)
    return translate.request({"model": "claude-x", **body}, ANTHROPIC, OPENAI, FALLBACK)


def without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in (*keys, "model", "messages")}


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {"max_tokens": 4096}),  # Anthropic requires one
    ({"max_tokens": 100}, {"max_tokens": 100}),
    ({"max_completion_tokens": 200, "max_tokens": 100}, {"max_tokens": 200}),
    ({"temperature": 1.5}, {"temperature": 1}),  # OpenAI's range is 0-2, Anthropic's 0-1
    ({"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3}),  # not both, for new Claudes
    ({"top_p": 0.9}, {"top_p": 0.9}),
    ({"stop": "END"}, {"stop_sequences": ["END"]}),
    ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
    ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
    ({"user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
    ({"safety_identifier": "s-1"}, {"metadata": {"user_id": "s-1"}}),
    ({"n": 1, "logprobs": False, "response_format": {"type": "text"}, "modalities": ["text"],
      "audio": None, "logit_bias": {}, "top_logprobs": None}, {}),
    ({"seed": 7, "frequency_penalty": 0.5, "presence_penalty": 0.5, "service_tier": "auto",
      "store": True, "metadata": {"k": "v"}, "prompt_cache_key": "x",
      "prompt_cache_retention": "24h", "reasoning_effort": "high", "verbosity": "low"}, {}),
])
def test_openai_fields_to_anthropic(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    expected.setdefault("max_tokens", 4096)
    assert without(to_anthropic(**fields)) == expected


@pytest.mark.parametrize(("fields", "expected"), [
    ({"tools": [OPENAI_TOOL]}, {"tools": [ANTHROPIC_TOOL]}),
    ({"tools": [OPENAI_TOOL], "tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
    ({"tools": [OPENAI_TOOL], "tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
    ({"tools": [OPENAI_TOOL], "tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
    ({"tools": [OPENAI_TOOL],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     {"tool_choice": {"type": "tool", "name": "get_weather"}}),
    ({"tools": [OPENAI_TOOL], "parallel_tool_calls": False},
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ({"tools": [OPENAI_TOOL], "tool_choice": "required", "parallel_tool_calls": False},
     {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}}),
    ({"tool_choice": "auto", "parallel_tool_calls": True}, {}),  # no tools: no choice
    ({"tools": [{"type": "function", "function": {**OPENAI_TOOL["function"], "strict": True}}]},
     {"tools": [{**ANTHROPIC_TOOL, "strict": True}]}),
    ({"tools": [{"type": "function", "function": {"name": "now"}}]},
     {"tools": [{"name": "now", "input_schema": {"type": "object"}}]}),
])
def test_openai_tools_to_anthropic(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    out = without(to_anthropic(**fields), "max_tokens")
    assert {k: v for k, v in out.items() if k in expected} == expected
    assert "tool_choice" in out or "tool_choice" not in expected


def test_openai_conversation_to_anthropic() -> None:
    out = to_anthropic(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use "},
                                          {"type": "text", "text": "metric units."}]},
        {"role": "user", "content": "Weather in Paris", "name": "ann"},
        {"role": "user", "content": [
            {"type": "text", "text": "and Rome?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K",
                                                "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/rome.jpg"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call.2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Thanks"},
    ])
    assert out["system"] == "Be brief.\n\nUse metric units."
    assert out["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris"}, {"type": "text", "text": "and Rome?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0K"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/rome.jpg"}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather",
             "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "call_2",
             "content": [{"type": "text", "text": "21C"}]},
            {"type": "text", "text": "Thanks"}]},
    ]


# ---- requests: Anthropic -> OpenAI chat ----------------------------------------------

@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {}),
    ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_p": 0.9}),
    ({"stop_sequences": ["END", "STOP"]}, {"stop": ["END", "STOP"]}),
    ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
    ({"metadata": {"user_id": "u-1"}}, {"user": "u-1"}),
    ({"thinking": {"type": "disabled"}, "output_config": {"effort": "low"}}, {}),
    ({"top_k": 5, "service_tier": "auto", "speed": "fast",
      "cache_control": {"type": "ephemeral"}}, {}),
    ({"tools": [ANTHROPIC_TOOL]}, {"tools": [OPENAI_TOOL]}),
    ({"tools": [{**ANTHROPIC_TOOL, "type": "custom", "strict": True,
                 "cache_control": {"type": "ephemeral"}}]},
     {"tools": [{"type": "function", "function": {**OPENAI_TOOL["function"], "strict": True}}]}),
    ({"tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "auto"}},
     {"tools": [OPENAI_TOOL], "tool_choice": "auto"}),
    ({"tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "any"}},
     {"tools": [OPENAI_TOOL], "tool_choice": "required"}),
    ({"tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "none"}},
     {"tools": [OPENAI_TOOL], "tool_choice": "none"}),
    ({"tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "tool", "name": "get_weather",
                                                 "disable_parallel_tool_use": True}},
     {"tools": [OPENAI_TOOL], "parallel_tool_calls": False,
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
])
def test_anthropic_fields_to_openai(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert without(to_openai(**fields)) == {"max_completion_tokens": 100, **expected}


def test_anthropic_conversation_to_openai() -> None:
    out = to_openai(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use metric units."}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                             "data": "/9j/4AAQ"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C",
                 "is_error": False},
                {"type": "text", "text": "Thanks"}]},
            {"role": "assistant", "content": "You're welcome."},
        ])
    assert out["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."},
                                       {"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
        {"role": "assistant", "content": "You're welcome."},
    ]


# ---- round trips -------------------------------------------------------------------

OPENAI_REQUEST = {
    "model": "gpt-4o", "max_completion_tokens": 256, "temperature": 0.5, "stop": ["END"],
    "stream": True, "user": "u-1", "tools": [OPENAI_TOOL], "parallel_tool_calls": False,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Lyon","days":[1,2]}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
        {"role": "assistant", "content": "Paris 18C, Lyon 21C."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {
            "type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}}]},
    ]}


def test_openai_request_round_trips_through_anthropic() -> None:
    there = translate.request(OPENAI_REQUEST, OPENAI, ANTHROPIC, "claude-x")
    back = translate.request(there, ANTHROPIC, OPENAI, "gpt-4o")
    assert back == {**OPENAI_REQUEST, "stream_options": {"include_usage": True}}
    assert there["messages"][1]["content"][1]["input"] == {"city": "Lyon", "days": [1, 2]}


def test_anthropic_request_round_trips_through_openai() -> None:
    there = translate.request(OPENAI_REQUEST, OPENAI, ANTHROPIC, "claude-x")
    again = translate.request(translate.request(there, ANTHROPIC, OPENAI, "gpt-4o"),
                              OPENAI, ANTHROPIC, "claude-x")
    assert again == there


def test_requests_are_not_changed_in_place() -> None:
    before = copy.deepcopy(OPENAI_REQUEST)
    there = translate.request(OPENAI_REQUEST, OPENAI, ANTHROPIC, "claude-x")
    snapshot = copy.deepcopy(there)
    translate.request(there, ANTHROPIC, OPENAI, "gpt-4o")
    assert (OPENAI_REQUEST, there) == (before, snapshot)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_family_is_a_copy_with_the_model(family: str) -> None:
    body = {"model": "a", "messages": [{"role": "user", "content": "Hi"}], "n": 3}
    out = translate.request(body, family, family, "b")
    assert out == {**body, "model": "b"} and out["messages"] is not body["messages"]
    assert translate.response(OPENAI_ANSWER, family, family, "b") == OPENAI_ANSWER


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="gemini"):
        translate.request({}, OPENAI, "gemini", FALLBACK)
    with pytest.raises(ValueError, match="gemini"):
        StreamTranslator("gemini", OPENAI, FALLBACK, False)


# ---- what refuses to fail over -------------------------------------------------------

@pytest.mark.parametrize(("fields", "names"), [
    ({"n": 3}, "n=3 (several choices)"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format of type json_object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format of type json_schema"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"moderation": {"model": "m"}}, "moderation"),
    ({"some_new_field": 1}, "some_new_field"),
    ({"tools": [{"type": "custom", "custom": {"name": "g"}}]}, "tools[0]: tools of type custom"),
    ({"tools": [OPENAI_TOOL], "tool_choice": {"type": "allowed_tools"}},
     "tool_choice of type allowed_tools"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]},
     "messages[0].content[0]: input_audio content parts"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
     "messages[0].content[0]: file content parts"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0"}}]}]},
     "messages[0].content[0]: an image URL"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments is not a JSON object"),
    ({"messages": [{"role": "assistant", "audio": {"id": "a1"}}]}, "messages[0].audio"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]},
     "messages[0] has role 'function'"),
    ({"messages": "Hi"}, "messages is not a list"),
])
def test_untranslatable_openai_requests(fields: dict[str, Any], names: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        to_anthropic(**fields)
    assert str(refused.value).startswith(names)


@pytest.mark.parametrize(("fields", "names"), [
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {}}}},
     "output_config.format"),
    ({"container": "c1"}, "container"),
    ({"mcp_servers": [{"type": "url", "url": "https://m", "name": "m"}]}, "mcp_servers"),
    ({"context_management": {"edits": []}}, "context_management"),
    ({"inference_geo": "us"}, "inference_geo"),
    ({"some_new_field": 1}, "some_new_field"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "tools[0]: tools of type web_search_20250305"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0]: tools of type bash"),
    ({"tools": [{**ANTHROPIC_TOOL, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]},
     "messages[0].content[0]: document blocks"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "file", "file_id": "file_1"}}]}]},
     "messages[0].content[0]: images of source type file"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image", "source": {
                                                     "type": "url", "url": "https://i"}}]}]}]},
     "messages[0].content[0].content[0]: image blocks"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hm", "signature": "s"}]}]},
     "messages[0].content[0]: thinking blocks"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]},
     "messages[0].content[0]: server_tool_use blocks"),
    ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x", "citations": [
        {"type": "char_location", "cited_text": "x"}]}]}]}, "messages[0].content[0].citations"),
])
def test_untranslatable_anthropic_requests(fields: dict[str, Any], names: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        to_openai(**fields)
    assert str(refused.value).startswith(names)


# ---- answers -------------------------------------------------------------------------

def test_anthropic_answer_validates_as_a_chat_completion() -> None:
    text_only = {**ANTHROPIC_ANSWER, "stop_reason": "end_turn", "content": [
        {"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}
    out = translate.response(text_only, OPENAI, ANTHROPIC, FALLBACK)
    completion = ChatCompletion.model_validate(out)
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].message.tool_calls is None and isinstance(out["created"], int)
    calls_only = {**ANTHROPIC_ANSWER, "content": ANTHROPIC_ANSWER["content"][1:]}
    message = ChatCompletion.model_validate(
        translate.response(calls_only, OPENAI, ANTHROPIC, FALLBACK)).choices[0].message
    assert message.content is None and message.tool_calls is not None


def test_openai_answer_validates_as_an_anthropic_message() -> None:
    refused = copy.deepcopy(OPENAI_ANSWER)
    refused["choices"][0].update(finish_reason="stop", message={
        "role": "assistant", "content": None, "refusal": "I can't help with that."})
    message = Message.model_validate(translate.response(refused, ANTHROPIC, OPENAI, FALLBACK))
    assert message.stop_reason == "refusal"
    assert message.content[0].type == "text" and message.content[0].text.startswith("I can't")
    bad = copy.deepcopy(OPENAI_ANSWER)
    bad["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Pa'
    message = Message.model_validate(translate.response(bad, ANTHROPIC, OPENAI, FALLBACK))
    assert message.content[1].type == "tool_use" and message.content[1].input == {}
