"""Who is calling: the agent token, from Proxy-Authorization or as the placeholder key.

At CONNECT, a `Proxy-Authorization: Basic NAME:TOKEN` identifies the whole tunnel
(required for pass-through hosts, which carry no inspectable requests). Inside a
tunnel, the token may instead be the API key the agent's SDK sends. What the agent
sends must not be a real vendor key; such a request is refused and audited.

Guessing tokens is throttled per client address (`throttle.FailureTable`): past
`egressguard_auth_failures` failed checks in `egressguard_auth_window` seconds, every
token from that address is refused with 429 and Retry-After, unchecked.
"""

from __future__ import annotations

import base64
import binascii
import logging
import weakref
from collections.abc import MutableMapping
from pathlib import Path

from mitmproxy import connection, ctx, exceptions, http

from egressguard.core import credentials, tokens
from egressguard.core.errors import (
    CredentialRefused,
    EgressError,
    IdentityRequired,
    LimitExceeded,
    ProxyIdentityRequired,
)
from egressguard.core.throttle import FailureTable
from egressguard.core.tokens import Principal, TokenAuthority
from egressguard.core.vendors import Vendor, catalogue
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)

NO_IDENTITY = (
    "no agent identity: use your egressguard token as the API key, or put it in the "
    "proxy URL (HTTPS_PROXY=http://AGENT:TOKEN@proxy:8080); mint one with "
    "`egressguard token issue --agent NAME`")


class Identity:
    def __init__(self) -> None:
        self.authority: TokenAuthority | None = None
        # The proxy-authenticated token of each tunnel (and who it named), verified
        # again on every request so expiry and revocation end an open tunnel too.
        self.tunnels: MutableMapping[connection.Client, tuple[str, Principal]] = (
            weakref.WeakKeyDictionary())
        self.failures = FailureTable(0, 0.0)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_token_key", str, "",
                          "File holding the HMAC key agent tokens are signed with.")
        loader.add_option("egressguard_revoked", str, "",
                          "File of revoked token ids, one per line.")
        loader.add_option("egressguard_auth_failures", int, 10,
                          "Failed token checks from one client address (IPv6: per /64) "
                          "after which its tokens are refused (429) until the window "
                          "ends; 0: no limit.")
        loader.add_option("egressguard_auth_window", float, 60.0,
                          "Seconds of the window egressguard_auth_failures counts in.")

    def configure(self, updated: set[str]) -> None:
        key_file, revoked_file = ctx.options.egressguard_token_key, ctx.options.egressguard_revoked
        if {"egressguard_token_key", "egressguard_revoked"} & updated and key_file:
            try:
                key = tokens.load_or_create_key(Path(key_file))
                revoked = tokens.RevocationList(Path(revoked_file)) if revoked_file else None
                self.authority = TokenAuthority(key, revoked)
            except (OSError, ValueError) as exc:
                raise exceptions.OptionsError(f"cannot load the token key: {exc}") from None
        if {"egressguard_auth_failures", "egressguard_auth_window"} & updated:
            limit, window = ctx.options.egressguard_auth_failures, \
                ctx.options.egressguard_auth_window
            if limit < 0 or (limit and window <= 0):
                raise exceptions.OptionsError(
                    f"egressguard_auth_failures ({limit}) must be 0 or more and "
                    f"egressguard_auth_window ({window}) more than 0 seconds")
            self.failures = FailureTable(limit, window)

    def running(self) -> None:
        if self.authority is None:
            log.error("no token key: set egressguard_token_key to the key file")

    @flowstate.fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        try:
            authenticated = self._from_proxy_auth(flow)
        except IdentityRequired as err:
            flowstate.refuse(flow, ProxyIdentityRequired(err.message, reason=err.reason))
            return
        except LimitExceeded as err:
            flowstate.refuse(flow, err)
            return
        dest = flow.metadata[flowstate.DESTINATION]
        if authenticated is None and dest.passthrough:
            flowstate.refuse(flow, ProxyIdentityRequired(
                f"{dest.host} is a pass-through host: the proxy URL must carry the agent "
                "token (HTTPS_PROXY=http://AGENT:TOKEN@proxy:8080)", reason="identity_missing"))
            return
        if authenticated is not None:
            self.tunnels[flow.client_conn] = authenticated
            flow.metadata[flowstate.PRINCIPAL] = authenticated[1]

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        vendor = flow.metadata[flowstate.DESTINATION].vendor
        try:
            flow.metadata[flowstate.PRINCIPAL] = self._identify(flow, vendor)
        except EgressError as err:
            if tunnel := self.tunnels.get(flow.client_conn):
                flow.metadata[flowstate.PRINCIPAL] = tunnel[1]  # so the refusal names it
            flowstate.refuse(flow, err)

    def _identify(self, flow: http.HTTPFlow, vendor: Vendor) -> Principal:
        assert self.authority is not None
        tunnel = self.tunnels.get(flow.client_conn)
        principal = self._verify(flow, tunnel[0]) if tunnel else None
        sent = credentials.presented(flow.request.headers.items(multi=True),
                                     flow.request.query.items(multi=True), vendor)
        for value in sent:
            if tokens.looks_like_token(value):
                found = self._verify(flow, value)
                if principal is not None and found.agent != principal.agent:
                    raise IdentityRequired(
                        f"the API key names agent {found.agent!r} but the proxy credentials "
                        f"name {principal.agent!r}; use one agent's token",
                        reason="identity_conflict")
                principal = found
            elif owner := catalogue().looks_like_real_key(value):
                raise CredentialRefused(
                    f"the request carries what looks like a real {owner} API key; agents "
                    "must send their egressguard token instead (the proxy adds the real "
                    "key). Rotate the exposed key.", reason="real_key_presented")
        if principal is None:
            raise IdentityRequired(NO_IDENTITY, reason="identity_missing")
        return principal

    def _from_proxy_auth(self, flow: http.HTTPFlow) -> tuple[str, Principal] | None:
        assert self.authority is not None
        value = flow.request.headers.pop("proxy-authorization", None)
        if value is None:
            return None
        scheme, _, encoded = value.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if scheme.lower() != "basic" or not (user or password):
            raise IdentityRequired("Proxy-Authorization must be Basic AGENT:TOKEN",
                                   reason="proxy_auth_malformed")
        token = password if tokens.looks_like_token(password) else user
        principal = self._verify(flow, token)
        if user and user != token and user != principal.agent:
            raise IdentityRequired(
                f"proxy user {user!r} does not match the token's agent {principal.agent!r}",
                reason="identity_conflict")
        return token, principal

    def _verify(self, flow: http.HTTPFlow, token: str) -> Principal:
        """`authority.verify`, unless the client has failed too often: then a 429
        without looking at the token. Each failed check counts against the client."""
        assert self.authority is not None
        address = flow.client_conn.peername[0] if flow.client_conn.peername else ""
        if wait := self.failures.blocked(address):
            raise LimitExceeded(
                f"too many failed token checks from {address}; tokens from it are refused "
                f"for {wait}s more. Check that the agent uses a current egressguard token.",
                reason="auth_throttled", retry_after=wait)
        try:
            return self.authority.verify(token)
        except IdentityRequired:
            self.failures.fail(address)
            raise
