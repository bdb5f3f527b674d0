"""The master `egressguard run` drives: its addons, and hooks dispatched only to the
addons that have them, with mitmproxy's order and error handling."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, options
from mitmproxy.test import tflow

from egressguard.tools.master import HookIndex, ProxyMaster, proxy_addons


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def request(self, flow: Any) -> None:
        self.calls.append(self.name)


class Silent:
    """No hooks at all: never called."""


class Parent:
    """No hook itself; its child has one (as a script loader's scripts)."""

    def __init__(self, child: object) -> None:
        self.addons = [child]


class Halting:
    def request(self, flow: Any) -> None:
        raise exceptions.AddonHalt


class Failing:
    def request(self, flow: Any) -> None:
        raise RuntimeError("boom")


def run(coro_fn: Any, addons: bool = False) -> Any:
    """`coro_fn(master)` on a ProxyMaster: with its addons, or none (dispatch alone)."""
    async def main() -> Any:
        m = ProxyMaster(options.Options())
        if not addons:
            m.addons.clear()
        return await coro_fn(m)
    return asyncio.run(main())


def request_hook() -> hooks.Hook:
    from mitmproxy.proxy.layers.http import HttpRequestHook
    return HttpRequestHook(tflow.tflow())


def test_hooks_reach_only_the_addons_that_have_them_in_order() -> None:
    calls: list[str] = []

    async def go(master: ProxyMaster) -> list[Any]:
        child = Recorder("child", calls)
        master.addons.add(Recorder("a", calls), Silent(), Parent(child), Recorder("b", calls))
        await master.addons.trigger_event(request_hook())
        return list(master.addons.with_hook("request"))

    having = run(go)
    assert calls == ["a", "child", "b"]
    assert [type(a).__name__ for a in having] == ["Recorder", "Parent", "Recorder"]


def test_the_index_follows_addons_added_and_removed() -> None:
    calls: list[str] = []

    async def go(master: ProxyMaster) -> None:
        first = Recorder("first", calls)
        master.addons.add(first)
        await master.addons.trigger_event(request_hook())
        master.addons.add(Recorder("later", calls))
        await master.addons.trigger_event(request_hook())
        master.addons.remove(first)
        await master.addons.trigger_event(request_hook())

    run(go)
    assert calls == ["first", "first", "later", "later"]


def test_a_child_added_at_configure_gets_hooks() -> None:
    calls: list[str] = []

    class Growing:  # as egressguard's tracing: a child only while an option is on
        def configure(self, updated: set[str]) -> None:
            if "grow" in updated:
                self.addons = [Recorder("grown", calls)]

    async def go(master: ProxyMaster) -> None:
        master.addons.add(Growing())
        await master.addons.trigger_event(request_hook())
        master.addons.trigger(hooks.ConfigureHook({"grow"}))
        await master.addons.trigger_event(request_hook())

    run(go)
    assert calls == ["grown"]


def test_halt_stops_the_chain_and_a_failure_does_not(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    async def go(master: ProxyMaster) -> None:
        master.addons.add(Recorder("a", calls), Failing(), Recorder("b", calls), Halting(),
                          Recorder("c", calls))
        with caplog.at_level(logging.ERROR):
            await master.addons.trigger_event(request_hook())

    run(go)
    assert calls == ["a", "b"]  # Failing logged and passed over; Halting stopped "c"
    assert "boom" in caplog.text


def test_nothing_that_saves_replays_or_serves_flows_is_loaded() -> None:
    async def go(master: ProxyMaster) -> tuple[set[str], HookIndex]:
        return {type(a).__name__ for a in master.addons.chain}, master.addons

    names, manager = run(go, addons=True)
    assert isinstance(manager, HookIndex)
    assert names == {type(a).__name__ for a in proxy_addons()}
    assert {"Proxyserver", "NextLayer", "TlsConfig", "Block", "ErrorCheck"} <= names
    assert not names & {"Save", "SaveHar", "ClientPlayback", "ServerPlayback", "MapLocal",
                        "MapRemote", "Onboarding", "ModifyBody", "ModifyHeaders",
                        "ScriptLoader", "Export"}
