"""What egressguard costs over bare mitmproxy: `hey` through both, same TLS upstream, one run.

One run starts a real egressguard set-up (OpenBao, the local TLS fake vendor, the
proxy with `--upstream-map`; see `egressguard.tools.stack`) and a bare `mitmdump` that
shares its CA, its upstream trust and its routing (`bench/bare_route.py` loads
egressguard's UpstreamMap alone), so the two differ only by the egressguard pipeline.
`hey` POSTs a small chat-completions body to https://api.openai.com/bench through each,
at concurrency 1 and 20, alternating which proxy goes first, for several rounds; the
medians are compared against the targets (throughput >= 85 % of bare, p50 added
latency <= 0.5 ms). Every response must be a 200, and egressguard's audit journal must
hold one record per request it answered, or the run fails: a benchmark of refusals, or
of a path that skips the audit write, measures nothing.

The same run also measures egressguard with rate limits and budgets on (`--limits`:
`inproc`, counters in the proxy; `redis`, `--limits-store` pointing at a real
`redis-server` the bench starts on a free port; `all`, both, the default, about 3.5
minutes; `none`, the two proxies only, as before, about 1m45s). Those proxies share the
first one's OpenBao, fake vendor, CA and token key, and load a policy in which
bench-agent's rule has per-agent request and token limits and its team daily and
monthly spend limits (with the repo's price table), all far above what the run can
use: every request is reserved against four counters and nothing is refused. Each
variant is compared with bare mitmdump and with egressguard without limits, round by
round. Limits settle only when the vendor reports usage, and the fake's /bench reports
none, so with limits the run POSTs to /v1/chat/completions instead (every proxy, with
a placeholder `Authorization` the fake wants and egressguard replaces); the fake's
record of those requests is cleared after every round. Besides throughput and latency,
the run reports each proxy's CPU time per request (from /proc, Redis's own included for
the proxy that uses it), which a shared machine disturbs less than throughput.

With `--redaction`, the run measures egressguard with redaction on instead (limits
stay off unless `--limits` says otherwise): a third proxy, `eg+redaction`, on the same
OpenBao, fake vendor, CA and token key, whose policy gives bench-agent's rule
`redact:` every structured PII type masked and secrets blocked (`pii: mask` without
PERSON/LOCATION: no NER model). hey then POSTs a ~4 KB support-chat prompt holding two
e-mail addresses and two phone numbers, no secret, to /v1/chat/completions through
every proxy (the fake's /bench is no chat endpoint, so a redacting rule would refuse
it). hey sends the same body every time, so after the first request egressguard finds
every text's findings in its per-text cache: what is measured is the body walk, the
cache lookups, the masking and the re-serialised body, not detection of new text
(bench/redaction.py times that). Besides every answer being a 200, each eg+redaction
journal record must carry the `redactions` counts the bench works out for the prompt
(with the same detector and plan), egressguard without redaction none, and the fake
vendor must receive the prompt masked. Target (issue): eg+redaction's throughput
>= 70 % of bare mitmdump's for 4 KB prompts, at c=1 and c=20.

With `--sinks`, one more proxy, `eg+2 sinks`, runs with `--sinks`: its shipper process
forwards every journal record to a fake SIEM's Splunk HEC endpoint (indexer
acknowledgement on) and its NDJSON endpoint (gzipped, OCSF). The shipper's CPU counts
with the proxy's; at the end every journal record of that proxy must be at both sinks.

    .venv/bin/python bench/overhead.py [--rounds 5] [--seconds 4] [--connections auto]
                                       [--limits none|inproc|redis|all] [--redaction]
                                       [--sinks] [--path auto|PATH]

Exit status: 0 when everything ran (whether or not the targets are met), 1 when a
request failed or the audit check did not add up, 2 when the set-up could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy.version import VERSION as MITMPROXY_VERSION

from egressguard.core import apis, entities
from egressguard.core.redact import actions, fields
from egressguard.core.redact.detect import default_detector
from egressguard.core.vendors import catalogue
from egressguard.tools.fakesiem import DEFAULT_HEC_TOKEN, SiemControl
from egressguard.tools.procs import (
    free_port,
    port_open,
    spawn,
    start_announced,
    stop_announced,
    terminate,
    wait_until,
)
from egressguard.tools.stack import Stack

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENDOR = "https://api.openai.com"
BENCH_PATH = "/bench"  # the fake answers {"ok":true} at once and records nothing
CHAT_PATH = "/v1/chat/completions"  # the fake answers with usage (so limits settle)
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}]}'
AGENT = "bench-agent"
LIMITS = {"none": (), "inproc": ("inproc",), "redis": ("redis",), "all": ("inproc", "redis")}
EG = "egressguard"
LIMIT_VARIANTS = {"inproc": "eg+limits", "redis": "eg+limits/redis"}
# every agent, every vendor; /bench is a path no vendor has (an `unknown` endpoint),
# which a rule must name, and /v1/chat/completions for the runs with limits
BASE_POLICY = """\
# bench/overhead.py: every agent, every vendor, the fake's /bench too
version: 1
rules:
  - name: bench
    endpoints: [chat, unknown]
"""
# bench-agent under limits no run can reach: every request is counted, none refused
LIMITS_POLICY = """\
# bench/overhead.py: bench-agent under limits far above what a run can use
version: 1
prices: {prices}
teams:
  bench:
    limits: {{spend_per_day: 1000000, spend_per_month: 10000000}}
