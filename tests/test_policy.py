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
               "on_limits_unavailable, detectors)")
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
     3, 1, "not valid YAML: did not find expected ',' or ']'"),  # libyaml's words
    ("version: 1\n  bad: indent\n", 2, 6,
     "not valid YAML: mapping values are not allowed in this context"),
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


# -- agents, teams, rules, limits: what lint reports ---------------------------------

HEAD = "version: 1\nteams: {research: {}}\nagents: {reader: {team: research}}\n"


@pytest.mark.parametrize("rules, line, column, message", [
    ("  - name: r\n    match: {agents: [raeder]}\n", 6, 22,
     "unknown agent 'raeder' in the policy's agents; did you mean 'reader'? (allowed: reader)"),
    ("  - name: r\n    match: {teams: [reserch]}\n", 6, 21, "unknown team 'reserch'"),
    ("  - name: r\n    match: {labels: [pci]}\n", 6, 13, "no agent or team has the label 'pci'"),
    ("  - name: r\n    match: {vendors: [opnai]}\n", 6, 23,
     "unknown vendor 'opnai' in the vendor catalogue; did you mean 'openai'?"),
    ("  - name: r\n    match: {model: [gpt-4o]}\n", 6, 13,
     "unknown key 'model' in match; did you mean 'models'?"),
    ("  - name: r\n    modles: [gpt-4o]\n", 6, 5,
     "unknown key 'modles' in rule 'r'; did you mean 'models'?"),
    ("  - name: r\n  - name: r\n", 6, 5, "rule name 'r' is used twice (first on line 5)"),
    ("  - match: {}\n", 5, 5, "every rule needs a `name`"),
    ("  - name: no\n", 5, 5, "found false (write yes/no/on/off in quotes to mean the word)"),
    ("  - name: all\n  - name: r\n    match: {teams: [research]}\n", 6, 5,
     "rule 'r' can never match: rule 'all' (line 5) comes first and matches every request"),
    ("  - name: a\n    match: {models: ['gpt-4o*']}\n  - name: b\n"
     "    match: {models: [gpt-4o-mini]}\n", 7, 5, "rule 'b' can never match: rule 'a'"),
    ("  - name: r\n    endpoints: [chat, completions]\n", 6, 23,
     "unknown endpoint 'completions' in endpoints"),
    ("  - name: r\n    max_tokens: 0\n", 6, 5, "`max_tokens` is a whole number above 0"),
    ("  - name: r\n    max_tokens: {cap: 10, over: cut}\n", 6, 27,
     "`over` is one of clamp, refuse; found 'cut'"),
    ("  - name: r\n    tools: some\n", 6, 5, "`tools` is allow, deny, or a list"),
    ("  - name: r\n    streaming: 'no'\n", 6, 5, "`streaming` is true or false, found 'no'"),
    ("  - name: r\n    max_request_bytes: 1 TB\n", 6, 5, "a size is bytes or a number with"),
    ("  - name: r\n    redact: {EMAIL: mask}\n", 6, 14,
     "unknown entity type 'EMAIL' in redact (allowed: pii, secrets, EMAIL_ADDRESS"),
    ("  - name: r\n    redact: {pii: hide}\n", 6, 14,
     "the action for pii is one of mask, pseudonymize, block, log; found 'hide'"),
    ("  - name: r\n    secret: a/{vendor}\n    key_pool: [b, c]\n", 7, 5,
     "a rule names either one `secret` or a `key_pool`, not both"),
    ("  - name: r\n    key_pool: ['x/{vendr}']\n", 6, 16, "uses ['vendr']"),
    ("  - name: r\n    limits: {agent: {requests_per_minute: 0}}\n", 6, 22,
     "`requests_per_minute` is a whole number above 0, found 0 (to refuse everything, "
     "write a rule with `action: deny`)"),
    ("  - name: r\n    limits: {agent: {tokens_per_minute: 1.5}}\n", 6, 22,
     "`tokens_per_minute` is a whole number above 0"),
    ("  - name: r\n    limits: {team: {spend_per_week: 5}}\n", 6, 21,
     "unknown key 'spend_per_week' in limits; did you mean 'spend_per_day'?"),
    ("  - name: r\n    limits: {teams: {spend_per_day: 5}}\n", 6, 14,
     "unknown key 'teams' in a rule's limits (each agent / each team); did you mean 'team'?"),
    ("  - name: r\n    limits: {team: {spend_per_day: 5}}\n", 6, 14,
     "spend limits need a price table: add `prices: prices.yaml`"),
    ("  - name: r\n    max_tokens: 4096\n    limits: {agent: {tokens_per_minute: 1000}}\n",
     7, 22, "tokens_per_minute 1000 is below the rule's max_tokens cap 4096: a request at "
     "the cap could never be let through"),
    ("  - name: r\n    action: maybe\n", 6, 5, "`action` is one of allow, deny; found 'maybe'"),
    ("  - name: r\n    fallback: {vendor: openia, model: x}\n", 6, 16,
     "unknown vendor 'openia' in the vendor catalogue; did you mean 'openai'?"),
    ("  - name: r\n    fallback: {vendor: azure_openai, model: gpt-4o}\n", 6, 5,
     "an Azure OpenAI fallback needs `host:`"),
    ("  - name: r\n    retry: {attempts: 11}\n", 6, 13, "`retry.attempts` is at most 10"),
    ("  - name: r\n    retry: {attempts: 3, within: soon}\n", 6, 26,
     "a duration is seconds or a number with ms, s, m, h or d"),
    ("  - name: r\n    route: {aliases: {fast: 'gpt-*'}}\n", 6, 23,
     "expected the name of a model to send (no globs), found 'gpt-*'"),
    ("  - name: r\n    cache: {semantic: {threshold: 0.2}}\n", 6, 24,
     "`threshold` is a cosine similarity between 0.5 and 1"),
    ("  - name: r\n    key_pool: {keys: [a, b], pick: random}\n", 6, 30,
     "`pick` is one of round_robin, least_recently_limited; found 'random'"),
])
def test_rule_errors(rules: str, line: int, column: int, message: str) -> None:
    found = problems(HEAD + "rules:\n" + rules)
    assert any((ln, col) == (line, column) and message in msg for ln, col, msg in found), found


