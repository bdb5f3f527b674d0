"""The fake TLS model vendor: real SDK clients against the CLI-started server."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from cryptography import x509

from egressguard.tools.fakevendor import VENDOR_HOSTS, FakeVendor, make_pki
from egressguard.tools.procs import start_announced, stop_announced

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Vendor:
    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=10)

    def received(self) -> list[dict]:
        with self.http() as client:
            return client.get("/_fake/received").raise_for_status().json()

    def reset(self) -> None:
        with self.http() as client:
            client.post("/_fake/reset").raise_for_status()

    def openai(self, **kwargs) -> openai.OpenAI:
        http_client = openai.DefaultHttpxClient(verify=self.ssl_context())
        kwargs.setdefault("api_key", "sk-test-openai")
        return openai.OpenAI(base_url=f"{self.url}/v1", http_client=http_client, **kwargs)

    def anthropic(self, **kwargs) -> anthropic.Anthropic:
        http_client = anthropic.DefaultHttpxClient(verify=self.ssl_context())
        kwargs.setdefault("api_key", "sk-ant-test")
        return anthropic.Anthropic(base_url=self.url, http_client=http_client, **kwargs)


def _start(pki_dir: Path) -> tuple[subprocess.Popen[bytes], dict]:
    return start_announced([sys.executable, "-m", "egressguard.tools.fakevendor",
                            "--listen", "127.0.0.1:0", "--pki-dir", str(pki_dir)],
                           START_TIMEOUT)


_stop = stop_announced


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendor]:
    proc, info = _start(tmp_path_factory.mktemp("pki"))
    try:
        yield Vendor(info["port"], Path(info["ca"]))
    finally:
        _stop(proc)


# --- PKI -------------------------------------------------------------------------------


def test_make_pki_is_idempotent_and_covers_every_vendor_host(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    first = pki.cert.read_bytes(), pki.ca_cert.read_bytes()
    assert make_pki(tmp_path) == pki
    assert (pki.cert.read_bytes(), pki.ca_cert.read_bytes()) == first
    assert pki.key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600

    leaf = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(VENDOR_HOSTS)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert ca.subject.rfc4514_string() == "CN=egressguard fake vendor CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(ca)


# --- OpenAI ----------------------------------------------------------------------------


def test_openai_chat_non_stream(vendor: Vendor) -> None:
    with vendor.openai() as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content == "Hello from fake openai"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


def test_openai_chat_stream_with_usage(vendor: Vendor) -> None:
    with vendor.openai() as client:
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            stream=True, stream_options={"include_usage": True},
        ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake openai"
    assert len(chunks) > 3
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def _raw_sse(vendor: Vendor, path: str, body: dict, **params: str) -> bytes:
    with vendor.http() as client, client.stream(
        "POST", path, json=body, params=params, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        return response.read()


def _data(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.splitlines() if line.startswith(b"data: ")]


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_openai_chat_stream_without_include_usage_has_no_usage(
    vendor: Vendor, options: dict | None
) -> None:
    body = {"model": "m", "messages": [], "stream": True}
    if options is not None:
        body["stream_options"] = options
    raw = _raw_sse(vendor, "/v1/chat/completions", body)
    assert b"usage" not in raw
    assert _data(raw)[-1] == b"[DONE]"


def test_openai_chat_stream_with_include_usage_is_shaped_as_openai_sends_it(
    vendor: Vendor,
) -> None:
    vendor.reset()
    body = {"model": "m", "messages": [], "stream": True,
            "stream_options": {"include_usage": True}}
    events = _data(_raw_sse(vendor, "/v1/chat/completions", body))
    *chunks, last, done = events
    assert done == b"[DONE]"
    assert all(c.endswith(b',"usage":null}') for c in chunks)  # compact, like OpenAI's
    final = json.loads(last)
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 4
    [got] = vendor.received()  # what was asked is on record
    assert json.loads(got["body"])["stream_options"] == {"include_usage": True}


def test_anthropic_stream_reports_input_at_start_and_output_at_the_end(vendor: Vendor) -> None:
    body = {"model": "claude-x", "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    events = [json.loads(d) for d in _data(_raw_sse(vendor, "/v1/messages", body))]
    start, delta = events[0], events[-2]
    assert start["type"] == "message_start" and delta["type"] == "message_delta"
    assert start["message"]["usage"]["input_tokens"] > 0
    assert start["message"]["usage"]["cache_read_input_tokens"] == 0
    assert delta["usage"] == {"output_tokens": 4}


def test_openai_responses_embeddings_and_models(vendor: Vendor) -> None:
    with vendor.openai() as client:
        response = client.responses.create(model="gpt-4o-mini", input="hi")
        embeddings = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        models = client.models.list()
    assert response.output_text == "Hello from fake openai"
    assert response.usage is not None and response.usage.output_tokens == 4
    assert [e.embedding for e in embeddings.data] == [[0.25, -0.5, 0.125, 1.0]] * 2
    assert "gpt-4o-mini" in [m.id for m in models]


def test_openai_error_500_has_vendor_shape(vendor: Vendor) -> None:
    with vendor.openai(max_retries=0) as client, pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="error-500", messages=[])
    assert err.value.status_code == 500
    assert err.value.body["type"] == "server_error"  # type: ignore[index]


# --- Anthropic -------------------------------------------------------------------------


def test_anthropic_messages_non_stream(vendor: Vendor) -> None:
    with vendor.anthropic() as client:
        message = client.messages.create(
            model="claude-x", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].text == "Hello from fake anthropic"  # type: ignore[union-attr]
    assert message.usage.output_tokens == 4 and message.usage.input_tokens > 0


def test_anthropic_messages_stream(vendor: Vendor) -> None:
    with vendor.anthropic() as client, client.messages.stream(
        model="claude-x", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from fake anthropic"
    assert final.usage.output_tokens == 4 and final.usage.input_tokens > 0
    assert final.stop_reason == "end_turn"


# --- recording, credentials, vendor inference ------------------------------------------


def test_received_records_the_credential_header(vendor: Vendor) -> None:
    vendor.reset()
    message = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    with vendor.openai(api_key="sk-recorded") as oa, vendor.anthropic(api_key="ant-rec") as an:
        oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        an.messages.create(**message)  # type: ignore[call-overload]
    with vendor.http() as client:
        raw = client.post("/v1/messages", json=message, headers={"x-api-key": "ant-raw"})
    assert raw.status_code == 200
    got = vendor.received()
    assert [(r["method"], r["path"]) for r in got] == [
        ("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("POST", "/v1/messages")]
    headers = [{n.lower(): v for n, v in r["headers"]} for r in got]
    assert headers[0]["authorization"] == "Bearer sk-recorded"
    # anthropic 2.x sends api_key as a Bearer token, not x-api-key
    assert headers[1]["authorization"] == "Bearer ant-rec"
    assert headers[2]["x-api-key"] == "ant-raw"
    assert json.loads(got[0]["body"])["model"] == "m" and not got[0]["body_base64"]


def test_echo_headers_reflects_request_headers(vendor: Vendor) -> None:
    with vendor.openai(api_key="sk-echo-me") as client:
        reply = client.chat.completions.create(model="echo-headers", messages=[])
    lines = (reply.choices[0].message.content or "").splitlines()
    echoed = {name.lower(): value for name, _, value in (ln.partition(": ") for ln in lines)}
    assert echoed["authorization"] == "Bearer sk-echo-me"
    assert echoed["host"] == f"localhost:{vendor.port}"


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.openai.com", "/v1/chat/completions",
         {"error": {"type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}),
        ("api.anthropic.com", "/v1/messages",
         {"type": "error", "error": {"type": "authentication_error"}}),
        ("generativelanguage.googleapis.com", "/v1beta/models/gemini-x:generateContent",
         {"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        ("localhost", "/v1/messages", {"type": "error", "error": {"type": "authentication_error"}}),
        ("api.groq.com", "/openai/v1/chat/completions",
         {"error": {"type": "invalid_request_error", "code": "invalid_api_key"}}),
    ],
)
def test_missing_credential_is_401_in_the_vendors_shape(
    vendor: Vendor, host: str, path: str, expected: dict
) -> None:
    with vendor.http() as client:
        response = client.post(path, json={"model": "m"}, headers={"Host": host})
    assert response.status_code == 401
    body = response.json()
    assert _contains(body, expected), body
    assert body["error"]["message"]


def _contains(actual: object, expected: object) -> bool:
    """`expected` is a subset of `actual`, recursively for dicts."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return actual == expected


