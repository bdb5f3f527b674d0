"""What a vendor API request is: its endpoint kind (from the path, which must be one
servers route alike), the model the vendor runs (the path's, where it names one), the
output cap its body asks for (and how to lower it), and the tools it offers the model.

Path rules and body fields are tables, compiled once at import; the functions run on
every request and never raise on a malformed body: they report what they can read,
and a tool they cannot name as "<unnamed>" so an allow-list still refuses it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import unquote

from egressguard.core.vendors import APIS, Vendor

ENDPOINTS = (
    "chat",        # text generation: chat/completions, legacy completions, Gemini
                   # generateContent (+ countTokens), Cohere chat
    "responses",   # OpenAI Responses (+ stored responses, conversations), Gemini Interactions
    "messages",    # Anthropic Messages (+ count_tokens), wherever it is served (xAI, DeepSeek)
    "embeddings",  # embeddings, Gemini embedContent
    "images",      # image generation, edits, variations; Imagen :predict
    "audio",       # speech, transcription, translation
    "files",       # uploads and stored files, vector-store files, Gemini file search stores
    "realtime",    # live sessions through egressguard (the WebSocket)
    "models",      # listing and describing models
    "batches",     # asynchronous batch jobs
    "fine_tuning",  # training jobs and tuned models (Gemini tunedModels)
    "assistants",  # OpenAI Assistants: assistants, threads, runs (a run's model and cap
                   # live in the stored assistant)
    "direct_sessions",  # what lets a client reach the vendor without egressguard: OpenAI
                        # realtime client secrets, sessions and WebRTC calls, Gemini Live
                        # ephemeral tokens
    "other",       # known, generates no text: moderation, rerank, tokenize, caches…
    "unknown",     # a path no rule below knows: governed by nothing, so never implied
)

# Kinds a rule allows only when its `endpoints:` names them: what they let through
# (requests inside a file or batch, a session without egressguard, a stored assistant's
# model, a path egressguard cannot read) is not governed by the model, cap and text
# checks a rule applies to a direct request.
EXPLICIT_ENDPOINTS = frozenset(
    {"batches", "files", "fine_tuning", "assistants", "direct_sessions", "unknown"})

# Where the output-token cap of a request lives:
CAP_BODY = "body"      # in this body: `max_tokens` reads it, `set_max_tokens` writes it
CAP_NONE = "none"      # nowhere: it generates no text (listing, counting, uploads, embeddings…)
CAP_UNSEEN = "unseen"  # elsewhere: it generates, but under a cap this proxy cannot see (an
                       # OpenAI batch's input file, a realtime socket, an unknown POST path)

UNNAMED = "<unnamed>"


class Endpoint(str):
    """An endpoint kind — equal to its plain name, so it matches policy lists — that also
    carries the request shape its path speaks (`api`: Gemini's OpenAI-compatible path
    speaks `openai`) and where its output cap lives (`cap`). The body functions below
    read an Endpoint's `api` in preference to the vendor api they are given."""

    api: str
    cap: str

    def __new__(cls, kind: str, api: str, cap: str) -> Endpoint:
        self = super().__new__(cls, kind)
        self.api, self.cap = api, cap
        return self

    def __getnewargs__(self) -> tuple[str, str, str]:  # copy and pickle
        return str(self), self.api, self.cap


# ---- paths ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Rule:
    tail: str  # regex for how the path ends (case-insensitive); any prefix may precede it
    endpoint: str
    api: str = ""  # body shape: "" the vendor's own; `openai` is azure_openai's own too
    cap: str = CAP_NONE  # of a POST; other methods ask for nothing to cap…
    any_method: bool = False  # …except a realtime WebSocket upgrade, which is a GET
    post: bool = True  # False: the path is known for reads only, a POST to it is unknown


