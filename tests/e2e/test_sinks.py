"""Audit records to the SIEM end to end: the real proxy with `--sinks`, its shipper
process, a real rsyslogd (TLS, CEF), the fake SIEM's HEC (indexer acks) and NDJSON
endpoints, and the openai SDK as the agent. Every record reaches every sink through a
30-second outage and through a `kill -9` of the proxy; the journal verifies with the
public key; `audit sinks` shows where each sink stands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from rsyslog import Rsyslog

from egressguard.backends.journal import read_records
from egressguard.tools.fakesiem import DEFAULT_HEC_TOKEN, SiemControl
from egressguard.tools.procs import start_announced, stop_announced, wait_until
from egressguard.tools.stack import Stack

pytestmark = pytest.mark.e2e
HEC_ENV = "EGRESSGUARD_TEST_HEC_TOKEN"
OUTAGE = 30.0  # seconds the HEC endpoint refuses everything
_SD_ID = re.compile(rb'\[egressguard@32473 id="([0-9a-f]{32})"')


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path_factory.mktemp("rsyslog")) as server:
        yield server


@pytest.fixture(scope="module")
def siem() -> Iterator[SiemControl]:
    proc, info = start_announced([sys.executable, "-m", "egressguard.tools.fakesiem",
                                  "--listen", "127.0.0.1:0", "--hec-ack",
                                  "--hec-ack-delay", "0.2"])
    try:
        yield SiemControl(info["url"])
    finally:
        stop_announced(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, rsyslog: Rsyslog,
          siem: SiemControl) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("sinks")
    sinks = work / "sinks.yaml"
    sinks.write_text(f"""\
version: 1
sinks:
  - name: siem-syslog
    type: syslog
    address: 127.0.0.1:{rsyslog.tls_port}
    ca: {rsyslog.ca_file}
    server_name: localhost
    format: cef
    batch: {{max_wait: 100ms}}
    retry: {{initial: 200ms, max: 2s}}
  - name: splunk
    type: splunk_hec
    url: {siem.url}
    token_env: {HEC_ENV}
    ack: true
    batch: {{max_wait: 100ms}}
    retry: {{initial: 200ms, max: 2s}}
  - name: lake
    type: http
    url: {siem.url}/ndjson
    gzip: true
    mapping: ocsf
    batch: {{max_wait: 100ms}}
    retry: {{initial: 200ms, max: 2s}}