@pytest.mark.parametrize("text, line, column, message", [
    ("version: 1\nagents: {a: {team: t}}\n", 2, 14,
     "unknown team 't': the policy declares no teams (add it under `teams:`)"),
    ("version: 1\nagents: {a: {tema: t}}\n", 2, 14,
     "unknown key 'tema' in an agent (agents.a); did you mean 'team'?"),
    ("version: 1\nagents: [a]\n", 2, 1, "`agents` is a mapping, found a list"),
    ("version: 1\nteams: {'bad name': {}}\n", 2, 9, "'bad name' is not a valid name"),
    ("version: 1\nteams: {t: {limits: {spend_per_day: -1}}}\n", 2, 22,
     "`spend_per_day` is an amount in USD above 0, found -1"),
    ("version: 1\non_limits_unavailable: ignore\n", 2, 1,
     "`on_limits_unavailable` is one of deny, allow; found 'ignore'"),
    ("version: 1\nrules: {name: r}\n", 2, 1, "`rules` is a list of rules, found a mapping"),
    ("version: 1\nprices: nowhere.yaml\n", 2, 1, "the price table nowhere.yaml is not usable"),
])
def test_top_level_errors(text: str, line: int, column: int, message: str) -> None:
    found = problems(text)
    assert any((ln, col) == (line, column) and message in msg for ln, col, msg in found), found


def test_every_error_is_reported_at_once() -> None:
    found = problems(HEAD + "rules:\n  - name: r\n    modles: [x]\n    streaming: 1\n"
                     "    endpoints: [chatt]\n")
    assert [(ln, col) for ln, col, _ in found] == [(6, 5), (7, 5), (8, 17)]


