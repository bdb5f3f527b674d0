"""Bodies decoded from their Content-Encoding, never past a size limit.

mitmproxy decodes bodies whole, however large they grow: a few kilobytes of gzip can
expand to gigabytes. Every decoder here stops at `limit` bytes of output, so the
policy, redaction and limits see what the vendor would, and a bomb costs nothing.
Requests (`decode`) and buffered answers (`decode_answer`) are decoded whole;
a streamed answer piece by piece (`StreamDecoder`), each piece bounded on its own.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

from egressguard.core.errors import AnswerRefused, RequestTooLarge

MAX_DECODED = 16 << 20  # bytes of decoded body egressguard will look at, by default
MAX_ANSWER = 64 << 20  # bytes of a decoded buffered answer (or of one streamed piece)


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


def decode_answer(raw: bytes, content_encoding: str, limit: int = MAX_ANSWER) -> bytes:
    """A buffered answer decoded like `decode`; AnswerRefused past `limit` bytes."""
    try:
        return decode(raw, content_encoding, limit)
    except RequestTooLarge:
        raise _answer_too_large(limit) from None


def _answer_too_large(limit: int) -> AnswerRefused:
    return AnswerRefused(f"the vendor's answer decodes to more than {limit} bytes, the most "
                         "egressguard inspects; it was not passed on", reason="answer_too_large")


class StreamDecoder:
    """Undoes a Content-Encoding on a body that arrives in pieces (a streamed answer):
    `feed` returns what each piece decodes to, AnswerRefused if that passes `limit`
    bytes (a bomb in one piece), ValueError on corrupt data or an unknown coding."""

    def __init__(self, content_encoding: str, limit: int = MAX_ANSWER) -> None:
        names = [e.strip().lower() for e in content_encoding.split(",")]
        self.limit = limit
        self._stages = [_STREAMERS[n](limit) if n in _STREAMERS else _unknown(n)
                        for n in reversed(names) if n not in ("", "identity")]

    def feed(self, data: bytes) -> bytes:
        for stage in self._stages:
            if not data:
                break
            data = stage.feed(data)
            if len(data) > self.limit:
                raise _answer_too_large(self.limit)
        return data


def _unknown(name: str) -> _Streamer:
    raise ValueError(f"unknown content-encoding {name!r}")


class _Streamer:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def feed(self, data: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


class _ZlibStreamer(_Streamer):
    def __init__(self, limit: int, wbits: int | None = None) -> None:
        super().__init__(limit)
        self._wbits = wbits
        self._d: zlib._Decompress | None = None
        self._start = b""

    def feed(self, data: bytes) -> bytes:
        if self._d is None:  # deflate: zlib-wrapped per the RFC, raw from some servers
            data = self._start + data
            if self._wbits is None and len(data) < 2:
                self._start = data  # the two bytes that tell are not here yet
                return b""
            raw = data[0] & 0x0F != 8 or (data[0] << 8 | data[1]) % 31
            self._d = zlib.decompressobj(self._wbits or (-zlib.MAX_WBITS if raw else
                                                         zlib.MAX_WBITS))
        try:
            out = self._d.decompress(data, self.limit + 1)
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > self.limit or self._d.unconsumed_tail:
            raise _answer_too_large(self.limit)
        return out


class _BrotliStreamer(_Streamer):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._d.process(data, output_buffer_limit=self.limit + 1)
        except brotli.error as exc:
            raise ValueError(str(exc)) from None
        if len(out) > self.limit or not self._d.can_accept_more_data():
            raise _answer_too_large(self.limit)
        return bytes(out)


class _ZstdStreamer(_Streamer):
    """zstandard's decompressobj has no output bound; its stream_writer hands output
    to a sink in `write_size` blocks, and the sink stops it past the limit."""

    class _TooLarge(Exception):
        pass

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._parts: list[bytes] = []
        self._size = 0
        self._writer = zstandard.ZstdDecompressor().stream_writer(self, write_size=1 << 16)

    def write(self, block: bytes) -> int:  # the sink
        self._size += len(block)
        if self._size > self.limit:
            raise self._TooLarge
        self._parts.append(bytes(block))
        return len(block)

    def feed(self, data: bytes) -> bytes:
        try:
            self._writer.write(data)
        except self._TooLarge:
            raise _answer_too_large(self.limit) from None
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
        out, self._parts, self._size = b"".join(self._parts), [], 0
        return out


_STREAMERS: dict[str, Callable[[int], _Streamer]] = {
    "gzip": lambda limit: _ZlibStreamer(limit, 16 + zlib.MAX_WBITS),
    "x-gzip": lambda limit: _ZlibStreamer(limit, 16 + zlib.MAX_WBITS),
    "deflate": _ZlibStreamer, "br": _BrotliStreamer, "zstd": _ZstdStreamer,
}
