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
                     worth: Callable[[bytes], bool] = lambda literal: True,
                     skip: Callable[[bytes, int], bool] = lambda body, at: False) -> bytes:
    """`body` (valid JSON: the caller checked) with each string literal's text replaced
    by `change(text)` where that returns a new text (None: unchanged). `worth(literal)`
    is a cheap test on the raw literal before decoding it; `skip(body, start)` leaves a
    literal alone by where it is. Returns the very same object when nothing changed."""
    out: list[bytes] = []
    done = 0
    for m in LITERAL.finditer(body):
        literal = m.group()
        if not worth(literal) or skip(body, m.start()):
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
