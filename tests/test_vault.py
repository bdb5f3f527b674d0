"""`VaultStore` (backends/vault.py) against a real OpenBao dev server: reads, refusals
people can act on, outages, caching, single flight and AppRole, never showing a key."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
import traceback
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from secret_registry import register

from egressguard.backends.vault import VaultConfig, VaultStore
from egressguard.core.errors import SecretUnavailable
from egressguard.core.secret import Secret, SecretLocation
from egressguard.core.vendors import Vendor, catalogue
from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.procs import wait_until

T = TypeVar("T")

MOUNT = "secret"
FIELD = "api_key"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
              "all_proxy")


def fake_key() -> str:
    return register("sk-test-" + secrets.token_hex(16), "vendor key")  # swept at the end


def new_location(field: str = FIELD) -> SecretLocation:
    return SecretLocation(MOUNT, f"egressguard/openai/{secrets.token_hex(4)}", field)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def unavailable(store: VaultStore, vendor: Vendor, where: SecretLocation) -> SecretUnavailable:
    with pytest.raises(SecretUnavailable) as info:
        run(store.get(vendor, where))
    return info.value


def assert_hidden(value: str, *things: object) -> None:
    """`value` shows up in no str/repr, nor in an exception's message or traceback."""
    for thing in things:
        assert value not in str(thing)
        assert value not in repr(thing)
        if isinstance(thing, BaseException):
            assert value not in "".join(traceback.format_exception(thing))
            assert value not in str(getattr(thing, "message", ""))


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # VaultStore's requests session honours HTTP(S)_PROXY; these tests talk to Vault directly.
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoDev]:
    with OpenBaoDev() as server:
        yield server


@pytest.fixture
def own_bao() -> Iterator[OpenBaoDev]:
    """A server of the test's own, for tests that stop or restart it."""
    with OpenBaoDev() as server:
        yield server


@pytest.fixture(scope="module")
def openai() -> Vendor:
    vendor = catalogue().by_name("openai")
    assert vendor is not None
    return vendor


def root_store(bao: OpenBaoDev, ttl: float = 60.0, timeout: float = 2.0) -> VaultStore:
    return VaultStore(VaultConfig(bao.addr, token=bao.root_token, timeout=timeout), ttl=ttl)


def put(bao: OpenBaoDev, where: SecretLocation, value: str) -> int:
    return bao.put_secret(where.path, {where.field: value}, mount=where.mount)


# --- reads -------------------------------------------------------------------------


def test_read_returns_a_secret_that_cannot_print(bao: OpenBaoDev, openai: Vendor) -> None:
    key, where = fake_key(), new_location()
    assert put(bao, where, key) == 1

    secret = run(root_store(bao).get(openai, where))

    assert isinstance(secret, Secret)
    assert secret.ref.path == f"secret/{where.path}"
    assert secret.ref.version == 1
    assert str(secret.ref) == f"secret/{where.path}@v1"
    assert_hidden(key, secret)
    assert secret.reveal_for("api.openai.com") == key
    with pytest.raises(PermissionError) as denied:
        secret.reveal_for("evil.com")
    assert_hidden(key, denied.value)


@pytest.mark.parametrize(
    ("stored", "names"),
    [
        pytest.param(None, ["egressguard secrets put openai"], id="no-secret-at-path"),
        pytest.param({"other": "x"}, [repr(FIELD)], id="secret-without-field"),
        pytest.param({FIELD: ""}, [repr(FIELD)], id="empty-field"),
    ],
)
def test_missing_key_says_where_and_how_to_fix(
    bao: OpenBaoDev, openai: Vendor, stored: dict[str, str] | None, names: list[str]
) -> None:
    where = new_location()
    if stored is not None:
        bao.put_secret(where.path, stored, mount=where.mount)

    err = unavailable(root_store(bao), openai, where)

    assert err.reason == "secret_missing"
    assert f"secret/{where.path}" in err.message
    for name in names:
        assert name in err.message


def test_permission_denied(bao: OpenBaoDev, openai: Vendor) -> None:
    key, where = fake_key(), new_location()
    put(bao, where, key)
    weak = bao.client().auth.token.create(policies=["default"])["auth"]["client_token"]
    store = VaultStore(VaultConfig(bao.addr, token=weak))

    err = unavailable(store, openai, where)

    assert err.reason == "vault_forbidden"
    assert f"secret/{where.path}" in err.message
    assert "grant the proxy's Vault token read access" in err.message
    assert_hidden(key, err)
    assert_hidden(weak, err, store.config)


# --- outages -----------------------------------------------------------------------


