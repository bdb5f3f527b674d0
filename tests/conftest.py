"""Fixtures for addon-level tests: the whole pipeline in-process, no proxy, no network.

mitmproxy's test helpers (`taddons`, `tflow`, `tutils`) have no stable API, so they are
used only here, behind the `pipeline` fixture. It builds fresh instances of every addon
in `egressguard.addons` order inside `taddons.context`, configures them with temporary
policy, journal, token key and revocation files, and drives flows through the hooks in
the order mitmproxy calls them. Nothing here is autouse.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import secret_registry
from mitmproxy import connection, hooks, http, tls
from mitmproxy.proxy import context
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.test import taddons, tflow, tutils

import egressguard
from egressguard.backends.journal import journal_files, read_records
from egressguard.core import tokens
from egressguard.core.errors import SecretUnavailable
from egressguard.core.secret import Secret, SecretLocation, SecretRef
from egressguard.core.vendors import Vendor
from egressguard.pipeline.inject import Inject
from egressguard.pipeline.upstream import UpstreamMap
from egressguard.tools.fakesiem import DEFAULT_HEC_TOKEN, SiemControl
from egressguard.tools.procs import start_announced, stop_announced


def pytest_configure(config: pytest.Config) -> None:
    """Tests that run the `egressguard` command find this interpreter's copy first,
    whether pytest was started by `make test` or straight from the venv."""
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])


# -- the secret sweep (tests/test_zz_secret_sweep.py) -----------------------------------
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The sweep reads what every other test wrote, so it runs last (tests/e2e/ and
    any later test file would otherwise be free to run after it)."""
    last = [item for item in items if item.path.name == SWEEP]
    items[:] = [item for item in items if item.path.name != SWEEP] + last


SWEEP = "test_zz_secret_sweep.py"


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """Fixtures' credentials (a Stack's Vault root token, a server's password) join the
    values the sweep looks for."""
    value = yield
    secret_registry.register_credentials_of(value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """What a fake SIEM received during the test, while its fixture still runs (it
    forgets at the next test's reset), for the sweep."""
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, SiemControl):
            try:
                received = value.received()
            except httpx.HTTPError:  # a test that stopped it: nothing left to read
                continue
            secret_registry.capture(f"{item.nodeid} (fake SIEM received)",
                                    orjson.dumps(received).decode())
    return (yield)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's captured stdout, stderr and log lines, for the sweep (the teardown
    report carries those of every phase)."""
    if report.when == "teardown":
        for title, text in report.sections:
            secret_registry.capture(f"{report.nodeid} ({title})", text)


DEFAULT_POLICY = """\
version: 1
passthrough:
  - pypi.org
  - "*.githubusercontent.com"
secrets:
  teams:
    red: egressguard/teams/{team}/{vendor}
rules:
  - name: everyone
"""

# Stand-ins for the real keys the store hands out; tests assert they never leak.
REAL_KEYS = {v: secret_registry.register(f"real-{v}-key-" + "0123456789" * 3, "vendor key")
             for v in ("openai", "anthropic", "google", "azure_openai", "mistral")}
SECRET_VERSION = 7

REQUEST_HOOKS = ("requestheaders", "request", "responseheaders", "response")
_REQUEST_PHASE = ("requestheaders", "request", "responseheaders")


def default_location(vendor: str) -> SecretLocation:
    return SecretLocation("secret", f"egressguard/vendors/{vendor}", "api_key")


PUBLIC_ADDRESS = "93.184.215.14"  # what every name resolves to in addon tests


class FakeResolver:
    """In-memory `Resolver` (the Protocol in pipeline/upstream.py), since tests have no
    DNS: every name resolves to PUBLIC_ADDRESS unless `answers[name]` lists answers,
    one per lookup, the last repeated (so a name can change its answer: DNS
    rebinding); an empty answer fails like an unknown name. `asked` logs lookups."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        queue = self.answers.get(host) or [[PUBLIC_ADDRESS]]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer


class FakeSecretStore:
    """In-memory `SecretStore` (the Protocol in backends/vault.py): a dict from
    location to key. A unit-test double of our own Protocol, not of Vault."""

    def __init__(self, values: Mapping[SecretLocation, str]) -> None:
        self.values = dict(values)
        self.asked: list[SecretLocation] = []

    async def get(self, vendor: Vendor, where: SecretLocation) -> Secret:
        self.asked.append(where)
        if where not in self.values:
            raise SecretUnavailable(f"no vendor key available from {where.mount}/"
                                    f"{where.path}: no key stored there",
                                    reason="secret_missing")
        return Secret(self.values[where], SecretRef(f"{where.mount}/{where.path}",
                                                    SECRET_VERSION), vendor.hosts)


