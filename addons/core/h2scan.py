"""Frame headers of the HTTP/2 bytes an agent sends, read without decoding frames.

mitmproxy hands a request to the addons when its HEADERS arrive and learns of a
RST_STREAM for it only after the addons are done, so a client that opens and
cancels streams as fast as it can write ("rapid reset", CVE-2023-44487) would make
the proxy do every request's work, upstream included. Reading the 9-byte frame
headers as the bytes pass costs a few operations per frame and tells, at once,
which streams the client reset and where a header block starts and ends.
"""

from __future__ import annotations

from typing import NamedTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, CONTINUATION, DATA = 0x1, 0x3, 0x9, 0x0
END_STREAM, END_HEADERS = 0x1, 0x4
_HEADER = 9


class Frame(NamedTuple):
    type: int
    flags: int
    stream_id: int


class FrameScanner:
    """Feed it the client's bytes in order; `feed` returns the frames that began in
    them. Payloads are skipped, never held, so memory stays at 9 bytes."""

    def __init__(self) -> None:
        self._skip = len(PREFACE)
        self._head = b""

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                i += step
                self._skip -= step
                continue
            need = _HEADER - len(self._head)
            self._head += data[i:i + need]
            i += need
            if len(self._head) < _HEADER:
                break
            head, self._head = self._head, b""
            self._skip = int.from_bytes(head[:3], "big")
            frames.append(Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF))
        return frames
