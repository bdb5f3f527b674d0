"""The deployment files under deploy/: what can be checked without a container engine
or a cluster.

Every YAML file parses; the Dockerfile builds from files that exist and reach the build
context, runs as non-root from the hash-checked lock, and its health check works; every
egressguard command line (compose, Kubernetes, systemd, the image's CMD) is accepted by
the real `egressguard run` parser; compose's services, volumes and files all resolve;
haproxy and rsyslog accept their configs; the Vault scripts, run against a real
OpenBao, give proxies credentials egressguard accepts; the Kubernetes objects validate
against the API schemas (kubernetes-validate, offline) and refer to one another
consistently; the systemd unit passes `systemd-analyze verify`. No deployment file
holds anything the redaction detector takes for a secret.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import hvac.exceptions
import kubernetes_validate
import pytest
import yaml
from secret_registry import register

from egressguard import cli
from egressguard.backends.signing import from_file as signing_key
from egressguard.backends.vault import VaultConfig, VaultStore
from egressguard.core import keyfiles, tokens
from egressguard.core import policy as policy_mod
from egressguard.core.errors import SecretUnavailable
from egressguard.core.redact.detect import default_detector
from egressguard.core.secret import SecretLocation
from egressguard.core.sinkconfig import load_sinks, parse_sinks
from egressguard.core.vendors import catalogue
from egressguard.tools import ca
from egressguard.tools.devvault import OpenBaoDev
from egressguard.tools.fakevendor import make_pki
from egressguard.tools.localvault import bao_binary

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# The Kubernetes API the manifests are checked against: native sidecars (1.28) and the
# preStop sleep action (1.30) are in use.
K8S_VERSION = "1.31.0"
SHIPPER_STOP = 15  # seconds `egressguard ship` gets to stop after the proxy (ship.py)
SBIN = ("/usr/sbin", "/sbin")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# proxy settings a developer's shell may carry: never for the servers tests start
AMBIENT = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
           "all_proxy", "VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR", "BAO_ADDR")


def tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AMBIENT}
    return env | extra


def run_args(argv: list[str]) -> argparse.Namespace:
    """`argv` parsed by the real `egressguard` parser (an AssertionError with argparse's
    complaint if it refuses), which must make it an `egressguard run`."""
    complaint = io.StringIO()
    with contextlib.redirect_stderr(complaint):
        try:
            args = cli.parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"`egressguard {' '.join(argv)}` is refused: "
                                 f"{complaint.getvalue().strip()}") from None
    assert args.command == "run", argv
    return args


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


def sink_endpoint(sink: Any) -> tuple[str, int]:
    """(host, port) a sink sends to (syslog: host and port; HTTP sinks: the URL's)."""
    if sink.option("host"):
        return sink.option("host"), sink.option("port")
    url = urlsplit(sink.option("url"))
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


def seconds(text: str | int) -> float:
    """`60s`, `1m`, `90` -> seconds (compose and systemd time spans)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?", str(text).strip())
    assert m, f"not a time span: {text!r}"
    return float(m.group(1)) * {None: 1, "s": 1, "ms": 0.001, "m": 60, "min": 60,
                                "h": 3600}[m.group(2)]


def repository_files(*paths: str) -> list[Path]:
    """Files git tracks or would track under `paths` (not what it ignores, such as key
    files a developer made in deploy/k8s/egressguard/secrets/)."""
    done = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", *paths],
                          cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    return sorted(REPO / name for name in done.stdout.split("\0")
                  if name and (REPO / name).is_file())


# -- every YAML file --------------------------------------------------------------------
YAML_FILES = [p for p in repository_files("deploy") if p.suffix in (".yaml", ".yml")]


def test_deploy_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"compose.yaml", "k8s/kustomization.yaml", "sinks.example.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"


# -- no secrets -------------------------------------------------------------------------
TEXT_FILES = [p for p in repository_files("deploy", ".dockerignore")
              if p.name != "requirements.lock"]


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_deploy_file_holds_a_secret(path: Path) -> None:
    """Placeholders only: nothing the redaction detector's secret rules (vendor keys,
    tokens, `password: ...`) would find; named by rule, never by value."""
    found = [f.entity for f in default_detector().find(path.read_text(), None)
             if f.kind == "secret"]
    assert not found, f"{path.relative_to(REPO)} holds what looks like a secret: {found}"


# -- the Dockerfile ---------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        """The arguments: a JSON array (exec form) or shell words."""
        if self.args.startswith("["):
            return list(json.loads(self.args))
        return shlex.split(self.args)


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined (comment lines inside one are
    dropped, as Docker does)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for no, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not buf and not stripped):
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip(), start))
        buf = ""
    assert not buf, f"{path}: a continuation runs off the end"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage (each starts with its FROM)."""
    out: list[list[Instruction]] = []
    for i in instructions:
        if i.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(i)
    return out


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out = {}
    for i in instructions:
        if i.keyword == "FROM":
            break
        if i.keyword == "ARG" and "=" in i.args:
            name, _, value = i.args.partition("=")
            out[name] = value
    return out


def base_image(stage: list[Instruction], args: dict[str, str]) -> str:
    image = stage[0].words()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def copies(stage: list[Instruction]) -> Iterator[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD from the build context."""
    for i in stage:
        if i.keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in i.words() if not w.startswith("--")]
        if any(w.startswith("--from") for w in i.words()):
            continue
        yield words[:-1], words[-1]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in stage:
        if i.keyword == "ENV":
            for word in i.words():
                name, _, value = word.partition("=")
                out[name] = value
    return out


IMAGE = dockerfile(DEPLOY / "Dockerfile")
FINAL = stages(IMAGE)[-1]


def dockerignore(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, /-separated) out of the build context:
    the last pattern that matches it or one of its parent folders decides."""
    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token))
        return re.compile(out)

    parts = path.split("/")
    left_out = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        rx = regex(pattern[1:] if negated else pattern)
        if any(rx.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            left_out = not negated
    return left_out


DOCKERIGNORE = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]


