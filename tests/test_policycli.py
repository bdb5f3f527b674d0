"""`egressguard policy lint | test | explain`, the shipped policies, and the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from egressguard.cli import main
from egressguard.core import apis, entities, limits, policy
from egressguard.core import policy as policy_module

POLICIES = Path(__file__).resolve().parent.parent / "policies"
SHIPPED = sorted([POLICIES / "default.yaml", *POLICIES.glob("examples/*.yaml")])
SHIPPED = [p for p in SHIPPED if not p.name.endswith(".test.yaml")]
SCHEMA = json.loads((POLICIES / "policy.schema.json").read_text())


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the shipped policies -----------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_lint_clean_and_match_the_schema(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "lint", "--strict", path)
    assert (code, out) == (0, "")
    assert err.startswith(f"{path}: OK (")
    assert list(Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load(path.read_text()))) == []


def test_the_examples_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "test", POLICIES)
    assert code == 0, out
    lines = out.splitlines()
    assert all(line.endswith(" PASSED") for line in lines[:-1])
    assert len(lines) > 25 and lines[-1].startswith(f"=== {len(lines) - 1} passed in ")
    for name in ("single-team", "multi-team", "regulated"):
        assert any(f"examples/{name}.test.yaml::" in line for line in lines)


def _defs(node: dict[str, Any]) -> list[str]:
    return sorted(node["properties"])


def test_the_schema_names_exactly_what_the_parser_reads() -> None:
    defs = SCHEMA["$defs"]
    assert _defs(SCHEMA) == sorted(policy_module._TOP)
    assert _defs(defs["rule"]) == sorted(policy_module._RULE)
    assert _defs(defs["match"]) == sorted(policy_module._MATCH)
    assert _defs(defs["agent"]) == sorted(policy_module._AGENT)
    assert _defs(defs["team"]) == sorted(policy_module._TEAM)
    assert _defs(defs["limits"]) == sorted(limits.LIMIT_NAMES)
    assert _defs(defs["secrets"]) == sorted(policy_module._SECRETS)
    assert defs["endpoint"]["enum"] == list(apis.ENDPOINTS)
    assert defs["entityAction"]["enum"] == list(entities.ACTIONS)
    Draft202012Validator.check_schema(SCHEMA)


# -- lint -----------------------------------------------------------------------------

def test_lint_reports_every_problem_with_its_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nagents: {bot: {}}\nrules:\n  - name: r\n"
                   "    match: {agents: [bto]}\n    modles: [gpt-4o]\n    streaming: on\n"
                   "  - name: r\n")
    code, out, err = run(capsys, "policy", "lint", bad)
    assert code == 1
    assert out.splitlines() == [
        f"{bad}:5:22: unknown agent 'bto' in the policy's agents; did you mean 'bot'? "
        "(allowed: bot)",
        f"{bad}:6:5: unknown key 'modles' in rule 'r'; did you mean 'models'? (allowed: name, "
        "description, match, action, reason, models, endpoints, max_tokens, tools, streaming, "
        "max_request_bytes, redact, secret, key_pool, limits, route, retry, fallback, cache)",
        f"{bad}:8:5: rule name 'r' is used twice (first on line 4); names must be unique",
    ]
    assert err == f"{bad}: {len(out.splitlines())} errors; the policy cannot be loaded\n"


def test_lint_of_duplicate_keys_and_broken_yaml(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("version: 1\nrules:\n  - name: a\n    name: b\n")
    assert run(capsys, "policy", "lint", dup)[:2] == (
        1, f"{dup}:4:5: duplicate key 'name' (first defined on line 3)\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: [\n")
    code, out, _ = run(capsys, "policy", "lint", broken)
    assert code == 1 and out.startswith(f"{broken}:3:1: not valid YAML: ")


def test_lint_warnings_pass_unless_strict(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n  - name: r\n    models: [gtp-4o]\n")
    code, out, err = run(capsys, "policy", "lint", path)
    assert code == 0
    assert out.startswith(f"{path}:4:14: warning: model pattern 'gtp-4o' matches no model")
    assert err == f"{path}: OK (1 rules, 0 agents, 0 teams), 1 warning\n"
    assert run(capsys, "policy", "lint", "--strict", path)[0] == 1


def test_lint_of_a_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "lint", "/nonexistent.yaml")
    assert (code, out) == (1, "/nonexistent.yaml:1:1: cannot read policy: No such file or "
                              "directory\n")


# -- test -----------------------------------------------------------------------------

def _suite(tmp_path: Path, cases: str) -> Path:
    (tmp_path / "p.yaml").write_text(
        "version: 1\nagents: {bot: {}}\nrules:\n  - name: bot-mini\n    match: {agents: [bot]}\n"
        "    models: [gpt-4o-mini]\n    max_tokens: 100\n")
    (tmp_path / "p.test.yaml").write_text(f"policy: p.yaml\ncases:\n{cases}")
    return tmp_path


def test_policy_test_failures_say_what_differs(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite(tmp_path, """\
  - name: mini is clamped
    request: {agent: bot, vendor: openai, model: gpt-4o-mini, max_tokens: 500}
    expect: {decision: allow, rule: bot-mini, max_tokens: 100}
  - name: wrong expectation
    request: {agent: bot, vendor: openai, model: gpt-4o}
    expect: {decision: allow}
  - name: stranger
    request: {agent: who, vendor: openai}
    expect: {decision: deny, rule: null, reason: no_rule_matched}
