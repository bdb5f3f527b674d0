"""Loads the policy file, reloads it when it changes or on SIGHUP, and stamps the
policy in force on every flow.

Each flow keeps the policy it started with, so a reload never changes the rules
halfway through a request. A reload is all or nothing: the new file is parsed and
checked in full, then swapped in with one assignment; an invalid file leaves the
last good policy in force, is logged as an error and leaves an audit record.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from egressguard.core import policy
from egressguard.core.yamlsource import ConfigError
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)


class PolicyLoader:
    def __init__(self) -> None:
        self.policy: policy.Policy | None = None
        self.path: Path | None = None
        self._seen: tuple[tuple[int, int, int] | None, ...] = ()
        self._watcher: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self.reloads = {"success": 0, "failure": 0}  # for metrics
        self.reload_failing = False  # the file on disk is invalid (the last good one rules)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_policy", str, "", "Policy file (YAML, version 1).")
        loader.add_option("egressguard_policy_poll", float, 1.0,
                          "Seconds between checks of the policy file for changes "
                          "(0: reload on SIGHUP only).")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_policy" in updated and ctx.options.egressguard_policy:
            path = Path(ctx.options.egressguard_policy)
            try:
                loaded = policy.load(path)
            except ConfigError as exc:
                raise exceptions.OptionsError(f"invalid policy {path}:\n{exc}") from None
            self.path = path
            self._seen = self._stat(loaded)
            self._swap(loaded)

    def running(self) -> None:
        if self.policy is None:
            log.error("no policy: pass --policy FILE (or --set egressguard_policy=FILE)")
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(
            self.reload("SIGHUP")))
        self._watcher = asyncio.ensure_future(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def reload(self, why: str) -> bool:
        """Load the file again; True if the new policy is now in force."""
        assert self.path is not None and self.policy is not None
        async with self._reloading:
            # stat before reading: a write that lands while we read is seen next poll
            before = self._stat(self.policy)
            try:  # parsing a large policy takes milliseconds: let the loop run meanwhile
                new = await asyncio.to_thread(policy.load, self.path)
            except ConfigError as exc:
                if self._stat(self.policy) != before:
                    return False  # caught mid-write: the next poll reads the finished file
                self._seen = before
                self.reloads["failure"] += 1
                self.reload_failing = True
                log.error("policy %s NOT reloaded (%s): the last good policy (sha256 %s) "
                          "stays in force. Problems:\n%s", self.path, why,
                          self.policy.digest[:12], exc)
                await self._audit(False, str(exc), _digest_of(self.path))
                return False
            self._seen = before
            self.reload_failing = False
            if _version(new) == _version(self.policy):
                return True
            what = "" if new.digest != self.policy.digest else "the price table changed, "
            self._swap(new)
            self.reloads["success"] += 1
            log.info("policy %s reloaded (%s%s): sha256 %s", self.path, what, why,
                     new.digest[:12])
            await self._audit(True, f"reloaded ({what}{why})", new.digest)
            return True

    def _swap(self, new: policy.Policy) -> None:
        for warning in new.warnings:
            log.warning("policy: %s", warning)
        self.policy = new

    async def _watch(self) -> None:
        while (interval := ctx.options.egressguard_policy_poll) > 0:
            await asyncio.sleep(interval)
            try:
                if self._stat(self.policy) != self._seen:
                    await self.reload("file changed")
            except Exception:  # noqa: BLE001 - the watcher must outlive any one reload
                self.reloads["failure"] += 1
                log.exception("policy reload failed; the last good policy stays in force")

    def _stat(self, loaded: policy.Policy | None) -> tuple[tuple[int, int, int] | None, ...]:
        """What identifies the versions of the policy file and the files it reads."""
        assert self.path is not None
        files = [self.path]
        if loaded is not None and loaded.prices is not None:
            files.append(Path(loaded.prices.source))
        return tuple(_identity(f) for f in files)

    async def _audit(self, loaded: bool, message: str, digest: str | None) -> None:
        audit = ctx.master.addons.get("audit")
        if audit is not None:
            await audit.policy_event(str(self.path), digest, loaded, message)

    @flowstate.fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._stamp(flow)

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._stamp(flow)

    def _stamp(self, flow: http.HTTPFlow) -> None:
        flowstate.begin(flow)
        flow.metadata[flowstate.POLICY] = self.policy


def _version(loaded: policy.Policy) -> tuple[str, str | None]:
    """What a policy in force is made of: its file and its price table."""
    return loaded.digest, loaded.prices.digest if loaded.prices is not None else None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a Kubernetes ConfigMap swap changes the inode
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
