"""A local TLS fake model vendor, standing in for api.openai.com & co. in tests, the demo
and benchmarks.

It speaks enough of the OpenAI (and Azure), Anthropic and Gemini HTTP APIs for the
official SDKs to parse its replies, records every request it receives, and serves one
certificate (from `make_pki`) covering every vendor host name, so a proxy can route to
it with an upstream map while keeping the real SNI and Host. The request's `model`
drives test behaviour: `slow-stream`, `echo-headers`, `echo` (answers with the last
message's text), `error-500`. `POST /_fake/reply {"text": ..., "chunk": N, "delay": S}`
makes every other model answer with that text (streamed N characters per event, S
seconds apart), as a vendor whose model writes out what it should not.

`POST /_fake/faults {"faults": [FAULT, ...]}` makes it fail on demand (retries, key
pools, failover), replacing any earlier list; `GET /_fake/faults` lists them with
their counts. A FAULT is `{"status": 429}` plus optional filters and pacing:
`vendor` (as `vendor_for` names it), `key` (a credential value ends with it),
`model`, `times` (only the next N matching requests fail), `every` (only the 1st,
K+1th, ... matching request fails), `retry_after` (seconds, as a Retry-After header).
The status is answered with the vendor's own error body (429s with rate-limit
headers); status 0 drops the connection without an answer, and `{"after_bytes": B}`
(instead of a status) sends the normal answer's head and first B body bytes, then
drops the connection. The first fault whose filters match a request (and whose
`times` is not spent) decides it; on its off-turns (`every`) the request is answered
normally. Faulted requests are recorded like any other.

`GET /_fake/received` lists what it received; `POST /_fake/reset` forgets that, the
scripted reply and the faults. A WebSocket upgrade to `/v1/realtime` is an OpenAI
Realtime session (`fakerealtime`), faulted by status like any request (`after_bytes`
drops it before the upgrade).

    python -m egressguard.tools.fakevendor --listen 127.0.0.1:0 --pki-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import fcntl
import gzip
import http
import ipaddress
import itertools
import json
import os
import re
import signal
import ssl
import struct
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from egressguard.tools import fakerealtime

VENDOR_HOSTS = (
    "api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
    "*.openai.azure.com", "api.mistral.ai", "api.cohere.com", "api.cohere.ai",
    "api.groq.com", "openrouter.ai", "api.deepseek.com", "api.x.ai", "api.together.xyz",
    "api.together.ai", "api.fireworks.ai", "localhost",
)
_HOST_VENDOR = {
    "api.openai.com": "openai", "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "google", "api.mistral.ai": "mistral",
    "api.cohere.com": "cohere", "api.cohere.ai": "cohere", "api.groq.com": "groq",
    "openrouter.ai": "openrouter", "api.deepseek.com": "deepseek", "api.x.ai": "xai",
    "api.together.xyz": "together", "api.together.ai": "together",
    "api.fireworks.ai": "fireworks",
}
_CREDENTIAL_HEADERS = {"authorization", "x-api-key", "api-key", "x-goog-api-key"}
SLOW_STREAM_DELAY = 0.3
_READ_SIZE = 65536
_CLOSE_TIMEOUT = 5.0
_ids = itertools.count(1)


# --- PKI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki:
    """A CA and a leaf cert for every vendor host in `directory`; reuses existing files."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    # Parallel test processes share a directory; the lock keeps one run's CA from being
    # paired with another run's leaf.
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(p.exists() for p in (pki.ca_cert, pki.cert, pki.key)):
            _write_pki(pki, directory / "ca-key.pem")
    return pki


