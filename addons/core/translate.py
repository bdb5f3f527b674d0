"""Vendor failover across API families: an agent's OpenAI chat completions request
re-sent to an Anthropic Messages fallback (or the reverse), and the answer, streamed
or not, brought back to the shape the agent's SDK parses.

Lossy only where nothing the agent relies on is lost (docs/failover.md lists it all).
What the other API cannot express raises `Untranslatable`: a fallback answer that
silently ignored part of the request would look complete to the agent, so such a
request must not fail over at all.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from egressguard.core import sseframe

OPENAI = "openai_chat"          # POST /v1/chat/completions
ANTHROPIC = "anthropic_messages"  # POST /v1/messages
FAMILIES = (OPENAI, ANTHROPIC)

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires a cap; an OpenAI request may have none
_OPENAI_MAX_STOP = 4       # OpenAI chat refuses more stop sequences
_MAX_EVENT = 16 << 20      # an SSE event longer than this is not a vendor's answer

Json = dict[str, Any]


class Untranslatable(Exception):
    """The request uses something the other API cannot express: it must not fail over."""


def _check(source: str, target: str) -> None:
    for family in (source, target):
        if family not in FAMILIES:
            raise ValueError(f"unknown API family {family!r}: one of {', '.join(FAMILIES)}")


def request(body: dict[str, Any], source: str, target: str, model: str) -> dict[str, Any]:
    """The agent's request body (API family `source`) as a request body of family
    `target`, for `model`. Raises Untranslatable. source == target: a copy with
    `model` replaced. The agent's body is never changed."""
    _check(source, target)
    if source == target:
        return {**copy.deepcopy(body), "model": model}
    if source == OPENAI:
        return _openai_to_anthropic(body, model)
    return _anthropic_to_openai(body, model)


def response(body: dict[str, Any], source: str, target: str, model: str) -> dict[str, Any]:
    """A non-streamed JSON answer of family `target` in family `source`'s shape;
    `model` is the model that served (the agent sees it). Error bodies are not
    translated (the caller never passes them)."""
    _check(source, target)
    if source == target:
        return copy.deepcopy(body)
    if source == OPENAI:
        return _completion_from_message(body, model)
    return _message_from_completion(body, model)


# ---- request fields ---------------------------------------------------------------

# field -> (values that may go, why others cannot). The field may be absent or null.
Gate = tuple[Callable[[Any], bool], Callable[[Any], str]]


def _type_of(v: Any) -> Any:
    return v.get("type") if isinstance(v, dict) else v


_OPENAI_GATES: dict[str, Gate] = {
    "n": (lambda v: v == 1, lambda v: f"n={v} (several choices) has no Anthropic equivalent"),
    "logprobs": (lambda v: v is False, lambda _: "logprobs has no Anthropic equivalent"),
    "top_logprobs": (lambda v: v == 0, lambda _: "top_logprobs has no Anthropic equivalent"),
    "response_format": (
        lambda v: _type_of(v) == "text",
        lambda v: f"response_format of type {_type_of(v)} has no Anthropic equivalent"),
    "audio": (lambda v: False, lambda _: "audio output has no Anthropic equivalent"),
    "modalities": (
        lambda v: v == ["text"],
        lambda v: f"modalities={v} (audio output) has no Anthropic equivalent"),
    "prediction": (lambda v: False, lambda _: "prediction (predicted outputs) has no "
                   "Anthropic equivalent"),
    "logit_bias": (lambda v: v == {}, lambda _: "logit_bias has no Anthropic equivalent"),
    "functions": (lambda v: v == [], lambda _: "functions (the legacy form of tools) is not "
                  "translated: send tools"),
    "function_call": (lambda v: False, lambda _: "function_call (the legacy form of "
                      "tool_choice) is not translated: send tool_choice"),
    "web_search_options": (lambda v: False, lambda _: "web_search_options (OpenAI's own "
                           "search) has no Anthropic equivalent"),
    "moderation": (lambda v: False, lambda _: "moderation (OpenAI's own checks) has no "
                   "Anthropic equivalent"),
}
# Hints to the primary vendor about serving (tier, storage, caching, reasoning effort,
# verbosity) and sampling (seed, penalties): without them the answer is still one the
# agent asked for.
_OPENAI_DROPPED = frozenset({
    "seed", "frequency_penalty", "presence_penalty", "service_tier", "store", "metadata",
    "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "verbosity",
    "stream_options"})
