"""The operator pages, run for real: docs/agents.md, docs/vault.md, docs/siem.md.

Every code block of docs/agents.md is a file under examples/ (checked here), and each
example runs against a real egressguard with the environment the page gives it: the
Python SDKs, the `openai` npm SDK with undici (`npm ci` from the committed lock), curl,
and a Java agent with a keytool-made truststore. That egressguard logs in to a real
OpenBao with the AppRole docs/vault.md's policy and commands create, and a key
rotation goes as that page says. docs/siem.md's rsyslog configuration runs in a real
rsyslogd, fed by `egressguard ship` with the sinks file shown beside it; every sinks
file on the page loads, and its key table matches what the loader accepts.

Node and Java tests are skipped only when `node` or `java` is missing (`make
test-deps` installs both); anything else that goes wrong fails.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import hvac
import hvac.exceptions
import orjson
import pytest
import requests
import yaml
from secret_registry import register

from egressguard.core.sinkconfig import _KEYS, TYPES, parse_sinks
from egressguard.tools.localvault import bao_binary
from egressguard.tools.procs import free_port, port_open, spawn, terminate, wait_until
from egressguard.tools.stack import REPO_POLICY, Stack
from tests.e2e.conftest import fake_key, headers_of

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
AGENTS_DOC, VAULT_DOC, SIEM_DOC = (REPO / "docs" / f"{n}.md" for n in ("agents", "vault", "siem"))
ANSWER = "Hello from fake openai"  # what the fake vendor's models say
SECRET_TTL = 1  # --secret-ttl of the proxy here: a rotated key is in use within it
NODE_MIN = (20, 18, 1)  # undici 7's minimum (the openai SDK wants Node 20)
SBIN = ("/usr/sbin", "/sbin")


# -- reading the pages -------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    mark: str | None  # `<!-- test: NAME -->` on the line before the fence
    info: str  # the fence's info string (language)
    body: str  # indentation of the fence removed


def blocks(doc: Path) -> list[Block]:
    out: list[Block] = []
    lines, mark, i = doc.read_text().splitlines(), None, 0
    while i < len(lines):
        line = lines[i].strip()
        if m := re.fullmatch(r"<!-- test: ([\w-]+) -->", line):
            mark = m.group(1)
        elif line.startswith("```"):
            indent = len(lines[i]) - len(lines[i].lstrip())
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            body = "".join(f"{text[indent:]}\n" for text in lines[i + 1:end])
            out.append(Block(mark, line[3:].strip(), body))
            mark, i = None, end
        elif line:
            mark = None  # a mark names the block right after it
        i += 1
    return out


def marked(doc: Path, name: str) -> str:
    found = [b.body for b in blocks(doc) if b.mark == name]
    assert len(found) == 1, f"{doc.name}: expected one block marked {name!r}, found {len(found)}"
    return found[0]


def replaced(text: str, *pairs: tuple[str, str]) -> str:
    """`text` with each (old, new) replaced; the old must be there (a page that changed
    what the test adapts fails here, not later in a confusing way)."""
    for old, new in pairs:
        assert old in text, f"{old!r} is no longer in the page's block"
        text = text.replace(old, new)
    return text


# -- running things ----------------------------------------------------------------------
def env_of(**extra: str) -> dict[str, str]:
    """A clean environment: PATH, HOME and what the page says to set, nothing ambient."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
            **({"JAVA_HOME": os.environ["JAVA_HOME"]} if "JAVA_HOME" in os.environ else {}),
            **extra}


def run(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=False)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def assert_served(stack: Stack, agent: str, token: str, header: tuple[str, str]) -> None:
    """The vendor got exactly one request, with the real key and without the token, and
    egressguard recorded it for `agent`."""
    received = stack.received()
    assert len(received) == 1, received
    headers = headers_of(received[0])
    assert header in headers
    assert not any(token in value for _, value in headers)
    record = [r for r in stack.records() if r["kind"] == "request" and r["agent"] == agent][-1]
    assert (record["decision"], record["status"]) == ("allow", 200)
    assert record["credential"]["path"].startswith("secret/egressguard/vendors/")


