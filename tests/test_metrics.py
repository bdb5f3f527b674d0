"""Metrics and health (`core/metrics.py`, `pipeline/metrics.py`, `backends/backlog.py`,
`backends/statusserver.py`): the exposition format, what each request adds and under
which labels, what is read at scrape time, and the HTTP endpoints on their own port."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from mitmproxy import exceptions

from egressguard.backends import cursors
from egressguard.backends.backlog import backlogs
from egressguard.backends.journal import read_records
from egressguard.backends.vault import VaultConfig, VaultStore
from egressguard.core import metrics
from egressguard.core.secret import Secret, SecretRef
from egressguard.pipeline.metrics import parse_listen
from egressguard.tools.procs import free_port

OPENAI, ANTHROPIC = "api.openai.com", "api.anthropic.com"
PRICES = "version: 1\ncurrency: USD\nprices:\n  openai:\n    gpt-4o-mini: {input: 1, output: 2}\n"
POLICY = """\
version: 1
prices: prices.yaml
teams:
  red: {limits: {requests_per_minute: 100, spend_per_day: 5}}
  blue: {}
agents:
  bot: {team: red}
  masker: {team: blue}
rules:
  - name: masker
    match: {agents: [masker]}
    redact: {EMAIL_ADDRESS: mask}
  - name: no-anthropic
    match: {vendors: [anthropic]}
    action: deny
    reason: no Anthropic here
  - name: everyone
