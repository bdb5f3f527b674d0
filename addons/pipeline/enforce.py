"""The policy's rules, clamps and limits, applied to each intercepted request.

Before forwarding: decide (first matching rule, default deny), clamp `max_tokens`
if the rule says so, and reserve the request's estimated cost against every limit
that applies (429 with Retry-After when one is used up). A batch, or a batch file
being uploaded, has each of its requests decided and clamped as if sent alone
(`core.batches`); an OpenAI batch is created only from a file read that way. When the
flow ends: settle the reservation with the usage the vendor reported, off the
response's path.
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
from egressguard.core import apis, batches, forms, limits
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
# a batch file's requests as read at upload, until the vendor's answer names the file
_BATCH_FILE = "egressguard.batch_file"


def ask_of(flow: http.HTTPFlow) -> Ask:
    """The request in the terms policy rules match on."""
    meta = flow.metadata
    dest, principal, info = meta[flowstate.DESTINATION], meta[flowstate.PRINCIPAL], \
        meta[flowstate.REQUEST]
    vendor = dest.vendor
    path, endpoint = info.path, info.endpoint  # as the vendor routes it, classified once
    return Ask(
        vendor=vendor.name, host=dest.host, path=path, agent=principal.agent,
        team=principal.team, method=flow.request.method, model=info.model,
        endpoint=endpoint, cap=endpoint.cap, stream=bool(info.stream),
        max_tokens=apis.max_tokens(vendor.api, endpoint, info.body),
        tools=apis.tool_names(vendor.api, endpoint, info.body),
        body_bytes=info.size)


def refusal(decision: Decision, within: str = "") -> EgressError:
    """The error for a refused decision; `within`: which request of a batch it is about."""
    kind = {413: RequestTooLarge, 400: BadRequest}.get(decision.status, PolicyDenied)
    message = f"{within} of the batch: {decision.message}" if within else decision.message
    return kind(message, reason=decision.reason)


def _creates_openai_batch(ask: Ask) -> bool:
    """`POST …/batches` of OpenAI or Azure: its requests are in a file uploaded before."""
    return ask.endpoint == "batches" and ask.cap == apis.CAP_UNSEEN \
        and getattr(ask.endpoint, "api", "") in ("openai", "azure_openai")


class Enforce:
    def __init__(self, counters: Counters | None = None) -> None:
        self.counters: Counters = counters or InProcessCounters()
        self.batch_files = batches.GovernedFiles()
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
        """Let go of the counter store (a Redis connection, if any)."""
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
        openai_batch = _creates_openai_batch(ask)
        if openai_batch:
            ask.cap = apis.CAP_NONE  # its caps were governed in the file, checked below
        decision = policy.decide(ask)
        flow.metadata[flowstate.DECISION] = decision
        if not decision.allowed:
            flowstate.refuse(flow, refusal(decision))
            return
        info = flow.metadata[flowstate.REQUEST]
        if decision.model is not None and not self._route(flow, ask, decision):
            return
        groups = None
        if batches.is_container(ask.endpoint, ask.method):
            try:
                groups = self._batch_file(policy, ask, info.body) if openai_batch \
                    else self._govern_batch(flow, policy, ask, decision)
            except batches.BatchRefused as refused:
                flowstate.refuse(flow, refusal(refused.decision, refused.label))
                return
            except EgressError as err:
                flowstate.refuse(flow, err)
                return
        max_tokens = ask.max_tokens
        if decision.max_tokens is not None:
            if not isinstance(body := info.body, dict):
                flowstate.refuse(flow, BadRequest(
                    f"policy rule {decision.rule_name!r} caps max_tokens, and this request "
                    "has no JSON object body to set it in", reason="body_not_object"))
                return
            api = flow.metadata[flowstate.DESTINATION].vendor.api
            apis.set_max_tokens(api, ask.endpoint, body, decision.max_tokens)
            flow.request.content = orjson.dumps(body)
            flow.metadata[flowstate.CLAMPS] = {"max_tokens": {"from": ask.max_tokens,
                                                              "to": decision.max_tokens}}
            max_tokens = decision.max_tokens
        await self._reserve(flow, policy, decision, ask, max_tokens, groups)

    @staticmethod
    def _route(flow: http.HTTPFlow, ask: Ask, decision: Decision) -> bool:
        """Send the model the rule's route chose (the record keeps both); False if the
        request was refused because its model cannot be rewritten."""
        info = flow.metadata[flowstate.REQUEST]
        body = info.body
        if not isinstance(body, dict) or body.get("model") != ask.model:
            flowstate.refuse(flow, BadRequest(
                f"policy rule {decision.rule_name!r} routes model {ask.model!r} to "
                f"{decision.model!r}, and this request names its model in the URL, which "
                "egressguard does not rewrite; ask for the model directly",
                reason="route_unsupported"))
            return False
        flow.metadata[flowstate.ROUTING] = {"requested_model": ask.model,
                                            "model": decision.model,
                                            "by": list(decision.routed_by)}
        body["model"] = info.model = ask.model = decision.model
        flow.request.content = orjson.dumps(body)
        return True

    def _govern_batch(self, flow: http.HTTPFlow, policy: Policy, ask: Ask,
                      decision: Decision) -> list[batches.Group] | None:
        """Decide and clamp every request a batch (or a batch file upload) carries, and
        write the body back if a clamp changed it."""
        info = flow.metadata[flowstate.REQUEST]
        vendor = flow.metadata[flowstate.DESTINATION].vendor
        batch = batches.requests_of(vendor, ask.endpoint, ask.path, info.body, info.form)
        if batch is None:
            return None
        groups = batches.govern(vendor, ask, decision, batch, policy.decide)
        clamped = [g for g in groups if g.decision and g.decision.max_tokens is not None]
        if clamped:
            if batch.lines is None:
                flow.request.content = orjson.dumps(info.body)
            else:
                flow.request.content = forms.with_part(
                    flow.request.headers.get("content-type", ""), info.form, "file",
                    batch.file_content())
            widest = max(clamped, key=lambda g: g.ask.max_tokens or 0)
            flow.metadata[flowstate.CLAMPS] = {"max_tokens": {
                "from": widest.clamped_from, "to": widest.ask.max_tokens}}
        if batch.lines is not None:
            flow.metadata[_BATCH_FILE] = groups
        return groups

    def _batch_file(self, policy: Policy, ask: Ask, body: object) -> list[batches.Group]:
        """The requests of the file an OpenAI batch runs, decided again now."""
        file_id = body.get("input_file_id") if isinstance(body, dict) else None
        groups = self.batch_files.get(batches.FileKey(ask.vendor, ask.host, ask.agent,
                                                      file_id)) \
            if isinstance(file_id, str) else None
        if groups is None:
            raise PolicyDenied(
                f"batch input file {file_id!r} was not uploaded through egressguard by "
                f"agent {ask.agent!r} (or egressguard restarted since), so its requests "
                "were not checked; upload it again with POST …/files (purpose=batch)",
                reason="batch_file_unknown")
        batches.recheck(groups, policy.decide)
        return groups

    async def _reserve(self, flow: http.HTTPFlow, policy: Policy, decision: Decision,
                       ask: Ask, max_tokens: int | None,
                       groups: list[batches.Group] | None = None) -> None:
        scopes = policy.limit_scopes(decision)
        for group in groups or ():  # a batch counts against its requests' limits too
            assert group.decision is not None
            scopes += [s for s in policy.limit_scopes(group.decision) if s not in scopes]
        if not scopes:
            return
        buckets = [b for key, spec in scopes for b in limits.buckets(key, spec)]
        asked = [(g.ask.model, g) for g in groups] if groups else [(ask.model, None)]
        priced = [(model, self._price(policy, ask.vendor, model), g) for model, g in asked]
        unpriced = [model for model, price, _ in priced if price is None]
        if unpriced and any(b.limit.startswith("spend") for b in buckets):
            flowstate.refuse(flow, PolicyDenied(
                f"model {unpriced[0]!r} of {ask.vendor} has no price in the policy's price "
                f"table, so its spend limit cannot be kept (policy rule {decision.rule_name!r}"
                "); operators: add it to the price table", reason="no_price"))
            return
        if groups:
            price = None  # a batch reports no usage when created: its estimate stands
            cost = limits.estimate_batch([g.cost(p) for _, p, g in priced if g is not None])
        else:
            price = priced[0][1]
            cost = limits.estimate(ask.body_bytes, max_tokens, price, apis.choices(
                flow.metadata[flowstate.DESTINATION].vendor.api, ask.endpoint,
                flow.metadata[flowstate.REQUEST].body))
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

    @staticmethod
    def _price(policy: Policy, vendor: str, model: str | None) -> limits.Price | None:
        return policy.prices.price(vendor, model) if policy.prices is not None and model \
            else None

    def _remember_batch_file(self, flow: http.HTTPFlow) -> None:
        """A batch file the vendor stored: its id may now start batches."""
        groups = flow.metadata.pop(_BATCH_FILE, None)
        if groups is None or flow.response is None or not 200 <= flow.response.status_code < 300:
            return
        try:
            file_id = orjson.loads(flow.response.content or b"").get("id")
        except (orjson.JSONDecodeError, AttributeError, ValueError):
            file_id = None
        if not isinstance(file_id, str):
            log.warning("a batch file was uploaded and the vendor's answer names no file "
                        "id; batches from it will be refused")
            return
        ask: Ask = flow.metadata[flowstate.ASK]
        self.batch_files.add(batches.FileKey(ask.vendor, ask.host, ask.agent, file_id), groups)

    @flowstate.fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        self._remember_batch_file(flow)
        if flow.websocket is None:  # a WebSocket session settles when it ends
            self._settle(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)  # with the usage of every response of the session

    @flowstate.fail_closed
    def error(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def _settle(self, flow: http.HTTPFlow) -> None:
        held = flow.metadata.pop(flowstate.RESERVATION, None)
        if held is None:
            return
        reservation, price = held
        usage: Usage | None = flow.metadata.get(flowstate.USAGE)
        if flowstate.REFUSAL in flow.metadata or flow.metadata.get(
                flowstate.CACHE, {}).get("status") == "hit":  # nothing was sent: a request
            actual: limits.Cost | None = limits.Cost(1, 0, 0)  # counted, no tokens, no spend
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
