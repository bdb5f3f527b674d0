"""A labelled evaluation set for redaction, generated from a seed, and how it is scored.

Every value is made up at run time from random characters (keys, card numbers, IBANs,
SSNs, addresses), never taken from real people or real accounts, so no real key is
ever committed and the set itself is never committed either (`__main__` writes it as
JSONL for inspection). Where a format leaves room, a value says it is synthetic:
keys carry `SYNTH` in their random part, e-mail addresses and phone numbers mostly use
the reserved example domains and fictional number ranges, IPs the documentation ranges.

A sample is `{"text", "spans": [{"entity", "start", "end"}], "context", "case"}`:

* `context`: where an agent would send such text: `chat` (a user message),
  `json_tool_result` (a tool's JSON output; values sit escaped inside JSON strings),
  `code` (.env, YAML, TOML, Python, JS, shell, compose files) or `log` (timestamps,
  request ids, structured lines).
* `spans`: character offsets into `text` of every sensitive value, and nothing else:
  the value itself, without surrounding quotes, brackets or the `key=` that names it
  (GENERIC_SECRET labels the value of `password=…`, not the assignment). A value inside
  a JSON string is labelled as written there, escapes included (a PEM block in JSON
  spans its `\\n`s). Evasion variants are labelled as written: zero-width characters,
  fullwidth forms and Cyrillic look-alikes lie inside the span; an encoded secret
  (base64, hex, percent-encoding) is labelled over its encoded text, with the type
  of the secret it encodes.
* `case`: `TYPE:form/variant` for a positive (`OPENAI_API_KEY:proj/zero_width`,
  `IBAN_CODE:DE/plain`), `negative/kind` for a hard negative; only for reading
  results, never for scoring.

Composition: each type gets `n_per_type` samples built around it, spread over the four
contexts by that type's `CONTEXT_WEIGHTS` and over variants by `SECRET_VARIANTS` /
`PII_VARIANTS` (exact counts, largest remainder); some templates add further labelled
values (an IP in a log line, a second address), so every type has at least
`n_per_type` positives. Hard negatives (no spans: hashes, UUIDs, versions, timestamps,
placeholders, Luhn-failing order numbers, invalid SSNs and IBANs, …) are added until
they are `negative_share` of all samples.

`score(samples, predictions)` matches predictions to labels: exactly (same type, same
offsets: what targets count) and by overlap (same type, any overlap: a diagnostic).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import random
import re
import string
import sys
import unicodedata
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypedDict
from urllib.parse import unquote

PII_TYPES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS",
)
SECRET_TYPES = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_OAUTH_TOKEN", "AWS_ACCESS_KEY",
    "GITHUB_TOKEN", "SLACK_TOKEN", "GOOGLE_API_KEY", "STRIPE_SECRET_KEY", "PRIVATE_KEY",
    "JWT", "GENERIC_SECRET",
)
TYPES = PII_TYPES + SECRET_TYPES
CONTEXTS = ("chat", "json_tool_result", "code", "log")
TARGET_RECALL = 0.98
TARGET_PRECISION = 0.97


class Span(TypedDict):
    entity: str
    start: int
    end: int


class Sample(TypedDict):
    text: str
    spans: list[Span]
    context: str
    case: str


# --- composition ---------------------------------------------------------------------

# share of a type's samples per context, in CONTEXTS order
_KEY_CONTEXTS = (0.25, 0.20, 0.35, 0.20)
CONTEXT_WEIGHTS: dict[str, tuple[float, float, float, float]] = {
    "EMAIL_ADDRESS": (0.35, 0.30, 0.15, 0.20),
    "PHONE_NUMBER": (0.40, 0.30, 0.10, 0.20),
    "CREDIT_CARD": (0.35, 0.35, 0.10, 0.20),
    "US_SSN": (0.40, 0.35, 0.10, 0.15),
    "IBAN_CODE": (0.35, 0.35, 0.15, 0.15),
    "IP_ADDRESS": (0.15, 0.25, 0.20, 0.40),
    "PRIVATE_KEY": (0.20, 0.25, 0.45, 0.10),
    "JWT": (0.15, 0.30, 0.20, 0.35),
    "GENERIC_SECRET": (0.15, 0.20, 0.45, 0.20),
    **{t: _KEY_CONTEXTS for t in SECRET_TYPES[:8]},
}
ENCODINGS = ("base64", "hex", "percent")
EVASIONS = ("zero_width", "fullwidth", "homoglyph") + ENCODINGS
SECRET_VARIANTS = {
    "plain": 0.60, "punct": 0.12, "zero_width": 0.05, "fullwidth": 0.05,
    "homoglyph": 0.06, "base64": 0.05, "hex": 0.035, "percent": 0.035,
}
PII_VARIANTS = {"plain": 0.78, "punct": 0.14, "zero_width": 0.04, "fullwidth": 0.04}
_VARIANTS: dict[str, dict[str, float]] = {
    **{t: SECRET_VARIANTS for t in SECRET_TYPES},
    **{t: PII_VARIANTS for t in PII_TYPES},
    # a PEM block is not written in fullwidth; base64 is how Kubernetes stores one
    "PRIVATE_KEY": {**SECRET_VARIANTS, "fullwidth": 0.0, "base64": 0.10},
    "EMAIL_ADDRESS": {**PII_VARIANTS, "plain": 0.75, "homoglyph": 0.03},
}


def _apportion(total: int, weights: dict[str, float]) -> list[str]:
    """`total` labels split by weight, exactly (largest remainder), in weight order."""
    norm = sum(weights.values())
    raw = {k: total * w / norm for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    short = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[:short]:
        counts[k] += 1
    return [k for k in weights for _ in range(counts[k])]


# --- random values -----------------------------------------------------------------------

DIGITS = string.digits
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
BASE32 = string.ascii_uppercase + "234567"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase  # GitHub's order
HEX = "0123456789abcdef"
MARK = "SYNTH"
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
HOMOGLYPHS = {  # Latin -> Cyrillic look-alike
    "a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440",
    "x": "\u0445", "y": "\u0443", "s": "\u0455", "i": "\u0456", "j": "\u0458",
    "A": "\u0410", "B": "\u0412", "C": "\u0421", "E": "\u0415", "H": "\u041d",
    "I": "\u0406", "J": "\u0408", "K": "\u041a", "M": "\u041c", "O": "\u041e",
    "P": "\u0420", "S": "\u0405", "T": "\u0422", "X": "\u0425",
}


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _marked(rng: random.Random, alphabet: str, n: int) -> str:
    """n random characters with MARK somewhere inside (not at either end)."""
    body = _rand(rng, alphabet, n - len(MARK))
    at = rng.randint(1, len(body) - 1)
    return body[:at] + MARK + body[at:]


def _hex_id(rng: random.Random, n: int) -> str:
    """Hex with a letter in every 8 characters: no long digit runs for a card or phone
    pattern to find in what is only a request id."""
    while True:
        s = _rand(rng, HEX, n)
        if not re.search(r"\d{8}", s):
            return s


def _syllables(rng: random.Random, lo: int, hi: int) -> str:
    cons, vows = "bdfghklmnprstvz", "aeiou"
    return "".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(lo, hi)))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _luhn_complete(prefix: str) -> str:
    return next(prefix + c for c in DIGITS if luhn_ok(prefix + c))


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{8,30}", s) or IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _iban_check(country: str, bban: str) -> str:
    n = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{98 - n % 97:02d}"


# country -> BBAN as (count, class) runs: n digit, a upper letter, c upper alnum
_IBAN_BBAN: dict[str, tuple[tuple[int, str], ...]] = {
    "DE": ((18, "n"),), "GB": ((4, "a"), (14, "n")), "FR": ((23, "n"),),
    "ES": ((20, "n"),), "NL": ((4, "a"), (10, "n")), "IT": ((1, "a"), (10, "n"), (12, "c")),
    "CH": ((5, "n"), (12, "c")), "BE": ((12, "n"),), "PL": ((24, "n"),), "AT": ((16, "n"),),
}
IBAN_LENGTHS = {cc: 4 + sum(n for n, _ in runs) for cc, runs in _IBAN_BBAN.items()}
_CLASSES = {"n": DIGITS, "a": string.ascii_uppercase, "c": string.ascii_uppercase + DIGITS}


def _group4(s: str) -> str:
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def ssn_ok(ssn: str) -> bool:
    """In the ranges the SSA assigns, and none of the well-known specimen numbers."""
    d = re.sub(r"[ -]", "", ssn)
    if not re.fullmatch(r"\d{9}", d):
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    return (
        area not in ("000", "666") and area < "900" and group != "00" and serial != "0000"
        and d not in ("078051120", "219099999", "123456789") and len(set(d)) > 1
    )


def _email(rng: random.Random) -> tuple[str, str]:
    first, last = _syllables(rng, 2, 3), _syllables(rng, 2, 3)
    local = rng.choice((
        f"{first}.{last}", f"{first}{last}", f"{first[0]}.{last}",
        f"{first}_{last}{rng.randint(1, 99)}", f"{first}+{rng.choice(('ci', 'alerts', 'billing'))}",
        f"{last}-{first}",
    ))
    if rng.random() < 0.5:
        domain = rng.choice(("example.com", "example.org", "example.net", "mail.example.com",
                             "corp.example.com"))
        return f"{local}@{domain}", "reserved"
    tld = rng.choice(("com", "io", "dev", "co.uk", "de", "fr", "net", "org", "app"))
    suffix = rng.choice(("", "-labs", "-mail", "tech"))
    return f"{local}@{_syllables(rng, 2, 3)}{suffix}.{tld}", "invented"


_US_AREAS = ("201", "206", "212", "213", "303", "305", "312", "404", "415", "503", "512",
             "617", "646", "702", "718", "720", "773", "919")


def _phone(rng: random.Random) -> tuple[str, str]:
    """Fictional ranges: US 555-01XX, UK Ofcom drama numbers, FR 01 99 00, AU ACMA."""
    roll = rng.random()
    if roll < 0.55:
        a, line = rng.choice(_US_AREAS), f"01{rng.randint(0, 99):02d}"
        fmt = rng.choice(("+1 ({a}) 555-{l}", "({a}) 555-{l}", "{a}-555-{l}", "{a}.555.{l}",
                          "+1 {a} 555 {l}", "+1{a}555{l}", "+1-{a}-555-{l}"))
        return fmt.format(a=a, l=line), "US"
    if roll < 0.75:
        d = f"{rng.randint(0, 999):03d}"
        return rng.choice((f"+44 20 7946 0{d}", f"020 7946 0{d}", f"+44 113 496 0{d}",
                           f"0113 496 0{d}", f"+44 161 496 0{d}")), "GB"
    if roll < 0.85:
        a, b = f"{rng.randint(0, 99):02d}", f"{rng.randint(0, 99):02d}"
        return rng.choice((f"+33 1 99 00 {a} {b}", f"01 99 00 {a} {b}")), "FR"
    n3, n4 = f"{rng.randint(6, 159):03d}", f"{rng.randint(0, 9999):04d}"
    return rng.choice((f"+61 491 570 {n3}", f"0491 570 {n3}", f"(02) 5550 {n4}",
                       f"+61 2 5550 {n4}")), "AU"


_CARD_BRANDS = {
    "visa": (("4",), 16), "mastercard": (("51", "52", "53", "54", "55", "2221", "2720"), 16),
    "amex": (("34", "37"), 15), "discover": (("6011",), 16),
}


def _card(rng: random.Random) -> tuple[str, str]:
    brand = rng.choice(tuple(_CARD_BRANDS))
    prefixes, length = _CARD_BRANDS[brand]
    while True:
        prefix = rng.choice(prefixes)
        num = _luhn_complete(prefix + _rand(rng, DIGITS, length - len(prefix) - 1))
        if len(set(num)) > 4:
            break
    sep = rng.choices((" ", "-", ""), (0.45, 0.30, 0.25))[0]
    groups = (4, 6, 5) if brand == "amex" else (4, 4, 4, 4)
    cuts = [sum(groups[:i]) for i in range(len(groups) + 1)]
    return sep.join(num[a:b] for a, b in zip(cuts, cuts[1:], strict=False)), brand


def _ssn(rng: random.Random) -> tuple[str, str]:
    while True:
        area = rng.randint(1, 899)
        d = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        if ssn_ok(d) and not d.startswith("98765432"):
            break
    form = rng.choices(("dashed", "spaced", "plain"), (0.7, 0.15, 0.15))[0]
    sep = {"dashed": "-", "spaced": " ", "plain": ""}[form]
    return f"{d[:3]}{sep}{d[3:5]}{sep}{d[5:]}", form


def _iban(rng: random.Random) -> tuple[str, str]:
    cc = rng.choice(tuple(_IBAN_BBAN))
    bban = "".join(_rand(rng, _CLASSES[c], n) for n, c in _IBAN_BBAN[cc])
    iban = cc + _iban_check(cc, bban) + bban
    return (_group4(iban) if rng.random() < 0.65 else iban), cc


def _ip(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.65:
        roll = rng.random()
        if roll < 0.6:
            net = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
            return f"{net}.{rng.randint(1, 254)}", "v4"
        if roll < 0.85:
            return rng.choice((
                f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            )), "v4"
        first = rng.choice([n for n in range(11, 224) if n not in (100, 127, 169, 172, 192, 198,
                                                                      203)])
        return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}", "v4"
    groups = [0x2001, 0xDB8] + [rng.randint(0, 0xFFFF) for _ in range(2)]
    groups += [0, 0, 0, rng.randint(1, 0xFFFF)] if rng.random() < 0.5 else [
        rng.randint(0, 0xFFFF) for _ in range(4)]
    addr = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
    text = addr.exploded if rng.random() < 0.2 else addr.compressed
    return (text.upper() if rng.random() < 0.1 else text), "v6"


def _openai(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.7:
        body = _marked(rng, URLSAFE, 74) + "T3BlbkFJ" + _rand(rng, URLSAFE, 74)
        return "sk-proj-" + body, "proj"
    return "sk-" + _marked(rng, ALNUM, 20) + "T3BlbkFJ" + _rand(rng, ALNUM, 20), "legacy"


def _anthropic(rng: random.Random) -> tuple[str, str]:
    return "sk-ant-api03-" + _marked(rng, URLSAFE, 93) + "AA", "api03"


def _anthropic_oauth(rng: random.Random) -> tuple[str, str]:
    return "sk-ant-oat01-" + _marked(rng, URLSAFE, 93) + "AA", "oat01"


def _aws(rng: random.Random) -> tuple[str, str]:
    return "AKIA" + _marked(rng, BASE32, 16), "akia"


def _base62(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = BASE62[r] + out
    return out.rjust(width, "0")


def _github(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.7:
        body = _marked(rng, ALNUM, 30)
        return "ghp_" + body + _base62(zlib.crc32(body.encode()), 6), "ghp"
    return "github_pat_" + _rand(rng, ALNUM, 22) + "_" + _marked(rng, ALNUM, 59), "pat"


def _slack(rng: random.Random) -> tuple[str, str]:
    def ids() -> str:
        return str(rng.randint(1, 9)) + _rand(rng, DIGITS, rng.randint(9, 12))
    return f"xoxb-{ids()}-{ids()}-{_marked(rng, ALNUM, 24)}", "xoxb"


def _google(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.7:
        return "AIzaSy" + _marked(rng, URLSAFE, 33), "aizasy"
    return "AIza" + _marked(rng, URLSAFE, 35), "aiza"


def _stripe(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.7:
        return "sk_live_51" + _marked(rng, ALNUM, 97), "long"
    return "sk_live_" + _marked(rng, ALNUM, 24), "short"


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


_JWT_HEADERS = (
    ({"alg": "HS256", "typ": "JWT"}, 32), ({"typ": "JWT", "alg": "HS256"}, 32),
    ({"alg": "RS256", "typ": "JWT", "kid": "synthetic-key-1"}, 256),
    ({"alg": "ES256", "kid": "synthetic-ec"}, 64),
)


def _jwt(rng: random.Random) -> tuple[str, str]:
    header, sig_len = rng.choice(_JWT_HEADERS)
    iat = rng.randint(1_700_000_000, 1_760_000_000)
    payload: dict[str, Any] = {
        "sub": f"synthetic-user-{rng.randint(1, 99999)}",
        "iss": rng.choice(("https://auth.example.com", "https://login.example.org/t1")),
        "iat": iat, "exp": iat + rng.choice((900, 3600, 86400)),
    }
    if rng.random() < 0.5:
        payload["scope"] = rng.choice(("read", "read write", "admin"))
    parts = [json.dumps(p, separators=(",", ":")).encode() for p in (header, payload)]
    token = ".".join(_b64url(p) for p in parts) + "." + _b64url(rng.randbytes(sig_len))
    return token, str(header["alg"])


# label, DER-ish prefix (base64), random bytes after it, line width
_PEM_KINDS = (
    ("RSA PRIVATE KEY", "MIIEpAIBAAKCAQEA", 1180, 64),
    ("RSA PRIVATE KEY", "MIICXAIBAAKBgQC", 597, 64),
    ("PRIVATE KEY", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", 1190, 64),
    ("PRIVATE KEY", "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg", 100, 64),
    ("EC PRIVATE KEY", "MHcCAQEE", 113, 64),
    ("OPENSSH PRIVATE KEY", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ", 360, 70),
    ("ENCRYPTED PRIVATE KEY", "MIIFHDBOBgkqhkiG9w0BBQ0w", 1290, 64),
)


def _pem(rng: random.Random) -> tuple[str, str]:
    label, prefix, n, width = rng.choice(_PEM_KINDS)
    body = base64.b64encode(base64.b64decode(prefix + "=" * (-len(prefix) % 4)) + rng.randbytes(n))
    b64 = body.decode()
    lines = [b64[i:i + width] for i in range(0, len(b64), width)]
    pem = f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----"
    return pem, label.split()[0] if label != "PRIVATE KEY" else "PKCS8"


_GENERIC_SYMBOLS = "!*_-+=~"


def _generic(rng: random.Random) -> tuple[str, str]:
    """20-40 characters, every class, single symbols only inside: a password someone
    chose with a generator."""
    while True:
        n = rng.randint(20, 40)
        inner = _rand(rng, ALNUM + _GENERIC_SYMBOLS * 2, n - 2) if rng.random() < 0.5 else \
            _rand(rng, ALNUM, n - 2)
        value = rng.choice(ALNUM) + inner + rng.choice(ALNUM)
        if (any(c.islower() for c in value) and any(c.isupper() for c in value)
                and any(c.isdigit() for c in value) and shannon(value) >= 3.5
                and not re.search(r"[!*_\-+=~]{2}", value)):  # "***" reads as a mask
            return value, "kv"


def shannon(s: str) -> float:
    """Bits per character."""
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


VALUES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "EMAIL_ADDRESS": _email, "PHONE_NUMBER": _phone, "CREDIT_CARD": _card, "US_SSN": _ssn,
    "IBAN_CODE": _iban, "IP_ADDRESS": _ip, "OPENAI_API_KEY": _openai,
    "ANTHROPIC_API_KEY": _anthropic, "ANTHROPIC_OAUTH_TOKEN": _anthropic_oauth,
    "AWS_ACCESS_KEY": _aws, "GITHUB_TOKEN": _github, "SLACK_TOKEN": _slack,
    "GOOGLE_API_KEY": _google, "STRIPE_SECRET_KEY": _stripe, "PRIVATE_KEY": _pem,
    "JWT": _jwt, "GENERIC_SECRET": _generic,
}


# --- evasion ---------------------------------------------------------------------------


def _zero_width(rng: random.Random, s: str) -> str:
    chars = list(s)
    for _ in range(rng.randint(1, 3)):
        chars.insert(rng.randint(1, len(chars) - 1), rng.choice(ZERO_WIDTH))
    return "".join(chars)


def _fullwidth(rng: random.Random, s: str) -> str:
    def fw(t: str) -> str:
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t)
    if rng.random() < 0.5 and len(s) > 12:  # only the prefix a pattern would key on
        cut = rng.randint(3, 8)
        return fw(s[:cut]) + s[cut:]
    return fw(s)


def _homoglyph(rng: random.Random, s: str) -> str:
    """1-3 letters swapped for Cyrillic look-alikes, one of them among the first six
    characters where possible (that is where a pattern's prefix is)."""
    spots = [i for i, c in enumerate(s) if c in HOMOGLYPHS]
    if not spots:
        return s
    head = [i for i in spots if i < 6]
    chosen = {rng.choice(head or spots)}
    chosen.update(rng.sample(spots, min(len(spots), rng.randint(0, 2))))
    return "".join(HOMOGLYPHS[c] if i in chosen else c for i, c in enumerate(s))


def _encode(rng: random.Random, how: str, s: str) -> str:
    raw = s.encode()
    if how == "base64":
        return base64.b64encode(raw).decode()
    if how == "hex":
        h = raw.hex()
        return h.upper() if rng.random() < 0.25 else h
    if "\n" in s:  # a PEM in a form post: what urllib.parse.quote(safe="") makes
        return "".join(chr(b) if chr(b) in ALNUM + "-_.~" else f"%{b:02X}" for b in raw)
    return "".join(f"%{b:02X}" for b in raw)  # every byte: nothing left to match


def decode_variant(variant: str, labelled: str) -> str:
    """What a labelled span says once its evasion is undone (for checks and reports)."""
    if variant == "base64":
        return base64.b64decode(labelled).decode()
    if variant == "hex":
        return bytes.fromhex(labelled).decode()
    if variant == "percent":
        return unquote(labelled)
    text = "".join(c for c in labelled if c not in ZERO_WIDTH)
    text = unicodedata.normalize("NFKC", text)
    back = {v: k for k, v in HOMOGLYPHS.items()}
    return "".join(back.get(c, c) for c in text)


# --- templates -------------------------------------------------------------------------
#
# %%V%% is the value the sample is built around; %%E:TYPE%% a further labelled value of
# TYPE; any other %%name%% an unlabelled filler (timestamps, ids, hosts, key names).
# A template's escape says how values are written into it.

_SLOT = re.compile(r"%%([A-Za-z_][A-Za-z0-9_]*)(?::([A-Z_]+))?%%")


@dataclass(frozen=True)
class T:
    body: Any  # text, or a JSON document (dict/list) serialised at render time
    escape: str = "none"  # none | json | nl (newline as \n) | indent4 (YAML block)
    only: str | None = None  # the value form the template is for (IP v4/v6)
    tag: str | None = None  # replaces the value's form in `case`


def J(body: Any, only: str | None = None, tag: str | None = None) -> T:
    return T(body, "json", only, tag)


_ESCAPES: dict[str, Callable[[str], str]] = {
    "none": lambda s: s,
    "json": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "nl": lambda s: s.replace("\n", "\\n"),
    "indent4": lambda s: s.replace("\n", "\n    "),
}

_PUNCT_CHAT = (
    "My %%desc%% is %%V%%.", "the %%desc%% (%%V%%) is the one that fails",
    "key: %%V%%, region: eu-west-1", "Is '%%V%%' still valid?", "Try `%%V%%`!",
    "set it to \"%%V%%\"; then restart", "old=%%V%%; the new one is coming",
    "is it %%V%%?", "<%%V%%>", "[%%V%%] was rejected",
)
_PUNCT_JSON = (
    J({"message": "Use %%V%%, then retry.", "level": "warn"}),
    J({"notes": ["found (%%V%%) in history", "rotate it"]}),
)
_PUNCT_CODE = (
    "client = Client(\"%%V%%\")\n", "keys = ['%%V%%', other_key]\n",
    "auth = {token: `%%V%%`};\n", "# old value: %%V%%.\n",
)
_PUNCT_LOG = (
    "%%iso%% WARN credential (%%V%%) rejected", "%%iso%% INFO key=%%V%%; retrying in 2s",
    "[%%clock%%] using [%%V%%], attempt %%n%%", "%%iso%% ERROR bad credential: %%V%%.",
)

_KEY_TEMPLATES: dict[str, tuple[T | str, ...]] = {
    "chat": (
        "I'm getting 401s from the API. My %%desc%% is %%V%% and it worked yesterday",
        "can you add this to my .env?\n\n%%name%%=%%V%%\n\nthen rerun the tests",
        "Here's the request I'm sending:\n```bash\ncurl https://%%host%%%%path%% \\\n"
        "  -H \"Authorization: Bearer %%V%%\"\n```\nwhat's wrong with it",
        "use %%V%% as the %%desc%% for the staging deploy",
        "We leaked %%V%% in a public gist - how do I rotate it quickly",
        "| name | value |\n|------|-------|\n| %%name%% | %%V%% |\n\nfill the template with these",
        "```python\nclient = Client(api_key=\"%%V%%\")\n```\nthis throws on import, any idea?",
    ),
    "json_tool_result": (
        J({"tool": "read_file", "path": "%%file%%",
           "content": "# generated\n%%name%%=%%V%%\nLOG_LEVEL=info\n"}),
        J({"results": [{"name": "%%name%%", "value": "%%V%%", "updated": "%%iso%%"}],
           "total": 1}),
        J({"stdout": "export %%name%%=%%V%%\n", "stderr": "", "exit_code": 0}),
        J({"request": {"method": "POST", "url": "https://%%host%%%%path%%",
                       "headers": {"Authorization": "Bearer %%V%%", "X-Request-Id": "%%rid%%"}}}),
        J({"config": {"%%svc%%": {"api_key": "%%V%%", "timeout_s": 30}}, "source": "%%file%%"}),
        J({"type": "tool_result", "tool_use_id": "toolu_%%tid%%",
           "content": [{"type": "text", "text": "Found credentials in %%file%%: %%V%%"}]}),
    ),
    "code": (
        "%%name%%=%%V%%\nLOG_LEVEL=debug\nPORT=%%port%%\n",
        "# %%svc%% settings\n%%name%%=\"%%V%%\"\n",
        "import os\n\n%%name_lc%% = os.environ.get(\"%%name%%\", \"%%V%%\")\n",
        "const client = new Client({\n  apiKey: '%%V%%',\n  timeout: 30_000,\n});\n",
        "%%svc%%:\n  api_key: %%V%%\n  retries: 3\n",
        "[%%svc%%]\napi_key = \"%%V%%\"\nendpoint = \"https://%%host%%\"\n",
        "export %%name%%=%%V%%\npython -m app.worker\n",
        "services:\n  app:\n    environment:\n      - %%name%%=%%V%%\n      - LOG_LEVEL=info\n",
        "curl -sS https://%%host%%%%path%% -H \"Authorization: Bearer %%V%%\" -d @body.json\n",
        "# local dev only\n%%name%%=%%V%%\nGITHUB_TOKEN=%%E:GITHUB_TOKEN%%\n"
        "DATABASE_URL=postgres://app:%%E:GENERIC_SECRET%%@db.internal.example:5432/app\n",
    ),
    "log": (
        "%%iso%% INFO  [%%rid%%] POST https://%%host%%%%path%% auth=%%V%% status=401 dur=%%ms%%ms",
        "%%iso%% DEBUG urllib3: headers={'Authorization': 'Bearer %%V%%', "
        "'User-Agent': 'python-httpx/0.27.0'}",
        "[%%clock%%] WARN request_id=%%uuid%% falling back to %%name%%=%%V%% from environment",
        T("{\"level\":\"error\",\"ts\":%%epoch%%.%%ms%%,\"msg\":\"upstream rejected credentials\","
          "\"key\":\"%%V%%\",\"req\":\"%%rid%%\"}", "json"),
        "%%syslog%% %%hostname%% agent[%%pid%%]: token %%V%% rejected by %%host%% (401)",
        "%%iso%% ERROR client=%%E:IP_ADDRESS%% auth failed for key %%V%% after %%n%% retries",
    ),
}

_PEM_TEMPLATES: dict[str, tuple[T | str, ...]] = {
    "chat": (
        "my deploy key stopped working, here it is:\n\n%%V%%\n\ncan you tell if it's the "
        "right format?",
        "```\n%%V%%\n```\nconvert this to PKCS#8 please",
        "Here's the key file: %%V%% - does it need a passphrase?",
    ),
    "json_tool_result": (
        J({"tool": "read_file", "path": "~/.ssh/id_rsa", "content": "%%V%%\n"}),
        J({"secrets": [{"name": "tls-key", "data": "%%V%%"}], "namespace": "prod"}),
        J({"stdout": "%%V%%\n", "exit_code": 0, "command": "cat deploy_key.pem"}),
    ),
    "code": (
        "PRIVATE_KEY = \"\"\"%%V%%\n\"\"\"\n",
        T("tls:\n  key: |\n    %%V%%\n  cert_file: /etc/ssl/app.crt\n", "indent4"),
        T("PRIVATE_KEY=\"%%V%%\"\nPORT=%%port%%\n", "nl"),
        T("const signingKey = \"%%V%%\";\nexport default signingKey;\n", "json"),
        "$ cat id_ed25519\n%%V%%\n$ chmod 600 id_ed25519\n",
    ),
    "log": (
        "%%iso%% DEBUG loaded signing key: %%V%%\n%%iso%% INFO server listening",
        T("{\"level\":\"debug\",\"msg\":\"config loaded\",\"tls_key\":\"%%V%%\","
          "\"ts\":\"%%iso%%\"}", "json"),
        T("%%iso%% WARN env PRIVATE_KEY='%%V%%' is world-readable", "nl"),
    ),
}
_PEM_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("the key is \"%%V%%\".", "(%%V%%) - that's the whole file"),
    "json_tool_result": (J({"message": "Key found: %%V%%. Rotate it.", "level": "warn"}),),
    "code": ("keys = ['''%%V%%''', other]\n",),
    "log": (T("%%iso%% WARN key=(%%V%%); rotate", "nl"),),
}

