"""Which requests' answers the response cache may keep, and the keys it keeps them by:
an exact key over everything that decides the answer, and for semantic matching a scope
(everything but the conversation's words) plus the words to embed. Pure: no I/O.

Families name the body shapes: "openai_chat" (chat/completions), "openai_responses",
"openai_embeddings", "anthropic_messages", "gemini" (generateContent and
streamGenerateContent; embedContent and batchEmbedContents are told apart by their
body) and "other", which is never cached.

What is cacheable (`uncacheable` returns one of REASONS otherwise):
- Only answers that do not sample: `temperature` present and 0. Absent means the
  vendor's default, which samples (1 at OpenAI, Anthropic and Gemini). A `seed` does not
  make a sampled request cacheable: OpenAI calls it best effort.
- `top_p` and `top_k` are allowed with temperature 0: greedy decoding takes the most
  likely token, which every nucleus and top-k set contains. They stay in the key.
- One choice: `n` (Gemini: `candidateCount`) absent or 1.
- Nothing that reads state outside the request: a stored previous response,
  conversation, prompt or context cache, a background job, or a hosted tool (web
  search, file search, code execution, remote MCP…), whose results change over time.
  Client-side tools (functions) are fine: their results come back in a later request.
- Embeddings are deterministic: cacheable without a temperature.

What the exact key leaves out: fields that change neither the answer nor what it says
(`OMITTED`): the end-user and abuse-monitoring ids (`user`, `safety_identifier`),
`metadata`, and the vendor's own prompt-cache routing hints. Only where the answer does
not echo them: a Responses object repeats `user`, `metadata`, `store` and the rest, so
a replay would show one caller another's values, and for "openai_responses" nothing is
left out. `store` stays in every key (it decides whether the answer's id can be fetched
again), as do `service_tier` (echoed, and priced differently) and `stream` and
`stream_options` (a streamed answer and a buffered one are kept apart, each replayed as
the vendor sent it). Numbers are compared by value (0 and 0.0 are one key).

Headers that change an answer (`anthropic-version`, `anthropic-beta`, Gemini's
`alt=sse` query parameter) are not in the body: a caller folds them into `path`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

FAMILIES = ("openai_chat", "openai_responses", "openai_embeddings", "anthropic_messages",
            "gemini", "other")

REASONS = {
    "not_cacheable_endpoint": "the endpoint's answers are never cached",
    "not_json_object": "the body is not a JSON object",
    "temperature_absent": "no temperature: the vendor's default samples",
    "temperature_not_zero": "a temperature other than 0 samples",
    "several_choices": "more than one choice (n or candidateCount) is asked for",
    "server_state": "the answer depends on state the vendor keeps (a stored response, "
                    "conversation, prompt or context cache) or comes later (background)",
    "hosted_tool": "a tool the vendor runs (web search, file search, code execution, MCP…) "
                   "answers from outside the request",
}

# Fields that change nothing in the answer, per family whose answer does not echo them.
OMITTED: dict[str, frozenset[str]] = {
    "openai_chat": frozenset({"user", "safety_identifier", "metadata",
                              "prompt_cache_key", "prompt_cache_retention"}),
    "openai_embeddings": frozenset({"user"}),
    "anthropic_messages": frozenset({"metadata"}),
    "gemini": frozenset({"labels"}),
}

# Body fields that point at state the vendor keeps, per family.
_SERVER_STATE = {
    "openai_responses": ("previous_response_id", "conversation", "prompt"),
    "anthropic_messages": ("container",),
    "gemini": ("cachedContent", "cached_content"),
}
_CLIENT_TOOLS = frozenset({"function", "custom"})  # OpenAI tool types the caller runs
_ANTHROPIC_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution")
_GEMINI_HOSTED = frozenset({"googleSearch", "google_search", "googleSearchRetrieval",
                            "google_search_retrieval", "codeExecution", "code_execution",
                            "urlContext", "url_context", "retrieval", "googleMaps",
                            "google_maps", "fileSearch", "file_search", "computerUse",
                            "computer_use"})


def uncacheable(body: Any, family: str) -> str | None:
    """Why this request's answer may not be cached (a key of REASONS), or None when it
    may: see the module docstring for the rules."""
    if family not in FAMILIES or family == "other":
        return "not_cacheable_endpoint"
    if not isinstance(body, dict):
        return "not_json_object"
    if any(body.get(f) is not None for f in _SERVER_STATE.get(family, ())) \
            or body.get("background") is True:
        return "server_state"
    if _hosted_tool(body, family):
        return "hosted_tool"
    if family == "openai_embeddings" or (family == "gemini" and _gemini_embedding(body)):
        return None
    config = _gemini_config(body) if family == "gemini" else body
    temperature = config.get("temperature")
    if temperature is None:
        return "temperature_absent"
    if not _number(temperature) or temperature != 0:
        return "temperature_not_zero"
    if family == "gemini":
        choices = config.get("candidateCount", config.get("candidate_count"))
    else:
        choices = body.get("n")  # OpenAI chat's; no other family has one
    if choices is not None and (not _number(choices) or choices != 1):
        return "several_choices"
    return None


def exact_key(team: str | None, vendor: str, path: str, body: Any,
              family: str = "other") -> str:
    """sha256 hex of the canonical form of team, vendor, path and body (sorted keys, no
    whitespace, non-ASCII as is, integral floats as integers), less `OMITTED[family]`.
    With the default family nothing is left out: fewer hits, never a wrong one.
    `path` includes any query parameter that changes the answer, never credentials."""
    return _digest("exact/1", team, vendor, path, _strip(body, family))


def semantic_parts(team: str | None, vendor: str, path: str, body: Any,
                   family: str) -> tuple[str, str] | None:
    """(scope, text) for semantic matching, or None: the family has no conversation
    (embeddings: a neighbour's vector is no answer; "other"), or it holds no words.

    `text` is the conversation's user and assistant words, one "role: text" line per
    text part. `scope` is a sha256 over everything else: team, vendor, path, model,
    parameters, tools, the shape of the conversation (roles, parts, images) with its
    words blanked — so two requests are only ever matched when all of that is equal.
    System and developer instructions, tool calls and tool results stay in the scope,
    compared exactly: instructions are the agent's configuration, and tool results are
    data an answer is computed from (15 °C and 16 °C embed alike)."""
    split = _SPLITTERS.get(family)
    if split is None or not isinstance(body, dict):
        return None
    lines: list[str] = []
    skeleton = split(body, lines)
    if skeleton is None or not lines:
        return None
    scope = _digest("semantic/1", team, vendor, path, family, _strip(skeleton, family))
    return scope, "\n".join(lines)


# -- canonical form ---------------------------------------------------------------------

def _digest(*parts: Any) -> str:
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _strip(body: Any, family: str) -> Any:
    omitted = OMITTED.get(family)
    if not omitted or not isinstance(body, dict):
        return body
    return {k: v for k, v in body.items() if k not in omitted}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- what makes an answer depend on more than the request ------------------------------

def _hosted_tool(body: dict[str, Any], family: str) -> bool:
    tools = body.get("tools")
    tools = tools if isinstance(tools, list) else []
    if family == "openai_chat":
        return body.get("web_search_options") is not None or any(
            isinstance(t, dict) and t.get("type", "function") not in _CLIENT_TOOLS
            for t in tools)
    if family == "openai_responses":
        return any(not isinstance(t, dict) or t.get("type") not in _CLIENT_TOOLS
                   for t in tools)
    if family == "anthropic_messages":
        return bool(body.get("mcp_servers")) or any(
            isinstance(t, dict) and str(t.get("type", "")).startswith(_ANTHROPIC_SERVER_TOOLS)
            for t in tools)
    if family == "gemini":
        return any(isinstance(t, dict) and not _GEMINI_HOSTED.isdisjoint(t) for t in tools)
    return False


def _gemini_embedding(body: dict[str, Any]) -> bool:
    return "contents" not in body and ("content" in body or "requests" in body)


def _gemini_config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig", body.get("generation_config"))
    return config if isinstance(config, dict) else {}


# -- the conversation's words, and the rest --------------------------------------------
# Each splitter returns a copy of the body with every embedded text blanked to "" (the
# scope's skeleton) and appends "role: text" lines; None when there is no conversation.

_Splitter = Callable[[dict[str, Any], list[str]], dict[str, Any] | None]
_SPOKEN = ("user", "assistant")


def _text_parts(parts: list[Any], role: str, lines: list[str], kinds: frozenset[str],
                field: str = "text") -> list[Any]:
    out = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") in kinds \
                and isinstance(part.get(field), str):
            _say(role, part[field], lines)
            part = {**part, field: ""}
        out.append(part)
    return out


def _say(role: str, text: str, lines: list[str]) -> None:
    if text.strip():
        lines.append(f"{role}: {text}")


def _messages(items: Any, lines: list[str], kinds: frozenset[str]) -> list[Any] | None:
    """OpenAI chat and Anthropic messages; also Responses input items."""
    if not isinstance(items, list):
        return None
    out = []
    for m in items:
        role = m.get("role") if isinstance(m, dict) else None
        if role in _SPOKEN and m.get("type", "message") == "message":
            content = m.get("content")
            if isinstance(content, str):
                _say(role, content, lines)
                m = {**m, "content": ""}
            elif isinstance(content, list):
                m = {**m, "content": _text_parts(content, role, lines, kinds)}
        out.append(m)
    return out


def _chat(body: dict[str, Any], lines: list[str]) -> dict[str, Any] | None:
    messages = _messages(body.get("messages"), lines, frozenset({"text"}))
    return None if messages is None else {**body, "messages": messages}


def _responses(body: dict[str, Any], lines: list[str]) -> dict[str, Any] | None:
    given = body.get("input")
    if isinstance(given, str):
        _say("user", given, lines)
        return {**body, "input": ""}
    items = _messages(given, lines, frozenset({"input_text", "output_text", "text"}))
    return None if items is None else {**body, "input": items}


def _gemini(body: dict[str, Any], lines: list[str]) -> dict[str, Any] | None:
    contents = body.get("contents")
    if not isinstance(contents, list):
        return None
    out = []
    for c in contents:
        if isinstance(c, dict) and isinstance(c.get("parts"), list) \
                and c.get("role", "user") in ("user", "model"):
            role, parts = c.get("role", "user"), []
            for p in c["parts"]:
                if isinstance(p, dict) and isinstance(p.get("text"), str) \
                        and not p.get("thought"):
                    _say(role, p["text"], lines)
                    p = {**p, "text": ""}
                parts.append(p)
            c = {**c, "parts": parts}
        out.append(c)
    return {**body, "contents": out}


_SPLITTERS: dict[str, _Splitter] = {
    "openai_chat": _chat,
    "anthropic_messages": _chat,  # the same shape; `system` is top-level and stays
    "openai_responses": _responses,
    "gemini": _gemini,
}
