"""Egress: the destination decided at CONNECT, then SNI and Host checked in the tunnel."""

from __future__ import annotations

import time

import orjson
import pytest

from egressguard.core.errors import DestinationDenied
from egressguard.core.policy import parse
from egressguard.pipeline import flowstate
from egressguard.pipeline.egress import decide

ALLOWED = [
    # host, port, vendor (None: pass-through), normalised host
    ("api.openai.com", 443, "openai", "api.openai.com"),
    ("API.OpenAI.com.", 443, "openai", "api.openai.com"),
    ("api.anthropic.com", 443, "anthropic", "api.anthropic.com"),
    ("generativelanguage.googleapis.com", 443, "google", "generativelanguage.googleapis.com"),
    ("myres.openai.azure.com", 443, "azure_openai", "myres.openai.azure.com"),
    ("eastus.api.cognitiveservices.azure.com", 443, "azure_openai",
     "eastus.api.cognitiveservices.azure.com"),
    ("pypi.org", 443, None, "pypi.org"),
    ("raw.githubusercontent.com", 443, None, "raw.githubusercontent.com"),
]

DENIED = [
    # host, port, reason
    ("example.com", 443, "destination_denied"),
    ("openai.azure.com", 443, "destination_denied"),  # `*.` needs a label before it
    ("githubusercontent.com", 443, "destination_denied"),
    ("api.openai.com.evil.example", 443, "destination_denied"),
    ("evil-api.openai.com", 443, "destination_denied"),
    ("1.2.3.4", 443, "destination_denied"),
    ("::1", 443, "destination_denied"),
    ("api.openai.com", 80, "port_denied"),
    ("api.openai.com", 8443, "port_denied"),
    ("pypi.org", 80, "port_denied"),
]


def openai_error(body: bytes) -> tuple[str, str | None]:
    """(code, type) of an OpenAI-shaped error body, checking the shape on the way."""
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err["code"], err["type"]


@pytest.fixture
def policy(policy_yaml):
    """The policy the `pipeline` fixture loads, parsed without building a pipeline."""
    return parse(policy_yaml, "policy.yaml")


@pytest.mark.parametrize(("host", "port", "vendor", "normal"), ALLOWED)
def test_decide_allows(policy, host, port, vendor, normal):
    dest = decide(host, port, policy)
    assert (dest.host, dest.port) == (normal, port)
    assert (dest.vendor.name if dest.vendor else None) == vendor
    assert dest.passthrough is (vendor is None)


@pytest.mark.parametrize(("host", "port", "reason"), DENIED)
def test_decide_denies(policy, host, port, reason):
    with pytest.raises(DestinationDenied) as err:
        decide(host, port, policy)
    assert err.value.reason == reason
    assert err.value.status == 403
    if reason == "destination_denied":  # says how to allow it, and where
        assert "`passthrough:` in policy.yaml" in err.value.message


@pytest.mark.parametrize(("host", "port", "reason"), DENIED)
def test_refused_connect_answers_403_in_openai_shape(pipeline, host, port, reason):
    flow = pipeline.connect(host, port)
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert flow.response.headers["content-type"] == "application/json"
    assert flow.response.headers[flowstate.REQUEST_ID_HEADER] == \
        flow.metadata[flowstate.REQUEST_ID]
    assert openai_error(flow.response.content) == (reason, "invalid_request_error")
    assert flow.metadata[flowstate.REFUSAL].reason == reason
    assert flow.metadata[flowstate.DESTINATION].vendor is None


@pytest.mark.parametrize("host", [h for h, _, _, _ in ALLOWED])
def test_allowed_connect_is_not_answered(pipeline, host):
    auth = pipeline.basic("agent-a", pipeline.token())  # pass-through hosts need it
    flow = pipeline.connect(host, headers=[("Proxy-Authorization", auth)])
    pipeline.run(flow)
    assert flow.response is None
    assert flowstate.REFUSAL not in flow.metadata


CLIENT_HELLO = [
    # CONNECT host, SNI, passed through untouched?
    ("pypi.org", "pypi.org", True),
    ("pypi.org", None, True),
    ("raw.githubusercontent.com", "raw.githubusercontent.com", True),
    ("pypi.org", "api.openai.com", False),  # fronting: intercepted, then refused
    ("api.openai.com", "api.openai.com", False),  # vendor: always intercepted
    ("api.openai.com", None, False),
    ("api.openai.com", "pypi.org", False),
]