_GENERIC_TEMPLATES: dict[str, tuple[T | str, ...]] = {
    "chat": (
        "set %%k%%=%%V%% in the CI variables and rerun",
        "```\n%%K%%=%%V%%\n```\nwhy isn't this picked up by the app",
        "config has %%k%%: %%V%% - is that safe to commit?",
        T("the staging db %%k%% is %%V%% if you need it", tag="prose"),
        T("connect with postgres://app:%%V%%@db.internal.example:5432/app and run the "
          "migration", tag="url"),
    ),
    "json_tool_result": (
        J({"env": {"%%K%%": "%%V%%", "NODE_ENV": "production"}}),
        J({"database": {"host": "db.internal.example", "user": "app", "%%k%%": "%%V%%"}}),
        J({"stdout": "%%k%%=%%V%%\n", "exit_code": 0}),
        J({"path": "%%file%%", "content": "[client]\n%%k%% = %%V%%\n"}),
    ),
    "code": (
        "%%K%%=%%V%%\n",
        "%%svc%%:\n  %%k%%: %%V%%\n  pool_size: 5\n",
        "%%k%% = \"%%V%%\"\n",
        "const %%k%% = '%%V%%';\n",
        "settings.%%k%% = \"%%V%%\"\n",
        T("DATABASE_URL=postgres://app:%%V%%@db.internal.example:5432/app\n", tag="url"),
    ),
    "log": (
        "%%iso%% DEBUG login attempt user=app %%k%%=%%V%% ok",
        "%%iso%% INFO  GET %%path%%?%%k%%=%%V%%&page=2 200",
        "[%%clock%%] connecting with %%k%%: %%V%%",
    ),
}
_GENERIC_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("use %%k%%=\"%%V%%\", not the old one", T("the %%k%% is `%%V%%`.", tag="prose")),
    "json_tool_result": (J({"message": "Set %%k%%=%%V%%, then retry.", "level": "warn"}),),
    "code": ("%%k%% = '%%V%%';\n", "login(%%k%%=\"%%V%%\")\n"),
    "log": ("%%iso%% WARN %%k%%=\"%%V%%\"; rotating", "[%%clock%%] %%k%%='%%V%%', attempt 2"),
}

