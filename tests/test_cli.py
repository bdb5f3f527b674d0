"""The `egressguard` command as a person uses it: ca, token, secrets, audit, run, --help.

Commands whose output a shell consumes (`token issue` in `$(...)`), that talk to a
real OpenBao or that start the proxy run as the installed console script in a child
process; the rest call `egressguard.cli.main` in-process, which is the same code path
without the ~1 s interpreter start-up.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hvac.exceptions
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from mitmproxy.certs import CertStore
from secret_registry import register

from egressguard.backends.journal import Journal, journal_files
from egressguard.cli import main, parser
from egressguard.core import records, tokens
from egressguard.core.errors import IdentityRequired
from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.localvault import LocalVault
from egressguard.tools.procs import free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "policies" / "default.yaml"
# Variables that would point a child at the developer's Vault or through a proxy.
AMBIENT = ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID",
           "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
           "all_proxy")
COMMAND_TIMEOUT = 30.0  # seconds any one command may take before the test fails


def egressguard_script() -> str:
    """The console script of this venv (beside the interpreter), else the one on PATH."""
    beside = Path(sys.executable).with_name("egressguard")
    if beside.is_file():
        return str(beside)
    found = shutil.which("egressguard")
    assert found, "the egressguard console script is not installed (pip install -e .)"
    return found


def egressguard(*args: object, stdin: str | None = None, env: dict[str, str] | None = None,
                home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `egressguard` command; ambient Vault/proxy settings removed."""
    child_env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    if home is not None:
        child_env["HOME"] = str(home)
    child_env.update(env or {})
    return subprocess.run([egressguard_script(), *map(str, args)], input=stdin or "",
                          capture_output=True, text=True, env=child_env,
                          timeout=COMMAND_TIMEOUT, check=False)


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """`egressguard ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def fake_key() -> str:
    """A key-shaped value made at run time (nothing key-like is committed); the secret
    sweep looks for it at the end of the session."""
    return register("sk-test-" + secrets.token_hex(16), "vendor key")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- ca -------------------------------------------------------------------------------
def load_ca(certs: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((certs / "egressguard-ca.pem").read_bytes())


def test_ca_init_creates_a_private_ca_mitmproxy_can_load(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    code, out, err = cli(capsys, "ca", "init", "--certs", certs)

    assert code == 0, err
    assert out == f"{certs / 'egressguard-ca.pem'}\n"
    assert "created CA" in err
    key_and_cert = certs / "mitmproxy-ca.pem"
    assert mode(key_and_cert) == 0o600
    pem = key_and_cert.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    cert = load_ca(certs)
    assert x509.load_pem_x509_certificate(pem) == cert  # the same cert, after the key
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]

    assert cert.subject == cert.issuer
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign

    # Counted, not parsed: some system roots do not parse without warnings.
    bundle = (certs / "egressguard-ca-bundle.pem").read_bytes()
    assert cert.public_bytes(serialization.Encoding.PEM) in bundle
    assert bundle.count(b"-----BEGIN CERTIFICATE-----") > 1, "system roots missing"

    store = CertStore.from_store(certs, "mitmproxy", 2048)
    assert store.default_ca.fingerprint() == cert.fingerprint(hashes.SHA256())


def test_ca_init_twice_keeps_the_same_ca(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    assert cli(capsys, "ca", "init", "--certs", certs)[0] == 0
    first_key, first = (certs / "mitmproxy-ca.pem").read_bytes(), load_ca(certs)

    code, out, err = cli(capsys, "ca", "init", "--certs", certs)

    assert code == 0 and "using existing CA" in err
    assert (certs / "mitmproxy-ca.pem").read_bytes() == first_key
    assert load_ca(certs).fingerprint(hashes.SHA256()) == first.fingerprint(hashes.SHA256())
    assert mode(certs / "mitmproxy-ca.pem") == 0o600


@pytest.mark.parametrize(("flags", "name"), [
    ((), "egressguard-ca.pem"),
    (("--bundle",), "egressguard-ca-bundle.pem"),
])
def test_ca_path_prints_the_absolute_file_to_trust(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        flags: tuple[str, ...], name: str) -> None:
    assert cli(capsys, "ca", "init", "--certs", tmp_path / "certs")[0] == 0
    monkeypatch.chdir(tmp_path)

    code, out, err = cli(capsys, "ca", "path", "--certs", "certs", *flags)

    assert (code, err) == (0, "")
    assert out == f"{tmp_path / 'certs' / name}\n"


def test_ca_path_without_a_ca_says_how_to_make_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "ca", "path", "--certs", tmp_path / "certs")

    assert (code, out) == (2, "")
    assert "egressguard ca init" in err and str(tmp_path / "certs") in err
    assert not (tmp_path / "certs").exists(), "asking for the path must not create anything"


# -- token --------------------------------------------------------------------------------
def authority(state: Path) -> tokens.TokenAuthority:
    return tokens.TokenAuthority(tokens.load_or_create_key(state / "token.key"),
                                 tokens.RevocationList(state / "revoked-tokens"))


def test_token_issue_prints_only_the_token_for_a_shell(tmp_path: Path) -> None:
    state = tmp_path / "var"
    result = egressguard("token", "issue", "--state", state, "--agent", "A", "--team", "T",
                         "--ttl", "2h", home=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout == lines[0] + "\n"
    token = lines[0]
    assert token.startswith("egt1.")
    assert mode(state / "token.key") == 0o600

    principal = authority(state).verify(token)
    assert (principal.agent, principal.team) == ("A", "T")
    assert abs(principal.expires - (time.time() + 2 * 3600)) < 60
    assert principal.token_id in result.stderr  # the id, to revoke it later
    assert token not in result.stderr


@pytest.mark.parametrize(("ttl", "message"), [
    ("5x", "duration"),
    ("2 hours", "duration"),
    ("1.5h", "duration"),
    ("", "duration"),
])
def test_token_issue_rejects_a_bad_ttl(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       ttl: str, message: str) -> None:
    code, out, err = cli(capsys, "token", "issue", "--state", tmp_path, "--agent", "a",
                         "--ttl", ttl)

    assert (code, out) == (2, "")
    assert "--ttl" in err and message in err and "30m" in err  # shows what is accepted


def test_token_issue_rejects_a_zero_ttl(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "token", "issue", "--state", tmp_path, "--agent", "a",
                         "--ttl", "0s")

    assert (code, out) == (2, "")
    assert err == "egressguard: ttl must be positive\n"


@pytest.mark.parametrize(("flags", "message"), [
    (("--agent", "bad name!"), "agent name 'bad name!' must be"),
    (("--agent=-leading-dash",), "agent name '-leading-dash' must be"),
    (("--agent", "x" * 65), "must be 1-64 of"),
    (("--agent", "ok", "--team", "red team"), "team name 'red team' must be"),
])
def test_token_issue_rejects_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        flags: tuple[str, ...], message: str) -> None:
    code, out, err = cli(capsys, "token", "issue", "--state", tmp_path, *flags)

    assert (code, out) == (2, "")
    assert err.startswith("egressguard: ") and message in err and "Traceback" not in err


def test_token_revoke_refuses_that_token_only(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "var"
    lost, lost_principal = authority(state).issue("laptop", None, 3600)
    kept, _ = authority(state).issue("server", None, 3600)

    code, out, err = cli(capsys, "token", "revoke", lost_principal.token_id, "--state", state,
                         "--note", "lost laptop")

    assert (code, out) == (0, "")
    assert f"revoked {lost_principal.token_id}" in err
    with pytest.raises(IdentityRequired) as refused:
        authority(state).verify(lost)
    assert refused.value.reason == "token_revoked"
    assert authority(state).verify(kept).agent == "server"


def test_token_revoke_given_the_token_itself_does_not_pretend(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "var"
    token, _ = authority(state).issue("laptop", None, 3600)

    code, _, _ = cli(capsys, "token", "revoke", token, "--state", state)

    if code == 0:  # accepted: then it must really be revoked
        with pytest.raises(IdentityRequired):
            authority(state).verify(token)
    else:  # or refused, saying what to pass instead
        assert code == 2


# -- secrets --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoDev]:
    with OpenBaoDev() as vault:
        yield vault


def vault_env(bao: OpenBaoDev) -> dict[str, str]:
    return {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token}


def stored(bao: OpenBaoDev, path: str) -> dict[str, object] | None:
    """The KV v2 secret at `path` (read back with the root token), None if absent."""
    try:
        secret = bao.client().secrets.kv.v2.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return dict(secret["data"]["data"])


TEAM_POLICY = """\
version: 1
secrets:
  teams:
    research: egressguard/teams/research/{vendor}
