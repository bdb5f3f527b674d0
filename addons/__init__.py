"""egressguard: keyless egress proxy for AI agents, built as mitmproxy addons.

`addons` is the pipeline: mitmproxy calls each hook on these in this order. Usable
directly as `mitmdump -s addons/__init__.py`; `egressguard run` does the same with
options set from its flags. The list is built on first use: it imports mitmproxy
(most of a second), which the command-line tools that never proxy do not need.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "addons":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from egressguard.pipeline.audit import Audit
    from egressguard.pipeline.connections import AgentConnections
    from egressguard.pipeline.connlogs import ConnectionLogs
    from egressguard.pipeline.egress import Egress
    from egressguard.pipeline.enforce import Enforce
    from egressguard.pipeline.guard import Guard
    from egressguard.pipeline.identity import Identity
    from egressguard.pipeline.inject import Inject
    from egressguard.pipeline.metrics import Metrics
    from egressguard.pipeline.policyload import PolicyLoader
    from egressguard.pipeline.redact import Redact
    from egressguard.pipeline.relay import Relay
    from egressguard.pipeline.response import ResponseWatch
    from egressguard.pipeline.shutdown import Shutdown
    from egressguard.pipeline.tracing import Tracing
    from egressguard.pipeline.upstream import UpstreamMap
    from egressguard.pipeline.vendor import VendorRequest
    from egressguard.pipeline.websocket import Realtime, UpgradeCredentials

    global addons
    addons = [
        PolicyLoader(),  # stamps the policy in force on each flow
        ConnectionLogs(),  # mitmproxy's lines about a connection name its request id
        Egress(),  # CONNECT target, SNI and Host: intercept, pass through, or 403
        Guard(),  # limits, timeouts, h2c and HTTP/2 resets: before anything costs work
        UpgradeCredentials(),  # a WebSocket's key subprotocol, presented where Identity reads
        Identity(),  # agent token -> Principal; real keys sent by agents refused
        AgentConnections(),  # connections open per agent, capped
        VendorRequest(),  # model and stream flag from the request
        Realtime(),  # a session's model from its URL; then every frame of it redacted
        # before Enforce: its `response` reads the usage this one finds
        ResponseWatch(),  # SSE streamed unbuffered; usage read; key echoes scrubbed
        Enforce(),  # policy rules, clamps, limits reserved (and settled at the end)
        Redact(),  # PII and secrets masked, pseudonymised or blocked per the rule's plan
        Inject(),  # strip agent credentials, add the real key from Vault
        Relay(),  # rules with retries, failover, a key pool or a cache: attempts made here
        UpstreamMap(),  # air-gapped sites: where a vendor host is reached
        Audit(),  # one hash-chained record per flow, durable before the answer
        Metrics(),  # /metrics, /healthz, /readyz on their own port; counts Audit's records
        Tracing(),  # OpenTelemetry: a span per audit record, when a collector is set
        Shutdown(),  # last: SIGTERM drains what is in flight (recorded), then stops
    ]
    return addons
