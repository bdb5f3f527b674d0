"""`egressguard scan`: the pattern detector (and, when a policy's plan names PERSON or
LOCATION, Presidio's NER, as the proxy runs it) over a file or stdin, printed as JSON
findings (character offsets, never the values) or as the text with each finding
replaced by `<ENTITY>`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from egressguard.backends.ner import NerUnavailable
from egressguard.core import policy
from egressguard.core.entities import NER
from egressguard.core.redact import Finding
from egressguard.core.redact.detect import default_detector
from egressguard.core.yamlsource import ConfigError


def scan(path: Path | None, redact: bool, policy_path: Path | None) -> int:
    """0 when the text was scanned (findings or not); 2 when it or the policy could not
    be read."""
    try:
        text = read_text(path)
    except (OSError, ValueError) as exc:
        print(f"egressguard: {exc}", file=sys.stderr)
        return 2
    wanted: frozenset[str] | None = None
    if policy_path is not None:
        try:
            wanted = plan_entities(policy.load(policy_path))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        unscanned = sorted(wanted - default_detector().entities - NER)
        if unscanned:
            print(f"egressguard: no detection rule for: {', '.join(unscanned)}",
                  file=sys.stderr)
    findings = default_detector().find(text, wanted)
    if wanted and (names := wanted & NER):
        try:
            findings = with_names(findings, text, names)
        except NerUnavailable as exc:  # what the proxy would do: refuse, not pass
            print(f"egressguard: NER could not scan this text: {exc.message}",
                  file=sys.stderr)
            return 2
    if redact:
        sys.stdout.write(redacted(text, findings))
        sys.stdout.flush()
    else:
        print(json.dumps({"findings": [
            {"entity": f.entity, "kind": f.kind, "start": f.start, "end": f.end,
             "score": f.score} for f in findings]}))
    return 0


def with_names(findings: list[Finding], text: str, names: frozenset[str]) -> list[Finding]:
    """The pattern findings plus what Presidio's NER finds of `names` (PERSON, LOCATION)
    where no pattern finding is, as the proxy scans for a plan that names them."""
    from egressguard.backends.ner import NerEngine

    engine = NerEngine()
    try:
        named = asyncio.run(engine.find(text, names))
    finally:
        engine.close()
    taken = [(f.start, f.end) for f in findings]
    named = [n for n in named if not any(n.start < end and start < n.end
                                         for start, end in taken)]
    return sorted([*findings, *named], key=lambda f: (f.start, f.end))


def read_text(path: Path | None) -> str:
    """The file's (or stdin's) UTF-8 text exactly as stored: no newline translation,
    so offsets count every character, `\\r` included."""
    if path is None or str(path) == "-":
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read() if stream is not None else sys.stdin.read().encode()
        where = "standard input"
    else:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise OSError(f"cannot read {path}: {exc.strerror}") from None
        where = str(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 text (byte {exc.start}: "
                         f"0x{raw[exc.start]:02x})") from None


def plan_entities(loaded: policy.Policy) -> frozenset[str]:
    """Every entity type some rule's redaction plan names, groups spread out."""
    named: set[str] = set()
    for rule in loaded.rules:
        named.update(rule.plan)
    return frozenset(named)


def redacted(text: str, findings: list[Finding]) -> str:
    out, at = [], 0
    for f in findings:
        out += [text[at:f.start], f"<{f.entity}>"]
        at = f.end
    out.append(text[at:])
    return "".join(out)
