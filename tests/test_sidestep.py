"""The policy cannot be side-stepped through other endpoints: a model named in the URL
path, batches and batch file uploads, endpoints the catalogue does not know, and a
missing `max_tokens` are all governed (issue 7). In-process pipeline, every addon."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from egressguard.core import apis, batches, forms
from egressguard.core.errors import BadRequest
from egressguard.core.rules import Ask, Decision
from egressguard.core.vendors import catalogue
from egressguard.pipeline import flowstate
from egressguard.pipeline.vendor import describe

OPENAI, ANTHROPIC = "api.openai.com", "api.anthropic.com"
GOOGLE, AZURE = "generativelanguage.googleapis.com", "res1.openai.azure.com"
JSON = "application/json"
CAP = 50  # the `capped` rule's max_tokens
BATCH_CAP = 100  # the `batches` rule's
POLICY = f"""\
version: 1
agents: {{plain: {{}}, capped: {{}}, batcher: {{}}, tuner: {{}}, other-batcher: {{}},
          masked: {{}}}}
rules:
  - name: masked-batches
    match: {{agents: [masked], paths: [/v1/messages/batches]}}
    endpoints: [batches]
  - name: masked
    match: {{agents: [masked]}}
    redact: {{EMAIL_ADDRESS: mask}}
  - name: no-expensive
    match: {{models: [gemini-2.5-pro, gpt4o-big, claude-opus-4-1]}}
    action: deny
    reason: expensive models are not for agents
  - name: batches
    match: {{agents: [batcher, other-batcher]}}
    endpoints: [chat, messages, batches, files]
    models: [gpt-4o-mini, claude-haiku-4-5, gemini-2.5-flash]
    max_tokens: {BATCH_CAP}
    limits: {{agent: {{tokens_per_day: 100000000}}}}
  - name: capped
    match: {{agents: [capped]}}
    models: [gpt-4o-mini, o3, claude-haiku-4-5, gemini-2.5-flash]
    max_tokens: {CAP}
    limits: {{agent: {{tokens_per_day: 100000000}}}}
  - name: tuning
    match: {{agents: [tuner]}}
    endpoints: [fine_tuning, unknown]
  - name: everyone
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def policy_yaml() -> str:
    return POLICY


def send(pipeline, agent: str, host: str, path: str, body: Any = b"",
         headers: tuple[tuple[str, str], ...] = (), method: str = "POST",
         upstream=None):
    auth = ("x-api-key", pipeline.token(agent)) if host == ANTHROPIC else \
        ("Authorization", "Bearer " + pipeline.token(agent))
    return pipeline.send(host, path, method=method, body=body, headers=[auth, *headers],
                         upstream=upstream)


def refused(flow) -> tuple[int, str]:
    """(status, reason) of a refusal, which the audit record names as well."""
    err = flow.metadata[flowstate.REFUSAL]
    return flow.response.status_code, err.reason


def sent(flow) -> Any:
    return orjson.loads(flow.request.content)


# -- 1. the model in the URL path ----------------------------------------------------

def google(name: str) -> Any:
    return catalogue().by_name(name)


@pytest.mark.parametrize("vendor, path, body, model, stream", [
    ("google", "/v1beta/models/gemini-2.5-pro:generateContent", {}, "gemini-2.5-pro", False),
    ("google", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", {},
     "gemini-2.5-pro", True),
    ("google", "/V1BETA/MODELS/Gemini-2.5-PRO:STREAMGENERATECONTENT", {}, "gemini-2.5-pro",
     True),
    ("google", "/v1beta/models/gemini-2.5-pr%6F%3AstreamGenerateContent", {},
     "gemini-2.5-pro", True),
    ("google", "/v1beta/models/gemini-2.5-pro:generateContent",
     {"model": "models/gemini-2.5-pro"}, "gemini-2.5-pro", False),  # agreeing body
    ("google", "/v1beta/tunedModels/My-Tune:generateContent", {}, "tunedModels/my-tune",
     False),
    ("google", "/v1beta/openai/chat/completions", {"model": "models/gemini-2.5-pro"},
     "gemini-2.5-pro", False),
    ("azure_openai", "/openai/deployments/GPT4o-Big/chat/completions?api-version=1", {},
     "gpt4o-big", False),
    ("azure_openai", "/openai/%64eployments/gpt4o-big/chat/completions", {}, "gpt4o-big",
     False),
    # Azure runs the deployment whatever the body says (the SDK sends both)
    ("azure_openai", "/openai/deployments/gpt4o-big/chat/completions",
     {"model": "gpt-4o-mini"}, "gpt4o-big", False),
    # a socket names its deployment in the query; Azure's v1 API its body: names alike
    ("azure_openai", "/openai/realtime?api-version=1&deployment=RT-1", b"", "rt-1", False),
    ("azure_openai", "/openai/v1/chat/completions", {"model": "GPT4o-Big"}, "gpt4o-big",
     False),
])
def test_the_model_is_the_one_the_vendor_runs(vendor, path, body, model, stream) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    info = describe(google(vendor), path, JSON, raw, "GET" if not raw else "POST")
    assert (info.model, info.stream) == (model, stream)