_ENCODED_TEMPLATES: dict[str, tuple[T | str, ...]] = {
    "chat": (
        "here's the %%desc%% %%enc%%-encoded so the filter doesn't eat it: %%V%%",
        "decode this and use it as the key: %%V%%",
        "(%%enc%%) %%V%%",
    ),
    "json_tool_result": (
        J({"encoding": "%%enc%%", "data": "%%V%%"}),
        J({"stdout": "%%V%%\n", "command": "%%enccmd%% key.txt", "exit_code": 0}),
    ),
    "code": (
        "%%name%%_%%ENC%%=%%V%%\n",
        "key = %%decode%%(\"%%V%%\")\n",
        "data:\n  key: %%V%%\n",
    ),
    "log": (
        "%%iso%% DEBUG payload=%%V%% enc=%%enc%%",
        "%%iso%% INFO  GET /callback?key=%%V%%&state=%%hex8%% 302",
    ),
}

_EMAIL: dict[str, tuple[T | str, ...]] = {
    "chat": ("you can reach me at %%V%% if the build breaks again",
             "cc %%V%% on the incident ticket please",
             "My login is %%V%% but the reset link never arrives",
             "add %%V%% and %%E:EMAIL_ADDRESS%% to the on-call rota"),
    "json_tool_result": (
        J({"user": {"id": "%%uuid%%", "email": "%%V%%", "verified": True}}),
        J({"from": "%%V%%", "subject": "Invoice %%n%%", "received": "%%iso%%"}),
        J({"members": [{"email": "%%V%%", "role": "admin"},
                       {"email": "%%E:EMAIL_ADDRESS%%", "role": "viewer"}]}),
        J({"text": "Contact: %%V%%"}),
    ),
    "code": ("ADMIN_EMAIL = \"%%V%%\"\n", "[user]\n\tname = dev\n\temail = %%V%%\n",
             "git config user.email \"%%V%%\"\n", "MAIL_FROM=%%V%%\n",
             "<a href=\"mailto:%%V%%\">contact us</a>\n"),
    "log": ("%%iso%% INFO  [%%rid%%] password reset sent to=%%V%% status=queued",
            "%%iso%% WARN login failed for user %%V%% from %%E:IP_ADDRESS%%",
            "%%syslog%% mail postfix/smtp[%%pid%%]: %%QID%%: to=<%%V%%>, relay=mx.example.net"
            "[%%E:IP_ADDRESS%%]:25, status=sent"),
}
_EMAIL_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("email me at %%V%%.", "the owner (%%V%%) is away", "write to <%%V%%>",
             "%%V%%, %%E:EMAIL_ADDRESS%%; both need access", "is it %%V%%?"),
}
_PHONE: dict[str, tuple[T | str, ...]] = {
    "chat": ("call me on %%V%% after 5pm", "my number is %%V%% if the pager fails",
             "the customer's phone is %%V%%, they want a callback"),
    "json_tool_result": (J({"contact": {"phone": "%%V%%", "preferred": "sms"}}),
                         J({"to": "%%V%%", "body": "Your order is ready", "status": "queued"})),
    "code": ("SUPPORT_PHONE = \"%%V%%\"\n", "support:\n  phone: \"%%V%%\"\n"),
    "log": ("%%iso%% INFO  sms sent to=%%V%% sid=%%rid%%",
            "%%iso%% WARN callback number %%V%% unreachable"),
}
_PHONE_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("call %%V%%.", "the desk line (%%V%%) is dead", "%%V%%, ask for billing",
             "is it %%V%%?"),
}
_CARD: dict[str, tuple[T | str, ...]] = {
    "chat": ("please charge %%V%% exp 09/28 for the renewal",
             "card number %%V%% gets declined, what's wrong with it",
             "my card %%V%% keeps getting declined"),
    "json_tool_result": (
        J({"payment_method": {"card": {"number": "%%V%%", "exp_month": 9, "exp_year": 2028}}}),
        J({"charge": {"id": "ch_%%tid%%", "source": "%%V%%", "amount": 4200}}),
    ),
    "code": ("TEST_CARD = \"%%V%%\"\n", "card_number: %%V%%\n"),
    "log": ("%%iso%% ERROR payment declined card=%%V%% amount=%%amount%% currency=EUR",
            "[%%clock%%] tokenizing pan %%V%%"),
}
_CARD_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("my card is %%V%%.", "card (%%V%%) expired", "%%V%%, exp 09/28", "charge %%V%%?"),
}
_SSN: dict[str, tuple[T | str, ...]] = {
    "chat": ("my SSN is %%V%% for the form", "social security number: %%V%%",
             "the applicant's ssn %%V%% doesn't validate"),
    "json_tool_result": (J({"applicant": {"ssn": "%%V%%", "state": "CA"}}),
                         J({"fields": [{"label": "SSN", "value": "%%V%%"}]})),
    "code": ("ssn = \"%%V%%\"\n", "SSN=%%V%%\n"),
    "log": ("%%iso%% INFO  kyc check ssn=%%V%% result=match",
            "[%%clock%%] verify_identity(ssn='%%V%%') -> ok"),
}
_SSN_PUNCT: dict[str, tuple[T | str, ...]] = {  # a bare SSN needs its label nearby
    "chat": ("my SSN is %%V%%.", "SSN (%%V%%) on file", "SSN %%V%%, DOB on file",
             "is SSN %%V%%?"),
    "json_tool_result": (J({"note": "SSN %%V%%, verified by phone"}),),
    "code": ("ssn = '%%V%%';  // fixture\n", "check_ssn(\"%%V%%\")\n"),
    "log": ("%%iso%% INFO  kyc ssn=%%V%%; result=match", "[%%clock%%] ssn (%%V%%) flagged"),
}
_IBAN: dict[str, tuple[T | str, ...]] = {
    "chat": ("please wire the refund to %%V%% (BIC %%bic%%)", "my IBAN is %%V%%",
             "send it to IBAN %%V%% thanks"),
    "json_tool_result": (J({"beneficiary": {"iban": "%%V%%", "bic": "%%bic%%"}}),
                         J({"payout": {"account": "%%V%%", "amount": "%%amount%%"}})),
    "code": ("IBAN = \"%%V%%\"\n", "iban: %%V%%\n"),
    "log": ("%%iso%% INFO  sepa transfer to %%V%% amount=%%amount%% EUR ref=%%rid%%",),
}
_IBAN_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("my IBAN is %%V%%.", "account (%%V%%) closed", "IBAN %%V%%, BIC %%bic%%",
             "is it %%V%%?"),
}
_IP: dict[str, tuple[T | str, ...]] = {
    "chat": ("the server at %%V%% is refusing connections on port 22",
             "can you whitelist %%V%% in the security group?", "my home IP is %%V%%"),
    "json_tool_result": (J({"remote_addr": "%%V%%", "method": "GET", "path": "%%path%%"}),
                         J({"instances": [{"id": "i-%%hex8%%", "private_ip": "%%V%%",
                                           "state": "running"}]})),
    "code": ("ALLOWED_HOSTS = [\"%%V%%\", \"localhost\"]\n", "bind_address: %%V%%\n",
             T("proxy_pass http://%%V%%:8080;\n", only="v4"),
             T("proxy_pass http://[%%V%%]:8080;\n", only="v6")),
    "log": ("%%V%% - - [%%clf%%] \"GET %%path%% HTTP/1.1\" 200 %%n%% \"-\" \"curl/8.4.0\"",
            "%%iso%% WARN rate limited client=%%V%% path=%%path%%",
            "%%syslog%% %%hostname%% sshd[%%pid%%]: Failed password for invalid user admin "
            "from %%V%% port %%port%% ssh2"),
}
_IP_PUNCT: dict[str, tuple[T | str, ...]] = {
    "chat": ("blocked %%V%%.", "the box (%%V%%) is down", "%%V%%, and the other one",
             "can you ping %%V%%?"),
}