@pytest.mark.parametrize("rules, message", [
    ("  - name: r\n    models: [gtp-4o]\n",
     "model pattern 'gtp-4o' matches no model the vendor catalogue knows"),
    ("  - name: r\n    match: {vendors: [anthropic], models: ['gpt-4o*']}\n",
     "model pattern 'gpt-4o*' matches no model the vendor catalogue knows for anthropic"),
    ("  - name: r\n    action: deny\n    max_tokens: 5\n",
     "rule 'r' denies, so its constraints and limits are never used"),
    ("  - name: r\n    limits: {agent: {tokens_per_minute: 5000, tokens_per_day: 10}}\n",
     "tokens_per_minute is above tokens_per_day"),
    ("  - name: r\n    limits: {agent: {tokens_per_minute: 1000}}\n",
     "tokens_per_minute 1000 is below 4096, the output estimate of a request that sets no "
     "max_tokens"),
])
def test_warnings_leave_the_policy_loadable(rules: str, message: str) -> None:
    loaded = policy.parse(HEAD + "rules:\n" + rules, SOURCE)
    (warning,) = [w for w in loaded.warnings if message in w.message]
    assert warning.severity == "warning"
    assert str(warning).startswith(f"{SOURCE}:") and ": warning: " in str(warning)


def test_azure_deployment_names_are_not_warned_about() -> None:
    loaded = policy.parse(HEAD + "rules:\n  - name: r\n    match: {vendors: [azure_openai]}\n"
                          "    models: [my-deployment]\n", SOURCE)
    assert loaded.warnings == ()


def test_rule_keys_are_read_into_the_rule(tmp_path: Path) -> None:
    (tmp_path / "prices.yaml").write_text(
        "version: 1\ncurrency: USD\nprices:\n  openai:\n    gpt-4o: {input: 2.5, output: 10}\n")
    (tmp_path / "p.yaml").write_text(HEAD + """\
prices: prices.yaml
on_limits_unavailable: allow
rules:
  - name: r
    match: {agents: [reader], hosts: [API.OpenAI.com], paths: ['/v1/*']}
    models: gpt-4o
    endpoints: chat
    max_tokens: {cap: 10, over: refuse}
    tools: [a, 'b*']
    streaming: false
    max_request_bytes: 2KiB
    redact: {pii: mask, PERSON: pseudonymize}
    key_pool: ['k/{vendor}/1', 'k/{vendor}/2']
    limits: {agent: {requests_per_minute: 5}, team: {spend_per_month: 12.5}}
""")
    loaded = policy.load(tmp_path / "p.yaml")
    (rule,) = loaded.rules
    assert rule.match.hosts.patterns == ("api.openai.com",)
    assert (rule.models.patterns, rule.endpoints) == (("gpt-4o",), frozenset({"chat"}))
    assert (rule.max_tokens.cap, rule.max_tokens.over) == (10, "refuse")
    assert (rule.tools("b2"), rule.tools("c"), rule.streaming) == (True, False, False)
    assert rule.max_request_bytes == 2048 and rule.line == 7
    assert dict(rule.redact) == {"pii": "mask", "PERSON": "pseudonymize"}
    assert rule.key_pool == ("k/{vendor}/1", "k/{vendor}/2")
    assert rule.limits["agent"].requests_per_minute == 5
    assert rule.limits["team"].spend_per_month == 12.5
    assert loaded.on_limits_unavailable == "allow"
    assert loaded.prices is not None and loaded.prices.price("openai", "gpt-4o") is not None
    assert loaded.secrets.location_for("openai", "reader", "research", rule.key_pool[1]) == \
        SecretLocation("secret", "k/openai/2", "api_key")


def test_the_digest_is_of_the_files_bytes(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\r\nrules:\r\n  - name: all\r\n")
    assert policy.load(path).digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_that_is_not_utf8_is_a_problem_at_its_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        policy.load(path)
    assert str(info.value) == f"{path}:2:6: policy is not UTF-8 text (byte 0xe9)"


def test_detectors_extend_the_built_in_rules_with_placed_problems() -> None:
    loaded = policy.parse("version: 1\ndetectors:\n  - id: acme\n    entity: GENERIC_SECRET\n"
                          "    pattern: 'acme_[a-z]{8}'\n", SOURCE)
    assert [f.entity for f in loaded.detector.find("x acme_abcdefgh y")] == ["GENERIC_SECRET"]
    assert policy.parse("version: 1\n", SOURCE).detector is None  # the shared default
    found = problems("version: 1\ndetectors:\n  - id: x\n    entity: NOPE\n    pattern: a\n")
    assert (4, 5) in [(ln, col) for ln, col, _ in found]
    assert problems("version: 1\ndetectors: {}\n")[0][2].startswith(
        "`detectors` is a list of detection rules")