@pytest.mark.parametrize("path, body, reason, message", [
    ("/v1beta/models/gemini-2.5-flash/../gemini-2.5-pro:generateContent", {},
     "path_ambiguous", "the URL path has a dot segment (`.` or `..`), which vendors route "
     "differently; send the plain path"),
    ("/v1beta/models/gemini-2.5-flash%2F..%2Fgemini-2.5-pro:generateContent", {},
     "path_ambiguous", "the URL path has a percent-encoded `/`"),
    ("/v1beta/models/gemini-2.5-flash;x=/gemini-2.5-pro:generateContent", {},
     "path_ambiguous", "the URL path has a `;` parameter"),
    ("/v1beta//models/gemini-2.5-pro:generateContent", {}, "path_ambiguous",
     "an empty segment (`//`)"),
    ("/v1beta/models/gemini-2.5-pro%3fx:generateContent", {}, "path_ambiguous",
     "a percent-encoded `%`, `?` or `#`"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", {"model": "gemini-2.5-pro"},
     "model_conflict", "the URL path names model 'gemini-2.5-flash' and the body "
     "'gemini-2.5-pro'; send the same model in both, or only the path"),
    ("/v1beta/models/gemini-2.5-flash/models/gemini-2.5-pro:generateContent", {},
     "model_conflict", "the URL path names models ['gemini-2.5-flash', 'gemini-2.5-pro']"),
])
def test_a_path_read_two_ways_is_refused(path, body, reason, message) -> None:
    with pytest.raises(BadRequest) as err:
        describe(google("google"), path, JSON, orjson.dumps(body))
    assert (err.value.reason, err.value.status) == (reason, 400)
    assert message in err.value.message


@pytest.mark.parametrize("path", [
    "/v1beta/models/gemini-2.5-pro:generateContent",
    "/v1beta/models/GEMINI-2.5-Pro:generateContent",
    "/v1beta/models/gemini-2.5-pr%6F:streamGenerateContent?alt=sse",
    "/v1beta/models/gemini-2.5-pro:STREAMgenerateContent",
])
def test_a_deny_rule_on_a_path_model_holds_in_every_spelling(pipeline, path) -> None:
    flow = send(pipeline, "plain", GOOGLE, path, {"contents": []})
    assert refused(flow) == (403, "denied_by_rule")
    assert "expensive models are not for agents" in flow.response.text
    assert pipeline.records()[-1]["model"] == "gemini-2.5-pro"


def test_an_azure_deployment_is_governed_whatever_the_body_says(pipeline) -> None:
    flow = send(pipeline, "plain", AZURE, "/openai/deployments/GPT4O-BIG/chat/completions",
                {"model": "gpt-4o-mini", "messages": HI})
    assert refused(flow) == (403, "denied_by_rule")
    ok = send(pipeline, "plain", AZURE, "/openai/deployments/gpt4o-small/chat/completions",
              {"model": "gpt4o-big", "messages": HI})
    assert ok.response.status_code == 200


def test_a_path_trick_is_refused_in_the_vendors_shape_and_audited(pipeline) -> None:
    flow = send(pipeline, "plain", GOOGLE,
                "/v1beta/models/gemini-2.5-flash/%2e%2e/gemini-2.5-pro:generateContent",
                {"contents": []})
    assert refused(flow) == (400, "path_ambiguous")
    assert orjson.loads(flow.response.content)["error"]["status"] == "INVALID_ARGUMENT"
    assert pipeline.records()[-1]["reason"] == "path_ambiguous"


# -- the body as the vendor reads it --------------------------------------------------

