"""The mitmproxy master `egressguard run` drives: only the addons a keyless egress
proxy needs, and each hook called only on the addons that have it.

mitmproxy's `DumpMaster` loads 35 addons (flow saving, replay, local file mapping,
the mitm.it onboarding app, header and body rewriting, ...), and its AddonManager
calls every hook of every flow on every addon in order: one coroutine and one
`safecall` context per addon, per hook, and again for the `update` hook that follows
each flow hook, whether the addon has the hook or not. With egressguard's addons that
was about 2,300 calls per request, most of them doing nothing, and the largest single
cost of the pipeline (bench/RESULTS.md, "Dispatch"). Here:

- the addons are mitmproxy's core and networking ones and egressguard's: nothing
  that could replay, save or serve a flow is even loaded (less to attack, too);
- `HookIndex` remembers, per hook name, which addons (with their children) have that
  hook, and calls those only, in the same order, with the same error handling.
  The index is rebuilt whenever an addon is added, registered or removed (a script
  loader or egressguard's tracing adds children that way) and after every
  `configure`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    errorcheck,
    next_layer,
    proxyserver,
    tlsconfig,
)


def proxy_addons() -> list[Any]:
    """mitmproxy's addons egressguard runs on: options and commands (Core), refusing
    clients from public addresses unless allowed (Block), h2c (DisableH2C, besides
    Guard), the listeners and connections (Proxyserver, NextLayer, TlsConfig, DNS),
    and stopping at start-up on a configuration error (ErrorCheck)."""
    return [core.Core(), block.Block(), disable_h2c.DisableH2C(),
            proxyserver.Proxyserver(), dns_resolver.DnsResolver(), next_layer.NextLayer(),
            tlsconfig.TlsConfig(), errorcheck.ErrorCheck()]


class HookIndex(addonmanager.AddonManager):
    def __init__(self, owner: master.Master) -> None:
        super().__init__(owner)
        self._having: dict[str, list[Any]] = {}

    def register(self, addon: Any) -> Any:
        self._having.clear()
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        self._having.clear()
        super().remove(addon)

    def clear(self) -> None:
        self._having.clear()
        super().clear()

    def with_hook(self, name: str) -> Sequence[Any]:
        """The addons of the chain that have hook `name`, themselves or a child."""
        found = self._having.get(name)
        if found is None:
            found = self._having[name] = [
                a for a in self.chain
                if any(callable(getattr(x, name, None)) for x in addonmanager.traverse([a]))]
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        for addon in self.with_hook(event.name):
            try:
                with addonmanager.safecall():
                    await self.invoke_addon(addon, event)
            except exceptions.AddonHalt:
                return
        if event.name == "configure":  # an addon may have changed its children
            self._having.clear()

    def trigger(self, event: hooks.Hook) -> None:
        for addon in self.with_hook(event.name):
            try:
                with addonmanager.safecall():
                    self.invoke_addon_sync(addon, event)
            except exceptions.AddonHalt:
                return
        if event.name == "configure":
            self._having.clear()


class ProxyMaster(master.Master):
    """A master with `proxy_addons()` and a HookIndex, for `egressguard run`."""

    def __init__(self, opts: options.Options,
                 event_loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(opts, event_loop=event_loop)
        self.options.changed.disconnect(self.addons._configure_all)  # replaced, empty
        self.addons = HookIndex(self)
        self.addons.add(*proxy_addons())
