"""Bounded decoding of request bodies (`egressguard.core.bodies`), and in the pipeline."""

from __future__ import annotations

import gzip
import zlib

import brotli
import orjson
import pytest
import zstandard

from egressguard.core import bodies
from egressguard.core.errors import RequestTooLarge

TEXT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}
RAW_DEFLATE = zlib.compressobj(wbits=-zlib.MAX_WBITS)


@pytest.mark.parametrize("name", ENCODERS)
def test_each_encoding_decodes(name: str) -> None:
    assert bodies.decode(ENCODERS[name](TEXT), name) == TEXT
    assert bodies.decode(ENCODERS[name](TEXT), name.upper()) == TEXT


@pytest.mark.parametrize("name", ENCODERS)
def test_a_bomb_stops_at_the_limit(name: str) -> None:
    bomb = ENCODERS[name](b"\0" * (64 << 20))  # 64 MiB of zeros, tens of KB encoded
    assert len(bomb) < 1 << 20
    with pytest.raises(RequestTooLarge) as info:
        bodies.decode(bomb, name, limit=1 << 20)
    assert (info.value.status, info.value.reason) == (413, "body_too_large")


@pytest.mark.parametrize("name", ENCODERS)
def test_a_truncated_or_false_body_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        bodies.decode(ENCODERS[name](TEXT)[:-6], name)
    with pytest.raises(ValueError):
        bodies.decode(b"this is not " + name.encode(), name)


def test_raw_deflate_stacked_encodings_and_identity() -> None:
    raw = RAW_DEFLATE.compress(TEXT) + RAW_DEFLATE.flush()
    assert bodies.decode(raw, "deflate") == TEXT
    assert bodies.decode(brotli.compress(gzip.compress(TEXT)), "gzip, br") == TEXT
    assert bodies.decode(TEXT, "identity") == TEXT and bodies.decode(TEXT, "") == TEXT
    with pytest.raises(RequestTooLarge):
        bodies.decode(TEXT, "", limit=10)
    with pytest.raises(ValueError, match="unknown content-encoding 'compress'"):
        bodies.decode(TEXT, "compress")


def test_the_pipeline_refuses_a_bomb_and_redacts_inside_compressed_bodies(pipeline) -> None:
    token = pipeline.token()
    bomb = gzip.compress(b" " * (32 << 20))
    flow = pipeline.send("api.openai.com", headers=[
        ("Authorization", f"Bearer {token}"), ("content-type", "application/json"),
        ("content-encoding", "gzip")], body=bomb)
    assert flow.response.status_code == 413
    assert orjson.loads(flow.response.content)["error"]["code"] == "body_too_large"
    assert pipeline.store.asked == []


# -- answers: buffered and streamed ---------------------------------------------------------

def test_a_buffered_answer_bomb_is_refused_as_the_vendors_fault() -> None:
    from egressguard.core.errors import AnswerRefused

    bomb = gzip.compress(b"\0" * (8 << 20))
    assert bodies.decode_answer(gzip.compress(TEXT), "gzip") == TEXT
    with pytest.raises(AnswerRefused) as info:
        bodies.decode_answer(bomb, "gzip", limit=1 << 20)
    assert (info.value.status, info.value.reason) == (502, "answer_too_large")
    assert "was not passed on" in info.value.message


STREAM = b"".join(b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % i
                  for i in range(2000))


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_stream_decodes_piece_by_piece(name: str, piece: int) -> None:
    encoded = ENCODERS[name](STREAM)
    decoder = bodies.StreamDecoder(name)
    out = b"".join(decoder.feed(encoded[i:i + piece]) for i in range(0, len(encoded), piece))
    assert out == STREAM


def test_a_raw_deflate_stream_decodes_too() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    encoded = raw.compress(STREAM) + raw.flush()
    decoder = bodies.StreamDecoder("deflate")
    assert b"".join(decoder.feed(encoded[i:i + 100]) for i in range(0, len(encoded), 100)) \
        == STREAM


@pytest.mark.parametrize("name", ENCODERS)
def test_a_bomb_in_one_streamed_piece_stops_at_the_limit(name: str) -> None:
    from egressguard.core.errors import AnswerRefused

    bomb = ENCODERS[name](b"\0" * (16 << 20))  # one piece of a few KB
    decoder = bodies.StreamDecoder(name, limit=1 << 20)
    with pytest.raises(AnswerRefused) as info:
        decoder.feed(bomb)
    assert info.value.reason == "answer_too_large"


def test_a_corrupt_or_unknown_stream_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown content-encoding 'compress'"):
        bodies.StreamDecoder("compress")
    with pytest.raises(ValueError):
        bodies.StreamDecoder("gzip").feed(b"this is not gzip at all")
