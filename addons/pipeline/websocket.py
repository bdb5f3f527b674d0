"""WebSocket sessions to a vendor (OpenAI Realtime): the upgrade, then every frame.

The upgrade is an ordinary GET and goes through the whole pipeline: identity, policy,
key injection and credential stripping, and its audit record, written before the 101
reaches the agent. What an upgrade needs beyond a request with a body is added here:

- `UpgradeCredentials` (before Identity): a browser cannot set headers on a
  WebSocket, so it offers its key as a subprotocol (`openai-insecure-api-key.<key>`).
  That entry is taken out of `Sec-WebSocket-Protocol` and presented as an
  `Authorization` header instead, where Identity checks it (a real key there is
  refused as anywhere) and Inject strips it: the placeholder never leaves, and the
  subprotocol the vendor picks (`realtime`) is still on offer.
- `Realtime` (after VendorRequest): the model the URL names (`?model=`) is the
  request's model, so the policy's model rules govern a session as they govern a JSON
  body's `model`; an upgrade that names none, or two, is refused.

Then every frame, per `core/realtime.py`. From the agent: bounded, parsed, every text
field the vendor's model reads through the rule's redaction plan with the session's
pseudonyms; a refused frame is dropped and answered with a Realtime `error` event.
From the vendor: real-key echoes scrubbed, the plan's secrets masked and pseudonyms
restored, a value split over deltas handled whole. When that holds frames back and
releases several at once, the extra ones are injected (`inject.websocket`), and until
they have gone out every later vendor frame is injected behind them, so the agent
gets the vendor's events in the vendor's order. When the session closes, the Audit
addon writes a second record with the session's counts (`realtime.Session`).

Every frame hook fails closed: mitmproxy sends a frame whose hook raised as it is, so
the hook drops it instead (and tells the agent, for its own frames).
"""

from __future__ import annotations

import dataclasses
import logging

import orjson
from mitmproxy import ctx, http, websocket

from egressguard.core import apis, realtime
from egressguard.core.errors import BadRequest, EgressError, InternalFailure, PolicyDenied
from egressguard.core.redact import actions
from egressguard.core.redact.sse import Stage
from egressguard.pipeline import flowstate
from egressguard.pipeline.redact import Redact

log = logging.getLogger(__name__)


class UpgradeCredentials:
    @flowstate.fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        headers = flow.request.headers
        offered = headers.get_all("sec-websocket-protocol")
        if not offered:
            return
        kept, found = realtime.split_subprotocols(offered)
        if not found:
            return
        if kept:
            headers["sec-websocket-protocol"] = ", ".join(kept)
        else:
            del headers["sec-websocket-protocol"]
        for value in found:
            headers.add("authorization", f"Bearer {value}")


