"""Which answers the response cache may keep, and its keys (`egressguard.core.cachekey`):
the rules as a table with their reasons, exact keys stable under JSON spelling and
apart on everything that changes an answer, and semantic scopes and texts per family."""

from __future__ import annotations

import json
from typing import Any

import pytest

from egressguard.core.cachekey import REASONS, exact_key, semantic_parts, uncacheable

CHAT = {"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": "How do I reset my password?"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 100, "temperature": 0,
            "messages": [{"role": "user", "content": "How do I reset my password?"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
          "generationConfig": {"temperature": 0}}
PATH = "/v1/chat/completions"


def with_(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**body, **changes}
    return {k: v for k, v in out.items() if v is not ...}  # `...`: remove the field


@pytest.mark.parametrize(("family", "body", "reason"), [
    # temperature
    ("openai_chat", CHAT, None),
    ("openai_chat", with_(CHAT, temperature=0.0), None),
    ("openai_chat", with_(CHAT, temperature=...), "temperature_absent"),
    ("openai_chat", with_(CHAT, temperature=None), "temperature_absent"),
    ("openai_chat", with_(CHAT, temperature=0.7), "temperature_not_zero"),
    ("openai_chat", with_(CHAT, temperature="0"), "temperature_not_zero"),
    ("openai_chat", with_(CHAT, temperature=False), "temperature_not_zero"),
    ("openai_chat", with_(CHAT, temperature=0.7, seed=1), "temperature_not_zero"),
    ("anthropic_messages", MESSAGES, None),
    ("anthropic_messages", with_(MESSAGES, temperature=...), "temperature_absent"),
    ("anthropic_messages", with_(MESSAGES, temperature=1), "temperature_not_zero"),
    ("gemini", GEMINI, None),
    ("gemini", with_(GEMINI, generationConfig={"topP": 0.5}), "temperature_absent"),
    ("gemini", with_(GEMINI, generationConfig=..., generation_config={"temperature": 0}),
     None),
    ("openai_responses", {"model": "gpt-4.1", "input": "Hi", "temperature": 0}, None),
    ("openai_responses", {"model": "gpt-4.1", "input": "Hi"}, "temperature_absent"),
    # choices
    ("openai_chat", with_(CHAT, n=1), None),
    ("openai_chat", with_(CHAT, n=2), "several_choices"),
    ("gemini", with_(GEMINI, generationConfig={"temperature": 0, "candidateCount": 2}),
     "several_choices"),
    # greedy decoding ignores nucleus and top-k; streaming is cached as streamed
    ("openai_chat", with_(CHAT, top_p=0.1, stream=True), None),
    ("anthropic_messages", with_(MESSAGES, top_k=5), None),
    # embeddings are deterministic
    ("openai_embeddings", {"model": "text-embedding-3-small", "input": "Hi"}, None),
    ("gemini", {"content": {"parts": [{"text": "Hi"}]}}, None),
    ("gemini", {"requests": [{"content": {"parts": [{"text": "Hi"}]}}]}, None),
    # state outside the request
    ("openai_responses", {"input": "Hi", "temperature": 0, "previous_response_id": "r"},
     "server_state"),
    ("openai_responses", {"input": "Hi", "temperature": 0, "conversation": "c"},
     "server_state"),
    ("openai_responses", {"input": "Hi", "temperature": 0, "prompt": {"id": "p"}},
     "server_state"),
    ("openai_responses", {"input": "Hi", "temperature": 0, "background": True},
     "server_state"),
    ("gemini", with_(GEMINI, cachedContent="cachedContents/x"), "server_state"),
    ("anthropic_messages", with_(MESSAGES, container="c"), "server_state"),
    # tools the vendor runs, and ones the caller runs
    ("openai_responses", {"input": "Hi", "temperature": 0,
                          "tools": [{"type": "web_search"}]}, "hosted_tool"),
    ("openai_responses", {"input": "Hi", "temperature": 0,
                          "tools": [{"type": "function", "name": "f"}]}, None),
    ("openai_chat", with_(CHAT, web_search_options={}), "hosted_tool"),
    ("openai_chat", with_(CHAT, tools=[{"type": "function", "function": {"name": "f"}}]),
     None),
    ("anthropic_messages", with_(MESSAGES, tools=[{"type": "web_search_20250305",
                                                   "name": "web_search"}]), "hosted_tool"),
    ("anthropic_messages", with_(MESSAGES, tools=[{"name": "f", "input_schema": {}}]), None),
    ("anthropic_messages", with_(MESSAGES, mcp_servers=[{"url": "https://x"}]),
     "hosted_tool"),
    ("gemini", with_(GEMINI, tools=[{"googleSearch": {}}]), "hosted_tool"),
    ("gemini", with_(GEMINI, tools=[{"functionDeclarations": []}]), None),
    # never
    ("other", CHAT, "not_cacheable_endpoint"),
    ("openai_completions", CHAT, "not_cacheable_endpoint"),
    ("openai_chat", [CHAT], "not_json_object"),
])
def test_what_may_be_cached_and_why_not(family: str, body: Any, reason: str | None) -> None:
    assert uncacheable(body, family) == reason
    assert reason is None or reason in REASONS


def test_exact_key_is_stable_under_key_order_whitespace_and_number_spelling() -> None:
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "é"}]}
    spelled = json.loads('{ "messages" : [ {"content":"\\u00e9", "role":"user"} ],\n'
                         '  "temperature": 0.0, "model": "m" }')
    key = exact_key("red", "openai", PATH, body)
    assert key == exact_key("red", "openai", PATH, spelled)
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize("change", [
    {"team": "blue"}, {"team": None}, {"team": ""}, {"vendor": "azure_openai"},
    {"path": "/v1/completions"}, {"body": with_(CHAT, stream=True)},
    {"body": with_(CHAT, stream=True, stream_options={"include_usage": True})},
    {"body": with_(CHAT, temperature=0.5)}, {"body": with_(CHAT, model="gpt-4o")},
    {"body": with_(CHAT, max_tokens=5)}, {"body": with_(CHAT, store=True)},
    {"body": with_(CHAT, service_tier="flex")},
    {"body": with_(CHAT, messages=[{"role": "user", "content": "How do I reset my password"}])},
])
def test_exact_key_differs_by_whatever_changes_the_answer(change: dict[str, Any]) -> None:
    base = {"team": "red", "vendor": "openai", "path": PATH, "body": CHAT}
    assert exact_key(**{**base, **change}, family="openai_chat") \
        != exact_key(**base, family="openai_chat")


