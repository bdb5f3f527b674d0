"""FrameScanner: HTTP/2 frame headers read from the client's bytes, however they are cut."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest

from egressguard.core import h2scan
from egressguard.core.h2scan import Frame, FrameScanner


def client_bytes() -> bytes:
    """What an h2 client sends: preface, SETTINGS, a request with a body, a reset."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "example.com"),
               (":path", "/v1/x")]
    conn.send_headers(1, headers)
    for _ in range(2):
        conn.send_data(1, b"x" * 16_000)
    conn.send_data(1, b"x" * 100, end_stream=True)
    conn.send_headers(3, headers, end_stream=True)
    conn.reset_stream(3)
    return conn.data_to_send()


def test_frames_are_found_after_the_preface():
    data = client_bytes()
    frames = FrameScanner().feed(data)
    kinds = [(f.type, f.stream_id) for f in frames]
    assert kinds[0] == (0x4, 0)  # SETTINGS first
    assert (h2scan.HEADERS, 1) in kinds and (h2scan.HEADERS, 3) in kinds
    assert [f for f in frames if f.type == h2scan.DATA and f.stream_id == 1][-1].flags \
        & h2scan.END_STREAM
    assert frames[-1] == Frame(h2scan.RST_STREAM, 0, 3)
    assert frames[-2].flags & h2scan.END_HEADERS and frames[-2].flags & h2scan.END_STREAM


@pytest.mark.parametrize("size", [1, 5, 9, 24, 1000, 16_393])
def test_any_cut_of_the_bytes_gives_the_same_frames(size):
    data = client_bytes()
    whole = FrameScanner().feed(data)
    scanner = FrameScanner()
    pieces = [f for i in range(0, len(data), size) for f in scanner.feed(data[i:i + size])]
    assert pieces == whole


def test_memory_is_the_frame_header_only():
    scanner = FrameScanner()
    scanner.feed(h2scan.PREFACE)
    frame = (1_000_000).to_bytes(3, "big") + bytes([0, 0]) + (1).to_bytes(4, "big")
    assert scanner.feed(frame + b"y" * 500_000) == [Frame(h2scan.DATA, 0, 1)]
    assert scanner.feed(b"y" * 500_000) == []  # the rest of the payload, skipped
    assert scanner.feed(frame[:4]) == []
    assert scanner.feed(frame[4:]) == [Frame(h2scan.DATA, 0, 1)]