class Realtime:
    def __init__(self, redact: Redact | None = None) -> None:
        self._redact = redact  # found among the loaded addons when not given

    # -- the upgrade ------------------------------------------------------------------

    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        info = flow.metadata.get(flowstate.REQUEST)
        vendor = flow.metadata[flowstate.DESTINATION].vendor
        if info is None or \
                apis.endpoint(vendor, flow.request.method, flow.request.path) != "realtime":
            return
        try:
            model = realtime.query_model(flow.request.query.items(multi=True))
        except ValueError as exc:  # the vendor might run either: refused, whichever we read
            flowstate.refuse(flow, BadRequest(f"{exc}: name one model", reason="model_ambiguous"))
            return
        if model is None and info.model is None and \
                flow.request.headers.get("upgrade", "").lower() == "websocket":
            flowstate.refuse(flow, BadRequest(
                "a realtime session must name its model in the URL "
                "(/v1/realtime?model=NAME): egressguard's policy decides by it",
                reason="model_missing"))
        elif model is not None and model != info.model:
            flow.metadata[flowstate.REQUEST] = dataclasses.replace(info, model=model)

    # -- the session ------------------------------------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata
        decision, info = meta.get(flowstate.DECISION), meta.get(flowstate.REQUEST)
        if decision is None or not decision.allowed:
            return  # not a session this pipeline let through: its frames are dropped
        plan = dict(decision.rule.plan) if decision.rule is not None else {}
        pseudonyms = actions.Pseudonyms()
        stages: list[Stage] = []
        if (mask := meta.get(flowstate.ANSWER_MASK)) is not None:  # the vendor's text first,
            stages.append(mask)
        if actions.PSEUDONYMIZE in plan.values():  # then the agent's own
            stages.append(realtime.SessionRestore(pseudonyms))
        secret = meta.get(flowstate.SECRET)
        keys = [secret.fingerprint_bytes()] if secret is not None else []
        meta[flowstate.WEBSOCKET] = realtime.Session(
            realtime.VendorEvents(keys, stages), plan=plan, rule=decision.rule_name or "",
            model=info.model if info is not None else None, pseudonyms=pseudonyms)

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        del flow.websocket.messages[:-1]  # one frame in memory at a time, not the session
        session: realtime.Session | None = flow.metadata.get(flowstate.WEBSOCKET)
        if message.injected:  # ours: an error event, or a vendor frame released late
            if session is not None and not message.from_client:
                session.in_flight -= 1
            return
        if session is None:
            log.warning("dropping a frame of WebSocket %s: no session was set up for it",
                        flowstate.begin(flow))
            message.drop()
            return
        try:
            if message.from_client:
                await self._from_agent(flow, session, message)
            else:
                self._from_vendor(flow, session, message)
        except Exception:  # noqa: BLE001 - a frame whose hook raised would go out as it is
            rid = flowstate.begin(flow)
            log.exception("a frame of WebSocket %s could not be processed; dropped", rid)
            message.drop()
            if message.from_client:
                self._send(flow, session, [(realtime.error_event(InternalFailure(
                    f"egressguard could not process this event and did not forward it "
                    f"(request id {rid}); operators: see the proxy log",
                    reason="internal_error")), True)])

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        session: realtime.Session | None = flow.metadata.get(flowstate.WEBSOCKET)
        if session is None or flow.websocket is None:
            return
        by_agent = flow.websocket.closed_by_client
        session.close_code = flow.websocket.close_code
        session.closed_by = None if by_agent is None else "agent" if by_agent else "vendor"
        if session.vendor.usage.as_record() is not None:  # for Enforce and Audit
            flow.metadata[flowstate.USAGE] = session.vendor.usage

    async def _from_agent(self, flow: http.HTTPFlow, session: realtime.Session,
                          message: websocket.WebSocketMessage) -> None:
        session.frames_from_agent += 1
        session.bytes_from_agent += len(message.content)
        event_id = None
        try:
            frame = realtime.read_agent_frame(message.content, message.is_text,
                                              plan=session.plan, rule=session.rule,
                                              model=session.model)
            event_id = frame.event_id
            if not (frame.slots and session.plan):
                return
            policy = flow.metadata[flowstate.POLICY]
            scan = await self._redactor().scan_slots(frame.slots, session.plan,
                                                     session.pseudonyms, policy.detector,
                                                     policy.digest)
            session.count(scan.counts)
            if scan.blocked:
                raise PolicyDenied(
                    f"the event contains {', '.join(scan.blocked)}, which policy rule "
                    f"{session.rule!r} does not let leave; it was not forwarded: remove it "
                    "and send again", reason="redaction_blocked")
            if scan.changed:
                message.content = orjson.dumps(frame.event)
        except EgressError as err:  # NER unavailable too: refused, never sent unread
            message.drop()
            session.refused[err.reason] += 1
            self._send(flow, session, [(realtime.error_event(err, event_id), True)])

    def _from_vendor(self, flow: http.HTTPFlow, session: realtime.Session,
                     message: websocket.WebSocketMessage) -> None:
        session.frames_to_agent += 1
        out = session.vendor.feed(message.content, message.is_text)
        session.bytes_to_agent += sum(len(data) for data, _ in out)
        # in place of this frame when nothing sent earlier is still on its way
        if session.in_flight == 0 and out and out[0][1] == message.is_text:
            message.content = out[0][0]
            out = out[1:]
        else:
            message.drop()
        self._send(flow, session, out)

    @staticmethod
    def _send(flow: http.HTTPFlow, session: realtime.Session,
              frames: list[realtime.Frame]) -> None:
        """To the agent, after every frame already on its way (mitmproxy injects in
        order; `in_flight` counts them until they pass `websocket_message`)."""
        for data, is_text in frames:
            session.in_flight += 1
            ctx.master.commands.call("inject.websocket", flow, True, data, is_text)

    def _redactor(self) -> Redact:
        if self._redact is None:
            found = ctx.master.addons.get("redact")
            if not isinstance(found, Redact):
                raise RuntimeError("the Redact addon is not loaded")
            self._redact = found
        return self._redact
