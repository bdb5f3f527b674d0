"""Pattern detection of PII and secrets: the rules of `rules.yaml` (a regex, the entity
it finds, validators that cut false positives) run over a text, over its normalised
form (invisible characters, fullwidth forms, look-alike letters) and over the base64,
hex and percent-encoded runs in it; findings index the text as given.

    detector = default_detector()
    detector.find("mail bob@example.com", {"EMAIL_ADDRESS"})
    -> [Finding("EMAIL_ADDRESS", "pii", 5, 20, 1.0)]

Overlaps are settled for the entities asked for: a secret beats PII, a vendor-specific
secret beats GENERIC_SECRET, then the longer span, then the higher score.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import ipaddress
import json
import math
import re
import re._constants as _sre
import re._parser as _sre_parser
import unicodedata
import urllib.parse
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import chain
from typing import Any

import regex as partial_re  # the `regex` package: partial matches, for streamed text

from egressguard.core import entities as entity_types
from egressguard.core.redact import Finding
from egressguard.core.yamlsource import (
    ConfigError,
    Document,
    Path_,
    Problem,
    unknown_key_message,
)

CONTEXT_BOOST = 0.35  # Presidio's context similarity factor
CONTEXT_BEFORE, CONTEXT_AFTER = 48, 24
# Encoded runs worth decoding, in characters: 16 base64 characters hold 12 bytes, the
# shortest secret worth the work; beyond 16 KiB the run is an image or a file, and a
# text that large decodes at the cost of a full scan.
ENCODED_RUN = (16, 16384)

_KEYS = ("id", "entity", "kind", "pattern", "ignore_case", "starts", "anchor", "reach",
         "keywords", "validators", "score", "context", "min_score", "exclude_context",
         "entropy", "until")
_REQUIRED = ("id", "entity", "pattern")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ESCAPES = re.compile(r"\\.|\(\?P[<=]\w+[>)]")  # \S, \W, group names: not literals
_UPPER = re.compile(r"[A-Z]")
_KINDS = {**{e: "pii" for e in entity_types.PII}, **{e: "secret" for e in entity_types.SECRETS}}

Candidate = tuple[int, int, int, float, str, str]  # start, end, rank, score, entity, kind
Validator = Callable[[str, "Rule"], bool | int]  # False: drop; True: keep; n: keep value[:n]


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    id: str
    entity: str
    kind: str
    regex: re.Pattern[str]
    group: int | str  # the span reported: the `value` group, or the whole match
    # match the lower-cased text; `regex_i` (re.IGNORECASE) where lower() changes lengths
    ignore_case: bool = False
    regex_i: re.Pattern[str] | None = None
    starts: tuple[str, ...] = ()  # literals every match starts with: matched only there
    anchor: str = ""  # a literal every match contains; only windows around it are searched
    reach: tuple[int, int] = (0, 0)  # how far a match extends before and after the anchor
    keywords: tuple[str, ...] = ()  # lower-case; the rule runs only if one is in the text
    validators: tuple[Validator, ...] = ()
    score: float = 1.0
    context: tuple[str, ...] = ()
    min_score: float = 0.0
    exclude_context: frozenset[str] = frozenset()
    entropy: float = 3.0
    until: re.Pattern[str] | None = None  # streamed answers: a match waits until this follows
    rank: int = field(init=False)  # who wins an overlap: 2 vendor secret, 1 generic, 0 PII

    def __post_init__(self) -> None:
        rank = 0 if self.kind == "pii" else 1 if self.entity == "GENERIC_SECRET" else 2
        object.__setattr__(self, "rank", rank)


# -- validators ---------------------------------------------------------------------------
def _issuer_length_ok(d: str) -> bool:
    """The number's length is one its issuer uses (IIN ranges of the card networks)."""
    n, two, three, four = len(d), int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if two in (34, 37):  # American Express
        return n == 15
    if 300 <= three <= 305 or two in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    if 3528 <= four <= 3589 or two in (62, 65) or four == 6011 or 644 <= three <= 649:
        return 16 <= n <= 19  # JCB, UnionPay, Discover
    if two in (50, 56, 57, 58, 67) or three == 639:  # Maestro
        return 13 <= n <= 19
    return False


def _luhn(value: str, rule: Rule) -> bool:
    digits = [ord(c) - 48 for c in value if "0" <= c <= "9"]
    if not 13 <= len(digits) <= 19 or not _issuer_length_ok("".join(map(str, digits))):
        return False
    separators = {c for c in value if not "0" <= c <= "9"}
    if len(separators) > 1:
        return False
    if separators:
        sizes = [len(g) for g in value.split(separators.pop())]
        even = all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4
        amex = sizes[0] == 4 and sizes[1:] in ([6, 5], [6, 4])
        if not (even or amex):
            return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0 and len(set(digits)) > 1


# SWIFT IBAN registry: country -> length
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def _iban(value: str, rule: Rule) -> bool | int:
    """The country's length and mod 97 == 1; a longer match (the regex took the next
    word too) is cut back to the country's length at a space."""
    where = [i for i, c in enumerate(value) if c != " "]
    length = _IBAN_LENGTHS.get(value[:2])
    if length is None or len(where) < length:
        return False
    end = len(value)
    if len(where) > length:
        end = where[length - 1] + 1
        if value[end] != " ":
            return False
    compact = value[:end].replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    if int("".join(str(int(c, 36)) for c in rearranged)) % 97 != 1:
        return False
    return True if end == len(value) else end


_FAKE_SSNS = frozenset({"123456789", "078051120", "219099999"})


def _ssn(value: str, rule: Rule) -> bool:
    d = "".join(c for c in value if c.isdigit())
    return not (d[:3] in ("000", "666") or d[0] == "9" or d[3:5] == "00" or d[5:] == "0000"
                or d in _FAKE_SSNS or len(set(d)) == 1)


