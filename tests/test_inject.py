"""Inject: every credential the agent sent is stripped, the real key added in the vendor's
own scheme; no key, no forwarding."""

from __future__ import annotations

import orjson
import pytest

from egressguard.core.secret import SecretLocation
from egressguard.core.vendors import catalogue
from egressguard.pipeline import flowstate

OPENAI, ANTHROPIC, GOOGLE = "api.openai.com", "api.anthropic.com", \
    "generativelanguage.googleapis.com"
AZURE, MISTRAL = "myres.openai.azure.com", "api.mistral.ai"

POLICY = """\
version: 1
secrets:
  vendors:
    mistral: egressguard/shared/{vendor}
  teams:
    red: egressguard/teams/{team}/{vendor}
  agents:
    special: egressguard/agents/{agent}/{vendor}
rules:
  - name: everyone
"""
OVERRIDE_PATHS = ["egressguard/shared/mistral", "egressguard/teams/red/openai",
                  "egressguard/teams/red/anthropic", "egressguard/agents/special/openai"]


@pytest.fixture
def policy_yaml() -> str:
    return POLICY


@pytest.fixture
def secrets(secrets):
    """The default keys plus one distinct key at each override path."""
    return {**secrets, **{SecretLocation("secret", p, "api_key"): f"key-at-{p}"
                          for p in OVERRIDE_PATHS}}


def credentials_sent(flow) -> list[tuple[str, str]]:
    """(lower-case name, value) of every header upstream would read as a credential."""
    vendor = flow.metadata[flowstate.DESTINATION].vendor
    names = vendor.credential_headers | {"proxy-authorization", "proxy-connection"}
    return [(k.lower(), v) for k, v in flow.request.headers.items(multi=True)
            if k.lower() in names]


# What the agent sends ("{t}": its token) and the one credential that must go upstream.
SWAPS = [
    ("openai", OPENAI, "/v1/chat/completions", [("Authorization", "Bearer {t}")],
     ("authorization", "Bearer {key}")),
    ("openai-duplicates-any-case", OPENAI, "/v1/chat/completions",
     [("Authorization", "Bearer {t}"), ("AUTHORIZATION", "Bearer junk"),
      ("x-api-key", "{t}"), ("X-Api-Key", "other"), ("Cookie", "session=abc"),
      ("Proxy-Authorization", "Basic YWdlbnQtYTp4"), ("Proxy-Connection", "keep-alive")],
     ("authorization", "Bearer {key}")),
    ("anthropic", ANTHROPIC, "/v1/messages",
     [("x-api-key", "{t}"), ("Authorization", "Bearer {t}")], ("x-api-key", "{key}")),
    ("google-header-and-query", GOOGLE,
     "/v1beta/models/gemini-2.0-flash:generateContent?key={t}",
     [("x-goog-api-key", "{t}"), ("X-Goog-Api-Key", "junk")], ("x-goog-api-key", "{key}")),
    ("google-query-only", GOOGLE,
     "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key={t}&key=junk",
     [], ("x-goog-api-key", "{key}")),
    ("azure", AZURE, "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
     [("api-key", "{t}"), ("Authorization", "Bearer aad-token")], ("api-key", "{key}")),
    ("azure-query", AZURE,
     "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01&api-key={t}",
     [], ("api-key", "{key}")),
]


@pytest.mark.parametrize(("host", "path", "headers", "expected"),
                         [pytest.param(*s[1:], id=s[0]) for s in SWAPS])
def test_exactly_the_real_key_goes_upstream(pipeline, host, path, headers, expected):
    vendor = catalogue().for_host(host).name
    token = pipeline.token()
    key = pipeline.REAL_KEYS[vendor]
    flow = pipeline.send(host, path.format(t=token),
                         headers=[("x-custom", "kept"), ("anthropic-version", "2023-06-01"),
                                  *[(k, v.format(t=token)) for k, v in headers]])
    assert flow.response.status_code == 200
    name, value = expected
    assert credentials_sent(flow) == [(name, value.format(key=key))]
    sent = flow.request
    assert token not in sent.path and "junk" not in sent.path
    assert not set(sent.query) & catalogue().by_name(vendor).credential_query
    assert [v for k, v in sent.headers.items(multi=True) if token in v] == []
    assert (sent.headers["x-custom"], sent.headers["anthropic-version"]) == \
        ("kept", "2023-06-01")
    if "api-version" in path:
        assert sent.query["api-version"] == "2024-06-01"
    if "alt=sse" in path:
        assert sent.query["alt"] == "sse"


