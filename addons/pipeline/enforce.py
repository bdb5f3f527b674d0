"""The policy's rules, clamps and limits, applied to each intercepted request.

Before forwarding: decide (first matching rule, default deny), clamp `max_tokens`
if the rule says so, and reserve the request's estimated cost against every limit
that applies (429 with Retry-After when one is used up). When the flow ends: settle
the reservation with the usage the vendor reported, off the response's path.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from mitmproxy import ctx, exceptions, http

from egressguard.backends.counters import (
    Counters,
    CountersUnavailable,
    InProcessCounters,
    counters_from_url,
)
from egressguard.core import apis, limits
from egressguard.core.errors import (
    BadRequest,
    EgressError,
    LimitExceeded,
    PolicyDenied,
    RequestTooLarge,
)
from egressguard.core.policy import Policy
from egressguard.core.rules import Ask, Decision
from egressguard.core.usage import Usage
from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)


def ask_of(flow: http.HTTPFlow) -> Ask:
    """The request in the terms policy rules match on."""
    meta = flow.metadata
    dest, principal, info = meta[flowstate.DESTINATION], meta[flowstate.PRINCIPAL], \
        meta[flowstate.REQUEST]
    vendor = dest.vendor
    path = flow.request.path.split("?", 1)[0]
    endpoint = apis.endpoint(vendor, flow.request.method, path)
    return Ask(
        vendor=vendor.name, host=dest.host, path=path, agent=principal.agent,
        team=principal.team, method=flow.request.method, model=info.model,
        endpoint=endpoint, cap=endpoint.cap, stream=bool(info.stream),
        max_tokens=apis.max_tokens(vendor.api, endpoint, info.body),
        tools=apis.tool_names(vendor.api, endpoint, info.body),
        body_bytes=info.size)


def refusal(decision: Decision) -> EgressError:
    kind = {413: RequestTooLarge, 400: BadRequest}.get(decision.status, PolicyDenied)
    return kind(decision.message, reason=decision.reason)


class Enforce:
    def __init__(self, counters: Counters | None = None) -> None:
        self.counters: Counters = counters or InProcessCounters()
        self._settling: set[asyncio.Task[None]] = set()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_limits_store", str, "",
                          "Where limit counters live: empty for this process only, or "
                          "redis://HOST:PORT/DB (rediss:// for TLS) to share them.")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_limits_store" in updated:
            try:
                counters = counters_from_url(ctx.options.egressguard_limits_store)
            except ValueError as exc:
                raise exceptions.OptionsError(f"egressguard_limits_store: {exc}") from None
            self._close()
            self.counters = counters

    def done(self) -> None:
        self._close()

    def _close(self) -> None:
        """Let go of the counter store (a Redis connection pool, if any)."""
        try:
            asyncio.get_running_loop().create_task(self.counters.close())
        except RuntimeError:  # no loop left at shutdown: the process is ending anyway
            pass

    @flowstate.fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        policy: Policy = flow.metadata[flowstate.POLICY]
        ask = flow.metadata[flowstate.ASK] = ask_of(flow)
        decision = policy.decide(ask)
        flow.metadata[flowstate.DECISION] = decision
        if not decision.allowed:
            flowstate.refuse(flow, refusal(decision))
            return
        max_tokens = ask.max_tokens
        if decision.max_tokens is not None and isinstance(
                body := flow.metadata[flowstate.REQUEST].body, dict):
            api = flow.metadata[flowstate.DESTINATION].vendor.api
            apis.set_max_tokens(api, ask.endpoint, body, decision.max_tokens)
            flow.request.content = orjson.dumps(body)
            flow.metadata[flowstate.CLAMPS] = {"max_tokens": {"from": ask.max_tokens,
                                                              "to": decision.max_tokens}}
            max_tokens = decision.max_tokens
        await self._reserve(flow, policy, decision, ask, max_tokens)

    async def _reserve(self, flow: http.HTTPFlow, policy: Policy, decision: Decision,
                       ask: Ask, max_tokens: int | None) -> None:
        scopes = policy.limit_scopes(decision)
        if not scopes:
            return
        buckets = [b for key, spec in scopes for b in limits.buckets(key, spec)]
        price = policy.prices.price(ask.vendor, ask.model) \
            if policy.prices is not None and ask.model else None
        if price is None and any(b.limit.startswith("spend") for b in buckets):
            flowstate.refuse(flow, PolicyDenied(
                f"model {ask.model!r} of {ask.vendor} has no price in the policy's price "
                f"table, so its spend limit cannot be kept (policy rule {decision.rule_name!r}"
                "); operators: add it to the price table", reason="no_price"))
            return
        cost = limits.estimate(ask.body_bytes, max_tokens, price)
        try:
            result = await self.counters.reserve(buckets, cost, time.time())
        except CountersUnavailable as err:
            if policy.on_limits_unavailable == "deny":
                log.error("refusing a request: %s", err.message)
                flow.metadata[flowstate.LIMITS] = {"state": "unavailable"}
                flowstate.refuse(flow, err)
                return
            log.warning("limits not checked (on_limits_unavailable: allow): %s", err.message)
            flow.metadata[flowstate.LIMITS] = {"state": "unavailable_allowed"}
            return
        if isinstance(result, limits.Exceeded):
            flow.metadata[flowstate.LIMITS] = {"state": "exceeded", **result.as_record()}
            flowstate.refuse(flow, BadRequest(result.message, reason="over_limit_alone")
                             if result.too_large  # waiting would not help
                             else LimitExceeded(result.message, reason="limit_exceeded",
                                                retry_after=result.retry_after))
            return
        flow.metadata[flowstate.RESERVATION] = (result, price)
        flow.metadata[flowstate.LIMITS] = {"state": "reserved",
                                           "scopes": [key for key, _ in scopes],
                                           "estimate": cost.as_record()}

    @flowstate.fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    @flowstate.fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def _settle(self, flow: http.HTTPFlow) -> None:
        held = flow.metadata.pop(flowstate.RESERVATION, None)
        if held is None:
            return
        reservation, price = held
        usage: Usage | None = flow.metadata.get(flowstate.USAGE)
        if flowstate.REFUSAL in flow.metadata:  # refused after reserving: nothing was sent
            actual: limits.Cost | None = limits.Cost(1, 0, 0)
        else:
            actual = limits.settled(usage, price)
        if actual is None:
            return  # nothing reported: the estimate stands, which errs on the safe side
        task = asyncio.ensure_future(self._settle_quietly(reservation, actual))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_quietly(self, reservation: limits.Reservation, actual: limits.Cost) -> None:
        try:
            await self.counters.settle(reservation, actual)
        except CountersUnavailable as err:
            log.warning("a reservation was not settled, the estimate stays counted: %s",
                        err.message)
