"""Properties that must hold for any input, checked with Hypothesis.

- the credential swap: whatever headers (any case, duplicates, order, folded values)
  and query string an agent sends, no placeholder and no agent-supplied credential
  reaches the vendor, exactly the real key does, and no real key comes back;
- SSE: the parsers see the same events for any chunking of the same bytes;
- redaction: no value the detector finds is left in the redacted text.
"""

from __future__ import annotations

import string
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from egressguard.core import usage
from egressguard.core.credentials import KeyScrubber
from egressguard.core.redact import detect
from egressguard.core.redact.answers import SecretMask
from egressguard.core.redact.sse import SseRewriter
from egressguard.core.vendors import catalogue
from egressguard.pipeline import flowstate
from egressguard.tools.scancli import redacted

PIPELINE = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
PURE = settings(max_examples=300, deadline=None)

HOSTS = {"openai": ("api.openai.com", "/v1/chat/completions"),
         "anthropic": ("api.anthropic.com", "/v1/messages"),
         "google": ("generativelanguage.googleapis.com",
                    "/v1beta/models/gemini-2.0-flash:generateContent"),
         "azure_openai": ("myres.openai.azure.com",
                          "/openai/deployments/gpt-4o/chat/completions")}

# Agent-supplied credentials are drawn from an alphabet no other generated value
# uses, so finding one upstream can only mean it leaked.
CREDENTIAL = st.text(alphabet="QWXZ#", min_size=8, max_size=24).map(lambda s: f"cred{s}")
NOISE = st.text(alphabet=string.ascii_lowercase + string.digits + " -_/=.", max_size=30)


def _casing(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flips: "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True)))


@st.composite
def agent_request(draw: st.DrawFn, token: str) -> tuple[str, list[tuple[str, str]],
                                                        list[tuple[str, str]], set[str]]:
    """(vendor, headers, query, credentials the agent put in credential places)."""
    vendor_name = draw(st.sampled_from(sorted(HOSTS)))
    vendor = catalogue().by_name(vendor_name)
    names = sorted(vendor.credential_headers | {"authorization", "x-api-key", "api-key",
                                                "proxy-authorization"})
    supplied: set[str] = set()

    def credential_value() -> str:
        if draw(st.booleans()):
            value = token
        else:
            value = draw(CREDENTIAL)
            supplied.add(value)
        scheme = draw(st.sampled_from(["", "Bearer ", "bearer  ", "Basic ", "Token "]))
        fold = draw(st.sampled_from(["", "\r\n ", "\r\n\t"]))  # obs-fold, as mitmproxy keeps it
        return f"{scheme}{fold}{value}" if scheme else value

    headers = [(draw(_casing(draw(st.sampled_from(names)))), credential_value())
               for _ in range(draw(st.integers(1, 5)))]
    headers += [(f"x-noise-{i}", draw(NOISE)) for i in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):  # a placeholder where no vendor reads a credential
        headers.append((draw(st.sampled_from(["x-extra", "OpenAI-Organization", "Cookie"])),
                        f"k={token}"))
    headers = draw(st.permutations(headers))
    query_names = sorted(vendor.credential_query | {"key", "api-key"})
    query = [(draw(st.sampled_from(query_names)), credential_value().strip())
             for _ in range(draw(st.integers(0, 3)))]
    query += [("alt", "sse")] if draw(st.booleans()) else []
    return vendor_name, list(headers), draw(st.permutations(query)), supplied


def _query_string(query: list[tuple[str, str]], encode_names: bool) -> str:
    def name(n: str) -> str:  # `%6Bey` is `key` to the vendor too
        return "".join(f"%{ord(c):02X}" for c in n) if encode_names else n
    return "&".join(f"{name(k)}={quote(v, safe='')}" for k, v in query)


@PIPELINE
@given(data=st.data(), encode_names=st.booleans())
def test_no_placeholder_or_agent_credential_reaches_the_vendor(pipeline, data, encode_names):
    token = pipeline.token()
    vendor_name, headers, query, supplied = data.draw(agent_request(token))
    host, path = HOSTS[vendor_name]
    real = pipeline.REAL_KEYS[vendor_name]
    qs = _query_string(query, encode_names)
    echo = pipeline.Upstream(headers={"content-type": "application/json", "x-echo": real},
                             chunks=(orjson.dumps({"error": {"message": f"bad key {real}"}}),))
    flow = pipeline.request(pipeline.tunnel(host), f"{path}?{qs}" if qs else path,
                            headers=headers, body={"model": "gpt-4o", "messages": []})
    agent_sees = pipeline.run(flow, upstream=echo) or b""

    agent_sees += b"".join(v for _, v in flow.response.headers.fields)
    assert real.encode() not in agent_sees
    if flowstate.REFUSAL in flow.metadata:
        return  # refused: nothing went upstream
    sent = flow.request
    upstream = [sent.path, *(f"{k}: {v}" for k, v in sent.headers.items(multi=True))]
    for text in upstream:
        assert token not in text
        assert not any(cred in text for cred in supplied)
    vendor = catalogue().by_name(vendor_name)
    credential_headers = [(k.lower(), v) for k, v in sent.headers.items(multi=True)
                          if k.lower() in vendor.credential_headers]
    assert credential_headers == [(vendor.inject.header.lower(), vendor.inject.value(real))]
    assert not set(sent.query) & vendor.credential_query
    noise = [(k, v) for k, v in headers if k.startswith("x-noise-")]  # the rest goes on as sent
    assert [(k, v) for k, v in sent.headers.items(multi=True) if k.startswith("x-noise-")] == noise


# -- SSE ------------------------------------------------------------------------------

def _sse_stream() -> st.SearchStrategy[bytes]:
    data = st.text(alphabet=string.ascii_letters + " éü€😀\"\\{}:,", max_size=20).map(
        lambda s: orjson.dumps({"choices": [{"delta": {"content": s}}]}).decode())
    event = st.tuples(st.sampled_from(["", "event: message\n", ": comment\n", "id: 7\n"]),
                      data, st.sampled_from(["\n\n", "\r\n\r\n", "\r\r"]))
    end = st.sampled_from(["", 'data: {"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'])
    return st.tuples(st.lists(event, max_size=6), end).map(
        lambda p: ("".join(f"{head}data: {body}{sep}" for head, body, sep in p[0])
                   + p[1]).encode())


def _chunks(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(blob)) for c in cuts})
    return [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]


