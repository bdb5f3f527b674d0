"""Egress: the destination decided at CONNECT (name, port, the address it resolves to),
then SNI, Host and :authority checked in the tunnel."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from ipaddress import ip_address
from pathlib import Path

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from mitmproxy import connection
from mitmproxy.proxy import server_hooks

from egressguard.core import policy as policy_module
from egressguard.core.errors import DestinationDenied
from egressguard.core.policy import parse
from egressguard.core.yamlsource import ConfigError
from egressguard.pipeline import flowstate
from egressguard.pipeline.egress import decide
from egressguard.pipeline.upstream import SystemResolver, listens_on

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
    ("1.2.3.4", 443, "ip_literal_denied"),
    ("::1", 443, "ip_literal_denied"),
    ("127.1", 443, "ip_literal_denied"),
    ("0x7f.1", 443, "ip_literal_denied"),
    ("2130706433", 443, "ip_literal_denied"),
    ("[::ffff:169.254.169.254]", 443, "ip_literal_denied"),
    ("1.2.3.4.5", 443, "ip_literal_denied"),
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


# -- IP literals, ports ------------------------------------------------------------------

@pytest.mark.parametrize(("host", "message"), [
    ("0x7f.1", "'0x7f.1' is the IP address 127.0.0.1, a loopback address; agents reach "
               "destinations by name only, whatever the policy says"),
    ("0251.0376.0251.0376", "'0251.0376.0251.0376' is the IP address 169.254.169.254, "
                            "a cloud metadata address;"),
    ("::ffff:10.0.0.1", "is the IP address ::ffff:a00:1, a private address (10.0.0.1 in "
                        "IPv4-mapped form);"),
    ("8.8.8.8", "'8.8.8.8' is the IP address 8.8.8.8; agents reach destinations by name"),
    ("256.1.2.3", "'256.1.2.3' is shaped like an IP address but is not a valid one;"),
])
def test_ip_literal_refusal_says_what_the_address_is(policy, host, message):
    with pytest.raises(DestinationDenied) as err:
        decide(host, 443, policy)
    assert err.value.reason == "ip_literal_denied" and message in err.value.message


PORTS_POLICY = """\
version: 1
passthrough:
  - pypi.org
  - host: git.corp.example
    ports: [443, 8443]
  - {host: "*.mirror.example", ports: 8080}
  - {host: a.mirror.example}
