"""Key files: created 0600 whatever the umask, refused when others can read or write
them -- by the helper, by each key's loader, and by `egressguard run` itself."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from egressguard.backends.signing import SigningKeyError, from_file
from egressguard.cli import main as cli_main
from egressguard.core import keyfiles, tokens
from egressguard.tools import ca
from egressguard.tools.procs import free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def careless_umask() -> Iterator[None]:
    """umask 000: a file created with the default mode would be world-readable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_create_private_is_0600_under_any_umask(tmp_path: Path, careless_umask: None) -> None:
    path = tmp_path / "new" / "key"
    assert keyfiles.create_private(path, b"material")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert path.read_bytes() == b"material"
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_create_private_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert keyfiles.create_private(path, b"first")
    assert not keyfiles.create_private(path, b"second")
    assert path.read_bytes() == b"first"


@pytest.mark.parametrize(("bits", "how"), [
    (0o640, "read"), (0o604, "read"), (0o620, "written"), (0o666, "read or written"),
    (0o610, "opened"),
])
def test_an_exposed_file_is_refused_with_path_mode_and_fix(tmp_path: Path, bits: int,
                                                          how: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"material")
    path.chmod(bits)
    with pytest.raises(keyfiles.KeyFileExposed) as refused:
        keyfiles.read_private(path, "token key", "whoever reads it can mint tokens")
    assert str(refused.value) == (
        f"the token key {path} can be {how} by others (mode {bits:o}): whoever reads it can "
        f"mint tokens; run `chmod 600 {path}`")


@pytest.mark.parametrize("bits", [0o600, 0o400])
def test_an_owner_only_file_is_read(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"material")
    path.chmod(bits)
    assert keyfiles.read_private(path, "key", "why") == b"material"


# -- every key egressguard keeps in a file ---------------------------------------------
def test_the_ca_key_is_created_private_and_refused_once_exposed(tmp_path: Path,
                                                                careless_umask: None) -> None:
    files = ca.init(tmp_path / "certs")
    assert mode(files.key_and_cert) == 0o600
    files.key_and_cert.chmod(0o644)
    with pytest.raises(keyfiles.KeyFileExposed, match=r"interception CA key .* can be read "
                       r"by others \(mode 644\).*chmod 600"):
        ca.init(tmp_path / "certs")


def test_a_p12_copy_of_the_ca_key_counts_too(tmp_path: Path) -> None:
    files = ca.init(tmp_path / "certs")
    p12 = files.directory / ca.MITMPROXY_P12
    p12.write_bytes(b"pkcs12")
    p12.chmod(0o644)
    with pytest.raises(keyfiles.KeyFileExposed, match="mitmproxy-ca.p12"):
        files.check_private()


def test_the_token_key_is_created_private_and_refused_once_exposed(
        tmp_path: Path, careless_umask: None) -> None:
    path = tmp_path / "state" / "token.key"
    key = tokens.load_or_create_key(path)
    assert mode(path) == 0o600
    path.chmod(0o660)
    with pytest.raises(keyfiles.KeyFileExposed, match="can be read or written by others"):
        tokens.load_or_create_key(path)
    path.chmod(0o600)
    assert tokens.load_or_create_key(path) == key


def test_the_signing_key_is_created_private_and_refused_once_exposed(
        tmp_path: Path, careless_umask: None) -> None:
    path = tmp_path / "audit-signing.key"
    from_file(path)
    assert mode(path) == 0o600
    path.chmod(0o604)
    with pytest.raises(SigningKeyError, match=r"can be read by others \(mode 604\)"):
        from_file(path)


# -- `egressguard run` refuses to start -----------------------------------------------
POLICY = "version: 1\nrules:\n  - name: everyone\n"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state and certs folder with every key created, private."""
    root = tmp_path_factory.mktemp("deployment")
    ca.init(root / "certs")
    tokens.load_or_create_key(root / "var" / "token.key")
    from_file(root / "var" / "audit-signing.key")
    (root / "policy.yaml").write_text(POLICY)
    return root


@pytest.mark.parametrize("exposed", ["certs/mitmproxy-ca.pem", "var/token.key",
                                     "var/audit-signing.key"])
def test_run_refuses_to_start_with_an_exposed_key(deployment: Path, exposed: str) -> None:
    path = deployment / exposed
    path.chmod(0o644)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "egressguard.cli", "run", "--quiet",
             "--listen", f"127.0.0.1:{free_port()}", "--policy", str(deployment / "policy.yaml"),
             "--state", str(deployment / "var"), "--journal", str(deployment / "journal"),
             "--certs", str(deployment / "certs")],
            capture_output=True, text=True, timeout=60, cwd=deployment,
            env={"PATH": os.environ["PATH"], "HOME": str(deployment),
                 "VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "t" * 16})
    finally:
        path.chmod(0o600)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path} can be read by others (mode 644)" in result.stderr
    assert f"run `chmod 600 {path}`" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (deployment / ".mitmproxy").exists()  # no second CA key in HOME


def test_ca_init_names_an_exposed_key_instead_of_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = ca.init(tmp_path / "certs")
    files.key_and_cert.chmod(0o644)
    assert cli_main(["ca", "init", "--certs", str(tmp_path / "certs")]) == 2
    assert capsys.readouterr().err == (
        f"egressguard: the interception CA key {files.key_and_cert} can be read by others "
        f"(mode 644): {ca.KEY_EXPOSED}; run `chmod 600 {files.key_and_cert}`\n")
