"""The way back: stream SSE through unbuffered, read token usage, scrub key echoes,
mask the secrets the rule looks for, restore pseudonyms.

Every answer is read with a bound: a buffered one is decoded by `bodies.decode_answer`
(mitmproxy's own decoding has no size limit), a compressed stream piece by piece by a
`bodies.StreamDecoder` (and passed on decoded), and no SSE line may grow past
`egressguard_max_sse_line`. An answer egressguard cannot read is not passed on: a 502
in the vendor's shape, or, once a stream has started, a last `error` event.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import ctx, exceptions, http

from egressguard.core import bodies, usage
from egressguard.core.credentials import KeyScrubber
from egressguard.core.errors import AnswerRefused, EgressError, vendor_error_body
from egressguard.core.redact.sse import MAX_EVENT, SseRewriter, Stage
from egressguard.pipeline import flowstate


class StreamTap:
    """mitmproxy stream callable for an SSE response: reads usage from the vendor's
    bytes, takes out what egressguard's own request for usage added (`hide_usage`),
    and passes each chunk on as it arrives, minus any real-key echo, then through
    `rewrite` (secrets masked, pseudonyms restored), which may hold text back."""

    def __init__(self, scrubber: KeyScrubber, hide_usage: bool = False,
                 rewrite: Callable[[bytes], bytes] | None = None, *,
                 decoder: bodies.StreamDecoder | None = None, max_line: int = MAX_EVENT,
                 error_shape: str | None = None,
                 on_fail: Callable[[EgressError], None] | None = None) -> None:
        self.scrubber = scrubber
        self.sse = usage.SseUsage()
        self.hide = usage.UsageChunkFilter() if hide_usage else None
        self.rewrite = rewrite
        self.bytes = 0
        self.decoder, self.max_line = decoder, max_line
        self.error_shape, self.on_fail = error_shape, on_fail
        self.failed: EgressError | None = None
        self._notice = b""  # the error event, until it has gone out
        self._line = 0  # bytes since the last line break

    def fail(self, err: EgressError) -> None:
        """Stop the stream here: one `error` event in the vendor's shape for the agent,
        and nothing of the vendor's after it (what stages held back is dropped too).
        A line already partly sent is ended first, so the error is an event of its own."""
        self.failed = err
        self._notice = (b"\n\n" if self._line else b"") + b"event: error\ndata: " \
            + vendor_error_body(err, self.error_shape) + b"\n\n"
        if self.on_fail is not None:
            self.on_fail(err)

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        self.bytes += len(chunk)
        if self.failed is None and chunk:
            chunk = self._checked(chunk)
            if not chunk and self.failed is None:
                return []  # compressed bytes that decode to nothing yet; not the end
        if self.failed is not None:
            notice, self._notice = self._notice, b""
            return notice or []
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

    def _checked(self, chunk: bytes) -> bytes:
        """`chunk` decoded, its lines measured; on failure `fail` and b""."""
        if self.decoder is not None:
            try:
                chunk = self.decoder.feed(chunk)
            except ValueError:
                self.fail(AnswerRefused(
                    "the vendor's streamed answer does not decode with its Content-Encoding; "
                    "the rest of it was not passed on", reason="answer_undecodable"))
                return b""
            except EgressError as err:
                self.fail(err)
                return b""
        line_end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        line = self._line + len(chunk) if line_end < 0 else len(chunk) - line_end - 1
        if line > self.max_line:
            self.fail(AnswerRefused(
                f"the vendor's stream sent a line longer than {self.max_line} bytes, the most "
                "egressguard reads (egressguard_max_sse_line); the rest of the answer was "
                "not passed on", reason="sse_line_too_long"))
            return b""
        self._line = line
        return chunk


class ResponseWatch:
    def __init__(self) -> None:
        self.max_body, self.max_line = bodies.MAX_ANSWER, MAX_EVENT

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_max_response_body", int, bodies.MAX_ANSWER,
                          "Bytes a buffered answer may decode to (and one piece of a "
                          "compressed stream); a larger one is refused with 502.")
        loader.add_option("egressguard_max_sse_line", int, MAX_EVENT,
                          "Longest line of a streamed (SSE) answer, in bytes; a longer "
                          "one ends the stream with an error event.")

    def configure(self, updated: set[str]) -> None:
        if {"egressguard_max_response_body", "egressguard_max_sse_line"} & updated:
            body, line = ctx.options.egressguard_max_response_body, \
                ctx.options.egressguard_max_sse_line
            if body <= 0 or line <= 0:
                raise exceptions.OptionsError(
                    f"egressguard_max_response_body ({body}) and egressguard_max_sse_line "
                    f"({line}) must be more than 0 bytes")
            self.max_body, self.max_line = body, line

    @flowstate.fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        flow.response.headers[flowstate.REQUEST_ID_HEADER] = flowstate.begin(flow)
        if flowstate.REFUSAL in flow.metadata:
            return
        scrubber = KeyScrubber(self._keys(flow))
        _scrub_headers(flow.response.headers, scrubber)
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            dest = flow.metadata.get(flowstate.DESTINATION)
            tap = StreamTap(scrubber,
                            hide_usage=bool(flow.metadata.get(flowstate.HIDE_STREAM_USAGE)),
                            rewrite=self._rewriter(flow), max_line=self.max_line,
                            error_shape=dest.vendor.error_shape if dest and dest.vendor else None,
                            on_fail=lambda err: flow.metadata.setdefault(flowstate.REFUSAL, err))
            self._decode_stream(flow.response, tap)
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
        raw = response.raw_content or b""
        try:  # mitmproxy's get_content() would decode without a bound
            body = bodies.decode_answer(raw, response.headers.get("content-encoding", ""),
                                        self.max_body)
        except ValueError:
            body = raw  # as get_content(strict=False): scrubbed as it is
        except AnswerRefused as err:
            flowstate.refuse(flow, err)
            return
        if "json" in response.headers.get("content-type", ""):
            flow.metadata[flowstate.USAGE] = usage.from_body(body)
        clean = KeyScrubber(self._keys(flow)).scrub(body)
        if mask := flow.metadata.get(flowstate.ANSWER_MASK):  # the vendor's text first,
            clean = mask.buffered(clean)
        if reidentify := flow.metadata.get(flowstate.REIDENTIFY):  # then the agent's own
            clean = reidentify[0].buffered(clean)
        if clean is not body:  # each returns its input untouched when nothing matched
            response.content = clean

    def _decode_stream(self, response: http.Response, tap: StreamTap) -> None:
        """A compressed stream is decoded in the tap (so every stage reads text) and
        goes on to the agent decoded; one that cannot be is cut off at once."""
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return
        response.headers.pop("content-encoding", None)
        response.headers.pop("content-length", None)
        try:
            tap.decoder = bodies.StreamDecoder(encoding, self.max_body)
        except ValueError:
            tap.fail(AnswerRefused(f"the vendor's stream uses content-encoding {encoding!r}, "
                                   "which egressguard cannot read; it was not passed on",
                                   reason="answer_undecodable"))

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
        keys = [s.fingerprint_bytes() for s in flow.metadata.get(flowstate.OTHER_SECRETS, ())]
        if (secret := flow.metadata.get(flowstate.SECRET)) is not None:
            keys.append(secret.fingerprint_bytes())
        return keys


def _scrub_headers(headers: http.Headers, scrubber: KeyScrubber) -> None:
    """Vendors echo keys in headers too (e.g. an error detail); none reaches the agent."""
    fields = headers.fields
    clean = tuple((k, scrubber.scrub(v)) for k, v in fields)
    if clean != fields:
        headers.fields = clean
