"""The policy file (`egressguard.core.policy`): loading, key locations, and error reports."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from egressguard.core import policy
from egressguard.core.rules import Ask
from egressguard.core.secret import SecretLocation
from egressguard.core.yamlsource import ConfigError

DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"
SOURCE = "policy.yaml"


def problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(ConfigError) as info:
        policy.parse(text, SOURCE)
    assert all(p.source == SOURCE for p in info.value.problems)
    return [(p.line, p.column, p.message) for p in info.value.problems]


def test_the_default_policy_loads() -> None:
    loaded = policy.load(DEFAULT)
    assert loaded.source == str(DEFAULT)
    assert loaded.passthrough == ("pypi.org", "files.pythonhosted.org")
    assert loaded.secrets == policy.SecretPaths()
    assert loaded.secrets.location_for("openai") == SecretLocation(
        "secret", "egressguard/vendors/openai", "api_key")


@pytest.mark.parametrize("host, passes", [
    ("pypi.org", True),
    ("PyPI.org.", True),
    ("files.pythonhosted.org", True),
    ("evil.pypi.org", False),
    ("pypi.org.evil.com", False),
    ("api.openai.com", False),
])
def test_default_passthrough(host: str, passes: bool) -> None:
    assert policy.load(DEFAULT).is_passthrough(host) is passes


def test_wildcard_passthrough() -> None:
    loaded = policy.parse("version: 1\npassthrough: ['*.Example.com', github.com]\n", SOURCE)
    assert loaded.passthrough == ("*.example.com", "github.com")
    assert [loaded.is_passthrough(h) for h in
            ("a.example.com", "example.com", "github.com", "api.github.com")] == [
        True, False, True, False]


def test_a_minimal_policy_has_defaults_and_denies_everything() -> None:
    loaded = policy.parse("version: 1\n", SOURCE)
    assert loaded == policy.Policy(SOURCE, digest=hashlib.sha256(b"version: 1\n").hexdigest())
    assert loaded.rules == () and loaded.on_limits_unavailable == "deny"
    assert loaded.decide(Ask("openai", "api.openai.com", "/v1/chat/completions")).reason == \
        "no_rule_matched"


def test_load_of_a_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        policy.load(Path("/nonexistent/policy.yaml"))
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (1, 1)
    assert "cannot read policy" in problem.message
    assert str(problem).startswith("/nonexistent/policy.yaml:1:1: ")


LOCATIONS = """\
version: 1
secrets:
  mount: kv
  field: key
  path: egressguard/vendors/{vendor}
  vendors:
    azure_openai: egressguard/vendors/azure-prod
  teams:
    research: egressguard/teams/{team}/{vendor}
  agents:
    billing-bot: egressguard/agents/{agent}/{vendor}
