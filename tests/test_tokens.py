"""Agent tokens (`egressguard.core.tokens`): minting, verifying, revoking, the key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson
import pytest

from egressguard.core import logs
from egressguard.core.errors import IdentityRequired
from egressguard.core.keyfiles import KeyFileExposed
from egressguard.core.tokens import (
    PREFIX,
    Principal,
    RevocationList,
    TokenAuthority,
    check_name,
    load_or_create_key,
    looks_like_token,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.0
TTL = 3600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(body: str, key: bytes = KEY) -> str:
    """`body` with a valid signature: lets a test reach the checks after the HMAC."""
    return f"{body}.{b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def issue(agent: str = "billing-bot", team: str | None = "finance",
          authority: TokenAuthority | None = None) -> tuple[str, Principal]:
    return (authority or TokenAuthority(KEY)).issue(agent, team, TTL, now=NOW)


def reason_of(authority: TokenAuthority, token: str, now: float = NOW) -> str:
    with pytest.raises(IdentityRequired) as info:
        authority.verify(token, now=now)
    assert info.value.status == 401
    return info.value.reason


# -- issue / verify -------------------------------------------------------------------

@pytest.mark.parametrize("agent, team", [("billing-bot", "finance"), ("a", None),
                                         ("Agent_1.v2", "team-x")])
def test_issue_then_verify_returns_the_principal(agent: str, team: str | None) -> None:
    authority = TokenAuthority(KEY)
    token, principal = authority.issue(agent, team, TTL, now=NOW)
    assert principal == Principal(agent, team, principal.token_id, int(NOW) + TTL)
    assert re.fullmatch(r"[0-9a-f]{16}", principal.token_id)
    assert authority.verify(token, now=NOW) == principal
    assert token.startswith(PREFIX) and looks_like_token(token)


def test_each_token_has_its_own_id() -> None:
    ids = {issue()[1].token_id for _ in range(50)}
    assert len(ids) == 50


def test_claims_are_readable_json_with_the_documented_fields() -> None:
    token, principal = issue()
    claims = orjson.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims == {"v": 1, "id": principal.token_id, "sub": "billing-bot",
                      "team": "finance", "iat": int(NOW), "exp": int(NOW) + TTL}


@pytest.mark.parametrize("offset, reason", [
    (-1, None),  # one second before expiry: valid
    (0, "token_expired"),  # at expiry: no longer valid
    (1, "token_expired"),
    (10 * 365 * 86400, "token_expired"),
])
def test_expiry(offset: int, reason: str | None) -> None:
    authority = TokenAuthority(KEY)
    token, principal = issue(authority=authority)
    at = principal.expires + offset
    if reason is None:
        assert authority.verify(token, now=at) == principal
    else:
        with pytest.raises(IdentityRequired) as info:
            authority.verify(token, now=at)
        assert info.value.reason == reason
        assert "billing-bot" in info.value.message and "token issue" in info.value.message


def _tamper_claims(token: str) -> str:
    _, claims, sig = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(claims + "=="))
    data["sub"] = "admin-bot"
    return f"{PREFIX}{b64(orjson.dumps(data))}.{sig}"


def _tamper_expiry(token: str) -> str:
    _, claims, sig = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(claims + "=="))
    data["exp"] += 10**9
    return f"{PREFIX}{b64(orjson.dumps(data))}.{sig}"


def _flip_signature_char(token: str) -> str:
    # a middle character: the last one carries padding bits that may not change the bytes
    body, _, sig = token.rpartition(".")
    i = len(sig) // 2
    return f"{body}.{sig[:i]}{'B' if sig[i] != 'B' else 'C'}{sig[i + 1:]}"


def _truncate_signature(token: str) -> str:
    return token[:-4]


def _swap_signature(token: str) -> str:
    other, _ = issue()
    return token.rpartition(".")[0] + "." + other.rpartition(".")[2]


@pytest.mark.parametrize("tamper", [_tamper_claims, _tamper_expiry, _flip_signature_char,
                                    _truncate_signature, _swap_signature])
def test_altered_token_is_invalid(tamper) -> None:  # type: ignore[no-untyped-def]
    token, _ = issue()
    assert reason_of(TokenAuthority(KEY), tamper(token)) == "token_invalid"


def test_token_from_another_installation_is_invalid() -> None:
    token, _ = issue(authority=TokenAuthority(OTHER_KEY))
    with pytest.raises(IdentityRequired) as info:
        TokenAuthority(KEY).verify(token, now=NOW)
    assert info.value.reason == "token_invalid"
    assert "another egressguard installation" in info.value.message


@pytest.mark.parametrize("token, reason", [
    ("", "token_malformed"),
    ("placeholder", "token_malformed"),
    ("sk-proj-abc", "token_malformed"),
    ("EGT1.abc.def", "token_malformed"),  # the prefix is case-sensitive
    ("egt1.abc", "token_malformed"),  # no signature part
    ("egt1.", "token_malformed"),
    ("egt1.a.b.c", "token_malformed"),  # one dot too many
    ("egt1." + "a" * 1100 + ".b", "token_malformed"),  # over the length limit
    (" egt1.abc.def", "token_malformed"),
    ("egt1.abc.def", "token_invalid"),  # well-formed, but not signed by us
    ("egt1..", "token_invalid"),
    ("egt1.abc.", "token_invalid"),
    ("egt1.abc.d\u00e9f", "token_invalid"),  # non-ASCII signature
    ("egt1.abc.a", "token_invalid"),  # not decodable as base64
    (signed("egt1." + b64(b"not json")), "token_invalid"),
    (signed("egt1." + b64(b"[1, 2]")), "token_invalid"),  # JSON, but not claims
    (signed("egt1.\u00e9"), "token_invalid"),  # signed, but claims not base64
])
def test_malformed_and_invalid_strings(token: str, reason: str) -> None:
    assert reason_of(TokenAuthority(KEY), token) == reason


@pytest.mark.parametrize("junk", ["!!!!", "~~~~", "*=*="])
def test_signature_with_junk_characters_is_invalid(junk: str) -> None:
    token, _ = issue()
    assert reason_of(TokenAuthority(KEY), token + junk) == "token_invalid"


def test_a_short_signing_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenAuthority(b"k" * 31)


@pytest.mark.parametrize("ttl", [0, -1])
def test_ttl_must_be_positive(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        TokenAuthority(KEY).issue("bot", None, ttl)


def test_repr_shows_no_key() -> None:
    authority = TokenAuthority(KEY)
    text = repr(authority) + str(authority) + repr([authority])
    assert "redacted" in text
    for form in (repr(KEY), KEY.hex(), base64.b64encode(KEY).decode(), b64(KEY)):
        assert form not in text


def test_token_characters_are_safe_in_a_proxy_url_userinfo() -> None:
    for _ in range(20):
        token, _ = issue()
        assert re.fullmatch(r"[A-Za-z0-9._-]+", token)  # RFC 3986 unreserved only
        assert quote(token, safe="") == token
        url = urlsplit(f"http://billing-bot:{token}@proxy:8080")
        assert (url.username, url.password, url.hostname, url.port) == (
            "billing-bot", token, "proxy", 8080)


# -- revocation -----------------------------------------------------------------------

def test_revoked_token_is_refused_and_others_still_pass(tmp_path: Path) -> None:
    revoked = RevocationList(tmp_path / "state" / "revoked-tokens")
    authority = TokenAuthority(KEY, revoked)
    token, principal = issue(authority=authority)
    other, other_principal = issue(authority=authority)
    assert authority.verify(token, now=NOW) == principal  # no file yet: nothing revoked

    revoked.add(principal.token_id, "laptop stolen")

    with pytest.raises(IdentityRequired) as info:
        authority.verify(token, now=NOW)
    assert info.value.reason == "token_revoked"
    assert principal.token_id in info.value.message
    assert authority.verify(other, now=NOW) == other_principal


def test_revocation_file_format(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_text("# revoked tokens\n\naaaa  # note with # inside\n  bbbb  \ncccc#x\n")
    revoked = RevocationList(path)
    assert [revoked.contains(i) for i in ("aaaa", "bbbb", "cccc", "dddd", "#")] == [
        True, True, True, False, False]


def test_revocation_written_by_another_process_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    revoked = RevocationList(path)
    assert not revoked.contains("aaaa")
    RevocationList(path).add("aaaa")  # e.g. `egressguard token revoke` from the CLI
    assert revoked.contains("aaaa")
    path.unlink()
    assert not revoked.contains("aaaa")


def test_revocation_is_seen_even_if_mtime_did_not_change(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_text("aaaa\n")
    revoked = RevocationList(path)
    assert revoked.contains("aaaa")
    before = path.stat()
    with open(path, "a") as f:
        f.write("bbbb\n")
    # what a coarse-grained timestamp does: the append lands in the same clock tick
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert revoked.contains("bbbb")


# -- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, ok", [
    ("a", True),
    ("billing-bot", True),
    ("Agent_1.v2", True),
    ("0day", True),
    ("x" * 64, True),
    ("", False),
    ("x" * 65, False),
    ("-bot", False),
    (".bot", False),
    ("_bot", False),
    ("my bot", False),
    ("team/bot", False),
    ("bot:1", False),  # ':' would split a proxy URL's userinfo
    ("bot@x", False),
    ("b\u00f6t", False),
    pytest.param("bot\n", False),
])
def test_check_name(name: str, ok: bool) -> None:
    if ok:
        assert check_name("agent", name) == name
    else:
        with pytest.raises(ValueError, match=r"agent name .* must be 1-64 of"):
            check_name("agent", name)


@pytest.mark.parametrize("agent, team, kind", [("bad name", None, "agent"),
                                               ("bot", "bad/team", "team")])
def test_issue_validates_names(agent: str, team: str | None, kind: str) -> None:
    with pytest.raises(ValueError, match=f"^{kind} name"):
        TokenAuthority(KEY).issue(agent, team, TTL)


# -- the signing key file ---------------------------------------------------------------

def test_load_or_create_key_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token-key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert base64.b64decode(path.read_text()) == key
    assert load_or_create_key(tmp_path / "other-key") != key


def test_a_token_survives_a_restart_with_the_same_key_file(tmp_path: Path) -> None:
    path = tmp_path / "token-key"
    token, principal = issue(authority=TokenAuthority(load_or_create_key(path)))
    assert TokenAuthority(load_or_create_key(path)).verify(token, now=NOW) == principal


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token-key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileExposed) as refused:
        load_or_create_key(path)
    assert str(refused.value) == (
        f"the token key {path} can be read by others (mode 644): whoever reads it can mint "
        f"agent tokens for any agent; run `chmod 600 {path}`")


def test_the_key_is_never_logged(tmp_path: Path) -> None:
    """Loading the key registers it with the log scrubber: a line quoting the file's
    contents shows the type instead."""
    path = tmp_path / "token-key"
    load_or_create_key(path)
    text = path.read_text().strip()
    assert logs.scrub(f"bad key {text}") == "bad key <TOKEN_KEY>"
