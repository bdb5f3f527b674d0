"""Vault down, back, and rotated keys, as an agent behind the real proxy sees them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from egressguard.core.policy import load as load_policy
from egressguard.tools.procs import wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key, headers_of

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
TTL = 0.3  # seconds a key is cached: short, so faults show quickly


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("faults"),
        proxy_args=("--secret-ttl", str(TTL), "--vault-timeout", "1"),
    ) as s:
        yield s


def injected(stack: Stack) -> str:
    return [v for k, v in headers_of(stack.received()[-1]) if k == "authorization"][0]


def test_rotated_key_is_used_within_the_ttl(stack: Stack, openai_client: OpenAIFactory) -> None:
    first, second = fake_key(), fake_key()
    stack.put_key("openai", first)
    client = openai_client(api_key=stack.token("rotator"))
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert injected(stack) == f"Bearer {first}"

    version = stack.put_key("openai", second)
    rotated_at = time.monotonic()

    def uses_new_key() -> bool:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
        return injected(stack) == f"Bearer {second}"

    wait_until(uses_new_key, timeout=5, what="the rotated key to be injected")
    assert time.monotonic() - rotated_at < TTL + 2
    record = stack.records()[-1]
    assert record["credential"]["version"] == version


def test_vault_down_is_a_clear_503_and_recovery_is_automatic(
    stack: Stack, openai_client: OpenAIFactory
) -> None:
    key = fake_key()
    stack.put_key("openai", key)
    client = openai_client(api_key=stack.token("survivor"))
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    stack.vault.stop()

    def refused() -> bool:  # once the cached key has expired
        try:
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        except openai.InternalServerError:
            return True
        return False

    wait_until(refused, timeout=TTL + 5, what="the cached key to expire")
    stack.reset_received()

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert time.monotonic() - started < 5  # bounded: --vault-timeout 1
    assert caught.value.status_code == 503
    assert "no vendor key available" in str(caught.value)
    assert "did not answer" in str(caught.value) and key not in str(caught.value)
    assert stack.received() == []  # nothing forwarded without the real key
    assert stack.records()[-1]["reason"] == "vault_unreachable"

    stack.vault.start()  # dev storage is in memory: the operator stores the key again
    stack.put_key("openai", key)

    wait_until(lambda: serves(client), timeout=10,
               what="requests to succeed after Vault returned")
    assert injected(stack) == f"Bearer {key}"


def serves(client: openai.OpenAI) -> bool:
    """One request answered; a 5xx (Vault still away) is False."""
    try:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    except openai.InternalServerError:
        return False
    return True


def refusal(client: openai.OpenAI) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    return caught.value


def test_a_deleted_key_is_a_clear_503_once_the_cached_copy_expires(
    stack: Stack, openai_client: OpenAIFactory
) -> None:
    key = fake_key()
    stack.put_key("openai", key)
    client = openai_client(api_key=stack.token("deleted"))
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    where = load_policy(stack.policy).secrets.location_for("openai", None, None)
    stack.vault.client().secrets.kv.v2.delete_latest_version_of_secret(
        where.path, mount_point=where.mount)

    def refused() -> bool:
        try:
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
        except openai.InternalServerError:
            return True
        return False

    wait_until(refused, timeout=TTL + 5, what="the deleted key to stop being used")
    err = refusal(client)
    assert err.status_code == 503
    assert "no key stored there; store one with `egressguard secrets put openai`" in str(err)
    assert key not in str(err)
    assert stack.records()[-1]["reason"] == "secret_missing"


def test_a_token_without_read_access_is_a_clear_503(
    stack: Stack, openai_client: OpenAIFactory
) -> None:
    stack.put_key("openai", fake_key())
    weak = stack.vault.client().auth.token.create(policies=["default"])["auth"]["client_token"]
    stack.stop_proxy()
    try:
        stack.start_proxy(env={"VAULT_TOKEN": weak})
        err = refusal(openai_client(api_key=stack.token("denied")))
        assert err.status_code == 503
        assert "permission denied; grant the proxy's Vault token read access" in str(err)
        assert stack.records()[-1]["reason"] == "vault_forbidden"
        assert weak not in stack.proxy_output()
    finally:
        stack.stop_proxy()
        stack.start_proxy()


def test_vault_down_at_start_serves_as_soon_as_vault_is_back(
    stack: Stack, openai_client: OpenAIFactory
) -> None:
    stack.stop_proxy()
    stack.vault.stop()
    stack.start_proxy()  # starts all the same: Vault is asked per request, not at start
    client = openai_client(api_key=stack.token("early"))
    err = refusal(client)
    assert err.status_code == 503 and "did not answer" in str(err)
    assert stack.records()[-1]["reason"] == "vault_unreachable"

    stack.vault.start()
    key = fake_key()
    stack.put_key("openai", key)

    wait_until(lambda: serves(client), timeout=10, what="requests to succeed once Vault is up")
    assert injected(stack) == f"Bearer {key}"