@pytest.mark.parametrize(("family", "body", "ignored"), [
    ("openai_chat", CHAT, {"user": "u1", "safety_identifier": "s", "metadata": {"a": "b"},
                           "prompt_cache_key": "k", "prompt_cache_retention": "24h"}),
    ("anthropic_messages", MESSAGES, {"metadata": {"user_id": "u1"}}),
    ("openai_embeddings", {"model": "e", "input": "x"}, {"user": "u1"}),
])
def test_exact_key_leaves_out_what_the_answer_neither_depends_on_nor_echoes(
        family: str, body: dict[str, Any], ignored: dict[str, Any]) -> None:
    plain = exact_key("red", "v", PATH, body, family)
    assert exact_key("red", "v", PATH, {**body, **ignored}, family) == plain
    # without the family nothing is left out: fewer hits, never a wrong one
    assert exact_key("red", "v", PATH, {**body, **ignored}) != exact_key("red", "v", PATH, body)


def test_a_responses_key_keeps_what_its_answer_echoes() -> None:
    body = {"model": "gpt-4.1", "input": "Hi", "temperature": 0}
    for echoed in ({"user": "u1"}, {"metadata": {"a": "b"}}, {"store": False}):
        assert exact_key("red", "openai", "/v1/responses", {**body, **echoed},
                         "openai_responses") \
            != exact_key("red", "openai", "/v1/responses", body, "openai_responses")


def test_exact_key_takes_lone_surrogates() -> None:
    body = with_(CHAT, messages=[{"role": "user", "content": "\ud800"}])
    assert exact_key("red", "openai", PATH, body) != exact_key("red", "openai", PATH, CHAT)


# -- semantic parts ---------------------------------------------------------------------

def parts(body: dict[str, Any], family: str, team: str | None = "red",
          path: str = PATH) -> tuple[str, str]:
    found = semantic_parts(team, "openai", path, body, family)
    assert found is not None
    return found


