"""The requests inside a batch, each governed as if it had been sent on its own.

A batch runs many requests later, where egressguard cannot see them. Anthropic message
batches and Gemini batchGenerateContent carry them inline (`requests[].params`,
`batch.input_config.requests.requests[].request`); OpenAI and Azure read them from a
JSONL file uploaded before (`POST …/files`, purpose=batch, one `{custom_id, method,
url, body}` per line) and named later by `POST …/batches`. `requests_of` turns each
into an `Item`; `govern` decides every one with the whole policy (a deny rule for a
model applies inside a batch too), clamps its cap, and checks that the redaction plan
the batch is sent under is the one each request would get. A batch whose requests
cannot be read (a Gemini batch reading a file, a line that is not a request) is
refused, never passed on unchecked.

Requests of one shape (same path, model, cap, tools…) are decided once, with the
largest body among them: a batch of 50,000 alike costs one decision.

`GovernedFiles` remembers the batch files egressguard read at upload, per vendor host
and agent, so `POST …/batches` can be refused for any other file (uploaded around
egressguard, by another agent, or before a restart: upload it again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from egressguard.core import apis, forms, limits
from egressguard.core.errors import BadRequest, PolicyDenied
from egressguard.core.rules import Ask, Decision
from egressguard.core.vendors import Vendor

MAX_REQUESTS = 100_000  # Anthropic's own limit per batch; OpenAI's is 50,000
_CONTAINERS = frozenset({"batches", "files"})
_GEMINI_BATCHES = {":batchgeneratecontent": "generateContent",
                   ":asyncbatchembedcontent": "embedContent"}
_GEMINI_SUFFIXES = tuple(_GEMINI_BATCHES)


@dataclass(slots=True)
class Item:
    """One request of a batch."""

    label: str  # which one, for messages: "requests[2] ('doc-7')", "line 3 ('doc-7')"
    method: str
    path: str  # as sent; cleaned by `govern`
    body: dict[str, Any]  # edited in place by clamps
    size: int  # bytes


@dataclass(slots=True)
class Batch:
    """The requests of one batch request, and how to write the body back after clamps."""

    items: list[Item]
    lines: list[dict[str, Any]] | None = None  # a JSONL file's lines (each holds a body)

    def file_content(self) -> bytes:
        return b"".join(orjson.dumps(line) + b"\n" for line in self.lines or ())


@dataclass(slots=True)
class Group:
    """Requests of one shape, decided once: `ask` has the largest body of them."""

    ask: Ask
    items: list[Item] = field(default_factory=list)
    choices: int = 1
    size: int = 0  # their bytes together
    decision: Decision | None = None
    clamped_from: int | None = None  # the cap they asked for, when clamped

    def cost(self, price: limits.Price | None) -> limits.Cost:
        return limits.estimate(self.size, self.ask.max_tokens, price,
                               self.choices * len(self.items))


class BatchRefused(Exception):
    """A request of the batch is refused by the policy: `decision` says why."""

    def __init__(self, label: str, decision: Decision) -> None:
        super().__init__(label)
        self.label, self.decision = label, decision


def is_container(endpoint: apis.Endpoint, method: str) -> bool:
    """Whether a request may carry requests (a batch, an upload): cheap, for the hot path."""
    return endpoint in _CONTAINERS and method.upper() == "POST"


def requests_of(vendor: Vendor, endpoint: apis.Endpoint, path: str, body: Any,
                form: Mapping[str, forms.Part] | None) -> Batch | None:
    """The requests a POST to (clean) `path` carries; None if it carries none. Raises
    BadRequest when it should carry some and egressguard cannot read them."""
    lower = path.lower()
    if endpoint == "batches" and endpoint.api == "anthropic" and endpoint.cap == apis.CAP_BODY:
        return _anthropic(path[:-len("/batches")], body)
    if endpoint == "batches" and lower.endswith(_GEMINI_SUFFIXES):
        return _gemini(path, body)
    if endpoint == "files" and endpoint.api in ("openai", "azure_openai"):
        if lower.endswith("/files"):
            return _upload(form)
        if lower.endswith("/uploads") and isinstance(body, dict) \
                and str(body.get("purpose")).strip().lower() == "batch":
            raise _unreadable("batch input uploaded in parts (/uploads) is not read by "
                              "egressguard; upload it with one POST …/files (purpose=batch)")
    return None


def _unreadable(message: str) -> BadRequest:
    return BadRequest(message, reason="batch_unreadable")


def _checked(items: list[Item]) -> list[Item]:
    if not items:
        raise _unreadable("the batch holds no requests")
    if len(items) > MAX_REQUESTS:
        raise _unreadable(f"the batch holds {len(items)} requests; at most {MAX_REQUESTS}")
    return items


def _anthropic(messages_path: str, body: Any) -> Batch:
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list):
        raise _unreadable("a message batch needs a `requests` list")
    items = []
    for i, request in enumerate(requests):
        params = request.get("params") if isinstance(request, dict) else None
        if not isinstance(params, dict):
            raise _unreadable(f"requests[{i}] of the batch has no `params` object")
        items.append(Item(f"requests[{i}] ({request.get('custom_id')!r})", "POST",
                          messages_path, params, len(orjson.dumps(params))))
    return Batch(_checked(items))


def _gemini(path: str, body: Any) -> Batch:
    """batchGenerateContent / asyncBatchEmbedContent: each inline request goes where
    the same method without `batch` would (`:generateContent`, `:embedContent`)."""
    model_path, _, method = path.rpartition(":")
    single = _GEMINI_BATCHES[":" + method.lower()]
    batch = body.get("batch") if isinstance(body, dict) else None
    config = _either(batch, "input_config", "inputConfig")
    inline = _either(_either(config, "requests"), "requests")
    if not isinstance(inline, list) or _either(config, "file_name", "fileName") is not None:
        raise _unreadable("egressguard reads Gemini batches whose requests are inline "
                          "(batch.input_config.requests.requests); a batch that reads "
                          "an uploaded file cannot be checked")
    items = []
    for i, entry in enumerate(inline):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            raise _unreadable(f"request {i} of the batch has no `request` object")
        items.append(Item(f"request {i}", "POST", f"{model_path}:{single}", request,
                          len(orjson.dumps(request))))
    return Batch(_checked(items))


def _either(holder: Any, *spellings: str) -> Any:
    """The field however proto JSON spells it; both spellings at once are refused, as
    the vendor and the redaction stage might each read another one."""
    present = [s for s in spellings if isinstance(holder, dict) and s in holder]
    if len(present) > 1:
        raise _unreadable(f"the batch gives both {' and '.join(present)}")
    return holder[present[0]] if present else None


def _upload(form: Mapping[str, forms.Part] | None) -> Batch | None:
    """An OpenAI-style upload: its lines if its purpose is `batch`, else None. Read
    strictly, since only its purpose says whether it holds requests."""
    if form is None:
        raise _unreadable("egressguard reads file uploads sent as multipart/form-data "
                          "only, as the SDKs send them")
    part = form.get("purpose")
    purpose = part.text if part is not None else ""
    if purpose is None:
        raise _unreadable("the upload's `purpose` must be a plain form field")
    return _jsonl(form) if purpose.strip().lower() == "batch" else None


def _jsonl(form: Mapping[str, forms.Part]) -> Batch:
    part = form.get("file")
    if part is None or part.filename is None:
        raise _unreadable("a batch upload needs its requests in a `file` part")
    items, lines = [], []
    for n, raw in enumerate(part.data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _unreadable(f"line {n} of the batch file is not JSON ({exc.msg})") from None
        body = line.get("body") if isinstance(line, dict) else None
        url, method = (line.get("url"), line.get("method")) if isinstance(line, dict) \
            else (None, None)
        if not isinstance(body, dict) or not isinstance(url, str) or method != "POST":
            raise _unreadable(f"line {n} of the batch file is not a request "
                              '({"custom_id", "method": "POST", "url", "body": {…}})')
        lines.append(line)
        items.append(Item(f"line {n} ({line.get('custom_id')!r})", "POST", url, body,
                          len(raw)))
    return Batch(_checked(items), lines)


def item_ask(vendor: Vendor, outer: Ask, item: Item) -> tuple[Ask, int]:
    """The request as the policy sees it had it been sent on its own, and how many
    answers it asks for."""
    raw = item.path.partition("?")[0]
    if problem := apis.path_problem(raw):
        raise BadRequest(f"{item.label} of the batch: its URL has {problem}",
                         reason="batch_unreadable")
    path = apis.clean_path(raw)
    endpoint = apis.endpoint(vendor, item.method, path, cleaned=True)
    if endpoint in _CONTAINERS:
        raise BadRequest(f"{item.label} of the batch is itself a {endpoint} request",
                         reason="batch_unreadable")
    body = item.body
    named = body.get("model")
    try:
        model = apis.model_of(vendor, path, named if isinstance(named, str) else None)
    except apis.ModelConflict as exc:
        raise BadRequest(f"{item.label} of the batch: {exc}", reason="model_conflict") from None
    stream = body.get("stream")
    ask = Ask(vendor=outer.vendor, host=outer.host, path=path, agent=outer.agent,
              team=outer.team, method=item.method, model=model, endpoint=endpoint,
              cap=endpoint.cap, stream=stream is True,
              max_tokens=apis.max_tokens(vendor.api, endpoint, body),
              tools=apis.tool_names(vendor.api, endpoint, body), body_bytes=item.size)
    return ask, apis.choices(vendor.api, endpoint, body)


def govern(vendor: Vendor, outer: Ask, outer_decision: Decision, batch: Batch,
           decide: Callable[[Ask], Decision]) -> list[Group]:
    """Decide every request of `batch` and clamp it; BatchRefused for the first one
    the policy refuses, PolicyDenied when one would be redacted otherwise than the
    batch is (Redact applies the batch's rule to all of them)."""
    groups: dict[tuple[Any, ...], Group] = {}
    for item in batch.items:
        ask, choices = item_ask(vendor, outer, item)
        key = (ask.path, ask.model, ask.max_tokens, ask.stream, ask.tools, choices)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(ask, choices=choices)
        elif ask.body_bytes > group.ask.body_bytes:
            group.ask = ask
        group.items.append(item)
        group.size += item.size
    plan = outer_decision.rule.plan if outer_decision.rule else {}
    for group in groups.values():
        first = group.items[0].label
        decision = group.decision = decide(group.ask)
        if not decision.allowed:
            raise BatchRefused(first, decision)
        if decision.rule is not None and dict(decision.rule.plan) != dict(plan):
            raise PolicyDenied(
                f"{first} of the batch falls under policy rule {decision.rule_name!r}, "
                f"whose redaction plan is not that of rule {outer_decision.rule_name!r} "
                "that allows the batch, and a batch is redacted under one plan; give "
                "both the same `redact`", reason="redaction_not_possible")
        if decision.max_tokens is not None:
            for item in group.items:
                apis.set_max_tokens(vendor.api, group.ask.endpoint, item.body,
                                    decision.max_tokens)
            group.clamped_from, group.ask.max_tokens = group.ask.max_tokens, \
                decision.max_tokens
    return list(groups.values())


def recheck(groups: list[Group], decide: Callable[[Ask], Decision]) -> None:
    """Decide a batch file's requests again when a batch is created from it (the policy
    may have changed since the upload); BatchRefused if one is now refused or would
    need a lower cap than the file holds."""
    for group in groups:
        decision = group.decision = decide(group.ask)
        if decision.max_tokens is not None:
            decision = replace(decision, allowed=False, reason="max_tokens_over_cap",
                               message=f"the policy now caps max_tokens at "
                               f"{decision.max_tokens} and the file asks for "
                               f"{group.ask.max_tokens or 'no cap'}; upload it again",
                               status=400)
        if not decision.allowed:
            raise BatchRefused(group.items[0].label, decision)


@dataclass(frozen=True, slots=True)
class FileKey:
    vendor: str
    host: str
    agent: str | None
    file_id: str


class GovernedFiles:
    """Batch files read at upload (bounded: the oldest are forgotten first)."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._files: OrderedDict[FileKey, list[Group]] = OrderedDict()

    def add(self, key: FileKey, groups: list[Group]) -> None:
        self._files[key] = groups
        self._files.move_to_end(key)
        while len(self._files) > self.capacity:
            self._files.popitem(last=False)

    def get(self, key: FileKey) -> list[Group] | None:
        return self._files.get(key)
