"""The way back: stream SSE through unbuffered, read token usage, scrub key echoes,
mask the secrets the rule looks for, restore pseudonyms."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http

from egressguard.core import usage
from egressguard.core.credentials import KeyScrubber
from egressguard.core.redact.sse import SseRewriter, Stage
from egressguard.pipeline import flowstate


class StreamTap:
    """mitmproxy stream callable for an SSE response: reads usage from the vendor's
    bytes, takes out what egressguard's own request for usage added (`hide_usage`),
    and passes each chunk on as it arrives, minus any real-key echo, then through
    `rewrite` (secrets masked, pseudonyms restored), which may hold text back."""

    def __init__(self, scrubber: KeyScrubber, hide_usage: bool = False,
                 rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self.scrubber = scrubber
        self.sse = usage.SseUsage()
        self.hide = usage.UsageChunkFilter() if hide_usage else None
        self.rewrite = rewrite
        self.bytes = 0

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        self.bytes += len(chunk)
        self.sse.feed(chunk)
        if self.hide is None:
            out = self.scrubber(chunk)
        elif chunk:
            kept = self.hide(chunk)
            out = self.scrubber(kept) if kept else b""  # the scrubber ends on b""
        else:  # the end: what the filter held, then what the scrubber held
            rest = self.hide(b"")
            out = (self.scrubber(rest) if rest else b"") + self.scrubber(b"")
        if self.rewrite is not None:  # b"" ends its stream too: only at the end
            out = (self.rewrite(out) if out else b"") + (b"" if chunk else self.rewrite(b""))
        # mitmproxy sends b"" as a chunk of its own, which in a chunked HTTP/1 response
        # is the last one: the agent would see its stream end here. Send nothing.
        return out if out or not chunk else []


class ResponseWatch:
    @flowstate.fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        flow.response.headers[flowstate.REQUEST_ID_HEADER] = flowstate.begin(flow)
        if flowstate.REFUSAL in flow.metadata:
            return
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            tap = StreamTap(KeyScrubber(self._keys(flow)),
                            hide_usage=bool(flow.metadata.get(flowstate.HIDE_STREAM_USAGE)),
                            rewrite=self._rewriter(flow))
            flow.response.stream = tap
            # filled as events pass: complete even if the agent hangs up after the last one
            flow.metadata[flowstate.USAGE] = tap.sse.usage

    @flowstate.fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        assert response is not None
        if flowstate.REFUSAL in flow.metadata:
            return
        if isinstance(response.stream, StreamTap):
            return
        body = response.get_content(strict=False) or b""
        if "json" in response.headers.get("content-type", ""):
            flow.metadata[flowstate.USAGE] = usage.from_body(body)
        clean = KeyScrubber(self._keys(flow)).scrub(body)
        if mask := flow.metadata.get(flowstate.ANSWER_MASK):  # the vendor's text first,
            clean = mask.buffered(clean)
        if reidentify := flow.metadata.get(flowstate.REIDENTIFY):  # then the agent's own
            clean = reidentify[0].buffered(clean)
        if clean is not body:  # each returns its input untouched when nothing matched
            response.content = clean

    @staticmethod
    def _rewriter(flow: http.HTTPFlow) -> SseRewriter | None:
        """Secrets masked, then pseudonyms restored, per SSE event: None if neither."""
        stages: list[Stage] = []
        if mask := flow.metadata.get(flowstate.ANSWER_MASK):
            stages.append(mask)
        reidentify = flow.metadata.get(flowstate.REIDENTIFY)
        if reidentify is not None:
            stages.append(reidentify[0])
        if not stages:
            return None
        return SseRewriter(stages, json_output=bool(reidentify and reidentify[1]))

    @staticmethod
    def _keys(flow: http.HTTPFlow) -> list[bytes]:
        secret = flow.metadata.get(flowstate.SECRET)
        return [secret.fingerprint_bytes()] if secret is not None else []