@pytest.mark.parametrize(("host", "sni", "ignored"), CLIENT_HELLO)
def test_tls_clienthello(pipeline, host, sni, ignored):
    tunnel = pipeline.tunnel(host, proxy_auth=pipeline.basic("agent-a", pipeline.token()),
                             handshake=False)
    data = pipeline.client_hello(tunnel.client_conn, sni)
    pipeline.hook("tls_clienthello", data)
    assert data.ignore_connection is ignored


def test_clienthello_without_connect_is_intercepted(pipeline):
    data = pipeline.client_hello(pipeline.client(), "pypi.org")
    pipeline.hook("tls_clienthello", data)
    assert data.ignore_connection is False


@pytest.mark.parametrize(("host", "sni"), [("api.openai.com", "pypi.org"),
                                           ("pypi.org", "api.openai.com"),
                                           ("api.openai.com", "api.anthropic.com")])
def test_requests_after_sni_mismatch_are_refused(pipeline, host, sni):
    tunnel = pipeline.tunnel(host, sni=sni,
                             proxy_auth=pipeline.basic("agent-a", pipeline.token()))
    flow = pipeline.request(tunnel, headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content) == ("sni_mismatch", "invalid_request_error")
    assert flowstate.SECRET not in flow.metadata


HOST_HEADERS = [
    # Host header (None: absent), refusal reason (None: allowed)
    ("api.openai.com", None),
    ("api.openai.com:443", None),
    ("API.OPENAI.COM.", None),
    (None, None),
    ("api.anthropic.com", "host_mismatch"),
    ("evil.example:443", "host_mismatch"),
    ("api.openai.com.evil.example", "host_mismatch"),
    ("[::1]:443", "host_mismatch"),
]


@pytest.mark.parametrize(("host_header", "reason"), HOST_HEADERS)
def test_host_header_must_name_the_connect_target(pipeline, host_header, reason):
    tunnel = pipeline.tunnel("api.openai.com")
    flow = pipeline.request(tunnel, host_header=host_header,
                            headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow)
    if reason is None:
        assert flow.response.status_code == 200
        assert flowstate.REFUSAL not in flow.metadata
    else:
        assert flow.response.status_code == 403
        assert openai_error(flow.response.content) == (reason, "invalid_request_error")
        assert flowstate.SECRET not in flow.metadata


def test_host_mismatch_answers_in_the_tunnel_vendors_shape(pipeline):
    tunnel = pipeline.tunnel("api.anthropic.com")
    flow = pipeline.request(tunnel, "/v1/messages", host_header="evil.example",
                            headers=[("x-api-key", pipeline.token())])
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert orjson.loads(flow.response.content).get("type") == "error"  # anthropic
    [record] = pipeline.records()
    assert (record["vendor"], record["host"], record["reason"]) == \
        ("anthropic", "api.anthropic.com", "host_mismatch")


def test_plain_http_without_tunnel_is_denied(pipeline):
    token = pipeline.token()
    flow = pipeline.plain_request("http://api.openai.com/v1/models",
                                  headers=[("Authorization", "Bearer " + token)])
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content) == ("plain_http_denied", "invalid_request_error")
    assert flowstate.PRINCIPAL not in flow.metadata
    assert flow.request.headers["Authorization"] == "Bearer " + token  # nothing injected


def test_plain_http_inside_tunnel_without_tls_is_denied(pipeline):
    tunnel = pipeline.tunnel("api.openai.com", handshake=False)
    flow = pipeline.request(tunnel, headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content) == ("plain_http_denied", "invalid_request_error")
    assert flowstate.SECRET not in flow.metadata


def test_plain_http_on_tls_proxy_connection_after_refused_connect_is_denied(pipeline):
    client = pipeline.client()
    client.tls, client.timestamp_tls_setup = True, time.time()  # TLS to the proxy itself
    connect = pipeline.connect("api.openai.com", client=client,
                               headers=[("Proxy-Authorization", "Bearer junk")])
    pipeline.run(connect)
    assert connect.response.status_code == 407
    flow = pipeline.plain_request("http://api.openai.com/v1/chat/completions", client=client,
                                  headers=[("Authorization", "Bearer " + pipeline.token())])
    pipeline.run(flow)
    assert flow.request.headers["Authorization"] != "Bearer " + pipeline.REAL_KEYS["openai"]
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content)[0] == "plain_http_denied"
