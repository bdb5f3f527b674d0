"""The fake vendor's faults on demand (`/_fake/faults`): real SDK clients against the
CLI-started server."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from egressguard.tools.procs import start_announced, stop_announced
from egressguard.tools.stack import Stack

START_TIMEOUT = 15.0
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
GEMINI = "/v1beta/models/gemini-x:generateContent"


class Vendor:
    def __init__(self, port: int, ca: Path) -> None:
        self.port, self.ca = port, ca
        self.url = f"https://localhost:{port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=str(self.ca), timeout=10)

    def fail(self, *faults: dict[str, Any]) -> httpx.Response:
        with self.http() as client:
            return client.post("/_fake/faults", json={"faults": list(faults)})

    def faults(self) -> list[dict[str, Any]]:
        with self.http() as client:
            return list(client.get("/_fake/faults").raise_for_status().json())

    def received(self) -> list[dict[str, Any]]:
        with self.http() as client:
            return list(client.get("/_fake/received").raise_for_status().json())

    def reset(self) -> None:
        with self.http() as client:
            client.post("/_fake/reset").raise_for_status()

    def statuses(self, count: int, path: str = CHAT, body: dict[str, Any] | None = None,
                 **headers: str) -> list[int]:
        """The statuses of `count` requests, one after the other."""
        headers = {"Authorization": "Bearer sk-test", **headers}
        with self.http() as client:
            return [client.post(path, json=body or {"model": "m", "messages": []},
                                headers=headers).status_code for _ in range(count)]

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", "sk-test-openai")
        return openai.OpenAI(base_url=f"{self.url}/v1", max_retries=0, http_client=
                             openai.DefaultHttpxClient(verify=str(self.ca)), **kwargs)

    def anthropic(self, **kwargs: Any) -> anthropic.Anthropic:
        kwargs.setdefault("api_key", "sk-ant-test")
        return anthropic.Anthropic(base_url=self.url, max_retries=0, http_client=
                                   anthropic.DefaultHttpxClient(verify=str(self.ca)), **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendor]:
    proc: subprocess.Popen[bytes]
    proc, info = start_announced([sys.executable, "-m", "egressguard.tools.fakevendor",
                                  "--listen", "127.0.0.1:0", "--pki-dir",
                                  str(tmp_path_factory.mktemp("pki"))], START_TIMEOUT)
    try:
        yield Vendor(info["port"], Path(info["ca"]))
    finally:
        stop_announced(proc)


@pytest.fixture
def vendor(server: Vendor) -> Vendor:
    server.reset()
    return server


def _ask_openai(vendor: Vendor, model: str = "gpt-4o", **kwargs: Any) -> str:
    with vendor.openai(**kwargs) as client:
        reply = client.chat.completions.create(model=model,
                                               messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content or ""


def _ask_anthropic(vendor: Vendor) -> str:
    with vendor.anthropic() as client:
        answer = client.messages.create(model="claude-x", max_tokens=5, messages=[
            {"role": "user", "content": "hi"}])
    return str(answer.content[0].text)  # type: ignore[union-attr]


# --- error shapes, as the official SDKs read them ----------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "kind", "code"),
    [
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (403, openai.PermissionDeniedError, "request_forbidden",
         "unsupported_country_region_territory"),
        (500, openai.InternalServerError, "server_error", None),
        (502, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "service_unavailable_error", "server_is_overloaded"),
    ],
)
def test_openai_sdk_reads_a_fault_as_its_own_error(
    vendor: Vendor, status: int, error: type[openai.APIStatusError], kind: str, code: str | None
) -> None:
    vendor.fail({"status": status}).raise_for_status()
    with pytest.raises(error) as raised:
        _ask_openai(vendor)
    assert raised.value.status_code == status
    assert raised.value.body["type"] == kind  # type: ignore[index]
    assert raised.value.body["code"] == code  # type: ignore[index]
    assert "fault injected" in raised.value.message


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, getattr(anthropic, "OverloadedError", anthropic.InternalServerError),
         "overloaded_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (502, anthropic.InternalServerError, "api_error"),
        (503, anthropic.InternalServerError, "api_error"),
    ],
)
def test_anthropic_sdk_reads_a_fault_as_its_own_error(
    vendor: Vendor, status: int, error: type[anthropic.APIStatusError], kind: str
) -> None:
    vendor.fail({"status": status}).raise_for_status()
    with pytest.raises(error) as raised:
        _ask_anthropic(vendor)
    assert raised.value.status_code == status
    assert raised.value.body == {"type": "error", "error": {  # type: ignore[comparison-overlap]
        "type": kind, "message": raised.value.body["error"]["message"]}}  # type: ignore[index]


@pytest.mark.parametrize(
    ("host", "path", "headers", "status", "expected"),
    [
        ("generativelanguage.googleapis.com", GEMINI, {"x-goog-api-key": "g"}, 429,
         {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
        ("generativelanguage.googleapis.com", GEMINI, {"x-goog-api-key": "g"}, 503,
         {"error": {"code": 503, "status": "UNAVAILABLE"}}),
        ("res1.openai.azure.com", "/openai/deployments/d1/chat/completions",
         {"api-key": "az"}, 429, {"error": {"type": "requests", "code": "rate_limit_exceeded"}}),
        ("api.mistral.ai", CHAT, {"Authorization": "Bearer m"}, 500,
         {"error": {"type": "server_error"}}),
    ],
)
def test_other_vendors_fail_in_their_own_shape(
    vendor: Vendor, host: str, path: str, headers: dict[str, str], status: int,
    expected: dict[str, Any]
) -> None:
    vendor.fail({"status": status}).raise_for_status()
    with vendor.http() as client:
        response = client.post(path, json={"messages": []}, headers={"Host": host, **headers})
    assert response.status_code == status
    body = response.json()
    assert {k: body["error"][k] for k in expected["error"]} == expected["error"]


def test_retry_after_and_rate_limit_headers(vendor: Vendor) -> None:
    vendor.fail({"vendor": "openai", "status": 429, "retry_after": 2},
                {"vendor": "anthropic", "status": 429, "retry_after": 0.5},
                {"status": 503}).raise_for_status()
    with vendor.http() as client:
        oa = client.post(CHAT, json={}, headers={"Authorization": "Bearer k"})
        an = client.post(MESSAGES, json={}, headers={"x-api-key": "k"})
        other = client.post(CHAT, json={}, headers={"Host": "api.groq.com",
                                                    "Authorization": "Bearer k"})
    assert oa.headers["retry-after"] == "2"
    assert oa.headers["x-ratelimit-remaining-requests"] == "0"
    assert oa.headers["x-ratelimit-reset-requests"] == "2s"
    assert an.headers["retry-after"] == "0.5"
    assert an.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert an.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert other.status_code == 503 and "retry-after" not in other.headers


# --- which requests a fault fails ----------------------------------------------------------


def test_vendor_filter_fails_only_that_vendor(vendor: Vendor) -> None:
    vendor.fail({"vendor": "anthropic", "status": 529}).raise_for_status()
    assert _ask_openai(vendor) == "Hello from fake openai"
    with pytest.raises(anthropic.InternalServerError):
        _ask_anthropic(vendor)


def test_key_suffix_fails_only_that_key_whichever_header_carries_it(vendor: Vendor) -> None:
    vendor.fail({"key": "-pool-a", "status": 429}).raise_for_status()
    with pytest.raises(openai.RateLimitError):
        _ask_openai(vendor, api_key="sk-pool-a")
    assert _ask_openai(vendor, api_key="sk-pool-b") == "Hello from fake openai"
    assert _ask_openai(vendor, api_key="sk-pool-a-not") == "Hello from fake openai"
    for headers, params in [({"x-api-key": "ant-pool-a"}, {}), ({"api-key": "az-pool-a"}, {}),
                            ({"x-goog-api-key": "g-pool-a"}, {}), ({}, {"key": "q-pool-a"})]:
        with vendor.http() as client:
            response = client.post(CHAT, json={}, headers=headers, params=params)
        assert response.status_code == 429, (headers, params)
    # every attempt is on record, with the key it carried
    keys = [dict((n.lower(), v) for n, v in r["headers"]).get("authorization")
            for r in vendor.received()[:3]]
    assert keys == ["Bearer sk-pool-a", "Bearer sk-pool-b", "Bearer sk-pool-a-not"]


def test_model_filter(vendor: Vendor) -> None:
    vendor.fail({"model": "gpt-4o", "status": 500}).raise_for_status()
    with pytest.raises(openai.InternalServerError):
        _ask_openai(vendor, model="gpt-4o")
    assert _ask_openai(vendor, model="gpt-4o-mini") == "Hello from fake openai"
    gemini = "/v1beta/models/gpt-4o:generateContent"  # the model named by the path
    assert vendor.statuses(1, gemini, {}) == [500]


def test_times_spends_the_fault_then_the_next_one_decides(vendor: Vendor) -> None:
    vendor.fail({"status": 429, "times": 2}, {"status": 503, "times": 1}).raise_for_status()
    assert vendor.statuses(5) == [429, 429, 503, 200, 200]
    assert [(f["status"], f["failed"], f["remaining"]) for f in vendor.faults()] == [
        (429, 2, 0), (503, 1, 0)]


def test_every_fails_the_first_and_each_kth_matching_request(vendor: Vendor) -> None:
    vendor.fail({"vendor": "openai", "status": 502, "every": 3}).raise_for_status()
    assert vendor.statuses(7) == [502, 200, 200, 502, 200, 200, 502]
    assert vendor.statuses(1, MESSAGES) == [200]  # not matched, not counted
    [state] = vendor.faults()
    assert (state["matched"], state["failed"], state["remaining"]) == (7, 3, None)


def test_every_with_times_counts_failures(vendor: Vendor) -> None:
    vendor.fail({"status": 500, "every": 2, "times": 2}).raise_for_status()
    assert vendor.statuses(6) == [500, 200, 500, 200, 200, 200]


def test_the_first_matching_fault_decides(vendor: Vendor) -> None:
    vendor.fail({"key": "-a", "status": 401}, {"status": 429}).raise_for_status()
    assert vendor.statuses(1, Authorization="Bearer k-a") == [401]
    assert vendor.statuses(1, Authorization="Bearer k-b") == [429]


def test_faulted_requests_are_recorded(vendor: Vendor) -> None:
    vendor.fail({"status": 429, "times": 1}, {"status": 0, "times": 1}).raise_for_status()
    with vendor.http() as client:
        ask = {"json": {"model": "m"}, "headers": {"Authorization": "Bearer k"}}
        assert client.post(CHAT, **ask).status_code == 429
        with pytest.raises(httpx.TransportError):
            client.post(CHAT, **ask)
        assert client.post(CHAT, **ask).status_code == 200
    assert [r["path"] for r in vendor.received()] == [CHAT, CHAT, CHAT]


# --- broken connections ------------------------------------------------------------------


def test_status_0_drops_the_connection_without_an_answer(vendor: Vendor) -> None:
    vendor.fail({"status": 0, "times": 1}).raise_for_status()
    with vendor.http() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.post(CHAT, json={}, headers={"Authorization": "Bearer k"})
        assert client.post(CHAT, json={}, headers={"Authorization": "Bearer k"}).is_success
    vendor.fail({"status": 0}).raise_for_status()
    with pytest.raises(openai.APIConnectionError):
        _ask_openai(vendor)


def test_after_bytes_cuts_a_stream_that_began_with_200(vendor: Vendor) -> None:
    body = {"model": "m", "messages": [], "stream": True}
    with vendor.http() as client:
        whole = client.post(CHAT, json=body, headers={"Authorization": "Bearer k"}).content
    cut = whole.index(b"\n\n") + 20  # inside the second event
    vendor.fail({"after_bytes": cut}).raise_for_status()
    got = bytearray()
    with vendor.http() as client, client.stream(
        "POST", CHAT, json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                got += chunk
    assert len(got) == cut and got.startswith(b'data: {"id":"chatcmpl-fake')
    assert got.count(b"\n\n") == 1


def test_after_bytes_cuts_a_whole_answer_and_the_sdk_stream(vendor: Vendor) -> None:
    vendor.fail({"after_bytes": 10, "vendor": "openai"},
                {"after_bytes": 200, "vendor": "anthropic"}).raise_for_status()
    with vendor.http() as client, pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, json={}, headers={"Authorization": "Bearer k"})
    with vendor.anthropic() as client, client.messages.stream(
        model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ) as stream, pytest.raises(anthropic.APIConnectionError):  # wraps the cut read
        "".join(stream.text_stream)


_UPGRADE = (b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: api.openai.com\r\n"
            b"Authorization: Bearer k\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize(
    ("fault", "answer"),
    [(None, b"HTTP/1.1 101 "), ({"status": 429}, b"HTTP/1.1 429 "),
     ({"status": 0}, b""), ({"after_bytes": 0}, b"")],
)
def test_a_realtime_upgrade_is_faulted_like_a_request(
    vendor: Vendor, fault: dict[str, Any] | None, answer: bytes
) -> None:
    if fault is not None:
        vendor.fail(fault).raise_for_status()
    ctx = ssl.create_default_context(cafile=str(vendor.ca))
    head = b""
    with socket.create_connection(("127.0.0.1", vendor.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(_UPGRADE)
        try:
            while b"\r\n\r\n" not in head and (data := tls.recv(4096)):
                head += data
        except OSError:
            pass  # dropped: reset rather than closed
    assert head.startswith(answer) and (answer or not head)
    assert [r["path"] for r in vendor.received()] == ["/v1/realtime"]


# --- the fault list ----------------------------------------------------------------------


def test_a_new_list_replaces_the_old_and_reset_clears_it(vendor: Vendor) -> None:
    vendor.fail({"status": 429, "times": 3}).raise_for_status()
    assert vendor.statuses(1) == [429]
    assert vendor.faults() == [{"status": 429, "times": 3, "every": 1, "matched": 1,
                                "failed": 1, "remaining": 2}]
    vendor.fail({"model": "other", "status": 500}).raise_for_status()
    assert [f["status"] for f in vendor.faults()] == [500]
    assert vendor.statuses(1) == [200]
    vendor.fail().raise_for_status()
    assert vendor.faults() == []
    vendor.fail({"status": 503}).raise_for_status()
    vendor.reset()
    assert vendor.faults() == [] and vendor.statuses(1) == [200]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"faults": [{"status": 429, "tiems": 2}]}, "faults[0]: unknown fault fields ['tiems']"),
        ({"faults": [{"status": 200}]}, "faults[0]: status must be 0 (drop) or an HTTP error"),
        ({"faults": [{"status": "429"}]}, "faults[0]: status must be 0"),
        ({"faults": [{}]}, "faults[0]: status must be 0"),
        ({"faults": [{"status": 429, "vendor": "opneai"}]}, "faults[0]: vendor must be one of"),
        ({"faults": [{"status": 429}, {"status": 429, "times": 0}]}, "faults[1]: times must"),
        ({"faults": [{"status": 429, "every": 0}]}, "faults[0]: every must"),
        ({"faults": [{"status": 429, "retry_after": -1}]}, "faults[0]: retry_after must"),
        ({"faults": [{"status": 429, "key": 7}]}, "faults[0]: key must be a string"),
        ({"faults": [{"status": 429, "after_bytes": 10}]}, "faults[0]: after_bytes"),
        ({"faults": [{"after_bytes": -1}]}, "faults[0]: after_bytes"),
        ({"faults": [429]}, "faults[0]: a fault is a JSON object"),
        ({"faults": {"status": 429}}, 'expected {"faults": [FAULT, ...]}'),
        ([{"status": 429}], 'expected {"faults": [FAULT, ...]}'),
    ],
)
def test_a_bad_fault_list_is_refused_and_changes_nothing(
    vendor: Vendor, body: object, reason: str
) -> None:
    vendor.fail({"status": 418}).raise_for_status()
    with vendor.http() as client:
        response = client.post("/_fake/faults", json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(reason)
    assert [f["status"] for f in vendor.faults()] == [418]


def test_stack_fail_posts_the_list_and_reset_received_clears_it(
    vendor: Vendor, tmp_path: Path
) -> None:
    stack = Stack(tmp_path)  # only its fake-vendor side: nothing is started
    stack.vendor_port, stack.pki = vendor.port, vendor.ca.parent
    stack.fail({"vendor": "openai", "key": "-a", "status": 429, "times": 1})
    assert vendor.statuses(2, Authorization="Bearer k-a") == [429, 200]
    stack.fail({"status": 503})
    stack.reset_received()
    assert vendor.faults() == []
    stack.fail({"status": 503})
    stack.fail()
    assert vendor.faults() == []
    with pytest.raises(httpx.HTTPStatusError):
        stack.fail({"status": 429, "vendr": "openai"})
