"""The secret sweep: after every other test (tests/conftest.py puts it last), look for
every vendor key, Vault token, password and PII sample the suite used
(tests/secret_registry.py) in everything the suite wrote: proxy and shipper logs,
journals (plain, gzipped, torn), exports (JSONL, CSV, Parquet), reports, cursors, what
rsyslogd and the fake SIEM received, what agents received (curl's headers and bodies),
and each test's captured stdout, stderr and log lines. Keys and tokens are also looked
for base64- and URL-encoded. A finding names the file and the value's kind, never the
value.

Not read, each for its reason (SKIPPED): what the fake vendor received (it plays the
vendor, which gets the real key by design), key material and certificates, the local
OpenBao's own credential and storage files (a secret store holds secrets), credential
files the deploy scripts hand to processes (AppRole IDs, an agent's token), binary
caches of journals that are read themselves, browser profiles.
"""

from __future__ import annotations

import base64
import gzip
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import pytest
import secret_registry

SWEEP = Path(__file__).name

# (pattern on the path relative to the scanned folder, why it is not read)
SKIPPED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), why) for pattern, why in (
        (r"(^|/)fakevendor\.log$", "the fake vendor: it plays the vendor, which receives the "
                                   "real key by design"),
        (r"\.(pem|key|p12|cer|crt|pub|der)$", "key material and certificates"),
        (r"(^|/)(init\.json|proxy-token|openbao\.hcl)$|(^|/)data/(raft/)?[^/]+\.db$",
         "the local OpenBao's credentials and storage: a secret store holds secrets"),
        (r"(^|/)approle/(role_id|secret_id[^/]*)$|(^|/)share/token$",
         "credential files a deployment hands to a process (AppRole IDs, the compose "
         "agent's token)"),
        (r"\.duckdb(\.wal)?$", "a query cache of journal files, which are read themselves"),
        (r"(^|/)chromium[^/]*/|chromium-profile", "a browser profile"),
    ))
LOGS = re.compile(r"\.(log|out|err)$")
JOURNALS = re.compile(r"(^|/)journal-\d+\.jsonl(\.gz|\.torn-\d+)?$")
EXPORTS = re.compile(r"\.(csv|parquet|html|ndjson)$|(^|/)manifest\.json$")
SAMPLE = 8192  # bytes looked at to tell text from binary


@dataclass
class Sweep:
    """What was read and what was found (file, kind, form), never a value."""

    read: Counter[str] = field(default_factory=Counter)  # category -> files
    records: int = 0  # journal lines
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> files
    findings: list[tuple[str, str, str]] = field(default_factory=list)