def test_a_json_body_sent_as_text_is_still_governed(pipeline) -> None:
    flow = send(pipeline, "plain", OPENAI, "/v1/chat/completions",
                orjson.dumps({"model": "claude-opus-4-1", "messages": HI}),
                (("content-type", "text/plain"),))
    assert refused(flow) == (403, "denied_by_rule")


def test_a_generating_request_without_a_json_body_is_refused(pipeline) -> None:
    flow = send(pipeline, "plain", OPENAI, "/v1/chat/completions",
                b"model=claude-opus-4-1&messages=hi",
                (("content-type", "application/x-www-form-urlencoded"),))
    assert refused(flow) == (400, "body_not_json")


def test_a_method_override_header_is_refused(pipeline) -> None:
    flow = send(pipeline, "plain", GOOGLE, "/v1beta/models/gemini-2.5-flash:generateContent",
                method="GET", headers=(("X-HTTP-Method-Override", "POST"),))
    assert refused(flow) == (400, "method_override")
    assert "method override headers are refused" in flow.response.text


def test_an_upload_names_its_model_in_a_form_field(pipeline) -> None:
    body, content_type = multipart({"model": "gpt4o-big"},
                                   ("file", "a.wav", b"RIFF....WAVE"))
    flow = send(pipeline, "plain", OPENAI, "/v1/audio/transcriptions", body,
                (("content-type", content_type),))
    assert refused(flow) == (403, "denied_by_rule")


@pytest.mark.parametrize("body, problem", [
    (b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\na\r\n'
     b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nb\r\n--x--\r\n',
     "the field 'model' is sent twice"),
    (b'preamble\r\n--x\r\nContent-Disposition: form-data; name="model"\r\n\r\na\r\n--x--',
     "no preamble"),
    (b'--x\r\nContent-Disposition: form-data; name="model"\r\n'
     b'Content-Transfer-Encoding: base64\r\n\r\nYQ==\r\n--x--', "a header other than"),
    (b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\na\r\n--x  \r\nb\r\n--x--',
     "the boundary appears inside a part"),
])
def test_an_ambiguous_multipart_body_is_refused(body, problem) -> None:
    with pytest.raises(forms.FormError, match=problem):
        forms.parse("multipart/form-data; boundary=x", body)


def test_a_generating_request_must_name_its_model_under_a_model_list(pipeline) -> None:
    flow = send(pipeline, "capped", OPENAI, "/v1/responses",
                {"prompt": {"id": "pmpt_1"}, "input": "hi"})
    assert refused(flow) == (403, "model_required")
    assert "name the model in the request" in flow.response.text


# -- 3. endpoints a rule does not name -----------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/assistants"),
    ("POST", "/v1/threads/runs"),
    ("POST", "/v1/uploads"),
    ("POST", "/v1/responses/resp_1/compact"),
    ("GET", "/v1/responses/resp_1/new-thing"),
    ("POST", "/v1/realtime/sessions"),
    ("POST", "/v1/realtime/client_secrets"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/files"),
    ("POST", "/v1/something-new"),
])
def test_an_endpoint_no_rule_names_is_refused(pipeline, method, path) -> None:
    flow = send(pipeline, "plain", OPENAI, path, {"model": "gpt-4o-mini"} if method ==
                "POST" else b"", method=method)
    assert refused(flow) == (403, "endpoint_not_allowed")
    message = orjson.loads(flow.response.content)["error"]["message"]
    assert "is allowed only by a rule that names it in `endpoints:`" in message
    assert path in message and "(policy rule 'everyone')" in message
    assert pipeline.records()[-1]["reason"] == "endpoint_not_allowed"


@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
    ("/v1/moderations", {"model": "omni-moderation-latest", "input": "x"}),
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}),
])
def test_governed_endpoints_stay_allowed(pipeline, path, body) -> None:
    assert send(pipeline, "plain", OPENAI, path, body).response.status_code == 200


def test_a_rule_that_names_an_endpoint_allows_it(pipeline) -> None:
    flow = send(pipeline, "tuner", OPENAI, "/v1/fine_tuning/jobs",
                {"model": "gpt-4o-mini", "training_file": "file-1"})
    assert flow.response.status_code == 200
    assert flow.metadata[flowstate.DECISION].rule_name == "tuning"


# -- 4. a missing max_tokens ---------------------------------------------------------