@pytest.mark.parametrize(
    ("host", "path", "headers", "text"),
    [
        ("res1.openai.azure.com", "/openai/deployments/d1/chat/completions?api-version=2024-10-21",
         {"api-key": "az"}, "Hello from fake azure"),
        ("api.mistral.ai", "/v1/chat/completions", {"Authorization": "Bearer m"},
         "Hello from fake mistral"),
    ],
)
def test_openai_compatible_vendors_are_named_by_host(
    vendor: Vendor, host: str, path: str, headers: dict, text: str
) -> None:
    with vendor.http() as client:
        response = client.post(path, json={"messages": []}, headers={"Host": host, **headers})
    assert response.json()["choices"][0]["message"]["content"] == text


def test_gemini_generate_and_stream(vendor: Vendor) -> None:
    headers = {"x-goog-api-key": "g"}
    with vendor.http() as client:
        whole = client.post("/v1beta/models/gemini-x:generateContent", json={}, headers=headers)
        with client.stream("POST", "/v1beta/models/gemini-x:streamGenerateContent",
                           json={}, params={"alt": "sse", "key": "q"}) as streamed:
            events = [json.loads(line[6:]) for line in streamed.iter_lines()
                      if line.startswith("data: ")]
    assert whole.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello from fake google"
    assert whole.json()["usageMetadata"]["candidatesTokenCount"] == 4
    raw = _raw_sse(vendor, "/v1beta/models/gemini-x:streamGenerateContent", {}, alt="sse")
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == "Hello from fake google" and len(events) == 4
    assert raw.count(b"\r\n\r\n") == 4  # alt=sse ends events with CRLF
    usage = events[-1]["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


def test_gzip_body_is_parsed_but_recorded_raw(vendor: Vendor) -> None:
    vendor.reset()
    raw = gzip.compress(json.dumps({"model": "gz", "messages": []}).encode())
    headers = {"Authorization": "Bearer k", "Content-Encoding": "gzip",
               "Content-Type": "application/json"}
    with vendor.http() as client:
        response = client.post("/v1/chat/completions", content=raw, headers=headers)
    assert response.json()["model"] == "gz"
    [got] = vendor.received()
    assert got["body_base64"] and got["body"] == base64.b64encode(raw).decode()


# --- streaming and throughput ----------------------------------------------------------


def test_slow_stream_delivers_events_as_they_happen(vendor: Vendor) -> None:
    body = {"model": "slow-stream", "stream": True, "messages": []}
    arrivals: list[float] = []
    with vendor.http() as client, client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 7  # role, 4 words, finish, [DONE]
    # 6 pauses of 0.3 s: a buffered stream would deliver everything at once.
    assert arrivals[-1] - arrivals[0] > 1.2
    assert all(b - a > 0.15 for a, b in zip(arrivals, arrivals[1:], strict=False))


def test_bench_is_fast_path_over_keep_alive(vendor: Vendor) -> None:
    conn = http.client.HTTPSConnection("localhost", vendor.port, context=vendor.ssl_context())
    try:
        replies = []
        for method in ("GET", "POST", "GET"):
            conn.request(method, "/bench", body=b"not json" if method == "POST" else None)
            if not replies:
                first_socket = conn.sock
            response = conn.getresponse()
            replies.append((response.status, response.read()))
            assert conn.sock is first_socket, "connection was not kept alive"
    finally:
        conn.close()
    assert replies == [(200, b'{"ok":true}')] * 3


def test_a_scripted_reply_is_what_every_model_but_echo_says(vendor: Vendor) -> None:
    with vendor.http() as client:
        client.post("/_fake/reply", json={"text": "abcdefgh", "chunk": 3}).raise_for_status()
        assert client.post("/_fake/reply", json={"chunk": 3}).status_code == 400
    try:
        body = {"model": "m", "messages": [], "stream": True}
        pieces = [json.loads(d)["choices"][0]["delta"].get("content")
                  for d in _data(_raw_sse(vendor, "/v1/chat/completions", body))[:-1]]
        assert pieces == ["", "abc", "def", "gh", None]
        assert _say(vendor) == "abcdefgh"
    finally:
        vendor.reset()
    assert _say(vendor) == "Hello from fake anthropic"  # reset forgets it


def _say(vendor: Vendor) -> str:
    with vendor.anthropic() as client:
        answer = client.messages.create(model="m", max_tokens=5, messages=[
            {"role": "user", "content": "hi"}])
    return str(answer.content[0].text)


# --- process and in-process lifecycle --------------------------------------------------


def test_cli_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc, info = _start(tmp_path)
    assert info["ca"] == str(tmp_path / "ca.pem")
    assert _stop(proc) == 0


def test_in_process_stop_closes_idle_keep_alive_connections(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        server = FakeVendor(make_pki(tmp_path))
        port = await server.start()
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        try:
            writer.write(b"GET /bench HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(server.stop(), timeout=STOP_TIMEOUT)
            assert await reader.read() in (b"", b'{"ok":true}')
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass  # the server already tore the connection down
        return [r.path for r in server.received]

    assert asyncio.run(scenario()) == []  # /bench is never recorded
