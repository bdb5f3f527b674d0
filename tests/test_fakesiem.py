"""The fake SIEM through real HTTP clients: Splunk HEC (tokens, batches, gzip, indexer
acknowledgement), NDJSON, Elasticsearch `_bulk`, and the faults it injects when told."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from egressguard.tools.fakesiem import DEFAULT_HEC_TOKEN, FakeSiem, SiemControl
from egressguard.tools.fakevendor import make_pki
from egressguard.tools.procs import start_announced, stop_announced, wait_until

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
HEC = "/services/collector/event"
ACK = "/services/collector/ack"
NDJSON_TYPE = {"Content-Type": "application/x-ndjson"}


class Siem(SiemControl):
    """The control client, plus raw HEC requests as a sender makes them."""

    def hec(self, body: bytes | str, channel: str | None = None,
            token: str | None = DEFAULT_HEC_TOKEN, path: str = HEC,
            **headers: str) -> httpx.Response:
        if token is not None:
            headers.setdefault("Authorization", f"Splunk {token}")
        if channel is not None:
            headers["X-Splunk-Request-Channel"] = channel
        with self.http() as client:
            return client.post(path, content=body, headers=headers)


def _start(*args: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    return start_announced([sys.executable, "-m", "egressguard.tools.fakesiem", "--listen",
                            "127.0.0.1:0", *args], START_TIMEOUT)


_stop = stop_announced


@pytest.fixture(scope="module")
def siem_process() -> Iterator[Siem]:
    proc, info = _start()
    try:
        yield Siem(info["url"])
    finally:
        assert _stop(proc) == 0


@pytest.fixture
def siem(siem_process: Siem) -> Siem:
    siem_process.control("reset")
    siem_process.control("config", {"hec_token": DEFAULT_HEC_TOKEN, "hec_ack": False,
                                    "ack_delay": 0})
    return siem_process


def record(n: int) -> dict[str, Any]:
    return {"id": f"{n:032x}", "kind": "request", "seq": n}


def hec_batch(*events: dict[str, Any]) -> str:
    """Splunk's batch format: event envelopes concatenated, no separator needed."""
    return "".join(json.dumps({"time": 1767322800.123, "host": "node-a", "source": "egressguard",
                               "sourcetype": "egressguard:audit", "index": "main", "event": e})
                   for e in events)


# --- Splunk HEC ------------------------------------------------------------------------


def test_hec_batch_without_ack_is_stored_with_its_envelope(siem: Siem) -> None:
    reply = siem.hec(hec_batch(record(1), record(2)))
    assert reply.status_code == 200
    assert reply.json() == {"text": "Success", "code": 0}  # no ackId without acks
    hec = siem.received()["hec"]
    assert [d["id"] for d in hec["docs"]] == [record(1)["id"], record(2)["id"]]
    assert hec["docs"][0]["doc"]["sourcetype"] == "egressguard:audit"
    assert hec["docs"][1]["doc"]["event"] == record(2)
    assert hec["ids"] == {record(1)["id"]: 1, record(2)["id"]: 1}


def test_hec_ids_count_duplicates_and_read_events_sent_as_json_strings(siem: Siem) -> None:
    line = json.dumps(record(3))  # the journal line itself, as the event's string
    for _ in range(2):
        assert siem.hec(json.dumps({"event": line}) + "\n").status_code == 200
    assert siem.received()["hec"]["ids"] == {record(3)["id"]: 2}


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, 2),  # Token is required
    ({"Authorization": f"Bearer {DEFAULT_HEC_TOKEN}"}, 401, 3),  # Invalid authorization
    ({"Authorization": "Splunk not-the-token"}, 403, 4),  # Invalid token
])
def test_hec_refuses_a_missing_or_wrong_token(
    siem: Siem, headers: dict[str, str], status: int, code: int
) -> None:
    reply = siem.hec(hec_batch(record(1)), token=None, **headers)
    assert (reply.status_code, reply.json()["code"]) == (status, code)
    assert siem.received()["hec"]["docs"] == []


