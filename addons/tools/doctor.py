"""`egressguard doctor`: check a deployment before (or while) it serves, and say what
to fix.

One line per check, `ok`, `warn`, `fail` or `skip` (a check that cannot run because
an earlier one failed), each ending with the fix. Exit 0 when nothing fails. The
checks read what `egressguard run` reads, the same way: the policy through the same
loader, key files through the same private-file check, Vault with the proxy's own
token (so a missing permission shows here, not on the first request). No secret is
ever printed: keys are named by their Vault path, files by their path.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import os
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import requests
from cryptography import x509

from egressguard.core import keyfiles, logs
from egressguard.core.errors import SecretUnavailable
from egressguard.core.secret import SecretLocation
from egressguard.tools import ca

STATUSES = ("ok", "warn", "fail", "skip")
LOW_DISK = 1 << 30  # bytes free under the journal before a warning
SHORT_TTL = 24 * 3600  # a token that cannot be renewed and expires sooner: warn
CA_EXPIRY_WARNING = datetime.timedelta(days=30)
PROBE_TIMEOUT = 3.0
# /v1/sys/health status codes: what the node is (None: active)
_HEALTH = {200: None, 429: "a standby", 473: "a performance standby", 472: "a DR secondary",
           501: "not initialised", 503: "sealed"}


@dataclass(frozen=True)
class Check:
    status: str  # ok | warn | fail | skip
    name: str
    message: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name:<13} {self.message}"


@dataclass
class Options:
    policy: Path = Path("policies/default.yaml")
    state: Path = Path("var")
    certs: Path = Path("certs")
    journal: Path = Path("var/journal")
    sinks: Path | None = None
    signing_key: str = ""  # "" -> STATE/audit-signing.key
    max_clock_skew: float = 10.0
    vault_timeout: float = 3.0
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def main(options: Options) -> int:
    checks = list(run_checks(options))
    for check in checks:
        print(logs.scrub(check.line()), flush=True)
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(f"\n{failed} failed, {warned} warnings, {len(checks)} checks", file=sys.stderr)
    return 1 if failed else 0


def run_checks(o: Options) -> Iterator[Check]:
    yield from check_ca(o.certs)
    yield from check_key_files(o)
    policy, check = check_policy(o.policy)
    yield check
    vault = VaultProbe.connect(o)
    yield from vault.checks(o.max_clock_skew)
    yield from check_vendor_keys(policy, vault)
    yield from check_signing_key_in_vault(o, vault)
    yield from check_sinks(o.sinks)
    yield check_journal(o.journal)
    yield from check_semantic_model(policy)


# -- the CA -----------------------------------------------------------------------------
def check_ca(certs: Path) -> Iterator[Check]:
    files = ca.CaFiles(certs)
    if not files.exists():
        yield Check("fail", "ca", f"no interception CA in {certs}: create it with "
                    f"`egressguard ca init --certs {certs}` (or start `egressguard run` once)")
        return
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left <= datetime.timedelta(0):
        yield Check("fail", "ca", f"{files.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}:"
                    f" move {certs} aside, run `egressguard ca init` and give agents the new one")
        return
    status = "warn" if left < CA_EXPIRY_WARNING else "ok"
    yield Check(status, "ca", f"{files.cert} valid until {cert.not_valid_after_utc:%Y-%m-%d}; "
                f"{trust_hint(files)}")


def trust_hint(files: ca.CaFiles) -> str:
    """How agents come to trust the CA: per runtime, and the system store of this OS."""
    cert, bundle = files.cert.resolve(), files.bundle.resolve()
    if _system_trusts(files.cert):
        system = "already in this system's trust store"
    elif sys.platform == "darwin":
        system = ("system-wide: sudo security add-trusted-cert -d -r trustRoot "
                  f"-k /Library/Keychains/System.keychain {cert}")
    elif Path("/etc/redhat-release").exists():
        system = (f"system-wide: sudo cp {cert} /etc/pki/ca-trust/source/anchors/ && "
                  "sudo update-ca-trust")
    elif sys.platform.startswith("win"):
        system = f"system-wide: certutil -addstore -f Root {cert}"
    else:
        system = (f"system-wide: sudo cp {cert} /usr/local/share/ca-certificates/"
                  "egressguard.crt && sudo update-ca-certificates")
    return (f"agents trust it with SSL_CERT_FILE={bundle} (Python SDKs, curl; also "
            f"REQUESTS_CA_BUNDLE), NODE_EXTRA_CA_CERTS={cert} (Node), `keytool -importcert "
            f"-cacerts -file {cert}` (Java), or {system}")


def _system_trusts(cert_file: Path) -> bool:
    cafile = ssl.get_default_verify_paths().cafile
    body = b"".join(cert_file.read_bytes().split()[2:-2])  # PEM base64, whitespace-free
    try:
        return bool(cafile) and body in b"".join(Path(cafile).read_bytes().split())
    except OSError:
        return False


# -- key files --------------------------------------------------------------------------
def check_key_files(o: Options) -> Iterator[Check]:
    signing = o.signing_key or str(o.state / "audit-signing.key")
    files: list[tuple[Path, str, bool]] = [  # (path, what, created by `run` if missing)
        *((p, "interception CA key", False) for p in ca.CaFiles(o.certs).key_files),
        (o.state / "token.key", "token key", True),
    ]
    if not signing.startswith("vault:"):
        files.append((Path(signing.removeprefix("file:")), "audit signing key", True))
    openbao = o.state / "openbao"
    files += [(openbao / n, "local OpenBao credentials", False) for n in
              ("init.json", "proxy-token") if (openbao / n).exists()]
    for path, what, created in files:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            if created:
                yield Check("ok", "key file", f"{path} ({what}) does not exist yet: "
                            "`egressguard run` creates it 0600")
            continue
        how = keyfiles.exposure(mode)
        if how is None:
            yield Check("ok", "key file", f"{path} ({what}) is private "
                        f"({mode & 0o777:04o})")
        else:
            yield Check("fail", "key file", f"{path} ({what}) can be {how} by others (mode "
                        f"{mode & 0o777:o}); `egressguard run` refuses it: run "
                        f"`chmod 600 {path}`")


# -- the policy -------------------------------------------------------------------------
def check_policy(path: Path) -> tuple[Any, Check]:
    from egressguard.core import policy as policy_mod
    from egressguard.core.yamlsource import ConfigError

    try:
        policy = policy_mod.load(path)
    except ConfigError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        return None, Check("fail", "policy", f"{len(exc.problems)} problem(s): {problems} "
                           f"(`egressguard policy lint {path}` lists them)")
    if policy.warnings:
        return policy, Check("warn", "policy", f"{path} loads, with warnings: " + "; ".join(
            str(w) for w in policy.warnings))
    return policy, Check("ok", "policy", f"{path}: {len(policy.rules)} rule(s), sha256 "
                         f"{policy.digest[:12]}")


# -- Vault ------------------------------------------------------------------------------
@dataclass
class VaultProbe:
    """Where Vault is and with which token, found as `egressguard run` finds them."""

    addr: str | None
    token: str | None
    problem: str | None = None  # why Vault cannot be checked
    timeout: float = 3.0
    role_id: str | None = None
    secret_id: str | None = None
    ca_cert: str | None = None  # VAULT_CACERT
    reachable: bool = False

    @classmethod
    def connect(cls, o: Options) -> VaultProbe:
        env = o.env
        if env.get("VAULT_ADDR"):
            logs.register_secret(env.get("VAULT_TOKEN"), "VAULT_TOKEN")
            return cls(env["VAULT_ADDR"], env.get("VAULT_TOKEN"), timeout=o.vault_timeout,
                       role_id=env.get("VAULT_ROLE_ID"), secret_id=env.get("VAULT_SECRET_ID"),
                       ca_cert=env.get("VAULT_CACERT"))
        from egressguard.tools.localvault import LocalVault, LocalVaultError

        try:
            creds = LocalVault(o.state / "openbao").credentials()
        except LocalVaultError:
            return cls(None, None, "VAULT_ADDR is not set and there is no local OpenBao in "
                       f"{o.state / 'openbao'}: set VAULT_ADDR and VAULT_TOKEN (or "
                       "VAULT_ROLE_ID/VAULT_SECRET_ID), or start `egressguard run "
                       "--local-vault` once", o.vault_timeout)
        logs.register_secret(creds.proxy_token, "VAULT_TOKEN")
        return cls(creds.addr, creds.proxy_token, timeout=o.vault_timeout)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # an agent-facing HTTPS_PROXY never carries the token
        session.verify = self.ca_cert or True
        return session

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token, timeout=self.timeout,
                           session=self.session(), verify=self.ca_cert or True)

    def store(self) -> Any:
        from egressguard.backends.vault import VaultConfig, VaultStore

        return VaultStore(VaultConfig(self.addr or "", token=self.token, role_id=self.role_id,
                                      secret_id=self.secret_id, ca_cert=self.ca_cert,
                                      timeout=self.timeout))

    def checks(self, max_skew: float) -> Iterator[Check]:
        if self.addr is None:
            yield Check("fail", "vault", str(self.problem))
            yield Check("skip", "clock", "needs Vault to compare with")
            return
        try:
            with self.session() as session:
                response = session.get(f"{self.addr.rstrip('/')}/v1/sys/health",
                                       timeout=self.timeout)
        except requests.RequestException as exc:
            yield Check("fail", "vault", f"no answer from {self.addr} ({type(exc).__name__}):"
                        " is it running, is VAULT_ADDR right, does a firewall block it?")
            yield Check("skip", "clock", "needs Vault to compare with")
            return
        code = response.status_code
        state = _HEALTH.get(code, f"answering HTTP {code}")
        if state in (None, "a standby", "a performance standby"):
            self.reachable = True
            yield Check("ok", "vault", f"{self.addr} answers"
                        f"{f' ({state})' if state else ''}")
            yield self.token_check()
        else:
            yield Check("fail", "vault", f"{self.addr} is {state}: unseal or initialise it "
                        "(`bao operator unseal`), or point VAULT_ADDR at the active node")
        yield clock_check(response.headers.get("Date"), time.time(), max_skew, self.addr)

    def token_check(self) -> Check:
        client = self.client()
        try:
            if self.role_id:
                auth = client.auth.approle.login(role_id=self.role_id, secret_id=self.secret_id)
                client.token = auth["auth"]["client_token"]
                logs.register_secret(client.token, "VAULT_TOKEN")
            elif not self.token:
                return Check("fail", "vault token", "no VAULT_TOKEN (nor VAULT_ROLE_ID and "
                             "VAULT_SECRET_ID): give the proxy a token that reads the keys")
            data = client.auth.token.lookup_self()["data"]
        except hvac.exceptions.Forbidden:
            return Check("fail", "vault token", "Vault refuses the token (expired, revoked or"
                         " mistyped): issue a new one and set VAULT_TOKEN")
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            return Check("fail", "vault token", f"cannot look the token up "
                         f"({type(exc).__name__}): check VAULT_TOKEN / AppRole settings")
        finally:
            client.adapter.close()
        return token_verdict(int(data.get("ttl") or 0), bool(data.get("renewable")),
                             list(data.get("policies") or []))


def token_verdict(ttl: int, renewable: bool, policies: list[str]) -> Check:
    """What a token's TTL and renewability mean for a proxy that runs for months."""
    named = f"policies {', '.join(policies)}" if policies else "no policies"
    if ttl == 0:
        return Check("ok", "vault token", f"does not expire ({named})")
    left = _duration(ttl)
    if renewable:
        return Check("ok", "vault token", f"expires in {left} unless renewed; renewable "
                     f"({named})")
    if ttl < SHORT_TTL:
        return Check("warn", "vault token", f"expires in {left} and cannot be renewed: the "
                     "proxy cannot read keys after that; use a renewable (periodic) token "
                     f"or AppRole ({named})")
    return Check("ok", "vault token", f"expires in {left}, not renewable: replace it "
                 f"before then ({named})")