def _write_pki(pki: Pki, ca_key_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egressguard fake vendor CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        _cert_builder(ca_name, ca_name, ca_key.public_key(), now, days=3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in VENDOR_HOSTS]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egressguard fake vendor")])
    leaf = (
        _cert_builder(leaf_name, ca_name, key.public_key(), now, days=825)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(ca_key_path, _pem_key(ca_key), 0o600)
    _write(pki.key, _pem_key(key), 0o600)
    _write(pki.cert, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(pki.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)


def _cert_builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: enabled.get(name, False) for name in names})


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # os.open's mode is masked by umask and ignored for existing files


# --- requests and replies (no I/O) ---------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # original case and order, duplicates kept
    body: bytes  # as sent, still gzip-encoded if it was
    frames: list[dict[str, str]] | None = None  # a WebSocket's frames (fakerealtime)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def to_json(self) -> dict[str, Any]:
        try:
            body, is_b64 = self.body.decode("utf-8"), False
        except UnicodeDecodeError:
            body, is_b64 = base64.b64encode(self.body).decode("ascii"), True
        out = {"method": self.method, "path": self.path, "query": self.query,
               "headers": [list(h) for h in self.headers], "body": body, "body_base64": is_b64}
        if self.frames is not None:
            out["frames"] = list(self.frames)
        return out


@dataclass
class Reply:
    status: int
    body: bytes = b""
    events: list[bytes] | None = None  # set for a streamed reply, one chunk per event
    content_type: str = "application/json"
    delay: float = 0.0  # pause between streamed events
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (Retry-After, ...)


def _last_text(payload: dict[str, Any]) -> str:
    messages = payload.get("messages") or [{}]
    content = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
    if isinstance(content, list):  # parts / blocks
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class Script:
    """What the models answer until reset (`/_fake/reply`)."""

    text: str
    chunk: int | None = None  # characters per streamed event; None: a word each
    delay: float = 0.0  # seconds between streamed events


@dataclass
class _Call:
    req: Received
    vendor: str
    payload: dict[str, Any]
    model: str
    script: Script | None = None

    @property
    def stream(self) -> bool:
        return bool(self.payload.get("stream"))

    @property
    def text(self) -> str:
        if self.model == "echo-headers":
            return "\n".join(f"{name}: {value}" for name, value in self.req.headers)
        if self.model == "echo":  # the last message's text, as this vendor received it
            return _last_text(self.payload)
        if self.script is not None:
            return self.script.text
        return f"Hello from fake {self.vendor}"

    @property
    def chunks(self) -> list[str]:
        if self.script is not None and self.script.chunk and self.model != "echo":
            n = self.script.chunk
            return [self.text[i:i + n] for i in range(0, len(self.text), n)]
        return re.findall(r"\S+\s*", self.text)

    @property
    def input_tokens(self) -> int:
        return max(1, len(self.req.body) // 4)

    @property
    def output_tokens(self) -> int:
        return len(self.chunks)


_GEMINI = re.compile(r"^/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)$")
_AZURE = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_BENCH = Reply(200, b'{"ok":true}')


def vendor_for(host: str, path: str) -> str:
    """Which vendor a request is for: by Host, else (direct calls to localhost) by path."""
    name = re.sub(r":\d+$", "", host.lower())
    if name in _HOST_VENDOR:
        return _HOST_VENDOR[name]
    if name.endswith(".openai.azure.com") or path.startswith("/openai/deployments/"):
        return "azure"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "google" if _GEMINI.match(path) else "openai"


def handle(req: Received, script: Script | None = None) -> Reply:
    """The fake vendor's answer to one (non-control) request."""
    vendor = vendor_for(req.header("host") or "", req.path)
    if not _has_credential(req):
        return _error(vendor, 401, "no API key provided (egressguard fake vendor)")
    if (stored := _batch_api(req)) is not None:
        return stored
    try:
        raw = gzip.decompress(req.body) if req.header("content-encoding") == "gzip" else req.body
        payload = json.loads(raw) if raw else {}
    except (OSError, ValueError) as exc:
        return _error(vendor, 400, f"unreadable request body: {exc}")
    if not isinstance(payload, dict):
        return _error(vendor, 400, "request body must be a JSON object")
    gemini = _GEMINI.match(req.path)
    model = _model(req, payload)
    call = _Call(req, vendor, payload, model, script)
    if model == "error-500":
        return _error(vendor, 500, "the fake vendor failed, as asked by model error-500")
    if req.method == "POST":
        if req.path.endswith("/chat/completions"):
            return _openai_chat(call)
        if req.path.endswith("/responses"):
            return _openai_responses(call)
        if req.path.endswith("/embeddings"):
            return _openai_embeddings(call)
        if req.path == "/v1/messages":
            return _anthropic_messages(call)
        if gemini:
            return _gemini(call, streaming=gemini[2] == "streamGenerateContent")
    if req.method == "GET" and req.path.endswith("/models"):
        return _json(200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "egressguard-fake"}
            for m in ("gpt-4o-mini", "slow-stream", "echo-headers", "echo", "error-500")]})
    return _error(vendor, 404, f"the fake vendor has no route for {req.method} {req.path}")