def _nanp(d: str) -> bool:
    """A North American number: area code and exchange start 2-9; no N11 area code."""
    return d[0] in "23456789" and d[3] in "23456789" and d[1:3] != "11"


def _phone(value: str, rule: Rule) -> bool:
    d = "".join(c for c in value if c.isdigit())
    separators = {c for c in value if not c.isdigit() and c not in "+()"}
    if "." in separators and len(separators) > 1:
        return False
    if value.startswith("+"):
        if not 8 <= len(d) <= 15:
            return False
        return _nanp(d[1:]) and len(d) == 11 if d[0] == "1" else True
    if d[0] == "0":  # a national number with its trunk prefix: UK, DE, FR, ...
        return 9 <= len(d) <= 12
    if len(d) == 11 and d[0] == "1":
        d = d[1:]
    return len(d) == 10 and _nanp(d)


_IMAGE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "avif"})
_RETINA = re.compile(r"@[0-9]+(?:\.[0-9]+)?x\.")


def _email(value: str, rule: Rule) -> bool:
    return not (_RETINA.search(value) or value.rsplit(".", 1)[-1].lower() in _IMAGE_TLDS)


def _ipv4(value: str, rule: Rule) -> bool:
    return all(p == "0" or (p[0] != "0" and int(p) <= 255) for p in value.split("."))


def _ipv6(value: str, rule: Rule) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return sum(1 for g in value.split(":") if g) >= 3


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _jwt(value: str, rule: Rule) -> bool:
    try:
        header = json.loads(_b64url(value.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError):  # binascii.Error and JSON errors included
        return False
    return isinstance(header, dict) and "alg" in header


_B58 = {c: i for i, c in enumerate("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")}


def _base58check(value: str, rule: Rule) -> bool:
    n = 0
    for c in value:
        n = n * 58 + _B58[c]
    if n >> 200:  # more than 25 bytes
        return False
    raw = n.to_bytes(25, "big")
    check = hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4]
    return check == raw[-4:] and raw[0] in (0, 5)


_BECH32 = {c: i for i, c in enumerate("qpzry9x8gf2tvdw0s3jn54khce6mua7l")}
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32(value: str, rule: Rule) -> bool:
    """BIP-173 (bech32) or BIP-350 (bech32m) checksum of a `bc1` address."""
    chk = 1
    for v in [3, 3, 0, 2, 3, *(_BECH32[c] for c in value[3:])]:  # hrp "bc" expanded
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate(_BECH32_GEN):
            if (top >> i) & 1:
                chk ^= g
    return chk in (1, 0x2BC830A3)


_C_LOG_C = [0.0] + [c * math.log2(c) for c in range(1, 4097)]


def shannon_entropy(value: str) -> float:
    """Bits per character: log2(n) - sum(c log2 c) / n over the character counts."""
    n = len(value)
    if not n:
        return 0.0
    counts = Counter(value).values()
    if n > 4096:
        return -sum(c / n * math.log2(c / n) for c in counts)
    return math.log2(n) - sum(map(_C_LOG_C.__getitem__, counts)) / n


def _entropy(value: str, rule: Rule) -> bool:
    if len(value) < 8:
        return False
    threshold = rule.entropy
    if not value.isalpha() and any(c.isalpha() for c in value):
        threshold -= 0.5  # letters mixed with digits or symbols: hunter22, s3cr3t!x
    return shannon_entropy(value) >= threshold


# what placeholders, masks and references contain (checked lower-cased), are, or look like
_PLACEHOLDER_PARTS = ("changeme", "change_me", "change-me", "replaceme", "replace_me",
                      "replace-me", "replace_this", "replace-with", "placeholder", "your_",
                      "your-", "redacted", "masked", "example", "dummy", "sample", "fake",
                      "xxx", "***", "...", "\u2022", "{{", "}}", "${", "$(", "%(", "not_set",
                      "not-set", "notset")
_PLACEHOLDER_WORDS = frozenset((
    "none", "null", "nil", "undefined", "true", "false", "empty", "string", "str",
    "required", "optional", "secret", "password", "passwd", "pass", "pwd", "token", "user",
    "username", "test", "testing"))
_PLACEHOLDER_SHAPES = re.compile(r"<[^>]*>|^\$[a-z_]|^%[a-z_]+%$|[_-]here$")
_REFERENCE = re.compile(
    r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$"  # DB_PASSWORD: the name of a variable
    r"|[(\[{]"  # a call, an index, a type: getpass(), env["X"], Optional[str]
    r"|^(?:~|\.{1,2})?/|^[A-Za-z]:\\"  # a path
    r"|^[a-z][a-z0-9+.-]*://"  # a URL
    r"|^[\w.+-]+@[\w-]+\.[\w.-]+$")  # an e-mail address (EMAIL_ADDRESS finds it)
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")  # config.api_key, os.environ


def _not_placeholder(value: str, rule: Rule) -> bool:
    if len(set(value)) <= 2:  # ********, xxxxxxxx, abababab
        return False
    low = value.lower()
    if low in _PLACEHOLDER_WORDS or any(part in low for part in _PLACEHOLDER_PARTS):
        return False
    if _PLACEHOLDER_SHAPES.search(low) or _REFERENCE.search(value):
        return False
    # a dotted name is a reference unless digit-rich (an opaque token like ab1.c2d.3e4)
    return not (_DOTTED_NAME.fullmatch(value) and sum(c.isdigit() for c in value) <= 2)


_FILLER = re.compile(r"(?i)[x*#.•]{8,}|0{12,}|placeholder|your[_-]|replace[_-]?me|redacted|<|>")


def _not_filler(value: str, rule: Rule) -> bool:
    return _FILLER.search(value) is None