@pytest.mark.parametrize("host, path, body, where", [
    (OPENAI, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI},
     ("max_tokens",)),
    (OPENAI, "/v1/chat/completions", {"model": "o3", "messages": HI},
     ("max_completion_tokens",)),
    (OPENAI, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI,
                                      "max_tokens": None}, ("max_tokens",)),
    (OPENAI, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI,
                                      "max_completion_tokens": "100000"},
     ("max_completion_tokens",)),
    (OPENAI, "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, ("max_output_tokens",)),
    (ANTHROPIC, "/v1/messages", {"model": "claude-haiku-4-5", "messages": HI},
     ("max_tokens",)),
    (GOOGLE, "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": []},
     ("generationConfig", "maxOutputTokens")),
    (GOOGLE, "/v1beta/models/gemini-2.5-flash:generateContent",
     {"contents": [], "generation_config": {"temperature": 0}},
     ("generation_config", "maxOutputTokens")),
])
def test_a_missing_cap_is_inserted_and_reserved(pipeline, host, path, body, where) -> None:
    flow = send(pipeline, "capped", host, path, body)
    assert flow.response.status_code == 200
    value = sent(flow)
    for key in where:
        value = value[key]
    assert value == CAP
    assert flow.metadata[flowstate.CLAMPS]["max_tokens"]["to"] == CAP
    reserved = flow.metadata[flowstate.LIMITS]["estimate"]["tokens"]
    assert reserved == -(-flow.metadata[flowstate.REQUEST].size // 4) + CAP


def test_each_answer_asked_for_is_reserved(pipeline) -> None:
    flow = send(pipeline, "capped", OPENAI, "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": HI, "n": 8})
    size = flow.metadata[flowstate.REQUEST].size
    assert flow.metadata[flowstate.LIMITS]["estimate"]["tokens"] == -(-size // 4) + 8 * CAP


def test_a_cap_with_no_json_object_to_set_it_in_is_refused(pipeline) -> None:
    flow = send(pipeline, "capped", GOOGLE, "/v1beta/models/gemini-2.5-flash:generateContent",
                [{"contents": []}])
    assert refused(flow) == (400, "body_not_object")


# -- 2. batches ----------------------------------------------------------------------

def message_batch(*models: str, **params: Any) -> dict[str, Any]:
    return {"requests": [{"custom_id": f"r{i}", "params": {
        "model": m, "messages": HI, **params}} for i, m in enumerate(models)]}


def test_an_anthropic_batch_has_each_request_decided_and_capped(pipeline) -> None:
    body = message_batch("claude-haiku-4-5", "claude-haiku-4-5", max_tokens=5000)
    body["requests"][1]["params"].pop("max_tokens")
    flow = send(pipeline, "batcher", ANTHROPIC, "/v1/messages/batches", body)
    assert flow.response.status_code == 200
    assert [r["params"]["max_tokens"] for r in sent(flow)["requests"]] == [BATCH_CAP] * 2
    # reserved: every request's input and its cap, as one request
    estimate = flow.metadata[flowstate.LIMITS]["estimate"]
    inputs = sum(-(-len(orjson.dumps(r["params"])) // 4) for r in body["requests"])
    assert estimate["requests"] == 1
    assert inputs + 2 * BATCH_CAP - 1 <= estimate["tokens"] <= inputs + 2 * BATCH_CAP


@pytest.mark.parametrize("models, status, reason, message", [
    (("claude-haiku-4-5", "claude-sonnet-4-5"), 403, "model_not_allowed",
     "requests[1] ('r1') of the batch: model 'claude-sonnet-4-5' is not allowed"),
    (("claude-opus-4-1",), 403, "denied_by_rule",  # a deny rule holds inside a batch
     "requests[0] ('r0') of the batch: expensive models are not for agents"),
    ((), 400, "batch_unreadable", "the batch holds no requests"),
])
def test_a_batch_with_a_refused_request_is_refused(pipeline, models, status, reason,
                                                   message) -> None:
    flow = send(pipeline, "batcher", ANTHROPIC, "/v1/messages/batches",
                message_batch(*models))
    assert refused(flow) == (status, reason)
    assert message in orjson.loads(flow.response.content)["error"]["message"]
    assert pipeline.records()[-1]["reason"] == reason


def test_a_batch_is_refused_when_its_requests_would_be_redacted_otherwise(pipeline) -> None:
    flow = send(pipeline, "masked", ANTHROPIC, "/v1/messages/batches",
                message_batch("claude-haiku-4-5", max_tokens=10))
    assert refused(flow) == (403, "redaction_not_possible")
    assert "requests[0] ('r0') of the batch falls under policy rule 'masked', whose " \
        "redaction plan is not that of rule 'masked-batches'" in flow.response.text


def test_a_batch_file_is_decided_again_when_a_batch_starts() -> None:
    """The policy may have changed since the upload: a request it now refuses, or caps
    lower than the file does, refuses the batch."""
    vendor = catalogue().by_name("openai")
    outer = Ask(vendor="openai", host=OPENAI, path="/v1/files", agent="a")
    item = batches.Item("line 1 ('a')", "POST", "/v1/chat/completions",
                        {"model": "gpt-4o-mini", "max_tokens": 500}, 100)
    allow = Decision(True, "allowed", "ok", status=200)
    [group] = batches.govern(vendor, outer, allow, batches.Batch([item]), lambda ask: allow)
    batches.recheck([group], lambda ask: allow)
    lower = Decision(True, "allowed", "ok", max_tokens=100, status=200)
    with pytest.raises(batches.BatchRefused) as err:
        batches.recheck([group], lambda ask: lower)
    assert (err.value.label, err.value.decision.reason) == ("line 1 ('a')",
                                                            "max_tokens_over_cap")
    assert "caps max_tokens at 100 and the file asks for 500" in err.value.decision.message


def test_a_gemini_inline_batch_is_governed_and_a_file_batch_refused(pipeline) -> None:
    path = "/v1beta/models/gemini-2.5-flash:batchGenerateContent"
    inline = {"batch": {"input_config": {"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "hi"}]}]}}]}}}}
    flow = send(pipeline, "batcher", GOOGLE, path, inline)
    assert flow.response.status_code == 200
    [item] = sent(flow)["batch"]["input_config"]["requests"]["requests"]
    assert item["request"]["generationConfig"] == {"maxOutputTokens": BATCH_CAP}
    from_file = {"batch": {"input_config": {"file_name": "files/abc"}}}
    flow = send(pipeline, "batcher", GOOGLE, path, from_file)
    assert refused(flow) == (400, "batch_unreadable")
    assert "a batch that reads an uploaded file cannot be checked" in flow.response.text
    other = {"batch": {"input_config": {"requests": {"requests": [
        {"request": {"model": "models/gemini-2.5-pro", "contents": []}}]}}}}
    assert refused(send(pipeline, "batcher", GOOGLE, path, other)) == (400, "model_conflict")
    both = {"batch": {**inline["batch"], "inputConfig": {"requests": {"requests": []}}}}
    flow = send(pipeline, "batcher", GOOGLE, path, both)
    assert refused(flow) == (400, "batch_unreadable")
    assert "gives both input_config and inputConfig" in flow.response.text


def multipart(fields: dict[str, str], file: tuple[str, str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body as the SDKs write it (httpx)."""
    name, filename, data = file
    request = httpx.Request("POST", "https://x/", data=fields, files={name: (filename, data)})
    return request.read(), request.headers["content-type"]


def batch_file(*lines: dict[str, Any]) -> tuple[bytes, str]:
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    return multipart({"purpose": "batch"}, ("file", "batch.jsonl", data))


def line(custom_id: str, model: str, url: str = "/v1/chat/completions",
         **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": HI, **body}}


FILE_STORED = {"id": "file-abc123", "object": "file", "purpose": "batch"}


def upload(pipeline, agent: str, *lines: dict[str, Any]):
    body, content_type = batch_file(*lines)
    flow = send(pipeline, agent, OPENAI, "/v1/files", body,
                (("content-type", content_type),),
                upstream=pipeline.Upstream.json(FILE_STORED))
    flow.metadata["test.content_type"] = content_type
    return flow


def test_an_openai_batch_file_is_read_capped_and_then_runs(pipeline) -> None:
    flow = upload(pipeline, "batcher", line("a", "gpt-4o-mini"),
                  line("b", "gpt-4o-mini", max_tokens=4000))
    assert flow.response.status_code == 200
    parts = forms.parse(flow.metadata["test.content_type"], flow.request.content)
    assert parts["purpose"].text == "batch"
    lines = [orjson.loads(x) for x in parts["file"].data.splitlines()]
    assert [x["body"]["max_tokens"] for x in lines] == [BATCH_CAP, BATCH_CAP]
    assert [x["custom_id"] for x in lines] == ["a", "b"]
    create = {"input_file_id": "file-abc123", "endpoint": "/v1/chat/completions",
              "completion_window": "24h"}
    flow = send(pipeline, "batcher", OPENAI, "/v1/batches", create)
    assert flow.response.status_code == 200
    estimate = flow.metadata[flowstate.LIMITS]["estimate"]
    assert estimate["requests"] == 1 and estimate["tokens"] >= 2 * BATCH_CAP


@pytest.mark.parametrize("agent, file_id", [
    ("batcher", "file-elsewhere"),  # uploaded around egressguard (or before a restart)
    ("other-batcher", "file-abc123"),  # another agent's file
])
def test_a_batch_from_a_file_egressguard_did_not_read_is_refused(pipeline, agent,
                                                                 file_id) -> None:
    assert upload(pipeline, "batcher", line("a", "gpt-4o-mini")).response.status_code == 200
    flow = send(pipeline, agent, OPENAI, "/v1/batches",
                {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                 "completion_window": "24h"})
    assert refused(flow) == (403, "batch_file_unknown")
    assert "upload it again with POST …/files (purpose=batch)" in flow.response.text


@pytest.mark.parametrize("lines, status, reason, message", [
    ((line("a", "gpt-4o-mini"), line("b", "gpt-4o")), 403, "model_not_allowed",
     "line 2 ('b') of the batch: model 'gpt-4o' is not allowed"),
    ((line("a", "claude-opus-4-1"),), 403, "denied_by_rule", "line 1 ('a') of the batch: "),
    ((line("a", "gpt-4o-mini", url="/v1/chat/completions;x"),), 400, "batch_unreadable",
     "line 1 ('a') of the batch: its URL has a `;` parameter"),
    ((line("a", "gpt-4o-mini", url="/v1/fine_tuning/jobs"),), 403, "endpoint_not_allowed",
     "line 1 ('a') of the batch: the fine_tuning endpoint is not allowed"),
    (({"custom_id": "a", "method": "GET", "url": "/v1/models"},), 400, "batch_unreadable",
     "line 1 of the batch file is not a request"),
])
def test_a_batch_file_with_a_refused_line_is_refused(pipeline, lines, status, reason,
                                                     message) -> None:
    flow = upload(pipeline, "batcher", *lines)
    assert refused(flow) == (status, reason)
    assert message in orjson.loads(flow.response.content)["error"]["message"]
    refused_create = send(pipeline, "batcher", OPENAI, "/v1/batches",
                          {"input_file_id": "file-abc123"})
    assert refused(refused_create) == (403, "batch_file_unknown")  # nothing remembered


def test_only_a_batch_upload_is_read_and_an_unreadable_one_refused(pipeline) -> None:
    body, content_type = multipart({"purpose": "user_data"}, ("file", "a.txt", b"notes"))
    flow = send(pipeline, "batcher", OPENAI, "/v1/files", body,
                (("content-type", content_type),))
    assert flow.response.status_code == 200 and flow.request.content == body
    body, content_type = multipart({"purpose": " Batch "}, (
        "file", "b.jsonl", orjson.dumps(line("a", "gpt-4o"))))
    flow = send(pipeline, "batcher", OPENAI, "/v1/files", body,
                (("content-type", content_type),))
    assert refused(flow) == (403, "model_not_allowed")  # read as the batch it may be
    flow = send(pipeline, "batcher", OPENAI, "/v1/files", {"purpose": "batch"})
    assert refused(flow) == (400, "batch_unreadable")
    assert "multipart/form-data only" in flow.response.text
    body, content_type = multipart({}, ("purpose", "p.txt", b"batch"))
    flow = send(pipeline, "batcher", OPENAI, "/v1/files", body,
                (("content-type", content_type),))
    assert refused(flow) == (400, "batch_unreadable")


def test_a_batch_uploaded_in_parts_is_refused(pipeline) -> None:
    flow = send(pipeline, "batcher", OPENAI, "/v1/uploads",
                {"purpose": "batch", "filename": "b.jsonl", "bytes": 10,
                 "mime_type": "text/jsonl"})
    assert refused(flow) == (400, "batch_unreadable")


def test_a_path_helper_agrees_with_what_it_refuses() -> None:
    """Every path `path_problem` lets through cleans to itself but for decoding: what is
    governed is what was sent."""
    for path in ("/v1/chat/completions", "/v1beta/models/gemini-2.5-pr%6F:generateContent",
                 "/openai/deployments/x/chat/completions/"):
        assert apis.path_problem(path) is None
        assert apis.clean_path(path).count("/") == path.rstrip("/").count("/")
