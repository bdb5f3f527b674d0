"""`egressguard audit report --html` on a real journal, rendered by headless Chromium:
each chart is drawn to scale with the right labels, the page asks the network for
nothing, hostile names stay text, the screenshot is not blank; and with nothing to
report, exit 1, a message and no file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends.journal import Journal
from egressguard.core import records

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
DAYS = (0, 1, 2, 4)  # nothing on day 3: the spend chart still has a (bare) slot for it
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_TEAM = 'red "team" <b>bold</b>'
AGENTS = (("alpha", "payments"), ("beta", "payments"), ("gamma", "research"),
          (HOSTILE, HOSTILE_TEAM))
MODELS = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("openai", "gpt-4o-mini"))
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  # nothing leaves the machine, whatever asks (Chromium itself does)
                  "--host-resolver-rules=MAP * ~NOTFOUND")
CHROMIUM_TIMEOUT = 60


# -- the journal ---------------------------------------------------------------------------

def request(day: int, a: int, k: int) -> records.RequestFacts:
    """Request k of agent a on that day: every 4th denied, redactions and spend vary."""
    agent, team = AGENTS[a]
    vendor, model = MODELS[(k + a) % 3]
    denied = k % 4 == 3
    found: dict[str, dict[str, int]] = {}
    if k % 3 == 0:
        found["EMAIL_ADDRESS"] = {"mask": 1 + a}
    if k % 5 == 2:
        found["CREDIT_CARD"] = {"block": 1}
    started = DAY0 + timedelta(days=day, hours=1 + k, minutes=a)
    return records.RequestFacts(
        id=records.new_id(), started=started.timestamp(), client="10.0.0.7:40000",
        method="POST", host=f"api.{vendor}.com", path="/v1/chat", node="n1", agent=agent,
        team=team, vendor=vendor, model=model, decision="deny" if denied else "allow",
        reason="model_not_allowed" if denied else "allowed",
        rule="no-large-models" if denied else ("allow-coding" if a < 2 else "allow-research"),
        status=403 if denied else 200, redactions=found or None,
        response_redactions={"API_KEY": {"mask": 1}} if k % 4 == 1 else None,
        latency_ms=2.0 if denied else 100.0 + 37 * k + 11 * a + 300 * (vendor == "anthropic"),
        usage=None if denied else {"input_tokens": 100 * (k + 1), "output_tokens": 10 * (k + 1)},
        spend_usd=None if denied else round(0.05 * (k + 1) * (a + 1), 4))


def refused_tunnel() -> records.RequestFacts:
    started = DAY0 + timedelta(days=2, hours=12)
    return records.RequestFacts(id=records.new_id(), started=started.timestamp(),
                                client="10.0.0.9:40001", method="CONNECT", host="evil.example",
                                path="", kind="connect", node="n1", decision="deny",
                                reason="host_not_allowed", status=403, latency_ms=1.0)


def all_facts() -> list[records.RequestFacts]:
    facts = [request(day, a, k) for day in DAYS for a in range(len(AGENTS))
             for k in range(2 + day + a)]
    return sorted([*facts, refused_tunnel()], key=lambda f: f.started)


FACTS = all_facts()
REQUESTS = [f for f in FACTS if f.kind == "request"]
ALLOWED = [f for f in FACTS if f.decision == "allow"]


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report") / "journal"
    writer = Journal(directory, key=Ed25519PrivateKey.generate(), node="n1")
    writer.open()
    for facts in FACTS:
        writer.append_sync(records.build(facts))
    writer.close()
    return directory


def run_report(journal: Path, out: Path, *filters: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egressguard.cli", "audit", "report",
                           "--no-cache", "--html", str(out), *filters, str(journal)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(journal: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("html") / "report.html"
    return out, run_report(journal, out)


@pytest.fixture(scope="module")
def html(report: tuple[Path, subprocess.CompletedProcess[str]]) -> str:
    out, done = report
    assert done.returncode == 0, done.stderr
    return out.read_text(encoding="utf-8")


# -- Chromium ------------------------------------------------------------------------------

def chromium(work: Path, *args: str) -> str:
    """Run headless Chromium to completion (bounded); its stdout."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("headless Chromium is needed: install the Debian package `chromium` "
                    "(`make test-deps` does)")
    profile = tempfile.mkdtemp(dir=work, prefix="chromium-profile-")
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: killed with its children
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium {' '.join(args)} did not finish in {CHROMIUM_TIMEOUT}s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {err[-3000:]}"
    return out


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked the network stack for (Chromium's own background requests,
    which belong to no page, are not the page's)."""
    log = orjson.loads(netlog.read_bytes())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and "url" in e.get("params", {})
            and "file://" in e["params"].get("network_isolation_key", "")]


