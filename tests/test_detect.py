"""The pattern detector (`egressguard.core.redact.detect`): every entity found with its
exact span, the look-alikes it must leave alone, evasions undone with spans on the text
as given, overlaps settled, rules checked with file:line:column, speed bounded.

Key-shaped strings, card numbers, IBANs and addresses are generated at test time
(seeded, so failures reproduce): none is real, and nothing resembling one is committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import statistics
import string
import textwrap
import time
import urllib.parse

import pytest

from egressguard.core import entities
from egressguard.core.redact import Finding
from egressguard.core.redact.detect import (
    Detector,
    builtin_rules,
    decode_run,
    default_detector,
    load_rules,
    shannon_entropy,
)
from egressguard.core.yamlsource import ConfigError, Problem

RNG = random.Random(20240615)
ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


def card(prefix: str, length: int) -> str:
    """A Luhn-valid number: random digits, then the check digit."""
    body = prefix + rand(length - len(prefix) - 1, string.digits)
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str(-total % 10)


def not_luhn(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def grouped(number: str, sizes: tuple[int, ...], sep: str = " ") -> str:
    out, at = [], 0
    for size in sizes:
        out.append(number[at:at + size])
        at += size
    return sep.join(out)


def iban(country: str, bban: str) -> str:
    n = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - n % 97:02d}{bban}"


B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58check(payload: bytes) -> str:
    raw = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n, out = int.from_bytes(raw, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def bech32_address() -> str:
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    data = [0] + [RNG.randrange(32) for _ in range(32)]  # witness v0, 20-byte program
    chk = 1
    for v in [3, 3, 0, 2, 3, *data, 0, 0, 0, 0, 0, 0]:
        top, chk = chk >> 25, (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= g if (top >> i) & 1 else 0
    chk ^= 1
    return "bc1" + "".join(charset[d] for d in data + [(chk >> 5 * (5 - i)) & 31
                                                        for i in range(6)])


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def pem(kind: str, lines: int = 4, end: bool = True) -> str:
    label = f"{kind} PRIVATE KEY".strip()
    body = "\n".join(rand(64, ALNUM + "+/") for _ in range(lines))
    return f"-----BEGIN {label}-----\n{body}\n" + (f"-----END {label}-----" if end else "")


# -- synthetic values --------------------------------------------------------------------
K = {
    "anthropic": "sk-ant-api03-" + rand(93, ALNUM + "_-") + "AA",
    "anthropic_admin": "sk-ant-admin01-" + rand(93, ALNUM + "_-") + "AA",
    "anthropic_oauth": "sk-ant-oat01-" + rand(93, ALNUM + "_-") + "AA",
    "anthropic_refresh": "sk-ant-ort01-" + rand(93, ALNUM + "_-") + "AA",
    "openai_proj": "sk-proj-" + rand(156, ALNUM + "_-") + "A",
    "openai_svcacct": "sk-svcacct-" + rand(60, ALNUM + "_-") + "B",
    "openai_admin": "sk-admin-" + rand(60, ALNUM + "_-") + "C",
    "openai_legacy": "sk-" + rand(48),
    "aws": "AKIA" + rand(16, UPPER),
    "aws_sts": "ASIA" + rand(16, UPPER),
    "aws_docs": "AKIA" + "IOSFODNN7" + "EXAMPLE",  # the AWS documentation's sample key
    "aws_secret": rand(40, ALNUM + "/+"),
    "ghp": "ghp_" + rand(36),
    "gho": "gho_" + rand(36),
    "ghu": "ghu_" + rand(36),
    "ghs": "ghs_" + rand(36),
    "ghr": "ghr_" + rand(36),
    "github_pat": "github_pat_" + rand(22) + "_" + rand(59),
    "slack_bot": "xoxb-" + rand(12, string.digits) + "-" + rand(13, string.digits) + "-"
                 + rand(24),
    "slack_user": "xoxp-" + "-".join(rand(12, string.digits) for _ in range(3)) + "-"
                  + rand(32, string.ascii_lowercase + string.digits),
    "slack_workspace": "xoxa-2-" + rand(40),
    "slack_refresh": "xoxr-" + rand(40),
    "slack_config": "xoxe-1-" + rand(146, UPPER),
    "slack_app": "xapp-1-A" + rand(10, UPPER) + "-" + rand(13, string.digits) + "-"
                 + rand(64, string.ascii_lowercase + string.digits),
    "slack_webhook": "https://hooks.slack.com/services/T" + rand(8, UPPER) + "/B"
                     + rand(8, UPPER) + "/" + rand(24),
    "google": "AIza" + rand(35, ALNUM + "_-"),
    "stripe_live": "sk_live_" + rand(99),
    "stripe_restricted": "rk_live_" + rand(99),
    "stripe_test": "sk_test_" + rand(99),
    "groq": "gsk_" + rand(52),
    "openrouter": "sk-or-v1-" + rand(64, "0123456789abcdef"),
    "xai": "xai-" + rand(80),
    "deepseek": "sk-" + rand(32, "0123456789abcdef"),
    "together": "tgp_v1_" + rand(43, ALNUM + "_-") + "Z",
    "huggingface": "hf_" + rand(34),
    "gitlab": "glpat-" + rand(20, ALNUM + "_-") + "Q",
    "jwt": b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url({"sub": "user-1"}) + "."
           + rand(43, ALNUM + "_-"),
}
PASSWORD = "Xy7#kLm9Qz!r"


def at(before: str, value: str, after: str, entity: str) -> tuple[str, Finding]:
    kind = "secret" if entity in entities.SECRETS else "pii"
    return before + value + after, Finding(entity, kind, len(before), len(before) + len(value))


def found(text: str, entities_: set[str] | None = None) -> list[tuple[str, int, int]]:
    return [(f.entity, f.start, f.end) for f in default_detector().find(text, entities_)]


def assert_found(text: str, expected: Finding) -> None:
    findings = default_detector().find(text)
    spans = [(f.entity, f.kind, f.start, f.end) for f in findings]
    want = (expected.entity, expected.kind, expected.start, expected.end)
    assert want in spans, f"{want} not in {spans} for {text!r}"


# -- PII ----------------------------------------------------------------------------------
VISA = card("4", 16)
MASTERCARD = card("51", 16)
AMEX = card("37", 15)
DISCOVER = card("6011", 16)
MC_2SERIES = card("2221", 16)
DE_IBAN = iban("DE", "370400440532013000")
GB_IBAN = iban("GB", "NWBK60161331926819")
FR_IBAN = iban("FR", "20041010050500013M02606")

PII_CASES = [
    ("email", "mail ", "bob.smith@example.com", " now", "EMAIL_ADDRESS"),
    ("email-plus-subdomain", "<", "jane+tag@mail.example.co.uk", ">", "EMAIL_ADDRESS"),
    ("email-mailto", "mailto:", "ops@example.org", "", "EMAIL_ADDRESS"),
    ("email-end-of-sentence", "write to ", "first.last@example.com", ".", "EMAIL_ADDRESS"),
    ("email-unicode-local", "", "josé@example.com", "", "EMAIL_ADDRESS"),
    ("phone-uk-international", "call ", "+44 20 7946 0958", " today", "PHONE_NUMBER"),
    ("phone-us-plus1", "", "+1 (415) 555-0132", "", "PHONE_NUMBER"),
    ("phone-us-parens", "tel ", "(415) 555-0132", "", "PHONE_NUMBER"),
    ("phone-us-dashes", "", "415-555-0132", "", "PHONE_NUMBER"),
    ("phone-us-dots", "", "415.555.0132", "", "PHONE_NUMBER"),
    ("phone-us-1-800", "", "1-800-555-0199", "", "PHONE_NUMBER"),
    ("phone-us-1-parens", "", "1 (212) 555-0175", "", "PHONE_NUMBER"),
    ("phone-de", "", "+49 30 12345678", "", "PHONE_NUMBER"),
    ("phone-fr", "", "+33 1 23 45 67 89", ".", "PHONE_NUMBER"),
    ("phone-in-compact", "", "+919876543210", "", "PHONE_NUMBER"),
    ("phone-jp-dashes", "", "+81-3-1234-5678", "", "PHONE_NUMBER"),
    ("phone-uk-national-context", "phone: ", "020 7946 0958", "", "PHONE_NUMBER"),
    ("phone-us-spaced-context", "my mobile is ", "555 234 5678", "", "PHONE_NUMBER"),
    ("phone-us-in-parentheses", "the desk line (", "415.555.0132", ") is dead", "PHONE_NUMBER"),
    ("phone-uk-national", '{"to": "', "020 7946 0958", '"}', "PHONE_NUMBER"),
    ("phone-uk-national-parens", "seen (", "0113 496 0123", ") in history", "PHONE_NUMBER"),
    ("phone-fr-national", "call me on ", "01 99 00 12 34", " after 5pm", "PHONE_NUMBER"),
    ("phone-au-mobile", "", "0491 570 123", "", "PHONE_NUMBER"),
    ("phone-au-area-code", "matched [", "(02) 5550 1234", "]", "PHONE_NUMBER"),
    ("card-visa", "card ", VISA, "", "CREDIT_CARD"),
    ("card-visa-spaced", "", grouped(VISA, (4, 4, 4, 4)), " exp 12/29", "CREDIT_CARD"),
    ("card-mastercard-dashed", "", grouped(MASTERCARD, (4, 4, 4, 4), "-"), "", "CREDIT_CARD"),
    ("card-amex-4-6-5", "amex ", grouped(AMEX, (4, 6, 5)), "", "CREDIT_CARD"),
    ("card-discover", "", DISCOVER, ".", "CREDIT_CARD"),
    ("card-mastercard-2-series", "", MC_2SERIES, "", "CREDIT_CARD"),
    ("ssn-dashes", "SSN ", "234-56-7890", "", "US_SSN"),
    ("ssn-spaces", "", "536 22 1234", "", "US_SSN"),
    ("ssn-bare-with-context", "social security number ", "536221234", "", "US_SSN"),
    ("iban-de-compact", "", DE_IBAN, "", "IBAN_CODE"),
    ("iban-gb-grouped", "IBAN: ", grouped(GB_IBAN, (4, 4, 4, 4, 4, 2)), ".", "IBAN_CODE"),
    ("iban-fr-letters-inside", "", FR_IBAN, "", "IBAN_CODE"),
    ("iban-then-a-word", "", grouped(DE_IBAN, (4, 4, 4, 4, 4, 2)), " FROM ACCT",
     "IBAN_CODE"),
    ("ipv4", "host ", "10.20.30.40", ".", "IP_ADDRESS"),
    ("ipv4-with-port", "", "192.168.1.1", ":8080", "IP_ADDRESS"),
    ("ipv4-edges", "", "255.0.0.255", "", "IP_ADDRESS"),
    ("ipv6", "[", "2001:db8::8a2e:370:7334", "]:443", "IP_ADDRESS"),
    ("ipv6-full", "", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "", "IP_ADDRESS"),
    ("ipv6-link-local", "", "fe80::1ff:fe23:4567:890a", "", "IP_ADDRESS"),
    ("url", "see ", "https://example.com/docs?q=1&lang=en", ").", "URL"),
    ("url-ftp", "", "ftp://files.example.org/pub/a.tar.gz", "", "URL"),
    ("crypto-legacy", "send to ", base58check(b"\0" + RNG.randbytes(20)), "", "CRYPTO"),
    ("crypto-p2sh", "", base58check(b"\x05" + RNG.randbytes(20)), "", "CRYPTO"),
    ("crypto-bech32", "", bech32_address(), "", "CRYPTO"),
]


@pytest.mark.parametrize("before, value, after, entity",
                         [c[1:] for c in PII_CASES], ids=[c[0] for c in PII_CASES])
def test_pii_is_found_with_its_exact_span(before: str, value: str, after: str,
                                          entity: str) -> None:
    assert_found(*at(before, value, after, entity))


# -- secrets ----------------------------------------------------------------------------------
SECRET_CASES = [
    ("anthropic", "key: ", K["anthropic"], "", "ANTHROPIC_API_KEY"),
    ("anthropic-admin", "", K["anthropic_admin"], "", "ANTHROPIC_API_KEY"),
    ("anthropic-oauth", "CLAUDE_CODE_OAUTH_TOKEN=", K["anthropic_oauth"], "",
     "ANTHROPIC_OAUTH_TOKEN"),
    ("anthropic-oauth-refresh", '"refreshToken": "', K["anthropic_refresh"], '"',
     "ANTHROPIC_OAUTH_TOKEN"),
    ("openai-project", "OPENAI_API_KEY=", K["openai_proj"], "\n", "OPENAI_API_KEY"),
    ("openai-service-account", "", K["openai_svcacct"], "", "OPENAI_API_KEY"),
    ("openai-admin", "", K["openai_admin"], "", "OPENAI_API_KEY"),
    ("openai-legacy", "use ", K["openai_legacy"], " please", "OPENAI_API_KEY"),
    ("aws-access-key", "", K["aws"], "", "AWS_ACCESS_KEY"),
    ("aws-sts-key", "", K["aws_sts"], "", "AWS_ACCESS_KEY"),
    ("aws-docs-example-is-reported", "aws_access_key_id = ", K["aws_docs"], "",
     "AWS_ACCESS_KEY"),
    ("aws-secret-assigned", "aws_secret_access_key = ", K["aws_secret"], "\n",
     "AWS_ACCESS_KEY"),
    ("aws-secret-env", "AWS_SECRET_ACCESS_KEY=", K["aws_secret"], "", "AWS_ACCESS_KEY"),
    ("github-pat-classic", "", K["ghp"], "", "GITHUB_TOKEN"),
    ("github-oauth", "", K["gho"], "", "GITHUB_TOKEN"),
    ("github-user-to-server", "", K["ghu"], "", "GITHUB_TOKEN"),
    ("github-server-to-server", "", K["ghs"], "", "GITHUB_TOKEN"),
    ("github-refresh", "", K["ghr"], "", "GITHUB_TOKEN"),
    ("github-fine-grained", "", K["github_pat"], "", "GITHUB_TOKEN"),
    ("slack-bot", "", K["slack_bot"], "", "SLACK_TOKEN"),
    ("slack-user", "", K["slack_user"], "", "SLACK_TOKEN"),
    ("slack-workspace", "", K["slack_workspace"], "", "SLACK_TOKEN"),
    ("slack-refresh", "", K["slack_refresh"], "", "SLACK_TOKEN"),
    ("slack-config", "", K["slack_config"], "", "SLACK_TOKEN"),
    ("slack-app", "", K["slack_app"], "", "SLACK_TOKEN"),
    ("slack-webhook", "POST ", K["slack_webhook"], "", "SLACK_TOKEN"),
    ("google", "?key=", K["google"], "", "GOOGLE_API_KEY"),
    ("stripe-live", "", K["stripe_live"], "", "STRIPE_SECRET_KEY"),
    ("stripe-restricted", "", K["stripe_restricted"], "", "STRIPE_SECRET_KEY"),
    ("stripe-test", "", K["stripe_test"], "", "STRIPE_SECRET_KEY"),
    ("groq", "", K["groq"], "", "GROQ_API_KEY"),
    ("openrouter", "", K["openrouter"], "", "OPENROUTER_API_KEY"),
    ("xai", "", K["xai"], "", "XAI_API_KEY"),
    ("deepseek", "", K["deepseek"], "", "DEEPSEEK_API_KEY"),
    ("together", "", K["together"], "", "TOGETHER_API_KEY"),
    ("huggingface", "", K["huggingface"], "", "HUGGINGFACE_TOKEN"),
    ("gitlab", "", K["gitlab"], "", "GITLAB_TOKEN"),
    ("jwt", "Authorization: Bearer ", K["jwt"], "", "JWT"),
    ("private-key-pkcs8", "key:\n", pem(""), "\n", "PRIVATE_KEY"),
    ("private-key-rsa", "", pem("RSA"), "", "PRIVATE_KEY"),
    ("private-key-ec", "", pem("EC"), "", "PRIVATE_KEY"),
    ("private-key-openssh", "", pem("OPENSSH"), "", "PRIVATE_KEY"),
    ("private-key-encrypted", "", pem("ENCRYPTED"), "", "PRIVATE_KEY"),
    ("private-key-cut-off", "", pem("RSA", end=False).rstrip("\n"), "", "PRIVATE_KEY"),
    ("generic-equals", "password=", PASSWORD, "\n", "GENERIC_SECRET"),
    ("generic-colon", "password: ", PASSWORD, "", "GENERIC_SECRET"),
    ("generic-json", '{"api_key": "', "q8Zr2LmX0vWk7Tn3", '"}', "GENERIC_SECRET"),
    ("generic-env", "export SECRET_TOKEN=", "a9F3kQ7zLm2Xw8Rt", "", "GENERIC_SECRET"),
    ("generic-env-prefixed", "DB_PASSWORD='", PASSWORD, "'", "GENERIC_SECRET"),
    ("generic-arrow", "client_secret => \"", "Zk82nVq0LrT5wXy1", '"', "GENERIC_SECRET"),
    ("generic-walrus", "apikey := ", "Zk82nVq0LrT5wXy1", "", "GENERIC_SECRET"),
    ("generic-bearer", "Authorization: Bearer ", "Zk82nVq0LrT5wXy1Pq7", "", "GENERIC_SECRET"),
    ("generic-basic", "Authorization: Basic ", "dXNlcjpTM2NyZXRQdzl4", "", "GENERIC_SECRET"),
    ("generic-header", "X-Api-Key: ", "Zk82nVq0LrT5wXy1Pq7", "", "GENERIC_SECRET"),
    ("generic-weak-password", "passwd = '", "hunter22", "'", "GENERIC_SECRET"),
    ("generic-quoted-phrase", 'password: "', "correct horse battery staple", '"',
     "GENERIC_SECRET"),
    ("generic-credentials", "credentials=", "u7Hk2Lp9Qx3Zr8Vt", "", "GENERIC_SECRET"),
    ("url-password", "postgres://app:", "S3cretPw9x", "@db.internal:5432/app",
     "GENERIC_SECRET"),
    ("generic-prose", "the staging db password is ", "Summer2024!x", " if you need it",
     "GENERIC_SECRET"),
    ("generic-prose-backticks", "the token is `", "q8Zr2LmX0vWk7Tn3", "`.", "GENERIC_SECRET"),
    ("generic-before-json-escape", '{"stdout": "app_secret=', "q8Zr2LmX0vWk7Tn3",
     '\\n", "exit_code": 0}', "GENERIC_SECRET"),
    ("generic-percent-encoded-value", "GET /login?token=",
     "".join(f"%{b:02X}" for b in b"q8Zr2LmX0vWk7Tn3"), "&page=2", "GENERIC_SECRET"),
]


@pytest.mark.parametrize("before, value, after, entity",
                         [c[1:] for c in SECRET_CASES], ids=[c[0] for c in SECRET_CASES])
def test_secrets_are_found_with_their_exact_span(before: str, value: str, after: str,
                                                 entity: str) -> None:
    text, expected = at(before, value, after, entity)
    assert_found(text, expected)
    # and nothing else claims any part of it
    assert [(f.entity, f.start, f.end) for f in default_detector().find(text)
            if f.start < expected.end and expected.start < f.end] == [
        (expected.entity, expected.start, expected.end)]


WRAPPERS = [("(", ")"), ('"', '",'), ("'", "';"), ("<", ">"), ("[", "]"), ("`", "`"),
            ("", "."), ("", ","), ("", ":"), ("key=", "&x=1"), ('{"k":"', '"}'),
            ("\t", "\r\n"), ("", "!"), ("", "?"), ("Bearer ", "")]
PUNCTUATED = ["anthropic", "anthropic_oauth", "openai_proj", "openai_legacy", "aws", "ghp",
              "github_pat", "google", "stripe_live", "slack_bot", "jwt", "groq"]


@pytest.mark.parametrize("name", PUNCTUATED)
@pytest.mark.parametrize("before, after", WRAPPERS, ids=[repr(w) for w in WRAPPERS])
def test_keys_next_to_punctuation_keep_exact_spans(name: str, before: str, after: str) -> None:
    text = f"here {before}{K[name]}{after} there"
    findings = default_detector().find(text)
    start = text.index(K[name])
    assert [(f.start, f.end, f.kind) for f in findings] == [(start, start + len(K[name]),
                                                             "secret")]


# -- what must not be found -------------------------------------------------------------------
NEGATIVES = [
    ("git-sha", "commit da39a3ee5e6b4b0d3255bfef95601890afd80709 (HEAD)", None),
    ("uuid", "request 550e8400-e29b-41d4-a716-446655440000 failed", None),
    ("sha256", "digest sha256:" + hashlib.sha256(b"x").hexdigest(), None),
    ("sha256-bare", hashlib.sha256(b"y").hexdigest(), None),
    ("md5", hashlib.md5(b"z").hexdigest(), None),
    ("order-failing-luhn", "order " + not_luhn(VISA), None),
    ("tracking-failing-luhn", "tracking " + grouped(not_luhn(MASTERCARD), (4, 4, 4, 4)),
     None),
    ("epoch-millis", "ts=1718447400123", None),
    ("epoch-seconds", "at 1718447400", None),
    ("long-digit-run", "id 41555501329990001234", None),
    ("phone-in-digit-run", "ref 4155550132999", None),
    ("order-id", "order ORD-20240615-88213 shipped", None),
    ("version-4-part", "version 1.2.3.4", None),
    ("version-v", "v1.2.3.4", None),
    ("version-release", "release: 10.0.0.1", None),
    ("version-5-part", "1.2.3.4.5", None),
    ("ip-out-of-range", "256.1.1.1", None),
    ("ip-leading-zeros", "01.02.03.04", None),
    ("date-iso", "2024-01-15", None),
    ("date-us", "01/15/2024", None),
    ("date-eu", "15/01/2024", None),
    ("date-dots", "15.01.2024", None),
    ("timestamp", "2024-06-15T10:30:00Z", None),
    ("time", "at 12:30:45", None),
    ("mac-address", "mac 00:1a:2b:3c:4d:5e", None),
    ("price", "$1,234,567.89", None),
    ("phone-not-nanp", "call 123-456-7890", None),
    ("phone-spaced-no-context", "totals 555 234 5678", None),
    ("ssn-area-000", "000-12-3456", None),
    ("ssn-area-666", "666-12-3456", None),
    ("ssn-area-9xx", "912-12-3456", None),
    ("ssn-group-00", "234-00-4567", None),
    ("ssn-serial-0000", "234-56-0000", None),
    ("ssn-advertising", "123-45-6789", None),
    ("ssn-woolworth", "078-05-1120", None),
    ("ssn-mixed-separators", "234-56 7890", None),
    ("nine-digits-no-context", "invoice 234567890", None),
    ("tracking-22-digits", "tracking 9400 1234 5678 9012 3456 7890 12", None),
    ("timestamp-14-digits", "TS=20240615123456", None),
    ("card-wrong-length-for-issuer", "n " + card("4", 15), None),
    ("phone-tail-of-bad-iban", "iban: NL72 BOLP 0123 4567 89", None),
    ("phone-product-code", "part 012-345-6789", None),
    ("iban-bad-checksum", "DE00" + DE_IBAN[4:], None),
    ("iban-wrong-length", DE_IBAN + "1", None),
    ("iban-unknown-country", "ZZ" + DE_IBAN[2:], None),
    ("email-retina-image", "icon@2x.png", None),
    ("email-npm-version", "npm i lodash@4.17.21", None),
    ("email-decorator", "@property", None),
    ("email-no-tld", "root@localhost", None),
    ("email-url-user", "postgres://app@db.internal/payments", "EMAIL_ADDRESS"),
    ("placeholder-sk", "OPENAI_API_KEY=sk-placeholder", None),
    ("placeholder-sk-dots", "sk-...", None),
    ("placeholder-x", "sk-proj-" + "x" * 40, None),
    ("placeholder-your-key", "sk-proj-your-api-key-goes-here-0123456789", None),
    ("placeholder-aws-x", "AKIA" + "X" * 16, None),
    ("placeholder-aws-short", "AKIAEXAMPLE", None),
    ("placeholder-github-x", "ghp_" + "x" * 36, None),
    ("placeholder-stripe-stars", "sk_live_" + "*" * 24, None),
    ("key-too-short", "ghp_" + rand(20), None),
    ("key-inside-word", "mask-proj-" + rand(30), None),
    ("jwt-without-alg", b64url({"typ": "JWT"}) + "." + b64url({"sub": "1"}) + "."
     + rand(20), None),
    ("pem-header-only", "-----BEGIN PRIVATE KEY-----", None),
    ("pem-public-key", "-----BEGIN PUBLIC KEY-----\n" + rand(64, ALNUM + "+/")
     + "\n-----END PUBLIC KEY-----", None),
    ("aws-secret-unassigned", "blob " + rand(40, ALNUM + "/+"), None),
    ("base64-prose", base64.b64encode(b"just some ordinary words in here").decode(), None),
    ("hex-random", RNG.randbytes(32).hex(), None),
    ("generic-changeme", 'password = "changeme"', None),
    ("generic-your-key", "api_key: <your-key>", None),
    ("generic-env-ref", "token: ${GITHUB_TOKEN}", None),
    ("generic-actions-ref", "token: ${{ secrets.GITHUB_TOKEN }}", None),
    ("generic-stars", "password: ********", None),
    ("generic-xxx", 'secret = "xxx"', None),
    ("generic-sk-placeholder", "API_KEY=sk-placeholder", None),
    ("generic-environ", 'password = os.environ["DB_PASSWORD"]', None),
    ("generic-getenv", 'api_key = os.getenv("OPENAI_API_KEY")', None),
    ("generic-call", "token = get_token()", None),
    ("generic-attribute", "api_key = settings.OPENAI_API_KEY", None),
    ("generic-variable-name", "password=DB_PASSWORD", None),
    ("generic-type", "api_key: str", None),
    ("generic-optional-type", "password: Optional[str] = None", None),
    ("generic-path", "PWD=/home/user/project", None),
    ("generic-word", "password: required", None),
    ("generic-template", 'token: "{{ vault_token }}"', None),
    ("generic-format", "password=%(db_password)s", None),
    ("generic-shell", "token=$(cat ~/.token)", None),
    ("generic-our-own-mask", "password = <GENERIC_SECRET>", None),
    ("generic-redacted", 'api_key: "[REDACTED]"', None),
    ("generic-counts", "token_count: 12345\nmax_tokens: 1024", None),
    ("generic-tokenizer", "tokenizer: cl100k_base", None),
    ("generic-author", "author: Johnathan Smithers", None),
    ("generic-bool", "auth: true", None),
    ("generic-your-key-here", "OPENAI_API_KEY: your-openai-key-here", None),
    ("generic-trailing-dots", "api_key=sk-proj-...", None),
    ("generic-replace-me", "token=sk-ant-oat01-REPLACE_ME", None),
    ("slack-your-token", "api_key=xoxb-your-bot-token", None),
    ("url-password-placeholder", "postgres://app:password@db/app", "GENERIC_SECRET"),
    ("url-password-env", "redis://:${REDIS_PASSWORD}@cache:6379", "GENERIC_SECRET"),
]


@pytest.mark.parametrize("text, entity", [c[1:] for c in NEGATIVES], ids=[c[0] for c in NEGATIVES])
def test_look_alikes_are_not_found(text: str, entity: str | None) -> None:
    findings = found(text)
    if entity is None:
        assert findings == []
    else:
        assert [f for f in findings if f[0] == entity] == []


# -- evasion ------------------------------------------------------------------------------------
FULLWIDTH = {i: i + 0xFEE0 for i in range(0x21, 0x7F)}
CYRILLIC = str.maketrans("AaEeOoPpCcXxKMHTBy", "АаЕеОоРрСсХхКМНТВу")


def spread(value: str, mark: str, every: int = 5) -> str:
    return mark.join(value[i:i + every] for i in range(0, len(value), every))


def tags(value: str) -> str:
    return "".join(chr(0xE0000 + ord(c)) for c in value)


EVASIONS = [
    ("zero-width-space", spread(K["anthropic"], "\u200b"), "ANTHROPIC_API_KEY"),
    ("zero-width-joiners", spread(K["ghp"], "\u200c\u200d", 3), "GITHUB_TOKEN"),
    ("word-joiner", spread(K["openai_proj"], "\u2060", 7), "OPENAI_API_KEY"),
    ("bom-inside", spread(K["aws"], "\ufeff", 4), "AWS_ACCESS_KEY"),
    ("soft-hyphens", spread(K["google"], "\u00ad", 6), "GOOGLE_API_KEY"),
    ("zero-width-email", "bob\u200b.smith@exam\u00adple.com", "EMAIL_ADDRESS"),
    ("fullwidth-key", K["anthropic"].translate(FULLWIDTH), "ANTHROPIC_API_KEY"),
    ("fullwidth-email", "alice@example.com".translate(FULLWIDTH), "EMAIL_ADDRESS"),
    ("cyrillic-aws", K["aws"].translate(CYRILLIC), "AWS_ACCESS_KEY"),
    ("cyrillic-github", K["ghp"].translate(CYRILLIC), "GITHUB_TOKEN"),
    ("cyrillic-email", "packet.mapper@example.com".translate(CYRILLIC), "EMAIL_ADDRESS"),
    ("greek-alpha-aws", "\u0391" + K["aws"][1:], "AWS_ACCESS_KEY"),
    ("mathematical-digits-card",
     "".join(chr(0x1D7CE + int(c)) if c.isdigit() else c for c in grouped(VISA, (4, 4, 4, 4))),
     "CREDIT_CARD"),
    ("arabic-indic-digits-ssn",
     "".join(chr(0x0660 + int(c)) if c.isdigit() else c for c in "234-56-7890"), "US_SSN"),
    ("non-breaking-hyphens-phone", "415\u2011555\u20110132", "PHONE_NUMBER"),
    ("mixed-everything", spread(K["stripe_live"].translate(CYRILLIC), "\u200b", 9),
     "STRIPE_SECRET_KEY"),
    ("tag-characters", tags(K["openai_legacy"]), "OPENAI_API_KEY"),
]


@pytest.mark.parametrize("disguised, entity", [c[1:] for c in EVASIONS],
                         ids=[c[0] for c in EVASIONS])
def test_disguised_values_are_found_at_their_original_span(disguised: str, entity: str) -> None:
    before, after = "Ünïcödé text — “quoted” … then ", " and more ✓ after"
    text, expected = at(before, disguised, after, entity)
    assert_found(text, expected)


def test_offsets_after_removed_and_expanded_characters_stay_exact() -> None:
    # ligature (one char -> two), removed zero-width chars, then a key: every offset
    # after them must still point into the original text
    text = "ﬁle\u200b\u200b… ﬃ " + K["ghp"] + " ½ " + "bob@example.com"
    findings = default_detector().find(text)
    assert [text[f.start:f.end] for f in findings] == [K["ghp"], "bob@example.com"]


ENCODINGS = [
    ("base64", lambda s: base64.b64encode(s.encode()).decode()),
    ("base64-unpadded", lambda s: base64.b64encode(s.encode()).decode().rstrip("=")),
    ("base64-url-safe", lambda s: base64.urlsafe_b64encode(("\xff>>" + s).encode()).decode()),
    ("hex", lambda s: s.encode().hex()),
    ("hex-upper", lambda s: s.encode().hex().upper()),
    ("percent", lambda s: "".join(f"%{b:02X}" for b in s.encode())),
    ("percent-partial", lambda s: urllib.parse.quote(s, safe="").replace("-", "%2D")),
]
ENCODED = [("anthropic", "ANTHROPIC_API_KEY"), ("aws", "AWS_ACCESS_KEY"),
           ("ghp", "GITHUB_TOKEN"), ("slack_bot", "SLACK_TOKEN")]


@pytest.mark.parametrize("name, entity", ENCODED, ids=[e[0] for e in ENCODED])
@pytest.mark.parametrize("encode", [e[1] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS])
def test_encoded_secrets_are_found_as_the_encoded_run(encode: object, name: str,
                                                      entity: str) -> None:
    assert callable(encode)
    encoded = encode(f"export TOKEN_VALUE={K[name]}\n")
    text, expected = at("data: ", encoded, " (end)", entity)
    assert_found(text, expected)


@pytest.mark.parametrize("name, entity", ENCODED, ids=[e[0] for e in ENCODED])
@pytest.mark.parametrize("suffix, encode", [("B64", ENCODINGS[0][1]), ("HEX", ENCODINGS[3][1]),
                                            ("URLENC", ENCODINGS[5][1])], ids=["b64", "hex", "pct"])
def test_encoded_secrets_assigned_to_a_secret_name(suffix: str, encode: object, name: str,
                                                   entity: str) -> None:
    # API_KEY_B64=<run>: GENERIC_SECRET sees an assignment; the decoded run says what it is
    assert callable(encode)
    encoded = encode(K[name])
    assert_found(*at(f"SERVICE_API_KEY_{suffix}=", encoded, "\n", entity))


def test_encoded_generic_secret_and_encoded_pii() -> None:
    secret = base64.b64encode(f"password={PASSWORD}".encode()).decode()
    assert found(f"cfg {secret} ok") == [("GENERIC_SECRET", 4, 4 + len(secret))]
    # only secrets are looked for inside encoded runs: an encoded e-mail stays
    email = base64.b64encode(b"contact: bob.smith@example.com").decode()
    assert found(f"cfg {email} ok") == []


def test_decode_run_takes_only_text() -> None:
    assert decode_run(base64.b64encode(b"hello world, plain").decode()) == "hello world, plain"
    assert decode_run(b"hello world, plain".hex()) == "hello world, plain"
    assert decode_run("hello%20world%2C%20plain") == "hello world, plain"
    assert decode_run(base64.b64encode(RNG.randbytes(30)).decode()) is None  # binary
    assert decode_run("ab%2") is None
    assert decode_run("short") is None


# -- overlaps, filters, result shape --------------------------------------------------------------
def test_a_secret_beats_the_url_around_it_unless_only_urls_are_asked_for() -> None:
    url = "https://maps.example.com/api/js?key=" + K["google"] + "&v=3"
    key_at = url.index("AIza")
    assert found(url) == [("GOOGLE_API_KEY", key_at, key_at + len(K["google"]))]
    assert found(url, {"URL"}) == [("URL", 0, len(url))]


def test_a_specific_secret_beats_the_generic_one_on_the_same_value() -> None:
    for before, name, entity in [('OPENAI_API_KEY="', "openai_proj", "OPENAI_API_KEY"),
                                 ("token: ", "jwt", "JWT"),
                                 ("Authorization: Bearer ", "anthropic", "ANTHROPIC_API_KEY"),
                                 ("password=", "stripe_live", "STRIPE_SECRET_KEY")]:
        text = before + K[name] + '"'
        assert found(text) == [(entity, len(before), len(before) + len(K[name]))]
    assert found('OPENAI_API_KEY="' + K["openai_proj"] + '"', {"GENERIC_SECRET"}) == [
        ("GENERIC_SECRET", 16, 16 + len(K["openai_proj"]))]


def test_the_longer_finding_wins_and_narrower_asks_still_find_the_inner_one() -> None:
    url = "https://example.com/contact?to=bob@example.com"
    assert found(url) == [("URL", 0, len(url))]
    assert found(url, {"EMAIL_ADDRESS"}) == [("EMAIL_ADDRESS", 31, len(url))]
    assert found("1 (212) 555-0175") == [("PHONE_NUMBER", 0, 16)]


def test_entity_filter() -> None:
    text = f"mail bob@example.com, key {K['ghp']}, card {VISA}"
    assert {f[0] for f in found(text)} == {"EMAIL_ADDRESS", "GITHUB_TOKEN", "CREDIT_CARD"}
    assert {f[0] for f in found(text, {"GITHUB_TOKEN", "PERSON"})} == {"GITHUB_TOKEN"}
    assert found(text, set()) == []
    assert [f.entity for f in default_detector().find(text, "GITHUB_TOKEN")] == [
        "GITHUB_TOKEN"]  # one type named as a string, not as its letters
    assert found(text, {"PERSON", "LOCATION"}) == []  # NER types: not patterns
    assert default_detector().find("", None) == []


def test_findings_are_sorted_non_overlapping_and_typed() -> None:
    parts = [f"{k}: {v}" for k, v in K.items()] + [
        "bob@example.com", "+44 20 7946 0958", VISA, "234-56-7890", DE_IBAN, "10.0.0.1",
        "https://example.com/x", f"password={PASSWORD}"]
    RNG.shuffle(parts)
    text = "\n".join(parts)
    findings = default_detector().find(text)
    assert len(findings) >= len(parts) - 2
    for a, b in zip(findings, findings[1:], strict=False):
        assert a.end <= b.start
    for f in findings:
        assert f.kind == ("secret" if f.entity in entities.SECRETS else "pii")
        assert 0 < f.score <= 1
        assert f.entity in default_detector().entities


def test_context_raises_the_score() -> None:
    plain = default_detector().find("415-555-0132")
    near = default_detector().find("call me: 415-555-0132")
    assert plain[0].score == 0.75 and near[0].score == 1.0


def test_the_detector_is_built_once_and_knows_its_entities() -> None:
    assert default_detector() is default_detector()
    assert builtin_rules() is builtin_rules()
    known = set(entities.PII) | set(entities.SECRETS)
    assert default_detector().entities <= known
    assert set(entities.SECRETS) <= default_detector().entities
    assert {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE",
            "IP_ADDRESS", "URL", "CRYPTO"} <= default_detector().entities


def test_entropy() -> None:
    assert shannon_entropy("") == 0
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("abcd") == 2
    assert shannon_entropy(rand(64)) > 5


# -- rules as data -----------------------------------------------------------------------------
GOOD_RULE = """\
version: 1
rules:
  - id: corp-token
    entity: GENERIC_SECRET
    pattern: 'corp_[a-z0-9]{20}'
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_rules(textwrap.dedent(text), "rules.yaml")
    return [str(p) for p in exc.value.problems]


