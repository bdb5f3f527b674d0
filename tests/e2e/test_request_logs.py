"""The real proxy's JSON log lines name the audit record of the request they concern."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
NOT_TLS_HOST = "eg-logs.cognitiveservices.azure.com"  # an Azure host, mapped to plain HTTP


@pytest.fixture(scope="module")
def plain_http_port() -> Iterator[int]:
    """A server that answers every connection in plain HTTP: a TLS handshake with it
    fails, and mitmproxy logs that itself ("Server TLS handshake failed")."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, plain_http_port: int) -> Iterator[Stack]:
    # no OpenAI key stored: those requests are refused for want of one, and Inject says so
    with Stack(tmp_path_factory.mktemp("logs"), proxy_args=(
            "--log-format", "json",
            "--upstream-map", f"{NOT_TLS_HOST}=127.0.0.1:{plain_http_port}")) as s:
        yield s


def lines(stack: Stack) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stack.proxy_output().splitlines()
            if line.startswith("{")]


def test_a_vault_failure_is_logged_with_the_id_of_its_audit_record(
        stack: Stack, openai_client: OpenAIFactory) -> None:
    client = openai_client(api_key=stack.token("keyless-agent"))
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert refused.value.status_code == 503
    header = refused.value.response.headers["x-egressguard-request-id"]

    record = [r for r in stack.wait_records(1) if r["kind"] == "request"][-1]
    assert record["reason"] == "secret_missing" and record["agent"] == "keyless-agent"
    warned = wait_until(lambda: [line for line in lines(stack)
                                 if "refusing openai request" in line["message"]],
                        timeout=5, what="the proxy's warning")
    assert len(warned) == 1
    assert warned[0]["level"] == "warning"
    assert warned[0]["request_id"] == record["id"] == header


def test_mitmproxys_own_line_about_a_failed_upstream_names_the_request(stack: Stack) -> None:
    stack.put_key("azure_openai", fake_key("a" * 8))
    token = stack.token("azure-agent")
    with httpx.Client(proxy=stack.proxy, verify=stack.agent_ssl_context(),
                      timeout=30) as client:
        answer = client.post(f"https://{NOT_TLS_HOST}/openai/deployments/gpt-4o/chat/"
                             "completions?api-version=2024-10-21", json={"messages": HELLO},
                             headers={"api-key": token})
    assert answer.status_code == 502
    record = [r for r in stack.records() if r["agent"] == "azure-agent"][-1]
    assert record["error"] and "TLS" in record["error"]

    warned = wait_until(lambda: [line for line in lines(stack)
                                 if line["logger"].startswith("mitmproxy")
                                 and "TLS handshake failed" in line["message"]],
                        timeout=5, what="mitmproxy's warning")
    assert [line["request_id"] for line in warned] == [record["id"]]
    assert warned[0]["client"].startswith("127.0.0.1:")
