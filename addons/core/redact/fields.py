"""Every text field of a request body that a vendor's model reads, per API shape, as
slots the redaction stage reads and rewrites in place.

A `Slot` is a (container, key) pair: `container[key]` is a str, read by `slot.text`
and replaced by `slot.set(new)`, so the body is edited where it lies and serialised
once; every field no slot names keeps its value, and its bytes through an orjson
round trip. A slot's `path` names the field (`messages[2].content[0].text`) for tests
and audit records; never the value.

What is read, per shape (`text_slots`):

- text the model reads as prose: message contents (strings and text parts), system
  prompts and instructions, tool results, reasoning summaries, legacy prompts,
  embedding inputs, image prompts, text-to-speech input;
- tool-call arguments. Anthropic `tool_use.input` and Gemini `functionCall.args` are
  JSON objects: each string leaf is a slot. OpenAI-style `arguments` carry the same
  object as a JSON *string*; it is parsed and its string leaves become slots too, whose
  `set` serialises the object back into the string. So the same tool call is redacted
  alike whichever vendor it goes to, the detector sees values unescaped (`Zo\\u00eb`
  as `Zoë`, `\\"` as `"`), and no replacement can cut an escape sequence in half and
  break the arguments' JSON. Arguments that do not parse as a JSON object or array
  are one text slot, as are arguments holding an integer beyond 64 bits (which
  would not survive the round trip). Object keys are never slots (they name
  parameters);
- opaque identifiers the vendor stores about the end user: OpenAI `user` and
  `metadata` values, Anthropic `metadata.user_id` (agents put emails there).

Not read, on purpose:

- tool *definitions* (names, descriptions, JSON schemas), `response_format` schemas,
  stop sequences: written by the agent's developer, not carried from users; often tens
  of KB repeated on every request; a name rewritten in a schema changes the API
  contract. Message `name` fields (participant labels) likewise;
- binary and referenced content: images, audio, files, base64 PDFs, URLs of media,
  encrypted reasoning (`encrypted_content`, `redacted_thinking`, signatures);
- Anthropic thinking blocks that carry a signature: the vendor wrote them (a changed
  one fails its signature check with a 400), from input that was already redacted, so
  they tell the vendor nothing new; re-identification leaves thinking alone too, so
  they go back exactly as they came;
- endpoints whose bodies are not text to a model (`models`, `files` uploads,
  `realtime` sockets, `other`) or whose requests are elsewhere (OpenAI `batches` read
  an uploaded file): `covered()` says which (api, endpoint) pairs this module reads,
  so a caller with a redaction plan can refuse the rest (fail closed). Anthropic
  message batches and Gemini batchGenerateContent carry their requests inline and are
  read.

Besides the slots: `opening()` gives the texts that open a conversation (to key its
pseudonyms), `json_output()` whether the answer's text is to be JSON.

Every walker only reads what has the expected type and never raises on an unexpected
shape; nested JSON (tool inputs, function responses) is walked without recursion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from egressguard.core.apis import Endpoint

Path = tuple[str | int, ...]
EMBEDDED = "<json>"  # path step: from here on, inside a string that holds JSON


class _Embedded:
    """A JSON document held as a string (`container[key]`), parsed; its leaf slots
    write it back, compact, after each change."""

    __slots__ = ("container", "key", "doc")

    def __init__(self, container: Any, key: str | int, doc: Any) -> None:
        self.container, self.key, self.doc = container, key, doc

    def write_back(self) -> None:
        self.container[self.key] = orjson.dumps(self.doc).decode()


class Slot:
    """One string in the body: `text` reads it, `set` replaces it in place."""

    __slots__ = ("container", "key", "path", "_embedded")

    def __init__(self, container: Any, key: str | int, path: Path,
                 embedded: _Embedded | None = None) -> None:
        self.container, self.key, self.path = container, key, path
        self._embedded = embedded

    @property
    def text(self) -> str:
        value: str = self.container[self.key]
        return value

    def set(self, text: str) -> None:
        self.container[self.key] = text
        if self._embedded is not None:
            self._embedded.write_back()

    @property
    def where(self) -> str:
        """The path as one string: `messages[1].tool_calls[0].function.arguments<json>.city`."""
        out = []
        for step in self.path:
            if isinstance(step, int):
                out.append(f"[{step}]")
            elif step == EMBEDDED or not out:
                out.append(step)
            else:
                out.append("." + step)
        return "".join(out)

    def __repr__(self) -> str:  # the path only: a slot's text may be what is redacted
        return f"Slot({self.where})"


def _get(holder: Any, key: str | int) -> Any:
    """`holder[key]` of a dict or list, else None: never raises."""
    if isinstance(holder, dict):
        return holder.get(key)
    if isinstance(holder, list) and isinstance(key, int) and -len(holder) <= key < len(holder):
        return holder[key]
    return None


class _Slots(list[Slot]):
    """The collector the walkers fill; each method takes what it is given only if it
    has the expected type."""

    def text(self, holder: Any, key: str | int, path: Path) -> None:
        """`holder[key]` if it is a string."""
        if isinstance(_get(holder, key), str):
            self.append(Slot(holder, key, (*path, key)))

    def texts(self, holder: Any, key: str, path: Path) -> None:
        """A string, or a list whose strings are slots (prompts, embedding inputs)."""
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, str):
            self.append(Slot(holder, key, (*path, key)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    self.append(Slot(value, i, (*path, key, i)))

    def leaves(self, holder: Any, key: str | int, path: Path,
               embedded: _Embedded | None = None) -> None:
        """Every string inside `holder[key]`, however deep (iteratively: a body nested
        past Python's recursion limit must not raise)."""
        root = _get(holder, key)
        if root is None:
            return
        stack: list[tuple[Any, str | int, Any, Path]] = [(holder, key, root, (*path, key))]
        while stack:
            parent, k, value, p = stack.pop()
            if isinstance(value, str):
                self.append(Slot(parent, k, p, embedded))
            elif isinstance(value, dict):
                stack.extend((value, ck, cv, (*p, ck)) for ck, cv in reversed(value.items()))
            elif isinstance(value, list):
                stack.extend((value, i, cv, (*p, i)) for i, cv in reversed(list(enumerate(value))))

    def json_text(self, holder: Any, key: str, path: Path) -> None:
        """A string holding JSON (tool-call arguments): its string leaves if it parses
        to an object or array, else the string itself. An object given where the string
        belongs (some SDKs, some vendors) is walked as it is."""
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, (dict, list)):
            self.leaves(holder, key, path)
            return
        if not isinstance(value, str):
            return
        doc: Any = None
        if value[:1] in ("{", "[") or value.lstrip()[:1] in ("{", "["):
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                doc = None
        if not isinstance(doc, (dict, list)) or not _exact(doc):
            self.append(Slot(holder, key, (*path, key)))
            return
        embedded = _Embedded(holder, key, doc)
        box = [doc]  # a parent for the root, so the walk can start at a key
        before = len(self)
        self.leaves(box, 0, (), embedded)
        for slot in self[before:]:
            slot.path = (*path, key, EMBEDDED, *slot.path[1:])