"""


@pytest.mark.parametrize(("host", "port", "allowed"), [
    ("git.corp.example", 8443, True), ("git.corp.example", 443, True),
    ("git.corp.example", 22, False), ("pypi.org", 8443, False),
    ("x.mirror.example", 8080, True), ("x.mirror.example", 443, False),
    ("a.mirror.example", 443, True), ("a.mirror.example", 8080, True),  # both entries
    ("api.openai.com", 8443, False),
])
def test_policy_names_the_ports_of_a_passthrough_host(host, port, allowed):
    ports_policy = parse(PORTS_POLICY, "policy.yaml")
    if allowed:
        assert decide(host, port, ports_policy).port == port
        return
    with pytest.raises(DestinationDenied) as err:
        decide(host, port, ports_policy)
    assert err.value.reason == "port_denied"
    assert f"port {port} is not allowed for {host!r} (allowed: " in err.value.message


def test_port_refusal_says_how_to_allow_it():
    ports_policy = parse(PORTS_POLICY, "policy.yaml")
    with pytest.raises(DestinationDenied) as err:
        decide("git.corp.example", 22, ports_policy)
    assert err.value.message == (
        "port 22 is not allowed for 'git.corp.example' (allowed: 443, 8443); to allow "
        "another, list it under the host's `ports:` in the `passthrough:` section of "
        "policy.yaml")
    with pytest.raises(DestinationDenied) as err:
        decide("api.openai.com", 8443, ports_policy)
    assert "model vendors are reached on port 443 only" in err.value.message


BAD_PASSTHROUGH = [
    # entry, error
    ("{host: a.example, ports: [0]}", "3:23: `ports` is a list of TCP port numbers 1-65535 "
                                      "(e.g. [443, 8443]), found 0"),
    ("{host: a.example, ports: [443, 65536]}", "found 65536"),
    ("{host: a.example, ports: []}", "found []"),
    ("{host: a.example, ports: '443'}", "found '443'"),
    ("{host: a.example, ports: [true]}", "found True"),
    ("{host: a.example, ports: null}", "found None"),
    ("{host: a.example, port: 8443}", "unknown key 'port' in a pass-through entry; did you "
                                      "mean 'ports'? (allowed: host, ports)"),
    ("{ports: [443]}", "3:5: a pass-through entry needs `host:` (and may have `ports:`)"),
    ("{host: 'a.example:8443'}", "'a.example:8443' is not a host name or `*.domain` pattern"),
    ("10.0.0.1", "'10.0.0.1' is an IP address; egressguard refuses IP addresses whatever "
                 "the policy says: name the host instead"),
    ("{host: 0x7f.0.0.1}", "'0x7f.0.0.1' is an IP address"),
]


@pytest.mark.parametrize(("entry", "error"), BAD_PASSTHROUGH)
def test_bad_passthrough_entries_are_errors(entry, error):
    with pytest.raises(ConfigError) as err:
        parse(f"version: 1\npassthrough:\n  - {entry}\n", "policy.yaml")
    assert error in str(err.value)


def test_the_schema_describes_passthrough_ports():
    schema = orjson.loads((Path(__file__).parents[1] / "policies/policy.schema.json")
                          .read_bytes())
    validator = Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(PORTS_POLICY))) == []
    entry = schema["$defs"]["passthroughEntry"]
    assert sorted(entry["properties"]) == sorted(policy_module._PASSTHROUGH)
    for bad in ("{host: a.example, ports: [0]}", "{host: a.example, port: 1}",
                "{ports: [443]}", "{host: a.example, ports: []}"):
        doc = yaml.safe_load(f"version: 1\npassthrough:\n  - {bad}\n")
        assert list(validator.iter_errors(doc)), bad


# -- where an allowed name connects: resolved, checked, pinned ---------------------------

def proxy_auth(pipeline) -> list[tuple[str, str]]:
    return [("Proxy-Authorization", pipeline.basic("agent-a", pipeline.token()))]


def bearer(pipeline) -> list[tuple[str, str]]:
    return [("Authorization", "Bearer " + pipeline.token())]


RESOLVED = [
    # host, its answer, reason (None: allowed), in the message
    ("pypi.org", ["151.101.0.223"], None, None),
    ("api.openai.com", ["162.159.140.245", "2606:4700::6810:1"], None, None),
    ("pypi.org", ["127.0.0.1"], "forbidden_address",
     "'pypi.org' resolves to a loopback address (127.0.0.1)"),
    ("pypi.org", ["151.101.0.223", "10.0.0.7"], "forbidden_address",
     "resolves to a private address (10.0.0.7)"),  # any bad address refuses
    ("api.openai.com", ["169.254.169.254"], "forbidden_address",
     "resolves to a cloud metadata address (169.254.169.254)"),
    ("api.openai.com", ["::ffff:169.254.169.254"], "forbidden_address",
     "resolves to a cloud metadata address (169.254.169.254 in IPv4-mapped form)"),
    ("pypi.org", ["fd00:ec2::254"], "forbidden_address", "a cloud metadata address"),
    ("pypi.org", ["100.64.1.1"], "forbidden_address", "a carrier-grade NAT address"),
    ("pypi.org", ["fe80::1%eth0"], "forbidden_address", "a link-local address (fe80::1)"),
    ("pypi.org", ["64:ff9b::a00:1"], "forbidden_address",
     "a private address (10.0.0.1 in NAT64 form)"),
    ("pypi.org", ["0.0.0.0"], "forbidden_address", "the unspecified address"),
    ("pypi.org", ["224.0.0.251"], "forbidden_address", "a multicast address"),
    ("pypi.org", [], "resolution_failed",
     "'pypi.org' could not be resolved (Name or service not known); egressguard does not "
     "connect to a name it could not check"),
]


@pytest.mark.parametrize(("host", "answer", "reason", "message"), RESOLVED)
def test_connect_resolves_and_checks_the_name(pipeline, host, answer, reason, message):
    pipeline.upstreammap.resolver.answers[host] = [answer]
    flow = pipeline.connect(host, headers=proxy_auth(pipeline))
    pipeline.run(flow)
    if reason is None:
        assert flow.response is None
        dest = flow.metadata[flowstate.DESTINATION]
        assert dest.route == (answer[0], 443) and dest.host == host
        return
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content) == (reason, "invalid_request_error")
    assert message in flow.metadata[flowstate.REFUSAL].message
    [record] = pipeline.records()  # the refusal is audited
    assert (record["kind"], record["host"], record["decision"], record["reason"]) == \
        ("connect", host, "deny", reason)
    assert message in record["message"]


async def never_answers(host: str, port: int) -> list[str]:
    await asyncio.sleep(3600)
    return []


def test_resolution_times_out_and_refuses(pipeline, monkeypatch):
    resolver = pipeline.upstreammap.resolver = SystemResolver(timeout=0.05)
    monkeypatch.setattr(pipeline.tctx.master.event_loop, "getaddrinfo",
                        lambda host, port, **kw: never_answers(host, port))
    flow = pipeline.connect("pypi.org", headers=proxy_auth(pipeline))
    started = time.perf_counter()
    pipeline.run(flow)
    assert time.perf_counter() - started < 2
    assert flow.metadata[flowstate.REFUSAL].reason == "resolution_failed"
    assert flow.metadata[flowstate.REFUSAL].message == (
        "'pypi.org' could not be resolved (no answer within 0.05s); egressguard does not "
        "connect to a name it could not check")
    assert resolver.timeout == 0.05


def test_system_resolver_reads_the_hosts_file():
    """`localhost` resolves without DNS (/etc/hosts), to loopback."""
    found = asyncio.run(SystemResolver().resolve("localhost", 443))
    assert found and all(ip_address(a).is_loopback for a in found)


def test_mapped_hosts_are_routed_without_a_lookup(pipeline):
    pipeline.tctx.options.update(egressguard_upstream_map=["api.openai.com=127.0.0.1:9443"])
    pipeline.upstreammap.resolver.answers["api.openai.com"] = [["127.0.0.1"]]
    flow = pipeline.send("api.openai.com", headers=bearer(pipeline))
    assert flow.response.status_code == 200
    assert (flow.request.data.host, flow.request.data.port) == ("127.0.0.1", 9443)
    assert pipeline.upstreammap.resolver.asked == []  # the operator's routing is trusted


def server_connect(pipeline, client, address):
    data = server_hooks.ServerConnectionHookData(connection.Server(address=address), client)
    pipeline.hook("server_connect", data)
    return data.server


def test_dns_rebinding_cannot_move_an_intercepted_tunnel(pipeline):
    """The name answers a public address when checked, then loopback: every request and
    connection of the tunnel still goes to the address that was checked."""
    resolver = pipeline.upstreammap.resolver
    resolver.answers["api.openai.com"] = [["162.159.140.245"], ["127.0.0.1"]]
    tunnel = pipeline.tunnel("api.openai.com")
    for _ in range(3):
        flow = pipeline.request(tunnel, headers=bearer(pipeline))
        pipeline.run(flow)
        assert flow.response.status_code == 200
        assert (flow.request.data.host, flow.request.data.port) == ("162.159.140.245", 443)
    server = server_connect(pipeline, tunnel.client_conn, ("162.159.140.245", 443))
    assert (server.address, server.sni, server.error) == \
        (("162.159.140.245", 443), "api.openai.com", None)  # the name stays the name
    assert resolver.asked == ["api.openai.com"]  # checked once, never looked up again
    # a new tunnel looks again, and the new answer is refused
    again = pipeline.tunnel("api.openai.com")
    assert again.metadata[flowstate.REFUSAL].reason == "forbidden_address"


def test_dns_rebinding_cannot_move_a_passthrough_tunnel(pipeline):
    resolver = pipeline.upstreammap.resolver
    resolver.answers["pypi.org"] = [["151.101.0.223"], ["169.254.169.254"]]
    tunnel = pipeline.tunnel("pypi.org", proxy_auth=proxy_auth(pipeline)[0][1])
    server = server_connect(pipeline, tunnel.client_conn, ("pypi.org", 443))
    assert server.address == ("151.101.0.223", 443) and server.error is None
    assert resolver.asked == ["pypi.org"]


def test_a_connection_to_an_unchecked_address_is_refused(pipeline):
    tunnel = pipeline.tunnel("api.openai.com")
    server = server_connect(pipeline, tunnel.client_conn, ("api.anthropic.com", 443))
    assert server.error == ("egressguard: api.anthropic.com:443 is not the checked address "
                            "of this tunnel to api.openai.com")


def test_a_request_without_a_checked_address_is_refused(pipeline):
    tunnel = pipeline.tunnel("api.openai.com")
    flow = pipeline.request(tunnel, headers=bearer(pipeline))
    pipeline.upstreammap.tunnels.clear()
    pipeline.egress.tunnels[tunnel.client_conn] = dataclasses.replace(
        pipeline.egress.tunnels[tunnel.client_conn], route=None)
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content)[0] == "unrouted"
    assert flowstate.SECRET not in flow.metadata


@pytest.mark.parametrize(("listen", "address", "port", "itself"), [
    ([("127.0.0.1", 8080)], "127.0.0.1", 8080, True),
    ([("127.0.0.1", 8080)], "127.0.0.1", 443, False),
    ([("::", 8080, 0, 0)], "127.0.0.1", 8080, True),  # a wildcard: any local address
    ([("0.0.0.0", 8080)], "127.0.0.2", 8080, True),
    ([("0.0.0.0", 8080)], "8.8.8.8", 8080, False),  # not this machine's
    ([("192.0.2.1", 8443)], "192.0.2.1", 8443, True),
    ([], "127.0.0.1", 8080, False),
])
def test_listens_on(listen, address, port, itself):
    assert listens_on(listen, ip_address(address), port) is itself


# -- fronting inside the tunnel: :authority, absolute-form, Host -------------------------

@pytest.mark.parametrize(("authority", "http2", "host_header", "message"), [
    # :authority or absolute-form target, HTTP/2?, Host header ("": the CONNECT host),
    # the refusal's message (None: allowed)
    ("api.openai.com", True, None, None),
    ("api.openai.com:443", True, None, None),
    ("API.OpenAI.com.", True, None, None),
    ("evil.example", True, None, ":authority 'evil.example' does not match the CONNECT "
                                 "target 'api.openai.com'"),
    ("api.anthropic.com:443", True, None, ":authority 'api.anthropic.com' does not match"),
    ("api.openai.com@evil.example", True, None, ":authority 'api.openai.com@evil.example'"),
    ("api.openai.com", True, "evil.example", "Host 'evil.example' does not match"),
    ("evil.example", False, "", "request target 'evil.example' does not match the CONNECT "
                                "target 'api.openai.com'"),  # GET https://evil.example/
    ("127.0.0.1", False, "", "request target '127.0.0.1' does not match"),
])
def test_request_target_must_name_the_connect_target(pipeline, authority, http2,
                                                     host_header, message):
    tunnel = pipeline.tunnel("api.openai.com")
    flow = pipeline.request(tunnel, host_header=host_header, headers=bearer(pipeline))
    flow.request.authority = authority
    if http2:
        flow.request.http_version = "HTTP/2.0"
    pipeline.run(flow)
    if message is None:
        assert flow.response.status_code == 200
        return
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content) == ("host_mismatch", "invalid_request_error")
    assert flow.metadata[flowstate.REFUSAL].message.startswith(message)
    assert flowstate.SECRET not in flow.metadata


def test_a_second_host_header_is_checked_too(pipeline):
    tunnel = pipeline.tunnel("api.openai.com")
    flow = pipeline.request(tunnel, headers=[*bearer(pipeline), ("Host", "evil.example")])
    pipeline.run(flow)
    assert openai_error(flow.response.content)[0] == "host_mismatch"


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.1/latest/meta-data/", "ip_literal_denied"),
    ("http://169.254.169.254/latest/meta-data/", "ip_literal_denied"),
    ("http://[::1]:8080/", "ip_literal_denied"),
    ("http://2130706433/", "ip_literal_denied"),
    ("http://pypi.org/simple/", "plain_http_denied"),
])
def test_absolute_form_requests_are_refused(pipeline, url, reason):
    flow = pipeline.plain_request(url, headers=proxy_auth(pipeline))
    pipeline.run(flow)
    assert flow.response.status_code == 403
    assert openai_error(flow.response.content)[0] == reason
    assert pipeline.upstreammap.resolver.asked == []
    [record] = pipeline.records()
    assert record["reason"] == reason