# no key=/token: before a PII value: that would make it a secret's value
_PII_PUNCT_SHARED: dict[str, tuple[T | str, ...]] = {
    "json_tool_result": (J({"message": "Found %%V%%, then stopped.", "level": "warn"}),
                         J({"notes": ["seen (%%V%%) in history", "check it"]})),
    "code": ("lookup(\"%%V%%\")\n", "contacts = ['%%V%%', other]\n", "row = {value: `%%V%%`};\n",
             "# was: %%V%%.\n"),
    "log": ("%%iso%% WARN record (%%V%%) rejected", "%%iso%% INFO lookup=%%V%%; cached",
            "[%%clock%%] matched [%%V%%], attempt %%n%%", "%%iso%% ERROR no record for %%V%%."),
}
# family -> (plain templates, punct templates)
_FAMILIES: dict[str, tuple[dict[str, tuple[T | str, ...]], dict[str, tuple[T | str, ...]]]] = {
    "key": (_KEY_TEMPLATES, {"chat": _PUNCT_CHAT, "json_tool_result": _PUNCT_JSON,
                             "code": _PUNCT_CODE, "log": _PUNCT_LOG}),
    "pem": (_PEM_TEMPLATES, _PEM_PUNCT),
    "generic": (_GENERIC_TEMPLATES, _GENERIC_PUNCT),
    "email": (_EMAIL, {**_PII_PUNCT_SHARED, **_EMAIL_PUNCT}),
    "phone": (_PHONE, {**_PII_PUNCT_SHARED, **_PHONE_PUNCT}),
    "card": (_CARD, {**_PII_PUNCT_SHARED, **_CARD_PUNCT}),
    "ssn": (_SSN, _SSN_PUNCT),
    "iban": (_IBAN, {**_PII_PUNCT_SHARED, **_IBAN_PUNCT}),
    "ip": (_IP, {**_PII_PUNCT_SHARED, **_IP_PUNCT}),
}
FAMILY = {
    "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card",
    "US_SSN": "ssn", "IBAN_CODE": "iban", "IP_ADDRESS": "ip", "PRIVATE_KEY": "pem",
    "GENERIC_SECRET": "generic", **{t: "key" for t in SECRET_TYPES[:8]}, "JWT": "key",
}
PUNCTUATION = ".,;:!?)]}>'\"`"