agents:
  bench-agent: {{team: bench}}
rules:
  - name: bench
    match: {{agents: [bench-agent]}}
    limits:
      agent: {{requests_per_minute: 100000000, tokens_per_minute: 10000000000}}
"""
# the journal shipped to two sinks by `egressguard ship`: Splunk HEC with indexer
# acknowledgement and gzipped NDJSON, both the fake SIEM (its CPU is not counted)
SINKS = "eg+2 sinks"
SINKS_FILE = """\
version: 1
sinks:
  - {{name: splunk, type: splunk_hec, url: "{url}", token_env: EGRESSGUARD_BENCH_HEC, ack: true}}
  - {{name: lake, type: http, url: "{url}/ndjson", gzip: true, mapping: ocsf}}
"""
# bench-agent's requests redacted: every structured PII type masked, secrets blocked
REDACTION = "eg+redaction"
REDACT_PLAN = {**{e: "mask" for e in entities.PII if e not in entities.NER},
               "secrets": "block"}
REDACTION_POLICY = """\
# bench/overhead.py: bench-agent's requests redacted (pii: mask without PERSON and
# LOCATION, so no NER model; secrets: block)
version: 1
agents:
  bench-agent: {{}}
rules:
  - name: bench
    match: {{agents: [bench-agent]}}
    redact: {{{plan}}}
"""
# A ~4 KB prompt as a support agent sends it: system prompt, an earlier exchange, and a
# pasted e-mail thread with two addresses and two phone numbers (reserved example
# domains, fictional 555-01XX and Ofcom drama ranges); no secret, so nothing is refused.
REDACTION_EMAILS = ("dana.whitfield@example.com", "billing-escalations@example.org")
REDACTION_PHONES = ("+1 (415) 555-0173", "020 7946 0958")
REDACTION_BODY = json.dumps({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
    {"role": "system", "content": (
        "You are the customer support assistant of Northwind Energy. You help support agents "
        "answer customer e-mails about bills, meter readings, tariffs and moving house. "
        "Answer in the customer's language, in a friendly and concise tone, and never promise "
        "refunds or credits: say that a colleague from billing will confirm them. When a "
        "customer reports a meter reading, repeat it back and say when it will show on the "
        "next bill. When a customer moves house, list what we need: the move-out date, the "
        "final meter reading, and the new address for the final bill. If the customer is "
        "upset, acknowledge it once, then move to what we will do. Do not include internal "
        "notes, ticket numbers of other customers, or tariff codes in replies. Sign replies "
        "as 'Northwind Energy Customer Care'. Keep replies under 200 words unless the agent "
        "asks for more detail. If you are unsure about a tariff rule, say so and suggest "
        "the agent checks the tariff handbook, section 4. Moving house: a final bill is "
        "issued within ten working days of the move-out date once a final reading is on the "
        "account; without one, the bill uses an estimate, which the customer can dispute "
        "with a photo of the meter. Standing charges stop on the move-out date the customer "
        "gave us, not on the date the reading arrived. Direct debits end with the final "
        "bill: the customer does not need to contact their bank, and any credit on the "
        "account is paid back to the same bank account within fourteen days.")},
    {"role": "user", "content": (
        "Can you summarise what the customer in ticket 48213 wants? It's a long thread and "
        "I only have a few minutes before my shift ends.")},
    {"role": "assistant", "content": (
        "Sure. Please paste the thread, or the last two or three messages if it is very "
        "long, and I will summarise the request, what has been promised so far, and what "
        "is still open. If the thread mentions meter readings or dates, I will list them "
        "separately so that you can check them against the account before you reply, and "
        "I will point out anything the customer asked that nobody has answered yet.")},
    {"role": "user", "content": (
        "Here it is (newest message first):\n\n"
        f"From: Dana Whitfield <{REDACTION_EMAILS[0]}>\n"
        "Subject: Re: Re: Final bill after moving out\n\n"
        "Hello again,\n\nI moved out of the flat on Elm Street at the end of last month and "
        "sent you the final meter reading (electricity 48211, gas 10342) the same day. I "
        "still received a bill for the full month, plus a standing charge for the two weeks "
        "after I left. I asked for the bill to be corrected twice already. Your colleague on "
        "the phone said the reading had not been registered because it arrived after the "
        "cut-off, but I have the confirmation e-mail. Could you please correct the final "
        "bill and send it to my new address? I would also like to know whether the direct "
        "debit will be cancelled automatically or whether I need to ask my bank.\n\n"
        f"You can reach me on {REDACTION_PHONES[0]} in the afternoons, or forward the "
        f"corrected bill to our accounts team at {REDACTION_EMAILS[1]}, who handle "
        "payments for the household.\n\nThanks,\nDana\n\n"
        "-----Original message-----\n"
        "From: Northwind Energy Customer Care\n"
        "Subject: Re: Final bill after moving out\n\n"
        "Dear Dana,\n\nThank you for letting us know about your move. We have received "
        "your message and a colleague from billing will look at your final bill within "
        "five working days. If you have a final meter reading, please reply with it so "
        "that we can use it for the bill. If you prefer to talk to us, our landline "
        f"{REDACTION_PHONES[1]} is open on weekdays.\n\nKind regards,\n"
        "Northwind Energy Customer Care\n\n"
        "-----Original message-----\n"
        "Subject: Final bill after moving out\n\n"
        "Hi, I'm moving out of the flat on Elm Street on the 30th and a new tenant moves in "
        "the week after. What do I need to do to close my account? I will take photos of "
        "both meters on the day. Thanks, Dana\n\n"
        "Please give me a short summary, a list of what is still open, and a draft reply "
        "that I can send today. Keep the reply friendly but do not promise a refund.")},
]})
CONCURRENCIES = (1, 20)
TARGET_RATIO = 0.85  # egressguard requests/s over bare mitmdump's
TARGET_ADDED_P50_MS = 0.5
TARGET_REDACTION_RATIO = 0.70  # eg+redaction requests/s over bare mitmdump's, 4 KB prompts
HEY_TIMEOUT = 10  # seconds per request; a stalled request fails the run instead of hanging
STALL_PROBE_REQUESTS = 8  # mitmproxy opens at most 5 upstream connections per address
STALL_PROBE_TIMEOUT = 2
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
             "http_proxy", "https_proxy", "all_proxy", "no_proxy")


class BenchError(Exception):
    """The benchmark could not measure what it claims to."""


# -- hey ------------------------------------------------------------------------------


@dataclass
class HeyRun:
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def problems(self) -> list[str]:
        bad = [f"{n} x HTTP {code}" for code, n in sorted(self.statuses.items()) if code != 200]
        bad += [f"{n} x {msg}" for msg, n in self.errors.most_common()]
        return bad


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_PERCENTILE = re.compile(r"^\s+(\d+)% in ([\d.]+) secs", re.M)
_STATUS = re.compile(r"^\s+\[(\d{3})\]\s+(\d+) responses", re.M)
_ERROR = re.compile(r"^\s+\[(\d+)\]\s+(.+)$", re.M)


def parse_hey(text: str) -> HeyRun:
    """hey's summary: requests/s, the latency distribution, status and error counts."""
    rps = _RPS.search(text)
    if rps is None:
        raise BenchError(f"unexpected hey output:\n{text[-2000:]}")
    percentiles = {int(p): float(s) * 1000 for p, s in _PERCENTILE.findall(text)}
    run = HeyRun(float(rps.group(1)), percentiles.get(50, 0.0), percentiles.get(99, 0.0))
    run.statuses.update({int(code): int(n) for code, n in _STATUS.findall(text)})
    _, _, error_part = text.partition("Error distribution:")
    run.errors.update({msg.strip(): int(n) for n, msg in _ERROR.findall(error_part)})
    return run