"""


@pytest.fixture
def policy_yaml(tmp_path: Path) -> str:
    (tmp_path / "prices.yaml").write_text(PRICES)
    return POLICY


def run(pipeline, awaitable):
    return pipeline.tctx.master.event_loop.run_until_complete(awaitable)


def chat(pipeline, agent: str = "bot", team: str | None = "red", host: str = OPENAI,
         text: str = "hi", **kw: Any):
    token = pipeline.token(agent, team)
    header = ("x-api-key", token) if host == ANTHROPIC else ("Authorization", f"Bearer {token}")
    return pipeline.send(host, headers=[header], body={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}, **kw)


def scrape(pipeline) -> str:
    answer = run(pipeline, pipeline.metrics.scrape())
    assert answer.status == 200 and answer.content_type.startswith("text/plain; version=0.0.4")
    return answer.body.decode()


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            assert series not in out, f"duplicate series {series}"
            out[series] = float(value)
    return out


def settled(pipeline) -> None:
    """Let the background settlements of finished flows run."""
    if pending := list(pipeline.enforce._settling):
        run(pipeline, asyncio.gather(*pending))


# -- the exposition format --------------------------------------------------------------
def test_counters_and_histograms_render_in_the_text_format() -> None:
    c = metrics.Counter("x_total", "Things.\nCounted.", ("a", "b"))
    c.inc(("1", 'say "hi"\\'))
    c.inc(("1", 'say "hi"\\'), 2)
    h = metrics.Histogram("lat_seconds", "Latency.", ("v",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(("openai",), value)
    text = metrics.render([c, h, metrics.Gauge("empty", "Nothing.")])
    assert text == (
        "# HELP x_total Things.\\nCounted.\n# TYPE x_total counter\n"
        'x_total{a="1",b="say \\"hi\\"\\\\"} 3\n'
        "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{v="openai",le="0.1"} 2\n'  # le holds values equal to it
        'lat_seconds_bucket{v="openai",le="1"} 3\n'
        'lat_seconds_bucket{v="openai",le="+Inf"} 4\n'
        'lat_seconds_sum{v="openai"} 3.65\n'
        'lat_seconds_count{v="openai"} 4\n')  # a metric without samples is left out


@pytest.mark.parametrize(("value", "shown"), [
    (3, "3"), (3.0, "3"), (1761234567.125, "1761234567.125"), (1234567, "1234567"),
    (1.3e-05, "1.3e-05"), (float("inf"), "+Inf"), (float("nan"), "NaN")])
def test_numbers_are_exact(value: float, shown: str) -> None:
    assert metrics.number(value) == shown


def test_label_sets_past_the_cap_are_counted_as_other() -> None:
    c = metrics.Counter("c_total", "C.", ("path",), max_series=2)
    h = metrics.Histogram("h_seconds", "H.", ("path",), buckets=(1.0,), max_series=1)
    for path in ("/a", "/b", "/c", "/d", "/a"):
        c.inc((path,))
        h.observe((path,), 0.5)
    assert c.values == {("/a",): 2, ("/b",): 1, ("other",): 2}
    assert {k: v[-2] for k, v in h.values.items()} == {("/a",): 0, ("other",): 0}
    assert sum(sum(v[:-1]) for v in h.values.values()) == 5


# -- what requests add -----------------------------------------------------------------
def test_requests_are_counted_by_vendor_kind_decision_and_status(pipeline) -> None:
    for _ in range(3):
        assert chat(pipeline).response.status_code == 200
    assert chat(pipeline, host=ANTHROPIC).response.status_code == 403
    no_token = pipeline.send(OPENAI, body={"model": "gpt-4o-mini", "messages": []})
    assert no_token.response.status_code == 401
    assert pipeline.tunnel("example.com").response.status_code == 403
    s = samples(scrape(pipeline))
    assert s['egressguard_requests_total{vendor="openai",kind="request",decision="allow",'
             'status="200"}'] == 3
    assert s['egressguard_requests_total{vendor="anthropic",kind="request",decision="deny",'
             'status="403"}'] == 1
    assert s['egressguard_requests_total{vendor="openai",kind="request",decision="deny",'
             'status="401"}'] == 1
    assert s['egressguard_requests_total{vendor="none",kind="connect",decision="deny",'
             'status="403"}'] == 1
    assert s['egressguard_denials_total{vendor="anthropic",reason="denied_by_rule"}'] == 1
    assert s['egressguard_denials_total{vendor="openai",reason="identity_missing"}'] == 1
    assert s['egressguard_denials_total{vendor="none",reason="destination_denied"}'] == 1
    # every counted request is in the journal, and the other way round
    assert sum(v for k, v in s.items() if k.startswith("egressguard_requests_total")) \
        == len(pipeline.records())


def test_latency_is_split_into_overhead_and_upstream(pipeline) -> None:
    for _ in range(2):
        chat(pipeline)
    chat(pipeline, host=ANTHROPIC)  # refused: never sent, all overhead
    s = samples(scrape(pipeline))
    assert s['egressguard_request_duration_seconds_count{vendor="openai"}'] == 2
    assert s['egressguard_overhead_seconds_count{vendor="openai"}'] == 2
    assert s['egressguard_upstream_seconds_count{vendor="openai"}'] == 2
    assert s['egressguard_overhead_seconds_count{vendor="anthropic"}'] == 1
    assert 'egressguard_upstream_seconds_count{vendor="anthropic"}' not in s
    total = s['egressguard_request_duration_seconds_sum{vendor="anthropic"}']
    assert s['egressguard_overhead_seconds_sum{vendor="anthropic"}'] == pytest.approx(total)
    records = [r for r in pipeline.records() if r["vendor"] == "openai"]
    assert s['egressguard_request_duration_seconds_sum{vendor="openai"}'] == pytest.approx(
        sum(r["latency_ms"] for r in records) / 1000)
    assert s['egressguard_request_duration_seconds_bucket{vendor="openai",le="+Inf"}'] == 2


def test_redactions_tokens_and_spend_by_bounded_labels(pipeline) -> None:
    chat(pipeline, agent="masker", team="blue", text="mail me at someone@example.com")
    chat(pipeline)
    chat(pipeline, agent="stranger", team="made-up-team")  # not a team the policy declares
    s = samples(scrape(pipeline))
    assert s['egressguard_redactions_total{entity="EMAIL_ADDRESS",action="mask",'
             'direction="request"}'] == 1
    # the fake vendor reports 3 input and 5 output tokens per request
    assert s['egressguard_tokens_total{vendor="openai",team="red",direction="input"}'] == 3
    assert s['egressguard_tokens_total{vendor="openai",team="blue",direction="output"}'] == 5
    assert s['egressguard_tokens_total{vendor="openai",team="other",direction="output"}'] == 5
    # 3 x $1 + 5 x $2 per million tokens
    assert s['egressguard_spend_usd_total{vendor="openai",team="red"}'] == pytest.approx(13e-6)
    assert "made-up-team" not in scrape(pipeline)


def test_nothing_an_agent_chooses_becomes_a_label_and_no_secret_shows(pipeline) -> None:
    token = pipeline.token("bot", "red")
    pipeline.send(OPENAI, "/v1/chat/completions?probe=zzz-query", body={
        "model": "zzz-model", "messages": []}, headers=[("Authorization", f"Bearer {token}")])
    pipeline.send(OPENAI, "/v1/zzz-path", headers=[("Authorization", f"Bearer {token}")])
    text = scrape(pipeline)
    assert "zzz" not in text and "bot" not in text
    assert token not in text
    assert not any(key in text for key in pipeline.REAL_KEYS.values())
    assert len(pipeline.records()) == 2  # both were recorded, and counted
    assert sum(v for k, v in samples(text).items()
               if k.startswith("egressguard_requests_total")) == 2


def test_a_record_the_journal_could_not_take_is_counted(pipeline) -> None:
    chat(pipeline)
    pipeline.fill_journal_disk()
    assert chat(pipeline).response.status_code == 503
    s = samples(scrape(pipeline))
    assert s["egressguard_audit_write_failures_total"] == 1
    assert s['egressguard_journal_failed{node="' + pipeline.audit.journal.node + '"}'] == 1


# -- read at scrape time ---------------------------------------------------------------
def test_team_budgets_show_the_current_window_against_the_limit(pipeline) -> None:
    for _ in range(4):
        chat(pipeline)
    settled(pipeline)
    s = samples(scrape(pipeline))
    assert s["egressguard_limits_store_up"] == 1
    assert s['egressguard_team_limit_used{team="red",limit="requests_per_minute"}'] == 4
    assert s['egressguard_team_limit{team="red",limit="requests_per_minute"}'] == 100
    assert s['egressguard_team_limit{team="red",limit="spend_per_day"}'] == 5
    # settled at the reported usage: 4 x 13 micro-USD
    assert s['egressguard_team_limit_used{team="red",limit="spend_per_day"}'] == \
        pytest.approx(52e-6)
    assert not any('team="blue"' in k for k in s if k.startswith("egressguard_team_limit"))


def test_policy_reloads_and_the_policy_in_force(pipeline) -> None:
    loader = pipeline.policyloader
    first = loader.policy.digest
    pipeline.files["policy"].write_text("version: 1\nrules: [{name: x, bogus: 1}]\n")
    assert run(pipeline, loader.reload("test")) is False
    s = samples(scrape(pipeline))
    assert s['egressguard_policy_reloads_total{result="failure"}'] == 1
    assert s['egressguard_policy_reloads_total{result="success"}'] == 0
    assert s["egressguard_policy_reload_failing"] == 1
    prices = loader.policy.prices.digest
    assert s[f'egressguard_policy_info{{sha256="{first}",prices_sha256="{prices}"}}'] == 1

    pipeline.files["policy"].write_text(POLICY.replace("blue: {}", "blue: {description: b}"))
    assert run(pipeline, loader.reload("test")) is True
    s = samples(scrape(pipeline))
    assert s['egressguard_policy_reloads_total{result="success"}'] == 1
    assert s["egressguard_policy_reload_failing"] == 0
    assert loader.policy.digest != first
    assert f'sha256="{loader.policy.digest}"' in scrape(pipeline)


def dead_vault() -> VaultStore:
    """A Vault store pointed at a port nothing listens on: calls fail at once."""
    return VaultStore(VaultConfig(addr=f"http://127.0.0.1:{free_port()}", token="t",
                                  timeout=0.5), ttl=60)


def test_the_secret_store_counts_cache_hits_misses_and_errors(pipeline, monkeypatch) -> None:
    store = pipeline.inject.store = dead_vault()
    key = pipeline.REAL_KEYS["openai"]
    assert chat(pipeline).response.status_code == 503  # Vault is down: no key
    monkeypatch.setattr(store, "read", lambda vendor, where: Secret(
        key, SecretRef(f"{where.mount}/{where.path}", 1), vendor.hosts))
    for _ in range(3):
        assert chat(pipeline).response.status_code == 200  # one read, then the cache
    s = samples(scrape(pipeline))
    assert s["egressguard_secret_cache_misses_total"] == 2
    assert s["egressguard_secret_cache_hits_total"] == 2
    assert s['egressguard_secret_store_errors_total{reason="vault_unreachable"}'] == 1
    assert s["egressguard_secret_store_up"] == 1  # the read after the error succeeded
    assert key not in scrape(pipeline)


# -- readiness -------------------------------------------------------------------------
def ready(pipeline) -> tuple[int, dict[str, Any]]:
    answer = run(pipeline, pipeline.metrics.ready())
    return answer.status, orjson.loads(answer.body)


@pytest.fixture
def with_ca(pipeline, tmp_path: Path):
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "mitmproxy-ca.pem").write_text("a CA\n")
    pipeline.tctx.options.update(confdir=str(certs))
    return certs


def test_ready_needs_the_policy_the_ca_the_journal_and_vault(pipeline, with_ca,
                                                           monkeypatch) -> None:
    assert ready(pipeline)[0] == 200  # the in-memory store of these tests needs no probe
    store = pipeline.inject.store = dead_vault()
    status, body = ready(pipeline)
    assert status == 503 and body["checks"]["secret_store"] == {
        "ok": False, "error": "Vault has not answered yet"}
    run(pipeline, store.ping())  # lookup-self against nothing
    status, body = ready(pipeline)
    assert status == 503 and body["ready"] is False
    assert body["checks"]["secret_store"]["reason"] == "vault_unreachable"
    assert all(body["checks"][c]["ok"] for c in ("policy", "ca", "journal"))
    assert "127.0.0.1" not in orjson.dumps(body).decode()  # no address, nor anything secret

    monkeypatch.setattr(store, "_token_lease", lambda renew: (0, False))  # Vault answers
    run(pipeline, store.ping())
    assert ready(pipeline) == (200, {"ready": True, "checks": {
        "policy": {"ok": True, "sha256": pipeline.policyloader.policy.digest},
        "ca": {"ok": True}, "secret_store": {"ok": True}, "journal": {"ok": True}}})

    (with_ca / "mitmproxy-ca.pem").unlink()
    status, body = ready(pipeline)
    assert status == 503 and body["checks"]["ca"]["ok"] is False


def test_ready_fails_while_the_journal_is_full(pipeline, with_ca) -> None:
    pipeline.audit.journal.full = "over the cap"
    status, body = ready(pipeline)
    assert status == 503
    assert body["checks"]["journal"] == {"ok": False, "error": "the audit journal is full"}


# -- sinks' backlog --------------------------------------------------------------------
def test_sink_backlog_from_cursors_on_disk(pipeline, tmp_path: Path) -> None:
    sinks = tmp_path / "sinks.yaml"
    sinks.write_text("version: 1\nsinks:\n  - {name: siem, type: http, url: 'http://x/'}\n")
    pipeline.tctx.options.update(egressguard_sinks=str(sinks), egressguard_node="n1")
    for _ in range(3):
        chat(pipeline)
    journal = pipeline.audit.journal
    seq, size = journal.seq, journal.path.stat().st_size
    s = samples(scrape(pipeline))
    assert s['egressguard_sink_behind_records{node="n1",sink="siem"}'] == seq == 3
    assert s['egressguard_sink_behind_bytes{node="n1",sink="siem"}'] == size
    assert s['egressguard_sink_oldest_undelivered_age_seconds{node="n1",sink="siem"}'] >= 0
    assert s['egressguard_journal_seq{node="n1"}'] == seq

    first = next(read_records([journal.directory]))
    from datetime import datetime
    started = datetime.fromisoformat(first["ts"]).timestamp()
    (only,) = backlogs(journal.directory, ["siem"], seq, now=started + 42)
    assert (only.records, only.bytes, only.oldest_age) == (3, size, pytest.approx(42))

    cursors.save(journal.directory, cursors.Cursor("siem", journal.segment, size, seq),
                 durable=False)
    s = samples(scrape(pipeline))
    assert s['egressguard_sink_behind_records{node="n1",sink="siem"}'] == 0
    assert s['egressguard_sink_behind_bytes{node="n1",sink="siem"}'] == 0
    assert s['egressguard_sink_oldest_undelivered_age_seconds{node="n1",sink="siem"}'] == 0


def test_the_whole_page_is_well_formed(pipeline, tmp_path: Path) -> None:
    """Every family has HELP and TYPE before its samples, names and labels are valid,
    no series repeats (a Prometheus scrape fails on any of these)."""
    chat(pipeline)
    chat(pipeline, agent="masker", team="blue", text="someone@example.com")
    text = scrape(pipeline)
    label = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    sample = re.compile(rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{{{label}(,{label})*\}})? "
                        r"(-?[0-9.e+-]+|\+Inf|NaN)")
    declared: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert name not in declared and kind in ("counter", "gauge", "histogram")
            declared[name] = kind
        elif not line.startswith("# HELP "):
            m = sample.fullmatch(line)
            assert m, line
            name = m[1]
            family = re.sub(r"_(bucket|sum|count)$", "", name) \
                if declared.get(re.sub(r"_(bucket|sum|count)$", "", name)) == "histogram" \
                else name
            assert family in declared, f"{name} before its TYPE"
    samples(text)  # no duplicates
    assert {"egressguard_requests_total", "egressguard_overhead_seconds",
            "egressguard_policy_info", "egressguard_journal_seq",
            "process_cpu_seconds_total"} <= set(declared)


# -- the server ------------------------------------------------------------------------
def exchange(pipeline, raw: bytes) -> bytes:
    """Send `raw` to the metrics port; whatever comes back until it closes."""
    async def go() -> bytes:
        reader, writer = await asyncio.open_connection(*pipeline.metrics.address)
        try:
            writer.write(raw)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    return run(pipeline, go())


def http_get(pipeline, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = exchange(pipeline, raw).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def request(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: metrics\r\n\r\n".encode()


def test_the_endpoints_on_their_own_port(pipeline, with_ca) -> None:
    pipeline.tctx.options.update(egressguard_metrics_listen="127.0.0.1:0")
    run(pipeline, pipeline.metrics.running())
    assert pipeline.metrics.address[1] > 0
    chat(pipeline)

    status, headers, body = http_get(pipeline, request("GET", "/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body) and headers["connection"] == "close"
    assert samples(body.decode())['egressguard_requests_total{vendor="openai",'
                                  'kind="request",decision="allow",status="200"}'] == 1
    assert http_get(pipeline, request("GET", "/healthz"))[::2] == (200, b"ok\n")
    status, headers, body = http_get(pipeline, request("GET", "/readyz?verbose=1"))
    assert status == 200 and orjson.loads(body)["ready"] is True
    status, headers, body = http_get(pipeline, request("HEAD", "/metrics"))
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert http_get(pipeline, request("GET", "/v1/chat/completions"))[0] == 404
    assert http_get(pipeline, request("POST", "/metrics"))[0] == 405
    assert http_get(pipeline, b"\x16\x03\x01 not http\r\n\r\n")[0] == 400
    # a head over 8 KiB gets no answer, only the connection closed
    assert exchange(pipeline, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000) == b""
    pipeline.metrics.done()
    run(pipeline, asyncio.sleep(0))  # let the prober see its cancellation


def test_a_port_in_use_is_a_start_up_error(pipeline, caplog) -> None:
    pipeline.tctx.options.update(egressguard_metrics_listen="127.0.0.1:0")
    run(pipeline, pipeline.metrics.running())
    taken = pipeline.metrics.address[1]
    pipeline.metrics.done()
    run(pipeline, asyncio.sleep(0))  # let the prober see its cancellation
    other = type(pipeline.metrics)()
    other.listen = ("127.0.0.1", taken)

    async def hold_and_start() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", taken)
        try:
            await other.running()
        finally:
            server.close()

    run(pipeline, hold_and_start())
    assert other.server is None
    assert any(r.levelname == "ERROR" and "cannot serve metrics" in r.message
               for r in caplog.records)


@pytest.mark.parametrize(("text", "parsed"), [
    ("", None), ("127.0.0.1:9090", ("127.0.0.1", 9090)), ("[::1]:9090", ("::1", 9090)),
    ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_listen_addresses(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["9090", ":9090", "host:port", "host:70000"])
def test_bad_listen_addresses_are_refused(pipeline, text: str) -> None:
    with pytest.raises(exceptions.OptionsError, match="is not HOST:PORT"):
        pipeline.tctx.options.update(egressguard_metrics_listen=text)
