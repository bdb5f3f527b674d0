"""The response cache's stores and semantic index (`egressguard.backends.cache`): the
stored form, the in-process LRU (count, bytes, expiry), Redis (a real redis-server on a
free port: round trip, PX, garbage, outages that are misses, never errors), and the
index over the real embedding model (paraphrases hit within a scope, never across)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from redis_server import RedisServer

from egressguard.backends import resp
from egressguard.backends.cache import (
    CachedAnswer,
    MemoryStore,
    RedisStore,
    SemanticIndex,
)
from egressguard.backends.embedder import Embedder

ANSWER = CachedAnswer(200, "application/json", b'{"choices":[{"message":{"content":"Hi"}}]}',
                      "gpt-4o-mini", {"input_tokens": 12, "output_tokens": 3}, 1.7e9)
STREAMED = CachedAnswer(200, "text/event-stream", b"data: {}\n\ndata: [DONE]\n\n", None,
                        None, 1.7e9)
PASSWORD = "user: How do I reset my password?"
PARAPHRASE = "user: What are the steps to reset my password?"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key() -> str:
    return secrets.token_hex(32)


def answer(size: int) -> CachedAnswer:
    return CachedAnswer(200, "application/json", b"x" * size, None, None, 0.0)


# -- the stored form --------------------------------------------------------------------

@pytest.mark.parametrize("cached", [ANSWER, STREAMED, answer(0),
                                    CachedAnswer(200, "é", b"\0\xff", "m", {}, 0)])
def test_an_answer_survives_its_bytes(cached: CachedAnswer) -> None:
    data = cached.to_bytes()
    assert data.startswith(b"EGC1")
    assert CachedAnswer.from_bytes(data) == cached
    assert CachedAnswer.from_bytes(bytearray(data)) == cached


def header(head: bytes) -> bytes:
    return b"EGC1" + len(head).to_bytes(4, "big") + head


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short"),
    (b"EGC1\0\0", "too short"),
    (b"EGC2" + ANSWER.to_bytes()[4:], "not a cached answer of this version"),
    (b"EGC1\0\0\1\0{}", "not a cached answer of this version"),  # header past the end
    (header(b"{not json"), "not readable"),
    (header(b"[1, 2]"), "not readable"),
    (header(b'{"status": 200}'), "not readable"),
    (header(b'{"status": "200", "content_type": "a", "model": null, "usage": null, '
            b'"stored_at": 0}'), "wrong type"),
    (header(b'{"status": 200, "content_type": "a", "model": null, '
            b'"usage": {"input_tokens": 1.5}, "stored_at": 0}'), "wrong type"),
    (header(b'{"status": 200, "content_type": "a", "model": null, "usage": null, '
            b'"stored_at": true}'), "wrong type"),
])
def test_garbage_is_no_answer(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CachedAnswer.from_bytes(data)


# -- in process -------------------------------------------------------------------------

def test_memory_evicts_the_least_recently_used_past_its_count() -> None:
    async def body() -> None:
        store = MemoryStore(max_entries=3)
        for k in "abc":
            await store.put(k, ANSWER, 60)
        assert await store.get("a") == ANSWER  # now the most recently used
        await store.put("d", ANSWER, 60)
        assert [await store.get(k) is not None for k in "abcd"] == [True, False, True, True]
        assert len(store) == 3
    asyncio.run(body())


def test_memory_evicts_past_its_bytes_and_skips_answers_over_a_sixteenth() -> None:
    async def body() -> None:
        store = MemoryStore(max_bytes=16 * 1024)  # 1 KiB an entry at most, overhead in
        fits = answer(1024 - MemoryStore.OVERHEAD)
        await store.put("too big", answer(1024 - MemoryStore.OVERHEAD + 1), 60)
        assert await store.get("too big") is None and store.bytes == 0
        for i in range(16):
            await store.put(str(i), fits, 60)
        assert store.bytes == 16 * 1024 and len(store) == 16
        await store.get("0")
        await store.put("16", fits, 60)
        assert await store.get("1") is None  # the least recently used went
        assert await store.get("0") == fits and await store.get("16") == fits
        assert store.bytes == 16 * 1024
        await store.put("16", answer(10), 60)  # replacing frees what it held
        assert store.bytes == 15 * 1024 + 10 + MemoryStore.OVERHEAD
    asyncio.run(body())


def test_memory_entries_expire_each_at_its_own_time() -> None:
    clock = Clock()

    async def body() -> None:
        store = MemoryStore(clock=clock)
        await store.put("short", ANSWER, 10)
        await store.put("long", STREAMED, 60)
        await store.put("never", ANSWER, 0)
        clock.now += 9.99
        assert await store.get("short") == ANSWER
        clock.now += 0.01
        assert await store.get("short") is None and await store.get("never") is None
        assert await store.get("long") == STREAMED
        assert len(store) == 1 and store.bytes == len(STREAMED.body) + MemoryStore.OVERHEAD
        clock.now += 50
        assert await store.get("long") is None and store.bytes == 0
    asyncio.run(body())


# -- Redis ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def redis_store(server: RedisServer, **options: float) -> RedisStore:
    # timeouts are the outage tests' concern; these must not fail on a busy machine
    return RedisStore(server.url, prefix=f"test-{secrets.token_hex(4)}:",
                      **{"timeout": 5.0, **options})  # type: ignore[arg-type]


def test_redis_round_trip_with_its_ttl(server: RedisServer) -> None:
    k = key()

    async def body() -> None:
        store, raw = redis_store(server), resp.Redis(server.url, timeout=5)
        try:
            assert await store.get(k) is None
            await store.put(k, ANSWER, 120)
            await store.put("streamed", STREAMED, 0.25)
            assert await store.get(k) == ANSWER
            assert await store.get("streamed") == STREAMED
            assert await raw.execute("GET", store.prefix + k) == ANSWER.to_bytes()
            assert 119_000 < await raw.execute("PTTL", store.prefix + k) <= 120_000
            assert 0 < await raw.execute("PTTL", store.prefix + "streamed") <= 250
            deadline = time.monotonic() + 5
            while await store.get("streamed") is not None:
                assert time.monotonic() < deadline, "the answer outlived its TTL"
                await asyncio.sleep(0.05)
            await store.put("none", ANSWER, 0)
            assert await raw.execute("EXISTS", store.prefix + "none") == 0
            assert store.errors == 0
        finally:
            await store.close()
            await raw.close()
    asyncio.run(body())


def test_redis_does_not_keep_answers_over_its_max_bytes(server: RedisServer) -> None:
    async def body() -> None:
        store = redis_store(server, max_bytes=1000)
        try:
            await store.put("big", answer(1000), 60)
            await store.put("small", answer(900), 60)
            assert await store.get("big") is None
            assert await store.get("small") == answer(900)
        finally:
            await store.close()
    asyncio.run(body())


@pytest.mark.parametrize("value", [b"garbage", b"EGC1\0\0\0\5{}"])
def test_a_garbage_value_in_redis_is_a_miss(server: RedisServer, value: bytes,
                                            caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        store, raw = redis_store(server), resp.Redis(server.url, timeout=5)
        try:
            await raw.execute("SET", store.prefix + "k", value)
            assert await store.get("k") is None
            await raw.execute("RPUSH", store.prefix + "list", "a")  # WRONGTYPE for GET
            assert await store.get("list") is None
            assert store.errors == 2
        finally:
            await store.close()
            await raw.close()
    with caplog.at_level(logging.WARNING, "egressguard.backends.cache"):
        asyncio.run(body())
    assert len(caplog.records) == 1  # once a minute at most
    assert "not a cached answer" in caplog.text


def test_redis_down_is_a_miss_and_a_no_op_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + secrets.token_hex(8)
    with RedisServer(password=password) as own:
        url = own.url

        async def before() -> None:
            store = RedisStore(url, timeout=5)
            await store.put("k", ANSWER, 60)
            assert await store.get("k") == ANSWER
            await store.close()
        asyncio.run(before())

    async def after() -> None:
        store = RedisStore(url, timeout=0.5)
        try:
            for _ in range(3):
                assert await store.get("k") is None
                await store.put("k", ANSWER, 60)  # does not raise
            assert store.errors == 6
        finally:
            await store.close()
    with caplog.at_level(logging.WARNING, "egressguard.backends.cache"):
        asyncio.run(after())
    assert len(caplog.records) == 1
    assert "cannot be reached" in caplog.text and password not in caplog.text


def test_a_hung_redis_is_a_miss_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as own:
        own.pause()
        try:
            async def body() -> float:
                store = RedisStore(own.url, timeout=0.2)
                try:
                    started = time.monotonic()
                    assert await store.get("k") is None
                    await store.put("k", ANSWER, 60)
                    assert store.errors == 2
                    return time.monotonic() - started
                finally:
                    await store.close()
            with caplog.at_level(logging.WARNING, "egressguard.backends.cache"):
                assert asyncio.run(body()) < 2
        finally:
            own.resume()
    assert "did not answer within 0.2 s" in caplog.text


def test_a_bad_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError) as info:
        RedisStore("redis://:hunter2@localhost:6379/x")
    assert str(info.value) == ("'redis://localhost:6379/x': the database (the URL's path or "
                               "db=) must be a number")


# -- the semantic index -----------------------------------------------------------------

class Counting:
    """The real model, counting the texts it embeds."""

    def __init__(self, model: Embedder) -> None:
        self.model, self.dim, self.texts = model, model.dim, []

    def embed(self, text: str) -> np.ndarray:
        self.texts.append(text)
        return self.model.embed(text)


@pytest.fixture(scope="module")
def model() -> Embedder:
    return Embedder()


@pytest.fixture
def embedder(model: Embedder) -> Counting:
    return Counting(model)


def run(index: SemanticIndex, body: object) -> None:
    async def main() -> None:
        try:
            await body  # type: ignore[misc]
        finally:
            index.close()
    asyncio.run(main())


def test_a_paraphrase_in_the_same_scope_hits(embedder: Counting) -> None:
    index = SemanticIndex(embedder)

    async def body() -> None:
        assert await index.find("scope", PASSWORD, 0.9) is None
        assert embedder.texts == []  # nothing in the scope: nothing embedded
        await index.add("scope", PASSWORD, "answer-1", 60)
        await index.add("scope", "user: The quarterly revenue grew by 12 percent",
                        "answer-2", 60)
        found = await index.find("scope", PARAPHRASE, 0.9)
        assert found is not None and found[0] == "answer-1" and 0.9 <= found[1] < 1
        assert await index.find("scope", PARAPHRASE, found[1] + 1e-4) is None
        exact = await index.find("scope", PASSWORD, 0.9999)
        assert exact is not None and exact[0] == "answer-1"
        assert embedder.texts.count(PASSWORD) == 1  # embedded once, kept since
        assert await index.find("scope", "user: How do I reset my router?", 0.9) is None
    run(index, body())


def test_another_scope_never_hits(embedder: Counting) -> None:
    index = SemanticIndex(embedder)

    async def body() -> None:
        await index.add("team red", PASSWORD, "answer-1", 60)
        assert await index.find("team blue", PASSWORD, -1.0) is None
        assert (await index.find("team red", PASSWORD, -1.0) or ("",))[0] == "answer-1"
    run(index, body())


def test_entries_expire_each_at_its_own_time(embedder: Counting) -> None:
    clock = Clock()
    index = SemanticIndex(embedder, clock=clock)

    async def body() -> None:
        await index.add("s", PASSWORD, "short", 10)
        await index.add("s", "user: How can I reset my password?", "long", 60)
        await index.add("s", PASSWORD, "never", 0)
        assert (await index.find("s", PASSWORD, 0.9999) or ("",))[0] == "short"
        clock.now += 10
        assert (await index.find("s", PASSWORD, 0.9) or ("",))[0] == "long"
        assert len(index) == 1
        clock.now += 50
        assert await index.find("s", PASSWORD, -1.0) is None and len(index) == 0
    run(index, body())


def test_past_max_entries_the_oldest_goes_first(embedder: Counting) -> None:
    index = SemanticIndex(embedder, max_entries=2)

    async def body() -> None:
        await index.add("a", PASSWORD, "first", 60)
        await index.add("b", PASSWORD, "second", 60)
        await index.add("b", PARAPHRASE, "third", 60)
        assert len(index) == 2
        assert await index.find("a", PASSWORD, -1.0) is None
        assert (await index.find("b", PASSWORD, 0.9999) or ("",))[0] == "second"
        await index.add("c", PASSWORD, "fourth", 60)
        assert await index.find("b", PASSWORD, 0.9999) is None  # "second" went
        assert (await index.find("b", PASSWORD, -1.0) or ("",))[0] == "third"
    run(index, body())


def test_embedding_runs_off_the_event_loop(model: Embedder) -> None:
    threads: list[str] = []

    class Watching(Counting):
        def embed(self, text: str) -> np.ndarray:
            threads.append(threading.current_thread().name)
            return super().embed(text)

    index = SemanticIndex(Watching(model))

    async def body() -> None:
        await index.warm()
        await index.add("s", PASSWORD, "k", 60)
    run(index, body())
    assert len(threads) == 2 and all(n.startswith("egressguard-embed") for n in threads)