@dataclass(frozen=True)
class Target:
    """What hey asks for: the same request through every proxy."""

    path: str = BENCH_PATH
    body: str = BODY

    @property
    def url(self) -> str:
        return VENDOR + self.path

    @property
    def headers(self) -> tuple[str, ...]:
        # the fake wants a key on every path but /bench: bare mitmdump passes this one
        # on, egressguard strips it and adds the real one (as for an SDK's placeholder)
        return () if self.path == BENCH_PATH else ("Authorization: Bearer placeholder",)


def hey(proxy: str, concurrency: int, *, target: Target = Target(),
        seconds: float | None = None, requests: int | None = None, keepalive: bool = True,
        timeout: int = HEY_TIMEOUT) -> HeyRun:
    args = ["hey", "-c", str(concurrency), "-t", str(timeout), "-m", "POST",
            "-T", "application/json", "-d", target.body, "-x", proxy]
    args += [a for h in target.headers for a in ("-H", h)]
    args += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests or concurrency)]
    if not keepalive:
        args.append("-disable-keepalive")
    done = subprocess.run([*args, target.url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"hey exited with {done.returncode}: {done.stderr.strip()}")
    return parse_hey(done.stdout)


# -- the proxies --------------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    url: str  # for hey -x; egressguard's carries AGENT:TOKEN (hey sends it on CONNECT)
    target: Target = Target()
    stack: Stack | None = None  # egressguard's: where its journal is
    pids: dict[str, int] = field(default_factory=dict)  # processes whose CPU it costs
    served: Counter[int] = field(default_factory=Counter)  # every status hey got, all runs
    # per concurrency: CPU seconds per process over the measured runs, and requests
    cpu: dict[int, Counter[str]] = field(default_factory=dict)
    cpu_requests: Counter[int] = field(default_factory=Counter)
    siem: Any = None  # the fake SIEM of the sinks variant (SiemControl)

    def measured(self, concurrency: int, seconds: float | None = None, *,
                 keepalive: bool = True) -> HeyRun:
        """A run whose processes' CPU time is counted towards CPU per request."""
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        result = self.run(concurrency, seconds=seconds, keepalive=keepalive)
        used = self.cpu.setdefault(concurrency, Counter())
        for name, pid in self.pids.items():
            used[name] += cpu_seconds(pid) - before[name]
        self.cpu_requests[concurrency] += result.requests
        return result

    def run(self, concurrency: int, *, seconds: float | None = None,
            requests: int | None = None, keepalive: bool = True,
            timeout: int = HEY_TIMEOUT) -> HeyRun:
        result = hey(self.url, concurrency, target=self.target, seconds=seconds,
                     requests=requests, keepalive=keepalive, timeout=timeout)
        self.served.update(result.statuses)
        return result


def start_bare_mitmdump(stack: Stack, port: int, log: Path) -> subprocess.Popen[bytes]:
    """mitmdump as `egressguard run` configures mitmproxy, minus the egressguard pipeline."""
    mitmdump = Path(sys.executable).with_name("mitmdump")
    route = f"api.openai.com=127.0.0.1:{stack.vendor_port}"
    args = [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", "connection_strategy=lazy",
            "--set", f"confdir={stack.certs}",
            # the bundle egressguard built from --upstream-ca: same trust store, same cost
            "--set", f"ssl_verify_upstream_trusted_ca={stack.state / 'upstream-trust.pem'}",
            "-s", str(HERE / "bare_route.py"), "--set", f"egressguard_upstream_map={route}"]
    proc = spawn(args, log=log)

    def up() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"mitmdump exited with {proc.returncode}; see {log}")
        return port_open(port)

    wait_until(up, timeout=30, what="bare mitmdump to listen")
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc; 0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_pid(stack: Stack) -> int:
    proc = stack._proxy  # noqa: SLF001 - Stack does not expose the pid; the bench needs it
    assert proc is not None
    return proc.pid


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A throw-away in-memory `redis-server` on a free loopback port; (URL, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("--limits redis needs `redis-server` (Debian package redis-server; "
                         "`make test-deps`)")
    port = free_port()
    log = workdir / "redis.log"
    proc = spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(workdir)], log=log)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"redis-server exited with {proc.returncode}; see {log}")
            return port_open(port)

        wait_until(up, timeout=10, what="redis-server to listen")
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        terminate(proc)