_OPENAI_TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "stream", "user", "safety_identifier", "tools", "tool_choice",
    "parallel_tool_calls"})

_ANTHROPIC_GATES: dict[str, Gate] = {
    "thinking": (lambda v: _type_of(v) == "disabled",
                 lambda _: "thinking (extended thinking) has no OpenAI chat equivalent"),
    "output_config": (
        lambda v: isinstance(v, dict) and v.get("format") is None,
        lambda _: "output_config.format (structured output) is not translated to OpenAI chat"),
    "container": (lambda v: False, lambda _: "container (Anthropic code execution) has no "
                  "OpenAI chat equivalent"),
    "mcp_servers": (lambda v: v == [], lambda _: "mcp_servers (Anthropic's MCP connector) "
                    "has no OpenAI chat equivalent"),
    "context_management": (lambda v: False, lambda _: "context_management has no OpenAI "
                           "chat equivalent"),
    "inference_geo": (lambda v: False, lambda _: "inference_geo (where the model runs) "
                      "cannot be honoured by an OpenAI fallback"),
}
# Sampling (top_k) and serving hints (tier, speed, prompt caching, effort inside
# output_config, which the gate above lets through alone).
_ANTHROPIC_DROPPED = frozenset({"top_k", "service_tier", "speed", "cache_control"})
_ANTHROPIC_TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "tools", "tool_choice"})


def _admit(body: Json, gates: dict[str, Gate], known: frozenset[str], other: str) -> None:
    """Refuse a body with a gated field set to what `other` cannot do, or a field this
    module does not know (it could change the answer in a way no one checked)."""
    for key, value in body.items():
        if key in gates:
            allowed, why = gates[key]
            if value is not None and not allowed(value):
                raise Untranslatable(why(value))
        elif key not in known:
            raise Untranslatable(f"{key} is not a field egressguard translates to {other}")


def _list(container: Json, key: str, where: str) -> list[Any]:
    value = container.get(key)
    if not isinstance(value, list):
        raise Untranslatable(f"{where}{key} is not a list")
    return value


def _dicts(items: list[Any], where: str) -> Iterator[tuple[str, Json]]:
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise Untranslatable(f"{where}[{i}] is not an object")
        yield f"{where}[{i}]", item


# ---- OpenAI chat request -> Anthropic messages --------------------------------------

def _openai_to_anthropic(body: Json, model: str) -> Json:
    _admit(body, _OPENAI_GATES, _OPENAI_TRANSLATED | _OPENAI_DROPPED, "Anthropic")
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    out: Json = {"model": model, "max_tokens": cap}
    system, out["messages"] = _anthropic_messages(_list(body, "messages", ""))
    if system:
        out["system"] = system
    if (temperature := body.get("temperature")) is not None:
        out["temperature"] = min(temperature, 1) if isinstance(temperature, int | float) \
            else temperature
    elif body.get("top_p") is not None:  # recent Claude models refuse both at once
        out["top_p"] = body["top_p"]
    if (stop := body.get("stop")) is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("stream") is True:
        out["stream"] = True
    if user := body.get("user") or body.get("safety_identifier"):
        out["metadata"] = {"user_id": user}
    if tools := body.get("tools"):
        out["tools"] = [_anthropic_tool(t, w) for w, t in _dicts(tools, "tools")]
        if choice := _anthropic_tool_choice(body):
            out["tool_choice"] = choice
    return out


def _anthropic_messages(messages: list[Any]) -> tuple[str, list[Json]]:
    """Anthropic's top-level system text and its alternating messages."""
    system: list[str] = []
    out: list[Json] = []
    for where, m in _dicts(messages, "messages"):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_plain_text(m.get("content"), where))
            continue
        if role == "user":
            turn = {"role": "user", "content": _anthropic_user_content(m.get("content"), where)}
        elif role == "assistant":
            turn = {"role": "assistant", "content": _anthropic_assistant_content(m, where)}
        elif role == "tool":
            turn = {"role": "user", "content": [_tool_result(m, where)]}
        else:
            raise Untranslatable(f"{where} has role {role!r}, which Anthropic has no "
                                 "equivalent for")
        if out and out[-1]["role"] == turn["role"]:  # Anthropic wants turns to alternate
            out[-1]["content"] = _blocks(out[-1]["content"]) + _blocks(turn["content"])
        else:
            out.append(turn)
    return "\n\n".join(system), out