def test_token_inside_the_body_is_data(pipeline):
    token = pipeline.token()
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content":
                         f"my key is {token}; Authorization: Bearer {token}"}]})
    flow = pipeline.send(OPENAI, body=body, headers=[("content-type", "application/json"),
                                                     ("Authorization", "Bearer " + token)])
    assert flow.response.status_code == 200
    assert flow.request.content == body
    assert credentials_sent(flow) == [("authorization", "Bearer " + pipeline.REAL_KEYS["openai"])]


MISSING = [
    # host, path, header, 503 body without its message
    (OPENAI, "/v1/chat/completions", "Authorization",
     {"error": {"type": "server_error", "param": None, "code": "secret_missing"}}),
    (ANTHROPIC, "/v1/messages", "x-api-key",
     {"type": "error", "error": {"type": "overloaded_error"}}),
    (GOOGLE, "/v1beta/models/gemini-2.0-flash:generateContent", "x-goog-api-key",
     {"error": {"code": 503, "status": "UNAVAILABLE"}}),
]


@pytest.mark.parametrize(("host", "path", "header", "expected"), MISSING)
def test_missing_secret_is_503_and_nothing_forwarded(pipeline, host, path, header, expected):
    vendor = catalogue().for_host(host).name
    pipeline.store.values.pop(SecretLocation("secret", f"egressguard/vendors/{vendor}",
                                             "api_key"))
    token = pipeline.token()
    flow = pipeline.send(host, path, headers=[
        (header, ("Bearer " if header == "Authorization" else "") + token)])
    assert flow.response.status_code == 503
    body = orjson.loads(flow.response.content)
    assert body["error"].pop("message")
    assert body == expected
    assert flow.metadata[flowstate.REFUSAL].reason == "secret_missing"
    assert flowstate.SECRET not in flow.metadata
    for key in pipeline.REAL_KEYS.values():
        assert key.encode() not in flow.response.content


LOCATIONS = [
    # agent, team, host, path the key is read from
    ("agent-a", None, OPENAI, "egressguard/vendors/openai"),
    ("agent-a", "blue", OPENAI, "egressguard/vendors/openai"),
    ("agent-a", "red", OPENAI, "egressguard/teams/red/openai"),
    ("agent-a", "red", ANTHROPIC, "egressguard/teams/red/anthropic"),
    ("special", "red", OPENAI, "egressguard/agents/special/openai"),  # agent beats team
    ("agent-a", None, MISTRAL, "egressguard/shared/mistral"),
]


@pytest.mark.parametrize(("agent", "team", "host", "path"), LOCATIONS)
def test_secret_path_per_team_agent_and_vendor(pipeline, agent, team, host, path):
    token = pipeline.token(agent, team)
    flow = pipeline.send(host, "/v1/messages" if host == ANTHROPIC else "/v1/chat/completions",
                         headers=[("x-api-key", token)])
    assert flow.response.status_code == 200
    assert pipeline.store.asked == [SecretLocation("secret", path, "api_key")]
    expected = next(v for loc, v in pipeline.store.values.items() if loc.path == path)
    [(_, value)] = credentials_sent(flow)
    assert value.endswith(expected)
    assert flow.metadata[flowstate.SECRET].ref.path == f"secret/{path}"


def test_non_utf8_header_value_does_not_break_the_swap(pipeline):
    token = pipeline.token()
    tunnel = pipeline.tunnel(OPENAI)
    flow = pipeline.request(tunnel, headers=[("Authorization", "Bearer " + token),
                                             ("x-title", b"caf\xe9")])
    pipeline.run(flow, swallow_errors=True)  # as mitmproxy runs hooks
    assert credentials_sent(flow) == [("authorization", "Bearer " + pipeline.REAL_KEYS["openai"])]
    assert (b"x-title", b"caf\xe9") in flow.request.headers.fields


@pytest.mark.parametrize("option, value", [
    ("save_stream_file", "/tmp/flows.mitm"),
    ("flow_detail", 2),
    ("flow_detail", 4),
])
def test_options_that_would_write_keys_out_are_refused(option: str, value: object) -> None:
    from mitmproxy import exceptions
    from mitmproxy.addons import dumper, save
    from mitmproxy.test import taddons

    from egressguard.pipeline.inject import Inject

    with taddons.context(save.Save(), dumper.Dumper(), Inject()) as tctx:
        with pytest.raises(exceptions.OptionsError, match=f"egressguard refuses {option}"):
            tctx.options.update(**{option: value})
