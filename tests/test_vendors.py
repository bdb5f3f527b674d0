"""The vendor catalogue (`egressguard.core.vendors`): host matching and real-key shapes.

Key-shaped strings are built at test time by concatenation: none is a real key, and
nothing resembling one is committed.
"""

from __future__ import annotations

import pytest

from egressguard.core.tokens import TokenAuthority
from egressguard.core.vendors import (
    APIS,
    catalogue,
    host_matches,
    load_catalogue,
    normalize_host,
    parse_catalogue,
)
from egressguard.core.yamlsource import ConfigError

ISSUE_VENDORS = ("openai", "anthropic", "google", "azure_openai", "mistral", "cohere",
                 "groq", "openrouter", "deepseek", "xai", "together", "fireworks")
ERROR_SHAPES = {"openai", "anthropic", "google", "cohere"}


def test_catalogue_holds_every_vendor_of_the_issue() -> None:
    assert set(ISSUE_VENDORS) <= set(catalogue().names)
    assert catalogue() is catalogue()  # parsed once


@pytest.mark.parametrize("host, vendor", [
    ("api.openai.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "google"),
    ("myres.openai.azure.com", "azure_openai"),
    ("a.b.openai.azure.com", "azure_openai"),
    ("myres.cognitiveservices.azure.com", "azure_openai"),
    ("api.mistral.ai", "mistral"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.groq.com", "groq"),
    ("openrouter.ai", "openrouter"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "xai"),
    ("api.together.xyz", "together"),
    ("api.together.ai", "together"),
    ("api.fireworks.ai", "fireworks"),
    # case and the trailing dot of a fully-qualified name are normalised
    ("API.OpenAI.com", "openai"),
    ("api.anthropic.com.", "anthropic"),
    ("MyRes.OpenAI.Azure.COM.", "azure_openai"),
    ("OPENROUTER.AI.", "openrouter"),
])
def test_vendor_for_host(host: str, vendor: str) -> None:
    found = catalogue().for_host(host)
    assert found is not None and found.name == vendor
    assert found.serves(normalize_host(host))


@pytest.mark.parametrize("host", [
    "api.openai.com.evil.com",  # vendor name as a prefix of an attacker's domain
    "evilapi.openai.com",
    "api.openai.co",
    "openai.com",
    "api-openai.com",
    "openai.azure.com",  # bare suffix: a wildcard needs at least one label before it
    ".openai.azure.com",
    "xopenai.azure.com",
    "myres.openai.azure.com.evil.com",
    "xopenrouter.ai",
    "openrouter.ai.evil",
    "api.x.ai.evil.com",
    "x.ai",
    "googleapis.com",
    "storage.googleapis.com",
    "api.openai.com:443",  # a port is not part of a host name
    "",
    "127.0.0.1",
])
def test_look_alike_hosts_match_no_vendor(host: str) -> None:
    assert catalogue().for_host(host) is None


@pytest.mark.parametrize("pattern, host, matches", [
    ("api.openai.com", "api.openai.com", True),
    ("api.openai.com", "x.api.openai.com", False),
    ("*.openai.azure.com", "a.openai.azure.com", True),
    ("*.openai.azure.com", "a.b.openai.azure.com", True),
    ("*.openai.azure.com", "openai.azure.com", False),
    ("*.openai.azure.com", ".openai.azure.com", False),
    ("*.openai.azure.com", "aopenai.azure.com", False),
])
def test_host_matches(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


@pytest.mark.parametrize("name", ISSUE_VENDORS)
def test_every_vendor_has_an_error_shape_and_an_injection(name: str) -> None:
    vendor = catalogue().by_name(name)
    assert vendor is not None
    assert vendor.error_shape in ERROR_SHAPES
    assert vendor.inject.header
    # whatever header carries the real key is also stripped from agents' requests
    assert vendor.inject.header.lower() in vendor.credential_headers
    assert {"authorization", "x-api-key", "api-key", "x-goog-api-key"} <= \
        vendor.credential_headers
    assert {"key", "api_key", "access_token"} <= vendor.credential_query
    assert vendor.key_patterns
    assert vendor.hosts and all(h == normalize_host(h) for h in vendor.hosts)


@pytest.mark.parametrize("name, header, value", [
    ("openai", "Authorization", "Bearer K"),
    ("anthropic", "x-api-key", "K"),
    ("google", "x-goog-api-key", "K"),
    ("azure_openai", "api-key", "K"),
    ("mistral", "Authorization", "Bearer K"),
    ("groq", "Authorization", "Bearer K"),
])
def test_injection_scheme(name: str, header: str, value: str) -> None:
    vendor = catalogue().by_name(name)
    assert vendor is not None
    assert (vendor.inject.header, vendor.inject.value("K")) == (header, value)


def test_by_name_of_an_unknown_vendor() -> None:
    assert catalogue().by_name("openia") is None


@pytest.mark.parametrize("name, path, model", [
    ("google", "/v1beta/models/gemini-1.5-pro:generateContent", "gemini-1.5-pro"),
    ("google", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
     "gemini-2.0-flash"),
    ("azure_openai", "/openai/deployments/gpt4o-prod/chat/completions", "gpt4o-prod"),
])
def test_model_in_path(name: str, path: str, model: str) -> None:
    vendor = catalogue().by_name(name)
    assert vendor is not None and vendor.model_in_path is not None
    found = vendor.model_in_path.search(path)
    assert found is not None and found["model"] == model


# Realistic shapes, fake content.
ALNUM = "aB3dE5gH7jK9mN1pQ2rS4tU6vW8xY0zC"  # 32 alphanumerics, not all hex


@pytest.mark.parametrize("value, vendor", [
    ("sk-proj-" + "A" * 40, "openai"),
    ("sk-svcacct-" + "Ab_-" * 12, "openai"),
    ("sk-admin-" + "Z9" * 20, "openai"),
    ("sk-" + "T3BlbkFJ" * 6, "openai"),
    ("AIza" + "Sy" + "D" * 33, "google"),
    ("0123456789abcdef" * 2, "azure_openai"),
    ("Ab1" * 28, "azure_openai"),
    (ALNUM, "mistral"),
    (ALNUM + "QwEr1234", "cohere"),
    ("gsk_" + "W" * 52, "groq"),
    ("xai-" + "Q" * 80, "xai"),
    ("tgp_v1_" + "Rr_-" * 10, "together"),
    ("fw_" + "F" * 24, "fireworks"),
])
def test_looks_like_real_key(value: str, vendor: str) -> None:
    assert catalogue().looks_like_real_key(value) == vendor


@pytest.mark.parametrize("value", [
    "sk-ant-api03-" + "C" * 40,
    "sk-ant-admin01-" + "C" * 40,
    "sk-or-v1-" + "e" * 64,
    "sk-" + "0123456789abcdef" * 2,
    "fedcba9876543210" * 4,
])
def test_keys_of_overlapping_formats_are_still_recognised(value: str) -> None:
    assert catalogue().looks_like_real_key(value) is not None


@pytest.mark.parametrize("value, vendor", [
    ("sk-ant-api03-" + "C" * 40, "anthropic"),
    ("sk-or-v1-" + "e" * 64, "openrouter"),
    ("sk-" + "0123456789abcdef" * 2, "deepseek"),
])
def test_overlapping_key_formats_name_the_right_vendor(value: str, vendor: str) -> None:
    assert catalogue().looks_like_real_key(value) == vendor


def test_egressguard_tokens_are_not_taken_for_real_keys() -> None:
    authority = TokenAuthority(bytes(32))
    for agent in ("a", "billing-bot", "x" * 64):
        token, _ = authority.issue(agent, "team", 3600)
        assert catalogue().looks_like_real_key(token) is None


@pytest.mark.parametrize("value", [
    "placeholder",
    "PLACEHOLDER",
    "egressguard-placeholder",
    "",
    "sk-",
    "sk-short",
    "AIza" + "D" * 10,
    "Bearer " + "sk-proj-" + "A" * 40,  # scheme words are removed before this check
])
def test_ordinary_strings_are_not_taken_for_real_keys(value: str) -> None:
    assert catalogue().looks_like_real_key(value) is None


@pytest.mark.parametrize("name, api", [
    ("openai", "openai"), ("anthropic", "anthropic"), ("google", "google"),
    ("azure_openai", "azure_openai"), ("mistral", "openai"), ("cohere", "cohere"),
    ("groq", "openai"), ("openrouter", "openai"), ("deepseek", "openai"), ("xai", "openai"),
    ("together", "openai"), ("fireworks", "openai"),
])
def test_every_vendor_speaks_an_api(name: str, api: str) -> None:
    vendor = catalogue().by_name(name)
    assert vendor is not None and vendor.api == api
    assert all(v.api in APIS for v in catalogue().vendors)


@pytest.mark.parametrize("name, some", [
    ("openai", {"gpt-4o", "gpt-4.1-nano", "o3", "o4-mini", "gpt-5", "text-embedding-3-small",
                "gpt-image-1", "whisper-1", "gpt-realtime"}),
    ("anthropic", {"claude-opus-4-1", "claude-sonnet-4-5-20250929", "claude-haiku-4-5",
                   "claude-3-5-haiku-latest"}),
    ("google", {"gemini-2.5-pro", "gemini-2.5-flash-lite", "text-embedding-004"}),
    ("mistral", {"mistral-large-latest", "codestral-latest", "mistral-embed"}),
    ("cohere", {"command-a-03-2025", "command-r-plus", "embed-v4.0"}),
    ("groq", {"llama-3.3-70b-versatile", "llama-3.1-8b-instant"}),
    ("openrouter", {"openai/gpt-4o", "anthropic/claude-sonnet-4.5"}),
    ("deepseek", {"deepseek-chat", "deepseek-reasoner"}),
    ("xai", {"grok-4", "grok-3-mini"}),
    ("together", {"meta-llama/Llama-3.3-70B-Instruct-Turbo"}),
    ("fireworks", {"accounts/fireworks/models/llama-v3p3-70b-instruct"}),
])
def test_vendors_list_the_models_they_serve(name: str, some: set[str]) -> None:
    vendor = catalogue().by_name(name)
    assert vendor is not None and vendor.models is not None
    assert some <= set(vendor.models)
    assert len(set(vendor.models)) == len(vendor.models)


def test_azure_deployments_are_named_by_the_customer() -> None:
    vendor = catalogue().by_name("azure_openai")
    assert vendor is not None and vendor.models is None


VENDOR = """\
vendors:
  acme:
    hosts: [api.acme.test]
    inject: {header: Authorization, prefix: "Bearer "}
    error_shape: openai
    api: openai
    models: [acme-1, acme-2]
"""


def test_a_catalogue_from_text() -> None:
    acme = load_catalogue(VENDOR, "v.yaml").by_name("acme")
    assert acme is not None and (acme.api, acme.models) == ("openai", ("acme-1", "acme-2"))
    assert load_catalogue(VENDOR.replace("[acme-1, acme-2]", "any"), "v.yaml").vendors[0] \
        .models is None


@pytest.mark.parametrize("old, new, where, message", [
    ("api: openai", "api: opnai", "v.yaml:6:", "vendor 'acme': api 'opnai' is not one of "
     "openai, azure_openai, anthropic, google, cohere; did you mean 'openai'?"),
    ("api: openai", "api: [openai]", "v.yaml:6:", "vendor 'acme': api ['openai'] is not one"),
    ("    api: openai\n", "", "v.yaml:2:3:", "vendor 'acme' has no `api`"),
    ("    models: [acme-1, acme-2]\n", "", "v.yaml:2:3:", "vendor 'acme' has no `models`"),
    ("error_shape: openai", "error_shape: xml", "v.yaml:5:", "error_shape 'xml' is not one of"),
    ("models: [acme-1, acme-2]", "models: acme-1", "v.yaml:7:",
     "vendor 'acme': models must be a list of model names, or `any`"),
    ("models: [acme-1, acme-2]", "models: []", "v.yaml:7:", "models must be a list"),
    ("models: [acme-1, acme-2]", "models: [acme-1, 2]", "v.yaml:7:", "models must be a list"),
    ("models: [acme-1, acme-2]", "models: [acme-1, acme-1]", "v.yaml:7:",
     "models lists 'acme-1' twice"),
    ("api: openai", "api: openai\n    apis: openai", "v.yaml:7:",
     "unknown key 'apis' in vendor 'acme'; did you mean 'api'?"),
    ("api: openai", "api: openai\n    api: cohere", "v.yaml:7:", "duplicate key 'api'"),
])
def test_catalogue_problems_are_named_and_located(old: str, new: str, where: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_catalogue(VENDOR.replace(old, new), "v.yaml")
    assert where in str(info.value) and message in str(info.value)


def test_a_parsed_catalogue_is_checked_too() -> None:
    data = {"vendors": {"acme": {"hosts": ["a.test"], "inject": {"header": "x"},
                                 "error_shape": "openai", "api": "antropic", "models": "any"}}}
    with pytest.raises(ConfigError, match="api 'antropic' is not one of .* did you mean "
                                          "'anthropic'"):
        parse_catalogue(data)
    with pytest.raises(ConfigError, match="needs a `vendors:` mapping"):
        parse_catalogue({"vendors": []})
