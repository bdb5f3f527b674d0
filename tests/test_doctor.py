"""`egressguard doctor` (tools/doctor.py) against a real OpenBao dev server, a down
one, real key files, real sockets and the fake SIEM: each check says ok, warn or fail,
and what to fix; nothing it prints holds a key or a token."""

from __future__ import annotations

import email.utils
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from secret_registry import register

from egressguard.backends.signing import from_file
from egressguard.cli import main as cli_main
from egressguard.core import tokens
from egressguard.tools import ca, doctor
from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.procs import free_port

POLICY = """\
version: 1
rules:
  - name: chat
    match: {vendors: [openai, anthropic]}
"""
CATCH_ALL = "version: 1\nrules:\n  - name: everyone\n"


def fake_key() -> str:
    return register("sk-test-" + secrets.token_hex(16), "vendor key")  # swept at the end


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoDev]:
    with OpenBaoDev() as server:
        yield server


@pytest.fixture(scope="module")
def keys(bao: OpenBaoDev) -> dict[str, str]:
    values = {"openai": fake_key(), "anthropic": fake_key()}
    for vendor, value in values.items():
        bao.put_secret(f"egressguard/vendors/{vendor}", {"api_key": value})
    return values


@pytest.fixture
def site(tmp_path: Path) -> doctor.Options:
    """A deployment as `egressguard run` leaves it: CA, token and signing keys (0600)."""
    ca.init(tmp_path / "certs")
    tokens.load_or_create_key(tmp_path / "var" / "token.key")
    from_file(tmp_path / "var" / "audit-signing.key")
    (tmp_path / "policy.yaml").write_text(POLICY)
    return doctor.Options(policy=tmp_path / "policy.yaml", state=tmp_path / "var",
                          certs=tmp_path / "certs", journal=tmp_path / "var" / "journal",
                          env={})


def with_vault(o: doctor.Options, bao: OpenBaoDev, token: str | None = None
               ) -> doctor.Options:
    o.env = {"VAULT_ADDR": bao.addr, "VAULT_TOKEN": token or bao.root_token}
    return o


def checks(o: doctor.Options) -> list[doctor.Check]:
    return list(doctor.run_checks(o))


def by_name(found: list[doctor.Check], name: str) -> list[tuple[str, str]]:
    return [(c.status, c.message) for c in found if c.name == name]


