"""Audit: one hash-chained record per request, on disk before the agent gets the answer."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from mitmproxy import flow as mflow

from egressguard.backends.journal import read_lines
from egressguard.core import chain
from egressguard.core.secret import SecretLocation
from egressguard.pipeline import flowstate

OPENAI, ANTHROPIC, GOOGLE = "api.openai.com", "api.anthropic.com", \
    "generativelanguage.googleapis.com"
AZURE = "myres.openai.azure.com"


def assert_no_secrets(pipeline, *tokens: str) -> None:
    """Neither real keys nor agent tokens appear anywhere in the journal files."""
    data = pipeline.journal_bytes()
    for value in (*pipeline.REAL_KEYS.values(), *tokens):
        assert value.encode() not in data


ALLOWED = [
    # id, host, path ("{t}": token), header carrying the token, body, vendor, model
    ("openai", OPENAI, "/v1/chat/completions?trace=1", "Authorization",
     {"model": "gpt-4o", "stream": False}, "openai", "gpt-4o"),
    ("anthropic", ANTHROPIC, "/v1/messages", "x-api-key",
     {"model": "claude-sonnet-4-5"}, "anthropic", "claude-sonnet-4-5"),
    ("google-query-key", GOOGLE, "/v1beta/models/gemini-2.0-flash:generateContent?key={t}",
     None, {"contents": []}, "google", "gemini-2.0-flash"),
    ("azure", AZURE, "/openai/deployments/gpt4o-prod/chat/completions?api-version=1",
     "api-key", {"messages": []}, "azure_openai", "gpt4o-prod"),
    pytest.param(
        GOOGLE, "/v1beta/models/gemini-2.0-flash?key={t}", None, b"", "google",
        "gemini-2.0-flash", id="google-model-get-query-key"),
]


@pytest.mark.parametrize(("host", "path", "header", "body", "vendor", "model"),
                         [a if hasattr(a, "marks") else pytest.param(*a[1:], id=a[0])
                          for a in ALLOWED])
def test_one_record_per_request(pipeline, host, path, header, body, vendor, model):
    token, principal = pipeline.issue("agent-q", "blue")
    headers = [(header, ("Bearer " if header == "Authorization" else "") + token)] \
        if header else []
    flow = pipeline.send(host, path.format(t=token), headers=headers, body=body,
                         method="POST" if body else "GET")
    assert flow.response.status_code == 200
    [record] = pipeline.records()
    assert {k: record[k] for k in (
        "schema", "kind", "agent", "team", "token_id", "vendor", "host", "method", "path",
        "model", "decision", "reason", "status", "usage", "credential", "error")} == {
        "schema": "egressguard.audit/1", "kind": "request", "agent": "agent-q",
        "team": "blue", "token_id": principal.token_id, "vendor": vendor, "host": host,
        "method": flow.request.method, "path": path.split("?")[0], "model": model,
        "decision": "allow", "reason": "allowed", "status": 200,
        "usage": {"input_tokens": 3, "output_tokens": 5},
        "credential": {"path": f"secret/egressguard/vendors/{vendor}", "version": 7},
        "error": None}
    assert record["id"] == flow.metadata[flowstate.REQUEST_ID]
    assert_no_secrets(pipeline, token)


def _no_identity(pipeline):
    return pipeline.send(OPENAI)


def _real_key(pipeline):
    return pipeline.send(OPENAI, headers=[("Authorization", "Bearer sk-proj-" + "x" * 40)])


def _bad_json(pipeline):
    return pipeline.send(OPENAI, body=b"{", headers=[
        ("content-type", "application/json"), ("Authorization", "Bearer " + pipeline.token())])


def _no_secret(pipeline):
    pipeline.store.values.pop(SecretLocation("secret", "egressguard/vendors/anthropic",
                                             "api_key"))
    return pipeline.send(ANTHROPIC, "/v1/messages", headers=[("x-api-key", pipeline.token())])


def _host_mismatch(pipeline):
    return pipeline.send(OPENAI, host_header="evil.example",
                         headers=[("Authorization", "Bearer " + pipeline.token())])


def _plain_http(pipeline):
    flow = pipeline.plain_request("http://api.openai.com/v1/models")
    pipeline.run(flow)
    return flow


REFUSED = [
    # how, reason, status
    (_no_identity, "identity_missing", 401),
    (_real_key, "real_key_presented", 403),
    (_bad_json, "body_not_json", 400),
    (_no_secret, "secret_missing", 503),
    (_host_mismatch, "host_mismatch", 403),
    (_plain_http, "plain_http_denied", 403),
]


@pytest.mark.parametrize(("how", "reason", "status"), REFUSED,
                         ids=[r for _, r, _ in REFUSED])
def test_refused_request_yields_a_deny_record(pipeline, how, reason, status):
    flow = how(pipeline)
    assert flow.response.status_code == status
    [record] = pipeline.records()
    assert (record["kind"], record["decision"], record["reason"], record["status"]) == \
        ("request", "deny", reason, status)
    assert record["message"] == flow.metadata[flowstate.REFUSAL].message
    assert record["credential"] is None
    assert b"sk-proj-" + b"x" * 40 not in pipeline.journal_bytes()
    assert_no_secrets(pipeline)


def test_response_then_error_writes_one_record(pipeline):
    flow = pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    flow.error = mflow.Error("connection closed by client")
    pipeline.hook("error", flow)
    [record] = pipeline.records()
    assert (record["status"], record["error"]) == (200, None)


def test_upstream_failure_is_recorded_by_error(pipeline):
    flow = pipeline.request(pipeline.tunnel(OPENAI),
                            headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow, ("requestheaders", "request"))
    flow.error = mflow.Error("Connection refused")
    pipeline.hook("error", flow)
    pipeline.hook("error", flow)
    [record] = pipeline.records()
    assert (record["decision"], record["status"], record["error"]) == \
        ("allow", None, "Connection refused")
    assert record["credential"]["path"] == "secret/egressguard/vendors/openai"


CONNECT_REFUSED = [
    # host, port, Proxy-Authorization, reason, status
    ("example.com", 443, None, "destination_denied", 403),
    ("api.openai.com", 80, None, "port_denied", 403),
    ("pypi.org", 443, None, "identity_missing", 407),
    ("api.openai.com", 443, "Bearer nope", "proxy_auth_malformed", 407),
]


@pytest.mark.parametrize(("host", "port", "proxy_auth", "reason", "status"), CONNECT_REFUSED)
def test_refused_connect_is_recorded(pipeline, host, port, proxy_auth, reason, status):
    flow = pipeline.connect(host, port,
                            headers=[("Proxy-Authorization", proxy_auth)] if proxy_auth else [])
    pipeline.run(flow)
    assert flow.response.status_code == status
    [record] = pipeline.records()
    assert {k: record[k] for k in ("kind", "method", "host", "path", "decision", "reason",
                                   "status")} == {
        "kind": "connect", "method": "CONNECT", "host": host, "path": "", "decision": "deny",
        "reason": reason, "status": status}


@pytest.mark.parametrize(("host", "records"), [("pypi.org", 1), ("api.openai.com", 0)])
def test_allowed_connect(pipeline, host, records):
    token = pipeline.token()
    pipeline.tunnel(host, proxy_auth=pipeline.basic("agent-a", token))
    found = pipeline.records()
    assert len(found) == records
    if records:
        assert {k: found[0][k] for k in ("kind", "agent", "decision", "reason")} == {
            "kind": "connect", "agent": "agent-a", "decision": "allow",
            "reason": "passthrough"}
    assert_no_secrets(pipeline, token)


def test_records_are_hash_chained(pipeline):
    for _ in range(3):
        pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.send(OPENAI)  # a refusal is chained as well
    result = chain.verify(read_lines([pipeline.files["journal"]]))
    assert result.problems == []
    assert result.records == 4


JOURNAL_DOWN = [
    # host, path, header, 503 body without its message
    (OPENAI, "/v1/chat/completions", "Authorization",
     {"error": {"type": "server_error", "param": None, "code": "journal_unavailable"}}),
    (ANTHROPIC, "/v1/messages", "x-api-key",
     {"type": "error", "error": {"type": "overloaded_error"}}),
]


@pytest.mark.parametrize(("host", "path", "header", "expected"), JOURNAL_DOWN)
def test_full_journal_replaces_buffered_response_with_503(pipeline, host, path, header,
                                                          expected):
    pipeline.fill_journal_disk()
    token = pipeline.token()
    flow = pipeline.request(pipeline.tunnel(host), path, headers=[
        (header, ("Bearer " if header == "Authorization" else "") + token)])
    sent = pipeline.run(flow, upstream=pipeline.Upstream.json({"secret": "vendor answer"}))
    assert flow.response.status_code == 503
    assert b"vendor answer" not in sent
    body = orjson.loads(sent)
    assert "journal" in body["error"].pop("message")
    assert body == expected
    assert flow.metadata[flowstate.REFUSAL].reason == "journal_unavailable"
    assert pipeline.journal_bytes() == b""


def test_full_journal_cuts_a_stream_off(pipeline):
    pipeline.fill_journal_disk()
    flow = pipeline.request(pipeline.tunnel(OPENAI),
                            headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow, upstream=pipeline.Upstream.sse(b"data: {}\n\n"))
    assert flow.error is not None and flow.error.msg == mflow.Error.KILLED_MESSAGE


def test_full_journal_refuses_refusals_and_passthrough_tunnels(pipeline):
    pipeline.fill_journal_disk()
    refused = pipeline.send(OPENAI)  # would be 401 identity_missing
    assert (refused.response.status_code, refused.metadata[flowstate.REFUSAL].reason) == \
        (503, "journal_unavailable")
    tunnel = pipeline.tunnel("pypi.org", proxy_auth=pipeline.basic("agent-a", pipeline.token()))
    assert tunnel.response.status_code == 503
    assert orjson.loads(tunnel.response.content)["error"]["code"] == "journal_unavailable"


def test_non_utf8_path_is_still_audited(pipeline):
    flow = pipeline.request(pipeline.tunnel(OPENAI), "/v1/models/caf\udce9",
                            method="GET",
                            headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow, swallow_errors=True)  # as mitmproxy runs hooks
    assert len(pipeline.records()) == 1 or flow.response.status_code == 503


def test_a_journal_at_its_cap_refuses_requests_before_they_go_anywhere(pipeline, tmp_path):
    sinks = tmp_path / "sinks.yaml"
    sinks.write_text("version: 1\nsinks:\n  - {name: siem, type: http, url: 'http://x/'}\n")
    ok = pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    assert ok.response.status_code == 200
    pipeline.tctx.options.update(egressguard_sinks=str(sinks), egressguard_journal_max_bytes=10)
    asyncio.run(pipeline.audit.keep_house())  # the sink has nothing: nothing may go
    asked = len(pipeline.store.asked)
    refused = pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    error = orjson.loads(refused.response.content)["error"]
    assert (refused.response.status_code, error["code"]) == (503, "journal_full")
    assert "have not reached sink(s) siem yet" in error["message"]
    assert len(pipeline.store.asked) == asked  # no key fetched: it went nowhere
    pipeline.tctx.options.update(egressguard_journal_max_bytes=1 << 30)
    asyncio.run(pipeline.audit.keep_house())
    again = pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    assert again.response.status_code == 200


def test_records_name_their_node(pipeline):
    pipeline.tctx.options.update(egressguard_node="egress-7")
    pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    assert pipeline.records()[-1]["node"] == "egress-7"


def test_housekeeping_leaves_metrics_for_a_textfile_collector(pipeline, tmp_path):
    sinks = tmp_path / "sinks.yaml"
    sinks.write_text("version: 1\nsinks:\n  - {name: siem, type: http, url: 'http://x/'}\n")
    pipeline.tctx.options.update(egressguard_sinks=str(sinks), egressguard_node="n1")
    pipeline.send(OPENAI, headers=[("Authorization", "Bearer " + pipeline.token())])
    asyncio.run(pipeline.audit.keep_house())
    text = (pipeline.files["journal"] / "egressguard.prom").read_text()
    seq = pipeline.records()[-1]["seq"]
    assert f'egressguard_journal_seq{{node="n1"}} {seq}\n' in text
    assert 'egressguard_journal_full{node="n1"} 0\n' in text
    assert f'egressguard_sink_behind_records{{node="n1",sink="siem"}} {seq}\n' in text
    assert "# TYPE egressguard_sink_failing gauge\n" in text