# Paths OpenAI made the de-facto standard, served under many prefixes (/v1, /openai/v1,
# /api/v1, /inference/v1, Azure's /openai/deployments/{d}, Gemini's /v1beta/openai,
# Cohere's /compatibility/v1), plus Anthropic's. First match wins.
_COMMON = (
    _Rule(r"/chat/completions", "chat", "openai", CAP_BODY),
    # stored completions: get, update metadata, delete, list messages
    _Rule(r"/chat/completions/[^/]+", "chat", "openai"),
    _Rule(r"/chat/completions/[^/]+/messages", "chat", "openai", post=False),
    _Rule(r"/chat/deferred-completion/[^/]+", "chat", "openai", post=False),  # xAI
    _Rule(r"/completions", "chat", "openai", CAP_BODY),  # legacy; Mistral fim/, agents/
    _Rule(r"/responses", "responses", "openai", CAP_BODY),
    # stored responses: count, retrieve, delete, cancel, input items; any other
    # sub-path (a new way to generate, say) is unknown rather than a harmless read
    _Rule(r"/responses/input_tokens", "responses", "openai"),
    _Rule(r"/responses/[^/]+", "responses", "openai", post=False),
    _Rule(r"/responses/[^/]+/cancel", "responses", "openai"),
    _Rule(r"/responses/[^/]+/input_items", "responses", "openai", post=False),
    _Rule(r"/conversations(?:/[^/]+)?", "responses", "openai"),
    _Rule(r"/conversations/[^/]+/items(?:/[^/]+)?", "responses", "openai"),
    _Rule(r"/v1/messages", "messages", "anthropic", CAP_BODY),
    _Rule(r"/v1/messages/count_tokens", "messages", "anthropic"),
    _Rule(r"/v1/messages/batches", "batches", "anthropic", CAP_BODY),
    _Rule(r"/v1/messages/batches/[^/]+(?:/(?:cancel|results))?", "batches", "anthropic"),
    _Rule(r"/v1/complete", "chat", "anthropic", CAP_BODY),  # legacy Text Completions
    _Rule(r"/embeddings", "embeddings"),
    _Rule(r"/images/(?:generations|edits|variations)", "images"),
    _Rule(r"/audio/(?:speech|transcriptions|translations)", "audio"),
    _Rule(r"/realtime/(?:client_secrets|sessions|transcription_sessions|calls)(?:/.+)?",
          "direct_sessions", "openai", any_method=True),
    _Rule(r"/realtime(?:/.+)?", "realtime", "openai", CAP_UNSEEN, any_method=True),
    _Rule(r"/(?:files|uploads|vector_stores)(?:/.+)?", "files"),
    # a `:method` on a model is not a listing, and nothing is POSTed to a model's name
    _Rule(r"/models(?:/[^:]*)?", "models", post=False),
    _Rule(r"/batches", "batches", "openai", CAP_UNSEEN),  # requests in an uploaded file
    _Rule(r"/batches/[^/]+", "batches", post=False),
    _Rule(r"/batches/[^/]+/cancel", "batches"),
    _Rule(r"/threads(?:/[^/]+)?/runs(?:/.+)?", "assistants", "openai", CAP_UNSEEN),
    _Rule(r"/(?:assistants|threads)(?:/.+)?", "assistants"),
    _Rule(r"/fine_tuning(?:/.+)?", "fine_tuning"),
    _Rule(r"/moderations", "other"),
    _Rule(r"/chat/moderations", "other"),  # Mistral
)

