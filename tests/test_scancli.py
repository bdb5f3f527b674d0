"""`egressguard scan`: JSON findings at character offsets, `--redact`, `--policy`
limiting the types, files and stdin, and values never printed.

Key-shaped strings are built at test time; none is real.
"""

from __future__ import annotations

import io
import json
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from egressguard.cli import main

RNG = random.Random(7)
GITHUB = "ghp_" + "".join(RNG.choice(string.ascii_letters + string.digits) for _ in range(36))
ANTHROPIC = "sk-ant-api03-" + "".join(RNG.choice(string.ascii_letters) for _ in range(90)) + "AA"
TEXT = f"Mail bob@example.com, SSN 234-56-7890.\nexport GH={GITHUB}\n"

POLICY = """\
version: 1
agents:
  reply-drafter: {}
  billing-bot: {}
rules:
  - name: support
    match: {agents: [reply-drafter]}
    redact:
      EMAIL_ADDRESS: mask
      PERSON: pseudonymize
  - name: billing
    match: {agents: [billing-bot]}
    redact:
      secrets: block
"""


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *args: object, stdin: bytes = b"") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    code = main(["scan", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def spans(out: str) -> list[tuple[str, str, int, int]]:
    return [(f["entity"], f["kind"], f["start"], f["end"]) for f in json.loads(out)["findings"]]


def test_json_findings_from_stdin(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, stdin=TEXT.encode())
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert list(document) == ["findings"]
    for finding in document["findings"]:
        assert list(finding) == ["entity", "kind", "start", "end", "score"]
        assert isinstance(finding["score"], float) and 0 < finding["score"] <= 1
    gh = TEXT.index(GITHUB)
    assert spans(out) == [("EMAIL_ADDRESS", "pii", 5, 20), ("US_SSN", "pii", 26, 37),
                          ("GITHUB_TOKEN", "secret", gh, gh + len(GITHUB))]
    assert GITHUB not in out and "bob@example.com" not in out


def test_offsets_are_characters_not_bytes(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Grüße 👋 — “mail” bob@example.com\r\nкей " + ANTHROPIC + "\r\n"
    _, out, _ = run(capsys, monkeypatch, stdin=text.encode())
    found = spans(out)
    assert [text[s:e] for _, _, s, e in found] == ["bob@example.com", ANTHROPIC]
    assert found[0][2] == text.index("bob")  # in characters; in bytes it is further
    assert len(text[:found[0][2]].encode()) != found[0][2]


def test_offsets_index_the_text_as_given_through_evasions(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    disguised = "\u200b".join(GITHUB[i:i + 8] for i in range(0, len(GITHUB), 8))
    text = f"token: {disguised} end"
    _, out, _ = run(capsys, monkeypatch, stdin=text.encode())
    assert spans(out) == [("GITHUB_TOKEN", "secret", 7, 7 + len(disguised))]


def test_redact_replaces_each_finding_with_its_type(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "--redact", stdin=TEXT.encode())
    assert (code, err) == (0, "")
    assert out == ("Mail <EMAIL_ADDRESS>, SSN <US_SSN>.\nexport GH=<GITHUB_TOKEN>\n")


def test_a_file_is_read_as_stored(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prompt.txt"
    path.write_bytes(TEXT.replace("\n", "\r\n").encode())
    code, out, _ = run(capsys, monkeypatch, path, "--redact", stdin=b"ignored")
    assert code == 0
    assert out == "Mail <EMAIL_ADDRESS>, SSN <US_SSN>.\r\nexport GH=<GITHUB_TOKEN>\r\n"
    _, out, _ = run(capsys, monkeypatch, path)
    gh = TEXT.replace("\n", "\r\n").index(GITHUB)
    assert spans(out)[-1] == ("GITHUB_TOKEN", "secret", gh, gh + len(GITHUB))
    _, out, _ = run(capsys, monkeypatch, "-", stdin=b"call 415-555-0132")
    assert spans(out) == [("PHONE_NUMBER", "pii", 5, 17)]


def test_policy_limits_the_types_to_its_redaction_plans(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    code, out, err = run(capsys, monkeypatch, "--policy", policy, stdin=TEXT.encode())
    assert code == 0
    # EMAIL_ADDRESS from one rule, every secret type from the other's `secrets` group;
    # the SSN is named by no plan
    assert [s[0] for s in spans(out)] == ["EMAIL_ADDRESS", "GITHUB_TOKEN"]
    assert err == ""  # PERSON is in a plan too: NER ran, and found no name here
    _, out, _ = run(capsys, monkeypatch, "--policy", policy, "--redact", stdin=TEXT.encode())
    assert out == "Mail <EMAIL_ADDRESS>, SSN 234-56-7890.\nexport GH=<GITHUB_TOKEN>\n"
    # as the proxy does for that plan: names through Presidio's NER, patterns as before
    named = "Ask Jonathan Whitfield (bob@example.com) about the refund.\n"
    _, out, _ = run(capsys, monkeypatch, "--policy", policy, "--redact", stdin=named.encode())
    assert out == "Ask <PERSON> (<EMAIL_ADDRESS>) about the refund.\n"


def test_a_policy_without_plans_finds_nothing(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: all\n")
    code, out, _ = run(capsys, monkeypatch, "--policy", policy, stdin=TEXT.encode())
    assert (code, json.loads(out)) == (0, {"findings": []})


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.txt", "egressguard: cannot read {d}/missing.txt: No such file"),
    (lambda d: (d / "latin1.txt", (d / "latin1.txt").write_bytes(b"caf\xe9"))[0],
     "egressguard: {d}/latin1.txt is not UTF-8 text (byte 3: 0xe9)"),
])
def test_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, make: object,
                                  message: str) -> None:
    assert callable(make)
    code, out, err = run(capsys, monkeypatch, make(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith(message.format(d=tmp_path))


def test_a_bad_policy_exits_2_with_its_position(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: r\n    redact: {EMAIL: mask}\n")
    code, out, err = run(capsys, monkeypatch, "--policy", policy, stdin=TEXT.encode())
    assert (code, out) == (2, "")
    assert err.startswith(f"{policy}:4:14: unknown entity type 'EMAIL'")


def test_every_secret_type_of_the_group_has_a_rule(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: r\n    redact: {secrets: block}\n")
    code, _, err = run(capsys, monkeypatch, "--policy", policy, stdin=b"")
    assert (code, err) == (0, "")  # every secret type has a rule: no note


def test_the_installed_command_reads_a_pipe(tmp_path: Path) -> None:
    text = f"key {ANTHROPIC} and jane@example.org\n"
    done = subprocess.run([sys.executable, "-m", "egressguard.cli", "scan", "--redact"],
                          input=text.encode(), capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.decode() == "key <ANTHROPIC_API_KEY> and <EMAIL_ADDRESS>\n"
