"""Two egressguard replicas behind a load balancer, as `deploy/compose.yaml` runs them,
on loopback with the same real processes, set up from the deploy files themselves:
OpenBao with AppRole made by `deploy/vault/init.sh` (run as compose's `vault-init`
runs it, with compose's NODES: a policy that reads only the egressguard keys, one
SecretID file per replica, which each replica is started with), one redis-server for
the shared counters, rsyslogd as the SIEM (each replica ships its own journal to it
over TCP), haproxy on `deploy/haproxy/haproxy.cfg` (TCP mode, `balance source`,
/readyz health checks on each replica's metrics port; tests/haproxy.py changes only
addresses and ports), the fake vendor as the model vendor, and agents holding only
tokens: the openai SDK and curl, both pointed at the balancer through HTTPS_PROXY.

The scenario runs once (module fixtures): curl sends one request, then two openai
SDK agents take turns for nine more; team `fleet` may send six requests a minute.
The balancer hashes an agent's source address, so each agent connects from its own
loopback address (127.0.0.x, on `lo` as all of 127/8 is), chosen so that the hash
sends the two SDK agents to different replicas; an agent keeps its connection, so
each replica answers some and refuses some, refusing while it has itself allowed
fewer than six, which only a shared counter explains. Each test below checks one
property of that run.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import hvac
import openai
import orjson
import pytest
import requests
import yaml
from secret_registry import register

from egressguard.backends.journal import read_records
from egressguard.tools.localvault import bao_binary
from egressguard.tools.procs import free_port, wait_until
from egressguard.tools.stack import Stack
from tests.e2e.conftest import fake_key, headers_of
from tests.haproxy import HAProxy, deploy_servers
from tests.redis_server import RedisServer
from tests.rsyslog import Rsyslog

pytestmark = pytest.mark.e2e
RID = "x-egressguard-request-id"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INIT_SH = DEPLOY / "vault" / "init.sh"
# the replicas as compose names them: vault-init's NODES, haproxy's servers
NODES = tuple(yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][
    "vault-init"]["environment"]["NODES"].split())
assert len(NODES) == 2 and list(NODES) == deploy_servers(), NODES
# the role and policy init.sh makes; keys under secret/ (egressguard-policy.hcl)
ROLE, POLICY = (re.search(rf"^{var}=(\S+)$", INIT_SH.read_text(), re.M)[1]  # type: ignore[index]
                for var in ("ROLE", "POLICY"))
KV_MOUNT = "secret"
# each agent's source address: `balance source` (consistent hash) puts fleet-1 and
# fleet-2 on different replicas (asserted by the first test, which fails if not)
SOURCES = {"fleet-curl": "127.0.0.2", "fleet-1": "127.0.0.3", "fleet-2": "127.0.0.4"}
CAP = 6  # team fleet's requests_per_minute
SDK_REQUESTS = 9  # after curl's one: 10 in all, the last 4 over the cap
KEY_PATH = "egressguard/vendors/openai"
POLICY_YAML = f"""\
version: 1
secrets: {{mount: {KV_MOUNT}, field: api_key, path: "egressguard/vendors/{{vendor}}"}}
teams:
  fleet: {{limits: {{requests_per_minute: {CAP}}}}}
agents:
  fleet-curl: {{team: fleet}}
  fleet-1: {{team: fleet}}
  fleet-2: {{team: fleet}}
rules:
  - name: fleet-openai
    match: {{teams: [fleet], vendors: [openai]}}
