"""VendorRequest: model and stream flag read once from the request; bad JSON refused."""

from __future__ import annotations

import gzip

import orjson
import pytest

from egressguard.core.errors import BadRequest
from egressguard.core.vendors import catalogue
from egressguard.pipeline import flowstate
from egressguard.pipeline.vendor import describe

JSON = "application/json"

DESCRIBE = [
    # id, vendor, path, content type, body, (model, stream)
    ("openai-stream", "openai", "/v1/chat/completions", JSON,
     {"model": "gpt-4o", "stream": True}, ("gpt-4o", True)),
    ("openai-no-stream", "openai", "/v1/chat/completions", JSON, {"model": "gpt-4o"},
     ("gpt-4o", None)),
    ("openai-charset", "openai", "/v1/responses", "application/json; charset=utf-8",
     {"model": "o3", "stream": False}, ("o3", False)),
    ("openai-wrong-types", "openai", "/v1/chat/completions", JSON,
     {"model": 5, "stream": "yes"}, (None, None)),
    ("openai-array-body", "openai", "/v1/chat/completions", JSON, [1, 2], (None, None)),
    ("openai-empty-body", "openai", "/v1/models", JSON, b"", (None, None)),
    ("anthropic", "anthropic", "/v1/messages", JSON,
     {"model": "claude-sonnet-4-5", "stream": True}, ("claude-sonnet-4-5", True)),
    ("gemini-generate", "google", "/v1beta/models/gemini-2.0-flash:generateContent", JSON,
     {"contents": []}, ("gemini-2.0-flash", False)),
    ("gemini-stream", "google",
     "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", JSON,
     {"contents": []}, ("gemini-2.0-flash", True)),
    pytest.param(
        "google", "/v1beta/models/gemini-2.0-flash?key=egt1.claims.signature", JSON, b"",
        ("gemini-2.0-flash", False), id="gemini-model-get-with-key-query"),
    ("azure-deployment", "azure_openai",
     "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-06-01", JSON,
     {"messages": [], "stream": True}, ("gpt4o-prod", True)),
    ("azure-deployment-wins", "azure_openai",
     "/openai/deployments/gpt4o-prod/chat/completions", JSON, {"model": "other"},
     ("gpt4o-prod", False)),
    ("azure-v1-model-in-body", "azure_openai", "/openai/v1/chat/completions", JSON,
     {"model": "gpt-4o"}, ("gpt-4o", False)),
    ("multipart-model-field", "openai", "/v1/audio/transcriptions",
     "multipart/form-data; boundary=x",
     b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--x--",
     ("whisper-1", None)),
    # a JSON body is read as the vendor may read it, whatever its content type says
    ("text-plain-json-read", "openai", "/v1/chat/completions", "text/plain",
     b'{"model": "gpt-4o"}', ("gpt-4o", None)),
    ("binary-not-json", "openai", "/v1/audio/speech", "application/octet-stream",
     b"\x00\x01", (None, None)),
]


def _case(case):
    """Table rows are (id, ...values); rows that need marks are already pytest.param."""
    return case if hasattr(case, "marks") else pytest.param(*case[1:], id=case[0])


def _bytes(body) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


@pytest.mark.parametrize(("vendor", "path", "content_type", "body", "expected"),
                         [_case(c) for c in DESCRIBE])
def test_describe(vendor, path, content_type, body, expected):
    info = describe(catalogue().by_name(vendor), path, content_type, _bytes(body))
    assert (info.model, info.stream) == expected


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"model": "gpt-4o",}',
                                  b'{"model": "private-prompt-text"', b"\xff\xfe"])
def test_describe_refuses_invalid_json(body):
    with pytest.raises(BadRequest) as err:
        describe(catalogue().by_name("openai"), "/v1/chat/completions", JSON, body)
    assert (err.value.reason, err.value.status) == ("body_not_json", 400)
    assert b"private-prompt-text" not in err.value.message.encode()


def test_request_hook_records_what_is_asked(pipeline):
    flow = pipeline.send("api.openai.com", body={"model": "gpt-4o", "stream": True},
                         headers=[("Authorization", "Bearer " + pipeline.token())])
    assert flow.response.status_code == 200
    info = flow.metadata[flowstate.REQUEST]
    assert (info.model, info.stream, info.body["model"]) == ("gpt-4o", True, "gpt-4o")


