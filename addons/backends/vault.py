"""Real vendor keys from HashiCorp Vault (or OpenBao) KV v2, through hvac.

Reads run in a worker thread with a timeout, so the proxy's event loop never waits
on Vault. Keys are cached for `ttl` seconds (a rotated key is in use within that
time); concurrent requests for the same path share one read. Failures become
`SecretUnavailable` with a message that says what to fix and never a key value.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import hvac
import hvac.exceptions
import requests

from egressguard.core import logs
from egressguard.core.errors import SecretUnavailable
from egressguard.core.secret import Secret, SecretLocation, SecretRef
from egressguard.core.vendors import Vendor

log = logging.getLogger(__name__)

TOKEN_RENEW_AT = 2 / 3  # of a token's remaining TTL: renewed with a third still left
TOKEN_RETRY = 10.0  # seconds between tries while Vault does not answer


class SecretStore(Protocol):
    async def get(self, vendor: Vendor, where: SecretLocation) -> Secret: ...


# Reasons that say Vault itself did not answer, rather than answered "no".
DOWN_REASONS = frozenset({"vault_unreachable", "vault_timeout", "vault_sealed",
                          "vault_token_expired", "vault_login_failed"})


@dataclass
class StoreStats:
    """What the store has seen, for metrics and readiness. Updated on the event loop
    only (never from the worker threads that call Vault), so plain ints suffice."""

    cache_hits: int = 0
    cache_misses: int = 0  # keys not served from the cache (read, or joined a read)
    errors: dict[str, int] = field(default_factory=dict)  # failed Vault calls, by reason
    up: bool | None = None  # did Vault answer the last call; None: not asked yet
    down_reason: str | None = None
    last_answer: float = 0.0  # epoch seconds of Vault's last answer

    def outcome(self, reason: str | None) -> None:
        """One Vault call ended: None when it succeeded, else its error's reason."""
        if reason is not None:
            self.errors[reason] = self.errors.get(reason, 0) + 1
        self.up = reason not in DOWN_REASONS
        self.down_reason = None if self.up else reason
        if self.up:
            self.last_answer = time.time()


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    token: str | None = None
    role_id: str | None = None  # AppRole
    secret_id: str | None = None
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = 2.0

    def __repr__(self) -> str:
        return f"VaultConfig(addr={self.addr!r}, <credentials redacted>)"

    @classmethod
    def from_env(cls, timeout: float = 2.0) -> VaultConfig:
        env = os.environ
        addr = env.get("VAULT_ADDR")
        if not addr:
            raise SecretUnavailable("VAULT_ADDR is not set; point it at Vault or start "
                                    "with `egressguard run --local-vault`",
                                    reason="vault_unconfigured")
        logs.register_secret(env.get("VAULT_TOKEN"), "VAULT_TOKEN")
        logs.register_secret(env.get("VAULT_SECRET_ID"), "VAULT_SECRET_ID")
        return cls(addr=addr, token=env.get("VAULT_TOKEN"), role_id=env.get("VAULT_ROLE_ID"),
                   secret_id=env.get("VAULT_SECRET_ID"), namespace=env.get("VAULT_NAMESPACE"),
                   ca_cert=env.get("VAULT_CACERT"), timeout=timeout)