def test_hec_token_can_be_changed_at_runtime(siem: Siem) -> None:
    siem.control("config", {"hec_token": "rotated"})
    assert siem.hec(hec_batch(record(1))).status_code == 403
    assert siem.hec(hec_batch(record(1)), token="rotated").status_code == 200


@pytest.mark.parametrize(("body", "code", "extra"), [
    ("", 5, {}),  # No data
    ('{"event": {"id": "a"}} not json', 6, {"invalid-event-number": 1}),
    ('{"event": {"id": "a"}}{"time": 1}', 12, {"invalid-event-number": 1}),  # event missing
    ('{"event": ""}', 13, {"invalid-event-number": 0}),  # event blank
])
def test_hec_refuses_a_bad_batch_whole(
    siem: Siem, body: str, code: int, extra: dict[str, int]
) -> None:
    reply = siem.hec(body)
    assert reply.status_code == 400
    assert {k: v for k, v in reply.json().items() if k != "text"} == {"code": code, **extra}
    assert siem.received()["hec"]["docs"] == []


def test_hec_accepts_gzip_and_refuses_a_broken_one(siem: Siem) -> None:
    body = gzip.compress(hec_batch(record(1), record(2)).encode())
    assert siem.hec(body, **{"Content-Encoding": "gzip"}).status_code == 200
    broken = siem.hec(body[:-8], **{"Content-Encoding": "gzip"})
    assert (broken.status_code, broken.json()["code"]) == (400, 6)
    assert list(siem.received()["hec"]["ids"]) == [record(1)["id"], record(2)["id"]]


def test_hec_ack_needs_a_guid_channel(siem: Siem) -> None:
    siem.control("config", {"hec_ack": True})
    missing = siem.hec(hec_batch(record(1)))
    invalid = siem.hec(hec_batch(record(1)), channel="not-a-guid")
    assert (missing.status_code, missing.json()) == (
        400, {"text": "Data channel is missing", "code": 10})
    assert (invalid.status_code, invalid.json()["code"]) == (400, 11)
    with siem.http() as client:  # the channel may also come as a query parameter
        query = client.post(HEC, params={"channel": str(uuid.uuid4())},
                            content=hec_batch(record(1)),
                            headers={"Authorization": f"Splunk {DEFAULT_HEC_TOKEN}"})
    assert query.json() == {"text": "Success", "code": 0, "ackId": 0}


def test_hec_ack_is_false_until_released_then_true_once(siem: Siem) -> None:
    siem.control("config", {"hec_ack": True, "ack_delay": None})
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    ack_ids = [siem.hec(hec_batch(record(n)), channel=c).json()["ackId"]
               for n, c in ((1, one), (2, one), (3, two))]
    assert ack_ids == [0, 1, 0]  # counted per channel, from 0

    def query(channel: str, acks: list[int]) -> dict[str, bool]:
        reply = siem.hec(json.dumps({"acks": acks}), channel=channel, path=ACK)
        assert reply.status_code == 200, reply.text
        return reply.json()["acks"]

    assert query(one, [0, 1]) == {"0": False, "1": False}
    assert siem.control("acks/release", {"channel": one, "acks": [1]}) == {"released": 1}
    assert query(one, [0, 1, 7]) == {"0": False, "1": True, "7": False}
    assert query(one, [1]) == {"1": False}  # reported true once, then forgotten
    assert query(two, [0]) == {"0": False}
    assert siem.control("acks/release") == {"released": 2}
    assert query(two, [0]) == {"0": True}
    assert [d["ack_id"] for d in siem.received()["hec"]["docs"]] == [0, 1, 0]