_INT_RANGE = float(2 ** 63)  # orjson reads up to u64 exactly; below -2**63 as a float


def _exact(doc: Any) -> bool:
    """Whether serialising the parsed document gives back the same values: orjson
    reads an integer beyond 64 bits as a float, which would round it on the way back."""
    stack = [doc]
    while stack:
        node = stack.pop()
        for value in node.values() if isinstance(node, dict) else node:
            if isinstance(value, float) and abs(value) >= _INT_RANGE:
                return False
            if isinstance(value, (dict, list)):
                stack.append(value)
    return True


def _each(value: Any) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] \
        if isinstance(value, list) else []


# ---- OpenAI (and Azure OpenAI, and every OpenAI-compatible path) -------------------

def _openai_parts(out: _Slots, holder: Any, key: str, path: Path) -> None:
    """Content as a string or a list of parts: any part's `text` (text, input_text,
    output_text, summary_text, reasoning_text…) and `refusal`; image, audio and file
    parts carry no text to read."""
    value = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(value, str):
        out.append(Slot(holder, key, (*path, key)))
        return
    for i, part in _dicts(value):
        p = (*path, key, i)
        out.text(part, "text", p)
        out.text(part, "refusal", p)


def _openai_extras(out: _Slots, body: dict[str, Any]) -> None:
    out.text(body, "user", ())
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for k in metadata:
            out.text(metadata, k, ("metadata",))


