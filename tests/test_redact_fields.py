"""Text fields of vendor request bodies (`egressguard.core.redact.fields`)."""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

import orjson
import pytest

from egressguard.core import apis
from egressguard.core.redact import fields
from egressguard.core.redact.fields import (
    EMBEDDED,
    covered,
    json_output,
    opening,
    text_slots,
)
from egressguard.core.vendors import catalogue


def args(obj: Any) -> str:
    """Tool-call arguments as SDKs send them: JSON with spaces (json.dumps' default)."""
    import json
    return json.dumps(obj)


# ---- realistic bodies, one per shape -----------------------------------------------

OPENAI_CHAT = {
    "model": "gpt-4.1",
    "messages": [
        {"role": "system", "content": "You are the support bot of ACME."},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "name": "alice", "content": [
            {"type": "text", "text": "I am Alice Baker, alice@example.com"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
            {"type": "file", "file": {"file_data": "JVBERi0", "filename": "a.pdf"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "lookup_customer",
                "arguments": args({"email": "alice@example.com", "tags": ["vip", 3],
                                   "address": {"city": "Zoë's town"}})}},
            {"id": "call_2", "type": "custom", "custom": {"name": "sql",
                                                          "input": "SELECT * WHERE id=7"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"phone": "+1 555 0100"}'},
        {"role": "tool", "tool_call_id": "call_2",
         "content": [{"type": "text", "text": "1 row"}]},
        {"role": "assistant", "content": "Found you.", "refusal": None},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
        {"role": "assistant", "content": None,
         "function_call": {"name": "old", "arguments": args({"q": "legacy"})}},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "lookup_customer", "description": "Find a customer by email",
        "parameters": {"type": "object", "properties": {"email": {"type": "string"}}}}}],
    "functions": [{"name": "old", "description": "legacy"}],
    "prediction": {"type": "content", "content": "Dear Alice"},
    "user": "end-user-42",
    "metadata": {"ticket": "T-9", "n": 3},
    "response_format": {"type": "text"},
    "stop": ["END"],
}
OPENAI_CHAT_SLOTS = [
    ("messages[0].content", "You are the support bot of ACME."),
    ("messages[1].content[0].text", "Be brief."),
    ("messages[2].content[0].text", "I am Alice Baker, alice@example.com"),
    ("messages[3].tool_calls[0].function.arguments<json>.email", "alice@example.com"),
    ("messages[3].tool_calls[0].function.arguments<json>.tags[0]", "vip"),
    ("messages[3].tool_calls[0].function.arguments<json>.address.city", "Zoë's town"),
    ("messages[3].tool_calls[1].custom.input", "SELECT * WHERE id=7"),
    ("messages[4].content", '{"phone": "+1 555 0100"}'),
    ("messages[5].content[0].text", "1 row"),
    ("messages[6].content", "Found you."),
    ("messages[7].content[0].refusal", "I cannot."),
    ("messages[8].function_call.arguments<json>.q", "legacy"),
    ("messages[9].content", "Thanks"),
    ("prediction.content", "Dear Alice"),
    ("user", "end-user-42"),
    ("metadata.ticket", "T-9"),
]

OPENAI_COMPLETIONS = {"model": "gpt-3.5-turbo-instruct", "prompt": ["Say hi to Bob", [1, 2]],
                      "suffix": "Regards"}
OPENAI_COMPLETIONS_SLOTS = [("prompt[0]", "Say hi to Bob"), ("suffix", "Regards")]

RESPONSES = {
    "model": "gpt-5",
    "instructions": "You are a travel agent.",
    "input": [
        {"role": "user", "content": "Book for Carol Diaz"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "passport X1234567"},
            {"type": "input_image", "image_url": "https://example.com/p.png"},
            {"type": "input_file", "file_data": "JVBERi0", "filename": "id.pdf"},
        ]},
        {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA",
         "summary": [{"type": "summary_text", "text": "The user wants a flight"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Which date?", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "search",
         "arguments": args({"traveller": "Carol Diaz", "when": "2025-05-01"})},
        {"type": "function_call_output", "call_id": "c1", "output": "3 flights found"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "seat 4A"}]},
        {"type": "custom_tool_call", "call_id": "c3", "name": "shell", "input": "ls ~carol"},
        {"type": "custom_tool_call_output", "call_id": "c3", "output": "notes.txt"},
        {"type": "item_reference", "id": "msg_0"},
        {"type": "computer_call_output", "call_id": "c4",
         "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA"}},
    ],
    "prompt": {"id": "pmpt_1", "variables": {"customer": "Carol",
                                              "doc": {"type": "input_text", "text": "v"}}},
    "tools": [{"type": "function", "name": "search", "description": "Search flights"}],
    "text": {"format": {"type": "text"}},
}
RESPONSES_SLOTS = [
    ("instructions", "You are a travel agent."),
    ("input[0].content", "Book for Carol Diaz"),
    ("input[1].content[0].text", "passport X1234567"),
    ("input[2].summary[0].text", "The user wants a flight"),
    ("input[3].content[0].text", "Which date?"),
    ("input[4].arguments<json>.traveller", "Carol Diaz"),
    ("input[4].arguments<json>.when", "2025-05-01"),
    ("input[5].output", "3 flights found"),
    ("input[6].output[0].text", "seat 4A"),
    ("input[7].input", "ls ~carol"),
    ("input[8].output", "notes.txt"),
    ("prompt.variables.customer", "Carol"),
    ("prompt.variables.doc.text", "v"),
]

