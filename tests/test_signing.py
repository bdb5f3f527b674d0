"""The journal's signing key (`egressguard.backends.signing`): created private, refused
when others can read it, and read from Vault (a real OpenBao) by reference."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends.signing import SigningKeyError, load_signing_key
from egressguard.core import checkpoints
from egressguard.tools.devvault import OpenBaoDev


def pem(key: object) -> str:
    return key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_a_missing_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit-signing.key"
    first = load_signing_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_signing_key(f"file:{path}")
    assert checkpoints.key_id(again.public_key()) == checkpoints.key_id(first.public_key())


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit-signing.key"
    load_signing_key(str(path))
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyError) as info:
        load_signing_key(str(path))
    assert str(info.value) == (
        f"the audit signing key {path} can be read by others (mode 644): whoever reads it "
        f"can sign a rewritten journal; run `chmod 600 {path}`")


@pytest.mark.parametrize("content, why", [
    ("not a key", "does not hold an unencrypted PEM private key"),
    (pem(ec.generate_private_key(ec.SECP256R1())), "holds another kind of key; checkpoints "
                                                   "are signed with Ed25519"),
])
def test_a_file_that_is_not_an_ed25519_key(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match=why):
        load_signing_key(str(path))


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoDev]:
    with OpenBaoDev() as server:
        yield server


def test_a_key_from_vault(bao: OpenBaoDev, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Ed25519PrivateKey.generate()
    bao.put_secret("egressguard/audit-signing", {"private_key": pem(key)})
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    loaded = load_signing_key("vault:secret/egressguard/audit-signing#private_key")
    assert checkpoints.key_id(loaded.public_key()) == checkpoints.key_id(key.public_key())
    with pytest.raises(SigningKeyError, match=r"^no audit signing key available from "
                       r"secret/egressguard/nope: no key stored there; store the PEM"):
        load_signing_key("vault:secret/egressguard/nope")
    with pytest.raises(SigningKeyError, match="expected vault:MOUNT/PATH#FIELD"):
        load_signing_key("vault:secret")
