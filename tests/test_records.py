"""The audit record (`egressguard.core.records`) and its JSON Schema, kept in step."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from egressguard.core import chain, records
from egressguard.core.records import RequestFacts, build, new_id, rfc3339

SCHEMA_FILE = "schemas/audit-record.v1.json"
STARTED = 1_700_000_000.123
ROUTING = {"requested_model": "gpt-4o", "model": "gpt-4o-mini", "by": ["team"]}
ATTEMPTS = [{"vendor": "openai", "model": "gpt-4o-mini", "key": "egressguard/openai/org-a",
             "status": 429, "error": None, "ms": 12.5},
            {"vendor": "openai", "model": "gpt-4o-mini", "key": "egressguard/openai/org-b",
             "status": 200, "error": None, "ms": 310.0}]


@cache
def schema() -> dict[str, Any]:
    text = resources.files("egressguard.core").joinpath(SCHEMA_FILE).read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validator() -> Draft202012Validator:
    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def full_facts() -> RequestFacts:
    return RequestFacts(
        id=new_id(STARTED), started=STARTED, client="10.0.0.7:51234", method="POST",
        host="api.openai.com", path="/v1/chat/completions", kind="request", node="egress-1",
        agent="billing-bot", team="finance", token_id="0123456789abcdef", vendor="openai",
        model="gpt-4o-mini", stream=True, decision="allow", reason="allowed",
        policy="ab" * 32, rule="finance-openai",
        clamps={"max_tokens": {"from": None, "to": 1024}},
        limits={"state": "reserved", "scopes": ["team:finance"],
                "estimate": {"requests": 1, "tokens": 1040, "spend_usd": 0.0007}},
        redactions={"EMAIL_ADDRESS": {"mask": 2}, "PERSON": {"pseudonymize": 1}},
        response_redactions={"AWS_ACCESS_KEY": {"mask": 1}, "JWT": {"log": 2}},
        message=None, status=200, error=None, latency_ms=812.5, upstream_ms=640.25, bytes_in=1234,
        bytes_out=5678, usage={"input_tokens": 12, "output_tokens": 34}, spend_usd=0.000027,
        credential={"path": "egressguard/vendors/openai", "version": 3},
        routing=ROUTING, attempts=ATTEMPTS, cache={"status": "miss"},
        savings={"routing_usd": 0.000201},
    )


def minimal_facts() -> RequestFacts:
    return RequestFacts(
        id=new_id(STARTED), started=STARTED, client="[::1]:40000", method="CONNECT",
        host="169.254.169.254", path="", kind="connect", decision="deny",
        reason="destination_denied", message="169.254.169.254 is not a host agents may reach",
        status=403,
    )


def sealed(facts: RequestFacts) -> dict[str, Any]:
    return chain.seal(build(facts), chain.GENESIS, 1)


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema()["$id"] == "https://egressguard.dev/schemas/audit-record.v1.json"
    assert schema()["title"]
    assert schema()["properties"]["schema"]["const"] == records.SCHEMA


def _properties(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, spec in node.get("properties", {}).items():
        out.append((f"{path}{name}", spec))
        out.extend(_properties(spec, f"{path}{name}."))
    return out


@pytest.mark.parametrize("name, spec", _properties(schema()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_every_property_is_described(name: str, spec: dict[str, Any]) -> None:
    assert len(spec.get("description", "")) > 30, name


@pytest.mark.parametrize("node", [schema(), schema()["properties"]["usage"],
                                  schema()["properties"]["credential"]],
                         ids=["record", "usage", "credential"])
def test_objects_are_closed_and_require_every_field(node: dict[str, Any]) -> None:
    assert node["additionalProperties"] is False
    assert sorted(node["required"]) == sorted(node["properties"])


def test_schema_fields_are_exactly_what_build_and_seal_produce() -> None:
    produced = [*build(minimal_facts()), "seq", "prev_hash", "hash"]
    assert sorted(schema()["required"]) == sorted(produced)
    assert sorted(schema()["properties"]) == sorted(produced)
    assert list(sealed(minimal_facts())) == produced


@pytest.mark.parametrize("facts", [full_facts, minimal_facts], ids=["full", "minimal"])
def test_built_records_validate(facts: Any) -> None:
    record = sealed(facts())
    assert list(validator().iter_errors(record)) == []
    assert record["hash"] == chain.record_hash(record)


def test_a_full_record() -> None:
    facts = full_facts()
    assert build(facts) == {
        "schema": "egressguard.audit/1", "id": facts.id, "kind": "request", "node": "egress-1",
        "ts": "2023-11-14T22:13:20.123Z", "agent": "billing-bot", "team": "finance",
        "token_id": "0123456789abcdef", "client": "10.0.0.7:51234", "vendor": "openai",
        "host": "api.openai.com", "method": "POST", "path": "/v1/chat/completions",
        "model": "gpt-4o-mini", "stream": True, "decision": "allow", "reason": "allowed",
        "policy": "ab" * 32, "rule": "finance-openai",
        "clamps": {"max_tokens": {"from": None, "to": 1024}},
        "limits": {"state": "reserved", "scopes": ["team:finance"],
                   "estimate": {"requests": 1, "tokens": 1040, "spend_usd": 0.0007}},
        "redactions": {"EMAIL_ADDRESS": {"mask": 2}, "PERSON": {"pseudonymize": 1}},
        "response_redactions": {"AWS_ACCESS_KEY": {"mask": 1}, "JWT": {"log": 2}},
        "message": None, "status": 200, "error": None, "latency_ms": 812.5,
        "upstream_ms": 640.25, "bytes_in": 1234, "bytes_out": 5678,
        "usage": {"input_tokens": 12, "output_tokens": 34}, "spend_usd": 0.000027,
        "credential": {"path": "egressguard/vendors/openai", "version": 3},
        "routing": ROUTING, "attempts": ATTEMPTS, "served_by": None, "cache": {"status": "miss"},
        "savings": {"routing_usd": 0.000201}, "websocket": None, "checkpoint": None,
    }


def test_a_minimal_record_defaults_to_nulls() -> None:
    record = build(minimal_facts())
    nulls = [k for k, v in record.items() if v is None]
    assert nulls == ["node", "agent", "team", "token_id", "vendor", "model", "stream", "policy",
                     "rule", "clamps", "limits", "redactions", "response_redactions", "error",
                     "latency_ms", "upstream_ms", "usage", "spend_usd", "credential",
                     "routing", "attempts", "served_by", "cache", "savings", "websocket",
                     "checkpoint"]
    assert (record["kind"], record["decision"], record["bytes_in"], record["bytes_out"]) == (
        "connect", "deny", 0, 0)


def _set(path: str, value: Any) -> Any:
    def mutate(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = record
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _drop(name: str) -> Any:
    return lambda record: record.pop(name)


@pytest.mark.parametrize("mutate, keyword, where", [
    (_set("extra", 1), "additionalProperties", ""),
    (_drop("hash"), "required", ""),
    (_drop("usage"), "required", ""),
    (_set("schema", "egressguard.audit/2"), "const", "schema"),
    (_set("id", "0" * 31), "pattern", "id"),
    (_set("id", "A" * 32), "pattern", "id"),
    (_set("kind", "tunnel"), "enum", "kind"),
    (_set("decision", "block"), "enum", "decision"),
    (_set("ts", "2023-11-14 22:13:20"), "pattern", "ts"),
    (_set("ts", "2023-11-14T22:13:20.123+00:00"), "pattern", "ts"),
    (_set("hash", "g" * 64), "pattern", "hash"),
    (_set("prev_hash", "0" * 63), "pattern", "prev_hash"),
    (_set("agent", 5), "type", "agent"),
    (_set("client", None), "type", "client"),
    (_set("stream", "yes"), "type", "stream"),
    (_set("status", 99), "minimum", "status"),
    (_set("bytes_in", -1), "minimum", "bytes_in"),
    (_set("bytes_out", 1.5), "type", "bytes_out"),
    (_set("usage.cost", 1), "additionalProperties", "usage"),
    (_set("usage.input_tokens", "12"), "type", "usage.input_tokens"),
    (lambda record: record["usage"].pop("output_tokens"), "required", "usage"),
    (_set("credential.value", "sk-redacted"), "additionalProperties", "credential"),
    (_set("credential.version", "3"), "type", "credential.version"),
    (_set("credential", "egressguard/vendors/openai"), "type", "credential"),
])
def test_schema_rejects(mutate: Any, keyword: str, where: str) -> None:
    record = copy.deepcopy(sealed(full_facts()))
    mutate(record)
    errors = list(validator().iter_errors(record))
    assert [(e.validator, ".".join(map(str, e.absolute_path))) for e in errors] == [
        (keyword, where)]


@pytest.mark.parametrize("path, value", [
    ("credential.version", None), ("usage.input_tokens", None), ("usage.output_tokens", 0),
    ("upstream_ms", None), ("status", None), ("client", "[2001:db8::1]:443"),
])
def test_schema_accepts_documented_nulls_and_edges(path: str, value: Any) -> None:
    record = sealed(full_facts())
    _set(path, value)(record)
    assert list(validator().iter_errors(record)) == []


# -- ids and timestamps -------------------------------------------------------------

def test_new_id_is_a_uuid7_in_32_hex_digits() -> None:
    now = 1_700_000_000.5
    for _ in range(200):
        value = new_id(now)
        assert re.fullmatch(r"[0-9a-f]{32}", value)
        number = int(value, 16)
        assert number >> 80 == int(now * 1000)  # unix milliseconds
        assert number >> 76 & 0xF == 7  # version
        assert number >> 62 & 0b11 == 0b10  # RFC 9562 variant
    ids = {new_id(now) for _ in range(1000)}
    assert len(ids) == 1000  # random below the millisecond


def test_new_id_without_now_uses_the_clock() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    ms = int(new_id(), 16) >> 80
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert before <= ms <= after


def test_new_ids_sort_by_time_across_milliseconds() -> None:
    base = 1_700_000_000_000
    # the middle of each millisecond, so float rounding cannot move a time across one
    times = [(base + i + 0.5) / 1000 for i in range(0, 500)]
    ids = [new_id(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("ts, text", [
    (0, "1970-01-01T00:00:00.000Z"),
    (1_700_000_000, "2023-11-14T22:13:20.000Z"),
    (1_700_000_000.5, "2023-11-14T22:13:20.500Z"),
    (1_700_000_000.1239, "2023-11-14T22:13:20.123Z"),  # truncated, not rounded
    (4_102_444_799.999, "2099-12-31T23:59:59.999Z"),
])
def test_rfc3339(ts: float, text: str) -> None:
    assert rfc3339(ts) == text
    assert re.fullmatch(schema()["properties"]["ts"]["pattern"], text)
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(parsed.timestamp() - ts) < 0.001
