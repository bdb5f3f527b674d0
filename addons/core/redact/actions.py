"""Act on a redaction plan: mask, pseudonymize, block or log each finding in a text;
keep a conversation's pseudonyms; put the originals back into the vendor's answer,
buffered or streamed.

    plan     entity type -> action, groups spread out (`plan(rule.redact)`)
    apply    one text's findings -> `Outcome`: the new text, counts per (entity,
             action), the entity types that block the request, the pseudonyms it holds
    Pseudonyms / PseudonymStore
             one conversation's value <-> `<PERSON_1>` map; the store keeps one per
             conversation key, in memory only, bounded in number, size and age
    Reidentifier
             `<PERSON_1>` -> the original, in a JSON body (`buffered`) or an SSE stream
             (`stream`), written with the escaping the place it lands in needs

Nothing here logs or prints a value: `repr` of the stores shows counts, an Outcome's
counts name entity types and actions, `blocked` names types.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egressguard.core.entities import ACTIONS, expand
from egressguard.core.redact import Finding
from egressguard.core.redact.jsontext import (
    escaped,
    holds_json,
    is_json,
    rewrite_literals,
    values_of,
)
from egressguard.core.redact.sse import SseRewriter

MASK, PSEUDONYMIZE, BLOCK, LOG = "mask", "pseudonymize", "block", "log"
assert set(ACTIONS) == {MASK, PSEUDONYMIZE, BLOCK, LOG}, ACTIONS  # one list of actions

# <PERSON_1>: what pseudonymize writes and Reidentifier restores. A mask (<PERSON>) has
# no number, so it never reads as a pseudonym.
TOKEN = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9]+>")
_MAX_TOKEN = 64  # longer than any entity name + number; bounds what a stream holds back


def plan(redact: Mapping[str, str]) -> dict[str, str]:
    """A rule's `redact` as the plan `apply` takes: entity type -> action, groups
    spread out (a named type beats its group). Raises ValueError on an unknown action
    (the policy loader refuses those already: this is the backstop)."""
    out = expand(dict(redact))
    for entity, action in out.items():
        if action not in ACTIONS:
            raise ValueError(f"redact: {entity}: unknown action {action!r}")
    return out


# ---- pseudonyms --------------------------------------------------------------------

_SERIALS = itertools.count(1)


class Pseudonyms:
    """One conversation's pseudonyms: (entity, value) <-> `<ENTITY_n>`, numbered per
    entity type in order of first sight. Thread-safe; never prints a value."""

    __slots__ = ("max_values", "serial", "_tokens", "_values", "_numbers", "_lock")

    def __init__(self, max_values: int = 1000) -> None:
        self.max_values = max_values
        self.serial = next(_SERIALS)  # tells conversations apart in caches, never reused
        self._tokens: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._numbers: Counter[str] = Counter()
        self._lock = threading.Lock()

    def pseudonym(self, entity: str, value: str) -> str | None:
        """The value's pseudonym, made on first sight; None once the conversation holds
        `max_values` (the caller masks instead: never an unbounded map)."""
        key = (entity, value)
        token = self._tokens.get(key)
        if token is not None:
            return token
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                if len(self._tokens) >= self.max_values:
                    return None
                self._numbers[entity] += 1
                token = f"<{entity}_{self._numbers[entity]}>"
                self._tokens[key] = token
                self._values[token] = value
            return token

    def original(self, token: str) -> str | None:
        return self._values.get(token)

    def table(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """token -> original, for the tokens in `only` (all when None): a copy, so a
        stream under way is not changed by later requests of the conversation."""
        with self._lock:
            if only is None:
                return dict(self._values)
            return {t: self._values[t] for t in only if t in self._values}

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<Pseudonyms: {len(self._values)} values>"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # in memory only: no pickle, no copy to somewhere else
        raise TypeError("pseudonyms are not serialised")


class PseudonymStore:
    """Pseudonyms per conversation key, in memory: a conversation unused for `ttl`
    seconds is forgotten, and past `max_conversations` the least recently used is.
    Keys should be digests (`conversation_key`), never conversation text."""

    def __init__(self, ttl: float = 3600.0, max_conversations: int = 10_000,
                 max_values: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_conversations <= 0 or max_values <= 0:
            raise ValueError("ttl, max_conversations and max_values must be positive")
        self.ttl, self.max_conversations, self.max_values = ttl, max_conversations, max_values
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Pseudonyms, float]] = OrderedDict()
        self._lock = threading.Lock()

    def conversation(self, key: str) -> Pseudonyms:
        """The conversation's pseudonyms, new if unknown or expired; refreshes its age."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.pop(key, None)
            found = entry[0] if entry is not None else Pseudonyms(self.max_values)
            self._entries[key] = (found, now)  # at the end: the most recently used
            while len(self._entries) > self.max_conversations:
                self._entries.popitem(last=False)
            return found

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _expire(self, now: float) -> None:
        # in order of last use: stop at the first one still fresh
        while self._entries:
            _, (_, used) = next(iter(self._entries.items()))
            if now - used < self.ttl:
                return
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def __repr__(self) -> str:
        return f"<PseudonymStore: {len(self._entries)} conversations, ttl {self.ttl:g}s>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("pseudonyms are not serialised")


