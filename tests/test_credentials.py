"""Credential swap (`egressguard.core.credentials`) and the Secret type it injects.

The "real" key is built at test time; it only has a realistic shape.
"""

from __future__ import annotations

import itertools
import random

import pytest

from egressguard.core.credentials import (
    REDACTED,
    KeyScrubber,
    inject,
    presented,
    strip,
    strip_query,
)
from egressguard.core.secret import Secret, SecretRef
from egressguard.core.vendors import Vendor, catalogue

REAL = "sk-proj-" + "R3aLkEy" * 6
TOKEN = "egt1.eyJ2IjoxfQ.c2ln"


def vendor(name: str) -> Vendor:
    found = catalogue().by_name(name)
    assert found is not None
    return found


def secret_for(name: str, value: str = REAL, version: int | None = 4) -> Secret:
    return Secret(value, SecretRef(f"egressguard/vendors/{name}", version),
                  vendor(name).hosts)


# -- what the agent presented -------------------------------------------------------

@pytest.mark.parametrize("name, headers, query, found", [
    ("openai", [("Authorization", f"Bearer {TOKEN}")], [], [TOKEN]),
    ("openai", [("authorization", f"bearer   {TOKEN}  ")], [], [TOKEN]),
    ("openai", [("AUTHORIZATION", f"BEARER {TOKEN}")], [], [TOKEN]),
    ("openai", [("Authorization", f"Basic {TOKEN}")], [], [TOKEN]),
    ("openai", [("Authorization", f"Token {TOKEN}")], [], [TOKEN]),
    ("openai", [("Authorization", TOKEN)], [], [TOKEN]),  # no scheme word
    ("openai", [("Authorization", "Bearer a"), ("authorization", "Bearer b")], [], ["a", "b"]),
    ("openai", [("X-Api-Key", "a")], [], ["a"]),  # universal: every vendor strips it
    ("openai", [("Authorization", "")], [], []),
    ("openai", [("Content-Type", "application/json"), ("X-Request-Id", "r1")], [], []),
    ("openai", [("Proxy-Authorization", "Basic eA==")], [], []),  # identity's business
    ("anthropic", [("x-api-key", TOKEN)], [], [TOKEN]),
    ("anthropic", [("X-API-KEY", "a"), ("Authorization", "Bearer b")], [], ["a", "b"]),
    ("azure_openai", [("api-key", TOKEN)], [("api-version", "2024-10-21")], [TOKEN]),
    ("google", [("x-goog-api-key", "a")], [("key", "b"), ("alt", "sse")], ["a", "b"]),
    ("google", [], [("key", TOKEN)], [TOKEN]),
    ("openai", [], [("api_key", "a"), ("access_token", "b"), ("q", "c")], ["a", "b"]),
    ("openai", [], [("key", "")], []),
])
def test_presented(name: str, headers: list[tuple[str, str]], query: list[tuple[str, str]],
                   found: list[str]) -> None:
    assert presented(headers, query, vendor(name)) == found


# -- stripping ------------------------------------------------------------------------

KEEP = [("Host", "api.openai.com"), ("Content-Type", "application/json"),
        ("OpenAI-Beta", "assistants=v2"), ("anthropic-version", "2023-06-01")]


@pytest.mark.parametrize("name", ["openai", "anthropic", "google", "azure_openai", "cohere"])
@pytest.mark.parametrize("credential", [
    ("Authorization", f"Bearer {TOKEN}"),
    ("authorization", f"basic {TOKEN}"),
    ("AUTHORIZATION", TOKEN),
    ("x-api-key", TOKEN),
    ("X-Api-Key", TOKEN),
    ("api-key", TOKEN),
    ("Api-Key", TOKEN),
    ("x-goog-api-key", TOKEN),
    ("Ocp-Apim-Subscription-Key", TOKEN),
    ("Cookie", "session=1"),
    ("Proxy-Authorization", "Basic eDp5"),
    ("proxy-authorization", "Basic eDp5"),
    ("Proxy-Connection", "keep-alive"),
])
def test_strip_removes_every_credential_header(name: str,
                                               credential: tuple[str, str]) -> None:
    headers = [KEEP[0], credential, KEEP[1], credential, KEEP[2], credential, KEEP[3]]
    assert strip(headers, vendor(name)) == KEEP