_NATIVE = {
    "google": (
        _Rule(r"/[^/]+:(?:stream)?generatecontent", "chat", "google", CAP_BODY),
        _Rule(r"/[^/]+:counttokens", "chat", "google"),
        _Rule(r"/[^/]+:(?:embedcontent|batchembedcontents)", "embeddings", "google"),
        _Rule(r"/[^/]+:batchgeneratecontent", "batches", "google", CAP_BODY),
        _Rule(r"/[^/]+:asyncbatchembedcontent", "batches", "google"),
        _Rule(r"/batches(?:/.+)?", "batches", "google"),
        _Rule(r"/models/imagen[^/:]*:predict", "images", "google"),
        _Rule(r"/interactions", "responses", "google_interactions", CAP_BODY),
        _Rule(r"/interactions/.+", "responses", "google_interactions"),
        _Rule(r"/ws/[^/]*\.bidigeneratecontent(?:constrained)?", "realtime", "google",
              CAP_UNSEEN, any_method=True),
        _Rule(r"/auth_tokens(?:/.+)?", "direct_sessions", "google"),  # Live API keys
        _Rule(r"/filesearchstores(?:/.+)?", "files", "google"),
        _Rule(r"/cachedcontents(?:/.+)?", "other", "google"),
        _Rule(r"/tunedmodels(?:/.+)?", "fine_tuning", "google"),
        _Rule(r"/v1[a-z0-9]*:chatcompletions", "chat", "openai", CAP_BODY),
    ),
    "cohere": (
        _Rule(r"/v[12]/chat", "chat", "cohere", CAP_BODY),
        _Rule(r"/v1/generate", "chat", "cohere", CAP_BODY),  # legacy
        _Rule(r"/v[12]/embed", "embeddings", "cohere"),
        _Rule(r"/v1/embed-jobs(?:/.+)?", "batches", "cohere"),
        _Rule(r"/v1/datasets(?:/.+)?", "files", "cohere"),
        _Rule(r"/v[12]/(?:rerank|classify|tokenize|detokenize)", "other", "cohere"),
    ),
}

# Where one OpenAI-compatible vendor departs from the common paths.
_VENDOR = {
    # Mistral's conversations generate (unlike OpenAI's), with a cap in completion_args
    "mistral": (_Rule(r"/v1/conversations(?:/.+)?", "chat", "openai", CAP_UNSEEN),),
}

_SAME_SHAPE = {"azure_openai": "openai"}  # vendor api -> the rule api it stands in for


@dataclass(frozen=True, slots=True)
class _Table:
    regex: re.Pattern[str]
    routes: tuple[tuple[Endpoint, Endpoint], ...]  # per rule: (a POST, any other method)
    unknown: tuple[Endpoint, Endpoint]


def _compile(api: str, rules: Iterable[_Rule]) -> _Table:
    rules = tuple(rules)
    for rule in rules:  # lastgroup names the matching rule only if no rule captures
        assert re.compile(rule.tail).groups == 0, rule.tail
    regex = re.compile("^(?:" + "|".join(
        rf"(?P<r{i}>(?:/[^/]+)*?{rule.tail})" for i, rule in enumerate(rules)) + ")$",
        re.IGNORECASE)
    routes = []
    unknown = (Endpoint("unknown", api, CAP_UNSEEN), Endpoint("unknown", api, CAP_NONE))
    for rule in rules:
        shape = api if rule.api in ("", _SAME_SHAPE.get(api)) else rule.api
        routes.append((Endpoint(rule.endpoint, shape, rule.cap) if rule.post else unknown[0],
                       Endpoint(rule.endpoint, shape, rule.cap if rule.any_method else CAP_NONE)))
    return _Table(regex, tuple(routes), unknown)


_TABLES = {api: _compile(api, (*_NATIVE.get(api, ()), *_COMMON)) for api in APIS}


@cache
def _vendor_table(name: str, api: str) -> _Table:
    return _compile(api, (*_VENDOR[name], *_NATIVE.get(api, ()), *_COMMON))


_PATH_PARAMS = re.compile(r";[^/]*")
_SLASHES = re.compile(r"/{2,}")