def _openai_chat(out: _Slots, body: Any, path: Path = ()) -> None:
    if not isinstance(body, dict):
        return
    # the hot path of every chat request: test for a field before calling for it
    for i, message in _dicts(body.get("messages")):
        p = (*path, "messages", i)
        content = message.get("content")
        if isinstance(content, str):
            out.append(Slot(message, "content", (*p, "content")))
        elif content is not None:
            _openai_parts(out, message, "content", p)
        if message.get("refusal") is not None:
            out.text(message, "refusal", p)
        if "tool_calls" in message:
            for j, call in _dicts(message["tool_calls"]):
                fn, custom = call.get("function"), call.get("custom")
                out.json_text(fn, "arguments", (*p, "tool_calls", j, "function"))
                out.text(custom, "input", (*p, "tool_calls", j, "custom"))
        if "function_call" in message:
            out.json_text(message["function_call"], "arguments", (*p, "function_call"))
    # Mistral's conversations (served as openai chat): `inputs` like Responses input
    if "inputs" in body or "instructions" in body:
        out.text(body, "instructions", path)
        inputs = body.get("inputs")
        if isinstance(inputs, str):
            out.append(Slot(body, "inputs", (*path, "inputs")))
        for i, item in _each(inputs):
            _responses_item(out, item, (*path, "inputs", i))
    prediction = body.get("prediction")
    if isinstance(prediction, dict):
        _openai_parts(out, prediction, "content", (*path, "prediction"))
    out.texts(body, "prompt", path)  # legacy /completions
    out.text(body, "suffix", path)
    _openai_extras(out, body)


def _responses_item(out: _Slots, item: Any, p: Path) -> None:
    """One Responses API input item. Read by field rather than by `type`, since every
    item type names its text the same way: messages (`content`), function and MCP calls
    (`arguments`), custom tool calls (`input`), every `*_output` (`output`), reasoning
    (`summary`, `content`), code interpreter calls (`code`)."""
    if not isinstance(item, dict):
        return
    _openai_parts(out, item, "content", p)
    _openai_parts(out, item, "summary", p)
    out.json_text(item, "arguments", p)
    out.text(item, "input", p)
    _openai_parts(out, item, "output", p)
    out.text(item, "code", p)
    out.text(item, "error", p)


def _openai_responses(out: _Slots, body: Any) -> None:
    if not isinstance(body, dict):
        return
    for key in ("instructions", "input", "items"):  # items: POST /conversations(/…/items)
        value = body.get(key)
        if isinstance(value, str):
            out.append(Slot(body, key, (key,)))
        for i, item in _each(value):
            _responses_item(out, item, (key, i))
    prompt = body.get("prompt")  # a stored prompt's variables
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if isinstance(variables, dict):
        for name, value in variables.items():
            if isinstance(value, str):
                out.append(Slot(variables, name, ("prompt", "variables", name)))
            elif isinstance(value, dict):
                out.text(value, "text", ("prompt", "variables", name))
    _openai_extras(out, body)


# ---- embeddings, images, audio: whatever shape the path speaks ---------------------

