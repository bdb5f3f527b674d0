"""The redaction evaluation set (`redaction_eval`): labels point at valid values and at
nothing else, variants really evade, negatives hold nothing labelled, the same seed
gives the same set; scoring counts what it says; and the CI quality gate: the detector
meets the targets on a small generated set."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import redaction_eval as ev
from redaction_eval import Pred, Sample

SEED = 11
SET = ev.generate(seed=SEED, n_per_type=60)
POSITIVES = [s for s in SET if s["spans"]]
NEGATIVES = [s for s in SET if not s["spans"]]
GATE_SEED, GATE_N = 2024, 100  # per type: two misses in 100 labels is still 0.98


def _primary(sample: Sample) -> tuple[str, str]:
    entity, rest = sample["case"].split(":", 1)
    return entity, rest.rsplit("/", 1)[1]


def _unescape(labelled: str) -> str:
    """A value as written into a JSON string, a YAML block or a one-line env var, back
    to the value (what the template's escape did, undone)."""
    if "\n    " in labelled:
        labelled = labelled.replace("\n    ", "\n")
    if "\\" in labelled:
        labelled = json.loads(f'"{labelled}"')
    return labelled


def _value(sample: Sample, span: ev.Span) -> str:
    """The value a span labels, escapes and its sample's evasion undone (secondary values
    in a sample are always plain)."""
    entity, variant = _primary(sample)
    labelled = sample["text"][span["start"]:span["end"]]
    first = min((s for s in sample["spans"] if s["entity"] == entity),
                key=lambda s: s["start"])
    if span is not first:  # a secondary value of the same type is plain
        variant = "plain"
    if variant in ev.ENCODINGS:
        return ev.decode_variant(variant, labelled)
    return ev.decode_variant(variant, _unescape(labelled))


# --- what a valid value of each type is, written independently of the generator ---------

def _github_ok(v: str) -> bool:
    if m := re.fullmatch(r"ghp_([A-Za-z0-9]{30})([A-Za-z0-9]{6})", v):
        return ev._base62(zlib.crc32(m[1].encode()), 6) == m[2]
    return re.fullmatch(r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}", v) is not None


def _jwt_ok(v: str) -> bool:
    parts = v.split(".")
    if len(parts) != 3:
        return False
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    return header.get("alg") in ("HS256", "RS256", "ES256") and "sub" in claims


def _pem_ok(v: str) -> bool:
    m = re.fullmatch(r"-----BEGIN ((?:RSA |EC |OPENSSH |ENCRYPTED )?PRIVATE KEY)-----\n"
                     r"([A-Za-z0-9+/=\n]+)\n-----END \1-----", v)
    return m is not None and len(base64.b64decode(m[2].replace("\n", ""))) > 100


def _phone_ok(v: str, region: str) -> bool:
    phonenumbers = pytest.importorskip("phonenumbers")
    return phonenumbers.is_valid_number(phonenumbers.parse(v, region))


def _ip_ok(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


VALID: dict[str, Any] = {
    "EMAIL_ADDRESS": lambda v: re.fullmatch(
        r"[a-z0-9][a-z0-9._+-]*@[a-z0-9-]+(\.[a-z0-9-]+)*\.(com|org|net|io|dev|uk|de|fr|app)",
        v) is not None,
    "CREDIT_CARD": lambda v: re.fullmatch(r"\d{4}([ -]?)\d{4,6}\1\d{4,5}(\1\d{4})?", v)
    is not None and 15 <= len(re.sub(r"\D", "", v)) <= 16 and ev.luhn_ok(re.sub(r"\D", "", v)),
    "US_SSN": lambda v: re.fullmatch(r"\d{3}([ -]?)\d{2}\1\d{4}", v) is not None and ev.ssn_ok(v),
    "IBAN_CODE": lambda v: re.fullmatch(r"[A-Z]{2}\d{2}( ?[A-Z0-9]{4})+( ?[A-Z0-9]{1,3})?", v)
    is not None and ev.iban_ok(v),
    "IP_ADDRESS": _ip_ok,
    "OPENAI_API_KEY": lambda v: re.fullmatch(
        r"sk-(proj-[A-Za-z0-9_-]{74}T3BlbkFJ[A-Za-z0-9_-]{74}|[A-Za-z0-9]{20}T3BlbkFJ"
        r"[A-Za-z0-9]{20})", v) is not None,
    "ANTHROPIC_API_KEY": lambda v: re.fullmatch(r"sk-ant-api03-[A-Za-z0-9_-]{93}AA", v)
    is not None,
    "ANTHROPIC_OAUTH_TOKEN": lambda v: re.fullmatch(r"sk-ant-oat01-[A-Za-z0-9_-]{93}AA", v)
    is not None,
    "AWS_ACCESS_KEY": lambda v: re.fullmatch(r"AKIA[A-Z2-7]{16}", v) is not None,
    "GITHUB_TOKEN": _github_ok,
    "SLACK_TOKEN": lambda v: re.fullmatch(r"xoxb-[1-9]\d{9,12}-[1-9]\d{9,12}-[A-Za-z0-9]{24}", v)
    is not None,
    "GOOGLE_API_KEY": lambda v: re.fullmatch(r"AIza[A-Za-z0-9_-]{35}", v) is not None,
    "STRIPE_SECRET_KEY": lambda v: re.fullmatch(r"sk_live_([A-Za-z0-9]{24}|51[A-Za-z0-9]{97})",
                                                v) is not None,
    "PRIVATE_KEY": _pem_ok,
    "JWT": _jwt_ok,
    "GENERIC_SECRET": lambda v: len(v) >= 20 and ev.shannon(v) >= 3.5
    and v[0].isalnum() and v[-1].isalnum(),
}


@pytest.mark.parametrize("entity", ev.TYPES)
def test_every_label_holds_a_valid_value_of_its_type(entity: str) -> None:
    checked = 0
    for sample in POSITIVES:
        for span in (s for s in sample["spans"] if s["entity"] == entity):
            value = _value(sample, span)
            if entity == "PHONE_NUMBER":
                assert _phone_ok(value, sample["case"].split(":")[1].split("/")[0]), value
            else:
                assert VALID[entity](value), (sample["case"], value)
            if entity in ev.SECRET_TYPES[:8]:  # keys say they are synthetic
                assert ev.MARK in value
            checked += 1
    assert checked >= 60


def test_labels_stop_where_the_value_stops() -> None:
    """Nothing that could belong to the value sits right outside a span, and spans
    never overlap."""
    bad = []
    for sample in POSITIVES:
        text = sample["text"]
        spans = sorted(sample["spans"], key=lambda s: s["start"])
        if any(a["end"] > b["start"] for a, b in zip(spans, spans[1:], strict=False)):
            bad.append(("overlap", sample["case"]))
        for s in spans:
            before = text[s["start"] - 1] if s["start"] else " "
            after = text[s["end"]] if s["end"] < len(text) else " "
            glued = before.isalnum() or after.isalnum() or (
                s["entity"] in ev.SECRET_TYPES and (before in "-_" or after in "-_+/="))
            padded = text[s["start"]] in " \n\"'" or text[s["end"] - 1] in " \n\"'"
            if glued or padded:
                bad.append((sample["case"], before, after))
    assert bad == []


def test_punctuation_variant_puts_punctuation_right_after_the_value() -> None:
    samples = [s for s in POSITIVES if s["case"].endswith("/punct")]
    assert len(samples) > 100
    for sample in samples:
        entity, _ = _primary(sample)
        first = min((s for s in sample["spans"] if s["entity"] == entity),
                    key=lambda s: s["start"])
        assert sample["text"][first["end"]] in ev.PUNCTUATION, sample["text"]


EVADES = {
    "zero_width": lambda raw: any(c in ev.ZERO_WIDTH for c in raw),
    "fullwidth": lambda raw: any("\uff01" <= c <= "\uff5e" for c in raw),
    "homoglyph": lambda raw: any(c in ev.HOMOGLYPHS.values() for c in raw),
    "base64": lambda raw: re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", raw) is not None,
    "hex": lambda raw: re.fullmatch(r"[0-9a-fA-F]+", raw) is not None,
    "percent": lambda raw: raw.count("%") >= len(raw) // 3 or "%0A" in raw,
}


@pytest.mark.parametrize("variant", ev.EVASIONS)
def test_evasion_variants_really_change_the_text(variant: str) -> None:
    samples = [s for s in POSITIVES if s["case"].endswith("/" + variant)]
    assert samples
    entities = Counter(_primary(s)[0] for s in samples)
    for sample in samples:
        entity, _ = _primary(sample)
        first = min((s for s in sample["spans"] if s["entity"] == entity),
                    key=lambda s: s["start"])
        raw = sample["text"][first["start"]:first["end"]]
        assert EVADES[variant](raw), (sample["case"], raw)
        assert _value(sample, first) != raw
    if variant in ev.ENCODINGS:  # encodings are for secrets only
        assert set(entities) <= set(ev.SECRET_TYPES)


# --- nothing unlabelled ------------------------------------------------------------------

_SECRET_SHAPES = (
    r"sk-[A-Za-z0-9_-]{20,}", r"sk-ant-[a-z0-9]+-[A-Za-z0-9_-]{20,}", r"AKIA[A-Z0-9]{16}",
    r"gh[pousr]_[A-Za-z0-9]{30,}", r"github_pat_\w{30,}", r"xox[abp]-[\w-]{20,}",
    r"AIza[\w-]{35}", r"sk_live_[A-Za-z0-9]{20,}", r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)(?:password|passwd|pwd|secret|token|api_key)\W{1,3}([^\s\"'`<>;,]{16,})",
)
_PLACEHOLDER = re.compile(
    r"\.\.\.|\*\*|x{8}|[${}]|(?i:replace|your|here|placeholder|example)")
_IBAN_SHAPE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD_IIN = re.compile(r"4|5[1-5]|3[47]|6011|65|2(2[2-9]|[3-6]|7[01]|720)")
_EMAIL_SHAPE = re.compile(
    r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|io|dev|uk|de|fr|app)\b")


def _unlabelled_findings(text: str) -> list[str]:
    """Every value of a labelled type this strict, independent scan finds in `text`."""
    found = []
    # digit groups inside an IBAN are the IBAN's, whatever Luhn says of them
    no_ibans = _IBAN_SHAPE.sub(lambda m: "#" * len(m[0]), text)
    for m in re.finditer(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?!\w)", no_ibans):
        digits = re.sub(r"\D", "", m[0])
        if _CARD_IIN.match(digits) and ev.luhn_ok(digits):
            found.append(f"card {m[0]}")
    for m in _IBAN_SHAPE.finditer(text):
        if ev.iban_ok(m[0]):
            found.append(f"iban {m[0]}")
    for m in re.finditer(r"(?<![\d-])\d{3}([ -])\d{2}\1\d{4}(?![\d-])", text):
        if ev.ssn_ok(m[0]):
            found.append(f"ssn {m[0]}")
    found += [f"email {m[0]}" for m in _EMAIL_SHAPE.finditer(text)]
    for m in re.finditer(r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)", text):
        if _ip_ok(m[0]):
            found.append(f"ip {m[0]}")
    for m in re.finditer(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])", text):
        if "::" in m[0] and _ip_ok(m[0]) or m[0].count(":") == 7 and _ip_ok(m[0]):
            found.append(f"ipv6 {m[0]}")
    for shape in _SECRET_SHAPES:
        for m in re.finditer(shape, text):
            value = m[m.lastindex or 0]
            if ev.shannon(value) >= 3.0 and not _PLACEHOLDER.search(value):
                found.append(f"secret {value}")
    return found


def _phones(text: str) -> list[str]:
    phonenumbers = pytest.importorskip("phonenumbers")
    return [m.raw_string for region in ("US", "GB", "FR", "AU")
            for m in phonenumbers.PhoneNumberMatcher(text, region)]


# digit strings a lenient phone matcher takes for numbers and that are not: on purpose
PHONE_LIKE = ("product_code", "tracking_number", "timestamp", "aws_arn", "iban_invalid",
              "ip_lookalike")


def test_negatives_hold_nothing_of_a_labelled_type() -> None:
    bad = [(s["case"], f) for s in NEGATIVES for f in _unlabelled_findings(s["text"])]
    bad += [(s["case"], f"phone {p}") for s in NEGATIVES
            if s["case"].split("/")[1] not in PHONE_LIKE for p in _phones(s["text"])]
    assert bad == []


def test_labels_cover_every_sensitive_value_in_a_positive() -> None:
    """Blank the labelled spans: the fillers around them (timestamps, ids, hosts) hold
    nothing of a labelled type."""
    bad: list[tuple[str, str]] = []
    for sample in POSITIVES:
        text = list(sample["text"])
        for s in sample["spans"]:
            text[s["start"]:s["end"]] = " " * (s["end"] - s["start"])
        bad += [(sample["case"], f) for f in _unlabelled_findings("".join(text))]
    assert bad == []


def test_negatives_cover_every_kind_and_context() -> None:
    kinds = Counter(s["case"] for s in NEGATIVES)
    assert {f"negative/{n.kind}" for n in ev._NEGATIVES} == set(kinds)
    assert {s["context"] for s in NEGATIVES} == set(ev.CONTEXTS)


# --- composition and determinism ------------------------------------------------------

def test_default_set_composition() -> None:
    samples = ev.generate()
    comp = ev.composition(samples)
    assert comp["negative_share"] >= 0.30
    per_variant: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        if s["spans"]:
            entity, variant = _primary(s)
            per_variant[entity][variant] += 1
    for entity in ev.TYPES:
        per_context = comp["per_type"][entity]
        assert sum(per_context.values()) >= 100, entity
        assert all(per_context[c] > 0 for c in ev.CONTEXTS), entity
        wanted = {v for v, w in ev._VARIANTS[entity].items() if w > 0}
        assert set(per_variant[entity]) == wanted, entity


def test_same_seed_same_set_different_seed_different_set() -> None:
    assert ev.generate(seed=5, n_per_type=20) == ev.generate(seed=5, n_per_type=20)
    assert ev.generate(seed=5, n_per_type=20) != ev.generate(seed=6, n_per_type=20)


def _digest(samples: list[Sample]) -> str:
    return hashlib.sha256(json.dumps(samples, sort_keys=True).encode()).hexdigest()


def test_same_seed_same_set_in_another_process() -> None:
    """No hash-randomised ordering: string hashing differs between these processes."""
    code = ("import hashlib, json, redaction_eval as ev; print(hashlib.sha256(json.dumps("
            "ev.generate(seed=5, n_per_type=20), sort_keys=True).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == _digest(ev.generate(seed=5, n_per_type=20))


def test_main_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.jsonl"
    assert ev.main([str(out), "--seed", "3", "--n-per-type", "10"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == ev.generate(seed=3, n_per_type=10)
    assert "negatives" in capsys.readouterr().out


@pytest.mark.parametrize("family", sorted(ev._FAMILIES))
def test_every_template_renders_with_its_label_on_the_value(family: str) -> None:
    entity = next(t for t, f in ev.FAMILY.items() if f == family)
    plain, punct = ev._FAMILIES[family]
    pools = [*plain.values(), *punct.values()]
    if family not in ("generic",) and entity in ev.SECRET_TYPES:
        pools += list(ev._ENCODED_TEMPLATES.values())
    rng = ev.random.Random(1)
    for pool in pools:
        for template in pool:
            value = "SYNTHVALUE-123"
            text, spans = ev._Render(rng, entity, value, "plain").run(template)
            assert "%%" not in text
            mine = [s for s in spans if s["entity"] == entity
                    and text[s["start"]:s["end"]] == value]
            assert len(mine) == 1, template


# --- scoring -------------------------------------------------------------------------

def _sample(text: str, *spans: tuple[str, int, int]) -> Sample:
    return {"text": text, "context": "chat", "case": "t",
            "spans": [{"entity": e, "start": a, "end": b} for e, a, b in spans]}


def test_score_exact_and_overlap() -> None:
    samples = [
        _sample("key sk-abc. and x@example.com", ("OPENAI_API_KEY", 4, 10),
                ("EMAIL_ADDRESS", 16, 29)),
        _sample("nothing here"),
    ]
    preds = [
        [Pred("OPENAI_API_KEY", 4, 11), Pred("EMAIL_ADDRESS", 16, 29), Pred("PERSON", 0, 3)],
        [Pred("US_SSN", 0, 7)],
    ]
    scores = ev.score(samples, preds)
    assert (scores.exact["EMAIL_ADDRESS"].tp, scores.exact["OPENAI_API_KEY"].tp) == (1, 0)
    assert (scores.exact["OPENAI_API_KEY"].fn, scores.exact["OPENAI_API_KEY"].fp) == (1, 1)
    assert scores.overlap["OPENAI_API_KEY"].tp == 1  # the trailing '.' only costs exact
    assert scores.exact["US_SSN"].precision == 0.0
    kinds = sorted((e.kind, e.entity) for e in scores.errors)
    assert kinds == [("false_positive", "OPENAI_API_KEY"), ("false_positive", "US_SSN"),
                     ("miss", "OPENAI_API_KEY")]
    miss = next(e for e in scores.errors if e.kind == "miss")
    assert ev.boundary(samples[0], miss) == "right +'.'"
    assert scores.group(["EMAIL_ADDRESS", "OPENAI_API_KEY"]).recall == 0.5


def test_snippet_never_shows_a_labelled_value() -> None:
    sample = _sample("a sk-secretvalue1 b x@example.com c", ("OPENAI_API_KEY", 2, 17),
                     ("EMAIL_ADDRESS", 20, 33))
    shown = ev.snippet(sample, 2, 17)
    assert "secretvalue" not in shown and "example" not in shown
    assert shown == "a ⟪<…>⟫ b <…> c"


# --- the quality gate ------------------------------------------------------------------

def test_detector_meets_the_targets_on_a_small_set() -> None:
    """Recall ≥ 0.98 and precision ≥ 0.97 per type, exact spans, on a set the detector
    was not tuned on (GATE_SEED). The failure message lists the misses, values hidden."""
    from egressguard.core.redact.detect import default_detector

    detector = default_detector()
    samples = ev.generate(seed=GATE_SEED, n_per_type=GATE_N)
    preds = [[Pred(f.entity, f.start, f.end) for f in detector.find(s["text"], ev.TYPES)]
             for s in samples]
    scores = ev.score(samples, preds)
    failing = [t for t in ev.TYPES if not scores.exact[t].meets()]
    report = []
    for t in failing:
        c = scores.exact[t]
        report.append(f"{t}: recall {c.recall:.3f} precision {c.precision:.3f} "
                      f"(tp {c.tp} fp {c.fp} fn {c.fn})")
        for err in [e for e in scores.errors if e.entity == t][:4]:
            s = samples[err.sample]
            report.append(f"    {err.kind} [{s['context']}] {s['case']}: "
                          f"{ev.snippet(s, err.start, err.end)}  ({ev.boundary(s, err)})")
    assert not failing, "\n".join(report)