def _model(req: Received, payload: dict[str, Any]) -> str:
    gemini, azure = _GEMINI.match(req.path), _AZURE.match(req.path)
    return gemini[1] if gemini else str(payload.get("model") or (azure[1] if azure else ""))


_PURPOSE = re.compile(rb'name="purpose"\r\n\r\n([^\r]*)\r\n')


def _batch_api(req: Received) -> Reply | None:
    """Batch jobs and file uploads, enough for the SDKs: each is stored nowhere, only
    acknowledged (what arrived is in `received`)."""
    if req.method != "POST":
        return None
    now, n = int(time.time()), next(_ids)
    if req.path in ("/v1/files", "/openai/files") and (purpose := _PURPOSE.search(req.body)):
        return _json(200, {"id": f"file-fake{n}", "object": "file", "bytes": len(req.body),
                           "created_at": now, "filename": "upload.jsonl",
                           "purpose": purpose[1].decode(), "status": "processed"})
    if req.path in ("/v1/batches", "/openai/batches"):
        payload = json.loads(req.body or b"{}")
        return _json(200, {"id": f"batch_fake{n}", "object": "batch",
                           "endpoint": payload.get("endpoint"), "input_file_id":
                           payload.get("input_file_id"), "completion_window": "24h",
                           "status": "validating", "created_at": now})
    if req.path == "/v1/messages/batches":
        return _json(200, {"id": f"msgbatch_fake{n}", "type": "message_batch",
                           "processing_status": "in_progress", "request_counts": {
                               "processing": len(json.loads(req.body).get("requests", [])),
                               "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
                           "created_at": "2025-01-01T00:00:00Z",
                           "expires_at": "2025-01-02T00:00:00Z", "ended_at": None,
                           "archived_at": None, "cancel_initiated_at": None,
                           "results_url": None})
    if req.path.endswith(":batchGenerateContent"):
        return _json(200, {"name": f"batches/fake{n}", "metadata": {"state": "PENDING"}})
    return None


def _has_credential(req: Received) -> bool:
    if any(n.lower() in _CREDENTIAL_HEADERS and v.strip() for n, v in req.headers):
        return True
    return bool(parse_qs(req.query).get("key"))


_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 404: "not_found_error",
                     413: "request_too_large", 429: "rate_limit_error",
                     529: "overloaded_error"}
_GOOGLE_ERRORS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                  504: "DEADLINE_EXCEEDED"}
_OPENAI_ERRORS = {  # status: (type, code), as api.openai.com sends them
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("request_forbidden", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
    503: ("service_unavailable_error", "server_is_overloaded"),
}


def _error(vendor: str, status: int, message: str) -> Reply:
    """`status` with `message` in the vendor's own error shape."""
    if vendor == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else
                                     "invalid_request_error")
        return _json(status, {"type": "error", "error": {"type": kind, "message": message}})
    if vendor == "google":
        state = _GOOGLE_ERRORS.get(status, "UNAVAILABLE" if status >= 500 else
                                   "FAILED_PRECONDITION")
        return _json(status, {"error": {"code": status, "message": message, "status": state}})
    kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else
                                             "invalid_request_error", None))
    return _json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return {529: "Overloaded"}.get(status, "Unknown")


def _json(status: int, obj: object) -> Reply:
    return Reply(status, json.dumps(obj).encode())