# -- the set-up: OpenBao with docs/vault.md's AppRole, the proxy logged in with it ----------
def approle_from_the_page(stack: Stack, folder: Path) -> dict[str, str]:
    """Run docs/vault.md's policy and set-up as an administrator would (`vault` being
    OpenBao's `bao`); the RoleID and SecretID it makes."""
    folder.mkdir()
    (folder / "egressguard-policy.hcl").write_text(marked(VAULT_DOC, "vault-policy"))
    script = ('vault() { "$BAO" "$@"; }\nset -eu\n' + marked(VAULT_DOC, "vault-setup")
              + 'printf "%s\\n%s\\n" "$VAULT_ROLE_ID" "$VAULT_SECRET_ID"\n')
    done = run(["bash", "-c", script], cwd=folder, env=env_of(
        HOME=str(folder), BAO=str(bao_binary()), VAULT_ADDR=stack.vault.addr,
        VAULT_TOKEN=stack.vault.root_token))
    assert done.returncode == 0, f"the set-up failed:\n{done.stderr}"
    role_id, secret_id = done.stdout.splitlines()[-2:]  # after the commands' own output
    return {"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": register(secret_id, "vault token")}


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Stack, dict[str, str]]]:
    """OpenBao, the fake vendor (also playing a pass-through host, `localhost`) and the
    proxy, logged in with the page's AppRole rather than a root token."""
    workdir = tmp_path_factory.mktemp("docs")
    policy = workdir / "policy.yaml"
    policy.write_text(replaced(REPO_POLICY.read_text(), ("  - pypi.org\n", "  - localhost\n")))
    with Stack(workdir, policy=policy) as s:
        s.stop_proxy()  # it started on the root token; the page's AppRole from here on
        login = approle_from_the_page(s, workdir / "vault-admin")
        s.proxy_args = ("--upstream-map", f"localhost=127.0.0.1:{s.vendor_port}",
                        "--secret-ttl", str(SECRET_TTL))
        s.start_proxy(env={"VAULT_TOKEN": "", **login})
        yield s, login


@pytest.fixture(scope="module")
def stack(docs_stack: tuple[Stack, dict[str, str]]) -> Stack:
    return docs_stack[0]


@pytest.fixture(scope="module")
def approle(docs_stack: tuple[Stack, dict[str, str]]) -> dict[str, str]:
    return docs_stack[1]


# -- the pages show what runs --------------------------------------------------------------
def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if p.is_file()
                  and "node_modules" not in p.parts and p.name not in (
                      "package.json", "package-lock.json"))