rules:
  - name: everyone
"""


def test_secrets_put_stores_the_key_where_the_policy_says(bao: OpenBaoDev,
                                                         tmp_path: Path) -> None:
    key = fake_key()
    result = egressguard("secrets", "put", "openai", "--state", tmp_path / "var", "--policy",
                         DEFAULT_POLICY, stdin=key + "\n", env=vault_env(bao), home=tmp_path)

    assert result.returncode == 0, result.stderr
    assert stored(bao, "egressguard/vendors/openai") == {"api_key": key}
    assert "stored openai key at secret/egressguard/vendors/openai" in result.stderr
    assert key not in result.stdout + result.stderr


def test_secrets_put_for_a_team_uses_the_team_path(bao: OpenBaoDev, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEAM_POLICY)
    default_before = stored(bao, "egressguard/vendors/anthropic")
    key = fake_key()

    result = egressguard("secrets", "put", "anthropic", "--team", "research", "--policy",
                         policy, "--state", tmp_path / "var", stdin=key + "\n",
                         env=vault_env(bao), home=tmp_path)

    assert result.returncode == 0, result.stderr
    assert stored(bao, "egressguard/teams/research/anthropic") == {"api_key": key}
    assert stored(bao, "egressguard/vendors/anthropic") == default_before
    assert "secret/egressguard/teams/research/anthropic" in result.stderr
    assert key not in result.stdout + result.stderr


def test_secrets_put_unknown_vendor_lists_the_known_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = fake_key()
    monkeypatch.setattr(sys, "stdin", io.StringIO(key + "\n"))

    code, out, err = cli(capsys, "secrets", "put", "opneai", "--state", tmp_path,
                         "--policy", DEFAULT_POLICY)

    assert (code, out) == (2, "")
    assert "unknown vendor 'opneai'" in err
    assert "openai" in err.split("known:")[1] and "anthropic" in err
    assert key not in err


@pytest.mark.parametrize("stdin", ["", "\n", "   \n"])
def test_secrets_put_refuses_an_empty_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch,
                                          stdin: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")

    code, out, err = cli(capsys, "secrets", "put", "openai", "--state", tmp_path,
                         "--policy", DEFAULT_POLICY)

    assert (code, out) == (2, "")
    assert err == "egressguard: no key given on stdin\n"


def unreachable_vault() -> dict[str, str]:
    return {"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "s.not-used"}


def test_secrets_put_with_vault_unreachable_names_the_path(tmp_path: Path) -> None:
    key = fake_key()
    result = egressguard("secrets", "put", "openai", "--state", tmp_path, "--policy",
                         DEFAULT_POLICY, stdin=key + "\n", env=unreachable_vault(),
                         home=tmp_path)

    assert result.returncode == 2
    assert "secret/egressguard/vendors/openai" in result.stderr
    assert "Traceback" not in result.stderr
    assert key not in result.stdout + result.stderr


def test_secrets_put_with_vault_unreachable_says_which_vault(tmp_path: Path) -> None:
    env = unreachable_vault()
    result = egressguard("secrets", "put", "openai", "--state", tmp_path, "--policy",
                         DEFAULT_POLICY, stdin=fake_key() + "\n", env=env, home=tmp_path)

    assert result.returncode == 2
    assert env["VAULT_ADDR"] in result.stderr


def test_secrets_put_with_a_wrong_vault_token_fails_cleanly(bao: OpenBaoDev,
                                                           tmp_path: Path) -> None:
    key = fake_key()
    env = {**vault_env(bao), "VAULT_TOKEN": "s.wrong-" + secrets.token_hex(8)}

    result = egressguard("secrets", "put", "mistral", "--state", tmp_path, "--policy",
                         DEFAULT_POLICY, stdin=key + "\n", env=env, home=tmp_path)

    assert result.returncode == 2
    assert "secret/egressguard/vendors/mistral" in result.stderr
    assert "Traceback" not in result.stderr
    assert key not in result.stdout + result.stderr and env["VAULT_TOKEN"] not in result.stderr
    assert stored(bao, "egressguard/vendors/mistral") is None


def test_secrets_put_without_vault_or_local_vault_says_what_to_do(tmp_path: Path) -> None:
    key = fake_key()
    result = egressguard("secrets", "put", "openai", "--state", tmp_path / "var", "--policy",
                         DEFAULT_POLICY, stdin=key + "\n", home=tmp_path)

    assert result.returncode == 2
    assert "VAULT_ADDR" in result.stderr and "--local-vault" in result.stderr
    assert "Traceback" not in result.stderr and key not in result.stderr


# -- audit -------------------------------------------------------------------------------
def append_records(directory: Path, count: int, first: int = 0) -> None:
    journal = Journal(directory, fsync=False)
    journal.open()
    try:
        for i in range(first, first + count):
            journal.append_sync(records.build(records.RequestFacts(
                id=records.new_id(), started=time.time(), client="127.0.0.1",
                method="POST", host="api.openai.com", path="/v1/chat/completions",
                agent=f"agent-{i}", vendor="openai", model="gpt-4o", status=200,
                reason="allowed")))
    finally:
        journal.close()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """A journal directory holding three chained records (agent-0..agent-2)."""
    directory = tmp_path / "journal"
    append_records(directory, 3)
    return directory


def rewrite_line(path: Path, lineno: int, edit: dict[str, object] | None) -> None:
    """Change fields of line `lineno` (keeping its hash), or delete it if `edit` is None."""
    lines = path.read_bytes().splitlines(keepends=True)
    if edit is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = orjson.dumps({**orjson.loads(lines[lineno - 1]), **edit}) + b"\n"
    path.write_bytes(b"".join(lines))


def test_audit_verify_intact_chain(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "audit", "verify", journal)

    assert (code, err) == (0, "")
    assert out.startswith("OK 3 records (seq 1-3), 0 checkpoints, signatures not checked "
                          "(pass --pubkey FILE); chain intact")


def test_audit_verify_reports_an_edited_record(journal: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (file,) = journal_files(journal)
    rewrite_line(file, 2, {"status": 500})

    code, out, err = cli(capsys, "audit", "verify", journal)

    assert code == 1
    record = orjson.loads(file.read_bytes().splitlines()[1])
    assert out == (f"BROKEN {file}:2 (id {record['id']}, seq 2): modified: the content does "
                   "not match its hash: the record was edited\n")
    assert "1 problem(s) in 3 records" in err


def test_audit_verify_reports_a_deleted_record_at_the_line_after_the_gap(
        journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (file,) = journal_files(journal)
    rewrite_line(file, 2, None)

    code, out, err = cli(capsys, "audit", "verify", journal)

    assert code == 1
    assert out.startswith(f"BROKEN {file}:2 (id ") and out.count("BROKEN") == 1
    assert "seq 3): deleted: 1 record missing before this one (seq 2)" in out
    assert "1 problem(s) in 2 records" in err


def test_audit_verify_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "audit", "verify", tmp_path / "nope")

    assert (code, out) == (2, "")
    assert f"no such file or directory: {tmp_path / 'nope'}" in err


def test_audit_verify_empty_directory_is_not_ok(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "audit", "verify", tmp_path)

    assert (code, out) == (1, "")
    assert "no records" in err


@pytest.mark.parametrize("damage", [None, {"agent": "someone-else"}])
def test_audit_verify_directory_equals_its_file_list(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        damage: dict[str, object] | None) -> None:
    directory = tmp_path / "journal"
    append_records(directory, 2)
    # A second file: the journal continues the chain into the newest (empty) file.
    (directory / "journal-000002.jsonl").touch()
    append_records(directory, 2, first=2)
    files = journal_files(directory)
    assert len(files) == 2
    if damage:
        rewrite_line(files[1], 1, damage)

    by_directory = cli(capsys, "audit", "verify", directory)
    by_files = cli(capsys, "audit", "verify", *files)

    assert by_directory == by_files
    assert by_directory[0] == (1 if damage else 0)
    assert ("OK 4 records" in by_directory[1]) != bool(damage)


def test_audit_tail_shows_aligned_columns(journal: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "audit", "tail", "--journal", journal, "-n", "2")

    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["ts", "agent", "vendor", "method", "path", "model", "status",
                              "decision", "reason"]
    assert len(rows) == 2
    starts = [m.start() for m in re.finditer(r"\S+", header)][1:]
    for row, agent in zip(rows, ("agent-1", "agent-2"), strict=True):
        for start in starts:
            assert row[start - 1] == " " and row[start] != " ", (row, start)
        assert row[header.index(" agent ") + 1:].startswith(agent + " ")
        assert row[header.index(" status ") + 1:].startswith("200 ")
        assert row[header.index(" reason") + 1:] == "allowed"


def test_audit_tail_json_prints_raw_records(journal: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "audit", "tail", "--journal", journal, "-n", "2", "--json")

    assert (code, err) == (0, "")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [r["agent"] for r in lines] == ["agent-1", "agent-2"]
    assert all(len(r["hash"]) == 64 for r in lines)


def test_audit_tail_of_an_empty_directory(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "audit", "tail", "--journal", tmp_path)

    assert (code, out) == (1, "")
    assert f"no journal files in {tmp_path}" in err


# -- run -----------------------------------------------------------------------------------
def start_and_wait(args: list[object], env: dict[str, str], home: Path,
                   port: int) -> tuple[subprocess.CompletedProcess[str], bool, float]:
    """Start `egressguard run ...` and wait (bounded) for it to exit on its own.
    Returns its result, whether its port was ever seen open, and how long it ran."""
    child_env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    child_env.update(env, HOME=str(home))
    started = time.monotonic()
    proc = subprocess.Popen([egressguard_script(), *map(str, args)], text=True, env=child_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    listened = False
    try:
        def exited() -> bool:
            nonlocal listened
            listened = listened or port_open(port)
            return proc.poll() is not None

        wait_until(exited, timeout=COMMAND_TIMEOUT, what="egressguard run to refuse to start")
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), listened,
            time.monotonic() - started)


@pytest.mark.parametrize(("text", "where", "problem"), [
    ("version: 1\npassthrough: [pypi.org]\npassthrough: []\n", "3:1",
     "duplicate key 'passthrough' (first defined on line 2)"),
    ("version: 1\nsecrets:\n  mount: secret\n  feild: api_key\n", "4:3", "unknown key 'feild'"),
])
def test_run_refuses_an_invalid_policy(tmp_path: Path, text: str, where: str,
                                       problem: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    port = free_port()

    result, listened, took = start_and_wait(
        ["run", "--listen", f"127.0.0.1:{port}", "--policy", policy, "--state", tmp_path / "var",
         "--journal", tmp_path / "journal", "--certs", tmp_path / "certs"],
        env=unreachable_vault(), home=tmp_path, port=port)

    assert result.returncode != 0 and took < COMMAND_TIMEOUT
    assert f"{policy}:{where}: " in result.stderr and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not listened and not port_open(port)


def test_run_without_vault_says_to_use_local_vault(tmp_path: Path) -> None:
    port = free_port()

    result, listened, _ = start_and_wait(
        ["run", "--listen", f"127.0.0.1:{port}", "--policy", DEFAULT_POLICY,
         "--state", tmp_path / "var", "--journal", tmp_path / "journal",
         "--certs", tmp_path / "certs"],
        env={}, home=tmp_path, port=port)

    assert result.returncode == 2
    assert "VAULT_ADDR" in result.stderr and "--local-vault" in result.stderr
    assert "Traceback" not in result.stderr
    assert not listened


def test_run_local_vault_on_a_busy_port_says_how_to_choose_another(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        vault_port = busy.getsockname()[1]
        result, listened, _ = start_and_wait(
            ["run", "--local-vault", "--local-vault-port", vault_port,
             "--listen", f"127.0.0.1:{port}", "--policy", DEFAULT_POLICY,
             "--state", tmp_path / "var", "--journal", tmp_path / "journal",
             "--certs", tmp_path / "certs"],
            env={}, home=tmp_path, port=port)

    assert result.returncode == 2
    assert f"port {vault_port} on 127.0.0.1 is already in use" in result.stderr
    assert "--local-vault-port" in result.stderr and "Traceback" not in result.stderr
    assert not listened
    assert not LocalVault(tmp_path / "var" / "openbao").is_running()


@pytest.mark.parametrize("value", ["0", "70000", "-1"])
def test_run_rejects_an_impossible_local_vault_port(value: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["run", "--local-vault", f"--local-vault-port={value}"])

    assert exited.value.code == 2
    assert "--local-vault-port" in capsys.readouterr().err


# -- help ----------------------------------------------------------------------------------
def command_paths(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                  ) -> Iterator[tuple[str, ...]]:
    """Every command and sub-command the parser knows, found by walking it."""
    yield prefix
    for action in p._actions:  # argparse has no public API to list sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*prefix, name))


ALL_COMMANDS = sorted(command_paths(parser()))


def test_help_covers_every_documented_command() -> None:
    assert {("run",), ("ca", "init"), ("ca", "path"), ("token", "issue"),
            ("token", "revoke"), ("secrets", "put"), ("audit", "tail"), ("audit", "verify"),
            ("demo",)} <= set(ALL_COMMANDS)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "egressguard")
def test_help_exits_zero(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *command, "--help")

    assert (code, err) == (0, "")
    assert out.startswith(f"usage: egressguard {' '.join(command)}".rstrip())


def test_console_script_help(tmp_path: Path) -> None:
    result = egressguard("--help", home=tmp_path)

    assert result.returncode == 0, result.stderr
    for command in ("run", "ca", "token", "secrets", "audit", "demo"):
        assert command in result.stdout
