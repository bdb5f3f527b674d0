"""Where server-sent events end, by the spec's rules: a blank line, and a line ends in
CRLF, LF or a lone CR. Every SSE reader in egressguard frames with this one module, so
a stream that ends its lines in CR alone cannot slip past one reader and not another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
LINE_END = re.compile(rb"\r\n|\n|\r")
LOOK_BACK = 3  # an event's end is at most 4 bytes: it may straddle a chunk boundary


def event_ends(data: bytes, start: int = 0) -> Iterator[int]:
    """Offsets just past each event's blank line in `data`, searching from `start`.

    A CR as the very last byte may be the first half of a CRLF still to come: an end
    there is not reported until more data (or the end of the stream) says so."""
    for end in _EVENT_END.finditer(data, start):
        if end.end() == len(data) and data.endswith(b"\r"):
            return
        yield end.end()