"""
_SD = re.compile(rb'^<\d+>1 \S+ (\S+) \S+ - \S+ \[egressguard@32473 id="([0-9a-f]{32})" '
                 rb'seq="(\d+)"\] (.*)$')


@dataclass
class Cluster:
    stack: Stack  # OpenBao, the fake vendor, token key and CA; runs no proxy itself
    role_id: str = field(repr=False)  # init.sh's role_id file
    secret_ids: dict[str, str] = field(repr=False)  # init.sh's secret_id.NODE files
    replicas: dict[str, Stack]
    balancer: HAProxy
    rsyslog: Rsyslog
    redis: RedisServer
    key: str = field(repr=False)  # the real (made-up) vendor key in OpenBao


@dataclass(frozen=True)
class Sent:
    """One agent request: who sent it, the marker in its prompt, what it got."""

    agent: str
    marker: str
    status: int
    request_id: str


@dataclass
class Run:
    sent: list[Sent]
    tokens: list[str] = field(repr=False)
    received: list[dict[str, Any]] = field(repr=False)  # what the vendor got in the run
    records: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # by id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("replicas")
    (policy := work / "policy.yaml").write_text(POLICY_YAML)
    with contextlib.ExitStack() as running:  # stopped in reverse: balancer first
        stack = Stack(work, policy=policy).start(proxy=False)
        running.callback(stack.stop)
        register(stack.vault.root_token, "vault token")
        redis_server = running.enter_context(RedisServer())
        rsyslog = running.enter_context(Rsyslog(work / "rsyslog"))
        role_id, secret_ids = vault_init(stack, work / "approle")
        key = fake_key()
        stack.put_key("openai", key)  # as the operator, with the root token
        (sinks := work / "sinks.yaml").write_text(f"""\
version: 1
sinks:
  - name: siem
    type: syslog
    address: 127.0.0.1:{rsyslog.plain_port}
    transport: tcp
    format: json
    batch: {{max_wait: 100ms}}
    retry: {{initial: 200ms, max: 2s}}
""")
        replicas, metrics = {}, {}
        for node in NODES:  # one after the other: the first creates the CA
            metrics[node] = free_port()  # haproxy health-checks /readyz there
            replicas[node] = running.enter_context(stack.replica(
                node, limits_store=redis_server.url,
                # as the image's entrypoint does with VAULT_*_FILE: the files' contents
                vault_env={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_ids[node]},
                proxy_args=("--node", node, "--sinks", str(sinks),
                            "--metrics-listen", f"127.0.0.1:{metrics[node]}",
                            "--checkpoint-seconds", "1")))
        balancer = running.enter_context(
            HAProxy({n: (r.proxy_port, metrics[n]) for n, r in replicas.items()}))
        yield Cluster(stack, role_id, secret_ids, replicas, balancer, rsyslog,
                      redis_server, key)


def vault_init(stack: Stack, approle: Path) -> tuple[str, dict[str, str]]:
    """deploy/vault/init.sh as compose's vault-init runs it (and tests/test_deploy.py):
    the `bao` CLI, the admin (root) token, APPROLE_DIR and compose's NODES; the RoleID
    and each node's SecretID from the files it writes, read as the image's entrypoint
    reads VAULT_*_FILE (`$(cat FILE)`: without the trailing newline)."""
    ambient = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
               "all_proxy", "VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR", "BAO_ADDR")
    env = {k: v for k, v in os.environ.items() if k not in ambient}
    done = subprocess.run(
        ["sh", str(INIT_SH)], capture_output=True, text=True, timeout=60, check=False,
        env=env | {"BAO_ADDR": stack.vault.addr, "BAO_TOKEN": stack.vault.root_token,
                   "HOME": str(stack.workdir), "APPROLE_DIR": str(approle),
                   "NODES": " ".join(NODES),
                   "PATH": f"{bao_binary().parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, f"init.sh: {done.stdout}\n{done.stderr}"
    assert sorted(p.name for p in approle.iterdir()) == \
        ["role_id", *sorted(f"secret_id.{n}" for n in NODES)]
    role_id = (approle / "role_id").read_text().rstrip("\n")
    secret_ids = {n: register((approle / f"secret_id.{n}").read_text().rstrip("\n"),
                              "vault token") for n in NODES}
    assert role_id and all(secret_ids.values())
    return role_id, secret_ids


@pytest.fixture(scope="module")
def run(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The agents' traffic, once: curl, then two SDK agents taking turns."""
    stack = cluster.stack
    tokens = [stack.token(agent) for agent in ("fleet-curl", "fleet-1", "fleet-2")]
    stack.reset_received()
    sent = [curl_chat(cluster, tokens[0], "request 0", tmp_path_factory.mktemp("curl"))]
    clients = [sdk_agent(cluster, token, SOURCES[agent])
               for agent, token in zip(("fleet-1", "fleet-2"), tokens[1:], strict=True)]
    try:
        for i in range(1, SDK_REQUESTS + 1):
            sent.append(sdk_chat(clients[(i - 1) % 2], f"fleet-{(i - 1) % 2 + 1}",
                                 f"request {i}"))
    finally:
        for client in clients:
            client.close()
    done = Run(sent, tokens, stack.received())
    for replica in cluster.replicas.values():
        done.records |= {r["id"]: r for r in replica.records()}
    return done