class VaultStore:
    def __init__(self, config: VaultConfig, ttl: float = 60.0) -> None:
        self.config = config
        self.ttl = ttl
        self._cache: dict[SecretLocation, tuple[Secret, float]] = {}
        self._inflight: dict[SecretLocation, asyncio.Future[Secret]] = {}  # one read each
        self._local = threading.local()
        self._login_lock = threading.Lock()
        self._token: str | None = config.token
        # AppRole: no token until the first login; a static token never expires here
        self._token_expires = 0.0 if config.role_id else float("inf")
        self._clients: list[hvac.Client] = []
        self.token_renewals = 0
        self.stats = StoreStats()

    async def get(self, vendor: Vendor, where: SecretLocation) -> Secret:
        hit = self._cache.get(where)
        if hit is not None and time.monotonic() - hit[1] < self.ttl:
            self.stats.cache_hits += 1
            return hit[0]
        self.stats.cache_misses += 1
        task = self._inflight.get(where)
        if task is None:
            task = self._inflight[where] = asyncio.ensure_future(self._fetch(vendor, where))
            task.add_done_callback(lambda t: self._fetched(where, t))
        return await asyncio.shield(task)

    async def _fetch(self, vendor: Vendor, where: SecretLocation) -> Secret:
        limit = self.config.timeout + 1.0
        try:
            secret = await asyncio.wait_for(asyncio.to_thread(self.read, vendor, where), limit)
        except TimeoutError:
            raise self._unavailable("vendor key", where, f"no answer from Vault within "
                                    f"{limit:.0f}s", "vault_timeout") from None
        self._cache[where] = (secret, time.monotonic())
        return secret

    def _fetched(self, where: SecretLocation, task: asyncio.Future[Secret]) -> None:
        del self._inflight[where]
        if not task.cancelled():
            # retrieved here too, in case every waiter went away
            if (err := task.exception()) is None or isinstance(err, SecretUnavailable):
                self.stats.outcome(err.reason if err else None)

    async def ping(self) -> None:
        """Ask Vault about our own token (lookup-self), for readiness; the outcome is
        in `stats`."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._token_lease, False),
                                   self.config.timeout + 1.0)
        except TimeoutError:
            self.stats.outcome("vault_timeout")
        except SecretUnavailable as err:
            self.stats.outcome(err.reason)
        else:
            self.stats.outcome(None)

    def read(self, vendor: Vendor, where: SecretLocation) -> Secret:
        """Blocking read of the key at `where` (called in a worker thread)."""
        value, version = self.read_value(where, f"store one with `egressguard secrets put "
                                                f"{vendor.name}`")
        return Secret(value, SecretRef(f"{where.mount}/{where.path}", version), vendor.hosts)

    def read_value(self, where: SecretLocation, store_hint: str, what: str = "vendor key"
                   ) -> tuple[str, int | None]:
        """Blocking read of one field of a KV v2 secret: (value, version); `what` names
        it in errors."""
        try:
            resp = self._client().secrets.kv.v2.read_secret_version(
                path=where.path, mount_point=where.mount, raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            raise self._unavailable(what, where, f"no key stored there; {store_hint}",
                                    "secret_missing") from None
        except hvac.exceptions.Forbidden:
            self._token_expires = 0.0  # AppRole token may have expired: log in again next time
            raise self._unavailable(what, where, "permission denied; grant the proxy's Vault "
                                    "token read access to it", "vault_forbidden") from None
        except requests.Timeout:
            raise self._unavailable(what, where, f"no answer from Vault at {self.config.addr} "
                                    f"within {self.config.timeout:g}s", "vault_timeout") from None
        except hvac.exceptions.VaultDown:
            raise self._unavailable(what, where, "Vault is sealed or in maintenance",
                                    "vault_sealed") from None
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            raise self._unavailable(what, where, f"Vault at {self.config.addr} did not answer "
                                    f"({type(exc).__name__})", "vault_unreachable") from None
        data = resp["data"]
        value = (data.get("data") or {}).get(where.field)
        if not isinstance(value, str) or not value:
            raise self._unavailable(what, where, f"the secret has no {where.field!r} field",
                                    "secret_missing")
        logs.register_secret(value, "VENDOR_KEY" if what == "vendor key" else "SECRET")
        return value, data.get("metadata", {}).get("version")

    async def keep_token_alive(self) -> None:
        """Renew a static token before it expires, for as long as Vault allows; warn
        about one that cannot be renewed while there is time to replace it. Runs for
        the proxy's life. AppRole tokens need none of this: a fresh login is made
        before the lease ends."""
        if self.config.role_id or not self._token:
            return
        renew = False
        while True:
            try:
                ttl, renewable = await asyncio.to_thread(self._token_lease, renew)
            except SecretUnavailable as err:
                if err.reason == "vault_token_expired":
                    log.critical("%s", err.message)
                    return
                log.error("cannot check the Vault token's lifetime: %s", err.message)
                await asyncio.sleep(TOKEN_RETRY)
                continue
            if ttl <= 0:
                return  # the token never expires
            if renew:
                self.token_renewals += 1
                log.info("renewed the Vault token: valid for %ds more", ttl)
            if not renewable:
                log.warning("the Vault token expires in %ds and cannot be renewed: give the "
                            "proxy a renewable token or an AppRole before then", ttl)
            renew = renewable
            await asyncio.sleep(max(ttl * TOKEN_RENEW_AT, 1.0))

    def _token_lease(self, renew: bool) -> tuple[int, bool]:
        """(seconds left, renewable) of the static token, renewing it first if asked."""
        try:
            client = self._client()
            if renew:
                auth = client.auth.token.renew_self()["auth"]
                return int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
            data = client.auth.token.lookup_self()["data"]
            if not data.get("expire_time"):
                return 0, False  # never expires (a root token, a token without TTL)
            return max(int(data.get("ttl") or 0), 1), bool(data.get("renewable"))
        except hvac.exceptions.Forbidden:
            raise SecretUnavailable(
                "the Vault token has expired or was revoked: every request needing a key "
                "is refused until the proxy is given a new one (VAULT_TOKEN, or AppRole)",
                reason="vault_token_expired") from None
        except (requests.RequestException, hvac.exceptions.VaultError) as exc:
            raise SecretUnavailable(f"Vault at {self.config.addr} did not answer "
                                    f"({type(exc).__name__})", reason="vault_unreachable") from None

    def write(self, where: SecretLocation, value: str) -> int:
        """Store a key (KV v2); returns the new version. For the CLI."""
        resp = self._client().secrets.kv.v2.create_or_update_secret(
            path=where.path, secret={where.field: value}, mount_point=where.mount)
        return int(resp["data"]["version"])

    def close(self) -> None:
        for client in self._clients:
            client.adapter.close()
        self._clients.clear()

    @staticmethod
    def _unavailable(what: str, where: SecretLocation, why: str, reason: str
                     ) -> SecretUnavailable:
        return SecretUnavailable(f"no {what} available from {where.mount}/{where.path}: "
                                 f"{why}", reason=reason)

    def _client(self) -> hvac.Client:
        """A client per worker thread (requests sessions are not thread-safe),
        logged in with the current token."""
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            session = requests.Session()
            # Vault is reached directly: an HTTP(S)_PROXY meant for agents (often this
            # very proxy) must never carry the Vault token.
            session.trust_env = False
            client = hvac.Client(url=self.config.addr, timeout=self.config.timeout,
                                 namespace=self.config.namespace, session=session,
                                 verify=self.config.ca_cert or True)
            self._local.client = client
            self._clients.append(client)
        client.token = self._current_token(client)
        return client

    def _current_token(self, client: hvac.Client) -> str | None:
        if not self.config.role_id:
            return self._token
        with self._login_lock:
            if time.monotonic() >= self._token_expires - 30:
                try:
                    auth = client.auth.approle.login(role_id=self.config.role_id,
                                                     secret_id=self.config.secret_id)["auth"]
                except (requests.RequestException, hvac.exceptions.VaultError) as exc:
                    raise SecretUnavailable(f"AppRole login to Vault at {self.config.addr} "
                                            f"failed ({type(exc).__name__})",
                                            reason="vault_login_failed") from None
                self._token = auth["client_token"]
                logs.register_secret(self._token, "VAULT_TOKEN")
                lease = auth.get("lease_duration") or 0
                self._token_expires = time.monotonic() + lease if lease else float("inf")
            return self._token
