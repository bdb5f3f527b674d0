"""End-to-end fixtures: a real OpenBao, the fake vendor and the egressguard process."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest
from secret_registry import register

from egressguard.tools.stack import Stack

OpenAIFactory = Callable[..., openai.OpenAI]
AnthropicFactory = Callable[..., anthropic.Anthropic]


def fake_key(prefix: str = "sk-test-") -> str:
    """A key-shaped value made at run time (nothing key-like is committed); the secret
    sweep looks for it in every log and record at the end of the session."""
    return register(prefix + secrets.token_hex(16), "vendor key")


@pytest.fixture(autouse=True)
def no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients in these tests are given their proxy explicitly."""
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "VAULT_ADDR",
        "VAULT_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    """Real (fake-vendor) keys stored in OpenBao for the vendors the tests call."""
    values = {v: fake_key() for v in ("openai", "anthropic", "google")}
    for vendor, value in values.items():
        stack.put_key(vendor, value)
    return values


@pytest.fixture
def openai_client(stack: Stack) -> Iterator[OpenAIFactory]:
    """Factory of openai SDK clients going through the proxy; closed after the test."""
    made: list[openai.OpenAI] = []

    def make(api_key: str, proxy: str | None = None) -> openai.OpenAI:
        made.append(
            openai.OpenAI(
                api_key=api_key,
                base_url="https://api.openai.com/v1",
                max_retries=0,
                timeout=30,  # a hang fails the test instead of stalling the suite
                http_client=openai.DefaultHttpxClient(
                    proxy=proxy or stack.proxy, verify=stack.agent_ssl_context()
                ),
            )
        )
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def anthropic_client(stack: Stack) -> Iterator[AnthropicFactory]:
    made: list[anthropic.Anthropic] = []

    def make(api_key: str) -> anthropic.Anthropic:
        made.append(
            anthropic.Anthropic(
                api_key=api_key,
                base_url="https://api.anthropic.com",
                max_retries=0,
                timeout=30,
                http_client=anthropic.DefaultHttpxClient(
                    proxy=stack.proxy, verify=stack.agent_ssl_context()
                ),
            )
        )
        return made[-1]

    yield make
    for client in made:
        client.close()


def headers_of(received: dict) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in received["headers"]]
