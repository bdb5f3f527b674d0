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

    .venv/bin/python bench/overhead.py [--rounds 5] [--seconds 4] [--connections auto]

Exit status: 0 when everything ran (whether or not the targets are met), 1 when a
request failed or the audit check did not add up, 2 when the set-up could not start.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy.version import VERSION as MITMPROXY_VERSION

from egressguard.tools.procs import free_port, port_open, spawn, terminate, wait_until
from egressguard.tools.stack import Stack

HERE = Path(__file__).resolve().parent
URL = "https://api.openai.com/bench"
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}]}'
AGENT = "bench-agent"
CONCURRENCIES = (1, 20)
TARGET_RATIO = 0.85  # egressguard requests/s over bare mitmdump's
TARGET_ADDED_P50_MS = 0.5
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


def hey(proxy: str, concurrency: int, *, seconds: float | None = None,
        requests: int | None = None, keepalive: bool = True,
        timeout: int = HEY_TIMEOUT) -> HeyRun:
    args = ["hey", "-c", str(concurrency), "-t", str(timeout), "-m", "POST",
            "-T", "application/json", "-d", BODY, "-x", proxy]
    args += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests or concurrency)]
    if not keepalive:
        args.append("-disable-keepalive")
    done = subprocess.run([*args, URL], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"hey exited with {done.returncode}: {done.stderr.strip()}")
    return parse_hey(done.stdout)


# -- the two proxies ----------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    url: str  # for hey -x; egressguard's carries AGENT:TOKEN (hey sends it on CONNECT)
    served: Counter[int] = field(default_factory=Counter)  # every status hey got, all runs

    def run(self, concurrency: int, *, seconds: float | None = None,
            requests: int | None = None, keepalive: bool = True,
            timeout: int = HEY_TIMEOUT) -> HeyRun:
        result = hey(self.url, concurrency, seconds=seconds, requests=requests,
                     keepalive=keepalive, timeout=timeout)
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


@contextmanager
def proxies(workdir: Path) -> Iterator[tuple[Proxy, Proxy, Stack]]:
    stack = Stack(workdir / "stack")
    bare: subprocess.Popen[bytes] | None = None
    try:
        stack.start()
        stack.put_key("openai", "sk-bench-" + secrets.token_hex(16))
        token = stack.token(AGENT)
        port = free_port()
        bare = start_bare_mitmdump(stack, port, workdir / "mitmdump.log")
        yield (Proxy("bare mitmdump", f"http://127.0.0.1:{port}"),
               Proxy("egressguard", stack.proxy_url(AGENT, token)), stack)
    finally:
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


def choose_connections(mode: str, bare: Proxy, eg: Proxy) -> tuple[bool, str]:
    """(keep-alive?, why not): kept-alive connections unless they stall or `mode` says no."""
    if mode != "auto":
        return mode == "keepalive", ""
    stalled = [p.name for p in (bare, eg) if not keepalive_works(p)]
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


def measure(bare: Proxy, eg: Proxy, rounds: int, seconds: float, warmup: float,
            keepalive: bool) -> dict[int, Pairs]:
    for proxy in (bare, eg):  # connections, leaf certificates, the Vault cache, CPU caches
        for c in CONCURRENCIES:
            check(proxy, c, proxy.run(c, seconds=warmup, keepalive=keepalive), "warm-up")
    results = {c: Pairs() for c in CONCURRENCIES}
    for r in range(rounds):
        for c in CONCURRENCIES:
            first_bare = (r + c) % 2 == 0  # alternate who goes first
            for proxy in (bare, eg) if first_bare else (eg, bare):
                run = check(proxy, c, proxy.run(c, seconds=seconds, keepalive=keepalive),
                            f"round {r + 1}")
                (results[c].bare if proxy is bare else results[c].eg).append(run)
                print(f"  round {r + 1}  c={c:<3} {proxy.name:<14} {run.rps:8.1f} req/s  "
                      f"p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                      f"({run.requests} requests)", flush=True)
    return results


def check(proxy: Proxy, concurrency: int, run: HeyRun, what: str) -> HeyRun:
    if run.ok == 0 or run.problems():
        raise BenchError(f"{what}, c={concurrency}, {proxy.name}: {run.ok} x 200 but "
                         + "; ".join(run.problems() or ["no requests completed"]))
    return run


def audit_check(stack: Stack, eg: Proxy) -> str:
    """One journal record per request egressguard answered, each a 200 for /bench."""
    records = stack.records()
    answered = sum(eg.served.values())
    ok = sum(1 for r in records
             if r.get("path") == "/bench" and r.get("status") == 200 and r.get("kind") == "request")
    line = (f"audit: {len(records)} journal records; {ok} are 200s for /bench, "
            f"for {eg.served[200]} 200s (of {answered} answers) hey got through egressguard")
    if ok != eg.served[200] or len(records) < answered:
        raise BenchError(line + " -- they should match")
    return line + " -- OK"


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
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = p.parse_args(argv)
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
        with proxies(workdir) as (bare, eg, stack):
            status = 1
            keepalive, stall = choose_connections(args.connections, bare, eg)
            how = "kept-alive connections" if keepalive else "a new connection per request"
            if stall:
                print(f"NOTE: {stall}.\nMeasuring both proxies with a new connection per "
                      "request (hey -disable-keepalive) instead.\n", flush=True)
            print(f"POST {URL} ({len(BODY)}-byte JSON body), {how}; {args.rounds} rounds of "
                  f"{args.seconds:g} s per proxy and concurrency, after {args.warmup:g} s "
                  "warm-ups", flush=True)
            results = measure(bare, eg, args.rounds, args.seconds, args.warmup, keepalive)
            print(f"\nMedians of {args.rounds} rounds, {how} (ratio and added p50: medians "
                  f"of the per-round pairs):\n\n{table(results)}\n")
            print(audit_check(stack, eg))
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
