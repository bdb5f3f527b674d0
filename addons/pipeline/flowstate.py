"""What addons share about a flow: metadata keys, and refusing a flow.

State travels between addons only through `flow.metadata` under these keys, so each
addon can be read, tested and replaced on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mitmproxy import http

from egressguard.core import records
from egressguard.core.errors import EgressError, vendor_error_body
from egressguard.core.vendors import Vendor

REQUEST_ID = "egressguard.request_id"
STARTED = "egressguard.started"  # (epoch seconds, perf_counter)
POLICY = "egressguard.policy"
DESTINATION = "egressguard.destination"
PRINCIPAL = "egressguard.principal"
REQUEST = "egressguard.request"
SECRET = "egressguard.secret"
USAGE = "egressguard.usage"
REFUSAL = "egressguard.refusal"
AUDITED = "egressguard.audited"

REQUEST_ID_HEADER = "x-egressguard-request-id"


@dataclass(frozen=True, slots=True)
class Destination:
    """The egress decision taken when the tunnel was requested."""

    host: str
    port: int
    vendor: Vendor | None  # set when the host is a model vendor (intercepted)
    passthrough: bool = False


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
    flow.response = http.Response.make(
        err.status, vendor_error_body(err, vendor.error_shape if vendor else None), headers)
    flow.metadata[REFUSAL] = err


def is_live_request(flow: http.HTTPFlow) -> bool:
    """The guard every request hook starts with: nothing decided yet."""
    return flow.live and not flow.response and not flow.error
