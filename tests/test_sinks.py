"""The senders (`egressguard.backends.sinks`) against real receivers: Debian's rsyslogd
over TCP and TLS, and the fake SIEM's HEC, NDJSON and `_bulk` endpoints, failing and
stalling on demand. A send returns only once the receiver has the batch."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from rsyslog import Rsyslog

from egressguard.backends.sinks import SinkError, make_sink
from egressguard.core import chain, mappings, records
from egressguard.core.sinkconfig import Retry, SinkSpec, parse_sinks
from egressguard.tools.fakesiem import DEFAULT_HEC_TOKEN, SiemControl
from egressguard.tools.procs import wait_until

NODE = "egress-1"


def sample(n: int, **extra: Any) -> dict[str, Any]:
    """A sealed record as the journal holds it."""
    fields: dict[str, Any] = dict(
        id=records.new_id(), started=1_767_322_800.0 + n, client="10.0.0.7:51234",
        method="POST", host="api.openai.com", path="/v1/chat/completions", node=NODE,
        agent="billing-bot", team="finance", vendor="openai", model="gpt-4o-mini",
        status=200, latency_ms=12.5, bytes_in=100, bytes_out=200)
    facts = records.RequestFacts(**{**fields, **extra})
    return chain.seal(records.build(facts), chain.GENESIS, n)


def spec(body: str) -> SinkSpec:
    [one] = parse_sinks(f"version: 1\nsinks:\n  - {body}\n", "sinks.yaml").sinks
    return one


def send(sink: Any, batch: list[dict[str, Any]]) -> None:
    async def go() -> None:
        try:
            await sink.send(batch)
        finally:
            await sink.close()
    asyncio.run(go())


# -- syslog -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path_factory.mktemp("rsyslog")) as server:
        yield server


_RFC5424 = re.compile(rb'^<(\d+)>1 (\S+) (\S+) (\S+) - (\S+) '
                      rb'\[egressguard@32473 id="([0-9a-f]{32})" seq="(\d+)"\] (.*)$')


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("mapping", ["native", "ocsf"])
def test_syslog_json_arrives_whole_as_rfc5424(rsyslog: Rsyslog, transport: str,
                                              mapping: str) -> None:
    port = rsyslog.tls_port if transport == "tls" else rsyslog.plain_port
    tls = f", ca: {rsyslog.ca_file}, server_name: localhost" if transport == "tls" else ""
    sink = make_sink(spec(f"{{name: s, type: syslog, address: '127.0.0.1:{port}', "
                          f"transport: {transport}, mapping: {mapping}{tls}}}"), NODE)
    before = len(rsyslog.messages())
    batch = [sample(1), sample(2, decision="deny", reason="no_rule_matched", status=403)]
    send(sink, batch)
    got = rsyslog.wait_for(before + 2)[before:]
    for line, record in zip(got, batch, strict=True):
        m = _RFC5424.match(line)
        assert m is not None, line
        pri, ts, host, app, kind, rid, seq, body = m.groups()
        severity = 4 if record["decision"] == "deny" else 6
        assert int(pri) == 16 * 8 + severity  # local0
        assert (ts.decode(), host.decode(), app, kind, rid.decode(), int(seq)) == (
            record["ts"], NODE, b"egressguard", b"request", record["id"], record["seq"])
        assert orjson.loads(body) == mappings.json_mapping(mapping)(record)


def test_syslog_cef(rsyslog: Rsyslog) -> None:
    sink = make_sink(spec(f"{{name: s, type: syslog, address: '127.0.0.1:{rsyslog.plain_port}',"
                          " transport: tcp, format: cef, facility: auth, app_name: eg}"), NODE)
    before = len(rsyslog.messages())
    record = sample(7)
    send(sink, [record])
    [line] = rsyslog.wait_for(before + 1)[before:]
    assert line.startswith(b"<38>1 ")  # auth (4) * 8 + informational
    assert line.endswith(mappings.cef(record).encode())


def test_syslog_to_a_receiver_that_is_down_fails_then_delivers_after_a_restart(
        tmp_path: Path) -> None:
    server = Rsyslog(tmp_path)
    sink = make_sink(spec(f"{{name: s, type: syslog, address: '127.0.0.1:{server.plain_port}',"
                          " transport: tcp, timeout: 2s}"), NODE)

    async def scenario() -> None:
        with pytest.raises(SinkError, match=rf"syslog 127.0.0.1:{server.plain_port}: "
                                            r"ConnectionRefusedError"):
            await sink.send([sample(1)])
        with server:
            await sink.send([sample(2)])
            server.wait_for(1)
            server.stop()  # the receiver goes away under a kept-open connection
            with pytest.raises(SinkError):
                for n in range(3, 50):  # noticed at the latest once the kernel says so
                    await sink.send([sample(n)])
            server.start()
            await sink.send([sample(99)])
        await sink.close()

    asyncio.run(scenario())
    ids = [orjson.loads(m.split(b"] ", 1)[1])["seq"] for m in server.messages()]
    assert ids[0] == 2 and ids[-1] == 99


# -- HTTP: fake SIEM ------------------------------------------------------------------

@pytest.fixture
def hec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HEC_TOKEN", DEFAULT_HEC_TOKEN)


def hec_spec(siem: SiemControl, extra: str = "") -> SinkSpec:
    return spec(f"{{name: splunk, type: splunk_hec, url: '{siem.url}', "
                f"token_env: TEST_HEC_TOKEN, index: ai, mapping: ecs{extra}}}")


def test_hec_events_carry_index_sourcetype_host_and_the_mapped_record(
        siem: SiemControl, hec_env: None) -> None:
    batch = [sample(1), sample(2)]
    send(make_sink(hec_spec(siem, ", gzip: true"), NODE), batch)
    [request] = siem.received()["requests"]
    assert request["headers"]["content-encoding"] == "gzip"
    docs = [d["doc"] for d in siem.received()["hec"]["docs"]]
    assert [d["event"] for d in docs] == [mappings.ecs(r) for r in batch]
    assert {(d["index"], d["sourcetype"], d["source"], d["host"]) for d in docs} == {
        ("ai", "egressguard:audit", "egressguard", NODE)}
    assert docs[0]["time"] == 1_767_322_801.0


def test_hec_with_acks_returns_only_once_splunk_has_indexed(siem: SiemControl,
                                                           hec_env: None) -> None:
    siem.control("config", {"hec_ack": True, "ack_delay": None})  # acks wait for release

    async def scenario() -> None:
        sink = make_sink(hec_spec(siem, ", ack: true"), NODE)
        sending = asyncio.ensure_future(sink.send([sample(1)]))
        await asyncio.to_thread(wait_until, lambda: siem.status()["pending_acks"],
                                timeout=10, what="the batch waiting for its ack")
        assert not sending.done()  # taken, not yet indexed: not delivered
        await asyncio.to_thread(siem.control, "acks/release")
        await asyncio.wait_for(sending, 10)
        await sink.close()

    asyncio.run(scenario())


def test_hec_ack_timeout_is_a_failure(siem: SiemControl, hec_env: None) -> None:
    siem.control("config", {"hec_ack": True, "ack_delay": None})
    sink = make_sink(hec_spec(siem, ", ack: true, ack_timeout: 300ms"), NODE)
    with pytest.raises(SinkError, match=r"HEC splunk: batch 0 not indexed within 0.3s"):
        send(sink, [sample(1)])


def test_hec_refusals_say_why_and_never_the_token(siem: SiemControl,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HEC_TOKEN", "wrong-token-value")
    with pytest.raises(SinkError) as info:
        send(make_sink(hec_spec(siem), NODE), [sample(1)])
    assert "HTTP 403" in str(info.value) and "wrong-token-value" not in str(info.value)
    monkeypatch.delenv("TEST_HEC_TOKEN")
    with pytest.raises(SinkError, match="the environment variable TEST_HEC_TOKEN"):
        make_sink(hec_spec(siem), NODE)


def test_a_failing_or_stalled_receiver_is_a_failure(siem: SiemControl, hec_env: None) -> None:
    siem.control("fail", {"status": 503, "count": 1})
    with pytest.raises(SinkError, match="HTTP 503"):
        send(make_sink(hec_spec(siem), NODE), [sample(1)])
    siem.control("stall", {"seconds": 5, "count": 1})
    with pytest.raises(SinkError, match="ReadTimeout"):
        send(make_sink(hec_spec(siem, ", timeout: 300ms"), NODE), [sample(2)])
    send(make_sink(hec_spec(siem), NODE), [sample(3)])  # recovered: delivered
    seqs = [d["doc"]["event"]["event"]["sequence"] for d in siem.received()["hec"]["docs"]]
    assert seqs[-1] == 3 and 1 not in seqs  # the refused batch was not stored


def test_ndjson_with_an_auth_header_from_a_file(siem: SiemControl, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("ApiKey c2VjcmV0\n")
    sink = make_sink(spec(f"{{name: lake, type: http, url: '{siem.url}/ndjson', "
                          f"auth_file: {tmp_path / 'key'}, headers: {{X-Team: sec}}}}"), NODE)
    batch = [sample(1), sample(2)]
    send(sink, batch)
    [request] = siem.received()["requests"]
    assert request["headers"]["authorization"] == "ApiKey c2VjcmV0"
    assert request["headers"]["x-team"] == "sec"
    assert [d["doc"] for d in siem.received()["ndjson"]["docs"]] == batch


def test_elastic_bulk_creates_by_id_and_a_resend_counts_as_delivered(
        siem: SiemControl) -> None:
    sink_spec = spec(f"{{name: es, type: http, url: '{siem.url}/_bulk', "
                     "format: elastic_bulk, index: audit, mapping: ecs}")
    batch = [sample(1), sample(2)]
    send(make_sink(sink_spec, NODE), batch)
    send(make_sink(sink_spec, NODE), batch)  # a retry after a lost answer: 409s, fine
    bulk = siem.received()["bulk"]
    assert bulk["ids"] == {r["id"]: 1 for r in batch}
    assert bulk["conflicts"] == {r["id"]: 1 for r in batch}
    assert [d["doc"] for d in bulk["docs"]] == [mappings.ecs(r) for r in batch]


def test_a_sink_spec_from_code_needs_no_file() -> None:
    # the shipper builds sinks from parsed specs; options are checked by the parser
    spec_ = SinkSpec("x", "http", retry=Retry(0.1, 1), options=MappingProxyType({
        "url": "http://127.0.0.1:9/ndjson", "format": "ndjson", "index": "i",
        "gzip": False, "verify_tls": True, "headers": {}, "auth_header": "Authorization",
        "auth": None}))
    with pytest.raises(SinkError, match="HTTP sink x: ConnectError"):
        send(make_sink(spec_, NODE), [sample(1)])