@contextmanager
def sinks_variant(stack: Stack, workdir: Path, token: str, target: Target) -> Iterator[Proxy]:
    """egressguard with `--sinks`: its shipper process (whose CPU counts with the proxy's)
    forwards to a fake SIEM started for it."""
    receiver, info = start_announced([sys.executable, "-m", "egressguard.tools.fakesiem",
                                      "--listen", "127.0.0.1:0", "--hec-ack"])
    os.environ["EGRESSGUARD_BENCH_HEC"] = DEFAULT_HEC_TOKEN  # the shipper reads it at start
    variant = None
    try:
        sinks_file = workdir / "sinks.yaml"
        sinks_file.write_text(SINKS_FILE.format(url=info["url"]))
        variant = start_variant(stack, workdir / "sinks", stack.policy,
                                ("--sinks", str(sinks_file)))
        pid = proxy_pid(variant)
        shipper = wait_until(lambda: _child(pid, b"ship"), timeout=20,
                             what="the proxy's shipper process")
        proxy = Proxy(SINKS, variant.proxy_url(AGENT, token), target, variant,
                      {"proxy": pid, "shipper": shipper})
        proxy.siem = SiemControl(info["url"])
        yield proxy
    finally:
        if variant is not None:
            variant.stop_proxy()
        stop_announced(receiver)


