"""Agent tokens: what an agent holds instead of a vendor key.

Format: ``egt1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>``. The claims name
the agent, its team, a random id (for revocation) and an expiry. The same string
works as `Proxy-Authorization` password and as the placeholder API key, and its
characters are safe in a proxy URL's userinfo.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from egressguard.core import keyfiles, logs
from egressguard.core.errors import IdentityRequired

PREFIX = "egt1."
TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_TOKEN = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. Never holds the token itself."""

    agent: str
    team: str | None
    token_id: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict base64url: one canonical spelling per value, so tokens are not malleable."""
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX)


def claims_id(token: str) -> str:
    """The id a token claims, without verifying it (for revoking a dead token)."""
    try:
        claims = orjson.loads(_unb64(token[len(PREFIX):].split(".", 1)[0]))
        return str(claims["id"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return ""


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must be 1-64 of A-Z a-z 0-9 . _ - "
                         "and start with a letter or digit")
    return name


class TokenAuthority:
    """Mints and verifies agent tokens with one HMAC key."""

    _CACHE_SIZE = 4096

    def __init__(self, key: bytes, revoked: RevocationList | None = None) -> None:
        if len(key) < 32:
            raise ValueError("token signing key must be at least 32 bytes")
        self._key = key
        self._revoked = revoked
        # Tokens whose signature checked out: agents send the same token on every
        # request, so the HMAC and decoding run once per token, while expiry and
        # revocation are still checked every time.
        self._verified: dict[str, Principal] = {}

    def __repr__(self) -> str:
        return "TokenAuthority(<key redacted>)"

    def issue(self, agent: str, team: str | None, ttl_seconds: int,
              now: float | None = None) -> tuple[str, Principal]:
        check_name("agent", agent)
        if team is not None:
            check_name("team", team)
        if ttl_seconds <= 0:
            raise ValueError("ttl must be positive")
        issued = int(time.time() if now is None else now)
        claims = {"v": 1, "id": secrets.token_hex(8), "sub": agent, "team": team,
                  "iat": issued, "exp": issued + ttl_seconds}
        body = PREFIX + _b64(orjson.dumps(claims))
        token = f"{body}.{_b64(self._sign(body))}"
        return token, Principal(agent, team, str(claims["id"]), int(claims["exp"]))

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The principal a token names; IdentityRequired saying what to fix otherwise."""
        principal = self._verified.get(token) or self._check_signature(token)
        if (time.time() if now is None else now) >= principal.expires:
            raise IdentityRequired(
                f"agent token for {principal.agent!r} has expired; mint a new one with "
                f"`egressguard token issue --agent {principal.agent}`", reason="token_expired")
        if self._revoked is not None and self._revoked.contains(principal.token_id):
            raise IdentityRequired(
                f"agent token {principal.token_id} for {principal.agent!r} has been revoked",
                reason="token_revoked")
        return principal

    def _check_signature(self, token: str) -> Principal:
        if not token.startswith(PREFIX) or len(token) > _MAX_TOKEN or token.count(".") != 2:
            raise IdentityRequired(
                "not an egressguard agent token; mint one with "
                "`egressguard token issue --agent NAME`", reason="token_malformed")
        body, _, sig = token.rpartition(".")
        try:
            valid = hmac.compare_digest(_unb64(sig), self._sign(body))
            claims = orjson.loads(_unb64(body[len(PREFIX):])) if valid else None
        except (ValueError, orjson.JSONDecodeError):
            valid, claims = False, None
        if not valid or not isinstance(claims, dict):
            raise IdentityRequired(
                "agent token signature is invalid (issued by another egressguard "
                "installation, or altered); mint a new one with `egressguard token issue`",
                reason="token_invalid")
        principal = Principal(claims["sub"], claims.get("team"), claims["id"], claims["exp"])
        if len(self._verified) >= self._CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # oldest first
        self._verified[token] = principal
        return principal

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


class RevocationList:
    """Revoked token ids, one per line in a file (`#` comments allowed).

    Re-read when the file changes. A revocation takes effect on the next request:
    the check is one stat() (about a microsecond).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._path = os.fspath(path)  # os.stat on a str: a third of Path.stat's cost
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode)
        self._ids: frozenset[str] = frozenset()

    def contains(self, token_id: str) -> bool:
        self._reload()
        return token_id in self._ids

    def add(self, token_id: str, note: str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(f"{token_id}{'  # ' + note if note else ''}\n")

    def _reload(self) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._ids, self._seen = frozenset(), None
            return
        # size too: an append within one timestamp tick leaves mtime unchanged
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            lines = self.path.read_text().splitlines()
            self._ids = frozenset(s for line in lines if (s := line.split("#")[0].strip()))
            self._seen = seen


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key at `path` (base64), created 0600 with 32 random bytes if absent.

    A key file others can read or write is refused (KeyFileExposed): whoever reads it
    can mint tokens for any agent."""
    try:
        text = keyfiles.read_private(path, "token key", _KEY_EXPOSED)
    except FileNotFoundError:
        encoded = base64.b64encode(secrets.token_bytes(32))
        # False: another process created it first; use theirs
        text = encoded + b"\n" if keyfiles.create_private(path, encoded + b"\n") else \
            keyfiles.read_private(path, "token key", _KEY_EXPOSED)
    logs.register_secret(text.strip().decode("ascii", "replace"), "TOKEN_KEY")
    return base64.b64decode(text.strip())


_KEY_EXPOSED = "whoever reads it can mint agent tokens for any agent"