VALIDATORS: Mapping[str, Validator] = {
    "luhn": _luhn, "iban": _iban, "ssn": _ssn, "phone": _phone, "email": _email,
    "ipv4": _ipv4, "ipv6": _ipv6, "jwt": _jwt, "base58check": _base58check,
    "bech32": _bech32, "entropy": _entropy, "placeholder": _not_placeholder,
    "filler": _not_filler,
}


# -- rules from data ------------------------------------------------------------------------
Where = Callable[[Path_, str], Problem]


def compile_rules(items: Any, where: Where, taken: Collection[str] = ()
                  ) -> tuple[tuple[Rule, ...], list[Problem]]:
    """Rules from a list of rule mappings, and every problem found in them; `where`
    places a problem at a path inside the list ((index, key))."""
    if not isinstance(items, list):
        return (), [where((), "rules must be a list of mappings (id, entity, pattern, ...)")]
    rules: list[Rule] = []
    problems: list[Problem] = []
    seen = set(taken)
    for i, spec in enumerate(items):
        rule = _compile_rule(spec, (i,), where, problems, seen)
        if rule is not None:
            rules.append(rule)
    return tuple(rules), problems


def _compile_rule(spec: Any, at: Path_, where: Where, problems: list[Problem],
                  seen: set[str]) -> Rule | None:
    before = len(problems)

    def problem(key: str | None, message: str) -> None:
        problems.append(where((*at, key) if key else at, message))

    if not isinstance(spec, dict):
        problem(None, f"a rule is a mapping of {', '.join(_REQUIRED)}, ...; found {spec!r}")
        return None
    name = spec.get("id")
    label = f"rule {name!r}" if isinstance(name, str) else f"rule {at[-1]}"
    for key in spec:
        if key not in _KEYS:
            problem(key, unknown_key_message(str(key), _KEYS, label))
    for key in _REQUIRED:
        if not isinstance(spec.get(key), str) or not spec[key]:
            problem(key if key in spec else None, f"{label} needs `{key}` (a string)")
    if isinstance(name, str):
        if not _ID.match(name):
            problem("id", f"{label}: an id is lower-case letters, digits and -")
        elif name in seen:
            problem("id", f"{label} is defined twice: ids must be unique")
        seen.add(name)
    entity = spec.get("entity")
    kind = _KINDS.get(entity) if isinstance(entity, str) else None
    if isinstance(entity, str) and kind is None:
        hint = _suggest(entity, list(_KINDS))
        problem("entity", f"{label}: {entity!r} is not an entity type{hint} (the types "
                "are in egressguard/core/entities.py)")
    if "kind" in spec and kind is not None and spec["kind"] != kind:
        problem("kind", f"{label}: {entity} is a {kind} type; `kind` is {kind} or left out")
    regex = _regex(spec.get("pattern"), label, lambda m: problem("pattern", m))
    ignore_case = spec.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        problem("ignore_case", f"{label}: `ignore_case` is true or false")
    elif ignore_case and regex is not None and _UPPER.search(_ESCAPES.sub("", regex.pattern)):
        problem("pattern", f"{label}: with `ignore_case` the pattern is matched against "
                "the lower-cased text; write it in lower case")
    anchor, reach = _anchor(spec, label, problem)
    starts = _strings(spec, "starts", label, problem)
    if starts and anchor:
        problem("starts", f"{label}: `starts` and `anchor` are two ways of saying where "
                "matches are; use one")
    validators = _validators(spec, label, problem)
    numbers = {key: _number(spec, key, lo, hi, label, problem)
               for key, lo, hi in (("score", 0, 1), ("min_score", 0, 1), ("entropy", 0, 8))}
    keywords = tuple(k.lower() for k in _strings(spec, "keywords", label, problem))
    until = _regex(spec.get("until"), label, lambda m: problem("until", m.replace(
        "the pattern", "`until`"))) if "until" in spec else None
    context = tuple(k.lower() for k in _strings(spec, "context", label, problem))
    exclude = frozenset(k.lower() for k in _strings(spec, "exclude_context", label, problem))
    if len(problems) > before or regex is None or kind is None:
        return None
    score = numbers["score"] if numbers["score"] is not None else 1.0
    min_score = numbers["min_score"] or 0.0
    if score < min_score and not context:
        problem("min_score", f"{label}: the score ({score}) is below `min_score` "
                f"({min_score}) and no `context` can raise it: the rule finds nothing")
        return None
    if score < min_score and not keywords:
        keywords = context  # it needs a context word near a match: none in the text, no run
    return Rule(
        id=name, entity=entity, kind=kind, regex=regex,
        group="value" if "value" in regex.groupindex else 0,
        ignore_case=ignore_case,
        regex_i=re.compile(regex.pattern, re.IGNORECASE) if ignore_case else None,
        starts=tuple(sorted({x.lower() if ignore_case else x for x in starts})),
        anchor=anchor.lower() if ignore_case else anchor, reach=reach,
        keywords=keywords, validators=tuple(validators),
        score=score, context=context, min_score=min_score,
        exclude_context=exclude, until=until,
        entropy=numbers["entropy"] if numbers["entropy"] is not None else 3.0)