def _blocks(content: str | list[Json]) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _plain_text(content: Any, where: str) -> str:
    """A system or tool message's text: a string, or text parts (read as one text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content is neither text nor a list of parts")
    texts = []
    for at, part in _dicts(content, f"{where}.content"):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise Untranslatable(f"{at}: {part.get('type')} parts cannot go there")
        texts.append(part["text"])
    return "".join(texts)


def _anthropic_user_content(content: Any, where: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content is neither text nor a list of parts")
    blocks = []
    for at, part in _dicts(content, f"{where}.content"):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_anthropic_image(part.get("image_url"), at))
        else:
            raise Untranslatable(f"{at}: {kind} content parts have no Anthropic equivalent")
    return blocks


_DATA_URL = re.compile(r"data:(image/(?:jpeg|png|gif|webp));base64,(.*)", re.S)


def _anthropic_image(image: Any, where: str) -> Json:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise Untranslatable(f"{where}.image_url has no url")
    if found := _DATA_URL.fullmatch(url):
        source = {"type": "base64", "media_type": found[1], "data": found[2]}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:  # another scheme, or a data URL of a type Anthropic does not take
        raise Untranslatable(f"{where}: an image URL {url[:40]!r}… has no Anthropic "
                             "equivalent (base64 jpeg/png/gif/webp or http(s) only)")
    return {"type": "image", "source": source}


def _anthropic_assistant_content(m: Json, where: str) -> str | list[Json]:
    for field in ("audio", "function_call"):
        if m.get(field) is not None:
            raise Untranslatable(f"{where}.{field} has no Anthropic equivalent")
    content, calls = m.get("content"), m.get("tool_calls")
    if isinstance(content, str) and not calls and not m.get("refusal"):
        return content
    blocks = []
    if isinstance(content, list):
        for at, part in _dicts(content, f"{where}.content"):
            if part.get("type") not in ("text", "refusal"):
                raise Untranslatable(f"{at}: {part.get('type')} parts cannot go there")
        content = "".join(str(p.get("text") or p.get("refusal") or "") for p in content)
    if content is not None:
        blocks += _blocks(_plain_text(content, where))
    if isinstance(m.get("refusal"), str):
        blocks += _blocks(m["refusal"])
    for at, call in _dicts(calls or [], f"{where}.tool_calls"):
        blocks.append(_tool_use(call, at))
    return blocks


def _tool_use(call: Json, where: str) -> Json:
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise Untranslatable(f"{where}: {call.get('type')} tool calls have no Anthropic "
                             "equivalent")
    arguments = function.get("arguments") or "{}"
    try:
        args = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        args = None
    if not isinstance(args, dict):
        raise Untranslatable(f"{where}.function.arguments is not a JSON object, which "
                             "Anthropic's tool_use input must be")
    return {"type": "tool_use", "id": _tool_id(call.get("id")), "name": function.get("name"),
            "input": args}


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _tool_id(value: Any) -> str:
    """Anthropic takes tool ids of [A-Za-z0-9_-] only; the same id maps the same way in
    a tool call and in its result, so they still pair."""
    return _ID_UNSAFE.sub("_", str(value))


def _tool_result(m: Json, where: str) -> Json:
    content = m.get("content")
    result: Json = {"type": "tool_result", "tool_use_id": _tool_id(m.get("tool_call_id"))}
    if isinstance(content, list):
        _plain_text(content, where)  # text parts only
        result["content"] = [{"type": "text", "text": p["text"]} for p in content if p["text"]]
    else:
        result["content"] = _plain_text(content, where)
    return result


def _anthropic_tool(tool: Json, where: str) -> Json:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise Untranslatable(f"{where}: tools of type {tool.get('type')} have no "
                             "Anthropic equivalent")
    if extra := sorted(function.keys() - {"name", "description", "parameters", "strict"}):
        raise Untranslatable(f"{where}.function.{extra[0]} has no Anthropic equivalent")
    out: Json = {"name": function.get("name"),
                 "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict") is True:
        out["strict"] = True
    return out


def _anthropic_tool_choice(body: Json) -> Json | None:
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        out: Json = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif _type_of(choice) == "function" and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise Untranslatable(f"tool_choice of type {_type_of(choice)} has no Anthropic "
                             "equivalent")
    if body.get("parallel_tool_calls") is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None
    return out


# ---- Anthropic messages request -> OpenAI chat --------------------------------------

def _anthropic_to_openai(body: Json, model: str) -> Json:
    _admit(body, _ANTHROPIC_GATES, _ANTHROPIC_TRANSLATED | _ANTHROPIC_DROPPED, "OpenAI chat")
    messages = _openai_messages(_list(body, "messages", ""))
    if system := body.get("system"):
        messages.insert(0, {"role": "system", "content": _openai_system(system)})
    out: Json = {"model": model, "messages": messages}
    if (cap := body.get("max_tokens")) is not None:
        out["max_completion_tokens"] = cap  # max_tokens is refused by reasoning models
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            out[field] = body[field]
    if stop := body.get("stop_sequences"):
        if not isinstance(stop, list) or len(stop) > _OPENAI_MAX_STOP:
            raise Untranslatable(f"stop_sequences={stop!r:.60}: OpenAI chat takes a list of "
                                 f"at most {_OPENAI_MAX_STOP}")
        out["stop"] = stop
    if body.get("stream") is True:  # usage for message_delta, as Anthropic always sends it
        out.update(stream=True, stream_options={"include_usage": True})
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = metadata["user_id"]
    if tools := body.get("tools"):
        out["tools"] = [_openai_tool(t, w) for w, t in _dicts(tools, "tools")]
        out.update(_openai_tool_choice(body.get("tool_choice")))
    return out


def _openai_system(system: Any) -> str | list[Json]:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise Untranslatable("system is neither text nor a list of text blocks")
    return [{"type": "text", "text": _text_block(b, w)} for w, b in _dicts(system, "system")]


def _text_block(block: Json, where: str) -> str:
    if block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise Untranslatable(f"{where}: {block.get('type')} blocks have no OpenAI chat "
                             "equivalent there")
    if block.get("citations"):
        raise Untranslatable(f"{where}.citations has no OpenAI chat equivalent")
    return str(block["text"])


def _openai_messages(messages: list[Any]) -> list[Json]:
    out: list[Json] = []
    for where, m in _dicts(messages, "messages"):
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise Untranslatable(f"{where} has role {role!r}, which Anthropic does not allow")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise Untranslatable(f"{where}.content is neither text nor a list of blocks")
        elif role == "user":
            out += _openai_user(content, f"{where}.content")
        else:
            out.append(_openai_assistant(content, f"{where}.content"))
    return out


def _openai_user(blocks: list[Any], where: str) -> list[Json]:
    """Tool results become tool messages, which OpenAI wants right after the assistant
    turn that called them (Anthropic wants them first in the user turn: same order)."""
    results, parts = [], []
    for at, block in _dicts(blocks, where):
        kind = block.get("type")
        if kind == "tool_result":
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _openai_tool_output(block.get("content"), at)})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, at)}})
        else:
            parts.append({"type": "text", "text": _text_block(block, at)})
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _openai_tool_output(content: Any, where: str) -> str | list[Json]:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise Untranslatable(f"{where}.content is neither text nor a list of blocks")
    return [{"type": "text", "text": _text_block(b, w)}
            for w, b in _dicts(content, f"{where}.content")]


def _image_url(block: Json, where: str) -> str:
    source = block.get("source")
    kind = _type_of(source)
    if kind == "base64" and isinstance(source, dict):
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return str(source["url"])
    raise Untranslatable(f"{where}: images of source type {kind} have no OpenAI chat "
                         "equivalent")


def _openai_assistant(blocks: list[Any], where: str) -> Json:
    texts, calls = [], []
    for at, block in _dicts(blocks, where):
        if block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": _json(block.get("input") or {})}})
        elif text := _text_block(block, at):  # Anthropic refuses empty ones anyway
            texts.append(text)
    content: Any = texts[0] if len(texts) == 1 else \
        [{"type": "text", "text": t} for t in texts] or None
    out: Json = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = calls
    elif content is None:
        out["content"] = ""
    return out


_ANTHROPIC_TOOL_KEYS = frozenset({
    "type", "name", "description", "input_schema", "strict", "cache_control",
    "input_examples", "eager_input_streaming"})


def _openai_tool(tool: Json, where: str) -> Json:
    if tool.get("type") not in (None, "custom"):  # Anthropic-defined and server tools
        raise Untranslatable(f"{where}: tools of type {tool['type']} have no OpenAI chat "
                             "equivalent")
    if extra := sorted(tool.keys() - _ANTHROPIC_TOOL_KEYS):
        raise Untranslatable(f"{where}.{extra[0]} has no OpenAI chat equivalent")
    function: Json = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _openai_tool_choice(choice: Any) -> Json:
    kind = _type_of(choice)
    out: Json = {}
    if kind == "tool" and isinstance(choice, dict):
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "any", "none"):
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    elif kind is not None:
        raise Untranslatable(f"tool_choice of type {kind} has no OpenAI chat equivalent")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True \
            and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# ---- answers ------------------------------------------------------------------------

_FINISH = {  # Anthropic stop_reason -> OpenAI finish_reason
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter"}
_STOP = {  # OpenAI finish_reason -> Anthropic stop_reason
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal"}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if type(value) is int else 0


def _openai_usage(usage: Any) -> Json:
    """OpenAI counts cached input inside prompt_tokens; Anthropic bills it on top."""
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + cached + _count(usage, "cache_creation_input_tokens")
    completion = _count(usage, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}


def _anthropic_usage(usage: Any) -> Json:
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = _count(details, "cached_tokens")
    return {"input_tokens": max(_count(usage, "prompt_tokens") - cached, 0),
            "output_tokens": _count(usage, "completion_tokens"),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _completion_from_message(message: Json, model: str) -> Json:
    texts, calls = [], []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": _json(block.get("input") or {})}})
    reply: Json = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                   "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    return {"id": f"chatcmpl-{message.get('id', '')}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": _FINISH.get(message.get("stop_reason"), "stop")}],
            "usage": _openai_usage(message.get("usage"))}


def _message_from_completion(completion: Json, model: str) -> Json:
    choice = (completion.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    text = reply.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    refusal = reply.get("refusal") if not text else None
    content: list[Json] = _blocks(text or refusal or "")
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _input(function.get("arguments"))})
    stop = "refusal" if refusal else _STOP.get(choice.get("finish_reason"), "end_turn")
    return {"id": f"msg_{completion.get('id', '')}", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": _anthropic_usage(completion.get("usage"))}


def _input(arguments: Any) -> Json:
    """A model's tool arguments as Anthropic's input object; arguments that are not a
    JSON object (a model's rare malformed output) give {} rather than no answer."""
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


# ---- streams ------------------------------------------------------------------------

class _SseEvents:
    """Whole SSE events, as (event name, data), out of chunks split anywhere: an event
    is decoded only once its blank line arrived, so a split UTF-8 sequence is whole."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        data = self._held + chunk
        events, start = [], 0
        for end in sseframe.event_ends(data, max(0, len(self._held) - sseframe.LOOK_BACK)):
            events.append(_parse_event(data[start:end]))
            start = end
        self._held = data[start:]
        if len(self._held) > _MAX_EVENT:
            raise ValueError(f"an SSE event longer than {_MAX_EVENT} bytes")
        return [e for e in events if e[1]]

    def close(self) -> list[tuple[str | None, str]]:
        """The last event, if the stream ended without its blank line."""
        held, self._held = self._held, b""
        event = _parse_event(held)
        return [event] if event[1] else []


def _parse_event(raw: bytes) -> tuple[str | None, str]:
    name, data = None, []
    for line in sseframe.LINE_END.split(raw):  # not str.splitlines: JSON may hold U+2028
        field, _, value = line.decode("utf-8", "replace").partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return name, "\n".join(data)


class StreamTranslator:
    """target's SSE byte stream -> source's SSE byte stream, incrementally (chunks
    split anywhere, even inside a line or a UTF-8 sequence)."""

    def __init__(self, source: str, target: str, model: str, include_usage: bool) -> None:
        _check(source, target)
        self._same = source == target
        self._events = _SseEvents()
        self._out: _ToOpenAI | _ToAnthropic = \
            _ToOpenAI(model, include_usage) if source == OPENAI else _ToAnthropic(model)

    def feed(self, data: bytes) -> bytes:
        """What the agent can be sent now; b"" until a whole event arrived."""
        if self._same:
            return data
        return b"".join(self._out.event(name, d) for name, d in self._events.feed(data))

    def close(self) -> bytes:
        """At the end of the target's stream: whatever must still be sent."""
        if self._same:
            return b""
        out = [self._out.event(name, d) for name, d in self._events.close()]
        return b"".join(out) + self._out.close()


def _data_line(payload: Json) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _named(payload: Json) -> bytes:
    """An Anthropic event: its SDK ignores events without an `event:` line."""
    return b"event: " + payload["type"].encode() + b"\n" + _data_line(payload)


def _loads(data: str) -> Json | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class _ToOpenAI:
    """Anthropic stream events -> OpenAI chat completion chunks, then `data: [DONE]`."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model, self._include_usage = model, include_usage
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # content block index -> tool_calls index
        self._usage: Json = {}
        self._finish: str | None = None
        self._started = self._done = False

    def event(self, name: str | None, data: str) -> bytes:
        payload = _loads(data)
        if self._done or payload is None:
            return b""
        handler: Callable[[Json], bytes] | None = \
            getattr(self, f"_on_{payload.get('type', name)}", None)
        return handler(payload) if handler else b""  # ping, and event types to come

    def close(self) -> bytes:
        """A stream that stopped after its stop reason still ends as OpenAI's does; one
        cut short before it ends cut short (nothing is made up)."""
        return self._end() if self._finish and not self._done else b""

    def _chunk(self, delta: Json, finish: str | None = None) -> bytes:
        out = b"" if self._started else self._role()
        chunk: Json = {"id": self._id, "object": "chat.completion.chunk",
                       "created": self._created, "model": self._model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}]}
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI sends it on every chunk but the last
        return out + _data_line(chunk)

    def _role(self) -> bytes:
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def _on_message_start(self, event: Json) -> bytes:
        message = event.get("message") or {}
        if message.get("id"):
            self._id = f"chatcmpl-{message['id']}"
        self._usage.update(message.get("usage") or {})
        return b"" if self._started else self._role()

    def _on_content_block_start(self, event: Json) -> bytes:
        block = event.get("content_block") or {}
        if block.get("type") == "text":
            return self._chunk({"content": block["text"]}) if block.get("text") else b""
        if block.get("type") != "tool_use":
            return b""  # thinking and server tool blocks: refused in requests
        index = self._tools[event.get("index", -1)] = len(self._tools)
        call = {"index": index, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}
        return self._chunk({"tool_calls": [call]})

    def _on_content_block_delta(self, event: Json) -> bytes:
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        index = self._tools.get(event.get("index", -1))
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") \
                and index is not None:
            call = {"index": index, "function": {"arguments": delta["partial_json"]}}
            return self._chunk({"tool_calls": [call]})
        return b""

    def _on_message_delta(self, event: Json) -> bytes:
        self._usage.update({k: v for k, v in (event.get("usage") or {}).items()
                            if v is not None})
        reason = (event.get("delta") or {}).get("stop_reason")
        self._finish = _FINISH.get(reason, "stop")
        return self._chunk({}, self._finish)

    def _on_message_stop(self, event: Json) -> bytes:
        return self._end()

    def _end(self) -> bytes:
        self._done = True
        if not self._include_usage:
            return b"data: [DONE]\n\n"
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                 "model": self._model, "choices": [], "usage": _openai_usage(self._usage)}
        return _data_line(chunk) + b"data: [DONE]\n\n"

    def _on_error(self, event: Json) -> bytes:
        """OpenAI's SDK raises on a chunk holding an error; no [DONE] follows it."""
        self._done = True
        error = event.get("error") or {}
        return _data_line({"error": {
            "message": error.get("message") or "the fallback vendor failed mid-stream",
            "type": error.get("type") or "api_error", "param": None, "code": None}})


_ANTHROPIC_ERRORS = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error"})


class _ToAnthropic:
    """OpenAI chat completion chunks -> Anthropic stream events. OpenAI reports usage
    after the finish reason, so message_delta waits for `[DONE]` (or the end)."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._open: int | None = None  # the content block receiving deltas
        self._kind = ""                # its type
        self._blocks = 0               # blocks started
        self._tools: dict[int, int] = {}  # tool_calls index -> content block index
        self._usage: Json = {}
        self._stop: str | None = None
        self._refused = False
        self._started = self._done = False

    def event(self, name: str | None, data: str) -> bytes:
        if self._done:
            return b""
        if data.strip() == "[DONE]":
            return self._end()
        chunk = _loads(data)
        if chunk is None:
            return b""
        if isinstance(chunk.get("error"), dict):
            return self._error(chunk["error"])
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        out = [] if self._started or not (chunk.get("choices") or self._usage) \
            else [self._start(chunk.get("id"))]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out += self._choice(choice)
        return b"".join(out)

    def close(self) -> bytes:
        """A stream without `[DONE]` still ends, once it said why it stopped."""
        return self._end() if self._stop and not self._done else b""

    def _start(self, completion_id: Any) -> bytes:
        self._started = True
        message = {"id": f"msg_{completion_id or uuid.uuid4().hex}", "type": "message",
                   "role": "assistant", "model": self._model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": _anthropic_usage(self._usage)}
        return _named({"type": "message_start", "message": message})

    def _choice(self, choice: Json) -> list[bytes]:
        delta = choice.get("delta") or {}
        out = []
        self._refused |= bool(delta.get("refusal"))
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            if self._kind != "text":
                out.append(self._open_block({"type": "text", "text": ""}, "text"))
            out.append(self._delta({"type": "text_delta", "text": text}, self._open))
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call)
        if reason := choice.get("finish_reason"):
            self._stop = "refusal" if self._refused else _STOP.get(reason, "end_turn")
            out.append(self._close_block())
        return out

    def _tool_call(self, call: Json) -> list[bytes]:
        out = []
        index, function = call.get("index", 0), call.get("function") or {}
        if index not in self._tools:
            block = {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                     "name": function.get("name") or "", "input": {}}
            out.append(self._open_block(block, "tool_use"))
            self._tools[index] = self._blocks - 1
        if arguments := function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(self._delta(delta, self._tools[index]))
        return out

    def _open_block(self, block: Json, kind: str) -> bytes:
        out = self._close_block()
        self._open, self._kind = self._blocks, kind
        self._blocks += 1
        return out + _named({"type": "content_block_start", "index": self._open,
                             "content_block": block})

    def _delta(self, delta: Json, index: int | None) -> bytes:
        return _named({"type": "content_block_delta", "index": index, "delta": delta})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open, self._kind = self._open, None, ""
        return _named({"type": "content_block_stop", "index": index})

    def _end(self) -> bytes:
        out = b"" if self._started else self._start(None)
        self._done = True
        usage = _anthropic_usage(self._usage)
        delta = {"stop_reason": self._stop or "end_turn", "stop_sequence": None}
        return out + self._close_block() + _named({
            "type": "message_delta", "delta": delta, "usage": usage}) + \
            _named({"type": "message_stop"})

    def _error(self, error: Json) -> bytes:
        """Anthropic's SDK raises on an `error` event; nothing follows it."""
        self._done = True
        kind = error.get("type")
        if kind not in _ANTHROPIC_ERRORS:
            kind = "rate_limit_error" if "rate_limit" in f"{kind} {error.get('code')}" \
                else "api_error"
        message = error.get("message") or "the fallback vendor failed mid-stream"
        return _named({"type": "error", "error": {"type": kind, "message": message}})