@pytest.mark.parametrize("query, kept", [
    ([("key", "a"), ("alt", "sse")], [("alt", "sse")]),
    ([("alt", "sse"), ("api-key", "a"), ("api_key", "b"), ("apikey", "c"),
      ("access_token", "d"), ("token", "e"), ("key", "f"), ("key", "g")], [("alt", "sse")]),
    ([("api-version", "2024-10-21"), ("model", "x")], [("api-version", "2024-10-21"),
                                                        ("model", "x")]),
    ([], []),
])
def test_strip_query(query: list[tuple[str, str]], kept: list[tuple[str, str]]) -> None:
    assert strip_query(query, vendor("google")) == kept


# -- injecting --------------------------------------------------------------------------

@pytest.mark.parametrize("name, host, header, value", [
    ("openai", "api.openai.com", "Authorization", f"Bearer {REAL}"),
    ("openai", "API.OpenAI.com.", "Authorization", f"Bearer {REAL}"),
    ("anthropic", "api.anthropic.com", "x-api-key", REAL),
    ("google", "generativelanguage.googleapis.com", "x-goog-api-key", REAL),
    ("azure_openai", "myres.openai.azure.com", "api-key", REAL),
    ("cohere", "api.cohere.ai", "Authorization", f"Bearer {REAL}"),
])
def test_inject_adds_the_real_key_in_the_vendors_scheme(name: str, host: str, header: str,
                                                        value: str) -> None:
    assert inject(KEEP, vendor(name), secret_for(name), host) == [*KEEP, (header, value)]


@pytest.mark.parametrize("name, host", [
    ("openai", "api.openai.com.evil.com"),
    ("openai", "api.anthropic.com"),  # another vendor's host
    ("openai", "evil.example"),
    ("azure_openai", "openai.azure.com"),
    ("azure_openai", "myres.openai.azure.com.evil.com"),
])
def test_inject_refuses_a_host_the_key_is_not_bound_to(name: str, host: str) -> None:
    with pytest.raises(PermissionError, match="is not bound to host") as info:
        inject(KEEP, vendor(name), secret_for(name), host)
    assert REAL not in str(info.value)
    assert "egressguard/vendors/" in str(info.value)  # names the reference, not the value


def test_strip_then_inject_leaves_exactly_the_real_key() -> None:
    openai = vendor("openai")
    sent = [("Authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer other"),
            ("X-Api-Key", TOKEN), ("Proxy-Authorization", "Basic eDp5"), *KEEP]
    out = inject(strip(sent, openai), openai, secret_for("openai"), "api.openai.com")
    assert out == [*KEEP, ("Authorization", f"Bearer {REAL}")]
    assert TOKEN not in repr(out)


# -- the Secret type -------------------------------------------------------------------

@pytest.mark.parametrize("version, shown", [(4, "egressguard/vendors/openai@v4"),
                                            (None, "egressguard/vendors/openai")])
def test_secret_never_prints_its_value(version: int | None, shown: str) -> None:
    secret = secret_for("openai", version=version)
    texts = [repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]),
             repr({"s": secret}), str((secret,))]
    for text in texts:
        assert REAL not in text
        assert "redacted" in text
    assert str(secret.ref) == shown
    assert secret.reveal_for("api.openai.com") == REAL
    assert secret.fingerprint_bytes() == REAL.encode()


# -- scrubbing echoes of the key from responses ---------------------------------------

KEY = REAL.encode()
EVENT = b'data: {"choices":[{"delta":{"content":"your key is ' + KEY + b' ok"}}]}\n\n'
SCRUBBED = EVENT.replace(KEY, REDACTED)


def feed(scrubber: KeyScrubber, chunks: list[bytes]) -> list[bytes]:
    """What the scrubber emits for each chunk, then for the end-of-body marker."""
    return [scrubber(c) for c in chunks] + [scrubber(b"")]