def _validators(spec: dict[str, Any], label: str,
                problem: Callable[[str | None, str], None]) -> list[Validator]:
    found = []
    names = _strings(spec, "validators", label, problem)
    for name in names:
        if name in VALIDATORS:
            found.append(VALIDATORS[name])
        else:
            problem("validators", f"{label}: unknown validator {name!r}"
                    f"{_suggest(name, list(VALIDATORS))} (known: {', '.join(VALIDATORS)})")
    if "entropy" in spec and "entropy" not in names:
        problem("entropy", f"{label}: `entropy` is the threshold of the entropy validator; "
                "add `entropy` to `validators` or remove it")
    return found


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1) or [
        o for o in options if name.lower() in o.lower()][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def _regex(pattern: Any, label: str, problem: Callable[[str], None]) -> re.Pattern[str] | None:
    if not isinstance(pattern, str) or not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        problem(f"{label}: the pattern is not a valid regex: {exc.msg} at position "
                f"{exc.pos} ({pattern[max(0, (exc.pos or 0) - 10):(exc.pos or 0) + 10]!r})")
        return None
    if regex.search("") is not None:
        problem(f"{label}: the pattern matches an empty string, so it would find something "
                "at every position of every text")
        return None
    return regex


def _anchor(spec: dict[str, Any], label: str, problem: Callable[[str | None, str], None]
            ) -> tuple[str, tuple[int, int]]:
    anchor, reach = spec.get("anchor"), spec.get("reach")
    if anchor is None and reach is None:
        return "", (0, 0)
    if not isinstance(anchor, str) or not anchor:
        problem("anchor" if "anchor" in spec else "reach",
                f"{label}: `reach` goes with `anchor`, a literal every match contains")
        return "", (0, 0)
    if not (isinstance(reach, list) and len(reach) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in reach)):
        problem("reach" if "reach" in spec else "anchor",
                f"{label}: `reach` is [before, after]: how many characters a match may "
                "extend before and after the anchor")
        return "", (0, 0)
    return anchor, (reach[0], reach[1])


def _strings(spec: dict[str, Any], key: str, label: str,
             problem: Callable[[str | None, str], None]) -> list[str]:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problem(key, f"{label}: `{key}` is a list of non-empty strings")
        return []
    return value


def _number(spec: dict[str, Any], key: str, lo: float, hi: float, label: str,
            problem: Callable[[str | None, str], None]) -> float | None:
    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        problem(key, f"{label}: `{key}` is a number from {lo} to {hi}; found {value!r}")
        return None
    return float(value)


def load_rules(text: str, source: str) -> tuple[Rule, ...]:
    """The rules of a rules file (`version: 1`, `rules: [...]`); ConfigError naming
    file:line:column of every problem."""
    doc = Document(text, source)
    problems = list(doc.problems)
    rules: tuple[Rule, ...] = ()
    data = doc.data
    if not isinstance(data, dict):
        problems.append(doc.where((), "a rules file is a mapping: `version: 1` and `rules:`"))
    else:
        for key in data:
            if key not in ("version", "rules"):
                problems.append(doc.where((key,), unknown_key_message(
                    str(key), ("version", "rules"), "a rules file")))
        if data.get("version") != 1:
            problems.append(doc.where(("version",) if "version" in data else (),
                                      "a rules file starts with `version: 1`"))
        rules, found = compile_rules(data.get("rules"),
                                     lambda path, msg: doc.where(("rules", *path), msg))
        problems += found
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    return rules


@cache
def builtin_rules() -> tuple[Rule, ...]:
    text = resources.files("egressguard.core.redact").joinpath("rules.yaml").read_text()
    return load_rules(text, "rules.yaml")


# -- normalisation ---------------------------------------------------------------------------
# Removed before matching: zero-width and formatting characters that render as nothing
_INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u200b\u200c"
    "\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064"
    "\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0")
