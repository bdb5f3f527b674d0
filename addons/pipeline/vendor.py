"""What is being asked of the vendor: endpoint, model and streaming, read once from the
request as the vendor will read it; streamed chat completions made to report usage.

The model is the one the vendor runs: the URL's for Gemini and Azure deployments
(percent-decoded, any case), the body's otherwise, a multipart upload's `model` field
for audio and image edits. A path a vendor might route differently from egressguard
(dot segments, `;`, encoded slashes), a body that names another model than the path,
a JSON body sent as another content type to a generating endpoint and a method
override header are refused: each would let the request be governed as one thing and
run as another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from mitmproxy import http

from egressguard.core import apis, bodies, forms, usage
from egressguard.core.errors import BadRequest, RequestTooLarge
from egressguard.core.vendors import Vendor
from egressguard.pipeline import flowstate

# headers by which some frameworks (Google's among them) run a GET as a POST
_METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method",
                               b"x-method-override"})


@dataclass(slots=True)  # built per request: not frozen, which costs 4x; treat as read-only
class RequestInfo:
    model: str | None
    stream: bool | None
    body: Any = None  # parsed JSON body, for later stages (policy, redaction)
    size: int = 0  # bytes of the decoded body
    endpoint: apis.Endpoint | None = None  # classified once, from `path`
    path: str = ""  # the path as routed: no query, percent-decoded, no trailing slash
    form: dict[str, forms.Part] | None = None  # a multipart/form-data body's parts


def describe(vendor: Vendor, path: str, content_type: str, body: bytes,
             method: str = "POST") -> RequestInfo:
    """Endpoint, model and stream flag of a request; BadRequest if its path is
    ambiguous, its body does not parse or it names two models."""
    raw_path, _, query = path.partition("?")
    try:
        clean = apis.routed_path(raw_path)
    except apis.AmbiguousPath as exc:
        raise BadRequest(f"the URL path has {exc}, which vendors route differently; "
                         "send the plain path", reason="path_ambiguous") from None
    # a body makes any method a POST to classify: some servers read one on a GET too
    endpoint = apis.endpoint(vendor, "POST" if body else method, clean, cleaned=True)
    parsed, form = _parse(endpoint, content_type, body)
    fields = parsed if isinstance(parsed, dict) else {}
    model = fields.get("model")
    stream = fields.get("stream")
    if form is not None:
        model, stream = _field(form, "model"), _field(form, "stream") == "true" or None
    if endpoint == "realtime" and query:  # the socket names its model in the URL
        asked = parse_qs(query)
        model = (asked.get("model") or asked.get("deployment") or [model])[0]
    try:
        model = apis.model_of(vendor, clean, model if isinstance(model, str) else None)
    except apis.ModelConflict as exc:
        raise BadRequest(str(exc), reason="model_conflict") from None
    if vendor.model_in_path is not None:  # Gemini streams by method, not by body
        stream = stream is True or clean.lower().endswith(":streamgeneratecontent")
    return RequestInfo(model, stream if isinstance(stream, bool) else None, parsed,
                       len(body), endpoint, clean, form)


def _parse(endpoint: apis.Endpoint, content_type: str, body: bytes
           ) -> tuple[Any, dict[str, forms.Part] | None]:
    """(parsed JSON, multipart parts) of a body. A JSON body is read whatever its
    content type says (a vendor may read it anyway); a body that is not JSON is
    refused where the endpoint generates, or where the content type says JSON."""
    if not body:
        return None, None
    if "json" not in content_type and forms.is_form(content_type):
        try:
            return None, forms.parse(content_type, body)
        except forms.FormError as exc:
            raise BadRequest(f"the multipart/form-data body cannot be read unambiguously: "
                             f"{exc}", reason="body_not_multipart") from None
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        if "json" in content_type or endpoint.cap == apis.CAP_BODY:
            raise BadRequest(f"request body is not valid JSON ({exc.msg} at byte {exc.pos})",
                             reason="body_not_json") from None
        return None, None


def _headers(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[str, str, bool]:
    """Content-Type and Content-Encoding (folded as mitmproxy folds repeats) and whether
    a method override header is there: one pass costs less than one `headers.get`."""
    types, encodings, override = [], [], False
    for name, value in fields:
        low = name.lower()
        if low == b"content-type":
            types.append(value)
        elif low == b"content-encoding":
            encodings.append(value)
        elif low in _METHOD_OVERRIDES:
            override = True
    return (b", ".join(types).decode("utf-8", "surrogateescape"),
            b", ".join(encodings).decode("utf-8", "surrogateescape"), override)


def _field(form: dict[str, forms.Part], name: str) -> str | None:
    part = form.get(name)
    return part.text if part is not None else None


class VendorRequest:
    @flowstate.fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        if not flowstate.is_live_request(flow):
            return
        vendor = flow.metadata[flowstate.DESTINATION].vendor
        content_type, encoding, override = _headers(flow.request.headers.fields)
        if override:
            flowstate.refuse(flow, BadRequest(
                "method override headers are refused: a vendor could run the request as "
                "another method than the one governed; send the method itself",
                reason="method_override"))
            return
        try:
            body = bodies.decode(flow.request.raw_content or b"", encoding)
            info = describe(vendor, flow.request.path, content_type, body,
                            flow.request.method)
        except ValueError:
            flowstate.refuse(flow, BadRequest(
                "request body cannot be decoded with its Content-Encoding",
                reason="body_undecodable"))
            return
        except (BadRequest, RequestTooLarge) as err:
            flowstate.refuse(flow, err)
            return
        flow.metadata[flowstate.REQUEST] = info
        chat = info.path.lower().endswith("/chat/completions")
        if isinstance(info.body, dict) and usage.ask_for_stream_usage(vendor.name, chat,
                                                                      info.body):
            # budgets settle on reported usage; the agent still sees the stream it asked for
            flow.request.content = orjson.dumps(info.body)
            flow.metadata[flowstate.HIDE_STREAM_USAGE] = True