def render(work: Path, page: Path) -> tuple[str, list[str]]:
    """The DOM after rendering, and the network requests the page made."""
    netlog = work / f"{page.stem}.netlog.json"
    dom = chromium(work, f"--log-net-log={netlog}", "--dump-dom", page.as_uri())
    return dom, page_requests(netlog)


@pytest.fixture(scope="module")
def rendered(html: str, report: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Node, list[str]]:
    dom, requests = render(tmp_path_factory.mktemp("chromium"), report[0])
    assert "<svg" in dom, f"Chromium rendered no chart: {dom[:500]}"
    return parse(dom), requests


@pytest.fixture(scope="module")
def dom(rendered: tuple[Node, list[str]]) -> Node:
    return rendered[0]


# -- reading the DOM ------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag and all(
            n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def walk(self) -> Iterator[Node]:
        for child in self.children:
            yield child
            yield from child.walk()

    def content(self) -> str:
        return self.text + "".join(c.content() for c in self.children)

    def own_text(self) -> str:
        """Text without tooltips (<title> children)."""
        return self.text + "".join(c.own_text() for c in self.children if c.tag != "title")

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(markup: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


def section(dom: Node, title: str) -> Node:
    found = [s for s in dom.all("section") if s.all("h2")[0].content() == title]
    assert len(found) == 1, f"no section {title!r}: " + ", ".join(
        s.all("h2")[0].content() for s in dom.all("section"))
    return found[0]


def chart(dom: Node, name: str) -> Node:
    found = dom.all("svg", id=f"chart-{name}")
    assert len(found) == 1, f"chart {name!r} drawn {len(found)} times"
    return found[0]


def bars(svg: Node) -> dict[tuple[str, str], Node]:
    """(label, series) -> its bar; each drawn once."""
    drawn = [(b.attrs["data-label"], b.attrs["data-series"]) for b in svg.all("rect")
             if "bar" in b.classes()]
    assert len(drawn) == len(set(drawn)), f"bars drawn twice: {Counter(drawn)}"
    return {(b.attrs["data-label"], b.attrs["data-series"]): b for b in svg.all("rect")
            if "bar" in b.classes()}


def assert_to_scale(svg: Node, expected: dict[tuple[str, str], float], size: str) -> None:
    """The bars are exactly the expected (label, series) pairs, each `size` (width or
    height) proportional to its value."""
    drawn = bars(svg)
    assert set(drawn) == set(expected)
    largest = max(expected, key=lambda k: expected[k])  # the least rounded
    unit = float(drawn[largest].attrs[size]) / expected[largest]
    for key, value in expected.items():
        assert abs(float(drawn[key].attrs[size]) - value * unit) <= 0.11, \
            f"{key}: drawn {drawn[key].attrs[size]}, value {value}, unit {unit:.3f}"


def texts(svg: Node, cls: str) -> list[str]:
    return [t.own_text() for t in svg.all("text") if cls in t.classes()]


def labels(svg: Node) -> list[str]:
    """Row labels as written, in order (full text: they are short enough here)."""
    return texts(svg, "label")


# -- the report ----------------------------------------------------------------------------

def test_the_command_names_the_file(report: tuple[Path, subprocess.CompletedProcess[str]]
                                    ) -> None:
    out, done = report
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and str(out) in lines[0], done.stdout
    assert f"{len(FACTS):,} records" in lines[0]


def test_the_page_references_nothing_outside_itself(html: str) -> None:
    page = parse(html)
    assert not re.search(r"https?://|//[a-z]", html, re.IGNORECASE), "an address in the page"
    assert not page.all("script") and not page.all("link") and not page.all("img") \
        and not page.all("iframe") and not page.all("object"), "an element that loads"
    for node in page.walk():
        for name in ("src", "srcset", "href", "xlink:href", "action", "data"):
            assert name not in node.attrs, f"<{node.tag} {name}=...>"
    assert "@import" not in html and "@font-face" not in html
    assert set(re.findall(r"url\(([^)]*)\)", html)) == {"#agents-hatch", "#rules-hatch"}
    assert not [k for n in page.walk() for k in n.attrs if k.startswith("on")]


def test_chromium_makes_no_request_for_the_page(rendered: tuple[Node, list[str]]) -> None:
    assert rendered[1] == []


def test_the_request_check_sees_requests(tmp_path: Path) -> None:
    """The check above can fail: a page that loads an image and a font is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!doctype html><link rel="stylesheet" href="https://fonts.example/a.css">'
                    '<p>x</p><img src="http://cdn.example/pixel.png">')
    _, requests = render(tmp_path, page)
    assert sorted(requests) == ["http://cdn.example/pixel.png", "https://fonts.example/a.css"]


def test_title_period_and_filters(dom: Node) -> None:
    first, last = FACTS[0].started, FACTS[-1].started
    when = [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC") for t in (first, last)]
    assert dom.all("title")[0].content() == "Egress audit report, 2026-03-02 to 2026-03-06"
    assert dom.all("p", class_="period")[0].content() == f"{when[0]} to {when[1]}"
    meta = dom.all("p", class_="meta")[0].content()
    assert meta.startswith(f"Filters: no filters · {len(FACTS):,} records from 1 journal file")


def test_headline_figures(dom: Node) -> None:
    cards = {c.all("dt")[0].content(): c.all("dd")[0].content() for c in dom.all("div")
             if "card" in c.classes()}
    denials = sum(f.decision == "deny" for f in FACTS)
    latencies = [f.latency_ms for f in FACTS if f.latency_ms is not None]
    assert cards == {
        "Requests": f"{len(REQUESTS):,}",
        "Denials": f"{denials:,}",
        "Spend": f"${sum(f.spend_usd or 0 for f in FACTS):,.2f}",
        "Tokens in": f"{sum((f.usage or {}).get('input_tokens') or 0 for f in FACTS):,}",
        "Tokens out": f"{sum((f.usage or {}).get('output_tokens') or 0 for f in FACTS):,}",
        "Redactions": f"{sum(n for _, _, n in redaction_counts()):,}",
        "Latency p50": f"{statistics.median(latencies):.0f} ms",
        "Latency p95": f"{quantile(latencies, 0.95):.0f} ms",
        "Agents": str(len(AGENTS)),
        "Teams": str(len({t for _, t in AGENTS})),
    }
    rate = [d.content() for d in dom.all("dd") if "sub" in d.classes()][1]
    assert rate == f"{100 * denials / len(FACTS):.1f}% of {len(FACTS)}"


def test_spend_per_day_per_team(dom: Node) -> None:
    spend: dict[tuple[str, str], float] = defaultdict(float)
    for f in ALLOWED:
        spend[(datetime.fromtimestamp(f.started, UTC).strftime("%Y-%m-%d"), f.team or "")] \
            += f.spend_usd or 0
    svg = chart(dom, "spend")
    assert_to_scale(svg, spend, "height")
    teams = sorted({t for _, t in spend}, key=lambda t: -sum(v for (_, u), v in spend.items()
                                                              if u == t))
    assert [g.own_text() for g in svg.all("g") if "legend-item" in g.classes()] == teams
    assert texts(svg, "tick")[-5:] == ["Mar 02", "Mar 03", "Mar 04", "Mar 05", "Mar 06"]
    per_day = [sum(v for (d, _), v in spend.items() if d == day) for day in
               sorted({d for d, _ in spend})]
    assert texts(svg, "value") == [f"${v:,.2f}" for v in per_day]
    assert texts(svg, "tick")[0] == "$0"  # the value axis, from 0


def test_requests_and_denials_per_agent(dom: Node) -> None:
    per = Counter((f.agent or "(no agent)", f.decision) for f in FACTS)
    expected = {(agent, "allowed" if d == "allow" else "denied"): n
                for (agent, d), n in per.items()}
    svg = chart(dom, "agents")
    assert_to_scale(svg, expected, "width")
    totals = Counter(f.agent or "(no agent)" for f in FACTS)
    order = sorted(totals, key=lambda a: (-totals[a], a))
    assert labels(svg) == order
    assert texts(svg, "value")[0] == f"{totals[order[0]]} ({per[(order[0], 'deny')]} denied)"
    denied = [b for (_, s), b in bars(svg).items() if s == "denied"]
    assert denied and all(b.attrs["fill"] == "url(#agents-hatch)" for b in denied)
    assert {b.attrs["fill"] for (_, s), b in bars(svg).items() if s == "allowed"} == {"#0072B2"}


def test_top_deciding_rules(dom: Node) -> None:
    per = Counter((f.rule or "(no rule)", f.decision) for f in FACTS)
    expected = {(rule, "allowed" if d == "allow" else "denied"): n
                for (rule, d), n in per.items()}
    svg = chart(dom, "rules")
    assert_to_scale(svg, expected, "width")
    totals = Counter(f.rule or "(no rule)" for f in FACTS)
    assert labels(svg) == sorted(totals, key=lambda r: (-totals[r], r))


def redaction_counts() -> list[tuple[str, str, int]]:
    return [(entity, side, n) for f in FACTS for side, found in
            (("in requests", f.redactions), ("in answers", f.response_redactions))
            for entity, actions in (found or {}).items() for n in actions.values()]


def test_redactions_by_entity_type(dom: Node) -> None:
    expected: dict[tuple[str, str], float] = defaultdict(int)
    for entity, side, n in redaction_counts():
        expected[(entity, side)] += n
    svg = chart(dom, "redactions")
    assert_to_scale(svg, expected, "width")
    totals = Counter()
    for (entity, _), n in expected.items():
        totals[entity] += n
    order = sorted(totals, key=lambda e: (-totals[e], e))
    assert labels(svg) == order
    assert texts(svg, "value") == [str(totals[e]) for e in order]


def quantile(values: list[float], q: float) -> float:
    """DuckDB's quantile_cont: linear between the closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def test_latency_percentiles(dom: Node) -> None:
    latencies: dict[str, list[float]] = defaultdict(list)
    for f in ALLOWED:
        latencies[f"{f.vendor} / {f.model}"].append(f.latency_ms or 0)
    expected = {(label, p): quantile(v, q) for label, v in latencies.items()
                for p, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}
    svg = chart(dom, "latency")
    assert_to_scale(svg, expected, "width")
    assert labels(svg) == sorted(latencies, key=lambda m: (-len(latencies[m]), m))
    first = labels(svg)[0]
    assert texts(svg, "value")[:3] == [f"{p} {expected[(first, p)]:.0f} ms"
                                       for p in ("p50", "p95", "p99")]


def test_hostile_names_stay_text(dom: Node, html: str) -> None:
    assert HOSTILE not in html and HOSTILE_TEAM not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert not dom.all("img") and not dom.all("b") and not dom.all("script")
    assert len(dom.all("svg")) == 5  # no element smuggled in, none lost
    assert HOSTILE in labels(chart(dom, "agents"))
    assert any(HOSTILE_TEAM == g.own_text() for g in chart(dom, "spend").all("g"))
    assert any(k == (HOSTILE, "allowed") for k in bars(chart(dom, "agents")))
    assert any(k[1] == HOSTILE_TEAM for k in bars(chart(dom, "spend")))


# -- the screenshot -------------------------------------------------------------------------

def png_pixels(path: Path) -> tuple[int, int, int, bytes]:
    """Width, height, bytes per pixel and the unfiltered pixels of an 8-bit RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        header = body if kind == b"IHDR" else header
        chunks += [body] if kind == b"IDAT" else []
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "an unexpected PNG layout"
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(chunks)), width * bpp
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), prev, bpp)
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> bytearray:
    if kind == 2:
        return bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 255
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 255
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc
                                  else corner)) & 255
    return line


def colour_count(pixels: bytes, bpp: int, rgb: str) -> int:
    """Pixels of exactly that colour (Chromium paints flat fills exactly)."""
    return pixels.count(bytes.fromhex(rgb) + (b"\xff" if bpp == 4 else b""))


def test_screenshot_is_drawn(report: tuple[Path, Any], html: str, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars",
             report[0].as_uri())
    width, height, bpp, pixels = png_pixels(shot)
    assert (width, height) == (1280, 2400)
    sample = pixels[::bpp * 7]  # every 7th pixel's red channel is plenty to judge blankness
    assert sum(1 for v in sample if v < 240) > 0.05 * len(sample), "the page is (nearly) blank"
    assert colour_count(pixels, bpp, "0072B2") > 20000, "no blue (allowed) bars"
    assert colour_count(pixels, bpp, "D55E00") > 1000, "no vermillion (denied) hatching"
    assert colour_count(pixels, bpp, "CC79A7") > 5000, "no purple (redaction) bars"


# -- nothing to report, or nothing for a chart -------------------------------------------------

def test_no_records_exit_1_with_message_and_no_file(journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.html"
    done = run_report(journal, out, "--agent", "nobody")
    assert done.returncode == 1
    assert not out.exists()
    assert done.stdout == ""
    first, last = (datetime.fromtimestamp(f.started, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                   for f in (FACTS[0], FACTS[-1]))
    assert done.stderr.strip() == ("egressguard: no records match (agent=nobody); the journal "
                                   f"holds {first} to {last}")


def test_charts_without_data_say_so(journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "tunnel.html"  # the refused tunnel only: no spend, redaction, latency
    done = run_report(journal, out, "--since", "2026-03-04T11:30Z", "--until", "2026-03-04T12:30Z")
    assert done.returncode == 0, done.stderr
    page = parse(out.read_text(encoding="utf-8"))
    empty = {s.all("h2")[0].content(): s.all("p", class_="empty")[0].content()
             for s in page.all("section") if s.all("p", class_="empty")}
    assert empty == {
        "Spend per day, by team": "No priced usage in this period.",
        "Redactions by entity type": "Nothing was redacted in this period.",
        "Latency percentiles per vendor and model":
            "No allowed request with a latency in this period.",
    }
    assert {s.attrs["id"] for s in page.all("svg")} == {"chart-agents", "chart-rules"}
    assert page.all("p", class_="meta")[0].content().startswith(
        "Filters: since 2026-03-04T11:30Z until 2026-03-04T12:30Z · 1 record from 1 journal "
        "file · ")
    assert labels(chart(page, "agents")) == ["(no agent)"]
    assert labels(chart(page, "rules")) == ["(no rule)"]


def test_teams_past_the_palette_share_one_grey(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    writer = Journal(directory, key=Ed25519PrivateKey.generate(), node="n1")
    writer.open()
    for i in range(9):  # team-i spends $(1 + i)
        writer.append_sync(records.build(records.RequestFacts(
            id=records.new_id(), started=DAY0.timestamp() + i, client="10.0.0.7:40000",
            method="POST", host="api.openai.com", path="/v1/chat", node="n1",
            agent=f"agent-{i}", team=f"team-{i}", vendor="openai", model="gpt-4o",
            status=200, latency_ms=100.0, spend_usd=1.0 + i)))
    writer.close()
    out = tmp_path / "teams.html"
    assert run_report(directory, out).returncode == 0
    svg = chart(parse(out.read_text(encoding="utf-8")), "spend")
    legend = [g.own_text() for g in svg.all("g") if "legend-item" in g.classes()]
    assert legend == [f"team-{i}" for i in range(8, 1, -1)] + ["(other teams)"]
    other = bars(svg)[("2026-03-02", "(other teams)")]
    assert other.attrs["fill"] == "#999999"
    assert other.all("title")[0].content() == "2026-03-02: (other teams) $3.00"
    assert len({b.attrs["fill"] for b in bars(svg).values()}) == 8