def test_hec_ack_turns_true_after_the_delay(siem: Siem) -> None:
    siem.control("config", {"hec_ack": True, "ack_delay": 2.0})
    channel = str(uuid.uuid4())
    sent = time.monotonic()
    ack_id = siem.hec(hec_batch(record(1)), channel=channel).json()["ackId"]

    def acked() -> bool:
        reply = siem.hec(json.dumps({"acks": [ack_id]}), channel=channel, path=ACK)
        return reply.json()["acks"][str(ack_id)]

    assert acked() is False
    wait_until(acked, timeout=10, what="the ack to turn true")
    assert time.monotonic() - sent >= 2.0


def test_hec_ack_endpoint_says_when_acks_are_off(siem: Siem) -> None:
    reply = siem.hec('{"acks": [0]}', channel=str(uuid.uuid4()), path=ACK)
    assert (reply.status_code, reply.json()) == (400, {"text": "ACK is disabled", "code": 14})


def test_hec_health(siem: Siem) -> None:
    with siem.http() as client:
        reply = client.get("/services/collector/health")
    assert (reply.status_code, reply.json()["code"]) == (200, 17)


# --- NDJSON and Elasticsearch _bulk ----------------------------------------------------


def test_ndjson_stores_one_document_per_line_plain_or_gzip(siem: Siem) -> None:
    body = "\n".join(json.dumps(record(n)) for n in (1, 2)) + "\n\n"
    with siem.http() as client:
        plain = client.post("/ndjson", content=body)
        zipped = client.post("/ndjson", content=gzip.compress(json.dumps(record(3)).encode()),
                             headers={"Content-Encoding": "gzip"})
        bad = client.post("/ndjson", content=json.dumps(record(4)) + "\n{not json\n")
    assert (plain.status_code, plain.json()) == (200, {"received": 2})
    assert zipped.status_code == 200
    assert bad.status_code == 400 and "line 2" in bad.json()["error"]
    ndjson = siem.received()["ndjson"]
    assert [d["doc"] for d in ndjson["docs"]] == [record(1), record(2), record(3)]
    assert ndjson["ids"] == {record(n)["id"]: 1 for n in (1, 2, 3)}


def bulk_body(*ids: int, action: str = "create", index: str | None = None) -> str:
    lines = []
    for n in ids:
        meta = {"_id": record(n)["id"], **({"_index": index} if index else {})}
        lines += [json.dumps({action: meta}), json.dumps(record(n))]
    return "\n".join(lines) + "\n"


def test_bulk_create_then_duplicates_answer_409_and_errors_true(siem: Siem) -> None:
    with siem.http() as client:
        first = client.post("/audit/_bulk", content=bulk_body(1, 2), headers=NDJSON_TYPE)
        again = client.post("/audit/_bulk", content=bulk_body(1, 2, 3), headers=NDJSON_TYPE)
    assert first.status_code == 200 and first.headers["x-elastic-product"] == "Elasticsearch"
    assert first.json()["errors"] is False
    assert [i["create"]["status"] for i in first.json()["items"]] == [201, 201]
    assert again.status_code == 200 and again.json()["errors"] is True
    items = [i["create"] for i in again.json()["items"]]
    assert [(i["_id"], i["status"]) for i in items] == [
        (record(1)["id"], 409), (record(2)["id"], 409), (record(3)["id"], 201)]
    assert items[0]["error"]["type"] == "version_conflict_engine_exception"
    bulk = siem.received()["bulk"]
    assert bulk["ids"] == {record(n)["id"]: 1 for n in (1, 2, 3)}
    assert bulk["conflicts"] == {record(n)["id"]: 1 for n in (1, 2)}
    assert {d["index"] for d in bulk["docs"]} == {"audit"}


def test_bulk_index_action_overwrites_and_index_may_come_from_the_metadata(
    siem: Siem,
) -> None:
    with siem.http() as client:
        client.post("/_bulk", content=bulk_body(1, index="audit-x"), headers=NDJSON_TYPE)
        again = client.post("/_bulk", content=bulk_body(1, action="index", index="audit-x"),
                            headers={"Content-Type": "application/json"})
    item = again.json()["items"][0]["index"]
    assert (item["status"], item["result"], item["_version"]) == (200, "updated", 2)
    assert siem.received()["bulk"]["ids"] == {record(1)["id"]: 2}