""")
    os.environ[HEC_ENV] = DEFAULT_HEC_TOKEN  # the proxy's shipper reads it at start
    try:
        with Stack(work, proxy_args=("--sinks", str(sinks), "--node", "egress-e2e",
                                     "--checkpoint-seconds", "1")) as s:
            yield s
    finally:
        os.environ.pop(HEC_ENV, None)


@pytest.fixture(scope="module")
def client(stack: Stack, keys: dict[str, str], openai_client: Any) -> openai.OpenAI:
    made: openai.OpenAI = openai_client(api_key=stack.token("siem-agent"))
    return made


@pytest.fixture(scope="module")
def openai_client(stack: Stack) -> Iterator[Callable[..., openai.OpenAI]]:
    made: list[openai.OpenAI] = []

    def make(api_key: str) -> openai.OpenAI:
        made.append(openai.OpenAI(
            api_key=api_key, base_url="https://api.openai.com/v1", max_retries=0, timeout=30,
            http_client=openai.DefaultHttpxClient(proxy=stack.proxy,
                                                  verify=stack.agent_ssl_context())))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="module")
def keys(stack: Stack) -> None:
    stack.put_key("openai", "sk-test-" + os.urandom(16).hex())


def ask(client: openai.OpenAI) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}])
    return str(raw.headers["x-egressguard-request-id"])


def syslog_ids(rsyslog: Rsyslog) -> set[str]:
    return {m.group(1).decode() for line in rsyslog.messages()
            if (m := _SD_ID.search(line))}


def hec_ids(siem: SiemControl) -> set[str]:
    return {d["doc"]["event"]["id"] for d in siem.received()["hec"]["docs"]}


def lake_ids(siem: SiemControl) -> set[str]:
    return {d["doc"]["metadata"]["uid"] for d in siem.received()["ndjson"]["docs"]}


def wait_delivered(ids: set[str], rsyslog: Rsyslog, siem: SiemControl,
                   timeout: float = 60.0) -> None:
    for name, seen in (("syslog", lambda: syslog_ids(rsyslog)), ("HEC", lambda: hec_ids(siem)),
                       ("NDJSON", lambda: lake_ids(siem))):
        try:
            wait_until(lambda seen=seen: ids <= seen(), timeout=timeout,
                       what=f"{len(ids)} records in {name}")
        except TimeoutError:
            missing = ids - seen()
            raise AssertionError(f"{len(missing)} records never reached {name}") from None


def journal_ids(stack: Stack) -> set[str]:
    return {r["id"] for r in read_records([stack.journal])}


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", *args],
                          capture_output=True, text=True, check=False)


def test_every_record_reaches_every_sink(stack: Stack, client: openai.OpenAI,
                                         rsyslog: Rsyslog, siem: SiemControl) -> None:
    answered = {ask(client) for _ in range(10)}
    wait_delivered(answered, rsyslog, siem)
    line = next(m for m in rsyslog.messages() if next(iter(answered)).encode() in m)
    assert b"CEF:0|egressguard|egressguard|" in line and b"suser=siem-agent" in line
    status = audit("sinks", "--journal", str(stack.journal), "--sinks",
                   str(stack.workdir / "sinks.yaml"))
    assert status.returncode == 0, status.stderr
    assert [ln.split()[0] for ln in status.stdout.splitlines()[1:]] == [
        "lake", "siem-syslog", "splunk"]
    assert "FAILING" not in status.stdout


class Load:
    """Agents sending requests in the background; keeps the ids of every answer that
    reached an agent."""

    def __init__(self, clients: list[openai.OpenAI], pause: float = 0.05) -> None:
        self.clients, self.pause = clients, pause
        self.answered: set[str] = set()
        self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                         for c in clients]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, client: openai.OpenAI) -> None:
        while not self._stop.is_set():
            try:
                self.answered.add(ask(client))
            except (openai.APIError, KeyError):
                self.failed += 1  # the proxy was down: no answer reached the agent
            self._stop.wait(self.pause)


def test_a_sink_outage_of_30s_loses_nothing(stack: Stack, client: openai.OpenAI,
                                           rsyslog: Rsyslog, siem: SiemControl) -> None:
    siem.control("fail", {"status": 503})
    outage_ends = time.monotonic() + OUTAGE
    with Load([client]) as load:
        wait_until(lambda: "FAILING" in audit(
            "sinks", "--journal", str(stack.journal)).stdout, timeout=20,
            what="`audit sinks` to show the failing sink")
        during = set(load.answered)
        wait_until(lambda: during <= syslog_ids(rsyslog), timeout=30,
                   what="syslog to go on during the HEC outage")  # sinks are independent
        assert not during & hec_ids(siem)  # nothing got through the outage...
        time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage lasts its 30 s
        siem.control("recover")
    assert len(load.answered) > 50, load.answered
    wait_delivered(journal_ids(stack), rsyslog, siem, timeout=90)  # ...and all afterwards


def test_kill_9_mid_load_and_restart_delivers_every_answered_record(
        stack: Stack, openai_client: Callable[..., openai.OpenAI], rsyslog: Rsyslog,
        siem: SiemControl) -> None:
    agents = [openai_client(api_key=stack.token(f"load-{i}")) for i in range(4)]
    with Load(agents, pause=0.0) as load:
        wait_until(lambda: len(load.answered) >= 40, timeout=60, what="40 answers")
        stack.kill_proxy()  # mid-load: requests are in flight
        before_restart = set(load.answered)
        stack.start_proxy()
        wait_until(lambda: len(load.answered) >= len(before_restart) + 20, timeout=60,
                   what="answers after the restart")
    wait_delivered(set(load.answered), rsyslog, siem, timeout=90)
    assert before_restart <= journal_ids(stack)
    pubkey = stack.workdir / "audit.pub"
    printed = audit("pubkey", "--state", str(stack.state))
    assert printed.returncode == 0, printed.stderr
    pubkey.write_text(printed.stdout)
    verified = audit("verify", "--pubkey", str(pubkey), str(stack.journal))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert re.search(r"\d+ checkpoints, (\d+) signatures verified", verified.stdout)
    # checkpoints reach the SIEM too: rewriting the journal afterwards shows there
    checkpoints = [r for r in read_records([stack.journal]) if r["kind"] == "checkpoint"]
    assert checkpoints and {c["id"] for c in checkpoints[:3]} <= hec_ids(siem)


def test_the_shipper_ends_with_the_proxy(stack: Stack) -> None:
    def shippers() -> list[int]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"ship" in cmd and str(stack.journal).encode() in cmd:
                    found.append(int(pid))
        return found

    wait_until(lambda: len(shippers()) == 1, timeout=20, what="one shipper running")
    stack.kill_proxy()
    wait_until(lambda: not shippers(), timeout=20, what="the shipper to end with the proxy")
    stack.start_proxy()
    wait_until(lambda: len(shippers()) == 1, timeout=20, what="the shipper to start again")
    lock = stack.journal / "cursors" / "ship.lock"
    wait_until(lambda: lock.read_text().strip() == str(shippers()[0]), timeout=20,
               what="the new shipper to hold the journal's shipping lock")
