"""Secrets in what a vendor answers: masked before the agent sees them, and counted.

A model can write out a credential it read somewhere — in its training data, in a
tool result of another turn, in a document — and some vendor errors quote the key
they were given. The real key egressguard injected is always scrubbed from answers
(`credentials.KeyScrubber`, on the raw bytes). Beyond that, the deciding rule's
redaction plan says which secret types to look for (`entities.answer_plan`): a type
the plan masks, pseudonymizes or blocks in requests is masked in answers (`<JWT>`) —
an answer cannot be refused halfway through a stream, and a pseudonym would stand for
nothing the agent sent — and a type the plan logs is counted. PII in answers is left
alone: the model's answer is about the agent's own (restored) data.

`SecretMask` works on a buffered answer (`buffered`: each JSON string, or the whole
text) and, as an `sse.Stage`, on a streamed one, where a key can arrive a few
characters per event: the end of a channel's text that may still become a secret
(`StreamGate.pending`) waits for the rest. Counts per (entity, action), never values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from egressguard.core.redact import Finding
from egressguard.core.redact.detect import Detector
from egressguard.core.redact.jsontext import is_json, rewrite_literals, values_of

MASK, LOG = "mask", "log"

# Strings in answers that are the vendor's own bookkeeping or opaque data, never text
# the model wrote: ids, names of objects and states, signatures and encrypted reasoning
# (a changed signature fails its check when the agent sends the block back).
OPAQUE_KEYS = frozenset({
    "id", "object", "model", "role", "type", "status", "finish_reason", "stop_reason",
    "system_fingerprint", "service_tier", "item_id", "call_id", "tool_call_id",
    "tool_use_id", "signature", "encrypted_content", "data", "responseId",
    "modelVersion", "finishReason", "response_id", "message_id", "generation_id",
})


_OPAQUE_VALUES = values_of(OPAQUE_KEYS)


class SecretMask:
    """Masks the plan's secret types in an answer; one per flow (it holds the counts)."""

    untouched = OPAQUE_KEYS

    def __init__(self, detector: Detector, plan: Mapping[str, str]) -> None:
        self.plan = dict(plan)
        self._entities = frozenset(self.plan)
        self._detector = detector
        self._gate = detector.gate(self._entities)
        self.counts: Counter[tuple[str, str]] = Counter()

    def __repr__(self) -> str:
        return f"<SecretMask: {len(self._entities)} types, {sum(self.counts.values())} found>"

    def record(self) -> dict[str, dict[str, int]] | None:
        """`{"OPENAI_API_KEY": {"mask": 1}}` for the audit record; None if none found."""
        out: dict[str, dict[str, int]] = {}
        for (entity, action), n in sorted(self.counts.items()):
            out.setdefault(entity, {})[action] = n
        return out or None

    # -- text --

    def text(self, text: str) -> str:
        """`text` with the plan's secrets masked (the very same str if none)."""
        if not self._gate.maybe(text):
            return text
        return self._apply(text, self._detector.find(text, self._entities), 0)

    def _apply(self, text: str, found: list[Finding], offset: int) -> str:
        """Mask what `found` (spans into before + text, `offset` = len(before)) holds
        in `text`; a finding that began in `before` is masked from where text starts."""
        out: list[str] = []
        done = 0
        for finding in found:
            if finding.end <= offset:
                continue
            action = self.plan.get(finding.entity)
            if action is None:
                continue
            self.counts[(finding.entity, action)] += 1
            if action != MASK:
                continue
            start, end = max(finding.start - offset, done), finding.end - offset
            out += (text[done:start], f"<{finding.entity}>")
            done = end
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)

    # -- buffered --

    def buffered(self, body: bytes) -> bytes:
        """A whole answer with the plan's secrets masked: in each string of a JSON
        body (ids and signatures aside), or in the whole text of any other UTF-8
        body; the very same object when nothing changed. Masks need no escaping."""
        if not body:
            return body
        if is_json(body):
            # the shortest secret has 8 characters: 10 with the quotes
            return rewrite_literals(body, self.text, shortest=10, untouched=_OPAQUE_VALUES)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return body  # audio, images: no text to read
        new = self.text(text)
        return body if new is text else new.encode("utf-8")

    # -- the sse.Stage protocol --

    def wants(self, raw: bytes) -> bool:
        return not self._gate.quiet_event(raw, _OPAQUE_VALUES)

    def pending(self, text: str, before: str) -> int:
        return self._gate.pending(text, before)

    def rewrite(self, text: str, before: str, json_text: bool) -> str:
        # a secret begun in `before` was held there, so `text` alone says if one is here
        if not self._gate.maybe(text):
            return text
        return self._apply(text, self._detector.find(before + text, self._entities),
                           len(before))