@pytest.mark.parametrize("body, out", [
    (b"no key here", b"no key here"),
    (KEY, REDACTED),
    (b'{"echo":"' + KEY + b'","again":"' + KEY + KEY + b'"}',
     b'{"echo":"' + REDACTED + b'","again":"' + REDACTED + REDACTED + b'"}'),
    (KEY[:-1], KEY[:-1]),  # almost the key is not the key
    (b"", b""),
])
def test_scrub_whole_body(body: bytes, out: bytes) -> None:
    assert KeyScrubber([KEY]).scrub(body) == out


def test_scrub_several_keys_and_ignores_empty_ones() -> None:
    other = b"sk-ant-api03-" + b"Q" * 40
    scrubber = KeyScrubber([KEY, b"", other])
    assert scrubber.scrub(KEY + b" " + other) == REDACTED + b" " + REDACTED


def test_without_keys_chunks_pass_through_untouched() -> None:
    scrubber = KeyScrubber([b""])
    assert feed(scrubber, [b"data: sk-pr", b"oj-x\n\n"]) == [b"data: sk-pr", b"oj-x\n\n", b""]


def test_key_split_across_two_chunks_at_every_point() -> None:
    for i in range(1, len(EVENT)):
        out = feed(KeyScrubber([KEY]), [EVENT[:i], EVENT[i:]])
        assert b"".join(out) == SCRUBBED, f"split at {i}"


def test_key_split_across_three_chunks_at_every_pair_of_points() -> None:
    start = EVENT.index(KEY)
    # every pair of cuts that falls in or next to the key, plus cuts far from it
    points = range(start - 3, start + len(KEY) + 3)
    for i, j in itertools.combinations(points, 2):
        out = feed(KeyScrubber([KEY]), [EVENT[:i], EVENT[i:j], EVENT[j:]])
        assert b"".join(out) == SCRUBBED, f"splits at {i}, {j}"


def test_key_split_across_n_chunks() -> None:
    body = EVENT * 3
    expected = body.replace(KEY, REDACTED)
    # one byte at a time: every split point at once
    assert b"".join(feed(KeyScrubber([KEY]), [bytes([b]) for b in body])) == expected
    rng = random.Random(20240601)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(2, 40)))
        chunks = [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]
        assert b"".join(feed(KeyScrubber([KEY]), chunks)) == expected, cuts


def test_streamed_output_never_contains_a_key_prefix_that_becomes_a_key() -> None:
    # what went out before the last byte of the key arrived must not end in the key's start
    start = EVENT.index(KEY)
    for i in range(start + 1, start + len(KEY)):
        scrubber = KeyScrubber([KEY])
        first = scrubber(EVENT[:i])
        assert first == EVENT[:start], f"split at {i}"
        assert scrubber(EVENT[i:]) == SCRUBBED[start:]


@pytest.mark.parametrize("chunks, outputs", [
    # looks like the start of the key, then turns out not to be: emitted unchanged
    ([b"data: sk-proj-R3a", b"X and more\n\n"],
     [b"data: ", b"sk-proj-R3aX and more\n\n", b""]),
    ([b"data: s", b"k", b"-", b"x\n\n"], [b"data: ", b"", b"", b"sk-x\n\n", b""]),
    # the stream ends while a possible key start is held: it is flushed at the end
    ([b"data: sk-pr"], [b"data: ", b"sk-pr"]),
    # a held start that the next chunk completes into the key is replaced
    ([b"data: " + KEY[:10], KEY[10:] + b"\n\n"], [b"data: ", REDACTED + b"\n\n", b""]),
])
def test_text_that_merely_starts_like_a_key(chunks: list[bytes],
                                            outputs: list[bytes]) -> None:
    assert feed(KeyScrubber([KEY]), chunks) == outputs


def test_sse_events_are_never_held_back() -> None:
    scrubber = KeyScrubber([KEY])
    events = [b'event: message_start\ndata: {"type":"message_start"}\n\n',
              b'data: {"choices":[{"delta":{"content":"s"}}]}\n\n',
              b"data: " + KEY + b"\n\n",
              b": keep-alive comment\n\n",
              b"data: [DONE]\n\n"]
    for event in events:
        assert scrubber(event) == event.replace(KEY, REDACTED)
    assert scrubber(b"") == b""