""")
    code, out, _ = run(capsys, "policy", "test", suite)
    assert code == 1
    test_file = suite / "p.test.yaml"
    assert out.splitlines()[:3] == [f"{test_file}::mini is clamped PASSED",
                                    f"{test_file}::wrong expectation FAILED",
                                    f"{test_file}::stranger PASSED"]
    assert "    expected decision 'allow', got 'deny'\n" in out
    assert "model 'gpt-4o' is not allowed" in out
    assert out.splitlines()[-1].startswith("=== 2 passed, 1 failed in ")


def test_policy_test_reports_a_bad_case_in_place(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite(tmp_path, """\
  - name: typo
    request: {agent: bot, vendor: opnai, modle: x}
    expect: {decison: allow}
""")
    code, out, _ = run(capsys, "policy", "test", suite)
    assert code == 1
    assert "unknown key 'decison' in expect; did you mean 'decision'?" in out
    assert "unknown key 'modle' in a request description; did you mean 'model'?" in out
    assert f"{suite / 'p.test.yaml'}:5:14: unknown key 'decison'" in out
    assert f"{suite / 'p.test.yaml'}:4:5: unknown key 'modle'" in out


def test_policy_test_of_a_broken_policy_or_no_tests(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite(tmp_path, "  - name: x\n    request: {vendor: openai}\n"
                             "    expect: {decision: deny}\n")
    (suite / "p.yaml").write_text("version: 1\nrulez: []\n")
    code, out, _ = run(capsys, "policy", "test", suite)
    assert code == 1 and "unknown key 'rulez' in the policy" in out
    assert out.splitlines()[-1].startswith("=== 0 passed in ")
    assert "1 file could not be run" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "policy", "test", empty)
    assert (code, err) == (1, f"egressguard: no policy tests (*.test.yaml) in {empty}\n")


# -- explain --------------------------------------------------------------------------

def test_explain_prints_the_trace_and_exits_by_the_decision(
        capsys: pytest.CaptureFixture[str]) -> None:
    example = POLICIES / "examples" / "multi-team.yaml"
    code, out, _ = run(capsys, "policy", "explain", "--policy", example, "--agent",
                       "summer-intern-bot", "--vendor", "openai", "--model", "gpt-4o-mini",
                       "--max-tokens", "9000")
    assert code == 0
    assert "  caller: agent 'summer-intern-bot', team 'research', labels ['engineering', " \
        "'intern']\n" in out
    assert "rule 'interns-small-models' (line 39): matches and decides: allow (allowed)" in out
    assert "decision: ALLOW (allowed) by rule 'interns-small-models'" in out
    assert "clamp: max_tokens 9000 -> 2048" in out
    assert "limits:\n  rule:interns-small-models/agent:summer-intern-bot: spend_per_day 10" \
        in out
    code, out, _ = run(capsys, "policy", "explain", "--policy", example, "--agent",
                       "ticket-triage", "--vendor", "anthropic", "--model", "claude-haiku-4-5")
    assert code == 1 and "decision: DENY (denied_by_rule) by rule 'everything-else'" in out


def test_explain_shows_the_route_and_what_the_relay_will_do(
        capsys: pytest.CaptureFixture[str]) -> None:
    example = POLICIES / "examples" / "multi-team.yaml"
    code, out, _ = run(capsys, "policy", "explain", "--policy", example, "--agent",
                       "ticket-triage", "--vendor", "openai", "--model", "default")
    assert code == 0 and "route: model default -> gpt-4o-mini (by alias)" in out
    assert "relayed: cache\n" in out
    code, out, _ = run(capsys, "policy", "explain", "--policy", example, "--agent",
                       "paper-reader", "--vendor", "openai", "--model", "gpt-5")
    assert "relayed: retry 3 attempts within 30s, key pool of 2 (least_recently_limited), " \
        "fallback anthropic claude-sonnet-4-5\n" in out


def test_explain_takes_a_request_file_and_says_what_is_wrong(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "req.yaml"
    request.write_text("{agent: indexer, vendor: openai, path: /v1/embeddings, "
                       "model: text-embedding-3-small}\n")
    example = POLICIES / "examples" / "multi-team.yaml"
    code, out, _ = run(capsys, "policy", "explain", "--policy", example, "--request", request)
    assert code == 0 and "by rule 'platform-embeddings'" in out
    assert "(endpoint embeddings)" in out
    code, _, err = run(capsys, "policy", "explain", "--policy", example, "--vendor", "nope")
    assert code == 2 and "`vendor` must name a vendor in the catalogue" in err


def test_explain_shows_the_first_match_not_the_best() -> None:
    loaded = policy.load(POLICIES / "examples" / "single-team.yaml")
    assert loaded.decide(policy_ask(agent="code-reviewer", vendor="openai",
                                    model="gpt-4.1")).rule_name == "product-default"


def policy_ask(**kw: Any) -> Any:
    from egressguard.core.policytest import ask_from

    return ask_from(kw)
