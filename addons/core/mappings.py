"""Audit records in the shapes SIEMs ingest: as is, OCSF, ECS, or one CEF line.

Pure functions over a record (a dict as `schemas/audit-record.v1.json` describes);
they copy what they keep and add nothing the record does not hold, except the
constants and classifications each format asks for. Every output keeps the record's
`id`, by which receivers de-duplicate. docs/audit-mappings.md has the field tables.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import metadata
from typing import Any

import orjson

Record = Mapping[str, Any]
Doc = dict[str, Any]

PRODUCT = "egressguard"
OCSF_VERSION = "1.5.0"
ECS_VERSION = "8.16.0"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Refusals that point at a compromised or misbehaving agent rather than a policy gap:
# a real vendor key in the agent's hands, or a tunnel whose SNI or Host is not the
# host it asked for (domain fronting).
_ALARMING = frozenset({"real_key_presented", "sni_mismatch", "host_mismatch"})
# severity: (OCSF severity_id, its caption, CEF severity 0-10)
_SEVERITY = {"info": (1, "Informational", 1), "low": (2, "Low", 3),
             "medium": (3, "Medium", 5), "high": (4, "High", 8)}
# OCSF API Activity activity_id by HTTP method; anything else is 99 Other
_ACTIVITY = {"POST": (1, "Create"), "GET": (2, "Read"), "HEAD": (2, "Read"),
             "PUT": (3, "Update"), "PATCH": (3, "Update"), "DELETE": (4, "Delete")}
_OTHER_ACTIVITY = {"connect": "Connect", "policy": "Policy Load", "checkpoint": "Checkpoint",
                   "clock": "Clock Jump"}
_OWN_KINDS = ("policy", "checkpoint", "clock")  # egressguard's own doings, no agent in them


@cache
def product_version() -> str:
    try:
        return metadata.version(PRODUCT)
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


# -- facts every mapping shares -------------------------------------------------------

def failed(record: Record) -> bool:
    """Refused by egressguard, cut off, or answered with an HTTP error."""
    return (record["decision"] == "deny" or record["error"] is not None
            or (record["status"] or 0) >= 400)


def severity(record: Record) -> str:
    if record["decision"] == "deny":
        return "high" if record["reason"] in _ALARMING else "medium"
    return "low" if failed(record) else "info"


def epoch_ms(ts: str) -> int:
    return (datetime.fromisoformat(ts) - _EPOCH) // timedelta(milliseconds=1)


def agent_endpoint(record: Record) -> tuple[str | None, str | None, int | None]:
    """(IP, host name, port) of the agent's connection (`client`, `host:port`); one
    of IP and name is None, all three when the record has no client."""
    host, sep, port = record["client"].rpartition(":")
    if not sep or not port.isdigit():
        host, port = record["client"], ""
    host = host.strip("[]")
    ip = ip_literal(host)
    return ip, None if ip or not host else host, int(port) if port else None


def summary(record: Record) -> str:
    """One readable line: what happened to what."""
    verdict = "denied" if record["decision"] == "deny" else (
        "failed" if failed(record) else "allowed")
    kind = record["kind"]
    if kind == "request":
        return f"request {verdict}: {record['method']} {record['host']}{record['path']}"
    if kind == "connect":
        return f"connect {verdict}: {record['host']}"
    if kind == "policy":
        done = "loaded" if record["decision"] == "allow" else "refused"
        return f"policy {done}: {record['path']}"
    if kind == "clock":
        return f"wall clock jumped: {record['message']}"
    return f"journal checkpoint ({(record['checkpoint'] or {}).get('reason')})"


def present(fields: Mapping[str, Any]) -> Doc | None:
    """`fields` without its None values, or None when nothing is left: an absent
    fact is left out rather than sent as null. Only applied to objects built here, so
    a null inside a copied record object (a clamp's `from`) stays."""
    kept = {k: v for k, v in fields.items() if v is not None}
    return kept or None


def ip_literal(host: str) -> str | None:
    """`host` as an IP address, or None when it is a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


# -- native ---------------------------------------------------------------------------

def native(record: Record) -> Doc:
    """The record as the journal holds it."""
    return copy.deepcopy(dict(record))


# -- OCSF -----------------------------------------------------------------------------

def ocsf(record: Record) -> Doc:
    """An OCSF API Activity event (class 6003). Requests map their HTTP method to an
    activity; refused tunnels, policy loads and checkpoints are activity 99 Other,
    named in `activity_name`. Fields OCSF has no attribute for are under `unmapped`."""
    r = copy.deepcopy(dict(record))
    activity_id, activity = _ocsf_activity(r)
    sev_id, sev, _ = _SEVERITY[severity(r)]
    bad = failed(r)
    event = {
        "activity_id": activity_id, "activity_name": activity,
        "category_uid": 6, "category_name": "Application Activity",
        "class_uid": 6003, "class_name": "API Activity",
        "type_uid": 6003 * 100 + activity_id, "type_name": f"API Activity: {activity}",
        "severity_id": sev_id, "severity": sev,
        "status_id": 2 if bad else 1, "status": "Failure" if bad else "Success",
        "status_code": r["reason"], "status_detail": r["message"] or r["error"],
        "time": epoch_ms(r["ts"]), "duration": _whole(r["latency_ms"]),
        "message": summary(r), "metadata": _ocsf_metadata(r), "actor": _ocsf_actor(r),
        "api": _ocsf_api(r), "src_endpoint": _ocsf_source(r),
        "dst_endpoint": _ocsf_destination(r),
        "http_request": _ocsf_http_request(r), "http_response": _ocsf_http_response(r),
        "resources": _ocsf_resources(r), "unmapped": _ocsf_unmapped(r),
    }
    return {k: v for k, v in event.items() if v is not None}


def _ocsf_activity(r: Record) -> tuple[int, str]:
    if r["kind"] == "request" and r["method"] in _ACTIVITY:
        return _ACTIVITY[r["method"]]
    return 99, _OTHER_ACTIVITY.get(r["kind"], r["method"])


def _ocsf_metadata(r: Record) -> Doc:
    return present({"version": OCSF_VERSION, "uid": r["id"], "sequence": r.get("seq"),
                    "event_code": r["kind"],
                    "product": {"name": PRODUCT, "vendor_name": PRODUCT,
                                "version": product_version()}}) or {}


def _ocsf_actor(r: Record) -> Doc:
    if r["kind"] in _OWN_KINDS:
        return {"app_name": PRODUCT}  # egressguard acted on its own
    if r["agent"] is None:  # refused before anyone was identified
        return {"user": {"type_id": 0, "type": "Unknown"}}
    groups = [{"name": r["team"]}] if r["team"] else None
    return {"user": present({"name": r["agent"], "credential_uid": r["token_id"],
                             "groups": groups})}


def _ocsf_api(r: Record) -> Doc:
    operation = {"request": f"{r['method']} {r['path']}", "connect": r["method"],
                 "policy": "load policy", "checkpoint": "checkpoint",
                 "clock": "clock jump"}[r["kind"]]
    return present({"operation": operation, "service": present({"name": r["vendor"]}),
                    "request": {"uid": r["id"]}}) or {}


def _ocsf_source(r: Record) -> Doc | None:
    if not r["client"]:  # policy loads and checkpoints: the node itself
        return present({"hostname": r["node"]})
    ip, name, port = agent_endpoint(r)
    return present({"ip": ip, "hostname": name, "port": port})


def _ocsf_destination(r: Record) -> Doc | None:
    if not r["host"]:
        return None
    ip = ip_literal(r["host"])
    return {"ip": ip} if ip else {"hostname": r["host"]}


def _ocsf_http_request(r: Record) -> Doc | None:
    if r["kind"] not in ("request", "connect"):
        return None
    url = present({"hostname": r["host"], "path": r["path"]}) if r["path"] else None
    return present({"http_method": r["method"], "url": url, "body_length": r["bytes_in"]})


def _ocsf_http_response(r: Record) -> Doc | None:
    if r["status"] is None:
        return None
    return present({"code": r["status"], "body_length": r["bytes_out"],
                    "latency": _whole(r["upstream_ms"])})


def _ocsf_resources(r: Record) -> list[Doc] | None:
    return [{"name": r["path"], "type": "policy file"}] if r["kind"] == "policy" else None


_OCSF_UNMAPPED = ("schema", "kind", "node", "decision", "rule", "policy", "model",
                  "stream", "clamps", "limits", "redactions", "response_redactions",
                  "error", "usage", "spend_usd", "credential", "websocket", "checkpoint",
                  "prev_hash", "hash")


def _ocsf_unmapped(r: Record) -> Doc | None:
    return present({k: r.get(k) for k in _OCSF_UNMAPPED})


def _whole(ms: float | None) -> int | None:
    return None if ms is None else round(ms)


# -- ECS ------------------------------------------------------------------------------

def ecs(record: Record) -> Doc:
    """An Elastic Common Schema document. Model and token usage use ECS's `gen_ai.*`
    fields; what ECS has no field for is under `egressguard.*`."""
    r = copy.deepcopy(dict(record))
    ip, name, port = agent_endpoint(r)
    endpoint = present({"address": r["client"] or None, "ip": ip, "domain": name,
                        "port": port})
    doc = {
        "@timestamp": r["ts"], "ecs": {"version": ECS_VERSION}, "message": summary(r),
        "event": _ecs_event(r), "observer": _ecs_observer(r),
        "user": present({"name": r["agent"], "group": present({"name": r["team"]})}),
        "client": endpoint, "source": endpoint and dict(endpoint),
        "destination": _ecs_destination(r), "url": _ecs_url(r),
        "http": _ecs_http(r), "rule": present({"name": r["rule"]}),
        "file": _ecs_policy_file(r), "error": present({"message": r["error"]}),
        "gen_ai": _ecs_gen_ai(r), "related": _ecs_related(r, ip),
        "egressguard": _ecs_egressguard(r),
    }
    return {k: v for k, v in doc.items() if v is not None}


# event.category and the event.type of each kind (ECS categorization allowed values)
_ECS_CATEGORY = {"request": (("api", "web"), "access"), "connect": (("network",), "connection"),
                 "policy": (("configuration",), "change"),
                 "checkpoint": (("configuration",), "info"),
                 "clock": (("host",), "change")}
_ECS_ACTION = {"request": "egress-request", "connect": "egress-connect",
               "policy": "policy-load", "checkpoint": "journal-checkpoint",
               "clock": "clock-jump"}


def _ecs_destination(r: Record) -> Doc | None:
    if not r["host"]:
        return None
    ip = ip_literal(r["host"])
    return {"address": r["host"], **({"ip": ip} if ip else {"domain": r["host"]})}


def _ecs_url(r: Record) -> Doc | None:
    return present({"domain": r["host"], "path": r["path"]}) if r["kind"] == "request" else None


def _ecs_event(r: Record) -> Doc:
    category, kind_type = _ECS_CATEGORY[r["kind"]]
    types = [kind_type]
    if r["kind"] in ("request", "connect"):
        types.append("denied" if r["decision"] == "deny" else "allowed")
    duration = None if r["latency_ms"] is None else round(r["latency_ms"] * 1_000_000)
    return present({
        "id": r["id"], "kind": "event", "category": list(category), "type": types,
        "action": _ECS_ACTION[r["kind"]], "outcome": "failure" if failed(r) else "success",
        "code": r["reason"], "reason": r["message"],
        "severity": _SEVERITY[severity(r)][0],
        "sequence": r.get("seq"), "duration": duration, "hash": r.get("hash"),
        "module": PRODUCT, "dataset": f"{PRODUCT}.audit"}) or {}


def _ecs_observer(r: Record) -> Doc:
    return present({"vendor": PRODUCT, "product": PRODUCT, "version": product_version(),
                    "type": "proxy", "name": r["node"]}) or {}


def _ecs_http(r: Record) -> Doc | None:
    if r["kind"] not in ("request", "connect"):
        return None
    return present({
        "request": present({"method": r["method"], "body": {"bytes": r["bytes_in"]}}),
        "response": present({"status_code": r["status"], "body": {"bytes": r["bytes_out"]}})})


def _ecs_policy_file(r: Record) -> Doc | None:
    if r["kind"] != "policy":
        return None
    return present({"path": r["path"], "hash": present({"sha256": r["policy"]})})


def _ecs_gen_ai(r: Record) -> Doc | None:
    usage = r["usage"] or {}
    return present({
        "system": r["vendor"], "request": present({"model": r["model"]}),
        "usage": present({"input_tokens": usage.get("input_tokens"),
                          "output_tokens": usage.get("output_tokens")})})


def _ecs_related(r: Record, ip: str | None) -> Doc | None:
    return present({"ip": [ip] if ip else None, "user": [r["agent"]] if r["agent"] else None,
                    "hosts": [r["host"]] if r["host"] else None})


_ECS_OWN = ("schema", "kind", "decision", "token_id", "stream", "policy", "clamps", "limits",
            "redactions", "response_redactions", "latency_ms", "upstream_ms",
            "spend_usd", "credential", "websocket", "checkpoint", "prev_hash")


def _ecs_egressguard(r: Record) -> Doc | None:
    return present({k: r.get(k) for k in _ECS_OWN})


# -- CEF ------------------------------------------------------------------------------

def cef(record: Record) -> str:
    """One CEF:0 line (no syslog header): Signature ID the record's `reason`, severity
    from decision and outcome, the record's fields in standard keys where CEF has one
    and in `egressguard…` custom keys where it has not."""
    header = (PRODUCT, PRODUCT, product_version(), record["reason"], summary(record),
              str(_SEVERITY[severity(record)][2]))
    extension = (f"{k}={cef_value(v)}" for k, v in cef_extension(record).items())
    return "|".join(["CEF:0", *map(cef_header, header), " ".join(extension)])


def cef_header(value: str) -> str:
    """A header field: `\\` and `|` escaped; a header is one line, so line breaks
    become spaces (the extension keeps the text whole)."""
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def cef_value(value: Any) -> str:
    """An extension value: `\\` and `=` escaped, line breaks as `\\n` and `\\r`."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    return (text.replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r", "\\r").replace("\n", "\\n"))