# -- what is looked for ---------------------------------------------------------------
def forms(value: str, kind: str) -> Iterator[tuple[str, bytes]]:
    """`value` as it may be written: as is, URL-encoded and, unless it is PII prose,
    base64 (standard and URL-safe, at each of the three byte alignments it can have
    inside a longer encoded text, as in a Basic auth header)."""
    raw = value.encode()
    yield "as is", raw
    for name, encode in (("URL-encoded", quote), ("form-encoded", quote_plus)):
        encoded = encode(value, safe="").encode()
        if encoded != raw:
            yield name, encoded
    escaped = orjson.dumps(value)[1:-1]
    if escaped != raw:
        yield "JSON-escaped", escaped
    if kind.startswith("PII") or len(raw) < 12:
        return
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        inner = encoded[4 * -(-offset // 3): 4 * ((offset + len(raw)) // 3)]
        yield "base64", inner
        if (url_safe := inner.translate(bytes.maketrans(b"+/", b"-_"))) != inner:
            yield "base64url", url_safe


def needles(values: Mapping[str, str]) -> dict[bytes, tuple[str, str]]:
    """Every form of every value -> (kind, form)."""
    out: dict[bytes, tuple[str, str]] = {}
    for value, kind in values.items():
        for form, needle in forms(value, kind):
            out.setdefault(needle, (kind, form))
    return out


class Finder:
    """All needles at once: one regex pass per file, not one pass per needle. The
    regex is a trie of the needles (they share prefixes: `sk-test-`, base64 of it), so
    each position of a file costs a branch per distinct next byte, not a try of every
    needle."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.needles = needles(values)
        self.regex = re.compile(_trie(sorted(self.needles))) if self.needles else None

    def find(self, data: bytes) -> set[tuple[str, str]]:
        if self.regex is None:
            return set()
        return {self.needles[m.group(0)] for m in self.regex.finditer(data)}


def _trie(words: list[bytes]) -> bytes:
    """A regex matching any of `words` (sorted), longest first where one is a prefix of
    another."""
    ends = b"" in words
    branches: dict[int, list[bytes]] = {}
    for word in words:
        if word:
            branches.setdefault(word[0], []).append(word[1:])
    parts = [re.escape(bytes([first])) + _trie(rest) for first, rest in branches.items()]
    if not parts:
        return b""
    body = parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"
    return b"(?:" + body + b")?" if ends else body


# -- what is read ---------------------------------------------------------------------
def skip_reason(relative: str) -> str | None:
    return next((why for pattern, why in SKIPPED if pattern.search(relative)), None)


def category(relative: str) -> str:
    if JOURNALS.search(relative):
        return "journal"
    if LOGS.search(relative):
        return "log"
    if EXPORTS.search(relative):
        return "export or report"
    return "other"


def contents(path: Path) -> bytes | None:
    """The text in a file (gzip and Parquet opened); None for other binary files."""
    data = path.read_bytes()
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        return zlib.decompressobj(wbits=31).decompress(data)  # a cut-off file: what is there
    if path.suffix == ".parquet":
        import duckdb

        try:
            rows = duckdb.read_parquet(str(path)).fetchall()
        except duckdb.Error:  # one a test corrupted on purpose: its raw bytes, then
            return data
        return "\n".join(map(repr, rows)).encode()
    return None if b"\0" in data[:SAMPLE] else data


def sweep(folder: Path, values: Mapping[str, str],
          captured: list[tuple[str, str]] = ()) -> Sweep:  # type: ignore[assignment]
    result, finder = Sweep(), Finder(values)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(folder).as_posix()
        if (why := skip_reason(relative)) is not None:
            result.skipped[why] += 1
            continue
        try:
            data = contents(path)
        except (OSError, gzip.BadGzipFile, zlib.error):
            data = None
        if data is None:
            result.skipped["binary"] += 1
            continue
        kind = category(relative)
        result.read[kind] += 1
        if kind == "journal":
            result.records += data.count(b"\n")
        for found_kind, form in sorted(finder.find(data)):
            result.findings.append((relative, found_kind, form))
    for where, text in captured:
        result.read["captured test output"] += 1
        for found_kind, form in sorted(finder.find(text.encode())):
            result.findings.append((where, found_kind, form))
    return result


def vault_credentials_on_disk(folder: Path) -> dict[str, str]:
    """The tokens and unseal keys of the local OpenBaos the tests set up: values the
    proxy was given, to be looked for like the rest."""
    found: dict[str, str] = {}
    for path in folder.rglob("init.json"):
        try:
            init = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(init, dict):
            for name, value in init.items():
                if isinstance(value, str):
                    found[value] = f"vault {name.replace('_', ' ')} (local OpenBao)"
    for path in folder.rglob("proxy-token"):
        found[path.read_text().strip()] = "vault token (local OpenBao)"
    return {v: k for v, k in found.items() if len(v) >= secret_registry.MIN_LENGTH}


def report(findings: list[tuple[str, str, str]]) -> str:
    return "\n".join(f"  {where}: a {kind} ({form})" for where, kind, form in findings)


# -- the sweep machinery works --------------------------------------------------------
# not registered: the session sweep does not look for them (base64 of the key has "/")
PLANTED = {"sk-test-" + "5f0c9a" * 6 + "?>": "vendor key",
           "Ada Placeholder": "PII: person name"}


def test_the_sweep_finds_each_form_and_never_prints_the_value(tmp_path: Path) -> None:
    """Files the session sweep never sees (values not registered): each form of a key
    is found and named by file and kind only; skipped files stay unread."""
    key, name = list(PLANTED)
    basic = base64.b64encode(f"agent:{key}".encode()).decode()  # key at offset 6
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "proxy.log").write_text(f"Authorization: Basic {basic}\n")
    (tmp_path / "a" / "plain.json").write_text(f'{{"k": "{key}", "who": "{name}"}}\n')
    (tmp_path / "url.txt").write_text(f"?key={quote(key + '/+', safe='')}\n")
    with gzip.open(tmp_path / "journal-000001.jsonl.gz", "wt") as f:
        f.write(f'{{"seq": 1, "message": "{base64.urlsafe_b64encode(key.encode()).decode()}"}}\n')
    (tmp_path / "fakevendor.log").write_text(key)  # the vendor gets the key: not read
    (tmp_path / "binary.bin").write_bytes(b"\0" + key.encode())

    found = sweep(tmp_path, {**PLANTED, key + "/+": "vendor key"},
                  [("test_x (Captured log call)", f"refusing {name}")])
    assert sorted(found.findings) == [
        ("a/plain.json", "PII: person name", "as is"), ("a/plain.json", "vendor key", "as is"),
        ("a/proxy.log", "vendor key", "base64"),
        ("journal-000001.jsonl.gz", "vendor key", "base64url"),
        ("test_x (Captured log call)", "PII: person name", "as is"),
        ("url.txt", "vendor key", "URL-encoded"),
    ]
    assert found.read == {"log": 1, "other": 2, "journal": 1, "captured test output": 1}
    assert found.records == 1 and found.skipped["binary"] == 1
    assert sum(found.skipped.values()) == 2
    assert key not in report(found.findings) and name not in report(found.findings)


# -- the session sweep ------------------------------------------------------------------
def test_no_registered_secret_in_any_log_or_record(request: pytest.FixtureRequest,
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    others = [item for item in request.session.items if item.path.name != SWEEP]
    if not others:
        pytest.skip("the sweep reads what the rest of the suite wrote: run it with the suite")
    basetemp = tmp_path_factory.getbasetemp()
    values = {**vault_credentials_on_disk(basetemp), **secret_registry.VALUES}
    found = sweep(basetemp, values, secret_registry.CAPTURED)

    if found.findings:
        pytest.fail(f"{len(found.findings)} registered value(s) found where no secret or "
                    f"PII may be (value not shown):\n{report(found.findings)}", pytrace=False)
    e2e = any("e2e" in item.path.parts for item in others)
    whole_suite = e2e and len({item.path for item in others}) >= 40
    ran = (f"read {dict(found.read)}, {found.records} journal records, "
           f"{len(values)} values; skipped {dict(found.skipped)}")
    print(f"secret sweep: {ran}")  # shown with -rP
    # not vacuous: the sweep saw what the suite that ran must have written
    assert sum(found.read.values()) > 0 and values, ran
    if e2e:
        assert found.read["log"] >= 1 and found.records >= 1, ran
        assert any(k == "vendor key" for k in values.values()), ran
        assert any(k.startswith("vault") for k in values.values()), ran
    if whole_suite:
        assert found.read["log"] >= 8 and found.read["journal"] >= 100, ran
        assert found.records >= 300 and found.read["captured test output"] >= 10, ran
        assert len(values) >= 20 and any(k.startswith("PII") for k in values.values()), ran
