"""The embedded local vault and the OpenBao dev-server fixture, against real OpenBao."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import stat
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import requests

from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.localvault import LocalVault, LocalVaultCredentials, LocalVaultError
from egressguard.tools.procs import free_port, port_open

SECRET_PATH = "egressguard/openai/default"


@contextmanager
def hvac_client(addr: str, token: str) -> Iterator[hvac.Client]:
    session = requests.Session()
    session.trust_env = False
    client = hvac.Client(url=addr, token=token, timeout=5, session=session)
    try:
        yield client
    finally:
        client.adapter.close()


def secret_values(vault: LocalVault) -> list[str]:
    init = json.loads(vault.init_path.read_text())
    return [init["unseal_key"], init["root_token"], vault.credentials().proxy_token]


def assert_no_secret_values(text: str, vault: LocalVault) -> None:
    for value in secret_values(vault):
        assert value not in text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalVault]:
    """One persistent local vault shared by the lifecycle tests below (start-up costs ~2 s)."""
    lv = LocalVault(tmp_path_factory.mktemp("lv") / "state", port=free_port())
    try:
        lv.ensure_running()
        yield lv
    finally:
        lv.stop()


@pytest.fixture(scope="module")
def creds(vault: LocalVault) -> LocalVaultCredentials:
    return vault.credentials()


def test_fresh_start_initialises_unseals_and_keeps_files_private(
    vault: LocalVault, creds: LocalVaultCredentials
) -> None:
    assert vault.is_running()
    assert creds.addr == f"http://127.0.0.1:{vault.port}" and creds.mount == "secret"
    with hvac_client(creds.addr, creds.admin_token) as admin:
        assert admin.sys.is_initialized() and not admin.sys.is_sealed()
        mounts = admin.sys.list_mounted_secrets_engines()["data"]
        assert mounts["secret/"]["options"]["version"] == "2"
    assert mode(vault.state_dir) == 0o700
    for private in (vault.init_path, vault.proxy_token_path, vault.pid_path):
        assert mode(private) == 0o600, private
    assert "admin_token" not in repr(creds) and creds.admin_token not in repr(creds)
    assert creds.proxy_token not in repr(creds)


def test_proxy_token_reads_only_egressguard_paths(creds: LocalVaultCredentials) -> None:
    with hvac_client(creds.addr, creds.admin_token) as admin:
        admin.secrets.kv.v2.create_or_update_secret(path=SECRET_PATH, secret={"key": "sk-1"})
        admin.secrets.kv.v2.create_or_update_secret(path="other/thing", secret={"key": "x"})
    with hvac_client(creds.addr, creds.proxy_token) as proxy:
        kv = proxy.secrets.kv.v2
        read = kv.read_secret_version(path=SECRET_PATH, raise_on_deleted_version=True)
        assert read["data"]["data"] == {"key": "sk-1"}
        assert kv.read_secret_metadata(path=SECRET_PATH)["data"]["current_version"] >= 1
        with pytest.raises(hvac.exceptions.Forbidden):
            kv.create_or_update_secret(path=SECRET_PATH, secret={"key": "stolen"})
        with pytest.raises(hvac.exceptions.Forbidden):
            kv.read_secret_version(path="other/thing", raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.Forbidden):
            proxy.sys.list_policies()
        assert proxy.auth.token.lookup_self()["data"]["policies"] == ["egressguard-proxy"]


def test_second_ensure_running_is_idempotent(
    vault: LocalVault, creds: LocalVaultCredentials
) -> None:
    pid = vault.pid_path.read_text()
    again = LocalVault(vault.state_dir, port=vault.port)  # as the next `egressguard run`
    assert again.ensure_running() == creds
    assert vault.pid_path.read_text() == pid


def test_restart_auto_unseals_and_keeps_secrets(
    vault: LocalVault, creds: LocalVaultCredentials
) -> None:
    with hvac_client(creds.addr, creds.admin_token) as admin:
        admin.secrets.kv.v2.create_or_update_secret(path=SECRET_PATH, secret={"key": "sk-2"})
    pid = vault.pid_path.read_text()
    vault.stop()
    assert not vault.is_running() and not port_open(vault.port)
    assert vault.credentials() == creds  # readable without a server
    vault.stop()  # no-op when nothing runs

    assert vault.ensure_running() == creds
    assert vault.pid_path.read_text() != pid
    with hvac_client(creds.addr, creds.proxy_token) as proxy:
        read = proxy.secrets.kv.v2.read_secret_version(
            path=SECRET_PATH, raise_on_deleted_version=True
        )
    assert read["data"]["data"] == {"key": "sk-2"}


def test_wrong_unseal_key_fails_without_revealing_keys(vault: LocalVault) -> None:
    saved = vault.init_path.read_text()
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    vault.stop()
    try:
        os.unlink(vault.init_path)  # rewritten 0600 below, as the code does
        fd = os.open(vault.init_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**json.loads(saved), "unseal_key": wrong}, f)
        with pytest.raises(LocalVaultError, match="unsealing") as info:
            vault.ensure_running(timeout=15)
        text = "".join(traceback.format_exception(info.value))
        assert wrong not in text
    finally:
        vault.stop()
        os.unlink(vault.init_path)
        fd = os.open(vault.init_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(saved)
    vault.ensure_running()
    assert_no_secret_values(text, vault)


def test_changing_the_port_restarts_the_server_there(
    vault: LocalVault, creds: LocalVaultCredentials
) -> None:
    moved = LocalVault(vault.state_dir, port=free_port())
    try:
        assert moved.ensure_running().proxy_token == creds.proxy_token
        assert port_open(moved.port) and not port_open(vault.port)
    finally:
        assert vault.ensure_running() == creds  # and back, for the tests that follow
    assert not port_open(moved.port)


def test_port_taken_by_another_listener_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        lv = LocalVault(tmp_path / "state", port=port)
        with pytest.raises(LocalVaultError, match=f"port {port} .* in use") as info:
            lv.ensure_running(timeout=5)
    assert "another port" in str(info.value)
    assert not lv.is_running()


def test_credentials_of_an_uninitialised_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LocalVaultError, match="not initialised"):
        LocalVault(tmp_path / "state").credentials()


def test_log_holds_no_token_or_unseal_key(vault: LocalVault) -> None:
    # Runs last in this module: the log then covers init, restarts and a failed unseal.
    log = vault.log_path.read_text()
    assert "post-unseal setup complete" in log
    assert_no_secret_values(log, vault)


def test_openbao_dev_fixture_versions_and_restart() -> None:
    dev = OpenBaoDev()
    try:
        dev.start()
        assert dev.put_secret("egressguard/a", {"k": "1"}) == 1
        assert dev.put_secret("egressguard/a", {"k": "2"}) == 2
        read = dev.client().secrets.kv.v2.read_secret_version(
            path="egressguard/a", raise_on_deleted_version=True
        )
        assert read["data"]["data"] == {"k": "2"}

        dev.restart()  # in-memory storage: a fresh, empty server on the same port and token
        assert dev.addr == f"http://127.0.0.1:{dev.port}"
        with pytest.raises(hvac.exceptions.InvalidPath):
            dev.client().secrets.kv.v2.read_secret_version(
                path="egressguard/a", raise_on_deleted_version=True
            )
        assert dev.put_secret("egressguard/a", {"k": "3"}) == 1
    finally:
        dev.stop()
    assert not port_open(dev.port)