def test_a_good_rules_file_loads() -> None:
    (rule,) = load_rules(GOOD_RULE, "rules.yaml")
    assert (rule.id, rule.entity, rule.kind, rule.score) == ("corp-token", "GENERIC_SECRET",
                                                             "secret", 1.0)


@pytest.mark.parametrize("body, expected", [
    ("""\
     - id: bad-regex
       entity: GENERIC_SECRET
       pattern: 'corp_(unclosed'
     """, "rules.yaml:6:5: rule 'bad-regex': the pattern is not a valid regex: missing ), "
          "unterminated subpattern at position 5"),
    ("""\
     - id: bad-validator
       entity: CREDIT_CARD
       pattern: '[0-9]{16}'
       validators: [luhnn]
     """, "rules.yaml:7:5: rule 'bad-validator': unknown validator 'luhnn'; did you mean "
          "'luhn'?"),
    ("""\
     - id: bad-entity
       entity: EMAIL
       pattern: 'x@y'
     """, "rules.yaml:5:5: rule 'bad-entity': 'EMAIL' is not an entity type; did you mean "
          "'EMAIL_ADDRESS'?"),
    ("""\
     - id: bad-key
       entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
       keyword: [corp_]
     """, "rules.yaml:7:5: unknown key 'keyword' in rule 'bad-key'; did you mean 'keywords'?"),
    ("""\
     - id: bad-kind
       entity: GENERIC_SECRET
       kind: pii
       pattern: 'corp_[a-z]{9}'
     """, "rules.yaml:6:5: rule 'bad-kind': GENERIC_SECRET is a secret type; `kind` is "
          "secret or left out"),
    ("""\
     - id: bad-until
       entity: PRIVATE_KEY
       pattern: '-----BEGIN KEY-----'
       until: '-----END('
     """, "rules.yaml:7:5: rule 'bad-until': `until` is not a valid regex: missing ), "
          "unterminated subpattern at position 8"),
    ("""\
     - id: empty-match
       entity: GENERIC_SECRET
       pattern: '[a-z]*'
     """, "rules.yaml:6:5: rule 'empty-match': the pattern matches an empty string"),
    ("""\
     - id: bad-score
       entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
       score: 2
     """, "rules.yaml:7:5: rule 'bad-score': `score` is a number from 0 to 1; found 2"),
    ("""\
     - id: Bad_Id
       entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
     """, "rules.yaml:4:5: rule 'Bad_Id': an id is lower-case letters, digits and -"),
    ("""\
     - entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
     """, "rules.yaml:4:5: rule 0 needs `id` (a string)"),
    ("""\
     - id: lonely-reach
       entity: EMAIL_ADDRESS
       pattern: 'x@y'
       reach: [4, 4]
     """, "rules.yaml:7:5: rule 'lonely-reach': `reach` goes with `anchor`"),
    ("""\
     - id: bad-reach
       entity: EMAIL_ADDRESS
       pattern: 'x@y'
       anchor: '@'
       reach: 4
     """, "rules.yaml:8:5: rule 'bad-reach': `reach` is [before, after]"),
    ("""\
     - id: stray-entropy
       entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
       entropy: 3
     """, "rules.yaml:7:5: rule 'stray-entropy': `entropy` is the threshold of the entropy "
          "validator"),
    ("""\
     - id: bad-keywords
       entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
       keywords: corp_
     """, "rules.yaml:7:5: rule 'bad-keywords': `keywords` is a list of non-empty strings"),
    ("""\
     - not a mapping
     """, "rules.yaml:4:5: a rule is a mapping of id, entity, pattern, ...; found 'not a "
          "mapping'"),
    ("""\
     - id: upper-case
       entity: GENERIC_SECRET
       pattern: 'Corp_[a-z]{9}'
       ignore_case: true
     """, "rules.yaml:6:5: rule 'upper-case': with `ignore_case` the pattern is matched "
          "against the lower-cased text; write it in lower case"),
    ("""\
     - id: both
       entity: EMAIL_ADDRESS
       pattern: 'x@y'
       starts: [x]
       anchor: '@'
       reach: [1, 1]
     """, "rules.yaml:7:5: rule 'both': `starts` and `anchor` are two ways"),
    ("""\
     - id: hopeless
       entity: GENERIC_SECRET
       pattern: 'corp_[a-z]{9}'
       score: 0.2
       min_score: 0.5
     """, "rules.yaml:8:5: rule 'hopeless': the score (0.2) is below `min_score` (0.5) and "
          "no `context` can raise it"),
])
def test_bad_rules_are_reported_at_file_line_column(body: str, expected: str) -> None:
    text = "version: 1\n# the rules\nrules:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    found_problems = problems(text)
    assert len(found_problems) == 1, found_problems
    assert found_problems[0].startswith(expected), found_problems[0]


