"""`egressguard audit tail`, `verify`, `pubkey` and `sinks` over journal files."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import cursors
from egressguard.backends.journal import journal_files, read_lines, segments
from egressguard.backends.signing import SigningKeyError, load_signing_key
from egressguard.core import chain, checkpoints, records
from egressguard.core.chain import Line
from egressguard.core.sinkconfig import load_sinks
from egressguard.core.yamlsource import ConfigError
from egressguard.tools import auditquery

_COLUMNS = ("ts", "agent", "vendor", "method", "path", "model", "status", "decision",
            "reason")


def tail(journal: Path, lines: int, as_json: bool) -> int:
    if not journal_files(journal):
        print(f"egressguard: no journal files in {journal}", file=sys.stderr)
        return 1
    recent = deque((line.raw for line in read_lines([journal]) if line.complete),
                   maxlen=lines)
    if as_json:
        for raw in recent:
            sys.stdout.buffer.write(raw + b"\n")
        return 0
    rows = [[_cell(orjson.loads(raw).get(c)) for c in _COLUMNS] for raw in recent]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    for row in [list(_COLUMNS), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def verify(paths: list[Path], pubkey: Path | None) -> int:
    """Check chains, seqs, file closure and (with `pubkey`) checkpoint signatures: of a
    journal (its folder, or its files in order, plain or gzipped), of several journals
    (one folder each), or of an export (its folder: the manifest's hashes too); 0 only
    when all is intact."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"egressguard: no such file or directory: {', '.join(map(str, missing))}",
              file=sys.stderr)
        return 2
    public = None
    if pubkey is not None:
        try:
            public = checkpoints.load_public_key(pubkey.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"egressguard: cannot use {pubkey} as the public key: {exc}",
                  file=sys.stderr)
            return 2
    results, manifest_problems = [], []
    for chain_lines, problems in _chains(paths):
        manifest_problems += problems
        results.append(chain.verify(chain_lines, public))
    for problem in manifest_problems:
        print(f"BROKEN {problem}")
    found = [p for r in results for p in r.problems]
    for problem in found:
        print(f"BROKEN {problem}")
    records = sum(r.records for r in results)
    if records == 0 and not found and not manifest_problems:
        print("egressguard: no records found", file=sys.stderr)
        return 1
    signed = (f"{sum(r.signatures for r in results)} signatures verified"
              if public is not None else "signatures not checked (pass --pubkey FILE)")
    seqs = ", ".join(f"{r.first_seq}-{r.last_seq}" for r in results if r.records)
    summary = (f"{records} records (seq {seqs}), {sum(r.checkpoints for r in results)} "
               f"checkpoints, {signed}")
    if found or manifest_problems:
        first = manifest_problems[0] if manifest_problems else found[0]
        print(f"{len(found) + len(manifest_problems)} problem(s) in {summary}; the first: "
              f"{first}", file=sys.stderr)
        return 1
    last = results[-1].last_hash if len(results) == 1 else "per chain"
    print(f"OK {summary}; chain intact, last hash {last}")
    return 0


def _chains(paths: list[Path]) -> Iterator[tuple[Iterator[Line], list[str]]]:
    """The chains `paths` hold, each as (its lines, problems found on the way): a
    journal folder is one chain, an export folder one per file (after its manifest is
    checked), and loose files together one (the files of one journal, in order)."""
    loose = [p for p in paths if p.is_file()]
    if loose:
        yield chain_lines(loose), []
    for folder in (p for p in paths if p.is_dir()):
        if (folder / auditquery.MANIFEST).exists():
            files, problems = auditquery.check_manifest(folder)
            # a changed file is reported as such, not parsed: a flipped bit in a Parquet
            # page would stop the reader before the report
            intact = [f for f in files if f.exists()
                      and not any(p.startswith(f"{f}: ") for p in problems)]
            for i, f in enumerate(intact):
                yield auditquery.lines_of_export(f), problems if i == 0 else []
            if not intact:
                yield iter(()), problems
        else:
            yield read_lines([folder]), []


def chain_lines(files: list[Path]) -> Iterator[Line]:
    """Loose files: journal files as they are, exports by their records."""
    journal = [f for f in files if f.suffix not in (".csv", ".parquet")]
    yield from read_lines(journal) if journal else ()
    for f in files:
        if f.suffix in (".csv", ".parquet"):
            yield from auditquery.lines_of_export(f)


def pubkey(key_spec: str) -> int:
    """Print the public half of the journal's signing key, for auditors."""
    try:
        key = load_signing_key(key_spec) if key_spec.startswith("vault:") else \
            _existing_key(Path(key_spec.removeprefix("file:")))
    except SigningKeyError as exc:
        print(f"egressguard: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(checkpoints.public_pem(key).decode())
    print(f"key_id {checkpoints.key_id(key.public_key())}", file=sys.stderr)
    return 0


def _existing_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        raise SigningKeyError(f"no signing key at {path}: `egressguard run` creates it on "
                              "first start (or pass --signing-key)")
    return load_signing_key(str(path))


def sinks(journal: Path, sinks_file: Path | None) -> int:
    """Where each sink stands: delivered up to which record, how far behind, failing?"""
    names: list[str] = []
    if sinks_file is not None:
        try:
            names = load_sinks(sinks_file).names
        except ConfigError as exc:
            print(f"egressguard: invalid sinks file:\n{exc}", file=sys.stderr)
            return 2
    found = sorted({*names, *(p.stem for p in (journal / cursors.DIRECTORY).glob("*.json"))})
    if not found:
        print("egressguard: no sinks configured and no cursors in the journal",
              file=sys.stderr)
        return 1
    last = _last_seq(journal)
    rows = [["sink", "delivered", "behind", "at", "last delivery", "state"]]
    for name in found:
        c = cursors.load(journal, name)
        if c is None:
            rows.append([name, "0", str(last), "-", "never", "no cursor yet"])
            continue
        state = f"FAILING since {_when(c.failing_since)}: {c.error}" if c.error else "ok"
        if name not in names and sinks_file is not None:
            state = "not configured (its cursor holds nothing back)"
        rows.append([name, str(c.delivered), str(max(0, last - c.seq)),
                     f"file {c.segment} byte {c.offset}", _when(c.updated), state])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) +
              "  " + row[-1])
    return 0


def _last_seq(journal: Path) -> int:
    files = segments(journal)
    for s in reversed(files):
        last = 0
        with s.open() as f:
            for raw in f:
                if raw.endswith(b"\n") and raw.strip():
                    last = int(orjson.loads(raw).get("seq") or 0)
        if last:
            return last
    return 0


def _when(ts: float | None) -> str:
    return records.rfc3339(ts) if ts else "never"