def _child(parent: int, word: bytes) -> int | None:
    """The pid of a child of `parent` whose command line holds `word`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and word in cmd.split(b"\0"):
            return int(entry.name)
    return None


def sinks_check(proxy: Proxy, timeout: float = 120.0) -> str:
    """Every record of the variant's journal at both sinks (at least once), and how long
    the last took to arrive after the load stopped."""
    assert proxy.stack is not None and proxy.siem is not None
    ids = {r["id"] for r in proxy.stack.records()}
    started = time.monotonic()

    def delivered() -> bool:
        received = proxy.siem.received()  # type: ignore[union-attr]
        hec = {d["doc"]["event"]["id"] for d in received["hec"]["docs"]}
        lake = {d["doc"]["metadata"]["uid"] for d in received["ndjson"]["docs"]}
        return ids <= hec and ids <= lake

    try:
        wait_until(delivered, timeout=timeout, what="every record at both sinks")
    except TimeoutError as exc:
        raise BenchError(f"sinks ({SINKS}): {exc}") from None
    return (f"sinks ({SINKS}): all {len(ids)} journal records at both sinks, the last "
            f"{time.monotonic() - started:.1f} s after the load stopped -- OK")


def start_variant(stack: Stack, workdir: Path, policy: Path,
                  proxy_args: tuple[str, ...]) -> Stack:
    """Another egressguard proxy on `stack`'s OpenBao, fake vendor, CA and token key
    (so the same agent token works), with its own policy, flags, journal and log.
    Stop it with `stop_proxy()` only: the rest belongs to `stack`."""
    other = Stack(workdir, policy=policy, proxy_args=proxy_args)
    other.vault, other.vendor_port = stack.vault, stack.vendor_port
    other.state, other.certs, other.pki = stack.state, stack.certs, stack.pki
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        other.start_proxy()
    except BaseException:
        other.stop_proxy()  # started but never listened
        raise
    return other


@contextmanager
def proxies(workdir: Path, limits: tuple[str, ...] = (), target: Target = Target(),
            redaction: bool = False, sinks: bool = False
            ) -> Iterator[tuple[Proxy, list[Proxy], Stack]]:
    """Bare mitmdump, then egressguard without limits and with each of `limits`, then
    with redaction, then with two sinks, if asked."""
    base_policy = workdir / "policy.yaml"
    base_policy.parent.mkdir(parents=True, exist_ok=True)
    base_policy.write_text(BASE_POLICY)
    stack = Stack(workdir / "stack", policy=base_policy)
    bare: subprocess.Popen[bytes] | None = None
    with ExitStack() as cleanup:
        try:
            stack.start()
            stack.put_key("openai", "sk-bench-" + secrets.token_hex(16))
            token = stack.token(AGENT)
            port = free_port()
            bare = start_bare_mitmdump(stack, port, workdir / "mitmdump.log")
            egs = [Proxy(EG, stack.proxy_url(AGENT, token), target, stack,
                         {"proxy": proxy_pid(stack)})]
            if limits:
                policy = workdir / "limits-policy.yaml"
                policy.write_text(LIMITS_POLICY.format(prices=REPO / "policies" / "prices.yaml"))
            for kind in limits:
                args: tuple[str, ...] = ()
                pids = {}
                if kind == "redis":
                    url, pids["redis-server"] = cleanup.enter_context(redis_server(workdir))
                    args = ("--limits-store", url)
                variant = start_variant(stack, workdir / kind, policy, args)
                cleanup.callback(variant.stop_proxy)
                egs.append(Proxy(LIMIT_VARIANTS[kind], variant.proxy_url(AGENT, token),
                                 target, variant, {"proxy": proxy_pid(variant), **pids}))
            if redaction:
                policy = workdir / "redaction-policy.yaml"
                policy.write_text(REDACTION_POLICY.format(plan=", ".join(
                    f"{k}: {v}" for k, v in REDACT_PLAN.items())))
                variant = start_variant(stack, workdir / "redaction", policy, ())
                cleanup.callback(variant.stop_proxy)
                egs.append(Proxy(REDACTION, variant.proxy_url(AGENT, token), target, variant,
                                 {"proxy": proxy_pid(variant)}))
            if sinks:
                egs.append(cleanup.enter_context(sinks_variant(stack, workdir, token, target)))
            yield (Proxy("bare mitmdump", f"http://127.0.0.1:{port}", target, None,
                         {"proxy": bare.pid}), egs, stack)
        finally:
            cleanup.close()  # variant proxies before the Redis they use
            terminate(bare)
            stack.stop()


# -- measuring ----------------------------------------------------------------------------


def keepalive_works(proxy: Proxy) -> bool:
    """Can one client connection carry more than five requests through `proxy`?"""
    run = proxy.run(1, requests=STALL_PROBE_REQUESTS, timeout=STALL_PROBE_TIMEOUT)
    return run.ok == STALL_PROBE_REQUESTS


STALL_NOTE = (
    "over one kept-alive client connection a request stalls through {who}: a regression "
    "of the upstream-map connection-reuse bug described in bench/RESULTS.md?")


def choose_connections(mode: str, *proxies: Proxy) -> tuple[bool, str]:
    """(keep-alive?, why not): kept-alive connections unless they stall or `mode` says no."""
    if mode != "auto":
        return mode == "keepalive", ""
    stalled = [p.name for p in proxies if not keepalive_works(p)]
    if not stalled:
        return True, ""
    return False, STALL_NOTE.format(who=" and ".join(stalled))


@dataclass
class Pairs:
    """The rounds at one concurrency: bare[i] and eg[i] ran back to back."""

    bare: list[HeyRun] = field(default_factory=list)
    eg: list[HeyRun] = field(default_factory=list)

    @staticmethod
    def median(runs: list[HeyRun], attr: str) -> float:
        """0 when no run has the value (hey prints 0 for a percentile it lacks data for)."""
        values = [v for r in runs if (v := getattr(r, attr))]
        return statistics.median(values) if values else 0.0

    def ratio(self) -> float:
        """Median of the per-round throughput ratios (robust to load drifting between rounds)."""
        return statistics.median(e.rps / b.rps for b, e in zip(self.bare, self.eg, strict=True))

    def added_p50(self) -> float:
        return statistics.median(e.p50_ms - b.p50_ms
                                 for b, e in zip(self.bare, self.eg, strict=True))


Runs = dict[str, list[HeyRun]]  # per proxy name, one run per round


def measure(proxies: list[Proxy], rounds: int, seconds: float, warmup: float,
            keepalive: bool, between_rounds: Callable[[], None] = lambda: None
            ) -> dict[int, Runs]:
    for proxy in proxies:  # connections, leaf certificates, the Vault cache, CPU caches
        for c in CONCURRENCIES:
            check(proxy, c, proxy.run(c, seconds=warmup, keepalive=keepalive), "warm-up")
    results: dict[int, Runs] = {c: {p.name: [] for p in proxies} for c in CONCURRENCIES}
    for r in range(rounds):
        for c in CONCURRENCIES:
            shift = (r + c) % len(proxies)  # rotate who goes first
            for proxy in proxies[shift:] + proxies[:shift]:
                run = check(proxy, c, proxy.measured(c, seconds, keepalive=keepalive),
                            f"round {r + 1}")
                results[c][proxy.name].append(run)
                print(f"  round {r + 1}  c={c:<3} {proxy.name:<15} {run.rps:8.1f} req/s  "
                      f"p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                      f"({run.requests} requests)", flush=True)
        between_rounds()
    return results


def pairs(results: dict[int, Runs], base: str, other: str) -> dict[int, Pairs]:
    return {c: Pairs(runs[base], runs[other]) for c, runs in results.items()}


def check(proxy: Proxy, concurrency: int, run: HeyRun, what: str) -> HeyRun:
    if run.ok == 0 or run.problems():
        raise BenchError(f"{what}, c={concurrency}, {proxy.name}: {run.ok} x 200 but "
                         + "; ".join(run.problems() or ["no requests completed"]))
    return run


def audit_check(eg: Proxy) -> str:
    """One journal record per request egressguard answered, each a 200 for the path."""
    assert eg.stack is not None
    records = eg.stack.records()
    answered = sum(eg.served.values())
    path = eg.target.path
    ok = sum(1 for r in records
             if r.get("path") == path and r.get("status") == 200 and r.get("kind") == "request")
    line = (f"audit ({eg.name}): {len(records)} journal records; {ok} are 200s for {path}, "
            f"for {eg.served[200]} 200s (of {answered} answers) hey got through it")
    if ok != eg.served[200] or len(records) < answered:
        raise BenchError(line + " -- they should match")
    if eg.name in LIMIT_VARIANTS.values():  # limits on: each request reserved, then settled
        reserved = sum(1 for r in records if (r.get("limits") or {}).get("state") == "reserved")
        settled = sum(1 for r in records if (r.get("limits") or {}).get("state") == "reserved"
                      and (r.get("usage") or {}).get("output_tokens") is not None)
        line += (f"; {reserved} reserved against the limits, {settled} of them with usage to "
                 "settle")
        if reserved != ok or (path == CHAT_PATH and settled != reserved):
            raise BenchError(line + " -- every request should be")
    if eg.target.body == REDACTION_BODY:  # the prompt: redacted by eg+redaction only
        want = expected_redactions(eg.target.body) if eg.name == REDACTION else None
        same = sum(1 for r in records if r.get("path") == path and r.get("status") == 200
                   and r.get("redactions") == want)
        line += f"; {same} of them with redactions {want}"
        if same != ok:
            raise BenchError(line + " -- every one should be")
    return line + " -- OK"


def expected_redactions(body: str) -> dict[str, dict[str, int]]:
    """The `redactions` an audit record of the prompt should hold: the bench's plan
    applied, with egressguard's own detector, to every text egressguard reads."""
    vendor = catalogue().by_name("openai")
    assert vendor is not None
    endpoint = apis.endpoint(vendor, "POST", CHAT_PATH)
    plan = actions.plan(REDACT_PLAN)
    outcomes = []
    for slot in fields.text_slots(vendor.api, endpoint, json.loads(body)):
        found = [f for f in default_detector().find(slot.text) if f.entity in plan]
        outcomes.append(actions.apply(slot.text, found, plan, actions.Pseudonyms()))
    counts = actions.audit_counts(outcomes)
    if any(o.blocked for o in outcomes):
        raise BenchError(f"the prompt holds what the plan blocks: {counts}")
    want = {"EMAIL_ADDRESS": len(REDACTION_EMAILS), "PHONE_NUMBER": len(REDACTION_PHONES)}
    if any(counts.get(e, {}).get("mask") != n for e, n in want.items()):
        raise BenchError(f"egressguard's detector finds {counts} in the prompt, expected "
                         f"{want} masked")
    return counts