# type -> (variable names, descriptions, hosts, paths)
_KEY_INFO: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "OPENAI_API_KEY": (("OPENAI_API_KEY", "OPENAI_KEY"), ("OpenAI key", "OpenAI API key"),
                       ("api.openai.com",), ("/v1/chat/completions", "/v1/responses")),
    "ANTHROPIC_API_KEY": (("ANTHROPIC_API_KEY", "CLAUDE_API_KEY"), ("Anthropic key",),
                          ("api.anthropic.com",), ("/v1/messages",)),
    "ANTHROPIC_OAUTH_TOKEN": (("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"),
                              ("Claude OAuth token",), ("api.anthropic.com",), ("/v1/messages",)),
    "AWS_ACCESS_KEY": (("AWS_ACCESS_KEY_ID",), ("AWS access key",),
                       ("sts.amazonaws.com", "s3.amazonaws.com"), ("/",)),
    "GITHUB_TOKEN": (("GITHUB_TOKEN", "GH_TOKEN"), ("GitHub token", "PAT"), ("api.github.com",),
                     ("/repos/acme/app/pulls", "/user")),
    "SLACK_TOKEN": (("SLACK_BOT_TOKEN",), ("Slack bot token",), ("slack.com",),
                    ("/api/chat.postMessage",)),
    "GOOGLE_API_KEY": (("GOOGLE_API_KEY", "GEMINI_API_KEY", "MAPS_API_KEY"), ("Google API key",),
                       ("generativelanguage.googleapis.com", "maps.googleapis.com"),
                       ("/v1beta/models", "/maps/api/geocode/json")),
    "STRIPE_SECRET_KEY": (("STRIPE_SECRET_KEY", "STRIPE_API_KEY"), ("Stripe secret key",),
                          ("api.stripe.com",), ("/v1/charges", "/v1/customers")),
    "JWT": (("AUTH_TOKEN", "SESSION_TOKEN", "ACCESS_TOKEN"), ("session token", "JWT"),
            ("api.example.com",), ("/v2/orders", "/me")),
    "PRIVATE_KEY": (("TLS_KEY", "SSH_PRIVATE_KEY", "SIGNING_KEY"), ("private key", "deploy key"),
                    ("git.example.com",), ("/",)),
    "GENERIC_SECRET": (("DB_PASSWORD", "APP_SECRET"), ("password", "secret"),
                       ("api.example.com",), ("/login",)),
}
_GENERIC_KEYS = ("password", "db_password", "passwd", "secret", "client_secret", "app_secret",
                 "token", "auth_token", "access_token", "api_key", "secret_key",
                 "webhook_secret", "pwd")
_ENC_NAMES = {"base64": ("base64", "B64", "base64 -w0 <", "base64.b64decode"),
              "hex": ("hex", "HEX", "xxd -p", "bytes.fromhex"),
              "percent": ("url", "URLENC", "jq -sRr @uri <", "urllib.parse.unquote")}