INVALID_JSON = [
    # host, path, header, expected body without its message
    ("api.openai.com", "/v1/chat/completions", "Authorization",
     {"error": {"type": "invalid_request_error", "param": None, "code": "body_not_json"}}),
    ("api.anthropic.com", "/v1/messages", "x-api-key",
     {"type": "error", "error": {"type": "invalid_request_error"}}),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent",
     "x-goog-api-key", {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
]


@pytest.mark.parametrize(("host", "path", "header", "expected"), INVALID_JSON)
def test_invalid_json_is_400_in_vendor_shape(pipeline, host, path, header, expected):
    token = pipeline.token()
    flow = pipeline.send(host, path, body=b'{"model": ',
                         headers=[("content-type", JSON),
                                  (header, ("Bearer " if header == "Authorization" else "")
                                   + token)])
    assert flow.response.status_code == 400
    body = orjson.loads(flow.response.content)
    assert body["error"].pop("message")
    assert body == expected
    assert flow.metadata[flowstate.REFUSAL].reason == "body_not_json"
    assert flowstate.SECRET not in flow.metadata  # refused before the key is fetched


@pytest.mark.parametrize(("encoding", "body", "status", "model"), [
    ("gzip", gzip.compress(b'{"model": "gpt-4o"}'), 200, "gpt-4o"),
    ("gzip", b"this is not gzip", 400, None),
])
def test_content_encoding(pipeline, encoding, body, status, model):
    flow = pipeline.send("api.openai.com", body=body,
                         headers=[("content-type", JSON), ("content-encoding", encoding),
                                  ("Authorization", "Bearer " + pipeline.token())])
    assert flow.response.status_code == status
    if status == 400:
        assert orjson.loads(flow.response.content)["error"]["code"] == "body_undecodable"
    else:
        assert flow.metadata[flowstate.REQUEST].model == model


def test_multipart_upload_is_read_for_its_model(pipeline):
    flow = pipeline.send("api.openai.com", "/v1/audio/transcriptions",
                         body=b'--x\r\nContent-Disposition: form-data; name="file"; '
                              b'filename="a.wav"\r\n\r\nRIFF\r\n--x--\r\n',
                         headers=[("content-type", "multipart/form-data; boundary=x"),
                                  ("Authorization", "Bearer " + pipeline.token())])
    assert flow.response.status_code == 200
    info = flow.metadata[flowstate.REQUEST]
    assert (info.model, info.endpoint, list(info.form)) == (None, "audio", ["file"])


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
WITH_USAGE = {**CHAT, "stream_options": {"include_usage": True}}

STREAM_USAGE = [
    # id, host, path, body sent, body the vendor gets (None: the bytes sent), stream filtered
    ("openai", "api.openai.com", "/v1/chat/completions", CHAT, WITH_USAGE, True),
    ("agent-said-no", "api.openai.com", "/v1/chat/completions",
     {**CHAT, "stream_options": {"include_usage": False}}, WITH_USAGE, True),
    ("query-ignored", "api.openai.com", "/v1/chat/completions?trace=1", CHAT, WITH_USAGE,
     True),
    ("agent-asked", "api.openai.com", "/v1/chat/completions", WITH_USAGE, None, False),
    ("not-streamed", "api.openai.com", "/v1/chat/completions", {**CHAT, "stream": False},
     None, False),
    ("responses-api", "api.openai.com", "/v1/responses", {**CHAT, "input": "hi"}, None, False),
    ("mistral-would-reject-it", "api.mistral.ai", "/v1/chat/completions", CHAT, None, False),
]


@pytest.mark.parametrize(("host", "path", "body", "upstream", "hidden"),
                         [pytest.param(*c[1:], id=c[0]) for c in STREAM_USAGE])
def test_streamed_chat_is_made_to_report_usage(pipeline, host, path, body, upstream, hidden):
    sent = orjson.dumps(body, option=orjson.OPT_INDENT_2)  # not how orjson re-serialises
    flow = pipeline.send(host, path, body=sent,
                         headers=[("content-type", JSON),
                                  ("Authorization", "Bearer " + pipeline.token())])
    assert flow.response.status_code == 200
    if upstream is None:
        assert flow.request.raw_content == sent  # byte for byte
    else:
        assert orjson.loads(flow.request.content) == upstream
        assert flow.request.headers["content-length"] == str(len(flow.request.raw_content))
    assert flow.metadata.get(flowstate.HIDE_STREAM_USAGE, False) is hidden
    assert flow.metadata[flowstate.REQUEST].body == (upstream or body)


def test_gzip_body_is_asked_for_usage_and_stays_gzip(pipeline):
    flow = pipeline.send("api.openai.com", body=gzip.compress(orjson.dumps(CHAT)),
                         headers=[("content-type", JSON), ("content-encoding", "gzip"),
                                  ("Authorization", "Bearer " + pipeline.token())])
    assert flow.request.headers["content-encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(flow.request.raw_content)) == WITH_USAGE