# Letters of other scripts drawn like Latin ones, and dashes drawn like "-"
_HOMOGLYPHS = {
    **dict(zip("АВЕЅІЈКМНОРСТХУҮԌԚԜӀ", "ABESIJKMHOPCTXYYGQWI", strict=True)),  # Cyrillic
    **dict(zip("аеѕіјкорсхуԁһԛԝӏ", "aesijkopcxydhqwl", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),  # Greek
    **dict(zip("αικνορτυχϲϳ", "aiknoptuxcj", strict=True)),
    **dict(zip("ıɡօսᏃ", "igouZ", strict=True)),  # dotless i, script g, Armenian, Cherokee
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2212\ufe63", "-"),
}


def _fold_char(ch: str) -> str:
    cp = ord(ch)
    if ch in _INVISIBLE or 0xFE00 <= cp <= 0xFE0F:  # variation selectors too
        return ""
    if 0xE0000 <= cp <= 0xE007F:  # tag characters: invisible ASCII, a smuggling channel
        return chr(cp - 0xE0000) if 0xE0020 <= cp <= 0xE007E else ""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        c = _HOMOGLYPHS.get(c, c)
        if not c.isascii() and c.isdecimal():
            c = str(unicodedata.decimal(c))
        out.append(c)
    return "".join(out)


class _FoldTable(dict[int, int | str]):
    """code point -> code point (unchanged) or replacement, for str.translate;
    computed on first sight of each character."""

    def __missing__(self, cp: int) -> int | str:
        folded = _fold_char(chr(cp))
        value: int | str = cp if folded == chr(cp) else folded
        if len(self) < 200_000:
            self[cp] = value
        return value


_FOLD = _FoldTable({i: i for i in range(128)})
_REMOVABLE = re.compile("[" + "".join(sorted(_INVISIBLE)) + "\ufe00-\ufe0f\U000e0000-\U000e001f"
                        "\U000e007f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


class _OffsetMap:
    """Offsets in the normalised text -> offsets in the original, piecewise: each
    segment is a stretch copied unchanged (or 1:1) or one character replaced by several."""

    def __init__(self) -> None:
        self.norm: list[int] = []  # where each segment starts in the normalised text
        self.orig: list[int] = []  # ... and in the original
        self.linear: list[bool] = []

    def add(self, norm: int, orig: int, linear: bool) -> None:
        if linear and self.linear and self.linear[-1] and \
                norm - self.norm[-1] == orig - self.orig[-1]:
            return  # continues the previous linear segment
        self.norm.append(norm)
        self.orig.append(orig)
        self.linear.append(linear)

    def start(self, p: int) -> int:
        k = bisect_right(self.norm, p) - 1
        return self.orig[k] + (p - self.norm[k] if self.linear[k] else 0)

    def end(self, p: int) -> int:
        return self.start(p - 1) + 1


def _fold(text: str) -> tuple[str, _OffsetMap | None]:
    """The text to match on, and how to map its offsets back (None: the same text)."""
    if text.isascii():
        return text, None
    folded = text.translate(_FOLD)
    if folded == text:
        return text, None
    if len(folded) == len(text) and _REMOVABLE.search(text) is None:
        return folded, None  # only expansions lengthen and removals shorten: all 1:1
    offsets = _OffsetMap()
    n = last = 0  # next position in the normalised text; original position copied up to
    for m in _NON_ASCII.finditer(text):
        i = m.start()
        replacement = _FOLD[ord(text[i])]
        if isinstance(replacement, int):
            continue
        if i > last:
            offsets.add(n, last, True)
            n += i - last
        if replacement:
            offsets.add(n, i, len(replacement) == 1)
            if len(replacement) > 1:  # the characters after it map linearly again
                offsets.add(n + len(replacement), i + 1, True)
            n += len(replacement)
        last = i + 1
    if last < len(text):
        offsets.add(n, last, True)
    return folded, offsets


# -- encoded secrets -------------------------------------------------------------------------
_RUN_CHARS = "A-Za-z0-9+/_%-"
# a run after a character that cannot be in one: the engine stops at delimiters only,
# not at every character of every word
# `=` is padding only where the run ends (not the `=` of NAME=value)
_RUN = re.compile(f"[^{_RUN_CHARS}]([{_RUN_CHARS}]{{{ENCODED_RUN[0]},}}"
                  f"(?:={{1,2}}(?![{_RUN_CHARS}]))?)")
_RUN_FIRST = re.compile(f"[{_RUN_CHARS}]{{{ENCODED_RUN[0]},}}(?:={{1,2}}(?![{_RUN_CHARS}]))?")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_URL_SAFE = str.maketrans("-_", "+/")


def _as_text(raw: bytes) -> str | None:
    if len(raw) < 8:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def decode_run(run: str) -> str | None:
    """The text a percent-encoded, hex or base64 (standard or url-safe) run stands
    for, if it decodes to text; None for binary or not-encoded runs."""
    if "%" in run:
        if run.count("%") < 3:
            return None
        try:
            text = urllib.parse.unquote(run, errors="strict")
        except UnicodeDecodeError:
            return None
        return text if text != run and _CONTROL.search(text) is None else None
    core = run.rstrip("=")
    if len(core) == len(run) and _HEX.fullmatch(core):
        text = _as_text(bytes.fromhex(core))
        if text is not None:
            return text
    if run.islower() or run.isupper():
        return None  # base64 of a dozen bytes of text mixes cases: a path, a NAME_LIKE_THIS
    if "-" in core or "_" in core:
        if "+" in core or "/" in core:
            return None
        core = core.translate(_URL_SAFE)
    if len(core) % 4 == 1:
        return None
    try:
        raw = binascii.a2b_base64(core + "=" * (-len(core) % 4), strict_mode=True)
    except binascii.Error:
        return None
    return _as_text(raw)


# -- the detector ------------------------------------------------------------------------------
_PREVIOUS_WORD = re.compile(r"([A-Za-z]+)[ \t:=#.]*\Z")
_SPACE = re.compile(r"\s")


class Detector:
    """Finds entities with a fixed set of rules; build once, call `find` per text."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.entities = frozenset(r.entity for r in self.rules)
        self._subsets: dict[frozenset[str], tuple[Rule, ...]] = {}
        self._secrets: dict[tuple[Rule, ...], tuple[Rule, ...]] = {}
        self._gates: dict[frozenset[str], StreamGate] = {}

    @classmethod
    def from_rules(cls, extra: Sequence[Mapping[str, Any]] = (), source: str = "<rules>",
                   where: Where | None = None, builtin: bool = True) -> Detector:
        """The built-in rules plus `extra` rule mappings (the rules.yaml shape), e.g. a
        policy's own. `where` places problems (path: (index, key)) in the caller's
        file; without it they name `source` and the rule's index. ConfigError lists
        every problem."""
        base = builtin_rules() if builtin else ()
        if not extra:
            return cls(base)

        def at(path: Path_, message: str) -> Problem:
            spot = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
            return Problem(source, 1, 1, f"rules{spot}: {message}")

        rules, problems = compile_rules(list(extra), where or at, {r.id for r in base})
        if problems:
            raise ConfigError(problems)
        return cls((*base, *rules))

    def find(self, text: str, entities: Collection[str] | None = None) -> list[Finding]:
        """Non-overlapping findings sorted by start, at offsets into `text` as given.
        `entities`: only these types (None: every type the rules know)."""
        rules = self._select(entities)
        if not text or not rules:
            return []
        scan, offsets = _fold(text)
        chosen = _resolve(self._candidates(scan, rules, decode=True))
        if chosen:
            chosen = _with_repeats(scan, chosen)
        if offsets is None:
            return [Finding(c[4], c[5], c[0], c[1], c[3]) for c in chosen]
        return [Finding(c[4], c[5], offsets.start(c[0]), offsets.end(c[1]), c[3])
                for c in chosen]

    def gate(self, entities: Collection[str]) -> StreamGate:
        """The `StreamGate` of the secret rules for `entities`, built once."""
        key = frozenset(entities)
        gate = self._gates.get(key)
        if gate is None:
            gate = StreamGate(tuple(r for r in self._select(key) if r.kind == "secret"))
            if len(self._gates) < 64:
                self._gates[key] = gate
        return gate

    def _select(self, entities: Collection[str] | None) -> tuple[Rule, ...]:
        if entities is None:
            return self.rules
        key = frozenset((entities,) if isinstance(entities, str) else entities)
        rules = self._subsets.get(key)
        if rules is None:
            rules = tuple(r for r in self.rules if r.entity in key)
            if len(self._subsets) < 1024:
                self._subsets[key] = rules
        return rules

    def _candidates(self, text: str, rules: tuple[Rule, ...], decode: bool) -> list[Candidate]:
        lowered = text.lower()
        same_length = len(lowered) == len(text)
        present: dict[str, bool] = {}
        found: list[Candidate] = []
        for rule in rules:
            if rule.keywords and not any(
                    present[k] if k in present else present.setdefault(k, k in lowered)
                    for k in rule.keywords):
                continue
            subject, regex, literal = text, rule.regex, True
            if rule.ignore_case:
                if same_length:
                    subject = lowered
                else:  # lower-case literals would not be found in this text: scan it all
                    regex, literal = rule.regex_i or rule.regex, False
            if literal and rule.starts:
                matches: Iterable[re.Match[str]] = _started(regex, subject, rule.starts)
            elif literal and rule.anchor and subject.count(rule.anchor) <= 8 + len(text) // 256:
                # dense anchors would search overlapping windows: one scan is linear
                matches = _anchored(regex, subject, rule.anchor, rule.reach)
            else:
                matches = regex.finditer(subject)
            for m in matches:
                candidate = _check(rule, m, text)
                if candidate is not None:
                    found.append(candidate)
        if decode:
            secret_rules = self._secrets.get(rules)
            if secret_rules is None:
                secret_rules = tuple(r for r in rules if r.kind == "secret")
                if len(self._secrets) < 1024:
                    self._secrets[rules] = secret_rules
            if secret_rules:
                found += self._encoded(text, secret_rules, found)
        return found

    def _encoded(self, text: str, secret_rules: tuple[Rule, ...], plain: list[Candidate]
                 ) -> list[Candidate]:
        """One finding per encoded run whose decoded text holds a secret: the run's span,
        the secret's type."""
        # a run a vendor-specific rule already took stays theirs; one GENERIC_SECRET took
        # (API_KEY_B64=<run>) is still decoded: what it holds is the better answer
        taken = [(c[0], c[1]) for c in plain if c[2] == 2]
        found: list[Candidate] = []
        first = _RUN_FIRST.match(text)
        runs = _RUN.finditer(text, first.end() if first else 0)
        for m in chain([first] if first else [], runs):
            start, end = m.span(m.lastindex or 0)
            if end - start > ENCODED_RUN[1] or any(s < end and start < e for s, e in taken):
                continue
            decoded = decode_run(text[start:end])
            if decoded is None:
                continue
            inner_text, _ = _fold(decoded)
            inner = self._candidates(inner_text, secret_rules, decode=False)
            if inner:
                best = max(inner, key=lambda c: (c[2], c[1] - c[0], c[3]))
                found.append((start, end, best[2], best[3], best[4], "secret"))
        return found


_RUN_SET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_%=-"
_ANY_RUN = re.compile(f"[{_RUN_CHARS}]{{{ENCODED_RUN[0]}}}")
_HELD_RUN = 12  # a trailing run this long, not a plain word, may be an encoded secret
# a JSON string literal's text, and the colon after it if it is an object's key
_RAW_VALUE = re.compile(rb'"((?:[^"\\]|\\.)*)"(\s*:)?')
_PARTIAL_SURE = 4  # a partial match this long has passed the rules' own lookbehinds


class StreamGate:
    """What a streamed text's end may still become, by the secret rules' patterns.

    A streamed answer arrives a few characters at a time; a key must not be released
    while its first half is all there is (`sk-proj-Ab` could go on to be one). `pending`
    says where the end of a text may still be, or grow into, a secret: a partial match
    of a rule's pattern running to the end (the `regex` package's partial matching), a
    complete one followed by nothing but white space (more key characters may follow),
    one of a rule with `until` not yet followed by a match of that (a PEM block before
    its END line), or a run of base64/hex
    characters long enough to decode. A short partial match inside a word (the `s` of
    `tokens` could begin `sk-`) is not held: the rules' lookbehinds refuse a secret
    that starts mid-word once its prefix is there to test.

    `maybe` is the cheap test before the detector proper: a text no pattern matches,
    with no encoded run and no character to normalise, holds no secret.

    Both run once per streamed event, so a rule is only tried where it can be: where
    one of the literals every match starts with occurs, or where the text ends in the
    beginning of one (`_literal_starts`); a rule without such literals is always tried.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        # per rule: (its pattern for partial matching, its start literals or None)
        self._partial = [partial_re.compile(r.regex.pattern, partial_re.IGNORECASE
                                            if r.ignore_case else 0) for r in self.rules]
        self._starts = [_literal_starts(r) for r in self.rules]
        self._always = frozenset(i for i, lits in enumerate(self._starts) if not lits)
        self._heads: dict[str, set[int]] = {}  # a literal's proper prefix -> rules
        exact: dict[str, set[int]] = {}  # literal -> rules (lower-cased for ignore_case)
        folded: dict[str, set[int]] = {}
        for i, lits in enumerate(self._starts):
            for lit in lits or ():
                (folded if self.rules[i].ignore_case else exact).setdefault(lit, set()).add(i)
                assert not any(c.isspace() for c in lit), lit  # see _candidates
                for n in range(1, len(lit)):
                    self._heads.setdefault(lit[:n], set()).add(i)
        self._longest_head = max(map(len, self._heads), default=0)
        self._folded = bool(folded)
        # one scan finds every literal; a literal found stands for each one inside it
        # (the scan does not overlap: `xoxe.xoxb-` hides the `xoxb-` in it)
        self._exact = _literal_scan(exact)
        self._lower = _literal_scan(folded)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _candidates(self, scan: str, lowered: str, ends: bool) -> set[int]:
        """Rules that can match in `scan` (a literal occurs), or, with `ends`, whose
        literal `scan` ends in the beginning of (a short beginning only where a word
        starts: no secret starts inside a word)."""
        found = set(self._always)
        for where, literals in ((scan, self._exact), (lowered, self._lower)):
            if literals is not None:
                for m in literals[0].finditer(where):
                    found |= literals[1][m.group()]
        if ends:  # no literal holds white space: only the last word can begin one
            word = len(scan) - 1 - max(scan.rfind(" "), scan.rfind("\n"), scan.rfind("\t"))
            heads = self._heads
            for n in range(1, min(self._longest_head, word) + 1):
                if n < _PARTIAL_SURE and n < word and scan[-n - 1].isalnum():
                    continue
                if (rules := heads.get(scan[-n:])) is not None:
                    found |= rules
                if self._folded and (rules := heads.get(lowered[-n:])) is not None:
                    found |= rules
        return found

    def quiet(self, text: str) -> bool:
        """Whether `text` can neither hold nor end in (the start of) a secret: plain
        ASCII with no rule's literal in it, not ending in the beginning of one, nor in
        a run that may be encoded. Most of a model's tokens are; they cost this."""
        if not text.isascii():
            return False
        run = len(text) - len(text.rstrip(_RUN_SET))
        if run >= _HELD_RUN and not text[len(text) - run:].isalpha():
            return False
        return not self._candidates(text, text.lower() if self._folded else text, ends=True)

    def quiet_event(self, raw: bytes, opaque: re.Pattern[bytes] | None = None) -> bool:
        """`quiet` for every string value of an SSE event's JSON, read off its bytes
        (escapes and all: an escape is not quiet); values of the `opaque` pattern's
        keys (ids, signatures) aside."""
        if opaque is not None:
            raw = opaque.sub(b"", raw)
        if not raw.isascii():
            return False
        for m in _RAW_VALUE.finditer(raw):
            if m.group(2) is None and not self.quiet(m.group(1).decode("ascii")):
                return False
        return True

    def pending(self, text: str, before: str = "") -> int:
        """Where in `text` the part begins that may still be (part of) a secret once
        more text follows; len(text) when none. `before`: the text that came before
        it (for lookbehinds and word boundaries)."""
        if not text or not self.rules or self.quiet(text):
            return len(text)
        subject = before[-32:] + text
        offset = len(subject) - len(text)
        scan, offsets = _fold(subject)
        size = len(scan)
        cut = size
        run = size - len(scan.rstrip(_RUN_SET))
        if run >= _HELD_RUN and not scan[size - run:].isalpha():
            cut = size - run
        lowered = scan.lower() if self._folded and len(scan.lower()) == size else scan
        for i in self._candidates(scan, lowered, ends=True):
            for m in self._partial[i].finditer(scan, partial=True):
                start, end = m.span()
                if m.partial:  # runs to the end: short ones only at a word's start
                    held = end > start and (end - start >= _PARTIAL_SURE or start == 0
                                            or not scan[start - 1].isalnum())
                else:  # complete, and nothing but white space after it: may go on
                    held = end == size or scan[end:].isspace()
                until = self.rules[i].until
                if not held and until is not None:  # a block not closed yet
                    held = until.search(scan, start + 1) is None
                if held and start < cut:
                    cut = start
        if cut == size:
            return len(text)
        where = offsets.start(cut) if offsets is not None else cut
        return max(0, where - offset)

    def maybe(self, text: str) -> bool:
        """Whether `text` may hold a secret of these rules at all."""
        if not self.rules or not text:
            return False
        if not text.isascii() or _ANY_RUN.search(text):
            return True
        lowered = text.lower() if self._folded else text
        return any(self.rules[i].regex.search(lowered if self.rules[i].ignore_case else text)
                   for i in self._candidates(text, lowered, ends=False))


def _literal_scan(rules_of: dict[str, set[int]]
                  ) -> tuple[re.Pattern[str], dict[str, set[int]]] | None:
    """A regex finding any of the literals (longest first), and for each literal the
    rules of every literal it contains."""
    if not rules_of:
        return None
    literals = sorted(rules_of, key=len, reverse=True)
    inside = {lit: set().union(*(r for other, r in rules_of.items() if other in lit))
              for lit in literals}
    return re.compile("|".join(map(re.escape, literals))), inside


def _literal_starts(rule: Rule) -> tuple[str, ...] | None:
    """Literals one of which every match of the rule starts with (its `starts`, else
    read off the pattern: leading characters, small character sets and alternations,
    lookarounds skipped); None when the pattern does not begin with one."""
    if rule.starts:
        return rule.starts
    try:
        parsed = _sre_parser.parse(rule.regex.pattern)
    except (re.error, RecursionError):
        return None
    found, _ = _lead(list(parsed), {""})
    found = {f.lower() if rule.ignore_case else f for f in found}
    return tuple(sorted(found)) if found and "" not in found else None


_LEAD_LIMIT = 32  # literals per rule; a wider pattern is tried everywhere


def _lead(items: list[Any], acc: set[str]) -> tuple[set[str], bool]:
    """The literal prefixes `items` (parsed regex nodes) add to each of `acc`, and
    whether every item was read (a later item may add more)."""
    for op, av in items:
        if op is _sre.LITERAL:
            acc = {a + chr(av) for a in acc}
        elif op is _sre.IN:
            chars = _set_chars(av)
            if chars is None or len(acc) * len(chars) > _LEAD_LIMIT:
                return acc, False
            acc = {a + c for a in acc for c in chars}
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            continue  # zero width: adds nothing
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT) and av[0] == 0 and av[1] == 1:
            taken, whole = _lead(list(av[2]), acc)  # an optional part: with it or without
            acc = taken | acc
            if not whole or len(acc) > _LEAD_LIMIT:
                return acc, False
        elif op is _sre.SUBPATTERN:
            acc, whole = _lead(list(av[3]), acc)
            if not whole:
                return acc, False
        elif op is _sre.BRANCH:
            branches = [_lead(list(b), acc) for b in av[1]]
            acc = set().union(*(b[0] for b in branches))
            if len(acc) > _LEAD_LIMIT:
                return {""}, False
            if not all(b[1] for b in branches):
                return acc, False
        else:
            return acc, False
    return acc, True


def _set_chars(items: list[Any]) -> list[str] | None:
    chars: list[str] = []
    for op, av in items:
        if op is _sre.LITERAL:
            chars.append(chr(av))
        elif op is _sre.RANGE and av[1] - av[0] < 8:
            chars += [chr(c) for c in range(av[0], av[1] + 1)]
        else:
            return None
    return chars


def _started(regex: re.Pattern[str], text: str, starts: tuple[str, ...]
             ) -> Iterator[re.Match[str]]:
    """Matches beginning where one of the literals `starts` occurs: str.find runs at
    memory speed, where the regex engine would try the pattern at every position."""
    positions = []
    for literal in starts:
        at = text.find(literal)
        while at != -1:
            positions.append(at)
            at = text.find(literal, at + 1)
    done = 0
    for at in sorted(positions):
        if at >= done and (m := regex.match(text, at)) is not None:
            yield m
            done = m.end()


def _anchored(regex: re.Pattern[str], text: str, anchor: str, reach: tuple[int, int]
              ) -> Iterator[re.Match[str]]:
    """The leftmost match around each occurrence of `anchor` that contains it: a search
    of the whitespace-free stretch around it instead of every position of the text
    (an anchored match holds no whitespace)."""
    size = len(text)
    done = 0  # matches end here at the latest: never report one twice
    at = text.find(anchor)
    while at != -1:
        after = at + len(anchor)
        # a match spans its anchor: none does where a space touches it (@property)
        if (reach[0] and (at == 0 or text[at - 1].isspace())) or (
                reach[1] and (after >= size or text[after].isspace())):
            at = text.find(anchor, at + 1)
            continue
        start = max(done, at - reach[0])
        start = max(start, *(text.rfind(c, start, at) + 1 for c in " \n\t\r"))
        space = _SPACE.search(text, after, min(size, after + reach[1]))
        stop = space.start() if space else min(size, after + reach[1])
        m = regex.search(text, start, stop)
        while m is not None and m.end() <= at:
            m = regex.search(text, m.end(), stop)
        if m is not None and m.start() <= at:
            yield m
            done = m.end()
        at = text.find(anchor, max(at + 1, done))


def _check(rule: Rule, m: re.Match[str], text: str) -> Candidate | None:
    start, end = m.span(rule.group)
    if start >= end:
        return None
    value = text[start:end]
    for validate in rule.validators:
        verdict = validate(value, rule)
        if verdict is False:
            return None
        if verdict is not True:
            end = start + verdict
            value = value[:verdict]
    score = rule.score
    if rule.context:
        window = text[max(0, start - CONTEXT_BEFORE):end + CONTEXT_AFTER].lower()
        if any(word in window for word in rule.context):
            score = min(1.0, score + CONTEXT_BOOST)
    if score < rule.min_score:
        return None
    if rule.exclude_context:
        before = _PREVIOUS_WORD.search(text, max(0, start - 32), start)
        if before is not None and before.group(1).lower() in rule.exclude_context:
            return None
    return (start, end, rule.rank, round(score, 2), rule.entity, rule.kind)


def _resolve(candidates: list[Candidate]) -> list[Candidate]:
    """Non-overlapping, by start; among overlapping candidates secrets first, then the
    longer, then the surer. Settled per cluster of overlapping candidates: O(n log n)."""
    candidates.sort()
    chosen: list[Candidate] = []
    cluster: list[Candidate] = []
    reach = -1
    for c in candidates:
        if c[0] >= reach and cluster:
            chosen += _settle(cluster) if len(cluster) > 1 else cluster
            cluster = []
        cluster.append(c)
        reach = max(reach, c[1]) if len(cluster) > 1 else c[1]
    if cluster:
        chosen += _settle(cluster) if len(cluster) > 1 else cluster
    return chosen


def _settle(cluster: list[Candidate]) -> list[Candidate]:
    cluster.sort(key=lambda c: (-c[2], c[0] - c[1], -c[3], c[0]))
    kept: list[Candidate] = []
    for c in cluster:
        if all(c[1] <= k[0] or k[1] <= c[0] for k in kept):
            kept.append(c)
    return sorted(kept)


def _with_repeats(text: str, chosen: list[Candidate]) -> list[Candidate]:
    """`chosen` (sorted, non-overlapping) plus every other place the very same value
    occurs. A rule may accept a value in one context and not in another (a card number
    right after a digit group looks like part of a tracking number); once a value is
    known to be sensitive, a copy of it left in the text would give it away all the
    same. Linear in the number of occurrences."""
    firsts: dict[str, Candidate] = {}
    for c in chosen:
        if c[1] - c[0] >= _MIN_REPEAT:
            firsts.setdefault(text[c[0]:c[1]], c)
    taken = {(c[0], c[1]) for c in chosen}
    starts = [c[0] for c in chosen]
    extra: list[Candidate] = []
    for value, c in firsts.items():
        at = text.find(value)
        while at >= 0:
            end = at + len(value)
            if (at, end) not in taken:
                i = bisect_right(starts, at)
                if not (i and chosen[i - 1][1] > at) and not (i < len(chosen)
                                                            and chosen[i][0] < end):
                    extra.append((at, end, *c[2:]))
            at = text.find(value, at + 1)
    if not extra:
        return chosen
    extra.sort()
    kept, reach = [], -1
    for e in extra:  # copies may overlap one another (`aaaaaa` in `aaaaaaa`)
        if e[0] >= reach:
            kept.append(e)
            reach = e[1]
    return sorted(chosen + kept)


_MIN_REPEAT = 6  # shorter values (a 5-digit number) are too common to chase


@cache
def default_detector() -> Detector:
    """The detector of the built-in rules, built once."""
    return Detector(builtin_rules())