def clock_check(date_header: str | None, now: float, max_skew: float, where: str) -> Check:
    """This host's clock against Vault's `Date` (1 s resolution, hence the 1 s slack)."""
    if not date_header:
        return Check("skip", "clock", f"{where} sent no Date header to compare with")
    try:
        theirs = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Check("skip", "clock", f"{where} sent an unreadable Date header")
    skew = now - theirs
    if abs(skew) <= max_skew + 1:
        return Check("ok", "clock", f"within {max_skew:g}s of {where} ({skew:+.0f}s)")
    side = "ahead of" if skew > 0 else "behind"
    return Check("warn", "clock", f"{abs(skew):.0f}s {side} {where}: audit record times and "
                 "token expiry go wrong; sync this host's clock (NTP: `timedatectl set-ntp "
                 "true` or chrony)")


def check_vendor_keys(policy: Any, vault: VaultProbe) -> Iterator[Check]:
    if policy is None:
        yield Check("skip", "vendor keys", "needs a valid policy")
        return
    if not vault.reachable:
        yield Check("skip", "vendor keys", "needs Vault")
        return
    store = vault.store()
    found, unused = 0, []
    try:
        for vendor, where, explicit in needed_keys(policy):
            try:
                _, version = store.read_value(where, f"store it with `egressguard secrets put "
                                              f"{vendor}`")
            except SecretUnavailable as exc:
                if exc.reason == "secret_missing" and not explicit:
                    unused.append(vendor)  # only a catch-all rule reaches it: maybe unused
                else:
                    yield Check("fail", "vendor key", f"{vendor}: {exc.message}")
                continue
            found += 1
            yield Check("ok", "vendor key", f"{vendor}: {where.mount}/{where.path}#{where.field}"
                        f" (version {version})")
    finally:
        store.close()
    if unused:
        yield Check("fail" if not found else "warn", "vendor key",
                    f"none stored for {', '.join(unused)}: requests to "
                    f"{'them' if len(unused) > 1 else 'it'} get 503; store one with "
                    "`egressguard secrets put VENDOR` if agents use it")