def _embeddings(out: _Slots, body: Any) -> None:
    """OpenAI `input` (token-id arrays skipped), Cohere v1/v2 `texts` and v2 `inputs`,
    Gemini embedContent `content` and batchEmbedContents `requests[].content`. One walker
    for every api: OpenAI-compatible embeddings paths are served under Gemini's and
    Cohere's hosts with their api's name."""
    if not isinstance(body, dict):
        return
    out.texts(body, "input", ())
    out.texts(body, "texts", ())
    for i, item in _dicts(body.get("inputs")):
        _openai_parts(out, item, "content", ("inputs", i))
    _gemini_content(out, body, "content", ())
    out.text(body, "title", ())  # of a retrieval document
    for i, request in _dicts(body.get("requests")):
        _gemini_content(out, request, "content", ("requests", i))
    out.text(body, "user", ())


def _images(out: _Slots, body: Any) -> None:
    """OpenAI image generation `prompt`; Imagen `instances[].prompt`."""
    if not isinstance(body, dict):
        return
    out.text(body, "prompt", ())
    for i, instance in _dicts(body.get("instances")):
        out.text(instance, "prompt", ("instances", i))


def _audio(out: _Slots, body: Any) -> None:
    """Text to speech: `input` and its voice `instructions`. Transcriptions upload
    audio in a multipart body, which is not JSON: nothing to read."""
    if isinstance(body, dict):
        out.text(body, "input", ())
        out.text(body, "instructions", ())


# ---- Anthropic ---------------------------------------------------------------------

_ANTHROPIC_DEPTH = 4  # blocks in tool results in… (search results, documents)


def _anthropic_blocks(out: _Slots, holder: Any, key: str, path: Path, depth: int = 0) -> None:
    """Content as a string or blocks: text (and its citations), thinking, every
    `*tool_use` input, every `*tool_result` content, documents with text or content
    sources, search results. Images, base64/URL/file sources and redacted thinking
    carry nothing to read."""
    value = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(value, str):
        out.append(Slot(holder, key, (*path, key)))
        return
    if depth > _ANTHROPIC_DEPTH:
        return
    for i, block in _dicts(value):
        p = (*path, key, i)
        out.text(block, "text", p)
        if not block.get("signature"):  # signed thinking goes back verbatim: see above
            out.text(block, "thinking", p)
        for j, citation in _dicts(block.get("citations")):
            out.text(citation, "cited_text", (*p, "citations", j))
        out.leaves(block, "input", p)  # an object (tool_use), or a string
        _anthropic_blocks(out, block, "content", p, depth + 1)
        out.text(block, "title", p)
        out.text(block, "context", p)
        source = block.get("source")
        if isinstance(source, dict):
            if source.get("type") == "text":
                out.text(source, "data", (*p, "source"))
            _anthropic_blocks(out, source, "content", (*p, "source"), depth + 1)


def _anthropic_messages(out: _Slots, body: Any, path: Path = ()) -> None:
    if not isinstance(body, dict):
        return
    _anthropic_blocks(out, body, "system", path)
    for i, message in _dicts(body.get("messages")):
        _anthropic_blocks(out, message, "content", (*path, "messages", i))
    metadata = body.get("metadata")
    out.text(metadata, "user_id", (*path, "metadata"))


def _anthropic_complete(out: _Slots, body: Any) -> None:
    """Legacy Text Completions: one `prompt`."""
    if isinstance(body, dict):
        out.text(body, "prompt", ())


def _anthropic_batches(out: _Slots, body: Any) -> None:
    """Message batches: each `requests[].params` is a Messages body."""
    if isinstance(body, dict):
        for i, request in _dicts(body.get("requests")):
            _anthropic_messages(out, request.get("params"), ("requests", i, "params"))


# ---- Google Gemini -----------------------------------------------------------------

def _either(holder: dict[str, Any], camel: str, snake: str) -> str:
    """Which spelling the body uses: proto JSON takes lowerCamel and snake_case alike."""
    return snake if camel not in holder and snake in holder else camel