def test_vault_down_then_back(own_bao: OpenBaoDev, openai: Vendor) -> None:
    key, where, timeout = fake_key(), new_location(), 1.0
    put(own_bao, where, key)
    store = root_store(own_bao, ttl=0, timeout=timeout)
    assert run(store.get(openai, where)).reveal_for("api.openai.com") == key

    own_bao.stop()
    started = time.monotonic()
    err = unavailable(store, openai, where)
    elapsed = time.monotonic() - started

    assert err.reason == "vault_unreachable"
    assert own_bao.addr in err.message and f"secret/{where.path}" in err.message
    assert elapsed < timeout + 2
    assert_hidden(key, err)

    own_bao.start()  # dev storage is in memory: the key is gone with the old process
    rotated = fake_key()
    put(own_bao, where, rotated)
    secret = run(store.get(openai, where))
    assert secret.reveal_for("api.openai.com") == rotated


@pytest.fixture
def silent_vault() -> Iterator[str]:
    """Accepts TCP connections (kernel backlog) but never reads or answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))  # the OS picks a free port, no race
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_vault_that_never_answers_is_bounded(silent_vault: str, openai: Vendor) -> None:
    timeout = 0.5
    store = VaultStore(VaultConfig(silent_vault, token="unused", timeout=timeout))
    where = new_location()

    started = time.monotonic()
    err = unavailable(store, openai, where)
    elapsed = time.monotonic() - started

    # requests' own read timeout (= config.timeout) fires before the asyncio backstop
    # (timeout + 1 s); either way the reason says Vault was too slow, not unreachable.
    assert err.reason == "vault_timeout"
    assert f"within {timeout:g}s" in err.message and silent_vault in err.message
    assert elapsed < timeout + 2


# --- cache and single flight -------------------------------------------------------


def test_rotation_not_seen_within_ttl(bao: OpenBaoDev, openai: Vendor) -> None:
    first, where = fake_key(), new_location()
    put(bao, where, first)
    store = root_store(bao, ttl=60)
    assert run(store.get(openai, where)).ref.version == 1

    assert put(bao, where, fake_key()) == 2
    again = run(store.get(openai, where))

    assert again.ref.version == 1
    assert again.reveal_for("api.openai.com") == first


def test_rotation_seen_after_ttl(bao: OpenBaoDev, openai: Vendor) -> None:
    where = new_location()
    put(bao, where, fake_key())
    store = root_store(bao, ttl=0.2)
    assert run(store.get(openai, where)).ref.version == 1

    rotated = fake_key()
    assert put(bao, where, rotated) == 2
    secret = wait_until(lambda: (s := run(store.get(openai, where))).ref.version == 2 and s,
                        timeout=5, what="rotated key after the TTL")

    assert secret.reveal_for("api.openai.com") == rotated


def test_concurrent_gets_share_one_read(bao: OpenBaoDev, openai: Vendor) -> None:
    key, where = fake_key(), new_location()
    put(bao, where, key)
    store = root_store(bao)

    async def many() -> list[Secret]:
        return await asyncio.gather(*(store.get(openai, where) for _ in range(20)))

    got = run(many())

    assert len(got) == 20
    assert all(s is got[0] for s in got)
    assert got[0].reveal_for("api.openai.com") == key


# --- AppRole and configuration -----------------------------------------------------


@pytest.fixture(scope="module")
def approle(bao: OpenBaoDev) -> str:
    """An AppRole that may read `secret/data/egressguard/*`; returns its role_id."""
    root = bao.client()
    root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        "egressguard-read", 'path "secret/data/egressguard/*" { capabilities = ["read"] }')
    root.auth.approle.create_or_update_approle(
        "egressguard", token_policies=["egressguard-read"], token_ttl="10m")
    return str(root.auth.approle.read_role_id("egressguard")["data"]["role_id"])


def approle_store(bao: OpenBaoDev, role_id: str) -> tuple[VaultStore, str]:
    secret_id = bao.client().auth.approle.generate_secret_id("egressguard")["data"]["secret_id"]
    return VaultStore(VaultConfig(bao.addr, role_id=role_id, secret_id=secret_id), ttl=0), secret_id


def test_approle_first_read_logs_in(bao: OpenBaoDev, approle: str, openai: Vendor) -> None:
    key, where = fake_key(), new_location()
    put(bao, where, key)
    store, secret_id = approle_store(bao, approle)

    secret = run(store.get(openai, where))

    assert secret.reveal_for("api.openai.com") == key
    assert secret.ref.version == 1
    assert_hidden(secret_id, store.config)
    assert_hidden(approle, store.config)


def test_approle_bad_secret_id_fails_login(bao: OpenBaoDev, approle: str,
                                           openai: Vendor) -> None:
    bogus = "00000000-0000-0000-0000-" + "0" * 12
    store = VaultStore(VaultConfig(bao.addr, role_id=approle, secret_id=bogus))

    err = unavailable(store, openai, new_location())

    assert err.reason == "vault_login_failed"
    assert bao.addr in err.message and "AppRole" in err.message
    assert_hidden(bogus, err)


def test_approle_logs_in_again_after_token_revoked(bao: OpenBaoDev, approle: str,
                                                   openai: Vendor) -> None:
    key, where = fake_key(), new_location()
    put(bao, where, key)
    store, secret_id = approle_store(bao, approle)
    secret = run(store.get(openai, where))
    assert secret.reveal_for("api.openai.com") == key

    bao.client().sys.revoke_prefix("auth/approle/login")
    refused = unavailable(store, openai, where)
    again = run(store.get(openai, where))

    assert refused.reason == "vault_forbidden"
    assert again.reveal_for("api.openai.com") == key
    assert_hidden(key, refused)
    assert_hidden(secret_id, refused, store.config)


def test_from_env_without_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)

    with pytest.raises(SecretUnavailable) as info:
        VaultConfig.from_env()

    assert info.value.reason == "vault_unconfigured"
    assert "VAULT_ADDR" in info.value.message
    assert "--local-vault" in info.value.message


def test_from_env_reads_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    monkeypatch.setenv("VAULT_TOKEN", token)

    config = VaultConfig.from_env(timeout=3.0)

    assert (config.addr, config.token, config.timeout) == ("http://127.0.0.1:8200", token, 3.0)
    assert_hidden(token, config)


def test_config_repr_hides_token() -> None:
    token = "hvs." + secrets.token_hex(16)
    config = VaultConfig("http://127.0.0.1:8200", token=token)

    assert_hidden(token, config)
    assert "127.0.0.1:8200" in repr(config)


# --- writes ------------------------------------------------------------------------


def test_write_returns_increasing_versions(bao: OpenBaoDev, openai: Vendor) -> None:
    where, keys = new_location(), [fake_key() for _ in range(3)]
    store = root_store(bao, ttl=0)

    versions = [store.write(where, key) for key in keys]

    assert versions == [1, 2, 3]
    secret = run(store.get(openai, where))
    assert (secret.ref.version, secret.reveal_for("api.openai.com")) == (3, keys[-1])


# --- token lifetime ----------------------------------------------------------------

READER = 'path "secret/data/*" { capabilities = ["read"] }'


def reader_token(bao: OpenBaoDev, **lease: Any) -> str:
    client = bao.client()
    client.sys.create_or_update_policy("egressguard-reader", READER)
    return client.auth.token.create(policies=["egressguard-reader"], **lease)["auth"][
        "client_token"]


async def keep_alive_until(store: VaultStore, done: Any, timeout: float) -> None:
    keeper = asyncio.ensure_future(store.keep_token_alive())
    try:
        deadline = time.monotonic() + timeout
        while not done() and not keeper.done():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)
    finally:
        keeper.cancel()


def test_a_renewable_token_is_renewed_before_it_expires(bao: OpenBaoDev, openai: Vendor
                                                         ) -> None:
    key, where = fake_key(), new_location()
    put(bao, where, key)
    token = reader_token(bao, ttl="3s", renewable=True, explicit_max_ttl="120s")
    store = VaultStore(VaultConfig(bao.addr, token=token), ttl=0)
    started = time.monotonic()

    async def scenario() -> Secret:
        await keep_alive_until(store, lambda: time.monotonic() - started > 7, timeout=15)
        return await store.get(openai, where)  # 7s on: the unrenewed token died at 3s

    assert run(scenario()).reveal_for("api.openai.com") == key
    assert store.token_renewals >= 3


def test_a_token_that_cannot_be_renewed_is_announced_then_its_expiry(
    bao: OpenBaoDev, caplog: pytest.LogCaptureFixture
) -> None:
    token = reader_token(bao, ttl="2s", renewable=False)
    store = VaultStore(VaultConfig(bao.addr, token=token), ttl=0)
    with caplog.at_level("INFO", logger="egressguard.backends.vault"):
        run(keep_alive_until(store, lambda: False, timeout=10))  # returns once expired
    messages = [r.getMessage() for r in caplog.records]
    assert any("expires in" in m and "cannot be renewed" in m for m in messages)
    assert "the Vault token has expired or was revoked" in messages[-1]
    assert caplog.records[-1].levelname == "CRITICAL"
    assert_hidden(token, *messages)


def test_a_root_token_needs_no_renewal(bao: OpenBaoDev) -> None:
    store = root_store(bao)
    run(asyncio.wait_for(store.keep_token_alive(), 5))  # returns: nothing to do
    assert store.token_renewals == 0