# --- hard negatives --------------------------------------------------------------------


def _iso(rng: random.Random) -> str:
    return (f"{rng.randint(2023, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
            f"{rng.randint(0, 999):03d}Z")


def _semver(rng: random.Random) -> str:
    return f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 40)}"


def _b64_harmless(rng: random.Random) -> str:
    text = rng.choice((
        "Hello, world!", "The quick brown fox jumps over the lazy dog",
        "user:preferences:theme=dark", "{\"page\":%d,\"per_page\":50}" % rng.randint(2, 90),
        "lorem ipsum dolor sit amet, consectetur adipiscing elit",
        "cache-key:v2:/api/products?sort=price", "session started at 09:00",
    ))
    return base64.b64encode(text.encode()).decode()


def _luhn_fail(rng: random.Random) -> str:
    while True:
        digits = rng.choice("3456") + _rand(rng, DIGITS, 15)
        if not luhn_ok(digits):
            break
    sep = rng.choice((" ", "-", ""))
    return sep.join(digits[i:i + 4] for i in range(0, 16, 4))


def _tracking(rng: random.Random) -> str:
    return rng.choice((
        "1Z" + _rand(rng, string.ascii_uppercase + DIGITS, 6) + _rand(rng, DIGITS, 10),
        "9400 1" + " ".join(_rand(rng, DIGITS, n) for n in (3, 4, 4, 4, 2)),  # USPS, 22 digits
        _rand(rng, DIGITS, 12),
    ))


def _version(rng: random.Random) -> str:
    return rng.choice((
        "v" + _semver(rng), _semver(rng) + f"-rc.{rng.randint(1, 5)}+build.{rng.randint(1, 99)}",
        f"10.0.{rng.randint(17000, 22631)}.{rng.randint(1000, 4000)}", "Python 3.12." + str(
            rng.randint(0, 9)), f"node v{rng.randint(16, 22)}.{rng.randint(0, 20)}.0",
        _semver(rng),
    ))


def _timestamp(rng: random.Random) -> str:
    return rng.choice((
        _iso(rng), f"Tue, {rng.randint(1, 28)} May 2024 {rng.randint(0, 23):02d}:15:07 +0000",
        str(rng.randint(1_600_000_000, 1_760_000_000)),
        str(rng.randint(1_600_000_000_000, 1_760_000_000_000)),
        f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 235959):06d}",
    ))


def _product(rng: random.Random) -> str:
    isbn12 = "978" + _rand(rng, DIGITS, 9)
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(isbn12)) % 10) % 10
    return rng.choice((
        f"{rng.choice('01')}{_rand(rng, DIGITS, 2)}-{_rand(rng, DIGITS, 3)}-"
        f"{_rand(rng, DIGITS, 4)}",  # no NANP area code starts with 0 or 1
        f"SKU-{_rand(rng, DIGITS, 5)}-{_rand(rng, DIGITS, 2)}",
        f"{isbn12[:3]}-{isbn12[3]}-{isbn12[4:8]}-{isbn12[8:]}-{check}",
        f"PN {_rand(rng, DIGITS, 4)}-{_rand(rng, DIGITS, 3)}-{_rand(rng, DIGITS, 2)}",
    ))


def _ssn_invalid(rng: random.Random) -> str:
    a = f"{rng.randint(1, 899):03d}"
    g = f"{rng.randint(1, 99):02d}"
    s = f"{rng.randint(1, 9999):04d}"
    a, g, s = rng.choice((
        ("000", g, s), ("666", g, s), (f"9{rng.randint(0, 99):02d}", g, s), (a, "00", s),
        (a, g, "0000")))
    return f"{a}-{g}-{s}"


def _iban_invalid(rng: random.Random) -> str:
    """A well-formed IBAN whose check digits are wrong."""
    value, _ = _iban(rng)
    compact = value.replace(" ", "")
    check = rng.choice([c for c in range(2, 99) if c != int(compact[2:4])])
    bad = f"{compact[:2]}{check:02d}{compact[4:]}"
    assert not iban_ok(bad)
    return _group4(bad) if " " in value else bad


def _ip_lookalike(rng: random.Random) -> tuple[str, str]:
    return rng.choice((
        (f"1.3.6.1.4.1.{rng.randint(100, 60000)}.{rng.randint(1, 20)}", "oid"),
        (":".join(_rand(rng, HEX, 2) for _ in range(6)), "mac_address"),
        # an octet over 255; under ten digits, so no phone number either
        (f"{rng.randint(256, 999)}.{rng.randint(0, 99)}.{rng.randint(0, 9)}."
         f"{rng.randint(0, 99)}", "bad_addr"),
        (f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}."
         f"{rng.randint(0, 99)}", "build"),
        (f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}", "time"),
        ("std::chrono::seconds", "type"),
    ))


_KEY_PLACEHOLDERS = (
    "sk-placeholder", "sk-...", "sk-" + "x" * 48, "sk-proj-...", "sk-ant-api03-...",
    "<your-api-key>", "YOUR_API_KEY", "your-openai-key-here", "<OPENAI_API_KEY>",
    "AKIAXXXXXXXXXXXXXXXX", "ghp_" + "x" * 36, "xoxb-your-bot-token", "sk_live_...",
    "AIza...", "sk-ant-oat01-REPLACE_ME", "eyJ...",
)
_PASSWORD_PLACEHOLDERS = (
    "changeme", "********", "<password>", "${DB_PASSWORD}", "REDACTED", "[REDACTED]",
    "your-password-here", "{{ .Values.db.password }}", "example", "xxxxxxxx", "null",
    "secret", "<redacted>", "%(DB_PASSWORD)s",
)


def _hex_colour(rng: random.Random) -> str:
    while True:  # with a letter: all digits, it is a phone-like number, not a colour
        colour = _rand(rng, HEX, rng.choice((3, 6, 8)))
        if not colour.isdigit():
            return "#" + (colour.upper() if rng.random() < 0.3 else colour)


def _masked_key(rng: random.Random) -> str:
    tail = _rand(rng, ALNUM, 4)
    return rng.choice((f"sk-proj-{'*' * 20}{tail}", f"sk-...{tail}", "AKIA" + "*" * 12,
                       f"ghp_{'*' * 32}{tail}", f"sk_live_{'*' * 20}{tail}",
                       f"sk-ant-api03-...{tail}"))


@dataclass(frozen=True)
class _Neg:
    kind: str
    value: Callable[[random.Random], tuple[str, str]]  # -> (value, field name)
    chat: tuple[str, ...]
    own: dict[str, tuple[T | str, ...]] = field(default_factory=dict)  # context -> templates


def _f(gen: Callable[[random.Random], str], *fields: str) -> Callable[
        [random.Random], tuple[str, str]]:
    return lambda rng: (gen(rng), rng.choice(fields))