def test_every_problem_is_reported_at_once() -> None:
    text = """\
    version: 2
    extra: 1
    rules:
      - id: one
        entity: NOPE
        pattern: '('
      - id: one
        entity: GENERIC_SECRET
        pattern: 'corp_[a-z]{9}'
    """
    lines = problems(text)
    assert lines[0].startswith("rules.yaml:1:1: a rules file starts with `version: 1`")
    assert lines[1].startswith("rules.yaml:2:1: unknown key 'extra' in a rules file")
    assert any(":5:5: rule 'one': 'NOPE' is not an entity type" in line for line in lines)
    assert any(":6:5: rule 'one': the pattern is not a valid regex" in line for line in lines)
    assert any(":7:5: rule 'one' is defined twice" in line for line in lines)
    assert problems("version: 1\nrules: {}\n")[0].startswith(
        "rules.yaml:2:1: rules must be a list")
    assert problems("[1, 2]\n")[0].startswith("rules.yaml:1:1: a rules file is a mapping")
    assert problems("version: 1\nrules: [\n")[0].startswith("rules.yaml:3:1: not valid YAML")


def test_the_shipped_rules_have_unique_ids_and_every_validator_is_used() -> None:
    rules = builtin_rules()
    assert len({r.id for r in rules}) == len(rules)
    from egressguard.core.redact.detect import VALIDATORS
    used = {v for r in rules for v in r.validators}
    assert used == set(VALIDATORS.values())