def cef_extension(record: Record) -> dict[str, Any]:
    """The extension's key/values in order, absent facts left out."""
    r = record
    ip, name, port = agent_endpoint(r)
    usage = r["usage"] or {}
    pairs: dict[str, Any] = {
        "externalId": r["id"], "rt": epoch_ms(r["ts"]), "cat": r["kind"],
        "dvchost": r["node"], "act": r["decision"],
        "outcome": "failure" if failed(r) else "success", "reason": r["reason"],
        "msg": r["message"], "src": ip, "shost": name, "spt": port, "suser": r["agent"],
        **_cef_destination(r["host"]), "destinationServiceName": r["vendor"],
        "requestMethod": r["method"] or None,
        "request": (r["path"] or None) if r["kind"] == "request" else None,
        "filePath": r["path"] if r["kind"] == "policy" else None,
        "in": r["bytes_in"] if r["kind"] == "request" else None,
        "out": r["bytes_out"] if r["kind"] == "request" else None,
        **_labelled("cn1", "seq", r.get("seq")),
        **_labelled("cn2", "inputTokens", usage.get("input_tokens")),
        **_labelled("cn3", "outputTokens", usage.get("output_tokens")),
        **_labelled("cfp1", "latencyMs", r["latency_ms"]),
        **_labelled("cfp2", "upstreamMs", r["upstream_ms"]),
        **_labelled("cs1", "team", r["team"]),
        **_labelled("cs2", "model", r["model"]),
        **_labelled("cs3", "rule", r["rule"]),
        **_labelled("cs4", "redactions", counts(r["redactions"])),
        **_labelled("cs5", "credential", credential(r["credential"])),
        **_labelled("cs6", "policy", r["policy"]),
        **_custom(r),
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _cef_destination(host: str) -> dict[str, str]:
    if not host:
        return {}
    ip = ip_literal(host)
    return {"dst": ip} if ip else {"dhost": host}


def _labelled(key: str, label: str, value: Any) -> dict[str, Any]:
    return {key: value, f"{key}Label": label} if value is not None else {}


def _custom(r: Record) -> dict[str, Any]:
    """CEF has no key for these: custom keys, VendornameProductnameKeyName collapsed to
    one `egressguard` since vendor and product share the name."""
    checkpoint = r["checkpoint"] or {}
    return {
        "egressguardStatus": r["status"], "egressguardTokenId": r["token_id"],
        "egressguardSpendUsd": r.get("spend_usd"),
        "egressguardStream": r["stream"], "egressguardError": r["error"],
        "egressguardResponseRedactions": counts(r["response_redactions"]),
        "egressguardClamps": _json(r["clamps"]), "egressguardLimits": _json(r["limits"]),
        "egressguardWebsocket": _json(r.get("websocket")),
        "egressguardCheckpointReason": checkpoint.get("reason"),
        "egressguardCheckpointSegment": checkpoint.get("segment"),
        "egressguardCheckpointFirstSeq": checkpoint.get("first_seq"),
        "egressguardCheckpointRecords": checkpoint.get("records"),
        "egressguardCheckpointKeyId": checkpoint.get("key_id"),
        "egressguardCheckpointAlgorithm": checkpoint.get("algorithm"),
        "egressguardCheckpointSignature": checkpoint.get("signature"),
        "egressguardPrevHash": r.get("prev_hash"), "egressguardHash": r.get("hash"),
    }


def counts(found: Mapping[str, Mapping[str, int]] | None) -> str | None:
    """Redaction counts compactly: `EMAIL_ADDRESS.mask:2,PERSON.pseudonymize:1`."""
    if not found:
        return None
    return ",".join(f"{entity}.{action}:{n}" for entity, actions in sorted(found.items())
                    for action, n in sorted(actions.items()))


def credential(ref: Mapping[str, Any] | None) -> str | None:
    """A key reference as `path@version` (just the path when the store gave none)."""
    if ref is None:
        return None
    return ref["path"] if ref["version"] is None else f"{ref['path']}@{ref['version']}"


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# -- choosing a mapping ---------------------------------------------------------------

MAPPINGS: dict[str, Callable[[Record], Doc]] = {"native": native, "ocsf": ocsf, "ecs": ecs}


def json_mapping(name: str) -> Callable[[Record], Doc]:
    """The JSON mapping a sink's `mapping:` names."""
    try:
        return MAPPINGS[name]
    except KeyError:
        raise ValueError(f"unknown mapping {name!r}: choose one of "
                         f"{', '.join(MAPPINGS)}") from None
