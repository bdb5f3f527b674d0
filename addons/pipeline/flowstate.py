"""What addons share about a flow: metadata keys, and refusing a flow.

State travels between addons only through `flow.metadata` under these keys, so each
addon can be read, tested and replaced on its own.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mitmproxy import http

from egressguard.core import logs, records
from egressguard.core.errors import EgressError, InternalFailure, vendor_error_body
from egressguard.core.vendors import Vendor

log = logging.getLogger(__name__)
Hook = TypeVar("Hook", bound=Callable[..., Any])

REQUEST_ID = "egressguard.request_id"
STARTED = "egressguard.started"  # (epoch seconds, perf_counter)
POLICY = "egressguard.policy"
DESTINATION = "egressguard.destination"
PRINCIPAL = "egressguard.principal"
REQUEST = "egressguard.request"
SECRET = "egressguard.secret"
USAGE = "egressguard.usage"
HIDE_STREAM_USAGE = "egressguard.hide_stream_usage"
REFUSAL = "egressguard.refusal"
ASK = "egressguard.ask"  # rules.Ask: the request in the terms rules match on
DECISION = "egressguard.decision"  # rules.Decision of an intercepted request
CLAMPS = "egressguard.clamps"  # {field: {"from": asked, "to": sent}}
LIMITS = "egressguard.limits"  # limit state, as recorded in the audit record
RESERVATION = "egressguard.reservation"  # limits reserved, settled when the flow ends
REDACTIONS = "egressguard.redactions"  # {entity: {action: count}}, for the audit record
REIDENTIFY = "egressguard.reidentify"  # (Reidentifier, json_output): pseudonyms to restore
ANSWER_MASK = "egressguard.answer_mask"  # answers.SecretMask: secrets masked in the answer
POOL = "egressguard.pool"  # {resolved path: SecretLocation} of the rule's key pool
POOL_PICK = "egressguard.pool_pick"  # which of them Inject picked
RELAY = "egressguard.relay"  # the relay's address: mitmproxy sends the request there
ATTEMPTS = "egressguard.attempts"  # the relay's attempts, for the audit record
OTHER_SECRETS = "egressguard.other_secrets"  # keys of attempts that did not answer
SERVED_BY = "egressguard.served_by"  # {vendor, model} when a fallback answered
CACHE = "egressguard.cache"  # {status: hit/miss/bypass, kind, similarity}
ROUTING = "egressguard.routing"  # {requested_model, model, by}
AUDITED = "egressguard.audited"
WEBSOCKET = "egressguard.websocket"  # realtime.Session of a WebSocket session, for its close record
SHUTDOWN_CUT = "egressguard.shutdown_cut"  # why shutdown cut the flow off (its record's error)

REQUEST_ID_HEADER = "x-egressguard-request-id"


@dataclass(frozen=True, slots=True)
class Destination:
    """The egress decision taken when the tunnel was requested.

    `host` is the name the agent asked for. Use it, not `flow.request.host`: once
    the upstream map has rerouted a connection, mitmproxy reports the mapped address
    as the host of later requests on it.
    """

    host: str
    port: int
    vendor: Vendor | None  # set when the host is a model vendor (intercepted)
    passthrough: bool = False
    # Where this tunnel's connections go: the operator's upstream-map target, or the
    # address `host` resolved to when it was checked at CONNECT (pinned, so a second
    # DNS answer cannot move it). None until UpstreamMap has routed the CONNECT.
    route: tuple[str, int] | None = None


def begin(flow: http.HTTPFlow) -> str:
    """Give the flow its request id and start time (once)."""
    rid = flow.metadata.get(REQUEST_ID)
    if rid is None:
        rid = flow.metadata[REQUEST_ID] = records.new_id()
        flow.metadata[STARTED] = (time.time(), time.perf_counter())
    return str(rid)


def refuse(flow: http.HTTPFlow, err: EgressError, vendor: Vendor | None = None) -> None:
    """Answer the flow ourselves with `err` in the vendor's error shape."""
    vendor = vendor or getattr(flow.metadata.get(DESTINATION), "vendor", None)
    headers = {"content-type": "application/json", REQUEST_ID_HEADER: begin(flow)}
    if err.status == 407:
        headers["proxy-authenticate"] = 'Basic realm="egressguard"'
    if (retry_after := getattr(err, "retry_after", None)) is not None:
        headers["retry-after"] = str(retry_after)
    flow.response = http.Response.make(
        err.status, vendor_error_body(err, vendor.error_shape if vendor else None), headers)
    flow.metadata[REFUSAL] = err


def is_live_request(flow: http.HTTPFlow) -> bool:
    """The guard every request hook starts with: nothing decided yet."""
    return flow.live and not flow.response and not flow.error


def fail_closed(hook: Hook) -> Hook:
    """Turn an unexpected exception in a flow hook into a refusal.

    mitmproxy logs a hook's exception and carries on, which for us would forward a
    request without its key swap, identity check or audit record. Instead the flow
    is answered with a 500 (or, once a streamed response has started, cut off).

    Lines logged while the hook runs carry the flow's request id (the id of its audit
    record): `logs.REQUEST_ID` is set around the call. mitmproxy runs each hook in a
    task of its own, so the value cannot leak into another flow's hooks, and tasks the
    hook starts (a background settle, a worker thread) inherit it.
    """

    def failed(flow: http.HTTPFlow) -> None:
        rid = begin(flow)
        log.exception("%s failed on request %s; refusing it", hook.__qualname__, rid)
        if flow.response is not None and flow.response.stream:
            flow.kill()
            return
        refuse(flow, InternalFailure(
            f"egressguard could not process this request and did not forward it "
            f"(request id {rid}); operators: see the proxy log", reason="internal_error"))

    if inspect.iscoroutinefunction(hook):
        @functools.wraps(hook)
        async def guarded_async(self: object, flow: http.HTTPFlow) -> None:
            token = logs.REQUEST_ID.set(flow.metadata.get(REQUEST_ID) or begin(flow))
            try:
                await hook(self, flow)
            except Exception:  # noqa: BLE001 - every failure must refuse, see above
                failed(flow)
            finally:
                logs.REQUEST_ID.reset(token)

        return guarded_async  # type: ignore[return-value]

    @functools.wraps(hook)
    def guarded(self: object, flow: http.HTTPFlow) -> None:
        token = logs.REQUEST_ID.set(flow.metadata.get(REQUEST_ID) or begin(flow))
        try:
            hook(self, flow)
        except Exception:  # noqa: BLE001 - every failure must refuse, see above
            failed(flow)
        finally:
            logs.REQUEST_ID.reset(token)

    return guarded  # type: ignore[return-value]
