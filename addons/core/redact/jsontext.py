"""String literals of a JSON answer, rewritten in place: every other byte stays as the
vendor wrote it (no number reformatted, no integer beyond 64 bits rounded).

Both ways an answer is rewritten — pseudonyms restored (`actions.Reidentifier`) and
secrets masked (`answers.SecretMask`) — change text inside JSON strings only, so they
share this: find each literal, decode it, let the caller change the text, encode it
again with JSON's escaping and splice it back.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

# A JSON string literal. In valid JSON no quote stands outside a string, so scanning
# from the start pairs every literal correctly (keys included).
LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_KEY_AFTER = re.compile(rb"\s*:")  # after a literal: it was an object's key


def values_of(keys: frozenset[str] | set[str]) -> re.Pattern[bytes]:
    """These keys with their string values, the value literal as group 1 (for
    `rewrite_literals(untouched=...)`)."""
    names = b"|".join(re.escape(k.encode()) for k in sorted(keys))
    return re.compile(rb'"(?:' + names + rb')"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")')


def escaped(value: str) -> str:
    """`value` as it must appear inside a JSON string literal (without the quotes)."""
    return orjson.dumps(value).decode()[1:-1]


def holds_json(text: str) -> bool:
    """Whether a string is itself a JSON document (tool-call arguments, a JSON-mode
    answer), so what is written into it needs JSON escaping of its own."""
    if text.lstrip()[:1] not in ("{", "[", '"'):
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def rewrite_literals(body: bytes, change: Callable[[str], str | None],
                     worth: Callable[[bytes], bool] | None = None, shortest: int = 0,
                     untouched: re.Pattern[bytes] | None = None) -> bytes:
    """`body` (valid JSON: the caller checked) with each string value's text replaced
    by `change(text)` where that returns a new text (None: unchanged). Object keys are
    never changed (they are the vendor's schema); nor are the values that `untouched`'s
    group 1 starts at (`"signature": (")`). `shortest` (the literal's length, quotes
    included) and `worth(literal)` are cheap tests on the raw literal before decoding
    it. Returns the very same object when nothing changed."""
    out: list[bytes] = []
    done = 0
    skip = {m.start(1) for m in untouched.finditer(body)} if untouched is not None else ()
    for m in LITERAL.finditer(body):
        start, end = m.span()
        if end - start < shortest or start in skip or _KEY_AFTER.match(body, end):
            continue
        literal = m.group()
        if worth is not None and not worth(literal):
            continue
        try:
            text = orjson.loads(literal)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(text, str):
            continue
        new = change(text)
        if new is not None and new != text:
            out += (body[done:m.start()], orjson.dumps(new))
            done = m.end()
    if not out:
        return body
    out.append(body[done:])
    return b"".join(out)


def is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True
