"""What is being asked of the vendor: model and streaming, parsed once from the request;
streamed chat completions made to report their usage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from mitmproxy import http

from egressguard.core import bodies, usage
from egressguard.core.errors import BadRequest, RequestTooLarge
from egressguard.core.vendors import Vendor
from egressguard.pipeline import flowstate


@dataclass(frozen=True, slots=True)
class RequestInfo:
    model: str | None
    stream: bool | None
    body: Any = None  # parsed JSON body, for later stages (policy, redaction)
    size: int = 0  # bytes of the decoded body


def describe(vendor: Vendor, path: str, content_type: str, body: bytes) -> RequestInfo:
    """Model and stream flag of a request; BadRequest if a JSON body does not parse."""
    parsed: Any = None
    if body and "json" in content_type:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON ({exc.msg} at byte {exc.pos})",
                             reason="body_not_json") from None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    stream = parsed.get("stream") if isinstance(parsed, dict) else None
    if vendor.model_in_path is not None:
        path = path.split("?", 1)[0]  # the query may carry a credential
        if m := vendor.model_in_path.search(path):
            model = m.group("model")
        stream = stream or ":streamGenerateContent" in path
    return RequestInfo(model if isinstance(model, str) else None,
                       stream if isinstance(stream, bool) else None, parsed, len(body))


class VendorRequest:
    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        vendor = flow.metadata[flowstate.DESTINATION].vendor
        try:
            body = bodies.decode(flow.request.raw_content or b"",
                                 flow.request.headers.get("content-encoding", ""))
            info = describe(vendor, flow.request.path, flow.request.headers.get(
                "content-type", ""), body)
        except ValueError:
            flowstate.refuse(flow, BadRequest(
                "request body cannot be decoded with its Content-Encoding",
                reason="body_undecodable"))
            return
        except (BadRequest, RequestTooLarge) as err:
            flowstate.refuse(flow, err)
            return
        flow.metadata[flowstate.REQUEST] = info
        chat = flow.request.path.split("?", 1)[0].endswith("/chat/completions")
        if isinstance(info.body, dict) and usage.ask_for_stream_usage(vendor.name, chat,
                                                                      info.body):
            # budgets settle on reported usage; the agent still sees the stream it asked for
            flow.request.content = orjson.dumps(info.body)
            flow.metadata[flowstate.HIDE_STREAM_USAGE] = True