# -- agents ----------------------------------------------------------------------------------
def sdk_agent(cluster: Cluster, token: str, source: str) -> openai.OpenAI:
    """The openai SDK as an agent is set up: SSL_CERT_FILE in its environment (read
    when the client is made), the token as its API key, the balancer as its proxy.
    Connecting from `source` takes a transport of its own, and httpx2 (the SDK's HTTP
    client) reads no proxy from the environment for a client given a transport: the
    proxy (what HTTPS_PROXY would say) is passed explicitly."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_CERT_FILE", str(cluster.stack.ca_bundle))
        for var in ("NO_PROXY", "no_proxy", "SSL_CERT_DIR"):
            env.delenv(var, raising=False)
        transport = httpx2.HTTPTransport(proxy=cluster.balancer.url, local_address=source)
        return openai.OpenAI(api_key=token, base_url="https://api.openai.com/v1",
                             max_retries=0, timeout=30,
                             http_client=openai.DefaultHttpxClient(transport=transport))


def sdk_chat(client: openai.OpenAI, agent: str, marker: str) -> Sent:
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": marker}])
    except openai.APIStatusError as exc:
        return Sent(agent, marker, exc.status_code, exc.response.headers[RID])
    return Sent(agent, marker, raw.http_response.status_code, raw.headers[RID])


def curl_chat(cluster: Cluster, token: str, marker: str, tmp: Path) -> Sent:
    """curl through HTTPS_PROXY, trusting the interception CA, the token as API key."""
    body = orjson.dumps({"model": "gpt-4o-mini",
                         "messages": [{"role": "user", "content": marker}]})
    head = tmp / "headers.txt"
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(cluster.stack.ca_cert),
         "--interface", SOURCES["fleet-curl"],
         "-H", f"Authorization: Bearer {token}", "-H", "content-type: application/json",
         "--data-binary", "@-", "-D", str(head), "-o", os.devnull, "-w", "%{http_code}",
         "https://api.openai.com/v1/chat/completions"],
        input=body, capture_output=True, timeout=30, check=False,
        env=env | {"HTTPS_PROXY": cluster.balancer.url})
    assert done.returncode == 0, done.stderr
    # -D also holds the proxy's answer to CONNECT: the last block is the response's
    last = [b for b in head.read_bytes().decode().split("\r\n\r\n") if b.strip()][-1]
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (line.partition(":") for line in last.split("\r\n")[1:])}
    return Sent("fleet-curl", marker, int(done.stdout), headers[RID])


# -- what the SIEM and the journals hold ---------------------------------------------------
@dataclass(frozen=True)
class Delivered:
    """One syslog message as rsyslogd wrote it: the header's host and the structured
    data's id and seq, and the record in its body."""

    host: str
    id: str
    seq: int
    record: dict[str, Any]


def delivered(rsyslog: Rsyslog) -> list[Delivered]:
    out = []
    for line in rsyslog.messages():
        match = _SD.match(line)
        assert match, f"not an egressguard syslog message: {line[:200]!r}"
        host, rid, seq, body = match.groups()
        out.append(Delivered(host.decode(), rid.decode(), int(seq), orjson.loads(body)))
    return out


def settled(cluster: Cluster) -> bool:
    """Each journal ends with a checkpoint (a replica writes one a second after its last
    record) and rsyslogd holds exactly the records of both."""
    journals = [replica.records() for replica in cluster.replicas.values()]
    return all(j and j[-1]["kind"] == "checkpoint" for j in journals) and \
        {r["id"] for j in journals for r in j} == {d.id for d in delivered(cluster.rsyslog)}