@pytest.mark.parametrize(("family", "body", "text"), [
    ("openai_chat", {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": [{"type": "text", "text": "Reset my password"},
                                     {"type": "image_url", "image_url": {"url": "data:x"}}]},
    ]}, "user: Hi\nassistant: Hello.\nuser: Reset my password"),
    ("openai_chat", {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "15 C, sunny"},
    ]}, "user: Weather in Paris?"),
    ("anthropic_messages", {"system": [{"type": "text", "text": "Be terse."}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "image", "source": {"type": "base64"}}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": "15 C"}, {"type": "text", "text": "And?"}]},
    ]}, "user: Hi\nassistant: Hello.\nuser: And?"),
    ("openai_responses", {"instructions": "Be terse.", "input": "Hi"}, "user: Hi"),
    ("openai_responses", {"input": [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Hi"},
                     {"type": "input_image", "image_url": "data:x"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"type": "function_call_output", "call_id": "c", "output": "15 C"},
        {"role": "user", "content": "More?"},
    ]}, "user: Hi\nassistant: Hello.\nuser: More?"),
    ("gemini", {"systemInstruction": {"parts": [{"text": "Be terse."}]}, "contents": [
        {"parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                    {"text": "Hello."}]},
    ]}, "user: Hi\nmodel: Hello."),
])
def test_the_text_is_the_conversations_words(family: str, body: dict[str, Any],
                                             text: str) -> None:
    assert parts(body, family)[1] == text


@pytest.mark.parametrize(("family", "body"), [
    ("openai_chat", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:x"}}]}]}),
    ("openai_chat", {"messages": [{"role": "system", "content": "Be terse."},
                                  {"role": "user", "content": "   "}]}),
    ("openai_chat", {"prompt": "legacy"}),
    ("openai_chat", {"messages": "not a list"}),
    ("openai_embeddings", {"input": "Hi"}),
    ("gemini", {"content": {"parts": [{"text": "Hi"}]}}),
    ("other", CHAT),
])
def test_no_semantic_parts_without_a_conversation_in_words(family: str,
                                                            body: dict[str, Any]) -> None:
    assert semantic_parts("red", "openai", PATH, body, family) is None


def test_a_scope_is_everything_but_the_words() -> None:
    scope, _ = parts(CHAT, "openai_chat")
    reworded = with_(CHAT, messages=[{"role": "user",
                                      "content": "What are the steps to reset my password?"}])
    assert parts(reworded, "openai_chat")[0] == scope
    # user ids and the like drop out as in the exact key
    assert parts(with_(CHAT, user="u2"), "openai_chat")[0] == scope
    for other in (parts(CHAT, "openai_chat", team="blue"),
                  parts(CHAT, "openai_chat", team=None),
                  parts(CHAT, "openai_chat", path="/v1/other"),
                  parts(with_(CHAT, model="gpt-4o"), "openai_chat"),
                  parts(with_(CHAT, stream=True), "openai_chat"),
                  parts(with_(CHAT, max_tokens=9), "openai_chat"),
                  parts(with_(CHAT, tools=[{"type": "function"}]), "openai_chat"),
                  parts(with_(CHAT, messages=[{"role": "system", "content": "Be terse."},
                                              *CHAT["messages"]]), "openai_chat"),
                  parts(with_(CHAT, messages=[{"role": "user", "content": [
                      {"type": "text", "text": "How do I reset my password?"}]}]),
                        "openai_chat"),
                  parts(MESSAGES, "anthropic_messages")):
        assert other[0] != scope


@pytest.mark.parametrize("change", [
    # instructions and tool results are compared exactly, never embedded
    {"role": "system", "content": "Be verbose."},
    {"role": "tool", "tool_call_id": "c1", "content": "16 C, sunny"},
])
def test_instructions_and_tool_results_are_part_of_the_scope(change: dict[str, Any]) -> None:
    body = with_(CHAT, messages=[{"role": "system", "content": "Be terse."},
                                 {"role": "tool", "tool_call_id": "c1",
                                  "content": "15 C, sunny"}, *CHAT["messages"]])
    changed = with_(body, messages=[change if m["role"] == change["role"] else m
                                    for m in body["messages"]])
    assert parts(changed, "openai_chat")[1] == parts(body, "openai_chat")[1]
    assert parts(changed, "openai_chat")[0] != parts(body, "openai_chat")[0]