@dataclass
class Upstream:
    """What the fake vendor answers: a buffered body, or SSE chunks if streamed."""

    status: int = 200
    headers: dict[str, str] = field(
        default_factory=lambda: {"content-type": "application/json"})
    chunks: tuple[bytes, ...] = (b'{"id": "resp-1", "usage": {"prompt_tokens": 3, '
                                 b'"completion_tokens": 5}}',)

    @classmethod
    def sse(cls, *chunks: bytes) -> Upstream:
        return cls(headers={"content-type": "text/event-stream"}, chunks=chunks)

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Upstream:
        return cls(status=status, chunks=(orjson.dumps(body),))


class Pipeline:
    """The configured addons plus helpers to build flows and call hooks on them.

    Each addon is an attribute named after its class, lower-cased (`pipeline.egress`,
    `.identity`, `.vendorrequest`, `.inject`, `.responsewatch`, `.audit`, ...); `store`
    is the FakeSecretStore, `files` the temporary files, `authority` mints tokens with
    the proxy's own key. `run(flow)` is the run-the-pipeline helper."""

    Upstream = Upstream
    REAL_KEYS = REAL_KEYS

    def __init__(self, tctx: taddons.context, addons: list[Any], files: dict[str, Path],
                 store: FakeSecretStore) -> None:
        self.tctx, self.addons, self.files, self.store = tctx, addons, files, store
        self.authority = tokens.TokenAuthority(tokens.load_or_create_key(files["token_key"]))
        for addon in addons:
            setattr(self, type(addon).__name__.lower(), addon)  # pipeline.egress, ...

    # -- identities ---------------------------------------------------------------
    def issue(self, agent: str = "agent-a", team: str | None = None, ttl: int = 3600,
              now: float | None = None) -> tuple[str, tokens.Principal]:
        return self.authority.issue(agent, team, ttl, now=now)

    def token(self, agent: str = "agent-a", team: str | None = None, **kw: Any) -> str:
        return self.issue(agent, team, **kw)[0]

    def revoke(self, token_id: str) -> None:
        tokens.RevocationList(self.files["revoked"]).add(token_id)

    @staticmethod
    def basic(user: str, password: str) -> str:
        """A `Proxy-Authorization` value."""
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    # -- flows --------------------------------------------------------------------
    @staticmethod
    def client() -> connection.Client:
        """A fresh client connection that has not done TLS with us."""
        client = tflow.tclient_conn()
        client.tls, client.timestamp_tls_setup, client.sni, client.alpn = False, None, None, None
        return client

    def connect(self, host: str, port: int = 443, headers: Iterable[tuple[str, str]] = (),
                client: connection.Client | None = None) -> http.HTTPFlow:
        """A CONNECT flow as mitmproxy builds it (not yet run)."""
        now = time.time()
        req = tutils.treq(method=b"CONNECT", host=host, port=port, scheme=b"",
                          authority=f"{host}:{port}".encode(), path=b"",
                          headers=_headers(headers), content=b"",
                          timestamp_start=now, timestamp_end=now)
        return tflow.tflow(client_conn=client or self.client(), req=req)

    def client_hello(self, client: connection.Client, sni: str | None) -> tls.ClientHelloData:
        """`tls_clienthello` data carrying a real ClientHello (made by `ssl`)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        out = ssl.MemoryBIO()
        try:
            ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni).do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = parse_client_hello(out.read())
        assert hello is not None and hello.sni == sni
        return tls.ClientHelloData(context.Context(client, self.tctx.options), hello)

    def tunnel(self, host: str, *, proxy_auth: str | None = None, sni: str | None = "",
               port: int = 443, handshake: bool = True) -> http.HTTPFlow:
        """Run a CONNECT and, if accepted and `handshake`, the TLS ClientHello (SNI `sni`,
        default the host; None for no SNI), then mark the client's TLS established.
        Returns the CONNECT flow; `request(tunnel)` builds requests inside it."""
        headers = [("Proxy-Authorization", proxy_auth)] if proxy_auth else []
        flow = self.connect(host, port, headers)
        self.run(flow)
        if handshake and (flow.response is None or flow.response.status_code < 300):
            self.hook("tls_clienthello", self.client_hello(
                flow.client_conn, host if sni == "" else sni))
            flow.client_conn.tls, flow.client_conn.timestamp_tls_setup = True, time.time()
        return flow

    def request(self, tunnel: http.HTTPFlow, path: str = "/v1/chat/completions", *,
                method: str = "POST", headers: Iterable[tuple[str, str | bytes]] = (),
                body: bytes | Any = b"", host_header: str | None = "") -> http.HTTPFlow:
        """A request inside the tunnel `tunnel` was opened by, as mitmproxy presents it
        (origin-form: host/port from the CONNECT target, scheme https). A non-bytes `body`
        is sent as JSON. `host_header` defaults to the CONNECT host; None omits it."""
        host, port = tunnel.request.host, tunnel.request.port
        hdrs = [("Host", host if host_header == "" else host_header)] if host_header is not None \
            else []
        if not isinstance(body, bytes):
            body, hdrs = orjson.dumps(body), [*hdrs, ("content-type", "application/json")]
        now = time.time()
        req = tutils.treq(method=method.encode(), host=host, port=port, scheme=b"https",
                          authority=b"", path=path.encode("utf-8", "surrogateescape"),
                          headers=_headers([*hdrs, *headers]), content=body,
                          timestamp_start=now, timestamp_end=now)
        server = tflow.tserver_conn()
        server.address = (host, port)
        return tflow.tflow(client_conn=tunnel.client_conn, server_conn=server, req=req)

    def plain_request(self, url: str, *, headers: Iterable[tuple[str, str]] = (),
                      client: connection.Client | None = None) -> http.HTTPFlow:
        """A proxy request in absolute form (`GET http://host/...`), not in a tunnel."""
        req = http.Request.make("GET", url, b"", _headers(headers))
        req.headers.insert(0, "Host", req.host)
        return tflow.tflow(client_conn=client or self.client(), req=req)

    def send(self, host: str, path: str = "/v1/chat/completions", *,
             proxy_auth: str | None = None, upstream: Upstream | None = None,
             **kw: Any) -> http.HTTPFlow:
        """A fresh tunnel to `host`, one request through the whole pipeline."""
        flow = self.request(self.tunnel(host, proxy_auth=proxy_auth), path, **kw)
        self.run(flow, upstream=upstream)
        return flow

    # -- hooks --------------------------------------------------------------------
    def hook(self, name: str, data: Any, *, swallow_errors: bool = False) -> None:
        """Call hook `name` on every addon in pipeline order, awaiting async ones.

        Exceptions propagate, so a hook that raises fails the test. With
        `swallow_errors` they are dropped as mitmproxy does (addonmanager.safecall:
        log and carry on) -- to show what a raising hook means in production."""
        event = hooks.all_hooks[name](data)
        for addon in self.addons:
            try:
                self.tctx.master.event_loop.run_until_complete(
                    self.tctx.master.addons.invoke_addon(addon, event))
            except Exception:
                if not swallow_errors:
                    raise

    def run(self, flow: http.HTTPFlow, hooks: Iterable[str] | None = None, *,
            upstream: Upstream | None = None, swallow_errors: bool = False) -> bytes | None:
        """Drive `flow` through `hooks` (default: all of them, in mitmproxy's order).

        A CONNECT flow gets `http_connect`, then `http_connect_error` if refused or
        `http_connected` if not. A
        request gets requestheaders -> request -> (the fake vendor answers with
        `upstream` unless an addon already answered) -> responseheaders -> (stream
        chunks through `response.stream`) -> response. A flow killed in the request
        phase gets `error` and stops. Returns the body the agent receives: streamed
        chunks as sent, a buffered body only if `response` ran and did not kill the flow."""
        upstream = upstream or Upstream()
        connect = flow.request.method == "CONNECT"
        full = hooks is None
        names = list(("http_connect",) if connect and full else hooks or REQUEST_HOOKS)
        streamed: list[bytes] | None = None
        answered = False
        for name in names:
            if name in ("responseheaders", "response") and flow.response is None:
                flow.response, answered = _answer(upstream), True
            if name == "response" and answered:
                if callable(flow.response.stream):
                    streamed = []
                    for chunk in (*upstream.chunks, b""):
                        out = flow.response.stream(chunk)  # bytes, or a list of them
                        streamed += [out] if isinstance(out, bytes) else out
                else:
                    flow.response.data.content = b"".join(upstream.chunks)
                flow.response.timestamp_end = time.time()
            self.hook(name, flow, swallow_errors=swallow_errors)
            if _killed(flow):
                if full and name in _REQUEST_PHASE:
                    self.hook("error", flow, swallow_errors=swallow_errors)
                # streamed chunks were already sent; only the end of the stream is not
                return b"".join(streamed) if streamed is not None else None
        if connect and full and flow.response and flow.response.status_code >= 300:
            self.hook("http_connect_error", flow, swallow_errors=swallow_errors)
        elif connect and full:  # mitmproxy answers 200 itself, then announces the tunnel
            self.hook("http_connected", flow, swallow_errors=swallow_errors)
        if streamed is not None:
            return b"".join(streamed)
        return flow.response.content if flow.response and "response" in names else None

    # -- journal ------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        return list(read_records([self.files["journal"]]))

    def journal_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in journal_files(self.files["journal"]))

    def fill_journal_disk(self) -> None:
        """Make the journal's disk full: its open file is re-pointed at /dev/full
        (found through /proc, not the journal's internals), so writes fail ENOSPC."""
        target = str(self.audit.journal.path)
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")
               if _readlink(f"/proc/self/fd/{fd}") == target]
        assert len(fds) == 1, fds
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fds[0])
        os.close(full)