def needed_keys(policy: Any) -> list[tuple[str, SecretLocation, bool]]:
    """(vendor, location, named explicitly by a rule) for every key the policy's allow
    rules can send a request to, at the default, team, agent and rule locations."""
    from egressguard.core.vendors import catalogue

    wanted: dict[tuple[str, SecretLocation], bool] = {}
    secrets = policy.secrets
    for rule in policy.rules:
        if rule.action != "allow":
            continue
        explicit = rule.match.vendors is not None
        vendors = sorted(rule.match.vendors) if explicit else list(catalogue().names)
        templates = [t for t in (rule.secret, *rule.key_pool) if t]
        for vendor in vendors:
            places = [secrets.location_for(vendor, template=t) for t in templates
                      if "{agent}" not in t and "{team}" not in t] or \
                [secrets.location_for(vendor)]
            places += [secrets.location_for(vendor, agent=a) for a in secrets.agents] + \
                [secrets.location_for(vendor, team=t) for t in secrets.teams]
            for where in places:
                wanted[(vendor, where)] = wanted.get((vendor, where), False) or explicit
        for fallback in rule.resilience.fallback:  # missing, it would show only in an outage
            template = fallback.secret if fallback.secret and "{agent}" not in \
                fallback.secret and "{team}" not in fallback.secret else None
            wanted[(fallback.vendor, secrets.location_for(fallback.vendor,
                                                          template=template))] = True
    return [(v, w, e) for (v, w), e in wanted.items()]