_ENV_VARS = tuple(n for names, *_ in _KEY_INFO.values() for n in names)
_NEGATIVES: tuple[_Neg, ...] = (
    _Neg("git_sha", _f(lambda r: _hex_id(r, 40), "commit", "sha", "head"),
         ("commit %%N%% broke the build, can you look?", "git checkout %%N%% && make test fails",
          "please cherry-pick %%N%% onto release")),
    _Neg("short_sha", _f(lambda r: _hex_id(r, r.randint(7, 10)), "rev"),
         ("fixed in %%N%%, see the changelog",)),
    _Neg("uuid", _f(lambda r: str(uuid.UUID(bytes=r.randbytes(16), version=4)),
                    "request_id", "trace_id", "id"),
         ("request %%N%% timed out again", "trace id %%N%% shows the retry loop")),
    _Neg("sha256", _f(lambda r: r.choice(("sha256:", "")) + _rand(r, HEX, 64), "digest",
                      "checksum"),
         ("the image digest is %%N%%", "expected checksum %%N%% but got something else")),
    _Neg("sri_hash", _f(lambda r: "sha512-" + base64.b64encode(r.randbytes(64)).decode(),
                        "integrity"),
         ("package-lock has integrity %%N%% for lodash",)),
    _Neg("luhn_fail_number", _f(_luhn_fail, "order_number", "invoice_no", "reference"),
         ("my order %%N%% never arrived", "invoice %%N%% is overdue")),
    _Neg("tracking_number", _f(_tracking, "tracking_number"),
         ("tracking number %%N%% shows delivered",)),
    _Neg("version", _f(_version, "version", "app_version"),
         ("upgrading to %%N%% broke imports", "we pin %%N%% in CI")),
    _Neg("timestamp", _f(_timestamp, "created_at", "ts", "timestamp"),
         ("it started failing at %%N%%",)),
    _Neg("key_placeholder", _f(lambda r: r.choice(_KEY_PLACEHOLDERS), "api_key",
                               "OPENAI_API_KEY", "token"),
         ("set api_key to %%N%% in the example config", "the docs say to use %%N%% as the key")),
    _Neg("env_reference", lambda r: (r.choice(_ENV_VARS), "api_key"),
         ("read the key from $%%N%% instead of hardcoding it",), {
             "json_tool_result": (J({"env": {"%%N%%": "<set in CI>"}}),),
             "code": ("api_key = os.environ[\"%%N%%\"]\n", "const key = process.env.%%N%%;\n",
                      "%%N%%=${%%N%%}\n",
                      "headers = {\"Authorization\": f\"Bearer {os.environ['%%N%%']}\"}\n"),
             "log": ("%%iso%% WARN %%N%% is not set; falling back to anonymous access",),
         }),
    _Neg("password_placeholder", _f(lambda r: r.choice(_PASSWORD_PLACEHOLDERS), "password",
                                    "db_password", "secret", "token", "client_secret"),
         ("the sample config uses %%f%%=%%N%%, replace it before deploying",)),
    _Neg("harmless_base64", _f(_b64_harmless, "cursor", "data", "next_cursor", "payload"),
         ("the API returned cursor %%N%%, how do I page?",)),
    _Neg("json_cursor", _f(lambda r: _b64url(json.dumps(
        {"offset": r.randint(10, 9000), "sort": "created"}).encode()), "cursor", "after"),
         ("pass after=%%N%% to get the next page",)),
    _Neg("hex_colour", _f(_hex_colour, "color", "background"),
         ("make the header %%N%% and the links darker",)),
    _Neg("product_code", _f(_product, "sku", "part_number", "isbn"),
         ("part %%N%% is out of stock", "ordered item %%N%% twice")),
    _Neg("ssn_invalid", _f(_ssn_invalid, "ssn"),
         ("the test fixture uses SSN %%N%%, which can't be a real number",)),
    _Neg("iban_invalid", _f(_iban_invalid, "iban"),
         ("is %%N%% a valid IBAN? the bank rejected it",)),
    _Neg("ip_lookalike", _ip_lookalike, ("what does %%N%% mean in this output?",)),
    _Neg("email_lookalike", _f(lambda r: r.choice((
        f"react@{r.randint(16, 19)}.{r.randint(0, 3)}.0", f"lodash@4.17.{r.randint(10, 21)}",
        "@types/node", "icon@2x.png", "@pytest.fixture", "logo@3x.webp", "@babel/core")),
        "dependency", "asset"),
         ("installing %%N%% fails with a peer dependency error",)),
    _Neg("stripe_publishable", _f(lambda r: "pk_live_" + _marked(r, ALNUM, 24), "publishable_key"),
         ("the frontend uses %%N%% (publishable, safe to ship)",)),
    _Neg("aws_arn", _f(lambda r: f"arn:aws:iam::{_rand(r, DIGITS, 12)}:role/"
                                 f"{r.choice(('deploy', 'ci', 'readonly'))}", "role_arn"),
         ("assume %%N%% before running terraform",)),
    _Neg("hex_address", _f(lambda r: "0x7ff" + _rand(r, HEX, 9), "addr"),
         ("segfault at %%N%% in libssl",)),
    _Neg("prefix_lookalike", _f(lambda r: r.choice((
        f"scikit-learn=={r.randint(0, 1)}.{r.randint(0, 5)}.2", f"task-{r.randint(100, 9999)}",
        "risk-assessment-2024-q3", "desk-booking-service", "AKIA prefix",
        f"mask-rcnn-{r.randint(1, 9)}")), "package", "ticket"),
         ("see %%N%% for details",)),
    _Neg("masked_key", _f(_masked_key, "api_key", "key_hint"),
         ("the dashboard shows %%N%% for the key we revoked",)),
    _Neg("clean", lambda r: ("", "status"),
         ("Refactor this function to use async/await and add type hints.",
          "Why does `pytest -k slow` skip everything? The marker is registered.",
          "Summarise the last three incidents in two sentences each."), {
             "json_tool_result": (J({"status": "ok", "items": [], "next": None}),
                                  J({"exit_code": 1, "stderr": "ModuleNotFoundError: No module "
                                     "named 'yaml'\n"})),
             "code": ("def add(a: int, b: int) -> int:\n    return a + b\n",
                      "FROM python:3.12-slim\nRUN pip install --no-cache-dir -r "
                      "requirements.txt\n"),
             "log": ("%%iso%% INFO  [%%rid%%] GET %%path%% 200 dur=%%ms%%ms",),
         }),
)
_NEG_DEFAULT: dict[str, tuple[T | str, ...]] = {
    "json_tool_result": (J({"%%f%%": "%%N%%", "status": "ok"}),
                         J({"data": {"%%f%%": "%%N%%"}, "request_id": "%%rid%%"}),
                         J({"id": "%%uuid%%", "%%f%%": "%%N%%", "updated_at": "%%iso%%"})),
    "code": ("%%F%%=%%N%%\n", "%%f%% = \"%%N%%\"\n", "%%f%%: %%N%%\n"),
    "log": ("%%iso%% INFO  [%%rid%%] %%f%%=%%N%%", "[%%clock%%] %%level%% %%f%%: %%N%%",
            T("{\"ts\":\"%%iso%%\",\"level\":\"info\",\"%%f%%\":\"%%N%%\"}", "json")),
}


# --- rendering -------------------------------------------------------------------------


class _Render:
    """One sample: fills a template's slots, escapes values, records labelled spans."""

    def __init__(self, rng: random.Random, entity: str | None, value: str, variant: str,
                 field_name: str = "") -> None:
        self.rng, self.entity, self.value, self.variant = rng, entity, value, variant
        self.field = field_name
        self.cache: dict[str, str] = {}

    def run(self, template: T | str) -> tuple[str, list[Span]]:
        t = template if isinstance(template, T) else T(template)
        src = t.body if isinstance(t.body, str) else json.dumps(
            t.body, ensure_ascii=False, indent=self.rng.choice((None, 2)))
        escape = _ESCAPES[t.escape]
        out: list[str] = []
        spans: list[Span] = []
        pos = length = 0
        for m in _SLOT.finditer(src):
            out.append(src[pos:m.start()])
            length += m.start() - pos
            pos = m.end()
            name, arg = m.group(1), m.group(2)
            if name == "V":
                raw, entity = self.value, self.entity
            elif name == "E":
                raw, entity = VALUES[arg](self.rng)[0], arg
            else:
                raw, entity = self.filler(name), None
            text = escape(raw)
            if entity:
                spans.append({"entity": entity, "start": length, "end": length + len(text)})
            out.append(text)
            length += len(text)
        out.append(src[pos:])
        return "".join(out), spans

    def filler(self, name: str) -> str:
        if name not in self.cache:
            self.cache[name] = self._make(name)
        return self.cache[name]

    def _make(self, name: str) -> str:
        rng, e = self.rng, self.entity or "GENERIC_SECRET"
        names, descs, hosts, paths = _KEY_INFO.get(e, _KEY_INFO["GENERIC_SECRET"])
        enc = _ENC_NAMES.get(self.variant, _ENC_NAMES["base64"])
        match name:
            case "iso":
                return _iso(rng)
            case "clock":
                return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
            case "syslog":
                return f"May {rng.randint(10, 28)} {self.filler('clock')}"
            case "clf":
                return f"{rng.randint(10, 28)}/May/2024:{self.filler('clock')} +0000"
            case "epoch":
                return str(rng.randint(1_700_000_000, 1_760_000_000))
            case "rid":
                return "req_" + _hex_id(rng, 16)
            case "tid":
                return _hex_id(rng, 24)
            case "hex8":
                return _hex_id(rng, 8)
            case "QID":
                return _hex_id(rng, 10).upper()
            case "uuid":
                return str(uuid.UUID(bytes=rng.randbytes(16), version=4))
            case "ms" | "n":
                return str(rng.randint(3, 1999))
            case "pid":
                return str(rng.randint(100, 65000))
            case "port":
                return rng.choice(("22", "443", "5432", "6379", "8080", "8443"))
            case "amount":
                return f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d}"
            case "level":
                return rng.choice(("INFO", "WARN", "DEBUG"))
            case "hostname":
                return rng.choice(("web-01", "worker-3", "agent-7f9c", "build-runner"))
            case "host":
                return rng.choice(hosts)
            case "path":
                return rng.choice(paths)
            case "file":
                return rng.choice((".env", "config/settings.yaml", "docker-compose.yml",
                                   "src/config.ts", ".env.local"))
            case "svc":
                return rng.choice(("payments", "search", "llm", "notifier", "billing"))
            case "name":
                return rng.choice(names)
            case "name_lc":
                return self.filler("name").lower()
            case "desc":
                return rng.choice(descs)
            case "bic":
                return _rand(rng, string.ascii_uppercase, 4) + rng.choice(("DE", "FR", "GB")) + \
                    _rand(rng, string.ascii_uppercase + DIGITS, 2)
            case "k":
                return self._evade(rng.choice(_GENERIC_KEYS))
            case "K":
                return self._evade(rng.choice(_GENERIC_KEYS).upper())
            case "enc" | "ENC" | "enccmd" | "decode":
                return enc[("enc", "ENC", "enccmd", "decode").index(name)]
            case "f":
                return self.field
            case "F":
                return self.field.upper()
        raise KeyError(f"unknown template slot %%{name}%%")

    def _evade(self, keyword: str) -> str:
        """A generic secret's keyword carries the same evasion as its value."""
        if self.entity == "GENERIC_SECRET" and self.variant in _TRANSFORMS:
            return _TRANSFORMS[self.variant](self.rng, keyword)
        return keyword


