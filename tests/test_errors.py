"""Refusals (`egressguard.core.errors`): statuses, and bodies in each vendor's error shape."""

from __future__ import annotations

import orjson
import pytest

from egressguard.core.errors import (
    BadRequest,
    CredentialRefused,
    DestinationDenied,
    EgressError,
    IdentityRequired,
    ProxyIdentityRequired,
    SecretUnavailable,
    vendor_error_body,
)

MESSAGE = 'agent "billing-bot" may not reach evil.example; ask #security (rule: default)\n\u00e9'


@pytest.mark.parametrize("cls, status, kind", [
    (EgressError, 403, "permission_error"),
    (DestinationDenied, 403, "permission_error"),
    (CredentialRefused, 403, "permission_error"),
    (IdentityRequired, 401, "authentication_error"),
    (ProxyIdentityRequired, 407, "authentication_error"),
    (SecretUnavailable, 503, "api_error"),
    (BadRequest, 400, "invalid_request_error"),
])
def test_status_and_kind(cls: type[EgressError], status: int, kind: str) -> None:
    err = cls(MESSAGE, reason="some_reason")
    assert (err.status, err.kind, err.reason, err.message, str(err)) == (
        status, kind, "some_reason", MESSAGE, MESSAGE)
    assert isinstance(err, EgressError)


def test_proxy_identity_required_is_an_identity_error() -> None:
    assert issubclass(ProxyIdentityRequired, IdentityRequired)


def test_reason_is_required() -> None:
    with pytest.raises(TypeError):
        DestinationDenied(MESSAGE)  # type: ignore[call-arg]


ERRORS = [
    DestinationDenied(MESSAGE, reason="destination_denied"),
    IdentityRequired(MESSAGE, reason="token_expired"),
    ProxyIdentityRequired(MESSAGE, reason="identity_missing"),
    CredentialRefused(MESSAGE, reason="real_key_presented"),
    SecretUnavailable(MESSAGE, reason="vault_unconfigured"),
    BadRequest(MESSAGE, reason="body_not_json"),
]
IDS = [type(e).__name__ for e in ERRORS]


@pytest.mark.parametrize("err, type_", zip(ERRORS, [
    "invalid_request_error", "invalid_request_error", "invalid_request_error",
    "invalid_request_error", "server_error", "invalid_request_error"], strict=True), ids=IDS)
@pytest.mark.parametrize("shape", ["openai", None, "unknown-shape"])
def test_openai_shape(err: EgressError, type_: str, shape: str | None) -> None:
    # {"error": {"message", "type", "param", "code"}}: also the fallback for unknown shapes
    assert orjson.loads(vendor_error_body(err, shape)) == {
        "error": {"message": MESSAGE, "type": type_, "param": None, "code": err.reason}}


@pytest.mark.parametrize("err, type_", zip(ERRORS, [
    "permission_error", "authentication_error", "authentication_error", "permission_error",
    "overloaded_error", "invalid_request_error"], strict=True), ids=IDS)
def test_anthropic_shape(err: EgressError, type_: str) -> None:
    # {"type": "error", "error": {"type", "message"}}
    assert orjson.loads(vendor_error_body(err, "anthropic")) == {
        "type": "error", "error": {"type": type_, "message": MESSAGE}}


@pytest.mark.parametrize("err, code, status", [
    (err, *expected) for err, expected in zip(ERRORS, [
        (403, "PERMISSION_DENIED"), (401, "UNAUTHENTICATED"), (407, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"), (503, "UNAVAILABLE"), (400, "INVALID_ARGUMENT")],
        strict=True)], ids=IDS)
def test_google_shape(err: EgressError, code: int, status: str) -> None:
    # google.rpc.Status: {"error": {"code", "message", "status"}}
    assert orjson.loads(vendor_error_body(err, "google")) == {
        "error": {"code": code, "message": MESSAGE, "status": status}}


def test_google_shape_of_an_unmapped_status() -> None:
    class Conflict(EgressError):
        status = 409

    body = orjson.loads(vendor_error_body(Conflict(MESSAGE, reason="conflict"), "google"))
    assert body == {"error": {"code": 409, "message": MESSAGE, "status": "FAILED_PRECONDITION"}}


@pytest.mark.parametrize("err", ERRORS, ids=IDS)
def test_cohere_shape(err: EgressError) -> None:
    assert orjson.loads(vendor_error_body(err, "cohere")) == {"message": MESSAGE}


@pytest.mark.parametrize("shape", ["openai", "anthropic", "google", "cohere", None])
def test_body_is_compact_utf8_json_carrying_only_the_message(shape: str | None) -> None:
    err = IdentityRequired(MESSAGE, reason="token_invalid")
    err.__cause__ = ValueError("sk-proj-" + "S" * 40)  # context never leaks into the body
    body = vendor_error_body(err, shape)
    assert isinstance(body, bytes)
    text = body.decode("utf-8")
    assert MESSAGE.replace("\n", "\\n").replace('"', '\\"') in text
    assert "sk-proj-" not in text and "Traceback" not in text