def check_semantic_model(policy: Any) -> Iterator[Check]:
    """Rules with a semantic cache need the embedding model installed (without it the
    proxy falls back to exact matches, with one error line)."""
    if policy is None or not any(r.resilience.cache and r.resilience.cache.semantic_ttl
                                 for r in policy.rules):
        return
    from egressguard.backends.embedder import EmbedderUnavailable, installed_model_dir

    try:
        folder = installed_model_dir()
    except EmbedderUnavailable as exc:
        yield Check("fail", "semantic cache", str(exc))
        return
    missing = [n for n in ("vocab.txt", "model.safetensors", "config.json")
               if not (folder / n).is_file()]
    yield Check("fail" if missing else "ok", "semantic cache",
                f"model files missing in {folder}: {', '.join(missing)}" if missing
                else f"all-MiniLM-L6-v2 installed ({folder})")


def check_signing_key_in_vault(o: Options, vault: VaultProbe) -> Iterator[Check]:
    """A `vault:MOUNT/PATH#FIELD` signing key: there, readable, an Ed25519 PEM."""
    if not o.signing_key.startswith("vault:"):
        return
    if not vault.reachable:
        yield Check("skip", "signing key", "needs Vault")
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    where, _, name = o.signing_key.removeprefix("vault:").partition("#")
    mount, _, path = where.partition("/")
    store = vault.store()
    try:
        pem, _ = store.read_value(SecretLocation(mount, path, name or "private_key"),
                                  "store the PEM of an Ed25519 key there", "audit signing key")
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except SecretUnavailable as exc:
        yield Check("fail", "signing key", exc.message)
        return
    except (ValueError, TypeError):
        key = None
    finally:
        store.close()
    if isinstance(key, Ed25519PrivateKey):
        yield Check("ok", "signing key", f"{o.signing_key} holds an Ed25519 key")
    else:
        yield Check("fail", "signing key", f"{o.signing_key} holds no unencrypted Ed25519 "
                    "PEM private key; checkpoints are signed with Ed25519")


