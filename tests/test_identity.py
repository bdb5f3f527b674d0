"""Identity: the agent token from Proxy-Authorization or as the API key; real keys refused."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from egressguard.core import tokens
from egressguard.pipeline import flowstate

OPENAI, ANTHROPIC, GOOGLE = "api.openai.com", "api.anthropic.com", \
    "generativelanguage.googleapis.com"
AZURE = "myres.openai.azure.com"
PATHS = {
    OPENAI: "/v1/chat/completions",
    ANTHROPIC: "/v1/messages",
    GOOGLE: "/v1beta/models/gemini-2.0-flash:generateContent",
    AZURE: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def error_of(body: bytes) -> dict[str, object]:
    """The vendor-shaped error body of a refusal, message checked and dropped."""
    data = orjson.loads(body)
    err = data["error"]
    assert isinstance(err.pop("message"), str)
    return data


# -- Proxy-Authorization at CONNECT ---------------------------------------------------

# How the header is built from a token; "{t}" is the agent-a token, "{other}" a token
# signed by another installation's key.
PROXY_AUTH = [
    # id, header value template, refusal reason (None: accepted)
    ("basic-agent-token", lambda t: "Basic " + b64(f"agent-a:{t}".encode()), None),
    ("token-as-user", lambda t: "Basic " + b64(f"{t}:".encode()), None),
    ("token-as-user-any-password", lambda t: "Basic " + b64(f"{t}:x".encode()), None),
    ("scheme-lowercase", lambda t: "basic " + b64(f"agent-a:{t}".encode()), None),
    ("wrong-user", lambda t: "Basic " + b64(f"agent-b:{t}".encode()), "identity_conflict"),
    ("bearer-scheme", lambda t: "Bearer " + t, "proxy_auth_malformed"),
    ("not-base64", lambda t: "Basic !!not-base64!!", "proxy_auth_malformed"),
    ("scheme-only", lambda t: "Basic", "proxy_auth_malformed"),
    ("empty-user-and-password", lambda t: "Basic " + b64(b":"), "proxy_auth_malformed"),
    ("not-utf8", lambda t: "Basic " + b64(b"\xff\xfe:\xff"), "proxy_auth_malformed"),
    ("password-not-a-token", lambda t: "Basic " + b64(b"agent-a:hunter2"), "token_malformed"),
    ("tampered-signature", lambda t: "Basic " + b64(f"agent-a:{t[:-4]}AAAA".encode()),
     "token_invalid"),
]


def assert_connect_outcome(flow, reason: str | None) -> bool:  # type: ignore[no-untyped-def]
    """Accepted as agent-a when `reason` is None; else a 407 asking for Basic auth.
    True when refused, so the caller checks the error body."""
    if reason is None:
        assert flow.response is None
        assert flow.metadata[flowstate.PRINCIPAL].agent == "agent-a"
        return False
    assert flow.response.status_code == 407
    assert flow.response.headers["Proxy-Authenticate"] == 'Basic realm="egressguard"'
    return True


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in PROXY_AUTH],
                         ids=[i for i, _, _ in PROXY_AUTH])
def test_proxy_authorization_at_connect(pipeline, make, reason):
    flow = pipeline.connect(OPENAI, headers=[("Proxy-Authorization", make(pipeline.token()))])
    pipeline.run(flow)
    assert "Proxy-Authorization" not in flow.request.headers
    if assert_connect_outcome(flow, reason):
        assert error_of(flow.response.content) == {"error": {
            "type": "invalid_request_error", "param": None, "code": reason}}
        assert flow.metadata[flowstate.REFUSAL].reason == reason


@pytest.mark.parametrize(("when", "reason"), [("expired", "token_expired"),
                                              ("revoked", "token_revoked")])
def test_proxy_authorization_with_dead_token_is_407(pipeline, when, reason):
    token, principal = pipeline.issue(ttl=60, now=time.time() - 3600 if when == "expired"
                                      else None)
    if when == "revoked":
        pipeline.revoke(principal.token_id)
    flow = pipeline.connect(OPENAI, headers=[("Proxy-Authorization",
                                              pipeline.basic("agent-a", token))])
    pipeline.run(flow)
    assert flow.response.status_code == 407
    assert orjson.loads(flow.response.content)["error"]["code"] == reason


def test_tunnel_principal_identifies_requests_without_a_key(pipeline):
    tunnel = pipeline.tunnel(OPENAI, proxy_auth=pipeline.basic("agent-a", pipeline.token()))
    flow = pipeline.request(tunnel)
    pipeline.run(flow)
    assert flow.response.status_code == 200
    assert flow.metadata[flowstate.PRINCIPAL].agent == "agent-a"


@pytest.mark.parametrize(("host", "auth", "reason"), [
    ("pypi.org", False, "identity_missing"),
    ("raw.githubusercontent.com", False, "identity_missing"),
    ("pypi.org", True, None),
])
def test_passthrough_connect_needs_proxy_auth(pipeline, host, auth, reason):
    headers = [("Proxy-Authorization", pipeline.basic("agent-a", pipeline.token()))] \
        if auth else []
    flow = pipeline.connect(host, headers=headers)
    pipeline.run(flow)
    if assert_connect_outcome(flow, reason):
        assert orjson.loads(flow.response.content)["error"]["code"] == reason


# -- the token as the API key -----------------------------------------------------------

# (host, headers, query) with "{t}" standing for the token
TOKEN_PLACES = [
    ("openai-bearer", OPENAI, [("Authorization", "Bearer {t}")], ""),
    ("openai-bearer-lowercase", OPENAI, [("authorization", "bearer {t}")], ""),
    ("openai-x-api-key", OPENAI, [("x-api-key", "{t}")], ""),
    ("anthropic-x-api-key", ANTHROPIC, [("x-api-key", "{t}")], ""),
    ("anthropic-bearer", ANTHROPIC, [("Authorization", "Bearer {t}")], ""),
    ("azure-api-key", AZURE, [("api-key", "{t}")], ""),
    ("google-x-goog-api-key", GOOGLE, [("x-goog-api-key", "{t}")], ""),
    ("google-query-key", GOOGLE, [], "key={t}"),
    ("google-query-key-and-alt", GOOGLE, [], "alt=sse&key={t}"),
]


def place(pipeline, host, headers, query, value):
    """Send a request to `host` carrying `value` where TOKEN_PLACES says."""
    path = PATHS[host]
    if query:
        path += ("&" if "?" in path else "?") + query.format(t=value)
    return pipeline.send(host, path,
                         headers=[(k, v.format(t=value)) for k, v in headers])


@pytest.mark.parametrize(("host", "headers", "query"), [p[1:] for p in TOKEN_PLACES],
                         ids=[p[0] for p in TOKEN_PLACES])
def test_token_as_api_key_identifies_the_agent(pipeline, host, headers, query):
    flow = place(pipeline, host, headers, query, pipeline.token("agent-q", "blue"))
    assert flow.response.status_code == 200
    principal = flow.metadata[flowstate.PRINCIPAL]
    assert (principal.agent, principal.team) == ("agent-q", "blue")


SHAPES_401 = {
    OPENAI: lambda reason: {"error": {"type": "invalid_request_error", "param": None,
                                      "code": reason}},
    ANTHROPIC: lambda reason: {"type": "error", "error": {"type": "authentication_error"}},
    GOOGLE: lambda reason: {"error": {"code": 401, "status": "UNAUTHENTICATED"}},
}


@pytest.mark.parametrize("when", ["expired", "revoked"])
@pytest.mark.parametrize(("host", "header"), [(OPENAI, "Authorization"),
                                              (ANTHROPIC, "x-api-key"),
                                              (GOOGLE, "x-goog-api-key")])
def test_dead_token_is_401_in_vendor_shape(pipeline, host, header, when):
    token, principal = pipeline.issue(ttl=60, now=time.time() - 3600 if when == "expired"
                                      else None)
    if when == "revoked":
        pipeline.revoke(principal.token_id)
    value = "Bearer " + token if header == "Authorization" else token
    flow = pipeline.send(host, PATHS[host], headers=[(header, value)])
    reason = f"token_{when}"
    assert flow.response.status_code == 401
    assert error_of(flow.response.content) == SHAPES_401[host](reason)
    assert flow.metadata[flowstate.REFUSAL].reason == reason
    assert flowstate.SECRET not in flow.metadata


# Real-looking vendor keys, built here so no scanner mistakes this file for a leak.
OPENAI_KEY = "sk-proj-" + "x" * 40
ANTHROPIC_KEY = "sk-ant-api03-" + "x" * 40
GOOGLE_KEY = "AIza" + "x" * 35

REAL_KEYS = [
    ("openai-bearer", OPENAI, [("Authorization", "Bearer {t}")], "", OPENAI_KEY),
    ("anthropic-x-api-key", ANTHROPIC, [("x-api-key", "{t}")], "", ANTHROPIC_KEY),
    ("google-header", GOOGLE, [("x-goog-api-key", "{t}")], "", GOOGLE_KEY),
    ("google-query", GOOGLE, [], "key={t}", GOOGLE_KEY),
    ("openai-key-to-anthropic", ANTHROPIC, [("x-api-key", "{t}")], "", OPENAI_KEY),
    ("azure-hex-key", AZURE, [("api-key", "{t}")], "", "0123456789abcdef" * 2),
]


@pytest.mark.parametrize(("host", "headers", "query", "key"), [p[1:] for p in REAL_KEYS],
                         ids=[p[0] for p in REAL_KEYS])
def test_real_vendor_key_is_refused(pipeline, host, headers, query, key):
    flow = place(pipeline, host, headers, query, key)
    assert flow.response.status_code == 403
    assert flow.metadata[flowstate.REFUSAL].reason == "real_key_presented"
    assert key.encode() not in flow.response.content
    assert flowstate.SECRET not in flow.metadata
    assert key.encode() not in pipeline.journal_bytes()


def test_real_key_is_refused_even_with_proxy_identity(pipeline):
    flow = pipeline.send(OPENAI, proxy_auth=pipeline.basic("agent-a", pipeline.token()),
                         headers=[("Authorization", "Bearer " + OPENAI_KEY)])
    assert flow.response.status_code == 403
    assert orjson.loads(flow.response.content)["error"]["code"] == "real_key_presented"


@pytest.mark.parametrize(("host", "header", "key", "owner"), [
    (OPENAI, "Authorization", "Bearer " + OPENAI_KEY, "openai"),
    (GOOGLE, "x-goog-api-key", GOOGLE_KEY, "google"),
    (ANTHROPIC, "x-api-key", ANTHROPIC_KEY, "anthropic"),  # sk-, but not OpenAI's
    (ANTHROPIC, "x-api-key", OPENAI_KEY, "openai"),  # the key's vendor, not the host's
    (OPENAI, "Authorization", "Bearer sk-" + "a1" * 24, "openai"),  # legacy user key
])
def test_real_key_refusal_names_the_keys_vendor(pipeline, host, header, key, owner):
    flow = pipeline.send(host, PATHS[host], headers=[(header, key)])
    assert f"real {owner} API key" in flow.metadata[flowstate.REFUSAL].message


@pytest.mark.parametrize(("host", "headers"), [
    (OPENAI, []),
    (OPENAI, [("Authorization", "Bearer sk-placeholder")]),  # not a token, not a key
    (ANTHROPIC, [("x-api-key", "")]),
    (GOOGLE, [("x-goog-api-key", "dummy")]),
])
def test_no_identity_is_401(pipeline, host, headers):
    flow = pipeline.send(host, PATHS[host], headers=headers)
    assert flow.response.status_code == 401
    assert flow.metadata[flowstate.REFUSAL].reason == "identity_missing"
    assert "egressguard token issue" in flow.metadata[flowstate.REFUSAL].message
    assert flowstate.SECRET not in flow.metadata


@pytest.mark.parametrize(("proxy_agent", "header_agents", "reason"), [
    ("agent-a", ["agent-b"], "identity_conflict"),
    (None, ["agent-a", "agent-b"], "identity_conflict"),
    ("agent-a", ["agent-a"], None),
    (None, ["agent-a", "agent-a"], None),
])
def test_two_identities_must_agree(pipeline, proxy_agent, header_agents, reason):
    auth = pipeline.basic(proxy_agent, pipeline.token(proxy_agent)) if proxy_agent else None
    names = ["Authorization", "x-api-key"]
    headers = [(names[i], ("Bearer " if i == 0 else "") + pipeline.token(agent))
               for i, agent in enumerate(header_agents)]
    flow = pipeline.send(OPENAI, proxy_auth=auth, headers=headers)
    if reason is None:
        assert flow.response.status_code == 200
        return
    assert flow.response.status_code == 401
    assert orjson.loads(flow.response.content)["error"]["code"] == reason


class _Clock:
    """`time` for the tokens module only, `ahead` seconds in the future."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def time(self) -> float:
        return time.time() + self.ahead

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


