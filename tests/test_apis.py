"""Vendor API request shapes (`egressguard.core.apis`): endpoint kinds, output caps, tools."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from egressguard.core import apis
from egressguard.core.apis import (
    CAP_BODY,
    CAP_NONE,
    CAP_UNSEEN,
    ENDPOINTS,
    UNNAMED,
    Endpoint,
    endpoint,
    max_tokens,
    set_max_tokens,
    tool_names,
)
from egressguard.core.vendors import APIS, Vendor, catalogue


def vendor(name: str) -> Vendor:
    found = catalogue().by_name(name)
    assert found is not None
    return found


B, N, U = CAP_BODY, CAP_NONE, CAP_UNSEEN
GEMINI = "/v1beta/models/gemini-2.5-pro"
DEPLOY = "/openai/deployments/gpt4o-prod"
LIVE = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.mark.parametrize("name, method, path, kind, api, cap", [
    # OpenAI
    ("openai", "POST", "/v1/chat/completions", "chat", "openai", B),
    ("openai", "GET", "/v1/chat/completions", "chat", "openai", N),  # list stored ones
    ("openai", "GET", "/v1/chat/completions/chatcmpl-1/messages", "chat", "openai", N),
    ("openai", "POST", "/v1/completions", "chat", "openai", B),
    ("openai", "POST", "/v1/responses", "responses", "openai", B),
    ("openai", "GET", "/v1/responses/resp_1", "responses", "openai", N),
    ("openai", "POST", "/v1/responses/resp_1/cancel", "responses", "openai", N),
    ("openai", "GET", "/v1/responses/resp_1/input_items", "responses", "openai", N),
    ("openai", "POST", "/v1/responses/input_tokens", "responses", "openai", N),
    ("openai", "POST", "/v1/conversations", "responses", "openai", N),
    ("openai", "POST", "/v1/embeddings", "embeddings", "openai", N),
    ("openai", "POST", "/v1/images/generations", "images", "openai", N),
    ("openai", "POST", "/v1/images/edits", "images", "openai", N),
    ("openai", "POST", "/v1/audio/transcriptions", "audio", "openai", N),
    ("openai", "POST", "/v1/audio/speech", "audio", "openai", N),
    ("openai", "POST", "/v1/files", "files", "openai", N),
    ("openai", "GET", "/v1/files/file-1/content", "files", "openai", N),
    ("openai", "POST", "/v1/uploads/upload_1/parts", "files", "openai", N),
    ("openai", "POST", "/v1/vector_stores/vs_1/files", "files", "openai", N),
    ("openai", "GET", "/v1/realtime", "realtime", "openai", U),  # the WebSocket upgrade
    # what lets a client reach the vendor without egressguard: never implied
    ("openai", "POST", "/v1/realtime/client_secrets", "direct_sessions", "openai", N),
    ("openai", "POST", "/v1/realtime/calls", "direct_sessions", "openai", N),
    ("openai", "POST", "/v1/realtime/sessions", "direct_sessions", "openai", N),
    ("openai", "GET", "/v1/models", "models", "openai", N),
    ("openai", "GET", "/v1/models/gpt-4o", "models", "openai", N),
    ("openai", "POST", "/v1/batches", "batches", "openai", U),  # requests in a file
    ("openai", "POST", "/v1/batches/batch_1/cancel", "batches", "openai", N),
    ("openai", "POST", "/v1/threads/runs", "assistants", "openai", U),
    ("openai", "POST", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs", "assistants",
     "openai", U),
    ("openai", "POST", "/v1/assistants", "assistants", "openai", N),
    ("openai", "POST", "/v1/moderations", "other", "openai", N),
    ("openai", "POST", "/v1/fine_tuning/jobs", "fine_tuning", "openai", N),
    ("openai", "POST", "/v1/vector_stores", "files", "openai", N),
    ("openai", "POST", "/v1/something-new", "unknown", "openai", U),  # may generate
    ("openai", "GET", "/v1/something-new", "unknown", "openai", N),
    ("openai", "GET", "/", "unknown", "openai", N),
    # known paths are known for their methods and sub-paths only: the rest is unknown
    ("openai", "POST", "/v1/responses/compact", "unknown", "openai", U),
    ("openai", "POST", "/v1/responses/resp_1/input_items", "unknown", "openai", U),
    ("openai", "DELETE", "/v1/responses/resp_1", "responses", "openai", N),
    ("openai", "POST", "/v1/responses/resp_1/anything/else", "unknown", "openai", U),
    ("openai", "POST", "/v1/models/gpt-4o", "unknown", "openai", U),
    ("openai", "POST", "/v1/images/new-kind", "unknown", "openai", U),
    ("openai", "GET", "/v1/chat/completions/chatcmpl-1/messages/x", "unknown", "openai", N),
    ("anthropic", "POST", "/v1/messages/batches/msgbatch_1/other", "unknown", "anthropic",
     U),
    # the query string, a trailing slash, case and encoding tricks change nothing
    ("openai", "POST", "/v1/chat/completions/?x=1", "chat", "openai", B),
    ("openai", "POST", "/v1/chat/completions?a=/v1/embeddings", "chat", "openai", B),
    ("openai", "POST", "/V1/Chat/Completions", "chat", "openai", B),
    ("openai", "POST", "/v1/chat%2Fcompletions", "chat", "openai", B),
    ("openai", "POST", "/v1//chat/./completions", "chat", "openai", B),
    ("openai", "POST", "/v1/embeddings/../chat/completions", "chat", "openai", B),
    ("openai", "POST", "/v1/chat/completions;x=1", "chat", "openai", B),
    ("openai", "post", "/v1/chat/completions", "chat", "openai", B),
    # OpenAI-compatible vendors, each under its own prefix
    ("groq", "POST", "/openai/v1/chat/completions", "chat", "openai", B),
    ("groq", "POST", "/openai/v1/audio/transcriptions", "audio", "openai", N),
    ("openrouter", "POST", "/api/v1/chat/completions", "chat", "openai", B),
    ("openrouter", "POST", "/api/v1/responses", "responses", "openai", B),
    ("openrouter", "GET", "/api/v1/models/anthropic/claude-sonnet-4.5/endpoints", "models",
     "openai", N),
    ("fireworks", "POST", "/inference/v1/chat/completions", "chat", "openai", B),
    ("fireworks", "POST", "/inference/v1/completions", "chat", "openai", B),
    ("together", "POST", "/v1/chat/completions", "chat", "openai", B),
    ("together", "POST", "/v1/images/generations", "images", "openai", N),
    ("deepseek", "POST", "/chat/completions", "chat", "openai", B),
    ("deepseek", "POST", "/beta/completions", "chat", "openai", B),  # FIM
    ("deepseek", "POST", "/anthropic/v1/messages", "messages", "anthropic", B),
    ("xai", "POST", "/v1/chat/completions", "chat", "openai", B),
    ("xai", "POST", "/v1/responses", "responses", "openai", B),
    ("xai", "POST", "/v1/messages", "messages", "anthropic", B),
    ("xai", "GET", "/v1/chat/deferred-completion/req_1", "chat", "openai", N),
    ("mistral", "POST", "/v1/chat/completions", "chat", "openai", B),
    ("mistral", "POST", "/v1/fim/completions", "chat", "openai", B),
    ("mistral", "POST", "/v1/agents/completions", "chat", "openai", B),
    ("mistral", "POST", "/v1/conversations", "chat", "openai", U),  # generates, cap nested
    ("mistral", "POST", "/v1/conversations/conv_1/restart", "chat", "openai", U),
    ("mistral", "POST", "/v1/agents", "unknown", "openai", U),
    ("mistral", "POST", "/v1/batch/jobs", "unknown", "openai", U),
    ("mistral", "POST", "/v1/chat/moderations", "other", "openai", N),
    ("mistral", "POST", "/v1/embeddings", "embeddings", "openai", N),
    # Azure OpenAI: deployments, the v1 API, the preview paths
    ("azure_openai", "POST", DEPLOY + "/chat/completions?api-version=2024-10-21", "chat",
     "azure_openai", B),
    ("azure_openai", "POST", DEPLOY + "/completions", "chat", "azure_openai", B),
    ("azure_openai", "POST", DEPLOY + "/extensions/chat/completions", "chat", "azure_openai", B),
    ("azure_openai", "POST", DEPLOY + "/embeddings", "embeddings", "azure_openai", N),
    ("azure_openai", "POST", DEPLOY + "/images/generations", "images", "azure_openai", N),
    ("azure_openai", "POST", DEPLOY + "/audio/transcriptions", "audio", "azure_openai", N),
    ("azure_openai", "POST", "/openai/v1/chat/completions", "chat", "azure_openai", B),
    ("azure_openai", "POST", "/openai/v1/responses", "responses", "azure_openai", B),
    ("azure_openai", "POST", "/openai/responses?api-version=preview", "responses",
     "azure_openai", B),
    ("azure_openai", "GET", "/openai/realtime?deployment=rt", "realtime", "azure_openai", U),
    ("azure_openai", "POST", "/openai/files", "files", "azure_openai", N),
    ("azure_openai", "GET", "/openai/models", "models", "azure_openai", N),
    ("azure_openai", "GET", "/openai/deployments", "unknown", "azure_openai", N),
    ("azure_openai", "POST", "/openai/batches", "batches", "azure_openai", U),
    # Anthropic
    ("anthropic", "POST", "/v1/messages", "messages", "anthropic", B),
    ("anthropic", "POST", "/v1/messages/count_tokens", "messages", "anthropic", N),
    ("anthropic", "POST", "/v1/messages/batches", "batches", "anthropic", B),
    ("anthropic", "GET", "/v1/messages/batches/msgbatch_1/results", "batches", "anthropic", N),
    ("anthropic", "POST", "/v1/messages/batches/msgbatch_1/cancel", "batches", "anthropic", N),
    ("anthropic", "POST", "/v1/complete", "chat", "anthropic", B),
    ("anthropic", "POST", "/v1/files", "files", "anthropic", N),
    ("anthropic", "GET", "/v1/models/claude-sonnet-4-5", "models", "anthropic", N),
    ("anthropic", "POST", "/v1/chat/completions", "chat", "openai", B),  # OpenAI SDK compat
    ("anthropic", "GET", "/v1/organizations/usage_report/messages", "unknown", "anthropic",
     N),
    # Google Gemini
    ("google", "POST", GEMINI + ":generateContent", "chat", "google", B),
    ("google", "POST", GEMINI + ":streamGenerateContent?alt=sse", "chat", "google", B),
    ("google", "POST", "/v1/models/gemini-2.5-flash:generateContent", "chat", "google", B),
    ("google", "POST", "/v1beta/tunedModels/my-tune:generateContent", "chat", "google", B),
    ("google", "POST", GEMINI + ":countTokens", "chat", "google", N),
    ("google", "POST", "/v1beta/models/gemini-embedding-001:embedContent", "embeddings",
     "google", N),
    ("google", "POST", "/v1beta/models/text-embedding-004:batchEmbedContents", "embeddings",
     "google", N),
    ("google", "POST", GEMINI + ":batchGenerateContent", "batches", "google", B),
    ("google", "POST", "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent", "batches",
     "google", N),
    ("google", "POST", "/v1beta/batches/b1:cancel", "batches", "google", N),
    ("google", "POST", "/v1beta/models/imagen-4.0-generate-001:predict", "images", "google", N),
    ("google", "POST", "/v1beta/models/veo-3.0-generate-001:predictLongRunning", "unknown",
     "google", U),
    ("google", "POST", "/upload/v1beta/files", "files", "google", N),
    ("google", "GET", "/v1beta/files/abc", "files", "google", N),
    ("google", "POST", "/upload/v1beta/fileSearchStores/s1:uploadToFileSearchStore", "files",
     "google", N),
    ("google", "GET", "/v1beta/models", "models", "google", N),
    ("google", "GET", GEMINI, "models", "google", N),
    ("google", "POST", GEMINI + ":somethingNew", "unknown", "google", U),  # never `models`
    ("google", "GET", LIVE + "?key=K", "realtime", "google", U),
    ("google", "GET", LIVE.replace("v1beta", "v1alpha") + "Constrained", "realtime", "google",
     U),
    ("google", "POST", "/v1alpha/auth_tokens", "direct_sessions", "google", N),
    ("google", "POST", "/v1beta/tunedModels", "fine_tuning", "google", N),
    ("google", "POST", "/v1beta/tunedModels/my-tune:generateContent", "chat", "google", B),
    ("google", "POST", "/v1beta/interactions", "responses", "google_interactions", B),
    ("google", "GET", "/v1beta/interactions/int_1", "responses", "google_interactions", N),
    ("google", "POST", "/v1beta/cachedContents", "other", "google", N),
    ("google", "POST", "/v1beta/openai/chat/completions", "chat", "openai", B),
    ("google", "POST", "/v1beta/openai/embeddings", "embeddings", "google", N),
    ("google", "POST", "/v1beta/openai/images/generations", "images", "google", N),
    ("google", "GET", "/v1beta/openai/models", "models", "google", N),
    # Cohere
    ("cohere", "POST", "/v2/chat", "chat", "cohere", B),
    ("cohere", "POST", "/v1/chat", "chat", "cohere", B),
    ("cohere", "POST", "/v2/embed", "embeddings", "cohere", N),
    ("cohere", "POST", "/v1/embed", "embeddings", "cohere", N),
    ("cohere", "POST", "/v2/rerank", "other", "cohere", N),
    ("cohere", "POST", "/v1/embed-jobs", "batches", "cohere", N),
    ("cohere", "GET", "/v1/models", "models", "cohere", N),
    ("cohere", "POST", "/compatibility/v1/chat/completions", "chat", "openai", B),
])
def test_endpoint(name: str, method: str, path: str, kind: str, api: str, cap: str) -> None:
    found = endpoint(vendor(name), method, path)
    assert (found, found.api, found.cap) == (kind, api, cap)
    assert found in ENDPOINTS


def test_every_rule_names_a_known_endpoint_and_every_api_has_a_table() -> None:
    rules = [*apis._COMMON, *(r for rs in apis._NATIVE.values() for r in rs),
             *(r for rs in apis._VENDOR.values() for r in rs)]
    assert {r.endpoint for r in rules} <= set(ENDPOINTS)
    assert set(apis._TABLES) == set(APIS)
    shapes = {r.api for r in rules if r.api} | set(APIS)
    assert shapes <= set(apis._TOOLS)
    assert {api for api, _ in apis._CAPS} <= shapes
    assert all(v.api in APIS for v in catalogue().vendors)


def test_an_endpoint_is_its_plain_name_and_survives_copies() -> None:
    found = endpoint(vendor("anthropic"), "POST", "/v1/messages")
    assert found == "messages" and hash(found) == hash("messages")
    assert found in frozenset({"messages"}) and f"{found}" == "messages"
    for twin in (copy.copy(found), copy.deepcopy(found), pickle.loads(pickle.dumps(found))):
        assert (twin, twin.api, twin.cap) == ("messages", "anthropic", CAP_BODY)


# ---- max_tokens ---------------------------------------------------------------------

GEN = {"generationConfig": {"maxOutputTokens": 256}}


@pytest.mark.parametrize("api, kind, body, expected", [
    ("openai", "chat", {"max_tokens": 100}, 100),
    ("openai", "chat", {"max_completion_tokens": 200}, 200),
    ("openai", "chat", {"max_completion_tokens": 200, "max_tokens": 100}, 200),
    # either field may be the one a compatible vendor honours: the larger counts
    ("openai", "chat", {"max_completion_tokens": 10, "max_tokens": 100_000}, 100_000),
    ("openai", "chat", {"max_tokens": None}, None),
    ("openai", "chat", {"max_tokens": None, "max_completion_tokens": 7}, 7),
    ("openai", "chat", {}, None),
    ("openai", "chat", {"max_tokens": True}, None),
    ("openai", "chat", {"max_tokens": "100"}, None),
    ("openai", "chat", {"max_tokens": 100.0}, None),
    # one unreadable field puts the cap in doubt: None, so a policy clamps it
    ("openai", "chat", {"max_completion_tokens": 10, "max_tokens": 1e6}, None),
    ("openai", "chat", [{"max_tokens": 1}], None),
    ("openai", "chat", "max_tokens", None),
    ("openai", "responses", {"max_output_tokens": 300}, 300),
    ("openai", "responses", {"max_tokens": 300}, None),
    ("azure_openai", "chat", {"max_completion_tokens": 50}, 50),
    ("azure_openai", "responses", {"max_output_tokens": 60}, 60),
    ("anthropic", "messages", {"max_tokens": 1024}, 1024),
    ("anthropic", "messages", {"max_tokens": False}, None),
    ("anthropic", "chat", {"max_tokens_to_sample": 64}, 64),
    ("google", "chat", GEN, 256),
    ("google", "chat", {"generation_config": {"max_output_tokens": 128}}, 128),
    ("google", "chat", {"generationConfig": {"max_output_tokens": 5, "maxOutputTokens": 9}}, 9),
    ("google", "chat", {"generationConfig": {"temperature": 0.1}}, None),
    ("google", "chat", {"generationConfig": [256]}, None),
    ("google", "chat", {"generationConfig": None}, None),
    ("google", "chat", {"maxOutputTokens": 256}, None),  # not where Gemini reads it
    ("google_interactions", "responses", {"generation_config": {"max_output_tokens": 77}}, 77),
    ("cohere", "chat", {"max_tokens": 500}, 500),
    ("openai", "embeddings", {"max_tokens": 5}, None),
    ("openai", "other", {"max_tokens": 5}, None),
    ("nonsense", "chat", {"max_tokens": 5}, None),
    # batches with their requests inline: the largest, None if any has none
    ("anthropic", "batches", {"requests": [{"params": {"max_tokens": 10}},
                                           {"params": {"max_tokens": 30}}]}, 30),
    ("anthropic", "batches", {"requests": [{"params": {"max_tokens": 10}}, {"params": {}}]},
     None),
    ("anthropic", "batches", {"requests": []}, None),
    ("anthropic", "batches", {"requests": "x"}, None),
    ("anthropic", "batches", {"requests": [None]}, None),
    ("google", "batches", {"batch": {"inputConfig": {"requests": {"requests": [
        {"request": GEN}, {"request": {"generationConfig": {"maxOutputTokens": 8}}}]}}}}, 256),
    ("google", "batches", {"batch": {"input_config": {"requests": {"requests": [
        {"request": GEN}]}}}}, 256),
    ("google", "batches", {"batch": {"inputConfig": {"fileName": "files/f"}}}, None),
    ("openai", "batches", {"input_file_id": "file-1"}, None),
])
def test_max_tokens(api: str, kind: str, body: Any, expected: int | None) -> None:
    assert max_tokens(api, kind, body) == expected


def test_an_endpoint_reads_the_body_in_the_shape_its_path_speaks() -> None:
    """Gemini's OpenAI-compatible path is OpenAI-shaped, whatever the vendor's api."""
    compat = endpoint(vendor("google"), "POST", "/v1beta/openai/chat/completions")
    body = {"model": "gemini-2.5-flash", "max_tokens": 5,
            "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert max_tokens("google", compat, body) == 5
    assert tool_names("google", compat, body) == ("f",)
    set_max_tokens("google", compat, body, 3)
    assert body["max_tokens"] == 3 and "generationConfig" not in body


# ---- set_max_tokens -----------------------------------------------------------------

@pytest.mark.parametrize("api, kind, body, n, expected", [
    # present fields are set, every one of them
    ("openai", "chat", {"max_tokens": 9000}, 100, {"max_tokens": 100}),
    ("openai", "chat", {"max_completion_tokens": 9000}, 100, {"max_completion_tokens": 100}),
    ("openai", "chat", {"max_completion_tokens": 9, "max_tokens": 9}, 5,
     {"max_completion_tokens": 5, "max_tokens": 5}),
    ("openai", "chat", {"max_tokens": None}, 5, {"max_tokens": 5}),
    ("openai", "chat", {"max_tokens": "lots"}, 5, {"max_tokens": 5}),
    # none present: reasoning models refuse max_tokens; everyone else takes it
    ("openai", "chat", {"model": "o3"}, 5, {"model": "o3", "max_completion_tokens": 5}),
    ("openai", "chat", {"model": "o4-mini"}, 5, {"model": "o4-mini", "max_completion_tokens": 5}),
    ("openai", "chat", {"model": "gpt-5-mini"}, 5,
     {"model": "gpt-5-mini", "max_completion_tokens": 5}),
    ("openai", "chat", {"model": "gpt-4o"}, 5, {"model": "gpt-4o", "max_tokens": 5}),
    ("openai", "chat", {"model": "mistral-large-latest"}, 5,
     {"model": "mistral-large-latest", "max_tokens": 5}),
    ("openai", "chat", {"model": "openai/o3"}, 5, {"model": "openai/o3", "max_tokens": 5}),
    ("openai", "chat", {"model": "omni-moderation-latest"}, 5,
     {"model": "omni-moderation-latest", "max_tokens": 5}),
    ("openai", "chat", {}, 5, {"max_tokens": 5}),
    ("openai", "chat", {"model": 3}, 5, {"model": 3, "max_tokens": 5}),
    ("azure_openai", "chat", {}, 5, {"max_completion_tokens": 5}),
    ("azure_openai", "chat", {"max_tokens": 50}, 5, {"max_tokens": 5}),
    ("openai", "responses", {"model": "gpt-5"}, 5, {"model": "gpt-5", "max_output_tokens": 5}),
    ("anthropic", "messages", {"max_tokens": 4096}, 5, {"max_tokens": 5}),
    ("anthropic", "messages", {}, 5, {"max_tokens": 5}),
    ("anthropic", "chat", {"max_tokens_to_sample": 100}, 5, {"max_tokens_to_sample": 5}),
    ("cohere", "chat", {}, 5, {"max_tokens": 5}),
    # Gemini: into the config the request has, in its spelling, else a new one
    ("google", "chat", {}, 5, {"generationConfig": {"maxOutputTokens": 5}}),
    ("google", "chat", {"generationConfig": None}, 5, {"generationConfig": {"maxOutputTokens": 5}}),
    ("google", "chat", {"generationConfig": {"temperature": 0}}, 5,
     {"generationConfig": {"temperature": 0, "maxOutputTokens": 5}}),
    ("google", "chat", {"generation_config": {"max_output_tokens": 900}}, 5,
     {"generation_config": {"max_output_tokens": 5}}),
    ("google", "chat", {"generation_config": {}}, 5,
     {"generation_config": {"maxOutputTokens": 5}}),
    ("google", "chat", {"generationConfig": [1]}, 5, {"generationConfig": {"maxOutputTokens": 5}}),
    ("google_interactions", "responses", {}, 5, {"generation_config": {"max_output_tokens": 5}}),
    # batches: each request whose cap is missing or above n
    ("anthropic", "batches",
     {"requests": [{"params": {"max_tokens": 3}}, {"params": {"max_tokens": 99}}, {"params": {}},
                   "junk", {"params": None}]}, 5,
     {"requests": [{"params": {"max_tokens": 3}}, {"params": {"max_tokens": 5}},
                   {"params": {"max_tokens": 5}}, "junk", {"params": None}]}),
    ("google", "batches", {"batch": {"inputConfig": {"requests": {"requests": [
        {"request": {"generationConfig": {"maxOutputTokens": 99}}}]}}}}, 5,
     {"batch": {"inputConfig": {"requests": {"requests": [
         {"request": {"generationConfig": {"maxOutputTokens": 5}}}]}}}}),
    # nothing to cap
    ("openai", "embeddings", {"input": "x"}, 5, {"input": "x"}),
    ("openai", "batches", {"input_file_id": "f"}, 5, {"input_file_id": "f"}),
])
def test_set_max_tokens(api: str, kind: str, body: dict[str, Any], n: int,
                        expected: dict[str, Any]) -> None:
    set_max_tokens(api, kind, body, n)
    assert body == expected
    assert (max_tokens(api, kind, body) or 0) <= n  # never above the clamp


@pytest.mark.parametrize("name, path", [
    ("anthropic", "/v1/messages/count_tokens"),
    ("google", GEMINI + ":countTokens"),
    ("openai", "/v1/responses/input_tokens"),
])
def test_a_request_without_an_output_cap_is_left_alone(name: str, path: str) -> None:
    body: dict[str, Any] = {"model": "m", "messages": []}
    set_max_tokens(vendor(name).api, endpoint(vendor(name), "POST", path), body, 5)
    assert body == {"model": "m", "messages": []}


def test_a_clamp_is_read_back() -> None:
    for name, path, body in [
        ("openai", "/v1/chat/completions", {"model": "gpt-5", "max_tokens": 10_000}),
        ("google", GEMINI + ":generateContent", {"generation_config": {}}),
        ("anthropic", "/v1/messages", {"max_tokens": 10_000}),
    ]:
        kind = endpoint(vendor(name), "POST", path)
        set_max_tokens(vendor(name).api, kind, body, 64)
        assert max_tokens(vendor(name).api, kind, body) == 64


# ---- tool_names ---------------------------------------------------------------------

def fn(name: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {}}}


@pytest.mark.parametrize("api, kind, body, expected", [
    # OpenAI chat completions
    ("openai", "chat", {"tools": [fn("get_weather"), fn("search")]}, ("get_weather", "search")),
    ("openai", "chat", {"tools": [fn("a"), fn("a")]}, ("a",)),
    ("openai", "chat", {"functions": [{"name": "legacy"}]}, ("legacy",)),
    ("openai", "chat", {"tools": [fn("a")], "functions": [{"name": "b"}]}, ("a", "b")),
    ("openai", "chat", {"tools": [{"type": "custom", "custom": {"name": "grammar_tool"}}]},
     ("grammar_tool",)),
    ("openai", "chat", {"web_search_options": {}}, ("web_search",)),
    ("openai", "chat", {"web_search_options": None}, ()),
    ("openai", "chat", {"plugins": [{"id": "web"}]}, ("plugin:web",)),  # OpenRouter
    ("openai", "chat", {"search_parameters": {"mode": "auto"}}, ("live_search",)),  # xAI
    ("openai", "chat", {"tools": []}, ()),
    ("openai", "chat", {"tools": None}, ()),
    ("openai", "chat", {}, ()),
    # malformed: what can be read, and <unnamed> for what cannot
    ("openai", "chat", {"tools": {"function": {"name": "x"}}}, (UNNAMED,)),
    ("openai", "chat", {"tools": "get_weather"}, (UNNAMED,)),
    ("openai", "chat", {"tools": [fn(42), fn("ok")]}, (UNNAMED, "ok")),
    ("openai", "chat", {"tools": [fn("")]}, (UNNAMED,)),
    ("openai", "chat", {"tools": [{"type": "function"}]}, (UNNAMED,)),
    ("openai", "chat", {"tools": [{"type": "function", "function": "f"}]}, (UNNAMED,)),
    ("openai", "chat", {"tools": [None, 3, "x", []]}, (UNNAMED,)),
    ("openai", "chat", {"tools": [{"type": ["function"], "function": {"name": "f"}}]},
     (UNNAMED,)),
    ("openai", "chat", {"functions": [{"name": None}], "plugins": "web"}, (UNNAMED,)),
    # both spellings of a name are reported: a lax vendor may read either
    ("openai", "chat", {"tools": [{"type": "function", "function": {"name": "a"}, "name": "b"}]},
     ("a", "b")),
    ("openai", "chat", [fn("x")], ()),
    ("openai", "chat", None, ()),
    # Responses API: functions by name, built-ins by type, MCP by server label
    ("openai", "responses", {"tools": [
        {"type": "function", "name": "lookup", "parameters": {}},
        {"type": "custom", "name": "patcher"},
        {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "computer_use_preview"}, {"type": "image_generation"},
        {"type": "mcp", "server_label": "deepwiki", "server_url": "https://x"},
        {"type": "mcp", "server_url": "https://y"}]},
     ("lookup", "patcher", "web_search", "file_search", "code_interpreter",
      "computer_use_preview", "image_generation", "mcp:deepwiki", UNNAMED)),
    ("openai", "responses", {"tools": [{"type": "web_search_preview", "name": "innocent"}]},
     ("web_search_preview",)),
    # realtime sessions carry their tools inside the session
    ("openai", "realtime", {"session": {"type": "realtime", "tools": [
        {"type": "function", "name": "hang_up"}]}}, ("hang_up",)),
    # Azure "On Your Data" searches a data source on the model's behalf
    ("azure_openai", "chat", {"tools": [fn("f")], "data_sources": [{"type": "azure_search"}]},
     ("f", "data_source:azure_search")),
    # tools set up outside a generation are read too (an assistant, an agent)
    ("openai", "other", {"tools": [{"type": "code_interpreter"}]}, ("code_interpreter",)),
    # Anthropic: client and server tools by name, MCP servers by name
    ("anthropic", "messages", {"tools": [
        {"name": "get_weather", "input_schema": {}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "mcp_toolset", "mcp_server_name": "linear"}],
        "mcp_servers": [{"type": "url", "url": "https://m", "name": "linear"},
                        {"type": "url", "url": "https://n", "name": "notion"}]},
     ("get_weather", "web_search", "bash", "mcp:linear", "mcp:notion")),
    ("anthropic", "messages", {"tools": [{"input_schema": {}}, {"name": ["x"]}]}, (UNNAMED,)),
    ("anthropic", "messages", {"tools": [{"type": "web_search_20250305"}]}, (UNNAMED,)),
    ("anthropic", "messages", {"mcp_servers": [{"url": "https://m"}]}, (UNNAMED,)),
    ("anthropic", "messages", {"mcp_servers": {"name": "x"}}, (UNNAMED,)),
    ("anthropic", "batches", {"requests": [
        {"custom_id": "1", "params": {"tools": [{"name": "a"}]}},
        {"custom_id": "2", "params": {"tools": [{"name": "b"}, {"name": "a"}]}}]}, ("a", "b")),
    # Gemini: declared functions by name, built-ins by key, in either spelling
    ("google", "chat", {"tools": [
        {"functionDeclarations": [{"name": "f1"}, {"name": "f2"}]},
        {"googleSearch": {}}, {"code_execution": {}}, {"urlContext": {}},
        {"function_declarations": [{"name": "f3"}]}, {"google_search": {}}]},
     ("f1", "f2", "googleSearch", "codeExecution", "urlContext", "f3")),
    ("google", "chat", {"tools": [{"functionDeclarations": [{"name": "f"}], "googleSearch": {}}]},
     ("f", "googleSearch")),
    ("google", "chat", {"tools": [{"functionDeclarations": [{"description": "no name"}, 7]}]},
     (UNNAMED,)),
    ("google", "chat", {"tools": [{"functionDeclarations": {"name": "f"}}]}, (UNNAMED,)),
    ("google", "chat", {"tools": [{}, {"googleSearch": None}]}, ()),
    ("google", "chat", {"tools": ["googleSearch"]}, (UNNAMED,)),
    ("google", "other", {"tools": [{"codeExecution": {}}]}, ("codeExecution",)),  # a cache
    ("google", "batches", {"batch": {"inputConfig": {"requests": {"requests": [
        {"request": {"tools": [{"googleSearch": {}}]}}]}}}}, ("googleSearch",)),
    ("google_interactions", "responses", {"tools": [
        {"type": "function", "name": "f"}, {"type": "google_search"},
        {"type": "mcp_server", "name": "wiki", "url": "https://w"}]},
     ("f", "google_search", "mcp:wiki")),
    # Cohere: v2 like OpenAI chat, v1 by name, v1 connectors
    ("cohere", "chat", {"tools": [fn("query_db")]}, ("query_db",)),
    ("cohere", "chat", {"tools": [{"name": "v1_tool", "parameter_definitions": {}}]},
     ("v1_tool",)),
    ("cohere", "chat", {"connectors": [{"id": "web-search"}]}, ("connector:web-search",)),
    ("cohere", "chat", {"tools": [{"description": "nameless"}]}, (UNNAMED,)),
    # an unknown shape is read as OpenAI's, never silently as "no tools"
    ("nonsense", "chat", {"tools": [{"type": "function", "name": "f"}, {"x": 1}]},
     ("f", UNNAMED)),
])
def test_tool_names(api: str, kind: str, body: Any, expected: tuple[str, ...]) -> None:
    assert tool_names(api, kind, body) == expected


def test_endpoint_tables_are_compiled_once() -> None:
    before = apis._vendor_table.cache_info().misses
    for _ in range(3):
        endpoint(vendor("mistral"), "POST", "/v1/chat/completions")
    assert apis._vendor_table.cache_info().misses <= before + 1
    assert isinstance(apis._TABLES["openai"].regex.pattern, str)


def test_an_endpoint_built_by_hand_works_like_one_found() -> None:
    made = Endpoint("chat", "cohere", CAP_BODY)
    assert max_tokens("openai", made, {"max_tokens": 3}) == 3
    assert tool_names("openai", made, {"connectors": [{"id": "c"}]}) == ("connector:c",)