ANTHROPIC = {
    "model": "claude-sonnet-4-5", "max_tokens": 1024,
    "system": [{"type": "text", "text": "You help Dan.",
                "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "My SSN is 078-05-1120"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Need the record", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "EmwKAh"},
            {"type": "text", "text": "Looking up."},
            {"type": "tool_use", "id": "tu_1", "name": "lookup",
             "input": {"ssn": "078-05-1120", "filters": [{"name": "Dan"}], "limit": 5}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "tu_1", "content": "Dan Evans, Boston"},
            {"type": "tool_result", "tool_use_id": "tu_2", "is_error": False, "content": [
                {"type": "text", "text": "dan@example.org"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBOR"}},
            ]},
            {"type": "document", "title": "Contract", "context": "signed by Dan",
             "source": {"type": "text", "media_type": "text/plain", "data": "Dan owes 5"}},
            {"type": "document", "source": {"type": "content", "content": [
                {"type": "text", "text": "clause 1"}]}},
            {"type": "document", "source": {"type": "base64",
                                            "media_type": "application/pdf", "data": "JVB"}},
            {"type": "search_result", "source": "https://x", "title": "Wiki",
             "content": [{"type": "text", "text": "Dan was born"}]},
            {"type": "text", "text": "Answer now"},
        ]},
    ],
    "tools": [{"name": "lookup", "description": "Look a person up",
               "input_schema": {"type": "object"}}],
    "metadata": {"user_id": "dan@example.org"},
}
ANTHROPIC_SLOTS = [
    ("system[0].text", "You help Dan."),
    ("messages[0].content", "My SSN is 078-05-1120"),
    ("messages[1].content[2].text", "Looking up."),
    ("messages[1].content[3].input.ssn", "078-05-1120"),
    ("messages[1].content[3].input.filters[0].name", "Dan"),
    ("messages[2].content[0].content", "Dan Evans, Boston"),
    ("messages[2].content[1].content[0].text", "dan@example.org"),
    ("messages[2].content[2].title", "Contract"),
    ("messages[2].content[2].context", "signed by Dan"),
    ("messages[2].content[2].source.data", "Dan owes 5"),
    ("messages[2].content[3].source.content[0].text", "clause 1"),
    ("messages[2].content[5].content[0].text", "Dan was born"),
    ("messages[2].content[5].title", "Wiki"),
    ("messages[2].content[6].text", "Answer now"),
    ("metadata.user_id", "dan@example.org"),
]