def _gemini_content(out: _Slots, holder: Any, key: str | int, path: Path) -> None:
    """A Content (`{role, parts}`): each part's text, function call args, function
    response, executable code and its result. Inline and file data are not text."""
    content = _get(holder, key)
    if isinstance(content, str):  # some clients send a bare string as a system prompt
        out.append(Slot(holder, key, (*path, key)))
        return
    if not isinstance(content, dict):
        return
    for i, part in _dicts(content.get("parts")):
        p = (*path, key, "parts", i)
        out.text(part, "text", p)
        call = part.get(k := _either(part, "functionCall", "function_call"))
        if isinstance(call, dict):
            out.leaves(call, "args", (*p, k))
        response = part.get(k := _either(part, "functionResponse", "function_response"))
        if isinstance(response, dict):
            out.leaves(response, "response", (*p, k))
        code = part.get(k := _either(part, "executableCode", "executable_code"))
        out.text(code, "code", (*p, k))
        result = part.get(k := _either(part, "codeExecutionResult", "code_execution_result"))
        out.text(result, "output", (*p, k))


def _gemini_chat(out: _Slots, body: Any, path: Path = ()) -> None:
    if not isinstance(body, dict):
        return
    _gemini_content(out, body, _either(body, "systemInstruction", "system_instruction"), path)
    contents = body.get("contents")
    if isinstance(contents, dict):  # a lone Content where a list belongs
        _gemini_content(out, body, "contents", path)
    for i, _ in _dicts(contents):
        _gemini_content(out, contents, i, (*path, "contents"))
    # countTokens wraps a whole generateContent request
    k = _either(body, "generateContentRequest", "generate_content_request")
    if isinstance(body.get(k), dict):
        _gemini_chat(out, body[k], (*path, k))


def _gemini_batches(out: _Slots, body: Any) -> None:
    """batchGenerateContent and asyncBatchEmbedContent with inlined requests:
    batch.inputConfig.requests.requests[].request, each a generateContent body or an
    embedContent one (`content`)."""
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        return
    config = batch.get(kc := _either(batch, "inputConfig", "input_config"))
    requests = config.get("requests") if isinstance(config, dict) else None
    items = requests.get("requests") if isinstance(requests, dict) else None
    for i, item in _dicts(items):
        path = ("batch", kc, "requests", "requests", i, "request")
        _gemini_chat(out, item.get("request"), path)
        _gemini_content(out, item.get("request"), "content", path)  # asyncBatchEmbedContent


def _interaction_content(out: _Slots, holder: Any, key: str | int, path: Path,
                         depth: int = 0) -> None:
    """Gemini Interactions content: a string, or content objects (text, thought
    summaries, function calls' `arguments`, function results' `result`), or turns
    (`{role, content}`)."""
    value = _get(holder, key)
    if isinstance(value, str):
        out.append(Slot(holder, key, (*path, key)))
        return
    if depth > 3:
        return
    items = _dicts(value) if isinstance(value, list) else \
        ([(-1, value)] if isinstance(value, dict) else [])
    for i, item in items:
        p = (*path, key, i) if i >= 0 else (*path, key)
        out.text(item, "text", p)
        out.leaves(item, "arguments", p)
        out.leaves(item, "result", p)
        _interaction_content(out, item, "summary", p, depth + 1)
        _interaction_content(out, item, "content", p, depth + 1)


def _google_interactions(out: _Slots, body: Any) -> None:
    if not isinstance(body, dict):
        return
    _interaction_content(out, body, "input", ())
    out.text(body, "system_instruction", ())


# ---- Cohere ------------------------------------------------------------------------

def _cohere_parts(out: _Slots, holder: Any, key: str, path: Path) -> None:
    """v2 content: a string or parts — text, and documents whose `data` may be an
    object (each string in it) or a string."""
    value = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(value, str):
        out.append(Slot(holder, key, (*path, key)))
        return
    for i, part in _dicts(value):
        p = (*path, key, i)
        out.text(part, "text", p)
        document = part.get("document")
        if isinstance(document, dict):
            out.leaves(document, "data", (*p, "document"))


