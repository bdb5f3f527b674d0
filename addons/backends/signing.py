"""The journal's Ed25519 signing key: from a local file, created 0600 when missing, or
from Vault.

    file:/var/lib/egressguard/audit-signing.key   (or just the path)
    vault:secret/egressguard/audit-signing#private_key   (KV v2 mount/path#field, PEM)

A key file others can read is refused: whoever can read it can sign a rewritten
history. Auditors get the public half with `egressguard audit pubkey`.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.core import keyfiles
from egressguard.core.errors import SecretUnavailable
from egressguard.core.secret import SecretLocation


class SigningKeyError(Exception):
    """Why the signing key cannot be used; never holds key material."""


def load_signing_key(spec: str, vault_timeout: float = 2.0) -> Ed25519PrivateKey:
    if spec.startswith("vault:"):
        return _from_vault(spec[len("vault:"):], vault_timeout)
    return from_file(Path(spec.removeprefix("file:")))


def from_file(path: Path) -> Ed25519PrivateKey:
    """The key at `path`, created (0600, in a 0700 folder) if there is none."""
    try:
        pem = keyfiles.read_private(path, "audit signing key", _EXPOSED)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        if keyfiles.create_private(path, pem):
            return key
        return from_file(path)  # another process made it meanwhile: theirs counts
    except keyfiles.KeyFileExposed as exc:
        raise SigningKeyError(str(exc)) from None
    return _parse(pem, str(path))


_EXPOSED = "whoever reads it can sign a rewritten journal"


def _parse(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{where} does not hold an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where} holds another kind of key; checkpoints are signed "
                              "with Ed25519")
    return key


def _from_vault(reference: str, timeout: float) -> Ed25519PrivateKey:
    from egressguard.backends.vault import VaultConfig, VaultStore

    where, _, field = reference.partition("#")
    mount, _, path = where.partition("/")
    if not mount or not path:
        raise SigningKeyError(f"vault:{reference}: expected vault:MOUNT/PATH#FIELD")
    location = SecretLocation(mount, path, field or "private_key")
    try:
        store = VaultStore(VaultConfig.from_env(timeout))
        try:
            pem, _ = store.read_value(location, "store the PEM of an Ed25519 key there",
                                      "audit signing key")
        finally:
            store.close()
    except SecretUnavailable as exc:
        raise SigningKeyError(exc.message) from None
    return _parse(pem.encode(), f"vault:{mount}/{path}#{location.field}")