GEMINI = {
    "systemInstruction": {"parts": [{"text": "You are Gemini for Erin."}]},
    "contents": [
        {"role": "user", "parts": [
            {"text": "Erin Fox lives at 1 Main St"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
            {"fileData": {"mimeType": "application/pdf", "fileUri": "https://x/f"}},
        ]},
        {"role": "model", "parts": [
            {"text": "Checking", "thought": True, "thoughtSignature": "CiQB"},
            {"functionCall": {"name": "find", "args": {"who": "Erin Fox",
                                                       "opts": {"ids": ["e-1"]}}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "find", "response": {
                "result": {"email": "erin@example.net", "age": 41}}}},
        ]},
        {"role": "model", "parts": [
            {"executableCode": {"language": "PYTHON", "code": "print('Erin')"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "Erin"}},
        ]},
    ],
    "tools": [{"functionDeclarations": [{"name": "find", "description": "Find people"}]}],
    "generationConfig": {"maxOutputTokens": 100},
}
GEMINI_SLOTS = [
    ("systemInstruction.parts[0].text", "You are Gemini for Erin."),
    ("contents[0].parts[0].text", "Erin Fox lives at 1 Main St"),
    ("contents[1].parts[0].text", "Checking"),
    ("contents[1].parts[1].functionCall.args.who", "Erin Fox"),
    ("contents[1].parts[1].functionCall.args.opts.ids[0]", "e-1"),
    ("contents[2].parts[0].functionResponse.response.result.email", "erin@example.net"),
    ("contents[3].parts[0].executableCode.code", "print('Erin')"),
    ("contents[3].parts[1].codeExecutionResult.output", "Erin"),
]
GEMINI_SNAKE = {
    "system_instruction": {"parts": [{"text": "sys"}]},
    "contents": [{"role": "user", "parts": [
        {"text": "hi"},
        {"function_call": {"name": "f", "args": {"a": "b"}}},
        {"function_response": {"name": "f", "response": {"c": "d"}}},
    ]}],
}
GEMINI_SNAKE_SLOTS = [
    ("system_instruction.parts[0].text", "sys"),
    ("contents[0].parts[0].text", "hi"),
    ("contents[0].parts[1].function_call.args.a", "b"),
    ("contents[0].parts[2].function_response.response.c", "d"),
]
GEMINI_COUNT = {"generateContentRequest": {"model": "models/gemini-2.5-pro",
                                           "contents": [{"parts": [{"text": "count me"}]}]}}
GEMINI_BATCH = {"batch": {"display_name": "b", "input_config": {"requests": {"requests": [
    {"request": {"contents": [{"parts": [{"text": "first"}]}]}, "metadata": {"key": "k1"}},
    {"request": {"contents": [{"parts": [{"text": "second"}]}]}},
]}}}}

COHERE_V2 = {
    "model": "command-a-03-2025",
    "messages": [
        {"role": "system", "content": "You are Coral."},
        {"role": "user", "content": [{"type": "text", "text": "Find Gina Hall"}]},
        {"role": "assistant", "tool_plan": "I will search for Gina",
         "tool_calls": [{"id": "t1", "type": "function", "function": {
             "name": "search", "arguments": args({"query": "Gina Hall"})}}]},
        {"role": "tool", "tool_call_id": "t1", "content": [
            {"type": "document", "document": {"id": "d1", "data": {"email": "g@h.io",
                                                                   "rank": 1}}},
            {"type": "text", "text": "done"},
        ]},
    ],
    "documents": ["Gina's CV", {"id": "d2", "data": {"title": "Gina notes"}}],
}
COHERE_V2_SLOTS = [
    ("messages[0].content", "You are Coral."),
    ("messages[1].content[0].text", "Find Gina Hall"),
    ("messages[2].tool_plan", "I will search for Gina"),
    ("messages[2].tool_calls[0].function.arguments<json>.query", "Gina Hall"),
    ("messages[3].content[0].document.data.email", "g@h.io"),
    ("messages[3].content[1].text", "done"),
    ("documents[0]", "Gina's CV"),
    ("documents[1].data.title", "Gina notes"),
]
COHERE_V1 = {
    "message": "And Henry?", "preamble": "You are Coral v1.",
    "chat_history": [
        {"role": "USER", "message": "Who is Ivy?"},
        {"role": "CHATBOT", "message": "Ivy is", "tool_calls": [
            {"name": "search", "parameters": {"q": "Ivy"}}]},
        {"role": "TOOL", "tool_results": [{"call": {"name": "search", "parameters": {"q": "Ivy"}},
                                           "outputs": [{"text": "Ivy Jones"}]}]},
    ],
    "documents": [{"title": "Henry", "snippet": "Henry K."}],
    "tool_results": [{"call": {"name": "s", "parameters": {"q": "Henry"}},
                      "outputs": [{"r": "found"}]}],
}
COHERE_V1_SLOTS = [
    ("documents[0].title", "Henry"),
    ("documents[0].snippet", "Henry K."),
    ("message", "And Henry?"),
    ("preamble", "You are Coral v1."),
    ("chat_history[0].message", "Who is Ivy?"),
    ("chat_history[1].message", "Ivy is"),
    ("chat_history[1].tool_calls[0].parameters.q", "Ivy"),
    ("chat_history[2].tool_results[0].call.parameters.q", "Ivy"),
    ("chat_history[2].tool_results[0].outputs[0].text", "Ivy Jones"),
    ("tool_results[0].call.parameters.q", "Henry"),
    ("tool_results[0].outputs[0].r", "found"),
]

INTERACTIONS = {
    "model": "gemini-2.5-flash", "system_instruction": "Be kind to Kim.",
    "input": [
        {"role": "user", "content": [{"type": "text", "text": "Kim Lee here"}]},
        {"role": "model", "content": [
            {"type": "function_call", "id": "f1", "name": "get", "arguments": {"who": "Kim"}}]},
        {"role": "user", "content": [
            {"type": "function_result", "call_id": "f1", "result": {"mail": "k@l.io"}}]},
    ],
}
INTERACTIONS_SLOTS = [
    ("input[0].content[0].text", "Kim Lee here"),
    ("input[1].content[0].arguments.who", "Kim"),
    ("input[2].content[0].result.mail", "k@l.io"),
    ("system_instruction", "Be kind to Kim."),
]

ANTHROPIC_BATCH = {"requests": [
    {"custom_id": "r1", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                   "messages": [{"role": "user", "content": "one"}]}},
    {"custom_id": "r2", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                   "system": "sys two",
                                   "messages": [{"role": "user", "content": "two"}]}},
]}

