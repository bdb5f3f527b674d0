"""How many connections one agent may hold open through the proxy at once.

A connection counts for the agent it is first identified as (by Proxy-Authorization
at CONNECT, or by the token its first request carries) until it closes. Past
`egressguard_max_agent_connections` a new connection is refused with 429 and
Retry-After, so one runaway or compromised agent cannot take every socket and
file descriptor the proxy has. One dict entry per agent: the check is a lookup.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping

from mitmproxy import connection, ctx, exceptions, http

from egressguard.core.errors import LimitExceeded
from egressguard.pipeline import flowstate

DEFAULT_CAP = 256


class AgentConnections:
    def __init__(self) -> None:
        self.cap = DEFAULT_CAP
        self.open: dict[str, int] = {}  # agent -> connections counted for it
        self.owner: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_max_agent_connections", int, DEFAULT_CAP,
                          "Connections one agent may have open at once (429 past it); "
                          "0: no limit.")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_max_agent_connections" in updated:
            cap = ctx.options.egressguard_max_agent_connections
            if cap < 0:
                raise exceptions.OptionsError(
                    f"egressguard_max_agent_connections must be 0 or more, not {cap}")
            self.cap = cap

    @flowstate.fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if not flow.response:
            self._admit(flow)

    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flowstate.is_live_request(flow):
            self._admit(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        agent = self.owner.pop(client, None)
        if agent is not None:
            left = self.open[agent] - 1
            if left:
                self.open[agent] = left
            else:
                del self.open[agent]

    def _admit(self, flow: http.HTTPFlow) -> None:
        principal = flow.metadata.get(flowstate.PRINCIPAL)
        if principal is None or flow.client_conn in self.owner:
            return
        agent = principal.agent
        held = self.open.get(agent, 0)
        if self.cap and held >= self.cap:
            flowstate.refuse(flow, LimitExceeded(
                f"agent {agent!r} already has {held} connections open through egressguard, "
                f"the most it allows (egressguard_max_agent_connections); reuse connections "
                "(keep-alive, HTTP/2) or close idle ones", reason="too_many_connections",
                retry_after=1))
            return
        self.open[agent] = held + 1
        self.owner[flow.client_conn] = agent