_TRANSFORMS: dict[str, Callable[[random.Random, str], str]] = {
    "zero_width": _zero_width, "fullwidth": _fullwidth, "homoglyph": _homoglyph,
}


def _positive(rng: random.Random, entity: str, context: str, variant: str) -> Sample:
    raw, form = VALUES[entity](rng)
    family = FAMILY[entity]
    plain, punct = _FAMILIES[family]
    if variant in ENCODINGS:
        value = _encode(rng, variant, raw)
        pool = plain[context] if family == "generic" else _ENCODED_TEMPLATES[context]
    else:
        value = _TRANSFORMS[variant](rng, raw) if variant in _TRANSFORMS else raw
        pool = punct[context] if variant == "punct" else plain[context]
    choices = [t for t in pool if not (isinstance(t, T) and t.only not in (None, form))]
    template = rng.choice(choices)
    text, spans = _Render(rng, entity, value, variant).run(template)
    tag = template.tag if isinstance(template, T) and template.tag else form
    return {"text": text, "spans": spans, "context": context,
            "case": f"{entity}:{tag}/{variant}"}


def _negative(rng: random.Random, neg: _Neg, context: str) -> Sample:
    value, field_name = neg.value(rng)
    pool = neg.own.get(context) or (neg.chat if context == "chat" else _NEG_DEFAULT[context])
    text, _ = _Render(rng, None, "", "plain", field_name).run(
        _substitute_n(rng.choice(pool), value))
    return {"text": text, "spans": [], "context": context, "case": f"negative/{neg.kind}"}


def _substitute_n(template: T | str, value: str) -> T:
    """Put a negative's value in place of %%N%% before rendering: it is no slot, only text
    (escaped like any value where the template escapes)."""
    assert "%%" not in value
    t = template if isinstance(template, T) else T(template)
    if isinstance(t.body, str):
        return T(t.body.replace("%%N%%", _ESCAPES[t.escape](value)), t.escape, t.only, t.tag)

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return node.replace("%%N%%", value)
        if isinstance(node, dict):
            return {walk(k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return T(walk(t.body), t.escape, t.only, t.tag)


def generate(seed: int = 0, n_per_type: int = 120, negative_share: float = 0.35) -> list[Sample]:
    """The evaluation set: `n_per_type` samples built around each type, then hard
    negatives until they are `negative_share` of all samples; shuffled, all from `seed`."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    for entity in TYPES:
        contexts = _apportion(n_per_type, dict(zip(CONTEXTS, CONTEXT_WEIGHTS[entity], strict=True)))
        variants = _apportion(n_per_type, _VARIANTS[entity])
        rng.shuffle(variants)
        samples += [_positive(rng, entity, c, v) for c, v in zip(contexts, variants, strict=True)]
    n_neg = math.ceil(negative_share * len(samples) / (1 - negative_share))
    kinds = [_NEGATIVES[i % len(_NEGATIVES)] for i in range(n_neg)]
    rng.shuffle(kinds)
    for i, neg in enumerate(kinds):
        samples.append(_negative(rng, neg, CONTEXTS[i % len(CONTEXTS)]))
    rng.shuffle(samples)
    return samples


def composition(samples: Sequence[Sample]) -> dict[str, Any]:
    """Counts for a report: labelled spans per type and context, samples per case."""
    spans = Counter((s["entity"], x["context"]) for x in samples for s in x["spans"])
    negatives = sum(1 for x in samples if not x["spans"])
    return {
        "samples": len(samples), "negatives": negatives,
        "negative_share": negatives / len(samples) if samples else 0.0,
        "spans": sum(spans.values()),
        "per_type": {t: {c: spans[(t, c)] for c in CONTEXTS} for t in TYPES},
        "cases": Counter(x["case"] for x in samples),
    }


# --- scoring ---------------------------------------------------------------------------


class Pred(NamedTuple):
    entity: str
    start: int
    end: int


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    def meets(self) -> bool:
        return self.recall >= TARGET_RECALL and self.precision >= TARGET_PRECISION


@dataclass(frozen=True)
class Error:
    """A label nobody found exactly (`miss`) or a finding no label has (`false_positive`);
    `near` is the closest span on the other side that overlaps it, if any."""

    kind: str  # "miss" | "false_positive"
    sample: int
    entity: str
    start: int
    end: int
    near: Pred | None


@dataclass
class Scores:
    exact: dict[str, Counts]
    overlap: dict[str, Counts]
    errors: list[Error]

    def group(self, types: Iterable[str], how: str = "exact") -> Counts:
        total = Counts()
        for t in types:
            total.add(getattr(self, how)[t])
        return total


def score(samples: Sequence[Sample], predictions: Sequence[Iterable[Pred]]) -> Scores:
    """Exact: same type and offsets. Overlap: same type, any shared character, each label
    and finding used once. Findings of types outside TYPES are ignored."""
    exact = {t: Counts() for t in TYPES}
    overlap = {t: Counts() for t in TYPES}
    errors: list[Error] = []
    for i, (sample, found) in enumerate(zip(samples, predictions, strict=True)):
        gold = {Pred(s["entity"], s["start"], s["end"]) for s in sample["spans"]}
        pred = {Pred(*p) for p in found if p[0] in exact}
        for p in gold & pred:
            exact[p.entity].tp += 1
        for g in sorted(gold - pred):
            exact[g.entity].fn += 1
            errors.append(Error("miss", i, *g, _nearest(g, pred)))
        for p in sorted(pred - gold):
            exact[p.entity].fp += 1
            errors.append(Error("false_positive", i, *p, _nearest(p, gold)))
        unused = sorted(pred)
        for g in sorted(gold):
            hit = next((p for p in unused if p.entity == g.entity and p.start < g.end
                        and g.start < p.end), None)
            if hit:
                unused.remove(hit)
                overlap[g.entity].tp += 1
            else:
                overlap[g.entity].fn += 1
        for p in unused:
            overlap[p.entity].fp += 1
    return Scores(exact, overlap, errors)


def _nearest(span: Pred, others: Iterable[Pred]) -> Pred | None:
    hits = [o for o in others if o.start < span.end and span.start < o.end]
    return max(hits, key=lambda o: (o.entity == span.entity,
                                    min(o.end, span.end) - max(o.start, span.start)),
               default=None)


def _visible(text: str) -> str:
    return "".join("\\n" if c == "\n" else f"\\u{ord(c):04x}"
                   if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def snippet(sample: Sample, start: int, end: int, width: int = 36) -> str:
    """Text around [start, end) with that span shown as ⟪<…>⟫ and every labelled value in
    view as <…>: a report names where, never what."""
    text = sample["text"]
    lo, hi = max(0, start - width), min(len(text), end + width)
    cover = sorted([(start, end, True)] + [(s["start"], s["end"], False)
                                          for s in sample["spans"]
                                          if s["start"] < hi and lo < s["end"]])
    merged: list[list[Any]] = []
    for a, b, target in cover:
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
            merged[-1][2] = merged[-1][2] or target
        else:
            merged.append([a, b, target])
    out, pos = ["…" if lo else ""], lo
    for a, b, target in merged:
        a, b = max(a, lo), min(b, hi)
        out.append(_visible(text[pos:a]))
        out.append("⟪<…>⟫" if target else "<…>")
        pos = max(pos, b)
    out.append(_visible(text[pos:hi]) + ("…" if hi < len(text) else ""))
    return "".join(out)


def boundary(sample: Sample, err: Error) -> str:
    """How a near miss differs from its label: the characters a finding took beyond the
    value (shown: they are not the value) or how many of the value's it left out."""
    if err.near is None:
        return "nothing overlapping" if err.kind == "miss" else "overlaps no label"
    label, found = (err, err.near) if err.kind == "miss" else (err.near, err)
    text, parts = sample["text"], []
    if label.entity != found.entity:
        parts.append(f"type {found.entity} for {label.entity}")
    for side, a, b in (("left", found.start, label.start), ("right", label.end, found.end)):
        if a < b:
            parts.append(f"{side} +{_visible(text[a:b])[:12]!r}")
        elif a > b:
            parts.append(f"{side} -{a - b} chars")
    return ", ".join(parts) or "same bounds"


def main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path, help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-type", type=int, default=120)
    parser.add_argument("--negative-share", type=float, default=0.35)
    args = parser.parse_args(argv)
    samples = generate(args.seed, args.n_per_type, args.negative_share)
    with args.out.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    comp = composition(samples)
    print(f"{args.out}: {comp['samples']} samples, {comp['spans']} labelled spans, "
          f"{comp['negatives']} negatives ({comp['negative_share']:.0%})")
    print(f"{'type':24}" + "".join(f"{c:>18}" for c in CONTEXTS) + f"{'total':>8}")
    for t, per in comp["per_type"].items():
        print(f"{t:24}" + "".join(f"{per[c]:>18}" for c in CONTEXTS) + f"{sum(per.values()):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