def clean_path(path: str) -> str:
    """The path as a server would route it: no query, percent-decoded, no `;params`,
    dot segments or repeated slashes, no trailing slash."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "%" in path:
        path = unquote(path)
    if ";" in path:
        path = _PATH_PARAMS.sub("", path)
    if "//" in path or "/." in path:
        path = posixpath.normpath(_SLASHES.sub("/", path))
    return path.rstrip("/")


_AMBIGUOUS = (  # what servers route differently, and how a refusal names it
    (re.compile(r";"), "a `;` parameter"),
    (re.compile(r"/\.\.?(?:/|$)"), "a dot segment (`.` or `..`)"),
    (re.compile(r"//"), "an empty segment (`//`)"),
    (re.compile(r"\\"), "a backslash"),
    (re.compile(r"#"), "a `#`"),
    (re.compile(r"[^\x21-\x7e]"), "a space, control or non-ASCII character"),
)


def path_problem(path: str) -> str | None:
    """What makes a path (without its query) ambiguous, or None. Servers route
    `;params`, dot segments, empty segments, backslashes or percent-encoded `/ ? # %`
    differently from each other and from `clean_path`; then the endpoint and model
    egressguard governed need not be the ones the vendor runs, so the caller refuses
    such a path rather than guess. Encoded ordinary characters decode alike anywhere."""
    if ";" in path or "\\" in path or "//" in path or "/." in path or " " in path or "#" in path \
            or not (path.isascii() and path.isprintable()):  # cheap, then which one
        for pattern, what in _AMBIGUOUS:
            if pattern.search(path):
                return what
    if "%" not in path:
        return None
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return "percent-encoded bytes that are not UTF-8"
    if decoded.count("/") != path.count("/"):
        return "a percent-encoded `/`"
    if any(c in decoded for c in "%?#"):
        return "a percent-encoded `%`, `?` or `#` (or a stray `%`)"
    for pattern, what in _AMBIGUOUS:
        if pattern.search(decoded):
            return "a percent-encoded " + what.removeprefix("a ").removeprefix("an ")
    return None


class AmbiguousPath(ValueError):
    """A path servers route differently (see `path_problem`)."""


def routed_path(path: str) -> str:
    """`clean_path` of a path (without its query) that is not ambiguous: then that is
    only decoding and the trailing slash. AmbiguousPath naming the problem otherwise."""
    if problem := path_problem(path):
        raise AmbiguousPath(problem)
    return (unquote(path) if "%" in path else path).rstrip("/")


def endpoint(vendor: Vendor, method: str, path: str, cleaned: bool = False) -> Endpoint:
    """The endpoint kind of a request to `vendor` (an `Endpoint`, equal to one of
    ENDPOINTS); `cleaned`: `path` is already `clean_path`'s. A path no rule knows is
    `unknown`, its cap `unseen` for a POST."""
    table = _vendor_table(vendor.name, vendor.api) if vendor.name in _VENDOR \
        else _TABLES[vendor.api]
    post = method.upper() == "POST"
    m = table.regex.match(path if cleaned else clean_path(path))
    if m is None or m.lastgroup is None:
        return table.unknown[0 if post else 1]
    return table.routes[int(m.lastgroup[1:])][0 if post else 1]


# ---- model ------------------------------------------------------------------------

class ModelConflict(ValueError):
    """The request names two different models: which one runs is the vendor's guess."""


# Where the path names the model, the body's `model` is ignored (Azure runs the
# deployment, whatever the body says: the SDK sends both, often differently) or must
# agree (Gemini's proto binds the path's, and one may not lean on which wins).
_BODY_MODEL_IGNORED = frozenset({"azure_openai"})


def model_name(api: str, name: str) -> str:
    """A model name as rules compare it. Names from a path are lower-cased (a vendor
    that routes them case-insensitively would otherwise run `GPT-4O` past a rule
    about `gpt-4o`); Gemini's are bare (`models/` dropped) or `tunedModels/<id>`."""
    name = name.lower()
    if api == "google":
        name = name.removeprefix("models/")
        if name.startswith("tunedmodels/"):
            name = "tunedModels/" + name[12:]
    return name


def model_of(vendor: Vendor, path: str, body_model: str | None) -> str | None:
    """The model the vendor runs for a request to the clean `path` with `body_model`
    in its body: the one the path names where this vendor puts it there, else the
    body's. ModelConflict when the path names two, or it and the body disagree."""
    if vendor.model_in_path is None:
        return body_model
    named = {model_name(vendor.api, m.group("model"))
             for m in vendor.model_in_path.finditer(path)}
    if len(named) > 1:
        raise ModelConflict(f"the URL path names models {sorted(named)}; name one")
    if not named:
        return model_name(vendor.api, body_model) if body_model else None
    model = named.pop()
    if body_model and vendor.api not in _BODY_MODEL_IGNORED \
            and model_name(vendor.api, body_model) != model:
        raise ModelConflict(f"the URL path names model {model!r} and the body "
                            f"{body_model!r}; send the same model in both, or only the path")
    return model