_KEY_SECRET = secrets.token_bytes(32)  # per process, like the store: digests go nowhere else


def conversation_key(agent: str, opening: Sequence[str]) -> str:
    """A store key for a conversation: the agent and the texts that open it (system
    prompt and first user turn, before redaction: `fields.opening`), digested with a
    per-process key so the store holds no text and keys cannot be guessed elsewhere."""
    digest = hashlib.blake2b(key=_KEY_SECRET, digest_size=16)
    for part in (agent, *opening):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


# ---- apply -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying a plan to one text did. No values: counts per (entity, action),
    the entity types whose action is block, the pseudonyms the new text holds."""

    text: str
    counts: Mapping[tuple[str, str], int]
    blocked: frozenset[str] = frozenset()
    tokens: frozenset[str] = frozenset()

    @property
    def changed(self) -> bool:
        return any(action in (MASK, PSEUDONYMIZE) for _, action in self.counts)


_PREFERENCE = {PSEUDONYMIZE: 1, MASK: 0}


def apply(text: str, findings: Iterable[Finding], plan: Mapping[str, str],
          pseudonyms: Pseudonyms) -> Outcome:
    """Apply `plan` (entity -> action, expanded) to `text`'s findings.

    - mask: the span becomes `<ENTITY>`; pseudonymize: `<ENTITY_n>`, the same for the
      same value throughout the conversation (`pseudonyms`); once the conversation holds
      its maximum of values, a new value is masked (and counted as masked);
    - block: the text is left alone, the entity type is in `blocked` (the caller
      refuses the request, naming the types); log: left alone, counted.

    Findings of types the plan does not name are ignored. Overlapping mask/pseudonymize
    findings are merged: the union of their spans is replaced, as the longest (then
    highest-scoring) one says, and counted once, as that one. Spans are clipped to the
    text; an empty one is ignored. An action outside ACTIONS raises ValueError."""
    counts: Counter[tuple[str, str]] = Counter()
    blocked: set[str] = set()
    spans: list[tuple[int, int, Finding, str]] = []
    size = len(text)
    for finding in findings:
        action = plan.get(finding.entity)
        if action is None:
            continue
        start, end = max(0, finding.start), min(size, finding.end)
        if start >= end:
            continue
        if action == BLOCK:
            blocked.add(finding.entity)
            counts[(finding.entity, BLOCK)] += 1
        elif action == LOG:
            counts[(finding.entity, LOG)] += 1
        elif action in _PREFERENCE:
            spans.append((start, end, finding, action))
        else:
            raise ValueError(f"unknown redaction action {action!r} for {finding.entity}")
    if not spans:
        return Outcome(text, dict(counts), frozenset(blocked))
    out: list[str] = []
    tokens: set[str] = set()
    done = 0  # text[:done] is in `out`
    for start, end, lead, action, value in _merged(text, spans):
        replacement = None
        if action == PSEUDONYMIZE:
            replacement = pseudonyms.pseudonym(lead.entity, value)
            if replacement is None:  # the conversation is full
                action = MASK
            else:
                tokens.add(replacement)
        counts[(lead.entity, action)] += 1
        out += (text[done:start], replacement or f"<{lead.entity}>")
        done = end
    out.append(text[done:])
    return Outcome("".join(out), dict(counts), frozenset(blocked), frozenset(tokens))


def _merged(text: str, spans: list[tuple[int, int, Finding, str]]
            ) -> Iterator[tuple[int, int, Finding, str, str]]:
    """Overlapping spans as one: (start, end) of their union, the finding that leads
    (longest, then highest score, then pseudonymize over mask), its action, and the
    text of its own span — so a value gets the same pseudonym whatever it overlapped."""
    spans = sorted(spans, key=lambda s: (s[0], -s[1]))
    i = 0
    while i < len(spans):
        start, end, lead, action = spans[i]
        best, value = (end - start, lead.score, _PREFERENCE[action]), text[start:end]
        i += 1
        while i < len(spans) and spans[i][0] < end:
            s, e, finding, a = spans[i]
            if (e - s, finding.score, _PREFERENCE[a]) > best:
                best, lead, action, value = (e - s, finding.score, _PREFERENCE[a]), \
                    finding, a, text[s:e]
            end = max(end, e)
            i += 1
        yield start, end, lead, action, value


def audit_counts(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    """Counts for the audit record, summed over the outcomes of one request:
    `{"EMAIL_ADDRESS": {"mask": 2}, "US_SSN": {"block": 1}}`, sorted. Never values."""
    total: Counter[tuple[str, str]] = Counter()
    for outcome in outcomes:
        total.update(outcome.counts)
    out: dict[str, dict[str, int]] = {}
    for (entity, action), n in sorted(total.items()):
        if n:
            out.setdefault(entity, {})[action] = n
    return out


# ---- re-identification -------------------------------------------------------------

# What in a raw body may be (part of) a pseudonym: `<` before a capital, or ending a
# string (a start cut off), also as JSON's \u003c (Go and some Java serialisers
# escape it). `a < b`, `<div>` and `<\n` need no closer look.
_MAYBE = re.compile(rb'<[A-Z"]|\\u003[cC]')


def _maybe(data: bytes) -> bool:
    # `in` runs at memchr speed; the regex is ten times slower on a long body
    return (b"<" in data or b"\\u003" in data) and _MAYBE.search(data) is not None


# Anthropic thinking is signed: restoring a value in it would make the block fail its
# signature check when the agent sends it back. It stays as the model wrote it.
_THINKING = values_of({"thinking"})


class Reidentifier:
    """Puts a conversation's originals back where the answer has their pseudonyms.

    `only` limits it to the pseudonyms the request itself carried (the union of its
    Outcomes' `tokens`): a stateless request (chat completions, messages,
    generateContent) re-sends its whole history, so every pseudonym the model may
    answer with is among them, and one typed in by someone who shares a conversation
    key (same agent, same opening) restores nothing. Stateful requests (Responses with
    `previous_response_id`, conversations) need the whole conversation: `only=None`.

    Escaping: the answer is JSON, and a value is restored inside a JSON string, so the
    string literal holding a pseudonym is decoded, restored and encoded again with
    JSON's escaping, and spliced back in place of the old literal (`jsontext`). A
    string that itself holds JSON (tool-call arguments, a JSON-mode answer) gets the
    value escaped once more, as that inner JSON needs, so a name with a quote,
    backslash or line break parses at both levels.

    Anthropic `thinking` text keeps its pseudonyms: it is signed, and goes back to the
    vendor as it came (`fields` does not redact signed thinking either).

    Streamed answers: a `sse.Stage` (a pseudonym's start at the end of a channel's
    text waits for the rest of it)."""

    untouched = frozenset({"thinking"})

    def __init__(self, pseudonyms: Pseudonyms, only: Iterable[str] | None = None) -> None:
        self._values = pseudonyms.table(only)
        self._prefixes = frozenset(t[:n] for t in self._values for n in range(1, len(t)))

    def __repr__(self) -> str:
        return f"<Reidentifier: {len(self._values)} pseudonyms>"

    def _sub(self, text: str, json_text: bool) -> str:
        def restore(m: re.Match[str]) -> str:
            value = self._values.get(m.group())
            if value is None:
                return m.group()
            return escaped(value) if json_text else value
        return TOKEN.sub(restore, text)

    def restore(self, text: str) -> str:
        """A plain text with its pseudonyms restored."""
        return self._sub(text, False) if self._values and "<" in text else text

    # -- buffered --

    def buffered(self, body: bytes) -> bytes:
        """A whole JSON answer with its pseudonyms restored; the very same object when
        there is none. A body that is not JSON gets only values that need no escaping
        anywhere (no quote, backslash or control character); the rest keep their
        pseudonyms rather than risk breaking what the agent parses."""
        if not self._values or not _maybe(body):
            return body
        if not is_json(body):
            return self._raw(body)
        return rewrite_literals(body, self._literal, worth=_maybe, untouched=_THINKING)

    def _literal(self, text: str) -> str | None:
        return self._sub(text, holds_json(text)) if "<" in text else None

    def _raw(self, body: bytes) -> bytes:
        def restore(m: re.Match[bytes]) -> bytes:
            value = self._values.get(m.group().decode())
            if value is None or escaped(value) != value:
                return m.group()
            return value.encode()
        return re.sub(TOKEN.pattern.encode(), restore, body)

    # -- streamed --

    def stream(self, json_output: bool = False) -> Callable[[bytes], bytes]:
        """A mitmproxy stream callable for an SSE answer: bytes in, bytes out, an empty
        chunk marks the end (and flushes what is held). See `sse.SseRewriter`.

        `json_output`: the request asked for JSON as the answer's text (`fields.
        json_output`), so values restored into it are escaped for that inner JSON. A
        buffered answer needs no flag: there each string is tried as JSON whole."""
        if not self._values:
            return _identity
        return SseRewriter((self,), json_output)

    # the sse.Stage protocol
    def wants(self, raw: bytes) -> bool:
        return bool(self._values) and _maybe(raw)

    def pending(self, text: str, before: str) -> int:
        """A pseudonym's start at the end (`<PER`) waits for the rest."""
        at = text.rfind("<", max(0, len(text) - _MAX_TOKEN))
        return at if at >= 0 and text[at:] in self._prefixes else len(text)

    def rewrite(self, text: str, before: str, json_text: bool) -> str:
        return self._sub(text, json_text) if "<" in text else text


def _identity(chunk: bytes) -> bytes:
    return chunk
