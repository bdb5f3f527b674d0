"""The credential swap: strip everything the agent sent as a credential, add the real key.

Runs last before the request leaves. No key obtainable means no forwarding: the
agent gets a 503 in its vendor's error shape.
"""

from __future__ import annotations

import asyncio
import logging
import math

from mitmproxy import ctx, exceptions, http

from egressguard.backends.vault import SecretStore, VaultConfig, VaultStore
from egressguard.core import credentials
from egressguard.core.errors import LimitExceeded, SecretUnavailable
from egressguard.core.keypool import KeyPools
from egressguard.core.rules import Rule
from egressguard.core.secret import SecretLocation
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)

# mitmproxy options that would write the real keys this addon injects somewhere else.
_KEY_LEAKING_OPTIONS = (
    ("save_stream_file", bool, "saved flows would contain the real vendor keys"),
    ("flow_detail", lambda level: level >= 2,
     "it prints request headers, which carry the real vendor keys (use 0 or 1)"),
)


class Inject:
    def __init__(self, store: SecretStore | None = None) -> None:
        self.store = store
        self.pools = KeyPools()  # what the vendors said of each pooled key
        self._token_keeper: asyncio.Future[None] | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_secret_ttl", float, 60.0,
                          "Seconds a vendor key read from Vault is reused before re-reading.")
        loader.add_option("egressguard_vault_timeout", float, 2.0,
                          "Seconds to wait for Vault before answering 503.")

    def configure(self, updated: set[str]) -> None:
        for option, unsafe, why in _KEY_LEAKING_OPTIONS:
            if option in updated and option in ctx.options and unsafe(getattr(ctx.options, option)):
                raise exceptions.OptionsError(
                    f"egressguard refuses {option}={getattr(ctx.options, option)!r}: {why}")
        if {"egressguard_secret_ttl", "egressguard_vault_timeout"} & updated:
            try:
                config = VaultConfig.from_env(ctx.options.egressguard_vault_timeout)
            except SecretUnavailable as err:
                raise exceptions.OptionsError(err.message) from None
            running = self._token_keeper is not None
            self.done()
            self.store = VaultStore(config, ttl=ctx.options.egressguard_secret_ttl)
            if running:
                self.running()

    def running(self) -> None:
        if isinstance(self.store, VaultStore):
            self._token_keeper = asyncio.ensure_future(self.store.keep_token_alive())

    def done(self) -> None:
        if self._token_keeper is not None:
            self._token_keeper.cancel()
            self._token_keeper = None
        if isinstance(self.store, VaultStore):
            self.store.close()

    def _location(self, flow: http.HTTPFlow, vendor: str) -> SecretLocation | None:
        """The rule's own key location, a pool's next usable key (core/keypool.py), or
        the policy's `secrets:` default. None: every key of the pool rests (refused
        here unless the rule has a fallback to go to)."""
        decision = flow.metadata[flowstate.DECISION]
        policy = flow.metadata[flowstate.POLICY]
        rule: Rule | None = decision.rule
        pool = rule.resilience.pool if rule is not None else None
        if rule is None or pool is None or len(pool.keys) < 2:
            template = (pool.keys[0] if pool else rule.secret) if rule else None
            return policy.secrets.location_for(vendor, decision.agent, decision.team, template)
        locations = {where.path: where for where in (
            policy.secrets.location_for(vendor, decision.agent, decision.team, template)
            for template in pool.keys)}
        flow.metadata[flowstate.POOL] = locations
        self.pools.reset_for(policy.digest)
        path = self.pools.pick(rule.name, list(locations), pool.pick)
        if path is None and not rule.resilience.fallback:
            wait = self.pools.rests_for(list(locations))
            flowstate.refuse(flow, LimitExceeded(
                f"every key of policy rule {rule.name!r}'s pool is resting after the "
                f"vendor's 429s" if wait is not None else f"every key of policy rule "
                f"{rule.name!r}'s pool was refused by the vendor (operators: see the proxy "
                "log)", reason="key_pool_exhausted", retry_after=math.ceil(wait or 60)))
        if path is None:
            return None
        flow.metadata[flowstate.POOL_PICK] = path
        return locations[path]

    @flowstate.fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        assert self.store is not None
        dest = flow.metadata[flowstate.DESTINATION]
        vendor = dest.vendor
        where = self._location(flow, vendor.name)
        if flow.response is not None:
            return
        secret = None
        try:
            if where is not None:
                secret = await self.store.get(vendor, where)
        except SecretUnavailable as err:
            log.warning("refusing %s request: %s", vendor.name, err.message)
            flowstate.refuse(flow, err)
            return
        request = flow.request
        sent_headers = list(request.headers.items(multi=True))
        query = list(request.query.items(multi=True))
        presented = credentials.presented(sent_headers, query, vendor)
        if credentials.needs_query_strip(query, vendor, presented):
            request.query = credentials.strip_query(query, vendor, presented)
        headers = credentials.strip(sent_headers, vendor, presented)
        if secret is not None:  # None: the relay goes straight to the rule's fallback
            headers = credentials.inject(headers, vendor, secret, dest.host)  # not
            # request.host: see Destination
        # mitmproxy decodes header bytes with surrogateescape: encode them back the same
        # way, so no byte sequence an agent sends can make the swap fail.
        request.headers = http.Headers(
            [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
             for k, v in headers])
        if secret is not None:
            flow.metadata[flowstate.SECRET] = secret
