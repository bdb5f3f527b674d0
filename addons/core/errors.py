"""The closed set of refusals egressguard can return, and their mapping to responses.

Every security hook raises one of these (or catches a lower-level failure and raises
one); the hook boundary turns it into a response with `vendor_error_body`, so an agent's
SDK raises a typed exception whose message says which rule decided and what to do.
Messages never contain key material or raw request content.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class EgressError(Exception):
    """Base of every refusal. `status` and `kind` decide the response; `reason` is
    the stable machine-readable name recorded in the audit trail."""

    status: ClassVar[int] = 403
    kind: ClassVar[str] = "permission_error"  # generic error type, mapped per vendor shape

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class DestinationDenied(EgressError):
    """The host (or port, or scheme) is not one agents may reach."""


class IdentityRequired(EgressError):
    """No valid agent identity: missing, malformed, expired or revoked token."""

    status = 401
    kind = "authentication_error"


class ProxyIdentityRequired(IdentityRequired):
    """Identity failed at the proxy layer (CONNECT / Proxy-Authorization) -> 407."""

    status = 407


class CredentialRefused(EgressError):
    """The agent sent something that looks like a real vendor key."""


class SecretUnavailable(EgressError):
    """No real key could be obtained; nothing is forwarded."""

    status = 503
    kind = "api_error"


class InternalFailure(EgressError):
    """egressguard itself failed; the request was refused rather than passed on."""

    status = 500
    kind = "api_error"


class BadRequest(EgressError):
    status = 400
    kind = "invalid_request_error"


class PolicyDenied(EgressError):
    """A policy rule (or the default deny) refused the request."""


class RequestTooLarge(EgressError):
    status = 413
    kind = "request_too_large"


class HeadersTooLarge(EgressError):
    """The request head has more header fields, or bytes, than egressguard accepts."""

    status = 431
    kind = "invalid_request_error"


class RequestTimedOut(EgressError):
    """The agent did not send its request (head or body) in time: a slow client."""

    status = 408
    kind = "invalid_request_error"


class AnswerRefused(EgressError):
    """The vendor's answer cannot be inspected (too large once decoded, malformed), so
    it is not passed on."""

    status = 502
    kind = "api_error"


class UpstreamFailed(EgressError):
    """Every attempt at the vendor (and its fallbacks) failed without an answer."""

    status = 502
    kind = "api_error"


class LimitExceeded(EgressError):
    """A rate limit or budget is used up; `retry_after` seconds until it frees up."""

    status = 429
    kind = "rate_limit_error"

    def __init__(self, message: str, *, reason: str, retry_after: int) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


def _openai(err: EgressError) -> dict[str, object]:
    return {"error": {"message": err.message, "type": _openai_type(err), "param": None,
                      "code": err.reason}}


def _openai_type(err: EgressError) -> str:
    return {
        "authentication_error": "invalid_request_error",
        "permission_error": "invalid_request_error",
        "api_error": "server_error",
        "request_too_large": "invalid_request_error",
        "rate_limit_error": "requests",
    }.get(err.kind, err.kind)


def _anthropic(err: EgressError) -> dict[str, object]:
    kind = "overloaded_error" if err.status == 503 else err.kind
    return {"type": "error", "error": {"type": kind, "message": err.message}}


_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    407: "UNAUTHENTICATED", 408: "DEADLINE_EXCEEDED", 413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", 431: "INVALID_ARGUMENT", 502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}


def _google(err: EgressError) -> dict[str, object]:
    return {"error": {"code": err.status, "message": err.message,
                      "status": _GOOGLE_STATUS.get(err.status, "FAILED_PRECONDITION")}}


def _cohere(err: EgressError) -> dict[str, object]:
    return {"message": err.message}


_SHAPES = {"openai": _openai, "anthropic": _anthropic, "google": _google, "cohere": _cohere}


def vendor_error_body(err: EgressError, shape: str | None) -> bytes:
    """JSON body for `err` in a vendor's error shape (`openai` when unknown: most
    SDKs and tools understand it)."""
    return orjson.dumps(_SHAPES.get(shape or "openai", _openai)(err))