"""


@pytest.mark.parametrize("vendor, agent, team, path", [
    # default template
    ("openai", None, None, "egressguard/vendors/openai"),
    ("anthropic", "some-bot", "other", "egressguard/vendors/anthropic"),
    # vendor beats default
    ("azure_openai", None, None, "egressguard/vendors/azure-prod"),
    ("azure_openai", "some-bot", None, "egressguard/vendors/azure-prod"),
    # team beats vendor
    ("openai", "some-bot", "research", "egressguard/teams/research/openai"),
    ("azure_openai", "some-bot", "research", "egressguard/teams/research/azure_openai"),
    # agent beats team
    ("openai", "billing-bot", "research", "egressguard/agents/billing-bot/openai"),
    ("azure_openai", "billing-bot", None, "egressguard/agents/billing-bot/azure_openai"),
])
def test_location_for_precedence(vendor: str, agent: str | None, team: str | None,
                                 path: str) -> None:
    location = policy.parse(LOCATIONS, SOURCE).secrets.location_for(vendor, agent, team)
    assert location == SecretLocation("kv", path, "key")


@pytest.mark.parametrize("agent, team, path", [
    ("bot", "ml", "p/ml/bot/openai"),
    ("bot", None, "p/_/bot/openai"),  # a missing team fills in as `_`
    (None, None, "p/_/_/openai"),
])
def test_location_templates(agent: str | None, team: str | None, path: str) -> None:
    loaded = policy.parse("version: 1\nsecrets:\n  path: p/{team}/{agent}/{vendor}\n", SOURCE)
    assert loaded.secrets.location_for("openai", agent, team).path == path


ALLOWED_TOP = ("(allowed: version, agents, teams, rules, passthrough, secrets, prices, "
               "on_limits_unavailable)")
ALLOWED_SECRETS = "(allowed: mount, field, path, vendors, teams, agents)"
NOT_A_HOST = "is not a host name or `*.domain` pattern (no schemes, ports or paths)"


@pytest.mark.parametrize("text, line, column, message", [
    ("version: 1\npassthrough: []\nversion: 1\n",
     3, 1, "duplicate key 'version' (first defined on line 1)"),
    ("version: 1\nsecrets:\n  mount: a\n  mount: b\n",
     4, 3, "duplicate key 'mount' (first defined on line 3)"),
    ("version: 1\npassthru: [pypi.org]\n",
     2, 1, f"unknown key 'passthru' in the policy; did you mean 'passthrough'? {ALLOWED_TOP}"),
    ("version: 1\nrulez: []\n", 2, 1,
     f"unknown key 'rulez' in the policy; did you mean 'rules'? {ALLOWED_TOP}"),
    ("version: 1\nsecrets:\n  mount: secret\n  feild: api_key\n",
     4, 3, f"unknown key 'feild' in secrets; did you mean 'field'? {ALLOWED_SECRETS}"),
    ("version: 2\n", 1, 1, "`version: 1` is required (found 2)"),
    ("version: '1'\n", 1, 1, "`version: 1` is required (found '1')"),
    ("passthrough: [pypi.org]\n", 1, 1, "`version: 1` is required (found None)"),
    ("version: 1\npassthrough: pypi.org\n", 2, 1, "`passthrough` is a list of host names"),
    ("version: 1\npassthrough:\n  - pypi.org\n  - https://example.com\n",
     4, 5, f"'https://example.com' {NOT_A_HOST}"),
    ("version: 1\npassthrough: [pypi.org, 'example.com:443']\n",
     2, 25, f"'example.com:443' {NOT_A_HOST}"),
    ("version: 1\npassthrough:\n  - example.com/path\n", 3, 5, f"'example.com/path' {NOT_A_HOST}"),
    ("version: 1\npassthrough: [1]\n", 2, 15, f"1 {NOT_A_HOST}"),
    ("version: 1\nsecrets:\n  vendors:\n    opneai: x/{vendor}\n",
     4, 5, "unknown key 'opneai' in secrets.vendors (the vendor catalogue); "
           "did you mean 'openai'?"),
    ("version: 1\nsecrets:\n  path: egressguard/{vendr}\n",
     3, 3, "template 'egressguard/{vendr}' uses ['vendr']; only {vendor}, {team} and "
           "{agent} are known"),
    ("version: 1\nsecrets:\n  agents:\n    bot: a/{0}\n", 4, 5, "uses ['0']"),
    ("version: 1\nsecrets:\n  path: 'a/{vendor'\n",
     3, 3, "bad template 'a/{vendor': expected '}' before end of string"),
    ("version: 1\nsecrets:\n  agents:\n    bot: ''\n", 4, 5, "expected a non-empty string"),
    ("version: 1\nsecrets:\n  mount: 5\n", 3, 3, "expected a non-empty string, found 5"),
    ("version: 1\nsecrets: [a]\n", 2, 1, "`secrets` is a mapping"),
    ("version: 1\nsecrets:\n  teams: [a]\n",
     3, 3, "`secrets.teams` maps a name to a path template"),
    ("version: 1\npassthrough: [pypi.org\n",
     3, 1, "not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("version: 1\n  bad: indent\n", 2, 6, "not valid YAML: mapping values are not allowed here"),
    ("version: 1\n---\nversion: 1\n", 2, 1, "not valid YAML: but found another document"),
    ("", 1, 1, "a policy is a mapping with at least `version: 1`"),
    ("# only a comment\n", 1, 1, "a policy is a mapping with at least `version: 1`"),
    ("- version: 1\n", 1, 1, "a policy is a mapping with at least `version: 1`"),
    ("hello\n", 1, 1, "a policy is a mapping with at least `version: 1`"),
])
def test_errors(text: str, line: int, column: int, message: str) -> None:
    (found,) = problems(text)
    assert found[:2] == (line, column), found
    assert message in found[2]


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    text = ("secrets:\n"
            "  mnt: x\n"
            "  vendors:\n"
            "    antropic: a/{vendr}\n"
            "passthru: []\n"
            "version: 3\n"
            "passthrough: ['http://x']\n")
    found = problems(text)
    assert [(line, column) for line, column, _ in found] == [
        (2, 3), (4, 5), (4, 5), (5, 1), (6, 1), (7, 15)]
    messages = [m for _, _, m in found]
    assert "unknown key 'mnt' in secrets; did you mean 'mount'?" in messages[0]
    assert {messages[1][:25], messages[2][:25]} == {"unknown key 'antropic' in",
                                                    "template 'a/{vendr}' uses"}
    assert "did you mean 'passthrough'?" in messages[3]
    assert "(found 3)" in messages[4]
    assert f"'http://x' {NOT_A_HOST}" in messages[5]


def test_the_error_text_names_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        policy.parse("version: 1\npassthru: []\n", SOURCE)
    assert str(info.value).startswith("policy.yaml:2:1: unknown key 'passthru'")


@pytest.mark.parametrize("value", ["true", "1.0"])
def test_version_must_be_the_integer_one(value: str) -> None:
    (found,) = problems(f"version: {value}\n")
    assert found[:2] == (1, 1) and "`version: 1` is required" in found[2]


@pytest.mark.parametrize("text", ["version: 1\n[a]: 1\n", "version: 1\n{a: 1}: 2\n"])
def test_a_non_scalar_key_is_a_located_problem(text: str) -> None:
    (found,) = problems(text)
    assert found[:2] == (2, 1)