def test_dockerfile_base_is_slim_python_312_or_newer() -> None:
    args = arg_defaults(IMAGE)
    for stage in stages(IMAGE):
        image = base_image(stage, args)
        m = re.fullmatch(r"python:(\d+)\.(\d+)-slim-(\w+)(@sha256:[0-9a-f]{64})?", image)
        assert m, f"line {stage[0].line}: base {image!r} is not python:X.Y-slim-DISTRO"
        assert (int(m.group(1)), int(m.group(2))) >= (3, 12), image


def test_dockerfile_copies_exist_and_reach_the_build_context() -> None:
    sources = [src for stage in stages(IMAGE) for srcs, _ in copies(stage) for src in srcs]
    assert "deploy/requirements.lock" in sources
    for src in sources:
        path = REPO / src
        assert path.exists(), f"COPY {src}: no such file in the repository"
        files = [path] if path.is_file() else [
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files, src
        shut_out = [p.relative_to(REPO).as_posix() for p in files
                    if dockerignore(p.relative_to(REPO).as_posix(), DOCKERIGNORE)]
        assert not shut_out, f"COPY {src}: .dockerignore leaves out {shut_out[:5]}"


@pytest.mark.parametrize("path", [
    "certs/mitmproxy-ca.pem", "var/token.key", "var/journal/journal-000001.jsonl",
    ".venv/bin/python", ".git/config", "deploy/k8s/egressguard/secrets/token.key",
    "tests/test_deploy.py", "addons/core/__pycache__/policy.cpython-312.pyc",
])
def test_dockerignore_keeps_out(path: str) -> None:
    assert dockerignore(path, DOCKERIGNORE), f"{path} would be sent to the builder"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [i.args for i in FINAL if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot check it"


def test_dockerfile_installs_the_lock_with_hashes_and_egressguard_without_deps() -> None:
    lock_dest = {dest for stage in stages(IMAGE) for srcs, dest in copies(stage)
                 if srcs == ["deploy/requirements.lock"]}
    assert lock_dest, "deploy/requirements.lock is not copied in"
    runs = [i.args for i in IMAGE if i.keyword == "RUN"]
    locked = [r for r in runs if "--require-hashes" in r]
    assert locked, "no `pip install --require-hashes`"
    assert any(f"-r {dest}" in r for r in locked for dest in lock_dest), locked
    assert any(re.search(r"pip install --no-deps \S+", r) for r in runs), \
        "egressguard itself must be installed with --no-deps (the lock has the rest)"


def test_dockerfile_ports_volumes_and_command() -> None:
    exposed = {w for i in FINAL if i.keyword == "EXPOSE" for w in i.words()}
    assert {"8080", "9090"} <= exposed
    env = env_of(FINAL)
    assert port_of(env["EGRESSGUARD_METRICS_LISTEN"]) == 9090
    # writable places other than the volumes are all under /tmp (read-only root)
    for name in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        assert under(env[name], "/tmp"), f"{name}={env[name]} is not under /tmp"
    volumes = {v for i in FINAL if i.keyword == "VOLUME" for v in i.words()}
    entry = [i for i in FINAL if i.keyword == "ENTRYPOINT"][-1].words()
    assert entry == ["/usr/local/bin/egressguard-entrypoint"]
    assert any(dest == entry[0] and srcs == ["deploy/docker-entrypoint.sh"]
               for srcs, dest in copies(FINAL))
    args = run_args([i for i in FINAL if i.keyword == "CMD"][-1].words())
    assert args.listen == ("0.0.0.0", 8080)
    for path in (args.state, args.journal, args.certs):
        assert str(path) in volumes, f"{path} is not a declared VOLUME"
    assert any(dest == str(args.policy) for _, dest in copies(FINAL)), \
        f"the default --policy {args.policy} is not in the image"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_asks_healthz(status: int, healthy: bool) -> None:
    """The HEALTHCHECK command itself, run against a stand-in /healthz on the port
    EGRESSGUARD_METRICS_LISTEN names: exit 0 only on 200. No curl in a slim image."""
    check = [i for i in FINAL if i.keyword == "HEALTHCHECK"]
    assert check, "no HEALTHCHECK"
    words = json.loads(check[-1].args.partition("CMD")[2])  # exec form: no shell needed
    assert words[:2] == ["python", "-c"] and "/healthz" in words[2], words
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = clean_env(EGRESSGUARD_METRICS_LISTEN=f"0.0.0.0:{server.server_port}")
        done = subprocess.run([sys.executable, *words[1:]], env=env, capture_output=True,
                              timeout=30, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (done.returncode == 0) is healthy, done.stderr.decode()[-500:]


# -- the entrypoint ---------------------------------------------------------------------
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"


def entrypoint(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """The entrypoint with a stand-in `egressguard` that prints its arguments and the
    Vault variables it was given, as JSON."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "egressguard"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'env': {k: v for k, v in "
                    "os.environ.items() if k.startswith(('VAULT_', 'EGRESSGUARD_'))}}))\n")
    fake.chmod(0o755)
    base = {k: v for k, v in clean_env().items()
            if not k.startswith(("VAULT_", "EGRESSGUARD_"))}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                          env=base | {"PATH": f"{bindir}:{os.environ['PATH']}"} | env,
                          timeout=30, check=False)


def test_entrypoint_turns_files_into_variables(tmp_path: Path) -> None:
    (tmp_path / "role_id").write_text("role-for-the-test\n")
    (tmp_path / "secret_id").write_text("secret-id-for-the-test\n")
    done = entrypoint(tmp_path, ["--listen", "0.0.0.0:8080"],
                      VAULT_ROLE_ID_FILE=str(tmp_path / "role_id"),
                      VAULT_SECRET_ID_FILE=str(tmp_path / "secret_id"),
                      VAULT_ADDR="http://vault:8200")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["run", "--listen", "0.0.0.0:8080"]  # a flag first: `run`
    assert seen["env"] == {"VAULT_ROLE_ID": "role-for-the-test",
                           "VAULT_SECRET_ID": "secret-id-for-the-test",
                           "VAULT_ADDR": "http://vault:8200"}


def test_entrypoint_passes_subcommands_through(tmp_path: Path) -> None:
    done = entrypoint(tmp_path, ["token", "issue", "--agent", "a"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["argv"] == ["token", "issue", "--agent", "a"]


@pytest.mark.parametrize(("setup", "complaint"), [
    ("both", "both VAULT_SECRET_ID and VAULT_SECRET_ID_FILE"),
    ("missing", "cannot be read"),
    ("empty", "is empty"),
])
def test_entrypoint_refuses_a_bad_file(tmp_path: Path, setup: str, complaint: str) -> None:
    path = tmp_path / "secret_id"
    if setup != "missing":
        path.write_text("" if setup == "empty" else "secret-id-for-the-test")
    extra = {"VAULT_SECRET_ID": "another"} if setup == "both" else {}
    done = entrypoint(tmp_path, ["run"], VAULT_SECRET_ID_FILE=str(path), **extra)
    assert done.returncode == 2 and not done.stdout, "egressguard must not start"
    assert complaint in done.stderr


# -- compose ----------------------------------------------------------------------------
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry, short or long syntax."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            out.append((source, target, bool(mode) and "ro" in mode[0].split(",")))
        else:
            out.append((entry.get("source", ""), entry["target"],
                        bool(entry.get("read_only"))))
    return out


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def mounted_from(service: dict[str, Any], path: str) -> tuple[str, PurePosixPath]:
    """(source of the mount holding `path` in the container, `path` relative to it)."""
    best = max((m for m in mounts(service) if under(path, m[1])),
               key=lambda m: len(m[1]), default=None)
    assert best is not None, f"{path} is in no volume of the service"
    return best[0], PurePosixPath(path).relative_to(best[1])


def egressguard_services() -> dict[str, argparse.Namespace]:
    """Services running `egressguard run`, with their parsed command."""
    return {name: run_args(s["command"]) for name, s in SERVICES.items()
            if isinstance(s.get("command"), list) and s["command"][:1] == ["run"]}


def haproxy_config() -> str:
    return (DEPLOY / "haproxy" / "haproxy.cfg").read_text()


def haproxy_servers() -> dict[str, str]:
    return dict(re.findall(r"^\s*server\s+(\S+)\s+(\S+)", haproxy_config(), re.M))


def test_compose_runs_two_replicas_with_their_own_journal_and_node() -> None:
    replicas = egressguard_services()
    assert len(replicas) >= 2, sorted(replicas)
    nodes = {args.node for args in replicas.values()}
    assert len(nodes) == len(replicas) and None not in nodes, "one --node name each"
    journals = [mounted_from(SERVICES[name], str(args.journal))[0]
                for name, args in replicas.items()]
    assert len(set(journals)) == len(journals), f"journal volumes shared: {journals}"
    assert not any(is_bind(j) for j in journals)
    for name, args in replicas.items():
        # replicas share the token key (the state volume) and the CA
        state = mounted_from(SERVICES[name], str(args.state))[0]
        certs = mounted_from(SERVICES[name], str(args.certs))[0]
        assert (state, certs) == ("state", "certs"), name
        assert args.limits_store.startswith("redis://"), f"{name}: counters not shared"


def test_compose_references_are_defined_services() -> None:
    referenced: dict[str, str] = {}
    for name, service in SERVICES.items():
        for dep in service.get("depends_on", []):
            referenced[dep] = f"{name} depends_on"
        for link in service.get("links", []):
            referenced[link.split(":")[0]] = f"{name} links"
        env = service.get("environment", {})
        values = list(env.values()) if isinstance(env, dict) else \
            [e.partition("=")[2] for e in env]
        values += [str(w) for w in service.get("command") or [] if isinstance(w, str)]
        for value in values:
            for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s,]+", str(value)):
                host = urlsplit(url).hostname
                if host and host not in LOOPBACK:
                    referenced[host] = f"{name}: {url}"
    for server, address in haproxy_servers().items():
        referenced[address.rpartition(":")[0]] = f"haproxy server {server}"
    for sink in load_sinks(DEPLOY / "compose" / "sinks.yaml").sinks:
        referenced[sink_endpoint(sink)[0]] = f"sink {sink.name}"
    missing = {host: where for host, where in referenced.items() if host not in SERVICES}
    assert not missing, f"not services of compose.yaml: {missing}"
    assert {"redis", "vault", "rsyslog", "egressguard-1", "egressguard-2"} <= set(referenced)


def test_compose_volumes_and_networks_are_declared_and_used() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = {m[0] for s in SERVICES.values() for m in mounts(s) if not is_bind(m[0])}
    assert used <= declared, f"volumes not declared: {used - declared}"
    assert declared <= used, f"volumes declared but unused: {declared - used}"
    networks = set(COMPOSE.get("networks") or {})
    joined = {n for s in SERVICES.values() for n in s.get("networks", [])}
    assert joined <= networks, f"networks not declared: {joined - networks}"


def test_compose_files_exist() -> None:
    """Bind mounts, build contexts and Dockerfiles, relative to deploy/ (the compose
    file's folder)."""
    for name, service in SERVICES.items():
        for source, _, _ in mounts(service):
            if is_bind(source):
                assert (DEPLOY / source).exists(), f"{name}: mounts missing {source}"
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert context.is_dir(), f"{name}: no build context {context}"
            dockerfile_path = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile_path.is_file(), f"{name}: no {dockerfile_path}"
            for stage in stages(dockerfile(dockerfile_path)):
                for srcs, _ in copies(stage):
                    for src in srcs:
                        assert (context / src).exists(), f"{dockerfile_path}: COPY {src}"


def test_compose_proxies_read_the_policy_and_sinks_they_are_given() -> None:
    for name, args in egressguard_services().items():
        service = SERVICES[name]
        source, rel = mounted_from(service, str(args.policy))
        # a folder, not the file: an editor that saves by replacing the file is seen
        assert rel != PurePosixPath("."), f"{name}: mount the policy's folder, not the file"
        assert not policy_mod.load(DEPLOY / source / rel).warnings  # `lint --strict` clean
        source, rel = mounted_from(service, str(args.sinks))
        sinks = load_sinks(DEPLOY / source / rel)
        assert sinks.names, f"{name}: no sinks"


def test_compose_handovers_are_on_shared_volumes() -> None:
    """What the proxies and the agent read from files is on a volume that the service
    writing it (vault-init, setup) mounts too."""
    def volume_of(service: str, path: str) -> str:
        return mounted_from(SERVICES[service], path)[0]

    init_env = SERVICES["vault-init"]["environment"]
    approle = volume_of("vault-init", init_env["APPROLE_DIR"])
    replicas = egressguard_services()
    # init.sh writes role_id, and secret_id.NODE for each of NODES
    assert sorted(init_env["NODES"].split()) == sorted(replicas)
    for name in replicas:
        env = SERVICES[name]["environment"]
        for var, file in (("VAULT_ROLE_ID_FILE", "role_id"),
                          ("VAULT_SECRET_ID_FILE", f"secret_id.{name}")):
            assert volume_of(name, env[var]) == approle, f"{name}: {var}"
            assert PurePosixPath(env[var]) == PurePosixPath(init_env["APPROLE_DIR"]) / file
    share = volume_of("setup", "/var/lib/egressguard/share")
    agent_env = SERVICES["agent"]["environment"]
    for var in ("SSL_CERT_FILE", "EGRESSGUARD_TOKEN_FILE"):
        assert volume_of("agent", agent_env[var]) == share, var
    # the agent never sees the CA key or the token key
    agent_volumes = {m[0] for m in mounts(SERVICES["agent"])}
    assert not agent_volumes & {"certs", "state", "approle"}, agent_volumes


def test_compose_agent_can_only_reach_the_balancer() -> None:
    networks = COMPOSE["networks"]
    agent = SERVICES["agent"]
    assert all((networks[n] or {}).get("internal") for n in agent["networks"])
    peers = {name for name, s in SERVICES.items() if name != "agent"
             and set(s.get("networks", [])) & set(agent["networks"])}
    assert peers == {"haproxy"}, peers
    assert urlsplit(agent["environment"]["HTTPS_PROXY"]).hostname == "haproxy"


def test_compose_stop_grace_covers_the_drain() -> None:
    for name, args in egressguard_services().items():
        grace = seconds(SERVICES[name]["stop_grace_period"])
        assert grace > args.shutdown_grace + SHIPPER_STOP, name


def test_compose_setup_makes_the_ca_and_the_agents_files(tmp_path: Path) -> None:
    """compose/setup.sh, run twice: a CA egressguard accepts, a token the shared token
    key verifies, and for the agent only the certificate, the bundle and the token; the
    second run replaces nothing."""
    dirs = {name: tmp_path / name for name in ("certs", "state", "share")}
    for d in dirs.values():
        d.mkdir()
    env = clean_env(**{f"EGRESSGUARD_{k.upper()}": str(v) for k, v in dirs.items()})
    for _ in range(2):
        done = subprocess.run(["sh", str(DEPLOY / "compose" / "setup.sh")], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        if _ == 0:
            token = register((dirs["share"] / "token").read_text().strip(), "agent token")
    assert (dirs["share"] / "token").read_text().strip() == token
    assert sorted(p.name for p in dirs["share"].iterdir()) == \
        ["egressguard-ca-bundle.pem", "egressguard-ca.pem", "token"]
    ca.init(dirs["certs"])  # refuses a CA key others can read
    key = tokens.load_or_create_key(dirs["state"] / "token.key")
    authority = tokens.TokenAuthority(key, tokens.RevocationList(dirs["state"] / "rev"))
    principal = authority.verify(token)
    assert (principal.agent, principal.team) == ("example-agent", "examples")
    policy = policy_mod.load(DEPLOY / "compose" / "policy" / "policy.yaml")
    assert "example-agent" in policy.agents


# -- haproxy ----------------------------------------------------------------------------
def test_haproxy_accepts_its_config() -> None:
    binary = tool("haproxy")
    if binary is None:
        pytest.fail("haproxy is not installed: `make test-deps` installs it")
    done = subprocess.run([binary, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr


def test_haproxy_balances_the_replicas_and_checks_readyz() -> None:
    replicas = egressguard_services()
    servers = haproxy_servers()
    assert {a.rpartition(":")[0] for a in servers.values()} == set(replicas)
    config = haproxy_config()
    for address in servers.values():
        host, _, port = address.rpartition(":")
        assert int(port) == replicas[host].listen[1], address
    check_port = re.search(r"^\s*default-server\b.*\bcheck port (\d+)", config, re.M)
    assert check_port, "servers are not health-checked on the metrics port"
    for args in replicas.values():
        assert args.metrics_listen[1] == int(check_port.group(1))
    assert re.search(r"^\s*http-check send meth GET uri /readyz\b", config, re.M)
    assert re.search(r"^\s*mode tcp\b", config, re.M), "TCP: agents' TLS passes through"
    bind = re.search(r"^\s*bind\s+\S*:(\d+)", config, re.M)
    assert bind and port_of(SERVICES["agent"]["environment"]["HTTPS_PROXY"]) == \
        int(bind.group(1))


# -- rsyslog ----------------------------------------------------------------------------
def test_rsyslog_accepts_its_config(tmp_path: Path) -> None:
    binary = tool("rsyslogd")
    if binary is None:
        pytest.fail("rsyslogd is not installed: `make test-deps` installs it")
    config = (DEPLOY / "rsyslog" / "rsyslog.conf").read_text()
    # the image makes its work directory; here a temporary one stands in
    assert 'workDirectory="/var/spool/rsyslog"' in config
    work = tmp_path / "spool"
    work.mkdir()
    path = tmp_path / "rsyslog.conf"
    path.write_text(config.replace("/var/spool/rsyslog", str(work)))
    done = subprocess.run([binary, "-N1", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rsyslog_listens_where_the_sinks_send() -> None:
    config = (DEPLOY / "rsyslog" / "rsyslog.conf").read_text()
    port = re.search(r'input\(type="imtcp"[^)]*port="(\d+)"', config)
    assert port
    (sink,) = [s for s in load_sinks(DEPLOY / "compose" / "sinks.yaml").sinks
               if s.type == "syslog"]
    assert sink_endpoint(sink)[1] == int(port.group(1))
    assert sink.option("transport") == "tcp"  # the input has no TLS
    exposed = [i.words() for i in dockerfile(DEPLOY / "rsyslog" / "Dockerfile")
               if i.keyword == "EXPOSE"]
    assert [port.group(1)] in exposed


# -- Vault / OpenBao --------------------------------------------------------------------
@pytest.fixture
def vault() -> Iterator[OpenBaoDev]:
    with OpenBaoDev() as server:
        yield server


def run_vault_script(script: str, vault: OpenBaoDev, tmp_path: Path,
                     **env: str) -> subprocess.CompletedProcess[str]:
    bindir = str(bao_binary().parent)
    done = subprocess.run(
        ["sh", str(DEPLOY / "vault" / script)], capture_output=True, text=True, timeout=60,
        check=False, env=clean_env(BAO_ADDR=vault.addr, BAO_TOKEN=vault.root_token,
                                   HOME=str(tmp_path), PATH=f"{bindir}:{os.environ['PATH']}",
                                   **env))
    assert done.returncode == 0, f"{script}: {done.stdout}\n{done.stderr}"
    return done


def test_vault_init_gives_proxies_an_approle_egressguard_accepts(
        vault: OpenBaoDev, tmp_path: Path) -> None:
    """deploy/vault/init.sh against a real OpenBao with compose's NODES, twice (compose
    runs it on every `up`; the second run keeps the SecretIDs running proxies hold):
    egressguard's own Vault store logs in with each replica's RoleID and SecretID and
    reads a vendor key where the compose policy says keys are, and may neither write
    nor read outside secret/egressguard/."""
    approle = tmp_path / "approle"
    nodes = SERVICES["vault-init"]["environment"]["NODES"]
    runs = []
    for _ in range(2):
        run_vault_script("init.sh", vault, tmp_path, APPROLE_DIR=str(approle), NODES=nodes,
                         APPROLE_OWNER=f"{os.getuid()}:{os.getgid()}")
        runs.append({p.name: p.read_text() for p in approle.iterdir()})
    assert sorted(runs[0]) == ["role_id", *sorted(f"secret_id.{n}" for n in nodes.split())]
    assert runs[0] == runs[1]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o400 for p in approle.iterdir())
    role_id = runs[0]["role_id"].strip()
    secret_ids = [register(v.strip(), "vault token") for k, v in runs[0].items()
                  if k.startswith("secret_id.")]
    assert len(set(secret_ids)) == len(secret_ids), "one SecretID per replica"

    pol = policy_mod.load(DEPLOY / "compose" / "policy" / "policy.yaml")
    where = pol.secrets.location_for("openai", "example-agent", "examples")
    key = register("sk-test-" + secrets.token_hex(16), "vendor key")
    vault.put_secret(where.path, {where.field: key}, mount=where.mount)
    openai = catalogue().by_name("openai")
    assert openai is not None
    for secret_id in secret_ids:
        store = VaultStore(VaultConfig(addr=vault.addr, role_id=role_id, secret_id=secret_id))
        try:
            assert store.read(openai, where).reveal_for("api.openai.com") == key
            with pytest.raises(SecretUnavailable) as denied:
                store.read_value(SecretLocation(where.mount, "other/thing", where.field), "-")
            assert denied.value.reason == "vault_forbidden"
            with pytest.raises(hvac.exceptions.Forbidden):
                store.write(where, "overwritten")
        finally:
            store.close()


def hcl_value(text: str, key: str) -> str:
    m = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.M)
    assert m, f"{key} not set"
    return m.group(1)


def hcl_block(text: str, header: str) -> str:
    m = re.search(rf"^{header}\s*\{{(.*?)^\}}", text, re.M | re.S)
    assert m, f"no {header} block"
    return m.group(1)


def test_vault_kubernetes_auth_matches_the_manifests(vault: OpenBaoDev,
                                                      tmp_path: Path) -> None:
    """deploy/vault/kubernetes-auth.sh against a real OpenBao: its role binds the
    service account, namespace and token audience the StatefulSet uses, with the
    read-only policy; the sidecar logs in with that role and that token."""
    pki = make_pki(tmp_path / "pki")
    run_vault_script("kubernetes-auth.sh", vault, tmp_path,
                     KUBERNETES_HOST="https://127.0.0.1:6443",
                     KUBERNETES_CA_CERT=str(pki.ca_cert))
    role = vault.client().read("auth/kubernetes/role/egressguard")["data"]
    pod = statefulset()["spec"]["template"]["spec"]
    assert role["bound_service_account_names"] == [pod["serviceAccountName"]]
    assert role["bound_service_account_namespaces"] == [NAMESPACES["egressguard"]]
    assert role["token_policies"] == ["egressguard-proxy"]
    policy = vault.client().sys.read_policy("egressguard-proxy")["data"]["rules"]
    assert 'path "secret/data/egressguard/*"' in policy and '["read"]' in policy

    hcl = configmap("egressguard-openbao-proxy")["proxy.hcl"]
    auth = hcl_block(hcl, "auto_auth")
    assert re.search(r'method\s+"kubernetes"', auth)
    assert hcl_value(auth, "role") == "egressguard"
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "openbao-proxy"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (token_mount,) = [m for m in sidecar["volumeMounts"]
                      if "projected" in volumes[m["name"]]]
    (source,) = volumes[token_mount["name"]]["projected"]["sources"]
    sa_token = source["serviceAccountToken"]
    assert hcl_value(auth, "token_path") == f"{token_mount['mountPath']}/{sa_token['path']}"
    assert role["audience"] == sa_token["audience"]


# -- Kubernetes -------------------------------------------------------------------------
def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def kustomize_dirs(directory: Path = K8S) -> list[Path]:
    out = [directory]
    for resource in kustomization(directory).get("resources", []):
        if (directory / resource).is_dir():
            out += kustomize_dirs(directory / resource)
    return out


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for directory in kustomize_dirs():
        for resource in kustomization(directory).get("resources", []):
            path = directory / resource
            if path.is_file():
                out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


OBJECTS = k8s_objects()
NAMESPACES = {d.name: kustomization(d).get("namespace") for d in kustomize_dirs()[1:]}


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for _, o in OBJECTS if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def statefulset() -> dict[str, Any]:
    (sts,) = find("StatefulSet")
    return sts


def configmap(name: str) -> dict[str, str]:
    (cm,) = find("ConfigMap", name)
    return cm["data"]


def generated(kind: str) -> set[str]:
    field = {"Secret": "secretGenerator", "ConfigMap": "configMapGenerator"}[kind]
    return {g["name"] for d in kustomize_dirs() for g in kustomization(d).get(field, [])}


def proxy_container() -> dict[str, Any]:
    (c,) = [c for c in statefulset()["spec"]["template"]["spec"]["containers"]
            if c["name"] == "egressguard"]
    return c


def proxy_args() -> argparse.Namespace:
    return run_args(proxy_container()["args"])


@pytest.mark.parametrize("directory", kustomize_dirs(), ids=lambda d: d.relative_to(DEPLOY)
                         .as_posix())
def test_kustomization_lists_exactly_the_files_present(directory: Path) -> None:
    k = kustomization(directory)
    listed = set(k.get("resources", []))
    present = {p.name for p in directory.iterdir()
               if p.is_file() and p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    present |= {p.name for p in directory.iterdir()
                if p.is_dir() and (p / "kustomization.yaml").exists()}
    assert listed == present, f"missing: {present - listed}, not there: {listed - present}"
    for gen in k.get("secretGenerator", []) + k.get("configMapGenerator", []):
        for entry in gen.get("files", []):
            rel = entry.partition("=")[2] or entry
            folder = (directory / rel).parent
            assert (folder / ".gitignore").exists(), f"{rel}: key material must be ignored"
            # git ignores the generator's files: key material is never committed
            done = subprocess.run(["git", "check-ignore", "-q", "--no-index",
                                   str(directory / rel)], cwd=REPO, timeout=30, check=False)
            assert done.returncode == 0, f"git would commit {rel}"
    leftover = [p.name for p in directory.iterdir()
                if p.is_dir() and p.name not in present and p.name != "secrets"]
    assert not leftover, f"folders no kustomization uses: {leftover}"


@pytest.mark.parametrize(("path", "obj"), OBJECTS, ids=[
    f"{p.relative_to(K8S).as_posix()}:{o['kind']}/{o['metadata']['name']}" for p, o in OBJECTS])
def test_k8s_object_validates(path: Path, obj: dict[str, Any]) -> None:
    """Strict: an unknown field (a typo) fails as well as a wrong type."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise AssertionError(f"{path.name}: {where}: {exc.message}") from None


def test_k8s_kustomize_build(tmp_path: Path) -> None:
    """`kubectl kustomize` builds the whole tree (with stand-in key files), every
    object it makes validates, and the generated Secrets are the ones the pods mount."""
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    for directory in kustomize_dirs():
        for gen in kustomization(directory).get("secretGenerator", []):
            for entry in gen.get("files", []):
                target = tree / directory.relative_to(K8S) / (entry.partition("=")[2] or entry)
                target.write_text("stand-in\n")
    done = subprocess.run([kubectl, "kustomize", str(tree)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    built = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert len(built) == len(OBJECTS) + len(generated("Secret"))
    for obj in built:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in NAMESPACES.values(), obj["metadata"]
    secrets_built = {o["metadata"]["name"] for o in built if o["kind"] == "Secret"}
    (sts,) = [o for o in built if o["kind"] == "StatefulSet"]
    mounted = {v["secret"]["secretName"] for v in sts["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    assert mounted and mounted <= secrets_built, (mounted, secrets_built)


def test_k8s_proxy_pods_are_hardened_and_probed() -> None:
    sts = statefulset()
    assert sts["spec"]["replicas"] >= 2
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "memory" in c["resources"]["limits"] and c["resources"]["requests"], c["name"]
    proxy = proxy_container()
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    args = proxy_args()
    assert ports == {"proxy": args.listen[1], "metrics": args.metrics_listen[1]}
    probes = {kind: (proxy[kind]["httpGet"]["path"], proxy[kind]["httpGet"]["port"])
              for kind in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": ("/readyz", "metrics"),
                      "livenessProbe": ("/healthz", "metrics")}
    pre_stop = proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + args.shutdown_grace + \
        SHIPPER_STOP


def volume_at(container: dict[str, Any], path: str) -> str:
    (mount,) = [m for m in container["volumeMounts"] if under(path, m["mountPath"])]
    return mount["name"]


def test_k8s_journal_is_a_claim_per_pod_and_node_the_pod_name() -> None:
    sts = statefulset()
    args = proxy_args()
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert volume_at(proxy_container(), str(args.journal)) in claims
    assert args.node == "$(POD_NAME)"
    env = {e["name"]: e for e in proxy_container()["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


def test_k8s_policy_is_a_mounted_folder_that_loads() -> None:
    """The policy ConfigMap is mounted as a folder (a subPath mount never sees an
    update, so hot reload would silently stop) and holds a valid policy."""
    proxy = proxy_container()
    args = proxy_args()
    (mount,) = [m for m in proxy["volumeMounts"] if under(str(args.policy), m["mountPath"])]
    assert "subPath" not in mount
    volumes = {v["name"]: v for v in statefulset()["spec"]["template"]["spec"]["volumes"]}
    data = configmap(volumes[mount["name"]]["configMap"]["name"])
    key = PurePosixPath(args.policy).relative_to(mount["mountPath"]).as_posix()
    assert not policy_mod.parse(data[key], "configmap-policy.yaml").warnings
    (sinks_mount,) = [m for m in proxy["volumeMounts"]
                      if under(str(args.sinks), m["mountPath"])]
    sinks_data = configmap(volumes[sinks_mount["name"]]["configMap"]["name"])
    assert parse_sinks(sinks_data[args.sinks.name], "configmap-sinks.yaml").names


def test_k8s_references_resolve() -> None:
    """ConfigMaps, Secrets, the service account and every selector point at something
    this kustomization makes."""
    sts = statefulset()
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    configmaps = {o["metadata"]["name"] for o in find("ConfigMap")} | generated("ConfigMap")
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in configmaps, volume
        if "secret" in volume:
            assert volume["secret"]["secretName"] in generated("Secret"), volume
    assert find("ServiceAccount", pod["spec"]["serviceAccountName"])
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        names = {v["name"] for v in pod["spec"]["volumes"]} | \
            {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
        assert {m["name"] for m in container["volumeMounts"]} <= names, container["name"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (headless,) = find("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for service in find("Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in find(kind):
            if obj["metadata"]["name"] == "egress-only-through-egressguard":
                continue
            assert obj["spec"]["selector" if kind != "NetworkPolicy" else "podSelector"][
                "matchLabels"].items() <= labels.items(), obj["metadata"]["name"]
    (hpa,) = find("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", sts["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2


def test_k8s_keys_step_gives_egressguard_private_files(tmp_path: Path) -> None:
    """The init container's script, run (paths moved under tmp_path) over stand-ins
    for the Secret and ConfigMap volumes as the kubelet makes them (group-readable):
    what it leaves passes egressguard's own key-file checks, where `run` looks (its
    --state and --certs), and a second run (a restarted pod) works too."""
    pod = statefulset()["spec"]["template"]["spec"]
    (keys,) = [c for c in pod["initContainers"] if c["name"] == "keys"]
    assert keys["command"][:2] == ["/bin/sh", "-ec"]
    script = keys["command"][2]
    args = proxy_args()
    # every path the script writes is where the proxy container reads it
    for written in re.findall(r"(/var/lib/egressguard/\S+)", script):
        volume = volume_at(keys, written)
        directory = {"state": args.state, "certs": args.certs}[volume]
        assert volume_at(proxy_container(), str(directory)) == volume
        assert PurePosixPath(written).parent == PurePosixPath(directory), written

    def moved(path: str) -> Path:
        return tmp_path / path.lstrip("/")

    sources = {name: moved(m["mountPath"]) for name, m in
               ((m["name"], m) for m in keys["volumeMounts"])}
    for directory in sources.values():
        directory.mkdir(parents=True)
    made = tmp_path / "made"
    ca.init(made)
    shutil.copy(made / ca.MITMPROXY_FILE, sources["ca-secret"] / ca.MITMPROXY_FILE)
    tokens.load_or_create_key(sources["keys-secret"] / "token.key")
    signing_key(sources["keys-secret"] / "audit-signing.key")
    for f in list(sources["ca-secret"].iterdir()) + list(sources["keys-secret"].iterdir()):
        f.chmod(0o440)
    revocations = moved("/etc/egressguard/revocations")
    revocations.mkdir(parents=True)
    (revocations / "revoked-tokens").write_text("0123456789abcdef\n")
    local = script.replace("/etc/egressguard/", f"{tmp_path}/etc/egressguard/") \
        .replace("/var/lib/egressguard/", f"{tmp_path}/var/lib/egressguard/")
    for _ in range(2):
        done = subprocess.run(["sh", "-ec", local], capture_output=True, text=True,
                              timeout=30, check=False)
        assert done.returncode == 0, done.stderr
    state, certs = moved(str(args.state)), moved(str(args.certs))
    ca.init(certs)  # KeyFileExposed if the copy were group-readable
    keyfiles.read_private(state / "token.key", "token key", "-")
    signing_key(state / "audit-signing.key")
    assert tokens.RevocationList(state / "revoked-tokens").contains("0123456789abcdef")


def test_k8s_egressguard_reaches_vault_only_through_the_sidecar() -> None:
    env = {e["name"]: e.get("value") for e in proxy_container()["env"]}
    assert not {"VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID"} & set(env)
    hcl = configmap("egressguard-openbao-proxy")["proxy.hcl"]
    listener = hcl_block(hcl, 'listener "tcp"')
    address = hcl_value(listener, "address")
    assert ipaddress.ip_address(address.rpartition(":")[0]).is_loopback
    assert urlsplit(env["VAULT_ADDR"]).netloc == address
    assert re.search(r"use_auto_auth_token\s*=\s*true", hcl_block(hcl, "api_proxy"))
    (sidecar,) = [c for c in statefulset()["spec"]["template"]["spec"]["initContainers"]
                  if c["name"] == "openbao-proxy"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: up before egressguard"
    assert sidecar["command"][:2] == ["bao", "proxy"]


def allowed_ports(rules: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for rule in rules for p in rule.get("ports", [])}


def test_k8s_network_policies() -> None:
    """Agents: out only to the proxy port of egressguard's pods and to DNS. The proxy:
    in from agents; out to vendors on 443, Vault, Redis and the SIEM on their ports."""
    (agents,) = find("NetworkPolicy", "egress-only-through-egressguard")
    assert agents["spec"]["podSelector"] == {} and agents["spec"]["policyTypes"] == ["Egress"]
    args = proxy_args()
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    to_proxy, dns = agents["spec"]["egress"]
    (peer,) = to_proxy["to"]
    assert peer["namespaceSelector"]["matchLabels"] == \
        {"kubernetes.io/metadata.name": NAMESPACES["egressguard"]}
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert allowed_ports([to_proxy]) == {args.listen[1]}
    assert allowed_ports([dns]) == {53}

    (proxy,) = find("NetworkPolicy", "egressguard")
    (from_agents, *_) = proxy["spec"]["ingress"]
    assert from_agents["from"][0]["namespaceSelector"]["matchLabels"] == \
        {"kubernetes.io/metadata.name": NAMESPACES["agents"]}
    assert allowed_ports([from_agents]) == {args.listen[1]}
    out = allowed_ports(proxy["spec"]["egress"])
    vault = urlsplit(hcl_value(hcl_block(configmap("egressguard-openbao-proxy")[
        "proxy.hcl"], "vault"), "address"))
    redis = urlsplit(args.limits_store)
    sinks = parse_sinks(configmap("egressguard-sinks")["sinks.yaml"], "sinks")
    needed = {53, 443, vault.port, redis.port} | {sink_endpoint(s)[1] for s in sinks.sinks}
    assert needed <= out, f"egress not allowed to ports {needed - out}"


# -- systemd ----------------------------------------------------------------------------
UNIT_PATH = DEPLOY / "systemd" / "egressguard.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(re.sub(r"\\\n\s*", " ", UNIT_PATH.read_text()))
    return parser


def exec_start() -> list[str]:
    return shlex.split(unit()["Service"]["ExecStart"])


def test_systemd_unit_is_hardened_and_stops_gracefully() -> None:
    service = unit()["Service"]
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                "ProtectHome": "yes", "CapabilityBoundingSet": "", "Restart": "on-failure",
                "KillMode": "mixed", "User": "egressguard"}
    assert {k: service.get(k) for k in expected} == expected
    assert service["EnvironmentFile"].startswith("/etc/egressguard/")
    assert "egressguard" in service["StateDirectory"].split()
    args = run_args(exec_start()[1:])
    assert seconds(service["TimeoutStopSec"]) > args.shutdown_grace + SHIPPER_STOP
    assert "[Install]" in UNIT_PATH.read_text()


def test_systemd_execstart_is_a_valid_run_on_its_directories() -> None:
    argv = exec_start()
    assert argv[0] == "/opt/egressguard/bin/egressguard"
    args = run_args(argv[1:])
    service = unit()["Service"]
    state_dirs = [f"/var/lib/{d}" for d in service["StateDirectory"].split()]
    for path in (args.state, args.journal, args.certs):
        assert str(path) in state_dirs, f"{path} is no StateDirectory (read-only there)"
    for path in (args.policy, args.sinks):
        assert under(str(path), "/etc/egressguard"), path
    assert args.metrics_listen is not None


def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` without a complaint (the binary path moved to a
    stand-in that exists), and an exposure level it calls OK."""
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    stand_in = tmp_path / "egressguard"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    path = tmp_path / "egressguard.service"
    path.write_text(UNIT_PATH.read_text().replace("/opt/egressguard/bin/egressguard",
                                                  str(stand_in)))
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    done = subprocess.run([analyze, "security", "--offline=true", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert level, done.stdout[-500:] + done.stderr
    assert float(level.group(1)) <= 2.0, done.stdout


def test_systemd_env_example_names_only_known_variables() -> None:
    text = (DEPLOY / "systemd" / "egressguard.env.example").read_text()
    names = {line.split("=")[0].lstrip("# ").strip() for line in text.splitlines()
             if re.match(r"#?\s*[A-Z_]+=", line)}
    assert {"VAULT_ADDR", "VAULT_ROLE_ID", "VAULT_SECRET_ID"} <= names
    vault_names = {"VAULT_ADDR", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID",
                   "VAULT_NAMESPACE", "VAULT_CACERT"}
    assert {n for n in names if n.startswith("VAULT_")} <= vault_names


# -- deploy/README.md -------------------------------------------------------------------
def test_deploy_readme_covers_every_way_to_run() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "arrive with" not in text
    for heading in ("## The image: `Dockerfile`", "## Compose: `compose.yaml`",
                    "## Kubernetes: `k8s/`", "## systemd: `systemd/`",
                    "## Dependencies: `requirements.lock`"):
        assert heading in text, heading