@pytest.mark.parametrize("example", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_the_agents_page_shows_each_example_as_it_is(example: Path) -> None:
    assert example.read_text() in {b.body for b in blocks(AGENTS_DOC)}, \
        f"docs/agents.md has no code block equal to {example.relative_to(REPO)}"


def test_the_pages_yaml_parses_and_the_vault_policy_is_the_shipped_one() -> None:
    for doc in (AGENTS_DOC, VAULT_DOC, SIEM_DOC):
        for block in blocks(doc):
            if block.info == "yaml":
                yaml.safe_load(block.body)
    assert marked(VAULT_DOC, "vault-policy") == \
        (REPO / "deploy" / "vault" / "egressguard-policy.hcl").read_text()


# -- agents ----------------------------------------------------------------------------------
def test_python_openai_sdk_set_up_by_the_environment(stack: Stack, keys: dict[str, str]) -> None:
    stack.reset_received()
    token = stack.token("py-agent")
    done = run([sys.executable, str(EXAMPLES / "python-agent" / "openai_agent.py")], env_of(
        HTTPS_PROXY=stack.proxy_url("py-agent", token), SSL_CERT_FILE=str(stack.ca_bundle),
        REQUESTS_CA_BUNDLE=str(stack.ca_bundle), OPENAI_API_KEY=token))
    assert done.stdout == f"{ANSWER}\n", output(done)
    assert_served(stack, "py-agent", token, ("authorization", f"Bearer {keys['openai']}"))


def test_python_anthropic_sdk_given_proxy_and_ca_in_code(stack: Stack,
                                                       keys: dict[str, str]) -> None:
    stack.reset_received()
    token = stack.token("claude-agent")
    done = run([sys.executable, str(EXAMPLES / "python-agent" / "anthropic_agent.py")], env_of(
        EGRESSGUARD_TOKEN=token, EGRESSGUARD_PROXY=stack.proxy,
        EGRESSGUARD_CA=str(stack.ca_cert)))
    assert done.stdout == "Hello from fake anthropic\n", output(done)
    assert_served(stack, "claude-agent", token, ("x-api-key", keys["anthropic"]))


@pytest.fixture(scope="module")
def node_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """examples/node-agent with its locked dependencies installed (`npm ci`; removed
    afterwards, so the secret sweep need not read them)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (`make test-deps` installs it)")
    version = run(["node", "--version"], env_of()).stdout.strip()
    found = tuple(int(n) for n in version.lstrip("v").split("."))
    assert found >= NODE_MIN, f"Node {version} is too old for the example: it needs " \
        f"{'.'.join(map(str, NODE_MIN))} or later (undici 7; the openai SDK wants Node 20)"
    assert shutil.which("npm"), "node is installed without npm"
    folder = tmp_path_factory.mktemp("node-agent")
    for path in (EXAMPLES / "node-agent").iterdir():
        if path.is_file():
            shutil.copy(path, folder)
    # the environment as it is (a CI proxy may be the way to the registry)
    done = run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline"],
               env=dict(os.environ), cwd=folder, timeout=300)
    assert done.returncode == 0, f"npm ci failed:\n{output(done)}"
    yield folder
    shutil.rmtree(folder / "node_modules", ignore_errors=True)


@pytest.mark.parametrize("script, in_proxy_url", [
    ("agent.mjs", True),  # the token in the proxy URL and as the API key
    ("global-dispatcher.mjs", False),  # the token as the API key only
])
def test_node_openai_sdk_through_undici(stack: Stack, keys: dict[str, str], node_agent: Path,
                                        script: str, in_proxy_url: bool) -> None:
    stack.reset_received()
    token = stack.token("node-agent")
    done = run(["node", script], cwd=node_agent, env=env_of(
        HTTPS_PROXY=stack.proxy_url("node-agent", token) if in_proxy_url else stack.proxy,
        NODE_EXTRA_CA_CERTS=str(stack.ca_cert), OPENAI_API_KEY=token))
    assert done.stdout == f"{ANSWER}\n", output(done)
    assert_served(stack, "node-agent", token, ("authorization", f"Bearer {keys['openai']}"))


def test_curl(stack: Stack, keys: dict[str, str]) -> None:
    stack.reset_received()
    token = stack.token("curl-agent")
    done = run([str(EXAMPLES / "curl-agent" / "ask.sh")], env_of(
        HTTPS_PROXY=stack.proxy_url("curl-agent", token), EGRESSGUARD_CA=str(stack.ca_cert),
        EGRESSGUARD_TOKEN=token))
    assert done.returncode == 0, output(done)
    assert orjson.loads(done.stdout)["choices"][0]["message"]["content"] == ANSWER
    assert_served(stack, "curl-agent", token, ("authorization", f"Bearer {keys['openai']}"))


@pytest.fixture(scope="module")
def java() -> None:
    missing = [t for t in ("java", "javac", "keytool") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no JDK ({', '.join(missing)} missing; `make test-deps` installs one)")


# Quick JIT only: halves the start of short JVMs (the source launcher compiles first).
FAST_JVM = "-XX:TieredStopAtLevel=1"


def java_env(stack: Stack, token: str, store: Path, **extra: str) -> dict[str, str]:
    return env_of(EGRESSGUARD_TOKEN=token, EGRESSGUARD_CA=str(stack.ca_cert),
                  EGRESSGUARD_PORT=str(stack.proxy_port), EGRESSGUARD_TRUSTSTORE=str(store),
                  **{"JAVA_TOOL_OPTIONS": FAST_JVM, **extra})


def test_java_agent_with_a_keytool_truststore(stack: Stack, keys: dict[str, str], java: None,
                                              tmp_path: Path) -> None:
    stack.reset_received()
    token = stack.token("java-agent")
    store = tmp_path / "truststore.p12"  # not there yet: run.sh makes it
    done = run([str(EXAMPLES / "java-agent" / "run.sh")], java_env(stack, token, store))
    status, _, body = done.stdout.partition(" ")
    assert status == "200", output(done)
    assert orjson.loads(body)["choices"][0]["message"]["content"] == ANSWER
    assert_served(stack, "java-agent", token, ("authorization", f"Bearer {keys['openai']}"))


def test_java_pass_through_needs_basic_auth_for_tunnels_enabled(stack: Stack, java: None,
                                                                 tmp_path: Path) -> None:
    token = stack.token("java-agent")
    # The pass-through host here is the fake vendor as `localhost`: not intercepted, so
    # the agent trusts the upstream's own CA (a public root, for a real host).
    store = tmp_path / "truststore.p12"
    imported = run(["keytool", "-importcert", "-noprompt", "-alias", "upstream", "-file",
                    str(stack.pki / "ca.pem"), "-keystore", str(store), "-storetype", "PKCS12",
                    "-storepass", "changeit"], env_of(JAVA_TOOL_OPTIONS=FAST_JVM))
    assert imported.returncode == 0, output(imported)
    # The JDK's default http.nonProxyHosts sends localhost direct: not what is tested.
    env = java_env(stack, token, store, EGRESSGUARD_AGENT="java-agent",
                   JAVA_TOOL_OPTIONS=f"{FAST_JVM} -Dhttp.nonProxyHosts=")
    url = "https://localhost/bench"
    program = str(EXAMPLES / "java-agent" / "PassThrough.java")
    # Without -Djdk.http.auth.tunneling.disabledSchemes= the JDK never answers the 407.
    refused = run(["java", "-Dhttps.proxyHost=127.0.0.1",
                   f"-Dhttps.proxyPort={stack.proxy_port}", f"-Djavax.net.ssl.trustStore={store}",
                   "-Djavax.net.ssl.trustStorePassword=changeit", program, url], env)
    assert refused.stdout.startswith("407 "), output(refused)
    done = run([str(EXAMPLES / "java-agent" / "run.sh"), "PassThrough.java", url], env)
    assert done.stdout == '200 {"ok":true}\n', output(done)
    tunnels = [r for r in stack.records() if r["kind"] == "connect" and r["host"] == "localhost"]
    assert [(r["agent"], r["reason"]) for r in tunnels][-2:] == \
        [(None, "identity_missing"), ("java-agent", "passthrough")]


# -- Vault ---------------------------------------------------------------------------------
def test_the_approle_reads_the_keys_and_nothing_else(stack: Stack, approle: dict[str, str],
                                                    keys: dict[str, str]) -> None:
    session = requests.Session()
    session.trust_env = False
    client = hvac.Client(url=stack.vault.addr, session=session)
    try:
        client.auth.approle.login(role_id=approle["VAULT_ROLE_ID"],
                                  secret_id=approle["VAULT_SECRET_ID"])
        register(client.token, "vault token")
        kv = client.secrets.kv.v2
        read = kv.read_secret_version(path="egressguard/vendors/openai", mount_point="secret",
                                      raise_on_deleted_version=True)
        assert read["data"]["data"]["api_key"] == keys["openai"]
        for attempt in (
            lambda: kv.create_or_update_secret(path="egressguard/vendors/openai",
                                               secret={"api_key": "overwritten"},
                                               mount_point="secret"),
            lambda: kv.read_secret_metadata(path="egressguard/vendors/openai",
                                            mount_point="secret"),
            lambda: kv.list_secrets(path="egressguard/vendors", mount_point="secret"),
            lambda: kv.read_secret_version(path="elsewhere/key", mount_point="secret",
                                           raise_on_deleted_version=True),
        ):
            with pytest.raises(hvac.exceptions.Forbidden):
                attempt()
        token = client.auth.token.lookup_self()["data"]
        assert sorted(token["policies"]) == ["default", "egressguard-proxy"]
        assert 0 < token["ttl"] <= 3600 and token["renewable"]
    finally:
        session.close()


def test_rotating_a_key_as_the_page_says(stack: Stack, keys: dict[str, str]) -> None:
    token = stack.token("rotating-agent")
    with httpx.Client(proxy=stack.proxy, verify=stack.agent_ssl_context(), trust_env=False,
                      timeout=10) as client:
        def key_sent() -> str:
            """The key the vendor got for one request."""
            stack.reset_received()
            answer = client.post("https://api.openai.com/v1/chat/completions",
                                 headers={"Authorization": f"Bearer {token}"},
                                 json={"model": "gpt-4o-mini",
                                       "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200, answer.text
            return dict(headers_of(stack.received()[0]))["authorization"]

        assert key_sent() == f"Bearer {keys['openai']}"  # version 1, in use
        new = fake_key()
        stored = run(["bash", "-c", "set -eu\n" + marked(VAULT_DOC, "vault-rotate")],
                     env_of(VAULT_ADDR=stack.vault.addr, VAULT_TOKEN=stack.vault.root_token),
                     cwd=REPO, stdin=f"{new}\n")
        assert "(version 2)" in stored.stderr, output(stored)
        since = time.monotonic()
        wait_until(lambda: key_sent() == f"Bearer {new}", timeout=SECRET_TTL + 10,
                   interval=0.2, what="the rotated key in use")
    assert time.monotonic() - since < SECRET_TTL + 5  # within --secret-ttl, plus a loaded CI
    # the page's check: which versions served requests, and when last
    check = run(["bash", "-c", 'egressguard() { command egressguard "$@" --journal "$JOURNAL" '
                 '--no-cache; }\n' + marked(VAULT_DOC, "vault-rotate-check")],
                env_of(JOURNAL=str(stack.journal)), timeout=60)
    assert check.returncode == 0, output(check)
    rows = list(csv.DictReader(io.StringIO(check.stdout)))
    used = {(r["credential_path"], r["credential_version"]) for r in rows}
    assert {("secret/egressguard/vendors/openai", "1"),
            ("secret/egressguard/vendors/openai", "2")} <= used


# -- SIEM ------------------------------------------------------------------------------------
def test_the_siem_page_sinks_files_load_and_its_key_table_is_the_loaders() -> None:
    files = [b.body for b in blocks(SIEM_DOC)
             if b.info == "yaml" and b.body.startswith("version: 1\nsinks:")]
    loaded = [parse_sinks(text, "docs/siem.md") for text in files]
    assert {s.type for config in loaded for s in config.sinks} == set(TYPES)
    table = SIEM_DOC.read_text().split("## Every key of the sinks file", 1)[1]
    documented: dict[str, set[str]] = {t: set() for t in TYPES}
    for row in re.findall(r"^\| (`[^|]+) \| ([^|]+) \|", table, re.M):
        names = re.findall(r"`(\w+)`", row[0])
        kinds = TYPES if row[1].strip() == "all" else [k.strip() for k in row[1].split(",")]
        for kind in kinds:
            documented[kind].update(names)
    assert documented == {t: set(_KEYS[t]) for t in TYPES}


def rsyslogd() -> str:
    path = shutil.which("rsyslogd", path=os.pathsep.join([os.environ["PATH"], *SBIN]))
    assert path, "rsyslogd is not installed (`make test-deps` installs it)"
    return path


def test_rsyslog_writes_the_records_as_json_lines(stack: Stack, tmp_path: Path) -> None:
    tls_port, tcp_port = free_port(), free_port()
    (tmp_path / "work").mkdir()
    config = tmp_path / "rsyslog.conf"
    config.write_text(
        # what a system's rsyslog.conf has already; rsyslogd's own messages to a file
        f'global(workDirectory="{tmp_path}/work" net.enableDNS="off" '
        'processInternalMessages="on")\n'
        + replaced(marked(SIEM_DOC, "rsyslog-conf"),
                   ('port="6514"', f'port="{tls_port}"'), ('port="10514"', f'port="{tcp_port}"'),
                   ("/etc/rsyslog.d/egressguard/", f"{stack.pki}/"),
                   ("/var/log/egressguard/", f"{tmp_path}/"))
        + f'*.* action(type="omfile" file="{tmp_path}/rsyslogd.log")\n')
    checked = run([rsyslogd(), "-N1", "-f", str(config)], env_of())
    assert checked.returncode == 0, output(checked)
    sinks = tmp_path / "sinks.yaml"
    sinks.write_text(replaced(marked(SIEM_DOC, "rsyslog-sinks"),
                              ("siem.example.com:6514", f"127.0.0.1:{tls_port}"),
                              ("/etc/egressguard/siem-ca.pem", str(stack.pki / "ca.pem")),
                              ("127.0.0.1:10514", f"127.0.0.1:{tcp_port}")))
    with httpx.Client(proxy=stack.proxy, verify=stack.agent_ssl_context(), trust_env=False,
                      timeout=10) as client:  # a record, whatever ran before: a 401
        assert client.get("https://api.openai.com/v1/models").status_code == 401
    journal = {r["id"]: r for r in stack.wait_records(1)}
    server = spawn([rsyslogd(), "-n", "-f", str(config), "-i", str(tmp_path / "rsyslogd.pid")],
                   log=tmp_path / "rsyslogd.out")
    shipper = None
    lines = tmp_path / "audit.jsonl"
    try:
        wait_until(lambda: port_open(tls_port) and port_open(tcp_port), timeout=15,
                   what="rsyslogd's inputs")
        shipper = spawn([sys.executable, "-m", "egressguard.cli", "ship", "--journal",
                         str(stack.journal), "--sinks", str(sinks)], log=tmp_path / "ship.log")

        def both_sinks_delivered() -> Counter[str] | None:
            if not lines.exists():
                return None
            seen = Counter(orjson.loads(line)["id"] for line in lines.read_text().splitlines())
            return seen if all(seen[i] >= 2 for i in journal) else None

        try:
            seen = wait_until(both_sinks_delivered, timeout=20,
                              what="every record from both sinks")
        except TimeoutError as exc:
            logs = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}\n" for p in tmp_path.glob(
                "*") if p.suffix in (".log", ".out"))
            raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        terminate(shipper)
        terminate(server)
    assert set(journal) <= set(seen)
    for line in lines.read_text().splitlines():  # one record per line, as written
        record = orjson.loads(line)
        if record["id"] in journal:
            assert record == journal[record["id"]]