def test_policy_rules_extend_the_builtin_ones() -> None:
    token = "corp_" + rand(20, string.ascii_lowercase + string.digits)
    extra = [{"id": "corp-token", "entity": "GENERIC_SECRET", "pattern": "corp_[a-z0-9]{20}",
              "keywords": ["corp_"]}]
    detector = Detector.from_rules(extra, source="policy.yaml")
    text = f"use {token} and {K['ghp']}"
    assert [(f.entity, text[f.start:f.end]) for f in detector.find(text)] == [
        ("GENERIC_SECRET", token), ("GITHUB_TOKEN", K["ghp"])]
    assert Detector.from_rules([]).rules == builtin_rules()
    only = Detector.from_rules(extra, builtin=False)
    assert [r.id for r in only.rules] == ["corp-token"]


def test_bad_policy_rules_name_the_source_or_use_the_callers_positions() -> None:
    with pytest.raises(ConfigError) as exc:
        Detector.from_rules([{"id": "email", "entity": "EMAIL_ADDRESS", "pattern": "x@y"},
                             {"id": "x", "entity": "NOPE", "pattern": "y"}],
                            source="policy.yaml")
    assert [str(p) for p in exc.value.problems] == [
        "policy.yaml:1:1: rules[0].id: rule 'email' is defined twice: ids must be unique",
        "policy.yaml:1:1: rules[1].entity: rule 'x': 'NOPE' is not an entity type (the "
        "types are in egressguard/core/entities.py)"]

    def where(path: tuple[str | int, ...], message: str) -> Problem:
        return Problem("policy.yaml", 40 + int(path[0]), 7, message)

    with pytest.raises(ConfigError) as exc:
        Detector.from_rules([{"id": "x", "entity": "GENERIC_SECRET", "pattern": "("}],
                            where=where)
    assert str(exc.value.problems[0]).startswith("policy.yaml:40:7: rule 'x': the pattern")


