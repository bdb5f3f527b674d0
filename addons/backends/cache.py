"""Where the response cache keeps answers — in this process (`MemoryStore`) or in Redis
to share them between replicas (`RedisStore`) — and the semantic index that finds the
answer to an earlier conversation close enough to a new one (`SemanticIndex`).

A cache never fails a request: a store that cannot answer is a miss, one that cannot
keep an answer keeps nothing, and both say so in the log (at most once a minute) and
in a counter. Keys come from `egressguard.core.cachekey`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson

from egressguard.backends import resp
from egressguard.backends.counters import redact

log = logging.getLogger(__name__)

Clock = Callable[[], float]

MAX_ANSWER_BYTES = 4 * 2**20  # an answer larger than this is not worth keeping anywhere
_MAGIC = b"EGC1"  # the format's version: a different one is garbage to this code
_HEAD = struct.Struct(">4sI")  # magic, length of the JSON header; the body follows it


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer as the vendor sent it, and what replaying it saves."""

    status: int  # always 200 in practice
    content_type: str  # "application/json" or "text/event-stream"
    body: bytes  # identity encoding (decoded), exactly as the vendor sent it
    model: str | None
    usage: dict[str, int] | None  # {"input_tokens", "output_tokens"} when it was stored
    stored_at: float  # epoch seconds

    def to_bytes(self) -> bytes:
        head = orjson.dumps({"status": self.status, "content_type": self.content_type,
                             "model": self.model, "usage": self.usage,
                             "stored_at": self.stored_at})
        return _HEAD.pack(_MAGIC, len(head)) + head + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedAnswer:
        """The answer `to_bytes` wrote; ValueError for anything else."""
        if len(data) < _HEAD.size:
            raise ValueError("too short for a cached answer")
        magic, size = _HEAD.unpack_from(data)
        if magic != _MAGIC or size > len(data) - _HEAD.size:
            raise ValueError("not a cached answer of this version")
        try:
            head = orjson.loads(data[_HEAD.size:_HEAD.size + size])
            status, content_type, model, usage, stored_at = (
                head["status"], head["content_type"], head["model"], head["usage"],
                head["stored_at"])
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise ValueError("a cached answer's header is not readable") from None
        if not (type(status) is int and isinstance(content_type, str)
                and (model is None or isinstance(model, str))
                and type(stored_at) in (int, float) and _usage(usage)):
            raise ValueError("a cached answer's header has fields of the wrong type")
        return cls(status, content_type, bytes(data[_HEAD.size + size:]), model, usage,
                   float(stored_at))


def _usage(usage: object) -> bool:
    return usage is None or isinstance(usage, dict) and all(
        isinstance(k, str) and type(v) is int for k, v in usage.items())