def _cohere_chat(out: _Slots, body: Any) -> None:
    if not isinstance(body, dict):
        return
    # v2
    for i, message in _dicts(body.get("messages")):
        p = ("messages", i)
        _cohere_parts(out, message, "content", p)
        out.text(message, "tool_plan", p)
        for j, call in _dicts(message.get("tool_calls")):
            out.json_text(call.get("function"), "arguments", (*p, "tool_calls", j, "function"))
    for i, document in _each(body.get("documents")):  # v2: strings or {data}; v1: objects
        if isinstance(document, str):
            out.text(body["documents"], i, ("documents",))
        elif isinstance(document, dict):
            if "data" in document:
                out.leaves(document, "data", ("documents", i))
            else:
                out.leaves(body["documents"], i, ("documents",))
    # v1 (and legacy generate's `prompt`)
    out.text(body, "message", ())
    out.text(body, "preamble", ())
    out.text(body, "prompt", ())
    for i, turn in _dicts(body.get("chat_history")):
        p = ("chat_history", i)
        out.text(turn, "message", p)
        for j, call in _dicts(turn.get("tool_calls")):
            out.leaves(call, "parameters", (*p, "tool_calls", j))
        _cohere_tool_results(out, turn, p)
    _cohere_tool_results(out, body, ())


def _cohere_tool_results(out: _Slots, holder: dict[str, Any], path: Path) -> None:
    for i, result in _dicts(holder.get("tool_results")):
        p = (*path, "tool_results", i)
        call = result.get("call")
        if isinstance(call, dict):
            out.leaves(call, "parameters", (*p, "call"))
        out.leaves(result, "outputs", p)


# ---- dispatch ----------------------------------------------------------------------

Walker = Callable[[_Slots, Any], None]

_WALKERS: dict[tuple[str, str], Walker] = {
    ("openai", "chat"): _openai_chat,
    ("openai", "responses"): _openai_responses,
    ("openai", "embeddings"): _embeddings,
    ("openai", "images"): _images,
    ("openai", "audio"): _audio,
    ("anthropic", "messages"): _anthropic_messages,
    ("anthropic", "chat"): _anthropic_complete,
    ("anthropic", "batches"): _anthropic_batches,
    ("anthropic", "embeddings"): _embeddings,
    ("google", "chat"): _gemini_chat,
    ("google", "embeddings"): _embeddings,
    ("google", "images"): _images,
    ("google", "batches"): _gemini_batches,
    ("google_interactions", "responses"): _google_interactions,
    ("cohere", "chat"): _cohere_chat,
    ("cohere", "embeddings"): _embeddings,
}
_SAME_SHAPE = {"azure_openai": "openai"}


def _walker(api: str, endpoint: str) -> Walker | None:
    if isinstance(endpoint, Endpoint):
        api = endpoint.api
    return _WALKERS.get((_SAME_SHAPE.get(api, api), str(endpoint)))


def covered(api: str, endpoint: str) -> bool:
    """Whether this module knows where the text of such a request's body is. A caller
    that must redact should refuse a request to an endpoint it is not covered for."""
    return _walker(api, endpoint) is not None


def text_slots(api: str, endpoint: str, body: Any) -> list[Slot]:
    """Every text field of `body` the vendor's model reads, in document order (system
    prompt first, then the turns), for an `api` family (`openai`, `azure_openai`,
    `anthropic`, `google`, `cohere`) and endpoint kind; an `apis.Endpoint` names its
    own api, which wins. Empty for an endpoint not covered or a body of another shape."""
    walker = _walker(api, endpoint)
    out = _Slots()
    if walker is not None:
        walker(out, body)
    return out


# ---- what the redaction stage needs besides the slots ------------------------------

def _through_first_user(messages: Any) -> Any:
    """The turns up to and including the first user turn (all of them if none is)."""
    if not isinstance(messages, list):
        return messages
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return messages[:i + 1]
    return messages