@pytest.mark.parametrize("when", ["expired", "revoked"])
def test_dead_token_stops_an_open_tunnel(pipeline, monkeypatch, when):
    token, principal = pipeline.issue(ttl=60)
    tunnel = pipeline.tunnel(OPENAI, proxy_auth=pipeline.basic("agent-a", token))
    first = pipeline.request(tunnel)
    pipeline.run(first)
    assert first.response.status_code == 200
    if when == "revoked":
        pipeline.revoke(principal.token_id)
    # past the token's expiry, or past the revocation list's once-a-second re-read
    monkeypatch.setattr(tokens, "time", _Clock(ahead=120 if when == "expired" else 2))
    second = pipeline.request(tunnel)
    pipeline.run(second)
    assert second.response.status_code in (401, 407)
    assert second.metadata[flowstate.REFUSAL].reason == f"token_{when}"


# -- guessing tokens --------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def throttled(pipeline):
    """Identity allowing 3 failed token checks per client address in 60 s."""
    pipeline.tctx.options.update(egressguard_auth_failures=3, egressguard_auth_window=60)
    pipeline.identity.failures.clock = clock = Clock()
    checked = []
    verify = pipeline.identity.authority.verify
    pipeline.identity.authority.verify = lambda token, now=None: (checked.append(token),
                                                                  verify(token, now))[1]
    return pipeline, clock, checked