def test_a_sound_deployment_passes(site: doctor.Options, bao: OpenBaoDev,
                                   keys: dict[str, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = doctor.main(with_vault(site, bao))
    out, err = capsys.readouterr()
    statuses = {line.split()[0] for line in out.splitlines()}
    assert code == 0 and statuses == {"ok"}, out
    for name in ("ca", "key file", "policy", "vault", "vault token", "clock", "vendor key",
                 "journal"):
        assert f" {name} " in out, name
    assert "openai: secret/egressguard/vendors/openai#api_key (version" in out
    assert f"SSL_CERT_FILE={(site.certs / 'egressguard-ca-bundle.pem').resolve()}" in out
    assert "0 failed, 0 warnings" in err
    for secret in (*keys.values(), bao.root_token):
        assert secret not in out + err


def test_vault_down_fails_and_says_how_to_reach_it(site: doctor.Options,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    site.env = {"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "x" * 24}
    code = doctor.main(site)
    found = checks(site)
    assert code == 1
    ((status, message),) = by_name(found, "vault")
    assert status == "fail" and "no answer from http://127.0.0.1:" in message
    assert "is VAULT_ADDR right" in message
    assert by_name(found, "vendor keys") == [("skip", "needs Vault")]
    assert by_name(found, "clock") == [("skip", "needs Vault to compare with")]


def test_no_vault_configured_at_all_names_both_ways(site: doctor.Options) -> None:
    ((status, message),) = by_name(checks(site), "vault")
    assert status == "fail"
    assert "VAULT_ADDR is not set" in message and "--local-vault" in message


def test_a_key_a_rule_needs_is_missing(site: doctor.Options, bao: OpenBaoDev,
                                       keys: dict[str, str]) -> None:
    site.policy.write_text(POLICY.replace("anthropic", "google"))
    found = {m.split(":")[0]: (s, m) for s, m in by_name(checks(with_vault(site, bao)),
                                                         "vendor key")}
    assert found["openai"][0] == "ok"
    assert found["google"] == ("fail", "google: no vendor key available from secret/"
                               "egressguard/vendors/google: no key stored there; store it "
                               "with `egressguard secrets put google`")


def test_a_fallback_vendors_key_is_checked_before_an_outage_needs_it(
        site: doctor.Options, bao: OpenBaoDev, keys: dict[str, str]) -> None:
    site.policy.write_text("version: 1\nrules:\n  - name: chat\n    match: {vendors: "
                           "[openai]}\n    fallback: {vendor: mistral, model: m}\n"
                           "    cache: {semantic: true}\n")
    found = checks(with_vault(site, bao))
    keys_ = {m.split(":")[0]: s for s, m in by_name(found, "vendor key")}
    assert keys_ == {"openai": "ok", "mistral": "fail"}
    [(status, message)] = by_name(found, "semantic cache")
    assert status == "ok" and "all-MiniLM-L6-v2 installed" in message


def test_a_catch_all_rule_warns_for_vendors_without_keys(site: doctor.Options,
                                                         bao: OpenBaoDev,
                                                         keys: dict[str, str]) -> None:
    site.policy.write_text(CATCH_ALL)
    found = by_name(checks(with_vault(site, bao)), "vendor key")
    assert {m.split(":")[0] for s, m in found if s == "ok"} == {"openai", "anthropic"}
    (summary,) = [(s, m) for s, m in found if s != "ok"]
    assert summary[0] == "warn" and summary[1].startswith("none stored for google, ")
    assert "`egressguard secrets put VENDOR`" in summary[1]


def test_a_token_that_reads_nothing_fails_each_key(site: doctor.Options, bao: OpenBaoDev,
                                                   keys: dict[str, str]) -> None:
    weak = bao.client().auth.token.create(policies=["default"], ttl="1h",
                                          renewable=False)["auth"]["client_token"]
    found = checks(with_vault(site, bao, weak))
    assert by_name(found, "vault token")[0][0] == "warn"
    assert "and cannot be renewed" in by_name(found, "vault token")[0][1]
    assert [s for s, _ in by_name(found, "vendor key")] == ["fail", "fail"]
    assert "permission denied; grant the proxy's Vault token read access" in \
        by_name(found, "vendor key")[0][1]


def test_a_renewable_token_is_fine_and_a_revoked_one_fails(site: doctor.Options,
                                                           bao: OpenBaoDev) -> None:
    client = bao.client()
    token = client.auth.token.create(policies=["default"], ttl="1h",
                                     renewable=True)["auth"]["client_token"]
    ((status, message),) = by_name(checks(with_vault(site, bao, token)), "vault token")
    assert status == "ok" and "renewable" in message
    client.auth.token.revoke(token)
    ((status, message),) = by_name(checks(with_vault(site, bao, token)), "vault token")
    assert status == "fail" and "Vault refuses the token" in message


@pytest.mark.parametrize("name", ["var/token.key", "var/audit-signing.key",
                                  "certs/mitmproxy-ca.pem"])
def test_an_exposed_key_file_fails_with_the_fix(site: doctor.Options, name: str) -> None:
    path = site.state.parent / name
    path.chmod(0o640)
    found = by_name(checks(site), "key file")
    assert ("fail", f"{path} ({_what(name)}) can be read by others (mode 640); `egressguard "
            f"run` refuses it: run `chmod 600 {path}`") in found


def _what(name: str) -> str:
    return {"var/token.key": "token key", "var/audit-signing.key": "audit signing key",
            "certs/mitmproxy-ca.pem": "interception CA key"}[name]


def test_an_invalid_policy_fails_with_file_line_and_column(site: doctor.Options) -> None:
    site.policy.write_text("version: 1\nrules:\n  - name: x\n    modles: [gpt-4o]\n")
    found = checks(site)
    ((status, message),) = by_name(found, "policy")
    assert status == "fail" and f"{site.policy}:4:5: unknown key 'modles'" in message
    assert by_name(found, "vendor keys") == [("skip", "needs a valid policy")]


def test_a_missing_ca_says_how_to_make_it(tmp_path: Path) -> None:
    (status, message), = by_name(checks(doctor.Options(certs=tmp_path / "none", env={},
                                                       policy=tmp_path / "p.yaml")), "ca")
    assert status == "fail" and "egressguard ca init --certs" in message


def test_an_unwritable_journal_fails(site: doctor.Options, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    check = doctor.check_journal(blocker / "journal")
    assert check.status == "fail" and f"cannot write in {blocker}" in check.message


# -- sinks ------------------------------------------------------------------------------
def write_sinks(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sinks.yaml"
    path.write_text("version: 1\nsinks:\n" + body)
    return path


def test_sinks_reachable_unreachable_and_without_credentials(
        tmp_path: Path, siem_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()
    monkeypatch.delenv("DOCTOR_HEC_TOKEN", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as syslog:
        sinks = write_sinks(tmp_path, f"""\
  - {{name: plain, type: syslog, address: "127.0.0.1:{syslog.getsockname()[1]}",
     transport: tcp}}
  - {{name: gone, type: syslog, address: "127.0.0.1:{closed}", transport: tcp}}
  - {{name: lake, type: http, url: "{siem_url}/ndjson"}}
  - {{name: splunk, type: splunk_hec, url: "{siem_url}", token_env: DOCTOR_HEC_TOKEN}}
""")
        found = {c.name: (c.status, c.message) for c in doctor.check_sinks(sinks)}
    assert found["sink plain"][0] == "ok" and "accepts TCP" in found["sink plain"][1]
    assert found["sink gone"] == ("fail", f"syslog 127.0.0.1:{closed}: connection refused: is "
                                  "the receiver running and the address right?")
    assert found["sink lake"][0] == "ok" and "answers (HTTP" in found["sink lake"][1]
    assert found["sink splunk"] == ("fail", "sink splunk: the environment variable "
                                    "DOCTOR_HEC_TOKEN (token) is not set")


def test_an_invalid_sinks_file_fails(tmp_path: Path) -> None:
    sinks = write_sinks(tmp_path, "  - {name: x, type: carrier-pigeon}\n")
    ((status, message),) = [(c.status, c.message) for c in doctor.check_sinks(sinks)]
    assert status == "fail" and "`type` is one of" in message


# -- pure verdicts ----------------------------------------------------------------------
NOW = 1_800_000_000.0


@pytest.mark.parametrize(("offset", "status", "words"), [
    (0, "ok", "within 10s"), (-9, "ok", "(-9s)"), (11, "ok", "(+11s)"),
    (45, "warn", "45s ahead of"), (-300, "warn", "300s behind"),
])
def test_clock_against_vault(offset: float, status: str, words: str) -> None:
    date = email.utils.formatdate(NOW - offset, usegmt=True)
    check = doctor.clock_check(date, NOW, 10.0, "vault")
    assert check.status == status and words in check.message
    assert status == "ok" or "NTP" in check.message


def test_clock_without_a_date_header_is_skipped() -> None:
    assert doctor.clock_check(None, NOW, 10.0, "vault").status == "skip"


@pytest.mark.parametrize(("ttl", "renewable", "status", "words"), [
    (0, False, "ok", "does not expire"),
    (3600, True, "ok", "renewable"),
    (3600, False, "warn", "cannot be renewed"),
    (30 * 86400, False, "ok", "replace it before then"),
])
def test_token_verdicts(ttl: int, renewable: bool, status: str, words: str) -> None:
    check = doctor.token_verdict(ttl, renewable, ["egressguard-proxy"])
    assert check.status == status and words in check.message


def test_the_cli_runs_the_checks_and_exits_1_on_a_failure(
        site: doctor.Options, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.chdir(site.state.parent)
    code = cli_main(["doctor", "--policy", str(site.policy), "--state", "var",
                     "--certs", "certs"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[0].startswith("ok    ca ")
    assert any(line.startswith("fail  vault ") for line in out.splitlines())
    assert os.environ.get("VAULT_ADDR") is None