@pytest.mark.parametrize(("path", "body", "headers", "status", "kind"), [
    ("/audit/_bulk", bulk_body(1).rstrip("\n"), NDJSON_TYPE, 400, "illegal_argument_exception"),
    ("/_bulk", bulk_body(1), NDJSON_TYPE, 400, "action_request_validation_exception"),
    ("/audit/_bulk", bulk_body(1) + "{bad\n{}\n", NDJSON_TYPE, 400, "x_content_parse_exception"),
    ("/audit/_bulk", bulk_body(1), {"Content-Type": "text/plain"}, 406, None),
])
def test_bulk_refuses_a_malformed_request_whole(
    siem: Siem, path: str, body: str, headers: dict[str, str], status: int, kind: str | None
) -> None:
    with siem.http() as client:
        reply = client.post(path, content=body, headers=headers)
    assert reply.status_code == status
    if kind:
        assert reply.json()["error"]["type"] == kind
    assert siem.received()["bulk"]["docs"] == []


def test_bulk_accepts_gzip(siem: Siem) -> None:
    with siem.http() as client:
        reply = client.post("/audit/_bulk", content=gzip.compress(bulk_body(1, 2).encode()),
                            headers={**NDJSON_TYPE, "Content-Encoding": "gzip"})
    assert reply.json()["errors"] is False
    assert len(siem.received()["bulk"]["docs"]) == 2


# --- injected faults ---------------------------------------------------------------------


def test_fail_the_next_n_requests_then_recover_by_itself(siem: Siem) -> None:
    siem.control("fail", {"status": 503, "count": 2, "retry_after": 1})
    replies = [siem.hec(hec_batch(record(n))) for n in (1, 2, 3)]
    assert [r.status_code for r in replies] == [503, 503, 200]
    assert replies[0].json() == {"text": "Server is busy", "code": 9}
    assert replies[0].headers["retry-after"] == "1"
    got = siem.received()
    assert got["hec"]["ids"] == {record(3)["id"]: 1}  # a refused request stores nothing
    assert [(r["route"], r["status"], r["docs"]) for r in got["requests"]] == [
        ("hec", 503, 0), ("hec", 503, 0), ("hec", 200, 1)]
    assert siem.status()["fail"] is None


def test_fail_every_request_until_recover(siem: Siem) -> None:
    siem.control("fail", {"status": 429})
    with siem.http() as client:
        failed = [client.post("/audit/_bulk", content=bulk_body(1), headers=NDJSON_TYPE)
                  for _ in range(3)]
        assert {r.status_code for r in failed} == {429}
        assert failed[0].json()["status"] == 429  # Elasticsearch's error shape
        siem.control("recover")
        ok = client.post("/audit/_bulk", content=bulk_body(1), headers=NDJSON_TYPE)
    assert ok.status_code == 200 and ok.json()["errors"] is False
    assert siem.received()["bulk"]["ids"] == {record(1)["id"]: 1}