def _headers(pairs: Iterable[tuple[str, str | bytes]]) -> http.Headers:
    """str values as Latin-1 (as on the wire), bytes as given (for non-UTF-8 cases)."""
    return http.Headers([(k.encode(), v.encode("latin-1") if isinstance(v, str) else v)
                         for k, v in pairs])


def _answer(upstream: Upstream) -> http.Response:
    """Response headers from the vendor; the body arrives before `response`."""
    return http.Response(b"HTTP/1.1", upstream.status, b"", _headers(upstream.headers.items()),
                         None, None, time.time(), None)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _killed(flow: http.HTTPFlow) -> bool:
    return flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE


@pytest.fixture
def policy_yaml() -> str:
    """The policy text the `pipeline` fixture loads; override in a module to change it."""
    return DEFAULT_POLICY


@pytest.fixture
def secrets() -> dict[SecretLocation, str]:
    """What the fake secret store holds: a key per vendor at its default location."""
    return {default_location(v): key for v, key in REAL_KEYS.items()}


@pytest.fixture
def pipeline(tmp_path: Path, policy_yaml: str,
             secrets: dict[SecretLocation, str]) -> Iterator[Pipeline]:
    """Fresh instances of every addon, in `egressguard.addons` order, configured with
    temporary files and an in-memory secret store."""
    files = {"policy": tmp_path / "policy.yaml", "journal": tmp_path / "journal",
             "token_key": tmp_path / "token.key", "revoked": tmp_path / "revoked"}
    files["policy"].write_text(policy_yaml)
    store = FakeSecretStore(secrets)
    addons = [Inject(store) if isinstance(a, Inject) else
              UpstreamMap(FakeResolver()) if isinstance(a, UpstreamMap) else type(a)()
              for a in egressguard.addons]
    with taddons.context(*addons, loadcore=False) as tctx:
        harness = Pipeline(tctx, addons, files, store)  # creates the token key
        # no fsync: durability is the journal's own tests' concern, speed is ours
        tctx.options.update(
            egressguard_policy=str(files["policy"]), egressguard_journal=str(files["journal"]),
            egressguard_token_key=str(files["token_key"]),
            egressguard_revoked=str(files["revoked"]), egressguard_journal_fsync=False)
        try:
            yield harness
        finally:
            for addon in addons:
                tctx.master.addons.invoke_addon_sync(addon, hooks.DoneHook())


@pytest.fixture(scope="module")
def siem_url() -> Iterator[str]:
    """A fake SIEM process (HEC, NDJSON, _bulk) for a test module."""
    proc, info = start_announced([sys.executable, "-m", "egressguard.tools.fakesiem",
                                  "--listen", "127.0.0.1:0"])
    try:
        yield info["url"]
    finally:
        stop_announced(proc)


@pytest.fixture
def siem(siem_url: str) -> SiemControl:
    """The module's fake SIEM, reset: nothing received, no faults, HEC without acks."""
    control = SiemControl(siem_url)
    control.control("reset")
    control.control("config", {"hec_token": DEFAULT_HEC_TOKEN, "hec_ack": False,
                               "ack_delay": 0})
    return control
