"""/metrics, /healthz and /readyz of the real proxy, with the openai SDK as the agent and
a real OpenBao that goes away and comes back."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from egressguard.tools.procs import free_port, wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import OpenAIFactory, fake_key

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
TTL = 0.3  # seconds a key is cached: short, so Vault's absence shows on the next request
ALLOWED = 'egressguard_requests_total{vendor="openai",kind="request",decision="allow",' \
    'status="200"}'


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("metrics"), proxy_args=(
            "--secret-ttl", str(TTL), "--vault-timeout", "1",
            "--metrics-listen", f"127.0.0.1:{metrics_port}")) as s:
        yield s


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", trust_env=False, timeout=5)


def samples(text: str) -> dict[str, float]:
    return {series: float(value) for line in text.splitlines()
            if line and not line.startswith("#") for series, value in [line.rsplit(" ", 1)]}


def readiness(port: int) -> tuple[int, dict]:
    answer = get(port, "/readyz")
    return answer.status_code, orjson.loads(answer.content)


def test_counts_readiness_and_a_vault_outage(stack: Stack, metrics_port: int,
                                             openai_client: OpenAIFactory) -> None:
    key = fake_key()
    stack.put_key("openai", key)
    wait_until(lambda: readiness(metrics_port)[0] == 200, timeout=15,
               what="/readyz to say ready (Vault probed at start)")
    assert get(metrics_port, "/healthz").status_code == 200

    token = stack.token("metrics-agent")
    client = openai_client(api_key=token)
    requests = 4
    for _ in range(requests):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        openai_client(api_key="egt1.not-a-token").chat.completions.create(
            model="gpt-4o", messages=HELLO)

    # counted when the record is written, before the agent has its answer: no wait
    page = get(metrics_port, "/metrics").text
    s = samples(page)
    assert s[ALLOWED] == requests
    denied = {k: v for k, v in s.items()
              if k.startswith('egressguard_denials_total{vendor="openai"')}
    assert denied == {'egressguard_denials_total{vendor="openai",reason="token_malformed"}': 1}
    assert s['egressguard_request_duration_seconds_count{vendor="openai"}'] == requests + 1
    assert s['egressguard_upstream_seconds_count{vendor="openai"}'] == requests
    assert s["egressguard_secret_store_up"] == 1
    assert key not in page and token not in page and stack.vault.root_token not in page
    assert s[f'egressguard_journal_seq{{node="{stack.records()[-1]["node"]}"}}'] \
        == stack.records()[-1]["seq"]

    stack.vault.stop()

    served_from_cache = 0

    def not_ready() -> dict | None:
        nonlocal served_from_cache
        try:  # a request once the cached key expired asks Vault (so does the probe)
            client.chat.completions.create(model="gpt-4o", messages=HELLO)
            served_from_cache += 1  # the key was still cached: allowed, and counted
        except openai.InternalServerError:
            pass
        status, body = readiness(metrics_port)
        return body if status == 503 else None

    body = wait_until(not_ready, timeout=15, what="/readyz to fail with Vault stopped")
    store = body["checks"]["secret_store"]
    assert store["ok"] is False and store["reason"] == "vault_unreachable"
    assert all(body["checks"][c]["ok"] for c in ("policy", "ca", "journal"))
    assert key not in str(body) and stack.vault.root_token not in str(body)
    s = samples(get(metrics_port, "/metrics").text)
    assert s["egressguard_secret_store_up"] == 0
    assert s['egressguard_secret_store_errors_total{reason="vault_unreachable"}'] >= 1

    stack.vault.start()  # dev storage is in memory: the operator stores the key again
    stack.put_key("openai", key)
    wait_until(lambda: readiness(metrics_port)[0] == 200, timeout=15,
               what="/readyz to recover once Vault is back")
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    page = get(metrics_port, "/metrics").text
    assert samples(page)[ALLOWED] == requests + served_from_cache + 1
    assert key not in page and token not in page


def test_the_metrics_port_is_not_reachable_through_the_proxy(stack: Stack,
                                                             metrics_port: int) -> None:
    token = stack.token("curious-agent")
    with httpx.Client(proxy=stack.proxy_url("curious-agent", token), trust_env=False,
                      timeout=10) as agent:
        answer = agent.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert answer.status_code == 403
    assert b"egressguard_requests_total" not in answer.content
    assert get(metrics_port, "/metrics").status_code == 200  # it is up, just not that way