def _shape(api: str, endpoint: str) -> str:
    return endpoint.api if isinstance(endpoint, Endpoint) else api


# ---- output cap -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Cap:
    fields: tuple[str, ...]  # every field the vendor may honour; all present are written
    within: tuple[str, ...] = ()  # spellings of the object holding them; () = the body
    default: str = ""  # the field added when none is present; "" = by model, see below


@dataclass(frozen=True, slots=True)
class _Batch:
    items: tuple[tuple[str, ...], ...]  # path to the list of requests, spellings per step
    request: str  # where each item keeps its request; "" = the item is the request
    endpoint: str  # what each request is


_OPENAI_CHAT = ("max_completion_tokens", "max_tokens")
_GEMINI = ("maxOutputTokens", "max_output_tokens")
_GEMINI_CONFIG = ("generationConfig", "generation_config")

_CAPS = {
    ("openai", "chat"): _Cap(_OPENAI_CHAT),
    # Azure's newer runtimes refuse max_tokens even for gpt-4o, and the deployment name
    # does not say which model it is
    ("azure_openai", "chat"): _Cap(_OPENAI_CHAT, default="max_completion_tokens"),
    ("openai", "responses"): _Cap(("max_output_tokens",), default="max_output_tokens"),
    ("azure_openai", "responses"): _Cap(("max_output_tokens",), default="max_output_tokens"),
    ("anthropic", "messages"): _Cap(("max_tokens",), default="max_tokens"),
    ("anthropic", "chat"): _Cap(("max_tokens_to_sample",), default="max_tokens_to_sample"),
    # proto JSON takes lowerCamel and snake_case alike
    ("google", "chat"): _Cap(_GEMINI, _GEMINI_CONFIG, "maxOutputTokens"),
    ("google_interactions", "responses"): _Cap(
        _GEMINI, ("generation_config", "generationConfig"), "max_output_tokens"),
    ("cohere", "chat"): _Cap(("max_tokens",), default="max_tokens"),
}

_BATCHES = {
    ("anthropic", "batches"): _Batch((("requests",),), "params", "messages"),
    ("google", "batches"): _Batch(
        (("batch",), ("inputConfig", "input_config"), ("requests",), ("requests",)),
        "request", "chat"),
}

# OpenAI's reasoning models refuse `max_tokens`; every OpenAI-compatible vendor and
# OpenAI's other models take it, while several compatible vendors refuse
# `max_completion_tokens`.
_REFUSES_MAX_TOKENS = re.compile(r"(?:o\d|gpt-5)")


def _default_field(cap: _Cap, body: dict[str, Any]) -> str:
    if cap.default:
        return cap.default
    model = body.get("model")
    return "max_completion_tokens" if isinstance(model, str) \
        and _REFUSES_MAX_TOKENS.match(model) else "max_tokens"


def _batch_requests(body: Any, batch: _Batch) -> Iterator[Any]:
    items: Any = body
    for spellings in batch.items:
        if not isinstance(items, dict):
            return
        items = next((items[s] for s in spellings if s in items), None)
    for item in items if isinstance(items, list) else ():
        yield item.get(batch.request) if batch.request and isinstance(item, dict) else item


def max_tokens(api: str, endpoint: str, body: Any) -> int | None:
    """The output cap the request asks for; None when it sets none or one that is not
    an integer — then every field a vendor might honour is in doubt. Where several
    fields may hold it (max_completion_tokens and max_tokens), the largest; for a
    batch, the largest of its requests (None if any request has none)."""
    api = _shape(api, endpoint)
    if (batch := _BATCHES.get((api, endpoint))) is not None:
        caps = [max_tokens(api, batch.endpoint, r) for r in _batch_requests(body, batch)]
        return None if not caps or None in caps else max(c for c in caps if c is not None)
    cap = _CAPS.get((api, endpoint))
    if cap is None or not isinstance(body, dict):
        return None
    holders = [body.get(w) for w in cap.within if body.get(w) is not None] \
        if cap.within else [body]
    values = []
    for holder in holders:
        if not isinstance(holder, dict):
            return None
        for name in cap.fields:
            value = holder.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                return None
            values.append(value)
    return max(values) if values else None