def test_stall_times_a_client_out_and_release_lets_the_next_request_through(
    siem: Siem,
) -> None:
    siem.control("stall")
    body = json.dumps(record(1))
    with siem.http(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/ndjson", content=body)
    assert siem.status()["held"] == 1
    assert siem.control("release") == {"released": 1}
    with siem.http() as client:  # the retry an at-least-once sender makes
        assert client.post("/ndjson", content=body).status_code == 200
    # the held request was read whole, so it is stored too: the retry is a duplicate
    ids = wait_until(lambda: siem.received()["ndjson"]["ids"].get(record(1)["id"]) == 2,
                     timeout=5, what="both copies stored")
    assert ids and siem.status()["held"] == 0


def test_stall_for_seconds_answers_late_and_only_count_requests(siem: Siem) -> None:
    siem.control("stall", {"seconds": 0.5, "count": 1})
    with siem.http() as client:
        started = time.monotonic()
        late = siem.hec(hec_batch(record(1)))
        held_for = time.monotonic() - started
        assert client.get("/services/collector/health").status_code == 200
    assert late.status_code == 200 and held_for >= 0.5
    assert siem.status()["stall"] is None


def test_stall_then_fail_applies_both(siem: Siem) -> None:
    siem.control("stall", {"seconds": 0.2, "count": 1})
    siem.control("fail", {"status": 500, "count": 1})
    reply = siem.hec(hec_batch(record(1)))
    assert (reply.status_code, reply.json()["code"]) == (500, 8)
    assert siem.received()["hec"]["docs"] == []


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/_siem/nope", {}, 404),
    ("GET", "/_siem/reset", None, 404),
    ("POST", "/_siem/fail", {"status": "503"}, 400),
    ("POST", "/_siem/fail", {"status": 503, "count": 0}, 400),
    ("POST", "/_siem/fail", {"status": 503, "retry_after": 0.5}, 400),  # whole seconds
    ("POST", "/_siem/stall", {"seconds": -1}, 400),
    ("POST", "/_siem/config", {"hec_ack": "yes"}, 400),
    ("POST", "/_siem/config", {"ack": True}, 400),  # unknown key
])
def test_control_api_refuses_what_it_does_not_know(
    siem: Siem, method: str, path: str, body: dict[str, Any] | None, status: int
) -> None:
    with siem.http() as client:
        reply = client.request(method, path, json=body)
    assert reply.status_code == status and "error" in reply.json()
    assert siem.status()["fail"] is None and siem.status()["stall"] is None


def test_unknown_routes_are_404_and_recorded(siem: Siem) -> None:
    with siem.http() as client:
        assert client.post("/services/collector/raw", content="x").status_code == 404
    assert [(r["route"], r["status"]) for r in siem.received()["requests"]] == [(None, 404)]


# --- process and in-process lifecycle, TLS ---------------------------------------------


def test_cli_serves_tls_with_acks_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc, info = _start("--pki-dir", str(tmp_path), "--hec-token", "t0k", "--hec-ack",
                        "--hec-ack-delay", "release")
    try:
        assert info["url"] == f"https://127.0.0.1:{info['port']}"
        assert info["ca"] == str(tmp_path / "ca.pem")
        siem = Siem(info["url"], Path(info["ca"]))
        reply = siem.hec(hec_batch(record(1)), channel=str(uuid.uuid4()), token="t0k")
        assert reply.json() == {"text": "Success", "code": 0, "ackId": 0}
        assert siem.status()["config"] == {"hec_token": "t0k", "hec_ack": True,
                                           "ack_delay": None}
        with httpx.Client(base_url=info["url"]) as untrusting, \
                pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.get("/services/collector/health")
    finally:
        assert _stop(proc) == 0


def test_in_process_stop_ends_held_and_idle_connections(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], float]:
        server = FakeSiem(pki=make_pki(tmp_path))
        await server.start()
        server.stall()
        async with httpx.AsyncClient(base_url=server.url, verify=str(tmp_path / "ca.pem"),
                                     timeout=30) as client:
            held = asyncio.ensure_future(client.post("/ndjson", content=json.dumps(record(1))))

            async def until_held() -> None:
                while server.status()["held"] == 0:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(until_held(), timeout=START_TIMEOUT)
            started = time.monotonic()
            await asyncio.wait_for(server.stop(), timeout=STOP_TIMEOUT)
            with pytest.raises(httpx.RemoteProtocolError):
                await held
        return [r["path"] for r in server.requests], time.monotonic() - started

    paths, took = asyncio.run(scenario())
    assert paths == ["/ndjson"] and took < STOP_TIMEOUT