def _sse(data: object, event: str | None = None, eol: str = "\n") -> bytes:
    # compact, as OpenAI and Anthropic write their events
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}{eol}" if event else "").encode() + f"data: {text}{eol}{eol}".encode()


def _stream(call: _Call, events: list[bytes]) -> Reply:
    delay = SLOW_STREAM_DELAY if call.model == "slow-stream" else \
        call.script.delay if call.script is not None else 0.0
    return Reply(200, events=events, content_type="text/event-stream", delay=delay)


def _openai_chat(c: _Call) -> Reply:
    cid, created = f"chatcmpl-fake{next(_ids)}", int(time.time())
    usage = {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens,
             "total_tokens": c.input_tokens + c.output_tokens}
    head = {"id": cid, "created": created, "model": c.model, "system_fingerprint": None}
    if not c.stream:
        message = {"role": "assistant", "content": c.text, "refusal": None, "annotations": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        body = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        return _json(200, body)
    with_usage = bool((c.payload.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        usage_field = {"usage": None} if with_usage else {}
        return _sse({**head, "object": "chat.completion.chunk", "choices": choices,
                     **usage_field, **extra})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in c.chunks]
    events.append(chunk({}, "stop"))
    if with_usage:
        events.append(chunk(None, usage=usage))
    return _stream(c, [*events, _sse("[DONE]")])


def _openai_responses(c: _Call) -> Reply:
    if c.stream:
        return _error(c.vendor, 400, "the fake vendor only answers non-streamed /responses")
    content = [{"type": "output_text", "text": c.text, "annotations": []}]
    output = [{"type": "message", "id": f"msg_fake{next(_ids)}", "status": "completed",
               "role": "assistant", "content": content}]
    usage = {"input_tokens": c.input_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": c.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": c.input_tokens + c.output_tokens}
    return _json(200, {
        "id": f"resp_fake{next(_ids)}", "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": c.model, "output": output, "usage": usage,
        "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "temperature": 1.0, "top_p": 1.0,
    })


def _openai_embeddings(c: _Call) -> Reply:
    inputs = c.payload.get("input")
    single = not isinstance(inputs, list) or all(isinstance(i, int) for i in inputs)
    count = 1 if single else len(inputs)
    vector = [0.25, -0.5, 0.125, 1.0]
    as_b64 = c.payload.get("encoding_format") == "base64"
    packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    data = [{"object": "embedding", "index": i, "embedding": packed if as_b64 else vector}
            for i in range(count)]
    usage = {"prompt_tokens": c.input_tokens, "total_tokens": c.input_tokens}
    return _json(200, {"object": "list", "data": data, "model": c.model, "usage": usage})


def _anthropic_messages(c: _Call) -> Reply:
    message = {
        "id": f"msg_fake{next(_ids)}", "type": "message", "role": "assistant", "model": c.model,
        "content": [{"type": "text", "text": c.text}], "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": c.input_tokens, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": c.output_tokens},
    }
    if not c.stream:
        return _json(200, message)

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, **fields}, kind)

    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events = [
        event("message_start", message=start),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("ping"),
    ]
    events += [event("content_block_delta", index=0, delta={"type": "text_delta", "text": part})
               for part in c.chunks]
    events += [
        event("content_block_stop", index=0),
        event("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
              usage={"output_tokens": c.output_tokens}),
        event("message_stop"),
    ]
    return _stream(c, events)


def _gemini(c: _Call, streaming: bool) -> Reply:
    rid = f"fake{next(_ids)}"

    def chunk(text: str, done: bool, out_tokens: int) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                     "index": 0}
        if done:
            candidate["finishReason"] = "STOP"
        usage = {"promptTokenCount": c.input_tokens, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": c.input_tokens + out_tokens}
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": c.model,
                "responseId": rid}

    if not streaming:
        return _json(200, chunk(c.text, True, c.output_tokens))
    parts = c.chunks
    bodies = [chunk(p, i == len(parts) - 1, i + 1) for i, p in enumerate(parts)]
    # as with ?alt=sse, which every SDK sends
    return _stream(c, [_sse(b, eol="\r\n") for b in bodies])