def set_max_tokens(api: str, endpoint: str, body: dict[str, Any], n: int) -> None:
    """Make `n` the request's output cap: every cap field present is set to `n`, or the
    one the vendor expects is added (OpenAI chat: `max_completion_tokens` for o-series
    and gpt-5 models, which refuse `max_tokens`, else `max_tokens`; Azure:
    `max_completion_tokens`). In a batch, each request whose cap is missing or above
    `n`. Does nothing where the endpoint's cap is not in the body (count tokens…)."""
    if isinstance(endpoint, Endpoint) and endpoint.cap != CAP_BODY:
        return
    api = _shape(api, endpoint)
    if (batch := _BATCHES.get((api, endpoint))) is not None:
        for request in _batch_requests(body, batch):
            current = max_tokens(api, batch.endpoint, request)
            if isinstance(request, dict) and (current is None or current > n):
                set_max_tokens(api, batch.endpoint, request, n)
        return
    cap = _CAPS.get((api, endpoint))
    if cap is None or not isinstance(body, dict):
        return
    holders: list[dict[str, Any]] = [body]
    if cap.within:
        present = [w for w in cap.within if body.get(w) is not None] or [cap.within[0]]
        for w in present:
            if not isinstance(body.get(w), dict):
                body[w] = {}
        holders = [body[w] for w in present]
    written = False
    for holder in holders:
        for name in cap.fields:
            if name in holder:
                holder[name] = n
                written = True
    if not written:
        holders[0][_default_field(cap, body)] = n


_CHOICES = {  # (where, fields): how many answers one request asks for
    ("openai", "chat"): ((), ("n", "best_of")),  # best_of: legacy completions
    ("azure_openai", "chat"): ((), ("n", "best_of")),
    ("google", "chat"): (_GEMINI_CONFIG, ("candidateCount", "candidate_count")),
}


def choices(api: str, endpoint: str, body: Any) -> int:
    """How many answers the request asks for (`n`, `best_of`, Gemini `candidateCount`):
    each may run to the output cap, so a budget reserves the cap that many times. 1
    when it asks for one or says nothing readable (the vendor refuses a bad value)."""
    spec = _CHOICES.get((_shape(api, endpoint), endpoint))
    if spec is None or not isinstance(body, dict):
        return 1
    where, fields = spec
    holders = [body.get(w) for w in where] if where else [body]
    counts = [h.get(f) for h in holders if isinstance(h, dict) for f in fields]
    return max([1, *(c for c in counts if type(c) is int)])


# ---- tools ------------------------------------------------------------------------

def _name(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) and name else None


# tool types that connect a remote MCP server, and the field that names it
_MCP = {"mcp": "server_label", "mcp_server": "name", "mcp_toolset": "mcp_server_name"}
_DEFINED = (None, "function", "custom")  # types whose tools are named by their definition


def _mcp(entry: dict[str, Any], kind: str) -> str:
    label = entry.get(_MCP[kind])
    return f"mcp:{label}" if isinstance(label, str) and label else UNNAMED


def _typed_tool(entry: Any, out: list[str]) -> None:
    """OpenAI chat (`function.name`), Responses (`name`, built-ins by `type`), Cohere
    v2 and v1, Gemini Interactions. Every name a vendor might read is reported."""
    if not isinstance(entry, dict):
        out.append(UNNAMED)
        return
    kind = entry.get("type")
    if isinstance(kind, str) and kind in _MCP:
        out.append(_mcp(entry, kind))
    elif kind in _DEFINED:
        found = len(out)
        for value in (entry.get("function"), entry.get("custom"), entry):
            if name := _name(value):
                out.append(name)
        if len(out) == found:
            out.append(UNNAMED)
    else:
        out.append(kind if isinstance(kind, str) and kind else UNNAMED)