def test_case_folding_that_changes_lengths_keeps_offsets() -> None:
    # "İ".lower() is two characters: rules matching the lower-cased text fall back to
    # case-insensitive matching of the text itself
    text = "İstanbul PASSWORD=" + PASSWORD + " and api_key: q8Zr2LmX0vWk7Tn3"
    assert len(text.lower()) != len(text)
    assert [text[f.start:f.end] for f in default_detector().find(text)] == [
        PASSWORD, "q8Zr2LmX0vWk7Tn3"]


def test_rules_run_only_where_they_can_match() -> None:
    rules = {r.id: r for r in builtin_rules()}
    # a rule that needs context runs only on texts holding a context word
    assert rules["phone-spaced"].keywords == rules["phone-spaced"].context
    assert found("555 234 5678") == []
    assert found("phone 555 234 5678") == [("PHONE_NUMBER", 6, 18)]
    # dense anchors fall back to one linear scan, with the same findings
    emails = " ".join(f"u{i}@example.com" for i in range(300))
    assert len(found(emails)) == 300


# -- speed ----------------------------------------------------------------------------------------
AGENT_TEXT = f"""You are a coding agent. The user asked: "Please fix the failing test in
src/payments/refund.py and email the summary to jane.doe@example.com or call
+1 (415) 555-0132." Traceback (most recent call last):
  File "/app/src/payments/refund.py", line 118, in process_refund
    amount = Decimal(order["amount"]) - fees
KeyError: 'amount'
DATABASE_URL = "postgres://app@db.internal:5432/payments"
STRIPE_API_VERSION = "2024-06-20"
def process_refund(order: dict, fees: Decimal) -> Decimal:
    if order.get("status") != "paid":
        raise RefundError(f"order {{order['id']}} is not paid")
    log.info("refund %s for %s at 2024-06-15T10:30:00Z", amount, order["id"])
git log: commit 9fceb02d0ae598e95dc970b74767f19372d61af8 (HEAD -> main)
Request id 550e8400-e29b-41d4-a716-446655440000 from 10.20.30.40.
OPENAI_API_KEY={K["openai_proj"]}
"""