# --- faults on demand (no I/O) ---------------------------------------------------------


VENDORS = frozenset({*_HOST_VENDOR.values(), "azure", "openai"})


@dataclass(frozen=True)
class Fault:
    """How matching requests fail (`/_fake/faults`); see the module docstring."""

    status: int | None = None  # 0: drop the connection; None: `after_bytes`
    vendor: str | None = None
    key: str | None = None  # suffix of a credential value
    model: str | None = None
    retry_after: float | None = None  # seconds
    times: int | None = None  # None: forever
    every: int = 1
    after_bytes: int | None = None

    @classmethod
    def parse(cls, spec: object) -> Fault:
        """A fault from its JSON; ValueError names the bad field."""
        if not isinstance(spec, dict):
            raise ValueError(f"a fault is a JSON object, got {spec!r}")
        if unknown := set(spec) - {f.name for f in fields(cls)}:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        fault = cls(**spec)
        fault._check()
        return fault

    def _check(self) -> None:
        if self.after_bytes is None and not (self.status == 0 or _is_error(self.status)):
            raise ValueError(f"status must be 0 (drop) or an HTTP error, got {self.status!r}")
        if self.after_bytes is not None and (not _is_count(self.after_bytes, 0)
                                             or self.status not in (None, 200)):
            raise ValueError("after_bytes (bytes, >= 0) sends the normal answer: no status")
        if self.vendor is not None and self.vendor not in VENDORS:
            raise ValueError(f"vendor must be one of {sorted(VENDORS)}, got {self.vendor!r}")
        for name in ("key", "model"):
            if not isinstance(getattr(self, name), str | None):
                raise ValueError(f"{name} must be a string")
        if self.times is not None and not _is_count(self.times, 1):
            raise ValueError(f"times must be a whole number >= 1, got {self.times!r}")
        if not _is_count(self.every, 1):
            raise ValueError(f"every must be a whole number >= 1, got {self.every!r}")
        if self.retry_after is not None and (
                isinstance(self.retry_after, bool)
                or not isinstance(self.retry_after, int | float) or self.retry_after < 0):
            raise ValueError(f"retry_after must be seconds >= 0, got {self.retry_after!r}")

    def matches(self, vendor: str, model: str, credentials: list[str]) -> bool:
        return ((self.vendor is None or self.vendor == vendor)
                and (self.model is None or self.model == model)
                and (self.key is None or any(c.endswith(self.key) for c in credentials)))


def _is_error(status: object) -> bool:
    return _is_count(status, 400) and status in range(400, 600)


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass
class ArmedFault:
    """A fault and what it has done so far."""

    fault: Fault
    matched: int = 0  # requests it decided
    failed: int = 0  # of which it failed

    @property
    def remaining(self) -> int | None:
        return None if self.fault.times is None else self.fault.times - self.failed

    def to_json(self) -> dict[str, Any]:
        spec = {k: v for k, v in asdict(self.fault).items() if v is not None}
        return {**spec, "matched": self.matched, "failed": self.failed,
                "remaining": self.remaining}