def _anthropic_tool(entry: Any, out: list[str]) -> None:
    """Client and server tools alike have a name (`web_search` of web_search_20250305)."""
    kind = entry.get("type") if isinstance(entry, dict) else None
    if isinstance(kind, str) and kind in _MCP:
        out.append(_mcp(entry, kind))
    else:
        out.append(_name(entry) or UNNAMED)


_SNAKE = re.compile(r"_([a-z0-9])")


def _gemini_tool(entry: Any, out: list[str]) -> None:
    """Declared functions by name, built-ins by their key in lowerCamel (googleSearch,
    codeExecution, urlContext…) however the request spells it."""
    if not isinstance(entry, dict):
        out.append(UNNAMED)
        return
    for key, value in entry.items():
        if value is None:
            continue
        if "_" in key:
            key = _SNAKE.sub(lambda m: m.group(1).upper(), key)
        if key != "functionDeclarations":
            out.append(key)
        elif isinstance(value, list):
            out.extend(_name(d) or UNNAMED for d in value)
        else:
            out.append(UNNAMED)


@dataclass(frozen=True, slots=True)
class _Tools:
    entry: Callable[[Any, list[str]], None]  # adds the names one tool entry offers
    lists: tuple[tuple[str, ...], ...] = (("tools",),)  # where tool lists are
    named: tuple[tuple[str, str, str], ...] = ()  # (list, name field, prefix): other lists
    switches: tuple[tuple[str, str], ...] = ()  # (parameter, tool) that turn a tool on


_OPENAI_TOOLS = _Tools(
    _typed_tool,
    (("tools",), ("session", "tools")),  # realtime sessions
    (("functions", "name", ""), ("plugins", "id", "plugin:")),  # legacy; OpenRouter
    (("web_search_options", "web_search"), ("search_parameters", "live_search")),  # xAI
)
_TOOLS = {
    "openai": _OPENAI_TOOLS,
    "azure_openai": _Tools(_typed_tool, _OPENAI_TOOLS.lists,
                           (("functions", "name", ""), ("data_sources", "type", "data_source:")),
                           _OPENAI_TOOLS.switches),
    "anthropic": _Tools(_anthropic_tool, named=(("mcp_servers", "name", "mcp:"),)),
    "google": _Tools(_gemini_tool),
    "google_interactions": _Tools(_typed_tool),
    "cohere": _Tools(_typed_tool, named=(("connectors", "id", "connector:"),)),  # v1
}


def _at(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = body
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _offered(spec: _Tools, body: dict[str, Any], out: list[str]) -> None:
    for path in spec.lists:
        tools = _at(body, path)
        if isinstance(tools, list):
            for entry in tools:
                spec.entry(entry, out)
        elif tools is not None:
            out.append(UNNAMED)
    for key, field, prefix in spec.named:
        entries = body.get(key)
        if entries is not None and not isinstance(entries, list):
            out.append(UNNAMED)
        for entry in entries if isinstance(entries, list) else ():
            value = entry.get(field) if isinstance(entry, dict) else None
            out.append(prefix + value if isinstance(value, str) and value else UNNAMED)
    out.extend(tool for key, tool in spec.switches if body.get(key) is not None)


def tool_names(api: str, endpoint: str, body: Any) -> tuple[str, ...]:
    """Every tool the request offers the model, each once, in request order: functions
    by name, vendor-run tools by type or key, MCP servers as "mcp:<label>", and
    "<unnamed>" for an entry whose name cannot be read. Any endpoint's body is read,
    since tools set up outside a generation (an assistant, a cache) are offered later."""
    api = _shape(api, endpoint)
    if not isinstance(body, dict):
        return ()
    names: list[str] = []
    _offered(_TOOLS.get(api, _OPENAI_TOOLS), body, names)
    if (batch := _BATCHES.get((api, endpoint))) is not None:
        for request in _batch_requests(body, batch):
            names += tool_names(api, batch.endpoint, request)
    return tuple(dict.fromkeys(names))
