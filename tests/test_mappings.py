"""Audit records mapped to SIEM shapes (`egressguard.core.mappings`): native, OCSF, ECS, CEF."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from importlib import metadata
from typing import Any

import orjson
import pytest

from egressguard.core import chain, mappings, records
from egressguard.core.records import RequestFacts

STARTED = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z
MS = 1_700_000_000_123
POLICY = "ab" * 32
POLICY_FILE = "/etc/egressguard/policy.yaml"
CHECKPOINT = {"reason": "count", "segment": 42, "first_seq": 1001, "records": 1000,
              "key_id": "0123456789abcdef", "algorithm": "ed25519", "signature": "c2lnbmVk"}


def allowed() -> RequestFacts:
    return RequestFacts(
        id=records.new_id(STARTED), started=STARTED, client="10.0.0.7:51234", method="POST",
        host="api.openai.com", path="/v1/chat/completions", node="egress-1",
        agent="billing-bot", team="finance", token_id="0123456789abcdef", vendor="openai",
        model="gpt-4o-mini", stream=True, policy=POLICY, rule="finance-openai",
        clamps={"max_tokens": {"from": None, "to": 1024}},
        limits={"state": "reserved", "scopes": ["team:finance"],
                "estimate": {"requests": 1, "tokens": 1040, "spend_usd": 0.0007}},
        redactions={"PERSON": {"pseudonymize": 1}, "EMAIL_ADDRESS": {"mask": 2, "log": 1}},
        response_redactions={"JWT": {"log": 2}, "AWS_ACCESS_KEY": {"mask": 1}},
        status=200, latency_ms=812.5, upstream_ms=640.25, bytes_in=1234, bytes_out=5678,
        usage={"input_tokens": 12, "output_tokens": 34},
        credential={"path": "egressguard/vendors/openai", "version": 3})


def denied() -> RequestFacts:
    return replace(allowed(), decision="deny", reason="no_rule_matched", rule=None,
                   clamps=None, limits=None, redactions=None, response_redactions=None,
                   message="no rule lets billing-bot call gpt-4o-mini", status=403,
                   latency_ms=1.25, upstream_ms=None, bytes_out=120, usage=None,
                   credential=None)


def real_key() -> RequestFacts:
    return replace(denied(), reason="real_key_presented", agent=None, team=None,
                   token_id=None, message="send your egressguard token, not a vendor key")


def vendor_error() -> RequestFacts:
    return replace(allowed(), method="GET", path="/v1/models", model=None, status=502,
                   usage=None, error=None)


def cut_off() -> RequestFacts:
    return replace(allowed(), status=None, error="client disconnected", usage=None)


def connect_refused() -> RequestFacts:  # the schema's minimal record
    return RequestFacts(
        id=records.new_id(STARTED), started=STARTED, client="[::1]:40000", method="CONNECT",
        host="169.254.169.254", path="", kind="connect", decision="deny",
        reason="destination_denied", message="169.254.169.254 is not a host agents may reach",
        status=403)


def policy_loaded() -> RequestFacts:
    return RequestFacts(
        id=records.new_id(STARTED), started=STARTED, client="", method="", host="",
        path=POLICY_FILE, kind="policy", reason="policy_loaded", policy=POLICY,
        message="policy loaded: 12 rules")


def policy_refused() -> RequestFacts:
    return replace(policy_loaded(), decision="deny", reason="policy_invalid",
                   message="policy.yaml:3:5: unknown key 'agnets'")


def checkpoint() -> RequestFacts:
    return RequestFacts(
        id=records.new_id(STARTED), started=STARTED, client="", method="", host="", path="",
        kind="checkpoint", node="egress-1", reason="checkpoint_count",
        checkpoint=dict(CHECKPOINT))


def tricky() -> RequestFacts:
    """Text an agent controls, full of what CEF must escape."""
    return replace(denied(), path="/v1/a|b\\c=d\ne", message="bad | x\\y = z\r\nnext line")


CASES: dict[str, Callable[[], RequestFacts]] = {
    "allowed": allowed, "denied": denied, "real_key": real_key, "vendor_error": vendor_error,
    "cut_off": cut_off, "connect": connect_refused, "policy_loaded": policy_loaded,
    "policy_refused": policy_refused, "checkpoint": checkpoint, "tricky": tricky,
}


def record(case: str, seq: int = 7) -> dict[str, Any]:
    return chain.seal(records.build(CASES[case]()), "0" * 64, seq)


# -- shared facts ---------------------------------------------------------------------

@pytest.mark.parametrize("ts, ms", [
    ("1970-01-01T00:00:00.000Z", 0),
    ("2023-11-14T22:13:20.123Z", MS),
    ("2099-12-31T23:59:59.999Z", 4_102_444_799_999),
])
def test_epoch_ms_is_exact(ts: str, ms: int) -> None:
    assert mappings.epoch_ms(ts) == ms


@pytest.mark.parametrize("client, endpoint", [
    ("10.0.0.7:51234", ("10.0.0.7", None, 51234)),
    ("[::1]:40000", ("::1", None, 40000)),
    ("2001:db8::1:443", ("2001:db8::1", None, 443)),  # the schema's unbracketed IPv6
    ("agent-box:8080", (None, "agent-box", 8080)),
    ("", (None, None, None)),
])
def test_agent_endpoint(client: str, endpoint: tuple[Any, ...]) -> None:
    assert mappings.agent_endpoint({"client": client}) == endpoint


@pytest.mark.parametrize("found, text", [
    (None, None),
    ({}, None),
    ({"PERSON": {"pseudonymize": 1}, "EMAIL_ADDRESS": {"mask": 2, "log": 1}},
     "EMAIL_ADDRESS.log:1,EMAIL_ADDRESS.mask:2,PERSON.pseudonymize:1"),
])
def test_redaction_counts_compact(found: Any, text: str | None) -> None:
    assert mappings.counts(found) == text


@pytest.mark.parametrize("ref, text", [
    (None, None),
    ({"path": "egressguard/vendors/openai", "version": 3}, "egressguard/vendors/openai@3"),
    ({"path": "egressguard/vendors/openai", "version": None}, "egressguard/vendors/openai"),
])
def test_credential_reference(ref: Any, text: str | None) -> None:
    assert mappings.credential(ref) == text


def test_product_version_falls_back_outside_an_installed_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)
    mappings.product_version.cache_clear()
    monkeypatch.setattr(mappings.metadata, "version", missing)
    try:
        assert mappings.product_version() == "unknown"
    finally:
        mappings.product_version.cache_clear()
    monkeypatch.undo()
    assert mappings.product_version() == metadata.version("egressguard")


# -- every mapping --------------------------------------------------------------------

def outputs(rec: dict[str, Any]) -> dict[str, Any]:
    return {"native": mappings.native(rec), "ocsf": mappings.ocsf(rec),
            "ecs": mappings.ecs(rec), "cef": mappings.cef(rec)}


@pytest.mark.parametrize("case", CASES)
def test_every_output_round_trips_through_orjson(case: str) -> None:
    for name, out in outputs(record(case)).items():
        assert orjson.loads(orjson.dumps(out)) == out, name


@pytest.mark.parametrize("case", CASES)
def test_every_output_keeps_the_record_id(case: str) -> None:
    rec = record(case)
    assert mappings.native(rec)["id"] == rec["id"]
    assert mappings.ocsf(rec)["metadata"]["uid"] == rec["id"]
    assert mappings.ecs(rec)["event"]["id"] == rec["id"]
    assert parse_cef(mappings.cef(rec))[1]["externalId"] == rec["id"]


@pytest.mark.parametrize("case", CASES)
def test_mapping_never_changes_the_record(case: str) -> None:
    rec = record(case)
    before = copy.deepcopy(rec)
    outputs(rec)
    assert rec == before


def test_outputs_share_no_objects_with_the_record() -> None:
    rec = record("allowed")
    before = copy.deepcopy(rec)
    mappings.native(rec)["usage"]["input_tokens"] = 0
    mappings.ocsf(rec)["unmapped"]["clamps"]["max_tokens"]["to"] = 1
    mappings.ecs(rec)["egressguard"]["limits"]["scopes"].append("x")
    mappings.ecs(rec)["gen_ai"]["usage"]["output_tokens"] = 0
    mappings.ecs(rec)["event"]["category"].append("x")
    assert rec == before
    assert mappings.ecs(rec)["event"]["category"] == ["api", "web"]


def test_native_is_the_record() -> None:
    rec = record("allowed")
    assert mappings.native(rec) == rec
    assert mappings.native(rec) is not rec


def leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v)
    else:
        yield value


# What the OCSF and ECS mappings may add to a record: their formats' constants and
# classifications, and text composed from the record's own fields.
ADDED = {"egressguard", "egressguard.audit", "proxy", mappings.product_version(),
         mappings.OCSF_VERSION, mappings.ECS_VERSION, "Application Activity", "API Activity",
         "API Activity: Create", "Create", "Informational", "Success", "event", "api", "web",
         "access", "allowed", "egress-request", "success",
         "request allowed: POST api.openai.com/v1/chat/completions",
         "POST /v1/chat/completions", "10.0.0.7"}


@pytest.mark.parametrize("mapping", [mappings.ocsf, mappings.ecs], ids=["ocsf", "ecs"])
def test_json_mappings_add_nothing_but_format_constants(mapping: Any) -> None:
    rec = record("allowed")
    own = set(leaves(rec))
    added = {v for v in leaves(mapping(rec)) if v not in own}
    numbers = {v for v in added if isinstance(v, int | float) and not isinstance(v, bool)}
    assert added - numbers <= ADDED
    # numbers: the classification ids, ms since the epoch, rounded or scaled durations
    assert numbers <= {1, 6, 6003, 600301, MS, 812, 640, 812_500_000, 51234}


# -- OCSF -----------------------------------------------------------------------------

@pytest.mark.parametrize("case, activity, name, status, severity, code", [
    ("allowed", 1, "Create", 1, 1, "allowed"),
    ("denied", 1, "Create", 2, 3, "no_rule_matched"),
    ("real_key", 1, "Create", 2, 4, "real_key_presented"),
    ("vendor_error", 2, "Read", 2, 2, "allowed"),
    ("cut_off", 1, "Create", 2, 2, "allowed"),
    ("connect", 99, "Connect", 2, 3, "destination_denied"),
    ("policy_loaded", 99, "Policy Load", 1, 1, "policy_loaded"),
    ("policy_refused", 99, "Policy Load", 2, 3, "policy_invalid"),
    ("checkpoint", 99, "Checkpoint", 1, 1, "checkpoint_count"),
])
def test_ocsf_classifies_every_kind(case: str, activity: int, name: str, status: int,
                                    severity: int, code: str) -> None:
    rec = record(case)
    event = mappings.ocsf(rec)
    assert (event["class_uid"], event["class_name"]) == (6003, "API Activity")
    assert (event["category_uid"], event["category_name"]) == (6, "Application Activity")
    assert (event["activity_id"], event["activity_name"]) == (activity, name)
    assert event["type_uid"] == 6003 * 100 + activity
    assert event["type_name"] == f"API Activity: {name}"
    assert (event["status_id"], event["status"]) == (status, ["", "Success", "Failure"][status])
    assert event["severity_id"] == severity
    assert event["status_code"] == code
    assert event["time"] == MS
    assert event["metadata"] == {
        "version": "1.5.0", "uid": rec["id"], "sequence": 7, "event_code": rec["kind"],
        "product": {"name": "egressguard", "vendor_name": "egressguard",
                    "version": mappings.product_version()}}


def test_ocsf_allowed_request() -> None:
    rec = record("allowed")
    event = mappings.ocsf(rec)
    assert event["actor"] == {"user": {"name": "billing-bot", "credential_uid": "0123456789abcdef",
                                       "groups": [{"name": "finance"}]}}
    assert event["api"] == {"operation": "POST /v1/chat/completions",
                            "service": {"name": "openai"}, "request": {"uid": rec["id"]}}
    assert event["src_endpoint"] == {"ip": "10.0.0.7", "port": 51234}
    assert event["dst_endpoint"] == {"hostname": "api.openai.com"}
    assert event["http_request"] == {
        "http_method": "POST", "body_length": 1234,
        "url": {"hostname": "api.openai.com", "path": "/v1/chat/completions"}}
    assert event["http_response"] == {"code": 200, "body_length": 5678, "latency": 640}
    assert event["duration"] == 812
    assert event["message"] == "request allowed: POST api.openai.com/v1/chat/completions"
    assert "status_detail" not in event
    assert event["unmapped"] == {
        "schema": "egressguard.audit/1", "kind": "request", "node": "egress-1",
        "decision": "allow", "rule": "finance-openai", "policy": POLICY,
        "model": "gpt-4o-mini", "stream": True, "clamps": rec["clamps"],
        "limits": rec["limits"], "redactions": rec["redactions"],
        "response_redactions": rec["response_redactions"], "usage": rec["usage"],
        "credential": rec["credential"], "prev_hash": "0" * 64, "hash": rec["hash"]}


def test_ocsf_refused_request_says_failure_and_why() -> None:
    event = mappings.ocsf(record("denied"))
    assert (event["status"], event["status_code"], event["status_detail"]) == (
        "Failure", "no_rule_matched", "no rule lets billing-bot call gpt-4o-mini")
    assert event["unmapped"]["decision"] == "deny"
    assert event["http_response"] == {"code": 403, "body_length": 120}


def test_ocsf_unidentified_agent_and_cut_off_flow() -> None:
    assert mappings.ocsf(record("real_key"))["actor"] == {
        "user": {"type_id": 0, "type": "Unknown"}}
    event = mappings.ocsf(record("cut_off"))
    assert (event["status_detail"], event["unmapped"]["error"]) == (
        "client disconnected", "client disconnected")
    assert "http_response" not in event


def test_ocsf_refused_tunnel_the_minimal_record() -> None:
    event = mappings.ocsf(record("connect"))
    assert event["src_endpoint"] == {"ip": "::1", "port": 40000}
    assert event["dst_endpoint"] == {"ip": "169.254.169.254"}
    assert event["api"]["operation"] == "CONNECT"
    assert "service" not in event["api"]
    assert event["http_request"] == {"http_method": "CONNECT", "body_length": 0}
    assert "duration" not in event
    assert set(event["unmapped"]) == {"schema", "kind", "decision", "prev_hash", "hash"}


def test_ocsf_policy_load_and_checkpoint() -> None:
    policy = mappings.ocsf(record("policy_refused"))
    assert policy["actor"] == {"app_name": "egressguard"}
    assert policy["resources"] == [{"name": POLICY_FILE, "type": "policy file"}]
    assert policy["status_detail"] == "policy.yaml:3:5: unknown key 'agnets'"
    assert policy["unmapped"]["policy"] == POLICY
    assert "src_endpoint" not in policy and "http_request" not in policy
    cp = mappings.ocsf(record("checkpoint"))
    assert cp["actor"] == {"app_name": "egressguard"}
    assert cp["src_endpoint"] == {"hostname": "egress-1"}
    assert cp["api"] == {"operation": "checkpoint", "request": {"uid": cp["metadata"]["uid"]}}
    assert cp["unmapped"]["checkpoint"] == CHECKPOINT
    assert cp["message"] == "journal checkpoint (count)"


# -- ECS ------------------------------------------------------------------------------

@pytest.mark.parametrize("case, outcome, category, types, code, severity", [
    ("allowed", "success", ["api", "web"], ["access", "allowed"], "allowed", 1),
    ("denied", "failure", ["api", "web"], ["access", "denied"], "no_rule_matched", 3),
    ("real_key", "failure", ["api", "web"], ["access", "denied"], "real_key_presented", 4),
    ("vendor_error", "failure", ["api", "web"], ["access", "allowed"], "allowed", 2),
    ("connect", "failure", ["network"], ["connection", "denied"], "destination_denied", 3),
    ("policy_loaded", "success", ["configuration"], ["change"], "policy_loaded", 1),
    ("policy_refused", "failure", ["configuration"], ["change"], "policy_invalid", 3),
    ("checkpoint", "success", ["configuration"], ["info"], "checkpoint_count", 1),
])
def test_ecs_event_fields(case: str, outcome: str, category: list[str], types: list[str],
                          code: str, severity: int) -> None:
    rec = record(case)
    doc = mappings.ecs(rec)
    assert doc["@timestamp"] == "2023-11-14T22:13:20.123Z"
    assert doc["ecs"] == {"version": "8.16.0"}
    event = doc["event"]
    assert (event["id"], event["kind"], event["outcome"]) == (rec["id"], "event", outcome)
    assert (event["category"], event["type"]) == (category, types)
    assert (event["code"], event["severity"]) == (code, severity)
    assert (event["sequence"], event["hash"]) == (7, rec["hash"])
    assert event.get("reason") == rec["message"]


def test_ecs_allowed_request() -> None:
    rec = record("allowed")
    doc = mappings.ecs(rec)
    assert doc["user"] == {"name": "billing-bot", "group": {"name": "finance"}}
    endpoint = {"address": "10.0.0.7:51234", "ip": "10.0.0.7", "port": 51234}
    assert doc["client"] == doc["source"] == endpoint
    assert doc["destination"] == {"address": "api.openai.com", "domain": "api.openai.com"}
    assert doc["url"] == {"domain": "api.openai.com", "path": "/v1/chat/completions"}
    assert doc["http"] == {"request": {"method": "POST", "body": {"bytes": 1234}},
                           "response": {"status_code": 200, "body": {"bytes": 5678}}}
    assert doc["rule"] == {"name": "finance-openai"}
    assert doc["gen_ai"] == {"system": "openai", "request": {"model": "gpt-4o-mini"},
                             "usage": {"input_tokens": 12, "output_tokens": 34}}
    assert doc["observer"] == {"vendor": "egressguard", "product": "egressguard",
                               "version": mappings.product_version(), "type": "proxy",
                               "name": "egress-1"}
    assert doc["event"]["duration"] == 812_500_000  # nanoseconds
    assert doc["related"] == {"ip": ["10.0.0.7"], "user": ["billing-bot"],
                              "hosts": ["api.openai.com"]}
    assert doc["egressguard"] == {
        "schema": "egressguard.audit/1", "kind": "request", "decision": "allow",
        "token_id": "0123456789abcdef", "stream": True, "policy": POLICY,
        "clamps": rec["clamps"], "limits": rec["limits"], "redactions": rec["redactions"],
        "response_redactions": rec["response_redactions"], "latency_ms": 812.5,
        "upstream_ms": 640.25, "credential": rec["credential"], "prev_hash": "0" * 64}


def test_ecs_minimal_record_and_others() -> None:
    doc = mappings.ecs(record("connect"))
    assert doc["destination"] == {"address": "169.254.169.254", "ip": "169.254.169.254"}
    assert doc["client"] == {"address": "[::1]:40000", "ip": "::1", "port": 40000}
    assert {"user", "url", "gen_ai", "rule", "error"}.isdisjoint(doc)
    assert mappings.ecs(record("cut_off"))["error"] == {"message": "client disconnected"}
    policy = mappings.ecs(record("policy_loaded"))
    assert policy["file"] == {"path": POLICY_FILE, "hash": {"sha256": POLICY}}
    assert {"client", "destination", "http", "url"}.isdisjoint(policy)
    assert mappings.ecs(record("checkpoint"))["egressguard"]["checkpoint"] == CHECKPOINT


# -- CEF ------------------------------------------------------------------------------

_UNESCAPE = {"\\": "\\", "=": "=", "n": "\n", "r": "\r", "|": "|"}


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A strict CEF reader: seven header fields where only `\\\\` and `\\|` may be
    escaped, then key=value pairs split at unescaped `=` after a space."""
    assert "\n" not in line and "\r" not in line
    header: list[str] = []
    field: list[str] = []
    i = 0
    while len(header) < 7:
        c = line[i]
        if c == "\\":
            assert line[i + 1] in "\\|", line[i:i + 2]
            field.append(line[i + 1])
            i += 2
            continue
        if c == "|":
            header.append("".join(field))
            field = []
        else:
            field.append(c)
        i += 1
    rest = line[i:]
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", rest))
    ext = {}
    for key, after in zip(keys, [*keys[1:], None], strict=True):
        raw = rest[key.end():after.start() if after else len(rest)]
        ext[key[1]] = _unescape_value(raw)
    return header, ext