# -- sinks ------------------------------------------------------------------------------
def check_sinks(path: Path | None) -> Iterator[Check]:
    if path is None:
        return
    from egressguard.core.sinkconfig import load_sinks
    from egressguard.core.yamlsource import ConfigError

    try:
        config = load_sinks(path)
    except ConfigError as exc:
        yield Check("fail", "sinks", f"{path}: " + "; ".join(str(p) for p in exc.problems))
        return
    for spec in config.sinks:
        yield sink_check(spec)


def sink_check(spec: Any) -> Check:
    """Credentials present, then TCP connect / TLS handshake (syslog) or an HTTP
    answer of any status (HEC, HTTP): the sink can be reached."""
    from egressguard.backends.sinks import SinkError, make_sink

    name = f"sink {spec.name}"
    try:
        asyncio.run(make_sink(spec, None).close())  # reads its credential, or says which
    except SinkError as exc:
        return Check("fail", name, str(exc))
    try:
        if spec.type == "syslog":
            return _probe_syslog(name, spec)
        return _probe_http(name, spec)
    except (OSError, httpx.HTTPError) as exc:
        return Check("fail", name, f"{_target(spec)}: {_why(exc)}")


def _probe_syslog(name: str, spec: Any) -> Check:
    host, port = spec.option("host"), spec.option("port")
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
        if spec.option("transport") != "tls":
            return Check("ok", name, f"syslog {host}:{port} accepts TCP (plain: records "
                         "travel unencrypted)")
        context = ssl.create_default_context(cafile=spec.option("ca"))
        if spec.option("client_cert"):
            context.load_cert_chain(spec.option("client_cert"), spec.option("client_key"))
        with context.wrap_socket(sock, server_hostname=spec.option("server_name") or host):
            pass
    return Check("ok", name, f"syslog {host}:{port}: TLS handshake verified")


def _probe_http(name: str, spec: Any) -> Check:
    verify: ssl.SSLContext | bool = bool(spec.option("verify_tls", True))
    if spec.option("ca"):
        verify = ssl.create_default_context(cafile=spec.option("ca"))
    with httpx.Client(verify=verify, timeout=PROBE_TIMEOUT, trust_env=False) as client:
        response = client.get(spec.option("url"))
    tls = "TLS verified, " if spec.option("url").startswith("https") and verify else ""
    return Check("ok" if verify or not tls else "warn", name,
                 f"{spec.option('url')} answers ({tls}HTTP {response.status_code})")


def _target(spec: Any) -> str:
    return f"syslog {spec.option('host')}:{spec.option('port')}" if spec.type == "syslog" \
        else str(spec.option("url"))


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return ("TLS certificate not trusted: set `ca:` to the CA file that signed the "
                "receiver's certificate")
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connection refused: is the receiver running and the address right?"
    if isinstance(exc, TimeoutError | socket.timeout | httpx.TimeoutException):
        return f"no answer within {PROBE_TIMEOUT:g}s (a firewall, or the wrong address?)"
    return f"{type(exc).__name__}: {exc}"


# -- the journal ------------------------------------------------------------------------
def check_journal(journal: Path) -> Check:
    existing = next(p for p in (journal, *journal.parents) if p.exists())
    probe = existing / f".doctor-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        return Check("fail", "journal", f"cannot write in {existing} ({exc.strerror}): give "
                     "the proxy's user write access, or pass --journal DIR")
    free = shutil.disk_usage(existing).free
    where = str(journal) if existing == journal else f"{journal} (created at start, in " \
        f"{existing})"
    if free < LOW_DISK:
        return Check("warn", "journal", f"{where}: only {_size(free)} free; when the journal "
                     "cannot write, requests are refused: free space, move it, or set "
                     "--journal-max-bytes with --journal-retention")
    return Check("ok", "journal", f"{where} is writable, {_size(free)} free")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h {rest % 3600 // 60}m"
