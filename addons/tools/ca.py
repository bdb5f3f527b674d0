"""The interception CA: created with `cryptography`, stored the way mitmproxy loads it.

Files in the certs directory:
  mitmproxy-ca.pem             private key + certificate (0600): what mitmproxy reads
  egressguard-ca.pem           the certificate alone: what agents trust
  egressguard-ca-bundle.pem    system roots + ours, for SSL_CERT_FILE / REQUESTS_CA_BUNDLE

The key is created 0600 and refused (KeyFileExposed) once others can read or write it:
with it anyone can pose as every vendor to the agents that trust the CA. The same goes
for a `mitmproxy-ca.p12` that mitmproxy itself may have left in the folder.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from egressguard.core import keyfiles

MITMPROXY_FILE = "mitmproxy-ca.pem"  # name fixed by mitmproxy (confdir + "mitmproxy")
MITMPROXY_P12 = "mitmproxy-ca.p12"  # key + certificate, written by mitmproxy's own CA setup
CERT_FILE = "egressguard-ca.pem"
BUNDLE_FILE = "egressguard-ca-bundle.pem"
VALID_DAYS = 3650


@dataclass(frozen=True)
class CaFiles:
    directory: Path

    @property
    def key_and_cert(self) -> Path:
        return self.directory / MITMPROXY_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def bundle(self) -> Path:
        return self.directory / BUNDLE_FILE

    def exists(self) -> bool:
        return self.key_and_cert.exists() and self.cert.exists()

    @property
    def key_files(self) -> list[Path]:
        """Every file here that holds the CA's private key."""
        return [p for p in (self.key_and_cert, self.directory / MITMPROXY_P12) if p.exists()]

    def check_private(self) -> None:
        """KeyFileExposed if any file holding the CA key is open to others."""
        for path in self.key_files:
            keyfiles.check_private(path, "interception CA key", KEY_EXPOSED)


KEY_EXPOSED = "whoever reads it can pose as any vendor to the agents that trust this CA"


def system_roots() -> bytes:
    """The operating system's trusted roots (or certifi's, where the OS has none)."""
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and os.path.exists(cafile):
        return Path(cafile).read_bytes()
    import certifi

    return Path(certifi.where()).read_bytes()


def init(directory: Path, common_name: str = "egressguard interception CA") -> CaFiles:
    """Create the CA unless it exists; (re)write the agent-facing files either way."""
    files = CaFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files.check_private()
    if not files.key_and_cert.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egressguard")])
        now = datetime.datetime.now(datetime.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        keyfiles.create_private(files.key_and_cert,
                                key_pem + cert.public_bytes(serialization.Encoding.PEM))
    cert_pem = _cert_pem(keyfiles.read_private(files.key_and_cert, "interception CA key",
                                               KEY_EXPOSED))
    files.cert.write_bytes(cert_pem)
    files.bundle.write_bytes(system_roots().rstrip(b"\n") + b"\n" + cert_pem)
    return files


def _cert_pem(key_and_cert: bytes) -> bytes:
    start = key_and_cert.index(b"-----BEGIN CERTIFICATE-----")
    return key_and_cert[start:].strip() + b"\n"


def trust_bundle(path: Path, extra: list[Path]) -> Path:
    """Write system roots + `extra` PEM files to `path` (for upstream verification)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [system_roots().rstrip(b"\n")] + [p.read_bytes().strip() for p in extra]
    path.write_bytes(b"\n".join(parts) + b"\n")
    return path