def _opening_body(api: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """A body cut down to what opens its conversation. Left out: what may differ from
    one request to the next of the same conversation (metadata, RAG documents, tools)."""
    pick: dict[str, Any] = {k: body[k] for k in ("user", "system", "instructions", "preamble",
                                 "systemInstruction", "system_instruction", "metadata")
            if k in body}
    if api == "anthropic":
        metadata = body.get("metadata")
        pick["metadata"] = {"user_id": metadata.get("user_id")} \
            if isinstance(metadata, dict) else None
    else:
        pick.pop("metadata", None)
    if (api, endpoint) in (("openai", "chat"), ("cohere", "chat")):
        if isinstance(body.get("messages"), list):
            return {**pick, "messages": _through_first_user(body["messages"])}
        history = body.get("chat_history")  # Cohere v1: the first turn, else this one
        first = history[0] if isinstance(history, list) and history else body
        if api == "cohere" and isinstance(first, dict) and "message" in first:
            return {**pick, "message": first["message"]}
        return None
    if (api, endpoint) == ("openai", "responses"):
        if body.get("previous_response_id") is not None or body.get("conversation") is not None:
            return None  # the opening is upstream, in an earlier request
        if "input" not in body:
            return None
        return {**pick, "input": _through_first_user(body["input"])}
    if (api, endpoint) == ("anthropic", "messages"):
        messages = body.get("messages")
        return {**pick, "messages": messages[:1]} if isinstance(messages, list) else None
    if (api, endpoint) == ("google", "chat"):
        contents = body.get("contents")
        return {**pick, "contents": contents[:1]} if isinstance(contents, list) else None
    return None


def opening(api: str, endpoint: str, body: Any) -> list[str] | None:
    """The texts that open the conversation a request continues — system prompt, first
    user turn, end-user id — the same in every later request of it, so a digest of them
    (and the agent) keys its pseudonyms (`actions.conversation_key`). Read before
    redaction. None when the request carries no opening: a stateful continuation
    (Responses `previous_response_id` / `conversation`: key it by the response chain
    instead) or no conversation at all (embeddings, images: pseudonyms of its own)."""
    shape = endpoint.api if isinstance(endpoint, Endpoint) else api
    shape = _SAME_SHAPE.get(shape, shape)
    if not isinstance(body, dict):
        return None
    cut = _opening_body(shape, str(endpoint), body)
    if cut is None:
        return None
    return [slot.text for slot in text_slots(shape, str(endpoint), cut)]


_JSON_TYPES = ("json_object", "json_schema")


def _format_type(holder: Any, *keys: str) -> Any:
    for key in keys:
        holder = holder.get(key) if isinstance(holder, dict) else None
    return holder.get("type") if isinstance(holder, dict) else None


def json_output(api: str, endpoint: str, body: Any) -> bool:
    """Whether the request asks for JSON as the answer's text (OpenAI and Cohere
    `response_format`, Responses `text.format`, Gemini `responseMimeType`, Anthropic
    `output_format`): a value restored into a streamed answer then needs JSON escaping
    (`Reidentifier.stream(json_output=…)`)."""
    shape = endpoint.api if isinstance(endpoint, Endpoint) else api
    shape = _SAME_SHAPE.get(shape, shape)
    if not isinstance(body, dict):
        return False
    if shape in ("openai", "cohere"):
        return _format_type(body, "response_format") in _JSON_TYPES \
            or _format_type(body, "text", "format") in _JSON_TYPES
    if shape == "anthropic":
        return _format_type(body, "output_format") in _JSON_TYPES \
            or _format_type(body, "output_config", "format") in _JSON_TYPES
    if shape == "google":
        config = body.get(_either(body, "generationConfig", "generation_config"))
        if not isinstance(config, dict):
            return False
        mime = config.get(_either(config, "responseMimeType", "response_mime_type"))
        return isinstance(mime, str) and mime.startswith("application/json")
    return False