class AnswerStore(Protocol):
    async def get(self, key: str) -> CachedAnswer | None:
        """The answer kept under `key`, or None (never kept, expired, evicted, or the
        store cannot answer)."""
        ...

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        """Keep `answer` for `ttl` seconds, if the store can; never raises."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Answers in this process: least recently used first out, within `max_entries`
    and `max_bytes` (bodies plus a fixed overhead each), and each gone at its own
    expiry. An answer over a sixteenth of `max_bytes` is not kept: one huge answer
    would push out hundreds of ordinary ones. No method awaits: each runs whole on the
    event loop."""

    OVERHEAD = 256  # bytes counted per entry for the key, header and bookkeeping

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 * 2**20,
                 clock: Clock = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[CachedAnswer, int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[2] <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        size = len(answer.body) + self.OVERHEAD
        if ttl <= 0 or size > self.max_bytes // 16:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (answer, size, self.clock() + ttl)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: str) -> None:
        self.bytes -= self._entries.pop(key)[1]


class RedisStore:
    """Answers in Redis (`SET key value PX ttl`, `GET`), shared by every replica
    pointed at it, over our own client (`resp.Redis`: one pipelined connection, each
    call bounded by `timeout`, reopened after a failure).

    Redis down, slow or answering garbage is a miss (`get` returns None) or a no-op
    (`put`): counted in `errors` and logged at most once per WARN_EVERY seconds. An
    answer over `max_bytes` is not kept (Redis would take it, but a replay that large
    is better fetched again than held in every replica's reach)."""

    WARN_EVERY = 60.0

    def __init__(self, url: str, timeout: float = 0.5, prefix: str = "egressguard:cache:",
                 max_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.address = redact(url)
        self.timeout = timeout
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.errors = 0
        try:
            self._redis = resp.Redis(url, timeout=timeout)
        except ValueError as exc:  # a bad scheme, port, database or option
            raise ValueError(f"{self.address!r}: {exc}") from None
        self._warned_at = -math.inf

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            data = await self._redis.execute("GET", self.prefix + key)
        except (resp.RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._failed("read", exc)
            return None
        if data is None:
            return None
        try:
            return CachedAnswer.from_bytes(data)
        except ValueError as exc:
            self._failed("read", exc)
            return None

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        data = answer.to_bytes()
        if ttl <= 0 or len(data) > self.max_bytes:
            return
        try:
            await self._redis.execute("SET", self.prefix + key, data, "PX",
                                      max(1, math.ceil(ttl * 1000)))
        except (resp.RedisError, OSError) as exc:
            self._failed("keep", exc)

    async def close(self) -> None:
        await self._redis.close()

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._warned_at < self.WARN_EVERY:
            return
        self._warned_at = now
        if isinstance(exc, ValueError):  # from CachedAnswer.from_bytes
            why = f"holds a value that is not a cached answer ({exc})"
        else:
            why = resp.failure(exc, self.timeout)
        log.warning("response cache: could not %s an answer: Redis at %s %s; requests go "
                    "to the vendor meanwhile (%d errors so far; next warning in %g s at "
                    "the earliest)", what, self.address, why, self.errors, self.WARN_EVERY)


class TextEmbedder(Protocol):
    """What the index needs of a model (`egressguard.backends.embedder.Embedder`)."""

    dim: int

    def embed(self, text: str) -> np.ndarray:
        """Shape (dim,), float32, unit length."""
        ...


class SemanticIndex:
    """Embeddings of cached conversations, per scope (`cachekey.semantic_parts`), each
    pointing at the key its answer is kept under and gone at its expiry. A lookup
    compares against every live vector of its scope (brute-force cosine in numpy: unit
    vectors, so a dot product); all scopes together hold at most `max_entries`, the
    oldest added first out.

    The index lives in this process even when the answers live in Redis: a replica that
    has not itself seen a conversation misses on its paraphrases (its exact repeats
    still hit through the store). An entry can outlive its answer (evicted from the
    store): the caller's `get` then misses.

    Texts are embedded in one worker thread, one at a time and never on the event loop;
    the model loads there on first use (or `warm()`). The last texts' vectors are kept,
    so the `add` after a missed `find` does not embed again. A text longer than the
    model's window (256 tokens) is matched on its end: see `backends/embedder.py`."""

    RECENT = 256  # vectors of the latest texts kept by their digest

    def __init__(self, embedder: TextEmbedder, max_entries: int = 10_000,
                 clock: Clock = time.monotonic) -> None:
        self.embedder = embedder
        self.max_entries = max_entries
        self.clock = clock
        self._vectors = np.zeros((max_entries, embedder.dim), np.float32)
        self._expires = np.zeros(max_entries, np.float64)
        self._keys: list[str | None] = [None] * max_entries
        self._scope_of: list[str | None] = [None] * max_entries
        self._scopes: dict[str, dict[int, None]] = {}  # scope -> its slots, oldest first
        self._added = 0  # slots are reused round-robin: the next one holds the oldest
        self._recent: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="egressguard-embed")

    def __len__(self) -> int:
        return sum(len(slots) for slots in self._scopes.values())

    async def warm(self) -> None:
        """Embed one word, which loads the model (in the worker)."""
        await self._embed("warm")

    async def find(self, scope: str, text: str, threshold: float) -> tuple[str, float] | None:
        """(answer key, cosine similarity) of the closest live entry of `scope` at or
        above `threshold`, or None. Embeds `text` only if the scope has entries."""
        if not self._live(scope):
            return None
        vector = await self._embed(text)
        slots = self._live(scope)  # again: the loop ran other calls while embedding
        if not slots:
            return None
        index = np.fromiter(slots, np.intp, len(slots))
        similarities = self._vectors[index] @ vector
        best = int(np.argmax(similarities))
        similarity = float(similarities[best])
        if similarity < threshold:
            return None
        key = self._keys[index[best]]
        assert key is not None
        return key, similarity

    async def add(self, scope: str, text: str, key: str, ttl: float) -> None:
        """Index `text` in `scope` as the conversation answered under `key`, for `ttl`
        seconds."""
        if ttl <= 0:
            return
        vector = await self._embed(text)
        slot = self._added % self.max_entries
        self._added += 1
        self._release(slot)
        self._vectors[slot] = vector
        self._expires[slot] = self.clock() + ttl
        self._keys[slot], self._scope_of[slot] = key, scope
        self._scopes.setdefault(scope, {})[slot] = None

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _live(self, scope: str) -> list[int]:
        """The scope's unexpired slots, dropping the expired ones on the way."""
        slots = self._scopes.get(scope)
        if not slots:
            return []
        now = self.clock()
        for slot in [s for s in slots if self._expires[s] <= now]:
            self._release(slot)
        return list(self._scopes.get(scope, ()))

    def _release(self, slot: int) -> None:
        scope = self._scope_of[slot]
        if scope is None:
            return
        slots = self._scopes[scope]
        del slots[slot]
        if not slots:
            del self._scopes[scope]
        self._keys[slot] = self._scope_of[slot] = None

    async def _embed(self, text: str) -> np.ndarray:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        vector = self._recent.get(digest)
        if vector is None:
            loop = asyncio.get_running_loop()
            vector = await loop.run_in_executor(self._worker, self.embedder.embed, text)
            self._recent[digest] = vector
            if len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(digest)
        return vector