def detection_cost(body: str, runs: int = 30) -> str:
    """What the proxy's cache spares it per request here: detecting the prompt's texts
    afresh, as for a prompt never seen before (in this process, median of `runs`)."""
    vendor = catalogue().by_name("openai")
    assert vendor is not None
    endpoint = apis.endpoint(vendor, "POST", CHAT_PATH)
    texts = [s.text for s in fields.text_slots(vendor.api, endpoint, json.loads(body))]
    detector = default_detector()
    times = []
    for _ in range(runs):
        start = time.thread_time_ns()
        for text in texts:
            detector.find(text)
        times.append(time.thread_time_ns() - start)
    return (f"detecting the prompt's {len(texts)} texts afresh (what the per-text cache "
            f"spares a repeated prompt): {statistics.median(times) / 1e6:.2f} ms of CPU "
            "in the bench process")


def vendor_check(proxy: Proxy, stack: Stack) -> str:
    """One more request through eg+redaction: the fake vendor must get it masked."""
    stack.reset_received()
    check(proxy, 1, proxy.run(1, requests=1), "vendor check")
    received = [r for r in stack.received() if r["path"] == proxy.target.path]
    if len(received) != 1:
        raise BenchError(f"the fake vendor got {len(received)} requests, expected 1")
    text = received[0]["body"]
    leaked = [v for v in (*REDACTION_EMAILS, *REDACTION_PHONES) if v in text]
    masks = {e: text.count(f"<{e}>") for e in ("EMAIL_ADDRESS", "PHONE_NUMBER")}
    line = f"vendor ({proxy.name}): the fake vendor got the prompt with {masks} masks"
    if leaked or masks != {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2}:
        raise BenchError(f"{line} and {len(leaked)} of the values in clear")
    return line + ", none of the values -- OK"


# -- reporting ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ms(value: float) -> str:
    return f"{value:.1f}" if value else "n/a"


