"""Loads the policy file and stamps the policy in force on every flow.

Each flow keeps the policy it started with, so a later reload never changes the
rules halfway through a request.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from egressguard.core import policy
from egressguard.core.yamlsource import ConfigError
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)


class PolicyLoader:
    def __init__(self) -> None:
        self.policy: policy.Policy | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_policy", str, "", "Policy file (YAML, version 1).")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_policy" in updated and ctx.options.egressguard_policy:
            path = Path(ctx.options.egressguard_policy)
            try:
                self.policy = policy.load(path)
            except ConfigError as exc:
                raise exceptions.OptionsError(f"invalid policy {path}:\n{exc}") from None
            log.info("policy loaded from %s", path)

    def running(self) -> None:
        if self.policy is None:
            log.error("no policy: pass --policy FILE (or --set egressguard_policy=FILE)")

    @flowstate.fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._stamp(flow)

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._stamp(flow)

    def _stamp(self, flow: http.HTTPFlow) -> None:
        flowstate.begin(flow)
        flow.metadata[flowstate.POLICY] = self.policy