# -- the tests --------------------------------------------------------------------------------
def test_the_balancer_spreads_agents_over_both_replicas(cluster: Cluster, run: Run) -> None:
    """Every request has its one record in exactly one replica's journal, written with
    that replica's `node`; both replicas served agents, each over connections the
    balancer gave it, and `balance source` sent the two SDK agents (different source
    addresses) to different replicas."""
    by_node = {node: {r["id"]: r for r in replica.records()}
               for node, replica in cluster.replicas.items()}
    for node, records in by_node.items():
        assert {r["node"] for r in records.values()} == {node}
    where = [[n for n in NODES if s.request_id in by_node[n]] for s in run.sent]
    assert all(len(w) == 1 for w in where), where
    served = Counter(w[0] for w in where)
    assert set(served) == set(NODES), served
    connections = cluster.balancer.connections()
    assert all(connections[n] >= 1 for n in NODES), connections
    # an agent keeps its connection, so all its requests went through one replica
    for agent in ("fleet-curl", "fleet-1", "fleet-2"):
        assert len({w[0] for s, w in zip(run.sent, where, strict=True)
                    if s.agent == agent}) == 1
    via = {s.agent: w[0] for s, w in zip(run.sent, where, strict=True)}
    assert via["fleet-1"] != via["fleet-2"], (via, "pick other SOURCES for this hash")


def test_the_team_budget_is_shared_through_redis(cluster: Cluster, run: Run) -> None:
    """Team fleet may send 6 requests a minute: of 10 sent through both replicas,
    exactly the first 6 are answered and the other 4 refused with 429
    `limit_exceeded`, and each replica refused some while it had allowed fewer than 6
    itself: the count it refused on (6 used) is the team's, kept in Redis."""
    assert [s.status for s in run.sent] == [200] * CAP + [429] * (len(run.sent) - CAP)
    records = [run.records[s.request_id] for s in run.sent]
    assert [r["decision"] for r in records] == ["allow"] * CAP + ["deny"] * 4
    for node in NODES:
        mine = [r for r in records if r["node"] == node]
        allowed = [r for r in mine if r["decision"] == "allow"]
        refused = [r for r in mine if r["decision"] == "deny"]
        assert 0 < len(allowed) < CAP and refused, (node, [r["decision"] for r in mine])
        for r in refused:
            assert (r["reason"], r["status"]) == ("limit_exceeded", 429)
            assert r["limits"] | {"retry_after": 0} == {
                "state": "exceeded", "limit": "requests_per_minute", "scope": "team:fleet",
                "cap": CAP, "used": CAP, "needed": 1, "retry_after": 0}
    assert len(run.received) == CAP  # nothing refused reached the vendor


def test_the_vendor_gets_the_vault_key_through_each_replica(cluster: Cluster,
                                                           run: Run) -> None:
    """Each request the vendor received carries the key stored in OpenBao, whichever
    replica forwarded it (both did), and no agent token; the records name the key's
    path and version, never its value."""
    by_marker = {s.marker: s for s in run.sent}
    through = set()
    for got in run.received:
        marker = orjson.loads(got["body"])["messages"][-1]["content"]
        record = run.records[by_marker[marker].request_id]
        through.add(record["node"])
        assert [v for k, v in headers_of(got) if k == "authorization"] == \
            [f"Bearer {cluster.key}"]
        assert not any(t in orjson.dumps(got).decode() for t in run.tokens)
        assert record["credential"] == {"path": f"{KV_MOUNT}/{KEY_PATH}", "version": 1}
    assert through == set(NODES)
    journals = b"".join(orjson.dumps(r) for r in run.records.values()).decode()
    assert cluster.key not in journals


