"""Request bodies decoded from their Content-Encoding, never past a size limit.

mitmproxy decodes bodies whole, however large they grow: a few kilobytes of gzip can
expand to gigabytes. Every decoder here stops at `limit` bytes of output, so the
policy, redaction and limits see what the vendor would, and a bomb costs nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

from egressguard.core.errors import RequestTooLarge

MAX_DECODED = 16 << 20  # bytes of decoded body egressguard will look at, by default


def decode(raw: bytes, content_encoding: str, limit: int = MAX_DECODED) -> bytes:
    """`raw` decoded per `content_encoding` (gzip, deflate, br, zstd, identity; a list
    is undone last-first). RequestTooLarge past `limit` bytes, ValueError when the
    body is not what its encoding says."""
    data = raw
    for name in reversed([e.strip().lower() for e in content_encoding.split(",")]):
        if name in ("", "identity"):
            continue
        decoder = _DECODERS.get(name)
        if decoder is None:
            raise ValueError(f"unknown content-encoding {name!r}")
        data = decoder(data, limit)
    if len(data) > limit:
        raise _too_large(limit)
    return data


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"the request body decodes to more than {limit} bytes, the most "
                           "egressguard inspects", reason="body_too_large")


def _zlib(data: bytes, limit: int, wbits: int) -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(str(exc)) from None
    if len(out) > limit:
        raise _too_large(limit)
    if not d.eof:
        raise ValueError("truncated")
    return out


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, limit, 16 + zlib.MAX_WBITS)


def _deflate(data: bytes, limit: int) -> bytes:
    try:  # "deflate" is zlib-wrapped per the RFC; some clients send it raw
        return _zlib(data, limit, zlib.MAX_WBITS)
    except ValueError:
        return _zlib(data, limit, -zlib.MAX_WBITS)


def _brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    try:
        out = d.process(data, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise ValueError(str(exc)) from None
    if len(out) > limit:
        raise _too_large(limit)
    if not d.is_finished():
        raise ValueError("truncated")
    return out


def _zstd(data: bytes, limit: int) -> bytes:
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            out = bytearray()
            while len(out) <= limit and (piece := reader.read(limit + 1 - len(out))):
                out += piece
        if len(out) > limit:
            raise _too_large(limit)
        # the reader stops quietly at a cut-off frame; decoding again is bounded now
        whole = zstandard.ZstdDecompressor().decompressobj()
        whole.decompress(data)
    except zstandard.ZstdError as exc:
        raise ValueError(str(exc)) from None
    if not whole.eof:
        raise ValueError("truncated")
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _brotli, "zstd": _zstd,
}