def bad_token(pipeline) -> str:
    token = pipeline.token()
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


@pytest.mark.parametrize("where", ["api-key", "proxy-authorization"])
def test_token_guessing_is_throttled_per_client_address(throttled, where):
    pipeline, clock, checked = throttled

    def attempt(token):
        if where == "api-key":
            return pipeline.send(OPENAI, PATHS[OPENAI], headers=[("x-api-key", token)])
        return pipeline.tunnel(OPENAI, proxy_auth=pipeline.basic("agent-a", token))

    refused = [attempt(bad_token(pipeline)).response.status_code for _ in range(3)]
    assert refused == ([401] * 3 if where == "api-key" else [407] * 3)
    clock.now += 20
    checked.clear()
    flow = attempt(pipeline.token())  # even a good token now waits, unchecked
    assert flow.response.status_code == 429
    assert flow.response.headers["retry-after"] == "40"
    error = orjson.loads(flow.response.content)["error"]
    assert error["code"] == "auth_throttled"
    assert "too many failed token checks" in error["message"]
    assert checked == []  # no HMAC was computed for it
    assert flow.metadata[flowstate.REFUSAL].reason == "auth_throttled"
    clock.now += 40  # the window is over
    after = attempt(pipeline.token())
    assert (after.response.status_code if after.response else 200) == 200


def test_missing_identity_and_good_tokens_are_not_failures(throttled):
    pipeline, _, _ = throttled
    for _ in range(10):
        missing = pipeline.send(OPENAI, PATHS[OPENAI])
        assert missing.response.status_code == 401
        assert pipeline.send(OPENAI, PATHS[OPENAI], headers=[
            ("x-api-key", pipeline.token())]).response.status_code == 200
    assert len(pipeline.identity.failures) == 0
    address = missing.client_conn.peername[0]
    pipeline.identity.failures.fail(address)  # the same address does count failures
    assert len(pipeline.identity.failures) == 1