def test_the_replicas_log_in_to_openbao_with_their_own_approle_secret_id(
        cluster: Cluster, run: Run) -> None:
    """Neither proxy holds the root token (nor any VAULT_TOKEN): each has the RoleID
    and its own SecretID, and OpenBao holds a token of the role for each (the SecretID's
    metadata names the replica), with the egressguard policy only, which reads the
    keys and nothing else."""
    for node, replica in cluster.replicas.items():
        env = dict(item.split(b"=", 1) for item in Path(
            f"/proc/{replica.proxy_pid}/environ").read_bytes().split(b"\0") if b"=" in item)
        assert b"VAULT_TOKEN" not in env
        assert cluster.stack.vault.root_token.encode() not in b"\0".join(env.values())
        assert env[b"VAULT_ROLE_ID"].decode() == cluster.role_id, node
        assert env[b"VAULT_SECRET_ID"].decode() == cluster.secret_ids[node], node
    root = cluster.stack.vault.client()
    logins = [root.auth.token.lookup_accessor(a)["data"] for a in
              root.auth.token.list_accessors()["data"]["keys"]]
    ours = [t for t in logins if (t.get("meta") or {}).get("role_name") == ROLE]
    assert {t["meta"]["node"] for t in ours} == set(NODES)
    assert all(sorted(t["policies"]) == ["default", POLICY] for t in ours)

    for node in NODES:  # what each replica's own credentials may do
        probe_approle(cluster, approle_client(cluster, cluster.secret_ids[node]))


def probe_approle(cluster: Cluster, probe: hvac.Client) -> None:
    try:
        assert probe.secrets.kv.v2.read_secret_version(
            path=KEY_PATH, mount_point=KV_MOUNT, raise_on_deleted_version=True
        )["data"]["data"] == {"api_key": cluster.key}
        cluster.stack.vault.put_secret("other-app/openai", {"api_key": "not-for-egress"})
        with pytest.raises(hvac.exceptions.Forbidden):
            probe.secrets.kv.v2.read_secret_version(path="other-app/openai",
                                                    mount_point=KV_MOUNT)
        with pytest.raises(hvac.exceptions.Forbidden):
            probe.secrets.kv.v2.create_or_update_secret(path=KEY_PATH,
                                                        secret={"api_key": "x" * 12},
                                                        mount_point=KV_MOUNT)
    finally:
        probe.adapter.close()


def approle_client(cluster: Cluster, secret_id: str) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False
    client = hvac.Client(url=cluster.stack.vault.addr, timeout=5, session=session)
    client.auth.approle.login(role_id=cluster.role_id, secret_id=secret_id)
    return client


def test_every_record_of_both_replicas_reaches_rsyslog_and_both_journals_verify(
        cluster: Cluster, run: Run) -> None:
    """Once the replicas are idle (their last checkpoint written), rsyslogd holds
    exactly the records of both journals: none lost, none from elsewhere, each once
    (nothing failed, so nothing was resent), each replica's in seq order 1..n under
    its own host name. Both journals verify, checkpoint signatures included."""
    wait_until(lambda: settled(cluster), timeout=20,
               what="both journals to end with a checkpoint, and rsyslogd to hold them")
    got = delivered(cluster.rsyslog)
    journals = {node: list(read_records([r.journal])) for node, r in cluster.replicas.items()}
    assert {s.request_id for s in run.sent} <= {d.id for d in got}
    assert [i for i, n in Counter(d.id for d in got).items() if n > 1] == []
    for node, records in journals.items():
        mine = [d for d in got if d.record["node"] == node]
        assert [d.seq for d in mine] == list(range(1, len(records) + 1)), node
        assert {d.host for d in mine} == {node}
        assert [d.record for d in mine] == records  # the record as written, field by field
        assert any(r["kind"] == "checkpoint" for r in records), node

    state = cluster.stack.state
    pubkey = cluster.stack.workdir / "audit.pub"
    printed = audit("pubkey", "--state", str(state))
    assert printed.returncode == 0, printed.stderr
    pubkey.write_text(printed.stdout)
    verified = audit("verify", "--pubkey", str(pubkey),
                     *(str(r.journal) for r in cluster.replicas.values()))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    signed = re.search(r"(\d+) checkpoints, (\d+) signatures verified", verified.stdout)
    assert signed and int(signed[2]) == int(signed[1]) >= len(NODES), verified.stdout


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", *args],
                          capture_output=True, text=True, check=False, timeout=60)
