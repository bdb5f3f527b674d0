"""The audit record: one per request, built once when the flow ends.

Schema: `schemas/audit-record.v1.json` (kept in step with `build` by a test). Records
hold references to credentials (path and version), never their values.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA = "egressguard.audit/1"


def new_id(now: float | None = None) -> str:
    """A UUIDv7 (time-ordered) as 32 hex digits: sortable, unique across replicas."""
    ms = int((time.time() if now is None else now) * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return f"{value:032x}"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(slots=True)
class RequestFacts:
    """What the pipeline learned about one request, in plain data."""

    id: str
    started: float  # epoch seconds
    client: str
    method: str
    host: str
    path: str  # without the query string: queries may carry credentials
    kind: str = "request"  # or "connect" (a tunnel refused at CONNECT), "policy" (a reload),
    # "checkpoint" (a signed checkpoint of the chain)
    node: str | None = None  # the egressguard instance that writes the record
    agent: str | None = None
    team: str | None = None
    token_id: str | None = None
    vendor: str | None = None
    model: str | None = None
    stream: bool | None = None
    decision: str = "allow"
    reason: str = "allowed"
    policy: str | None = None  # sha256 of the policy file in force
    rule: str | None = None
    clamps: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    redactions: dict[str, dict[str, int]] | None = None
    response_redactions: dict[str, dict[str, int]] | None = None  # secrets in the answer
    message: str | None = None
    status: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    upstream_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    usage: dict[str, int | None] | None = None
    spend_usd: float | None = None  # usage at the policy's price table
    credential: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None  # {requested_model, model, by}: the rule's route
    attempts: list[dict[str, Any]] | None = None  # the relay's tries: vendor, key, status
    served_by: dict[str, Any] | None = None  # {vendor, model} when a fallback answered
    cache: dict[str, Any] | None = None  # {status: hit/miss/bypass, kind, similarity, why}
    savings: dict[str, Any] | None = None  # {cache_tokens, cache_usd} or {routing_usd}
    websocket: dict[str, Any] | None = None  # a WebSocket session's close (core/realtime.py)
    checkpoint: dict[str, Any] | None = None


def text(value: str | None) -> str | None:
    """`value` as valid UTF-8: bytes an agent sent that are not (kept by mitmproxy as
    surrogate escapes) become `\\xNN`, so every request can be recorded."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def build(facts: RequestFacts) -> dict[str, Any]:
    """The record (without its chain fields `seq`, `prev_hash` and `hash`, which the
    journal adds). Free text that came from the agent goes through `text`."""
    return {
        "schema": SCHEMA,
        "id": facts.id,
        "kind": facts.kind,
        "node": facts.node,
        "ts": rfc3339(facts.started),
        "agent": facts.agent,
        "team": facts.team,
        "token_id": facts.token_id,
        "client": text(facts.client),
        "vendor": facts.vendor,
        "host": text(facts.host),
        "method": text(facts.method),
        "path": text(facts.path),
        "model": text(facts.model),
        "stream": facts.stream,
        "decision": facts.decision,
        "reason": facts.reason,
        "policy": facts.policy,
        "rule": facts.rule,
        "clamps": facts.clamps,
        "limits": facts.limits,
        "redactions": facts.redactions,
        "response_redactions": facts.response_redactions,
        "message": text(facts.message),
        "status": facts.status,
        "error": text(facts.error),
        "latency_ms": facts.latency_ms,
        "upstream_ms": facts.upstream_ms,
        "bytes_in": facts.bytes_in,
        "bytes_out": facts.bytes_out,
        "usage": facts.usage,
        "spend_usd": facts.spend_usd,
        "credential": facts.credential,
        "routing": facts.routing,
        "attempts": facts.attempts,
        "served_by": facts.served_by,
        "cache": facts.cache,
        "savings": facts.savings,
        "websocket": facts.websocket,
        "checkpoint": facts.checkpoint,
    }