CASES: list[tuple[str, str, str, Any, list[tuple[str, str]]]] = [
    ("openai chat, every field", "openai", "chat", OPENAI_CHAT, OPENAI_CHAT_SLOTS),
    ("azure chat reads as openai", "azure_openai", "chat",
     {"messages": [{"role": "user", "content": "hi"}]}, [("messages[0].content", "hi")]),
    ("legacy completions", "openai", "chat", OPENAI_COMPLETIONS, OPENAI_COMPLETIONS_SLOTS),
    ("completions prompt string", "openai", "chat", {"prompt": "once"}, [("prompt", "once")]),
    ("completions token ids", "openai", "chat", {"prompt": [[1, 2], [3]]}, []),
    ("mistral conversations", "openai", "chat",
     {"instructions": "be short", "inputs": [{"role": "user", "content": "hi Wes"},
                                             {"type": "function.result", "output": "ok"}]},
     [("instructions", "be short"), ("inputs[0].content", "hi Wes"), ("inputs[1].output", "ok")]),
    ("mistral conversations string", "openai", "chat", {"inputs": "solo"}, [("inputs", "solo")]),
    ("responses items", "openai", "responses", RESPONSES, RESPONSES_SLOTS),
    ("responses string input", "openai", "responses",
     {"input": "Hello from Pat", "instructions": "sys"},
     [("instructions", "sys"), ("input", "Hello from Pat")]),
    ("conversation items", "openai", "responses",
     {"items": [{"type": "message", "role": "user", "content": "kept"}]},
     [("items[0].content", "kept")]),
    ("embeddings string", "openai", "embeddings", {"input": "embed Quinn"},
     [("input", "embed Quinn")]),
    ("embeddings list", "openai", "embeddings",
     {"input": ["a", "b"], "user": "u-1"}, [("input[0]", "a"), ("input[1]", "b"),
                                           ("user", "u-1")]),
    ("embeddings token ids", "openai", "embeddings", {"input": [[1, 2], [3, 4]]}, []),
    ("embeddings one token list", "openai", "embeddings", {"input": [1, 2, 3]}, []),
    ("images prompt", "openai", "images", {"prompt": "a portrait of Rob", "n": 1},
     [("prompt", "a portrait of Rob")]),
    ("speech input", "openai", "audio", {"input": "Hello Sam", "voice": "alloy",
                                         "instructions": "calm"},
     [("input", "Hello Sam"), ("instructions", "calm")]),
    ("anthropic messages", "anthropic", "messages", ANTHROPIC, ANTHROPIC_SLOTS),
    ("anthropic string system", "anthropic", "messages",
     {"system": "plain", "messages": [{"role": "user", "content": "x"}]},
     [("system", "plain"), ("messages[0].content", "x")]),
    ("anthropic thinking: signed goes back verbatim, unsigned is read", "anthropic",
     "messages", {"messages": [{"role": "assistant", "content": [
         {"type": "thinking", "thinking": "signed", "signature": "EqQB"},
         {"type": "thinking", "thinking": "unsigned"}]}]},
     [("messages[0].content[1].thinking", "unsigned")]),
    ("anthropic legacy complete", "anthropic", "chat",
     {"prompt": "\n\nHuman: hi Tom\n\nAssistant:"},
     [("prompt", "\n\nHuman: hi Tom\n\nAssistant:")]),
    ("anthropic batches", "anthropic", "batches", ANTHROPIC_BATCH, [
        ("requests[0].params.messages[0].content", "one"),
        ("requests[1].params.system", "sys two"),
        ("requests[1].params.messages[0].content", "two")]),
    ("gemini generateContent", "google", "chat", GEMINI, GEMINI_SLOTS),
    ("gemini snake_case", "google", "chat", GEMINI_SNAKE, GEMINI_SNAKE_SLOTS),
    ("gemini countTokens", "google", "chat", GEMINI_COUNT,
     [("generateContentRequest.contents[0].parts[0].text", "count me")]),
    ("gemini batch", "google", "batches", GEMINI_BATCH, [
        ("batch.input_config.requests.requests[0].request.contents[0].parts[0].text", "first"),
        ("batch.input_config.requests.requests[1].request.contents[0].parts[0].text",
         "second")]),
    ("gemini embedContent", "google", "embeddings",
     {"content": {"parts": [{"text": "emb"}]}, "title": "doc"},
     [("content.parts[0].text", "emb"), ("title", "doc")]),
    ("gemini batchEmbedContents", "google", "embeddings",
     {"requests": [{"model": "m", "content": {"parts": [{"text": "e1"}]}}]},
     [("requests[0].content.parts[0].text", "e1")]),
    ("imagen predict", "google", "images", {"instances": [{"prompt": "Uma's cat"}]},
     [("instances[0].prompt", "Uma's cat")]),
    ("gemini interactions", "google_interactions", "responses", INTERACTIONS,
     INTERACTIONS_SLOTS),
    ("cohere v2 chat", "cohere", "chat", COHERE_V2, COHERE_V2_SLOTS),
    ("cohere v1 chat", "cohere", "chat", COHERE_V1, COHERE_V1_SLOTS),
    ("cohere generate", "cohere", "chat", {"prompt": "write to Vic"},
     [("prompt", "write to Vic")]),
    ("cohere embed v1", "cohere", "embeddings", {"texts": ["t1"], "input_type": "x"},
     [("texts[0]", "t1")]),
    ("cohere embed v2 inputs", "cohere", "embeddings",
     {"inputs": [{"content": [{"type": "text", "text": "t2"},
                              {"type": "image_url", "image_url": {"url": "data:"}}]}]},
     [("inputs[0].content[0].text", "t2")]),
]