def _unescape_value(raw: str) -> str:
    out, i = [], 0
    while i < len(raw):
        if raw[i] == "\\":
            assert raw[i + 1] in "\\=nr", raw[i:i + 2]
            out.append(_UNESCAPE[raw[i + 1]])
            i += 2
        else:
            assert raw[i] != "=", raw
            out.append(raw[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("case, signature, name, severity", [
    ("allowed", "allowed", "request allowed: POST api.openai.com/v1/chat/completions", "1"),
    ("denied", "no_rule_matched", "request denied: POST api.openai.com/v1/chat/completions",
     "5"),
    ("real_key", "real_key_presented",
     "request denied: POST api.openai.com/v1/chat/completions", "8"),
    ("vendor_error", "allowed", "request failed: GET api.openai.com/v1/models", "3"),
    ("connect", "destination_denied", "connect denied: 169.254.169.254", "5"),
    ("policy_loaded", "policy_loaded", f"policy loaded: {POLICY_FILE}", "1"),
    ("policy_refused", "policy_invalid", f"policy refused: {POLICY_FILE}", "5"),
    ("checkpoint", "checkpoint_count", "journal checkpoint (count)", "1"),
])
def test_cef_header(case: str, signature: str, name: str, severity: str) -> None:
    header, _ = parse_cef(mappings.cef(record(case)))
    assert header == ["CEF:0", "egressguard", "egressguard", mappings.product_version(),
                      signature, name, severity]


def test_cef_allowed_request_loses_nothing_an_analyst_needs() -> None:
    rec = record("allowed")
    _, ext = parse_cef(mappings.cef(rec))
    assert ext == {
        "externalId": rec["id"], "rt": str(MS), "cat": "request", "dvchost": "egress-1",
        "act": "allow", "outcome": "success", "reason": "allowed",
        "src": "10.0.0.7", "spt": "51234", "suser": "billing-bot", "dhost": "api.openai.com",
        "destinationServiceName": "openai", "requestMethod": "POST",
        "request": "/v1/chat/completions", "in": "1234", "out": "5678",
        "cn1": "7", "cn1Label": "seq", "cn2": "12", "cn2Label": "inputTokens",
        "cn3": "34", "cn3Label": "outputTokens",
        "cfp1": "812.5", "cfp1Label": "latencyMs", "cfp2": "640.25", "cfp2Label": "upstreamMs",
        "cs1": "finance", "cs1Label": "team", "cs2": "gpt-4o-mini", "cs2Label": "model",
        "cs3": "finance-openai", "cs3Label": "rule",
        "cs4": "EMAIL_ADDRESS.log:1,EMAIL_ADDRESS.mask:2,PERSON.pseudonymize:1",
        "cs4Label": "redactions",
        "cs5": "egressguard/vendors/openai@3", "cs5Label": "credential",
        "cs6": POLICY, "cs6Label": "policy",
        "egressguardStatus": "200", "egressguardTokenId": "0123456789abcdef",
        "egressguardStream": "true",
        "egressguardResponseRedactions": "AWS_ACCESS_KEY.mask:1,JWT.log:2",
        "egressguardClamps": '{"max_tokens":{"from":null,"to":1024}}',
        "egressguardLimits": '{"estimate":{"requests":1,"spend_usd":0.0007,"tokens":1040},'
                             '"scopes":["team:finance"],"state":"reserved"}',
        "egressguardPrevHash": "0" * 64, "egressguardHash": rec["hash"],
    }


def test_cef_minimal_record() -> None:
    rec = record("connect")
    _, ext = parse_cef(mappings.cef(rec))
    assert ext == {
        "externalId": rec["id"], "rt": str(MS), "cat": "connect", "act": "deny",
        "outcome": "failure", "reason": "destination_denied",
        "msg": "169.254.169.254 is not a host agents may reach", "src": "::1", "spt": "40000",
        "dst": "169.254.169.254", "requestMethod": "CONNECT", "cn1": "7", "cn1Label": "seq",
        "egressguardStatus": "403", "egressguardPrevHash": "0" * 64,
        "egressguardHash": rec["hash"]}


@pytest.mark.parametrize("case, expected", [
    ("checkpoint", {"cat": "checkpoint", "dvchost": "egress-1",
                    "egressguardCheckpointReason": "count",
                    "egressguardCheckpointSegment": "42",
                    "egressguardCheckpointFirstSeq": "1001",
                    "egressguardCheckpointRecords": "1000",
                    "egressguardCheckpointKeyId": "0123456789abcdef",
                    "egressguardCheckpointAlgorithm": "ed25519",
                    "egressguardCheckpointSignature": "c2lnbmVk"}),
    ("policy_refused", {"cat": "policy", "act": "deny", "outcome": "failure",
                        "filePath": POLICY_FILE, "cs6": POLICY, "cs6Label": "policy",
                        "msg": "policy.yaml:3:5: unknown key 'agnets'"}),
    ("cut_off", {"egressguardError": "client disconnected", "outcome": "failure"}),
    ("real_key", {"act": "deny", "reason": "real_key_presented"}),
])
def test_cef_other_kinds(case: str, expected: dict[str, str]) -> None:
    _, ext = parse_cef(mappings.cef(record(case)))
    assert {k: ext.get(k) for k in expected} == expected


def test_cef_real_key_names_no_user() -> None:
    _, ext = parse_cef(mappings.cef(record("real_key")))
    assert {"suser", "egressguardTokenId", "cs1"}.isdisjoint(ext)


def test_cef_escapes_header_and_extension_and_parses_back() -> None:
    rec = record("tricky")
    line = mappings.cef(rec)
    assert "|request denied: POST api.openai.com/v1/a\\|b\\\\c=d e|5|" in line
    assert " request=/v1/a|b\\\\c\\=d\\ne " in line
    assert " msg=bad | x\\\\y \\= z\\r\\nnext line " in line
    header, ext = parse_cef(line)
    assert header[5] == "request denied: POST api.openai.com/v1/a|b\\c=d e"
    assert ext["request"] == rec["path"] == "/v1/a|b\\c=d\ne"
    assert ext["msg"] == rec["message"] == "bad | x\\y = z\r\nnext line"


@pytest.mark.parametrize("raw, header, value", [
    ("a|b", "a\\|b", "a|b"),
    ("a\\b", "a\\\\b", "a\\\\b"),
    ("a=b", "a=b", "a\\=b"),
    ("a\nb", "a b", "a\\nb"),
    ("a\r\nb", "a b", "a\\r\\nb"),
    ("\\|=", "\\\\\\|=", "\\\\|\\="),
    ("trailing\\", "trailing\\\\", "trailing\\\\"),
])
def test_cef_escaping(raw: str, header: str, value: str) -> None:
    assert mappings.cef_header(raw) == header
    assert mappings.cef_value(raw) == value
    assert _unescape_value(value) == raw


@pytest.mark.parametrize("value, text", [(True, "true"), (False, "false"), (812.5, "812.5"),
                                         (0, "0"), (1_700_000_000_123, "1700000000123")])
def test_cef_values_of_other_types(value: Any, text: str) -> None:
    assert mappings.cef_value(value) == text


# -- choosing a mapping ---------------------------------------------------------------

@pytest.mark.parametrize("name, mapping", [
    ("native", mappings.native), ("ocsf", mappings.ocsf), ("ecs", mappings.ecs)])
def test_json_mapping_by_name(name: str, mapping: Any) -> None:
    assert mappings.json_mapping(name) is mapping


@pytest.mark.parametrize("name", ["cef", "splunk", "OCSF", ""])
def test_unknown_mapping_names_the_choices(name: str) -> None:
    with pytest.raises(ValueError) as err:
        mappings.json_mapping(name)
    assert str(err.value) == f"unknown mapping {name!r}: choose one of native, ocsf, ecs"