@PURE
@given(blob=_sse_stream(), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_sse_usage_reads_the_same_for_any_chunking(blob, cuts):
    whole, chunked = usage.SseUsage(), usage.SseUsage()
    whole.feed(blob)
    for chunk in _chunks(blob, cuts):
        chunked.feed(chunk)
    assert chunked.usage == whole.usage


@PURE
@given(blob=_sse_stream(), cuts=st.lists(st.integers(0, 400), max_size=12),
       secret_at=st.integers(0, 5))
def test_sse_rewriter_output_does_not_depend_on_chunking(blob, cuts, secret_at):
    # a key-shaped secret inside one event's text, so the rewriter has work to do
    key = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    events = blob.split(b"data: ")
    if len(events) > 1:
        i = 1 + secret_at % (len(events) - 1)
        events[i] = events[i].replace(b'"content":"', f'"content":" {key} '.encode(), 1)
    blob = b"data: ".join(events)

    def run(chunks: list[bytes]) -> bytes:
        mask = SecretMask(detect.default_detector(), {"GITHUB_TOKEN": "mask"})
        rewriter = SseRewriter([mask], json_output=False)
        return b"".join(rewriter(c) for c in [*chunks, b""])

    whole, chunked = run([blob]), run(_chunks(blob, cuts))
    assert chunked == whole
    assert key.encode() not in chunked


@PURE
@given(blob=st.binary(max_size=300), keys=st.lists(st.binary(min_size=1, max_size=12),
                                                     min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 320), max_size=10))
def test_key_scrubber_never_lets_a_key_through_any_chunking(blob, keys, cuts):
    assume(all(b"[redacted" not in k for k in keys))
    out = b""
    scrubber = KeyScrubber(keys)
    for chunk in [*_chunks(blob, cuts), b""]:
        out += scrubber(chunk)
    assert out == KeyScrubber(keys).scrub(blob)


# -- redaction --------------------------------------------------------------------------

SECRETS = st.sampled_from([
    "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2,
    "sk-ant-api03-" + "Qw3rTy6uIo9pAs2dFg5hJk8lZx1cVb4n" * 3,
    "AKIA" + "IOSFODNN7EXAMPLF",
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "xoxb-" + "1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
])
PII = st.sampled_from(["jane.roe@example.com", "+1 415 555 0134", "4111 1111 1111 1111",
                       "078-05-1120", "GB82 WEST 1234 5698 7654 32"])
FILLER = st.text(alphabet=string.ascii_letters + string.digits + " .,:;=\"'()[]{}\n\t-_/",
                 max_size=40)


@PURE
@given(parts=st.lists(st.one_of(FILLER, SECRETS, PII), max_size=8))
def test_redaction_never_leaves_a_detected_value(parts):
    text = "".join(p if i % 2 else f" {p} " for i, p in enumerate(parts))
    detector = detect.default_detector()
    found = detector.find(text)
    masked = redacted(text, found)
    for f in found:
        assert text[f.start:f.end] not in masked