def p50_ms(text: str, runs: int) -> float:
    detector = default_detector()
    detector.find(text)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        detector.find(text)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def test_an_agent_sized_text_takes_about_a_millisecond() -> None:
    text = (AGENT_TEXT * 3)[:2048]
    assert {f.entity for f in default_detector().find(AGENT_TEXT)} == {
        "EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "OPENAI_API_KEY"}
    # the target is < 1 ms on a quiet machine; the bound is loose for busy CI runners
    assert p50_ms(text, 200) < 10


ADVERSARIAL = [
    "a" * 20000 + "@",
    "@" * 20000,
    "1 " * 10000,
    "1-" * 10000,
    "+1 " * 8000,
    ":" * 10000 + "a:" * 5000,
    "sk-" + "a-" * 10000,
    "password=" * 3000,
    "-----BEGIN PRIVATE KEY-----" + "A" * 60000,
    "-----BEGIN PRIVATE KEY-----\n" + "A" * 63 + "\n" * 5000,
    "eyJ" + "a" * 30000,
    "eyJabcde." * 5000,
    "A" * 40000,
    "%41" * 10000,
    "0" * 40000,
    ("DE89 " + "3704 " * 8) * 500,
    "\u200b" * 20000 + "x",
    ("ａ" + "\u200b") * 10000,
    "a@b.co " * 20000,  # 20000 findings: overlaps settled in O(n log n)
    "10.0.0.1 " * 20000,
    "password=Xy7#kLm9Qz!r " * 5000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_hostile_inputs_stay_linear(text: str) -> None:
    started = time.perf_counter()
    default_detector().find(text)
    assert time.perf_counter() - started < 2.0