def found(api: str, endpoint: str, body: Any) -> list[tuple[str, str]]:
    return [(slot.where, slot.text) for slot in text_slots(api, endpoint, body)]


@pytest.mark.parametrize("api, endpoint, body, expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_text_slots(api: str, endpoint: str, body: Any, expected: list[tuple[str, str]]) -> None:
    assert found(api, endpoint, body) == expected


def _set_at(doc: Any, path: tuple[Any, ...], value: str) -> None:
    """Set a value at a slot path, parsing and re-serialising embedded JSON on the way."""
    if EMBEDDED in path:
        cut = path.index(EMBEDDED)
        outer, inner = path[:cut], path[cut + 1:]
        holder = doc
        for step in outer[:-1]:
            holder = holder[step]
        parsed = orjson.loads(holder[outer[-1]])
        _set_at(parsed, inner, value)
        holder[outer[-1]] = orjson.dumps(parsed).decode()
        return
    holder = doc
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value


@pytest.mark.parametrize("api, endpoint, body, expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_replacing_in_place_changes_only_the_slots(api: str, endpoint: str, body: Any,
                                                   expected: list[tuple[str, str]]) -> None:
    body = copy.deepcopy(body)
    original = orjson.dumps(body)
    reference = orjson.loads(original)  # built by path, independently of the slots
    slots = text_slots(api, endpoint, body)
    for i, slot in enumerate(slots):
        replacement = f'<X{i}> "quoted" \\ é'  # needs escaping at every level
        slot.set(replacement)
        _set_at(reference, slot.path, replacement)
    assert orjson.dumps(body) == orjson.dumps(reference)
    # still valid JSON, and the slots read back what was written
    assert orjson.loads(orjson.dumps(body)) == body
    assert [s.text for s in text_slots(api, endpoint, body)] == \
        [f'<X{i}> "quoted" \\ é' for i in range(len(slots))]


def test_untouched_bodies_keep_their_bytes() -> None:
    for _, api, endpoint, body, _ in CASES:
        before = orjson.dumps(body)
        for slot in text_slots(api, endpoint, body):
            slot.set(slot.text)  # a no-op write on plain slots; embedded re-serialise
        if all(EMBEDDED not in s.path for s in text_slots(api, endpoint, body)):
            assert orjson.dumps(body) == before


# ---- tool-call arguments: a JSON string read as the object it holds ----------------

def test_arguments_are_read_unescaped_and_written_back_as_valid_json() -> None:
    raw = '{"name": "Zo\\u00eb \\"Zed\\" O\'Neil", "path": "C:\\\\Users\\\\zoe", "n": 1.5}'
    body = {"messages": [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": raw}}]}]}
    slots = text_slots("openai", "chat", body)
    assert [s.text for s in slots] == ['Zoë "Zed" O\'Neil', "C:\\Users\\zoe"]
    slots[0].set('<PERSON_1> said "hi"')
    written = body["messages"][0]["tool_calls"][0]["function"]["arguments"]
    assert orjson.loads(written) == {"name": '<PERSON_1> said "hi"', "path": "C:\\Users\\zoe",
                                     "n": 1.5}
    slots[1].set("<PATH>")  # a second write keeps the first
    assert orjson.loads(body["messages"][0]["tool_calls"][0]["function"]["arguments"]) == \
        {"name": '<PERSON_1> said "hi"', "path": "<PATH>", "n": 1.5}


@pytest.mark.parametrize("arguments, expected", [
    ("not json at all: call Bob", [("m[0].arguments", "not json at all: call Bob")]),
    ('{"truncated": "Bo', [("m[0].arguments", '{"truncated": "Bo')]),
    ('"a json string"', [("m[0].arguments", '"a json string"')]),
    ("42", [("m[0].arguments", "42")]),
    ("", [("m[0].arguments", "")]),
    ('  [ "x", {"y": "z"} ]', [("m[0].arguments<json>[0]", "x"),
                               ("m[0].arguments<json>[1].y", "z")]),
    ('{"big": 123456789012345678901234567890, "s": "t"}',  # orjson would round it
     [("m[0].arguments", '{"big": 123456789012345678901234567890, "s": "t"}')]),
    ('{"neg": [-9223372036854775809], "s": "t"}',
     [("m[0].arguments", '{"neg": [-9223372036854775809], "s": "t"}')]),
    ('{"u64": 18446744073709551615, "s": "t"}',  # exact: read as the object
     [("m[0].arguments<json>.s", "t")]),
])
def test_arguments_that_are_not_a_json_object_are_one_text(
        arguments: str, expected: list[tuple[str, str]]) -> None:
    body = {"input": [{"type": "function_call", "arguments": arguments}]}
    got = [(s.where.replace("input", "m"), s.text) for s in text_slots("openai", "responses", body)]
    assert got == expected


def test_arguments_given_as_an_object_are_walked() -> None:
    body = {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": {"a": ["b"]}}}]}]}
    assert found("openai", "chat", body) == [("messages[0].tool_calls[0].function.arguments.a[0]",
                                              "b")]


# ---- dispatch ----------------------------------------------------------------------

def vendor(name: str) -> Any:
    v = catalogue().by_name(name)
    assert v is not None
    return v


@pytest.mark.parametrize("name, path, body, expected", [
    # Gemini's OpenAI-compatible path speaks openai, whatever the vendor's api
    ("google", "/v1beta/openai/chat/completions",
     {"messages": [{"role": "user", "content": "compat"}]}, [("messages[0].content", "compat")]),
    ("google", "/v1beta/models/gemini-2.5-pro:generateContent",
     {"contents": [{"parts": [{"text": "native"}]}]}, [("contents[0].parts[0].text", "native")]),
    ("google", "/v1beta/openai/embeddings", {"input": "e"}, [("input", "e")]),
    ("azure_openai", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
     {"messages": [{"role": "user", "content": "az"}]}, [("messages[0].content", "az")]),
    ("anthropic", "/v1/messages", {"messages": [{"role": "user", "content": "m"}]},
     [("messages[0].content", "m")]),
    ("anthropic", "/v1/messages/count_tokens", {"messages": [{"role": "user", "content": "c"}]},
     [("messages[0].content", "c")]),
    ("cohere", "/v2/chat", {"messages": [{"role": "user", "content": "co"}]},
     [("messages[0].content", "co")]),
    ("openai", "/v1/responses/input_tokens", {"input": "count"}, [("input", "count")]),
    ("openai", "/v1/files", {"purpose": "batch"}, []),
    ("openai", "/v1/models", {}, []),
])
def test_an_endpoint_names_the_shape_it_reads(name: str, path: str, body: Any,
                                              expected: list[tuple[str, str]]) -> None:
    v = vendor(name)
    endpoint = apis.endpoint(v, "POST", path)
    assert found(v.api, endpoint, body) == expected


@pytest.mark.parametrize("api, endpoint, expected", [
    ("openai", "chat", True), ("azure_openai", "responses", True),
    ("openai", "embeddings", True), ("anthropic", "messages", True),
    ("anthropic", "batches", True), ("google", "chat", True), ("cohere", "chat", True),
    ("openai", "batches", False),  # requests live in an uploaded file
    ("openai", "files", False), ("openai", "realtime", False), ("openai", "other", False),
    ("openai", "models", False), ("google", "realtime", False), ("cohere", "other", False),
    ("nope", "chat", False),
])
def test_covered(api: str, endpoint: str, expected: bool) -> None:
    assert covered(api, endpoint) is expected


BAD_BODIES: list[Any] = [
    None, 1, "text", [], [1, "a"], {}, {"messages": "x"}, {"messages": [None, 1, "s", []]},
    {"messages": [{"content": 5, "tool_calls": "x"}, {"content": [None, 3, {"text": 4}]}]},
    {"messages": [{"tool_calls": [{"function": "f"}, {"function": {"arguments": 7}}]}]},
    {"input": {"a": "b"}}, {"input": [None, {"content": {"x": 1}}, {"arguments": []}]},
    {"contents": "x"}, {"contents": [{"parts": "x"}, {"parts": [None, {"functionCall": 1}]}]},
    {"contents": {"parts": [{"text": "lone content"}]}},
    {"system": 5, "messages": [{"content": [{"type": "tool_use", "input": None}]}]},
    {"messages": [{"content": [{"type": "tool_result", "content": {"x": "y"}}]}]},
    {"requests": "x"}, {"requests": [None, {"params": "p"}]},
    {"batch": {"inputConfig": {"requests": {"requests": [None, {"request": 1}]}}}},
    {"chat_history": [None, {"tool_calls": [None]}], "documents": [None, 1]},
    {"prompt": {"variables": "v"}}, {"metadata": "m", "user": 1},
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_unexpected_shapes_never_raise(body: Any) -> None:
    for api in ("openai", "azure_openai", "anthropic", "google", "cohere",
                "google_interactions"):
        for endpoint in apis.ENDPOINTS:
            for slot in text_slots(api, endpoint, body):
                assert isinstance(slot.text, str)


def test_a_lone_content_where_a_list_belongs_is_read() -> None:
    assert found("google", "chat", {"contents": {"parts": [{"text": "lone"}]}}) == \
        [("contents.parts[0].text", "lone")]


def test_nesting_deeper_than_the_recursion_limit_is_walked() -> None:
    depth = sys.getrecursionlimit() * 3
    deep: Any = "bottom"
    for _ in range(depth):
        deep = {"k": [deep]}
    body = {"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "n", "input": deep}]}]}
    slots = text_slots("anthropic", "messages", body)
    assert [s.text for s in slots] == ["bottom"]
    slots[0].set("<X>")
    assert slots[0].container[slots[0].key] == "<X>"
    assert len(slots[0].path) == depth * 2 + 5  # messages[0].content[0].input, then k[0] each level


def test_a_slot_repr_names_the_field_never_the_value() -> None:
    slot = text_slots("openai", "chat", {"messages": [{"content": "secret sk-123"}]})[0]
    assert repr(slot) == "Slot(messages[0].content)"
    assert "sk-123" not in repr(slot)


# ---- conversation opening and JSON output ------------------------------------------

def _turns(api: str, n: int) -> dict[str, Any]:
    """A conversation of `api` after n exchanges."""
    if api == "openai":
        messages: list[Any] = [{"role": "system", "content": "sys"}]
        for i in range(n):
            messages += [{"role": "user", "content": f"u{i}"},
                         {"role": "assistant", "content": f"a{i}"}]
        return {"messages": messages[:-1], "user": "end-user"}
    if api == "anthropic":
        messages = []
        for i in range(n):
            messages += [{"role": "user", "content": f"u{i}"},
                         {"role": "assistant", "content": f"a{i}"}]
        return {"system": "sys", "messages": messages[:-1]}
    if api == "google":
        contents = []
        for i in range(n):
            contents += [{"role": "user", "parts": [{"text": f"u{i}"}]},
                         {"role": "model", "parts": [{"text": f"a{i}"}]}]
        return {"systemInstruction": {"parts": [{"text": "sys"}]}, "contents": contents[:-1]}
    if api == "cohere_v1":
        history = []
        for i in range(n - 1):
            history += [{"role": "USER", "message": f"u{i}"},
                        {"role": "CHATBOT", "message": f"a{i}"}]
        return {"preamble": "sys", "chat_history": history, "message": f"u{n - 1}"}
    raise AssertionError(api)


@pytest.mark.parametrize("api, endpoint, expected", [
    ("openai", "chat", ["sys", "u0", "end-user"]),
    ("anthropic", "messages", ["sys", "u0"]),
    ("google", "chat", ["sys", "u0"]),
    ("cohere_v1", "chat", ["u0", "sys"]),
])
def test_the_opening_stays_the_same_as_the_conversation_grows(
        api: str, endpoint: str, expected: list[str]) -> None:
    shape = "cohere" if api == "cohere_v1" else api
    openings = [opening(shape, endpoint, _turns(api, n)) for n in (1, 2, 5)]
    assert openings == [expected] * 3


def test_what_changes_between_requests_is_not_in_the_opening() -> None:
    one = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"request": "1"},
           "tools": [{"type": "function", "function": {"name": "a"}}]}
    two = {**one, "metadata": {"request": "2"}, "tools": []}
    assert opening("openai", "chat", one) == opening("openai", "chat", two) == ["hi"]
    anthropic = {"messages": [{"role": "user", "content": "hi"}],
                 "metadata": {"user_id": "u-7", "other": "x"}}
    assert opening("anthropic", "messages", anthropic) == ["hi", "u-7"]


def test_a_stateful_continuation_has_no_opening() -> None:
    assert opening("openai", "responses", {"previous_response_id": "resp_1", "input": "more"}) \
        is None
    assert opening("openai", "responses", {"conversation": "conv_1", "input": "more"}) is None
    assert opening("openai", "responses", {"instructions": "i", "input": [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
        {"role": "user", "content": "second"}]}) == ["i", "first"]
    assert opening("openai", "embeddings", {"input": "x"}) is None
    assert opening("openai", "chat", "not a body") is None


@pytest.mark.parametrize("api, body, expected", [
    ("openai", {"response_format": {"type": "json_object"}}, True),
    ("openai", {"response_format": {"type": "json_schema", "json_schema": {}}}, True),
    ("openai", {"response_format": {"type": "text"}}, False),
    ("openai", {"text": {"format": {"type": "json_schema"}}}, True),
    ("azure_openai", {"response_format": {"type": "json_object"}}, True),
    ("anthropic", {"output_format": {"type": "json_schema"}}, True),
    ("anthropic", {}, False),
    ("google", {"generationConfig": {"responseMimeType": "application/json"}}, True),
    ("google", {"generation_config": {"response_mime_type": "application/json"}}, True),
    ("google", {"generationConfig": {"responseMimeType": "text/plain"}}, False),
    ("cohere", {"response_format": {"type": "json_object"}}, True),
    ("openai", {"response_format": "json"}, False),
    ("openai", None, False),
])
def test_json_output(api: str, body: Any, expected: bool) -> None:
    assert json_output(api, "chat", body) is expected


# ---- speed -------------------------------------------------------------------------

def _conversation_40kb() -> dict[str, Any]:
    para = ("The customer wrote again about the delayed order and asked for a refund "
            "to the card on file; please check the ledger. ") * 9
    messages: list[Any] = [{"role": "system", "content": "You are a careful support agent."}]
    for i in range(20):
        messages.append({"role": "user", "content": [{"type": "text", "text": para}]})
        if i % 4 == 3:
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{i}", "type": "function", "function": {
                    "name": "ledger",
                    "arguments": args({"order": f"A-{i}", "note": para[:200]})}}]})
            messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": para[:400]})
        messages.append({"role": "assistant", "content": para[:600]})
    return {"model": "gpt-4.1", "messages": messages}


def test_a_40kb_twenty_turn_conversation_walks_well_under_a_millisecond() -> None:
    body = _conversation_40kb()
    assert 35_000 < len(orjson.dumps(body)) < 50_000
    assert len(text_slots("openai", "chat", body)) > 40
    best = float("inf")
    for _ in range(200):
        t = time.perf_counter()
        text_slots("openai", "chat", body)
        best = min(best, time.perf_counter() - t)
    assert best < 0.0005, f"{best * 1e6:.0f} µs"


def test_module_has_no_mitmproxy_import() -> None:
    with open(fields.__file__, encoding="utf-8") as f:
        source = f.read()
    assert "import mitmproxy" not in source and "from mitmproxy" not in source