def parse_faults(body: bytes) -> list[ArmedFault]:
    """The `/_fake/faults` body, `{"faults": [FAULT, ...]}`; ValueError if malformed."""
    spec = json.loads(body or b"{}")
    if not isinstance(spec, dict) or set(spec) != {"faults"} \
            or not isinstance(spec["faults"], list):
        raise ValueError('expected {"faults": [FAULT, ...]}')
    armed = []
    for i, item in enumerate(spec["faults"]):
        try:
            armed.append(ArmedFault(Fault.parse(item)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"faults[{i}]: {exc}") from None
    return armed


def pick_fault(armed: list[ArmedFault], req: Received) -> Fault | None:
    """The fault `req` meets, if any, counting it: the first live fault that matches
    decides, failing the request on its turn (`every`) and answering it normally
    otherwise."""
    live = [a for a in armed if a.remaining != 0]
    if not live:
        return None
    vendor = vendor_for(req.header("host") or "", req.path)
    model, credentials = requested_model(req), _credentials(req)
    for a in live:
        if not a.fault.matches(vendor, model, credentials):
            continue
        a.matched += 1
        if (a.matched - 1) % a.fault.every:
            return None
        a.failed += 1
        return a.fault
    return None


def requested_model(req: Received) -> str:
    """The model `req` asks for, "" if its body does not say."""
    try:
        raw = gzip.decompress(req.body) if req.header("content-encoding") == "gzip" else req.body
        payload = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        payload = {}
    return _model(req, payload if isinstance(payload, dict) else {})


def _credentials(req: Received) -> list[str]:
    values = [v.strip() for n, v in req.headers if n.lower() in _CREDENTIAL_HEADERS]
    # "Bearer sk-..." -> "sk-..."; other credential headers carry the bare key
    values = [v.partition(" ")[2].strip() if " " in v else v for v in values]
    return values + parse_qs(req.query).get("key", [])


def fault_reply(fault: Fault, req: Received) -> Reply:
    """A fault's error answer (status > 0), in the shape of the vendor `req` is for."""
    assert fault.status
    vendor = vendor_for(req.header("host") or "", req.path)
    reply = _error(vendor, fault.status, f"{_reason(fault.status)}: a fault injected by "
                                         f"the egressguard fake vendor")
    headers: list[tuple[str, str]] = []
    if fault.retry_after is not None:
        headers.append(("retry-after", f"{fault.retry_after:g}"))
    if fault.status == 429:
        headers += _rate_limit_headers(vendor, fault.retry_after or 1.0)
    return replace(reply, headers=tuple(headers))


def _rate_limit_headers(vendor: str, reset: float) -> list[tuple[str, str]]:
    if vendor == "anthropic":
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=reset)
        return [("anthropic-ratelimit-requests-limit", "60"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", at.strftime("%Y-%m-%dT%H:%M:%SZ"))]
    if vendor == "google":
        return []
    return [("x-ratelimit-limit-requests", "60"), ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", f"{reset:g}s")]


# --- the server ------------------------------------------------------------------------


class FakeVendor:
    """HTTP/1.1 keep-alive over TLS, one asyncio task per connection, h11 for framing."""

    def __init__(self, pki: Pki, host: str = "127.0.0.1", port: int = 0) -> None:
        self.pki, self.host, self.port = pki, host, port
        self.received: list[Received] = []
        self.script: Script | None = None
        self.faults: list[ArmedFault] = []
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.cert, self.pki.key)
        ctx.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=ctx)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Idle keep-alive connections would otherwise hold wait_closed() open forever.
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._serve_one(conn, reader, writer):
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            with suppress(h11.LocalProtocolError, OSError):
                await _send(conn, writer, _json(exc.error_status_hint, {"error": str(exc)}))
        except OSError:
            pass  # the client hung up
        finally:
            self._connections.pop(task, None)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
            except (OSError, TimeoutError):
                writer.transport.abort()

    async def _serve_one(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; True if the connection may carry another."""
        request = await _next_event(conn, reader)
        if not isinstance(request, h11.Request):
            return False
        if conn.they_are_waiting_for_100_continue:
            writer.write(_out(conn, h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while isinstance(event := await _next_event(conn, reader), h11.Data):
            body += event.data
        path, _, query = request.target.decode("latin-1").partition("?")
        raw_headers = request.headers.raw_items()
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers]
        req = Received(request.method.decode("ascii"), path, query, headers, bytes(body))
        if path.startswith("/_fake/"):
            reply = self._control(req)
        elif path == "/bench":
            reply = _BENCH  # not recorded: benchmarks send millions
        else:
            self.received.append(req)
            return await self._answer(conn, reader, writer, req)
        await _send(conn, writer, reply)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _answer(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, req: Received) -> bool:
        """Answer a vendor request, or fail it as a fault says; True if the connection
        may carry another."""
        fault = pick_fault(self.faults, req)
        upgrade = fakerealtime.is_upgrade(req.method, req.path, req.headers) \
            and _has_credential(req)
        if fault is None and upgrade:
            req.frames = []
            await fakerealtime.serve(conn, reader, writer, req, self.script)
            return False  # the connection was the session's
        if fault is not None and (fault.status == 0 or upgrade and fault.after_bytes is not None):
            writer.transport.abort()  # no answer at all: the client sees a reset or EOF
            return False
        if fault is not None and fault.status:
            await _send(conn, writer, fault_reply(fault, req))
        else:
            await _send(conn, writer, handle(req, self.script),
                        cut=None if fault is None else fault.after_bytes)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _control(self, req: Received) -> Reply:
        if (req.method, req.path) == ("GET", "/_fake/received"):
            return _json(200, [r.to_json() for r in self.received])
        if (req.method, req.path) == ("POST", "/_fake/reset"):
            self.received.clear()
            self.script = None
            self.faults = []
            return _json(200, {"ok": True})
        if (req.method, req.path) == ("GET", "/_fake/faults"):
            return _json(200, [a.to_json() for a in self.faults])
        if (req.method, req.path) == ("POST", "/_fake/faults"):
            try:
                self.faults = parse_faults(req.body)
            except ValueError as exc:
                return _json(400, {"error": str(exc)})
            return _json(200, {"ok": True})
        if (req.method, req.path) == ("POST", "/_fake/reply"):
            try:
                spec = json.loads(req.body)
                self.script = Script(str(spec["text"]), spec.get("chunk"),
                                     float(spec.get("delay") or 0.0))
            except (ValueError, KeyError, TypeError) as exc:
                return _json(400, {"error": f"expected {{\"text\": ..., \"chunk\": N, "
                                            f"\"delay\": SECONDS}}: {exc}"})
            return _json(200, {"ok": True})
        return _json(404, {"error": f"no control endpoint {req.method} {req.path}"})


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await reader.read(_READ_SIZE))
    return event


def _out(conn: h11.Connection, *events: Any) -> bytes:
    return b"".join(conn.send(e) or b"" for e in events)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply,
                cut: int | None = None) -> None:
    """Send `reply`; with `cut`, only its first `cut` body bytes and never its end (the
    caller then closes the connection: a failure after the answer began)."""
    rid = f"req_fake{next(_ids)}"
    headers = [("content-type", reply.content_type), ("x-request-id", rid), ("request-id", rid),
               *reply.headers]
    reason = _reason(reply.status).encode()
    end = [h11.EndOfMessage()] if cut is None else []
    if reply.events is None:
        headers.append(("content-length", str(len(reply.body))))
        response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
        writer.write(_out(conn, response, h11.Data(data=reply.body[:cut]), *end))
        await writer.drain()
        return
    headers += [("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
    response = h11.Response(status_code=reply.status, headers=headers, reason=reason)
    writer.write(_out(conn, response))
    left = cut
    for i, event in enumerate(reply.events):
        if left == 0:
            return
        if i and reply.delay:
            await asyncio.sleep(reply.delay)
        if left is not None:
            event, left = event[:left], left - len(event[:left])
        # One chunk per event, drained before the next, so clients see each as it happens.
        writer.write(_out(conn, h11.Data(data=event)))
        await writer.drain()
    writer.write(_out(conn, *end))
    await writer.drain()


# --- CLI -------------------------------------------------------------------------------


async def _serve_until_signalled(pki: Pki, host: str, port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    vendor = FakeVendor(pki, host, port)
    bound = await vendor.start()
    try:
        print(json.dumps({"port": bound, "ca": str(pki.ca_cert)}), flush=True)
        await stopping.wait()
    finally:
        await vendor.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egressguard.tools.fakevendor",
        description="Serve a fake model vendor over TLS; print {port, ca} as one JSON line.",
    )
    parser.add_argument("--listen", default="127.0.0.1:0",
                        help="HOST:PORT to listen on; port 0 picks a free one")
    parser.add_argument("--pki-dir", type=Path, required=True,
                        help="directory holding the CA and leaf cert (created if missing)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be HOST:PORT, got {args.listen!r}")
    asyncio.run(_serve_until_signalled(make_pki(args.pki_dir), host, int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