def table(results: dict[int, Pairs]) -> str:
    columns = ["concurrency", "bare req/s", "egressguard req/s", "ratio",
               "bare p50 / p99 ms", "egressguard p50 / p99 ms", "added p50 ms",
               f"throughput >= {TARGET_RATIO:.0%}", f"added p50 <= {TARGET_ADDED_P50_MS} ms"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for c, pairs in results.items():
        b, e = pairs.bare, pairs.eg
        ratio, added = pairs.ratio(), pairs.added_p50()
        lines.append(
            f"| {c} | {pairs.median(b, 'rps'):.1f} | {pairs.median(e, 'rps'):.1f} "
            f"| {ratio:.1%} "
            f"| {ms(pairs.median(b, 'p50_ms'))} / {ms(pairs.median(b, 'p99_ms'))} "
            f"| {ms(pairs.median(e, 'p50_ms'))} / {ms(pairs.median(e, 'p99_ms'))} "
            f"| {added:+.2f} "
            f"| {verdict(ratio >= TARGET_RATIO)} | {verdict(added <= TARGET_ADDED_P50_MS)} |")
    return "\n".join(lines)


def limits_table(results: dict[int, Runs], variants: list[str]) -> str:
    """Each limits variant against bare mitmdump and against egressguard without limits,
    both as medians of the per-round pairs."""
    columns = ["concurrency", "proxy", "req/s", "p50 / p99 ms", "ratio to bare",
               "added p50 ms vs bare", "ratio to egressguard", "added p50 ms vs egressguard",
               f"throughput >= {TARGET_RATIO:.0%}", f"added p50 <= {TARGET_ADDED_P50_MS} ms"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for c, runs in results.items():
        for name in [EG, *variants]:
            vs_bare = Pairs(runs["bare mitmdump"], runs[name])
            vs_eg = Pairs(runs[EG], runs[name])
            ratio, added = vs_bare.ratio(), vs_bare.added_p50()
            own = ("(base)", "(base)") if name == EG else \
                (f"{vs_eg.ratio():.1%}", f"{vs_eg.added_p50():+.2f}")
            lines.append(
                f"| {c} | {name} | {Pairs.median(runs[name], 'rps'):.1f} "
                f"| {ms(Pairs.median(runs[name], 'p50_ms'))} / "
                f"{ms(Pairs.median(runs[name], 'p99_ms'))} "
                f"| {ratio:.1%} | {added:+.2f} | {own[0]} | {own[1]} "
                f"| {verdict(ratio >= TARGET_RATIO)} | {verdict(added <= TARGET_ADDED_P50_MS)} |")
    return "\n".join(lines)


def redaction_table(results: dict[int, Runs]) -> str:
    """eg+redaction against bare mitmdump (the target) and egressguard without it."""
    columns = ["concurrency", "bare req/s", "egressguard req/s", f"{REDACTION} req/s",
               f"{REDACTION} p50 / p99 ms", "ratio to bare", "added p50 ms vs bare",
               "ratio to egressguard", "added p50 ms vs egressguard",
               f"throughput >= {TARGET_REDACTION_RATIO:.0%} of bare"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for c, runs in results.items():
        vs_bare = Pairs(runs["bare mitmdump"], runs[REDACTION])
        vs_eg = Pairs(runs[EG], runs[REDACTION])
        ratio = vs_bare.ratio()
        lines.append(
            f"| {c} | {Pairs.median(runs['bare mitmdump'], 'rps'):.1f} "
            f"| {Pairs.median(runs[EG], 'rps'):.1f} | {Pairs.median(runs[REDACTION], 'rps'):.1f} "
            f"| {ms(Pairs.median(runs[REDACTION], 'p50_ms'))} / "
            f"{ms(Pairs.median(runs[REDACTION], 'p99_ms'))} "
            f"| {ratio:.1%} | {vs_bare.added_p50():+.2f} | {vs_eg.ratio():.1%} "
            f"| {vs_eg.added_p50():+.2f} | {verdict(ratio >= TARGET_REDACTION_RATIO)} |")
    return "\n".join(lines)


def cpu_table(proxies: list[Proxy]) -> str:
    """CPU time per request of each proxy process (and of Redis for the proxy using it),
    over all measured runs: steadier than throughput on a shared machine."""
    columns = ["concurrency", *(p.name for p in proxies)]
    if len(proxies) > 2:
        columns += [f"{p.name} minus {EG}" for p in proxies[2:]]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def per_request(p: Proxy, c: int) -> dict[str, float]:
        n = p.cpu_requests[c] or 1
        return {name: 1000 * s / n for name, s in p.cpu.get(c, Counter()).items()}

    for c in CONCURRENCIES:
        cells, totals = [str(c)], {}
        for p in proxies:
            ms_by = per_request(p, c)
            totals[p.name] = sum(ms_by.values())
            extra = [f"{v:.2f} {k}" for k, v in ms_by.items() if k != "proxy"]
            cells.append(f"{ms_by.get('proxy', 0):.2f}" + (f" (+ {', '.join(extra)})"
                                                           if extra else ""))
        cells += [f"{totals[p.name] - totals[EG]:+.2f}" for p in proxies[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    hey_version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"],
                                 capture_output=True, text=True, check=False).stdout or "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"mitmproxy {MITMPROXY_VERSION}, hey {hey_version}, load average {load}")


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (median reported)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="length of each warm-up run")
    p.add_argument("--connections", choices=("auto", "keepalive", "new"), default="auto",
                   help="keepalive: clients reuse connections (as SDKs do); new: one "
                        "connection per request; auto: keepalive unless it stalls")
    p.add_argument("--limits", choices=tuple(LIMITS), default=None,
                   help="also measure egressguard with limits on: counters in the proxy "
                        "(inproc), in a local redis-server (redis), both (all, the default "
                        "without --redaction), or neither (none: the default with "
                        "--redaction; bare vs egressguard only, as before, without)")
    p.add_argument("--redaction", action="store_true",
                   help="also measure egressguard redacting a ~4 KB chat prompt (structured "
                        "PII masked, secrets blocked, no NER), every proxy POSTing it to "
                        f"{CHAT_PATH}")
    p.add_argument("--sinks", action="store_true",
                   help="also measure egressguard shipping its journal to two sinks (Splunk "
                        "HEC with acks and NDJSON, on a fake SIEM), shipper CPU counted")
    p.add_argument("--path", default="auto",
                   help=f"the vendor path hey POSTs to; auto: {BENCH_PATH} without limits "
                        f"or redaction, {CHAT_PATH} with either (the fake reports usage "
                        "there, so reservations are settled; a redacting rule refuses "
                        f"{BENCH_PATH}, which is no chat endpoint)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = p.parse_args(argv)
    limits = LIMITS[args.limits or ("none" if args.redaction or args.sinks else "all")]
    path = args.path if args.path != "auto" else \
        CHAT_PATH if limits or args.redaction else BENCH_PATH
    if not path.startswith("/"):
        p.error(f"--path is a URL path starting with /, found {path!r}")
    if args.redaction and path == BENCH_PATH:
        p.error(f"--redaction needs a chat path: the fake's {BENCH_PATH} is none, so "
                "the redacting rule would refuse every request")
    target = Target(path, REDACTION_BODY if args.redaction else BODY)
    if shutil.which("hey") is None:
        print("bench: `hey` is not installed (Debian package `hey`; `make bench-deps`)",
              file=sys.stderr)
        return 2
    for var in PROXY_ENV:  # hey and our clients talk to the proxies named here only
        os.environ.pop(var, None)

    workdir = Path(tempfile.mkdtemp(prefix="egressguard-bench-"))
    status = 2
    print(f"egressguard overhead benchmark -- {machine()}", flush=True)
    try:
        with proxies(workdir, limits, target, args.redaction, args.sinks) as (bare, egs,
                                                                          stack):
            status = 1
            everyone = [bare, *egs]
            keepalive, stall = choose_connections(args.connections, *everyone)
            how = "kept-alive connections" if keepalive else "a new connection per request"
            if stall:
                print(f"NOTE: {stall}.\nMeasuring every proxy with a new connection per "
                      "request (hey -disable-keepalive) instead.\n", flush=True)
            print(f"POST {target.url} ({len(target.body)}-byte JSON body), {how}; {args.rounds} "
                  f"rounds of {args.seconds:g} s per proxy and concurrency, after "
                  f"{args.warmup:g} s warm-ups; proxies: "
                  + ", ".join(p.name for p in everyone), flush=True)
            # the fake keeps every request but /bench for tests to read: not millions
            forget = stack.reset_received if path != BENCH_PATH else (lambda: None)
            results = measure(everyone, args.rounds, args.seconds, args.warmup, keepalive,
                              forget)
            print(f"\nMedians of {args.rounds} rounds, {how} (ratio and added p50: medians "
                  f"of the per-round pairs):\n\n{table(pairs(results, bare.name, EG))}\n")
            if args.sinks:
                print(f"With two sinks ({SINKS}: the shipper process forwards every record "
                      "to Splunk HEC, acknowledged once indexed, and to an NDJSON endpoint; "
                      "its CPU is counted with the proxy's below):\n\n"
                      + table(pairs(results, bare.name, SINKS)) + "\n")
            if limits:
                print("With limits (reserve before forwarding, settle on the response; "
                      "4 counters per request, none ever full), against bare mitmdump and "
                      "against egressguard without limits in the same rounds:\n\n"
                      + limits_table(results, [p.name for p in egs[1:]
                                               if p.name not in (REDACTION, SINKS)]) + "\n")
            if args.redaction:
                print(f"With redaction ({REDACTION}: a ~4 KB prompt, 2 e-mail addresses and 2 "
                      "phone numbers masked per request, findings from the per-text cache "
                      "after the first; target: throughput >= "
                      f"{TARGET_REDACTION_RATIO:.0%} of bare mitmdump's):\n\n"
                      + redaction_table(results) + "\n")
            print("CPU milliseconds per request (user + system, from /proc, over the "
                  f"measured rounds):\n\n{cpu_table(everyone)}\n")
            for eg in egs:
                print(audit_check(eg))
            if args.sinks:
                print(sinks_check(egs[-1]))
            if args.redaction:
                print(vendor_check(next(e for e in egs if e.name == REDACTION), stack))
                print(detection_cost(target.body))
            if stall:
                print(f"NOTE: measured without keep-alive because {stall}.")
            status = 0
    except (BenchError, TimeoutError, RuntimeError, OSError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
    finally:
        if args.keep or status != 0:  # the logs say why it failed
            print(f"work directory (logs): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
