"""`egressguard audit query | stats | sql | export`: auditors' questions over the trail.

    query    the records that match the filters, sorted by time: a table for people,
             NDJSON or CSV for tools
    stats    requests, denials, redactions per entity type, tokens, spend, what the
             cache and model routing saved, failovers and retries, latency percentiles,
             grouped by agent, team, vendor, model, day, rule, ...
    sql      any SQL over the `records` table (DuckDB)
    export   a time range as JSONL, CSV or Parquet plus a manifest, in a folder that
             `egressguard audit verify` checks

All of them read journal folders or files through `auditdb` (cached) and share one
set of filters. Problems an auditor can fix — an unknown column or dimension, a time
that does not parse, a range with nothing in it — are one clear line on stderr and
exit 2 (1 for an empty result); unreadable journal lines are reported and skipped.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from egressguard.backends.journal import read_lines
from egressguard.core.chain import Line
from egressguard.tools.auditdb import COLUMNS, NAMES, AuditDataError, AuditDB, parse_time

DEFAULT_COLUMNS = ("ts", "agent", "team", "vendor", "model", "decision", "reason", "status",
                   "input_tokens", "output_tokens", "spend_usd", "latency_ms", "id")
DIMENSIONS = ("agent", "team", "vendor", "model", "day", "rule", "node", "decision",
              "reason", "status", "kind", "host")
TABLE_LIMIT = 100  # rows a table shows unless --limit says otherwise
CACHE_STATUSES = ("hit", "miss", "bypass")
# stats columns of features a journal may not use (cache, routing, failover): the
# table leaves out those that are all zero or empty; JSON and CSV always have them
QUIET_STATS = ("cache_hits", "saved_tokens", "saved_usd", "failovers", "retried")


@dataclass(slots=True)
class Filters:
    since: str | None = None
    until: str | None = None
    agent: list[str] = field(default_factory=list)
    team: list[str] = field(default_factory=list)
    vendor: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    decision: list[str] = field(default_factory=list)
    rule: list[str] = field(default_factory=list)
    entity: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # cache_status: hit, miss, bypass
    kinds: tuple[str, ...] = ("request", "connect")  # what people ask about

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (never empty) and its parameters."""
        clauses, params = ["kind IN (" + ", ".join("?" * len(self.kinds)) + ")"], \
            list(self.kinds)
        if self.since:
            clauses.append("ts >= ?")
            params.append(parse_time(self.since))
        if self.until:
            clauses.append("ts < ?")
            params.append(parse_time(self.until))
        for name in ("agent", "team", "vendor", "model", "decision", "rule"):
            values = getattr(self, name)
            if values:
                clauses.append(f"{name} IN (" + ", ".join("?" * len(values)) + ")")
                params += values
        if self.entity:
            clauses.append("list_has_any(redacted_entities, ?)")
            params.append(self.entity)
        if self.status:
            clauses.append("(" + " OR ".join(_status(s, params) for s in self.status) + ")")
        if self.cache:
            for value in self.cache:
                if value not in CACHE_STATUSES:
                    raise AuditDataError(f"--cache {value!r}: one of "
                                         f"{', '.join(CACHE_STATUSES)}")
            clauses.append("cache_status IN (" + ", ".join("?" * len(self.cache)) + ")")
            params += self.cache
        return " AND ".join(clauses), params

    def describe(self) -> str:
        parts = [f"since {self.since}" if self.since else "", f"until {self.until}"
                 if self.until else ""]
        parts += [f"{k}={','.join(getattr(self, k))}" for k in
                  ("agent", "team", "vendor", "model", "decision", "rule", "entity", "status",
                   "cache")
                  if getattr(self, k)]
        return " ".join(p for p in parts if p) or "no filters"


def _status(value: str, params: list[Any]) -> str:
    """`403` or a class like `4xx`."""
    text = value.strip().lower()
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        low = int(text[0]) * 100
        params += [low, low + 100]
        return "(status >= ? AND status < ?)"
    if not text.isdigit():
        raise AuditDataError(f"--status {value!r}: give a status (403) or a class (5xx)")
    params.append(int(text))
    return "status = ?"


# -- the commands -----------------------------------------------------------------------

def query(db: AuditDB, filters: Filters, columns: Sequence[str] | None, output: str,
          limit: int | None) -> int:
    chosen = list(columns or DEFAULT_COLUMNS)
    for name in chosen:
        _known_column(name)
    where, params = filters.where()
    if limit is None and output == "table":
        limit = TABLE_LIMIT
    total = db.con.execute(f"SELECT count(*) FROM records WHERE {where}", params).fetchone()
    if not total or total[0] == 0:
        return nothing_matches(db, filters)
    sql = (f"SELECT {', '.join(_quoted(c) for c in chosen)} FROM records WHERE {where} "
           "ORDER BY ts, node, seq" + (f" LIMIT {int(limit)}" if limit else ""))
    rows = db.con.execute(sql, params).fetchall()
    emit(chosen, rows, output)
    if output == "table" and total[0] > len(rows):
        print(f"({total[0] - len(rows)} more; --limit N to see more, --json or --csv for all)",
              file=sys.stderr)
    return 0


def stats(db: AuditDB, filters: Filters, by: Sequence[str], output: str) -> int:
    dims = [d for group in by for d in group.split(",") if d] or ["agent"]
    for d in dims:
        if d not in DIMENSIONS:
            raise AuditDataError(f"--by {d!r}: not a dimension{_near(d, DIMENSIONS)}; "
                                 f"dimensions: {', '.join(DIMENSIONS)}")
    where, params = filters.where()
    keys = ", ".join(_quoted(d) for d in dims)
    rows = db.con.execute(f"""
        SELECT {keys}, count(*) FILTER (kind = 'request') AS requests,
               count(*) FILTER (decision = 'deny') AS denials,
               sum(input_tokens) AS tokens_in, sum(output_tokens) AS tokens_out,
               round(sum(spend_usd), 6) AS spend_usd,
               count(*) FILTER (cache_status = 'hit') AS cache_hits,
               sum(saved_cache_tokens) AS saved_tokens,
               round(sum(coalesce(saved_cache_usd, 0) + coalesce(saved_routing_usd, 0))
                     FILTER (saved_cache_usd IS NOT NULL OR saved_routing_usd IS NOT NULL),
                     6) AS saved_usd,
               count(*) FILTER (served_by_vendor IS NOT NULL) AS failovers,
               count(*) FILTER (attempts > 1) AS retried,
               round(quantile_cont(latency_ms, 0.5), 1) AS p50_ms,
               round(quantile_cont(latency_ms, 0.95), 1) AS p95_ms
        FROM records WHERE {where} GROUP BY ALL ORDER BY {keys}""", params).fetchall()
    if not rows:
        return nothing_matches(db, filters)
    redacted = _redactions_by(db, dims, where, params)
    header = [*dims, "requests", "denials", "redactions", "tokens_in", "tokens_out",
              "spend_usd", *QUIET_STATS, "p50_ms", "p95_ms"]
    table = [(*r[:len(dims)], r[len(dims)], r[len(dims) + 1],
              redacted.get(tuple(r[:len(dims)]), {} if output == "json" else None),
              *r[len(dims) + 2:]) for r in rows]
    if output == "table":
        header, table = _without_idle(header, table, QUIET_STATS)
    emit(header, table, output)
    return 0


def _without_idle(header: list[str], table: list[tuple[Any, ...]], names: Sequence[str]
                  ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """`header` and `table` without the columns in `names` that are 0 or empty in every
    row (a journal from before the cache, or a proxy that does not use it)."""
    keep = [i for i, h in enumerate(header)
            if h not in names or any(row[i] not in (None, 0) for row in table)]
    return [header[i] for i in keep], [tuple(row[i] for i in keep) for row in table]


def _redactions_by(db: AuditDB, dims: list[str], where: str, params: list[Any]
                   ) -> dict[tuple[Any, ...], Any]:
    """dims -> {entity: count} (request and answer together), most found first."""
    keys = ", ".join(_quoted(d) for d in dims)
    found = db.con.execute(f"""
        SELECT {keys}, e.key, sum(list_sum(map_values(e.value))) AS n FROM (
            SELECT {keys}, unnest(map_entries(redactions)) AS e FROM records WHERE {where}
            UNION ALL
            SELECT {keys}, unnest(map_entries(response_redactions)) AS e FROM records
            WHERE {where}) GROUP BY ALL ORDER BY n DESC""", params + params).fetchall()
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    for row in found:
        out.setdefault(tuple(row[:len(dims)]), {})[row[len(dims)]] = int(row[-1])
    return out


def sql(db: AuditDB, statement: str, output: str) -> int:
    import duckdb

    try:
        result = db.con.execute(statement)
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise AuditDataError(f"{message}\nthe table is `records`, its columns: "
                             f"{', '.join(NAMES)} (see the README)") from None
    if result.description is None:
        return 0
    emit([d[0] for d in result.description], result.fetchall(), output)
    return 0


# -- output ---------------------------------------------------------------------------------

def emit(header: Sequence[str], rows: Sequence[Sequence[Any]], output: str) -> None:
    out = sys.stdout
    if output == "json":
        for row in rows:
            out.write(orjson.dumps(dict(zip(header, map(_plain, row), strict=True)),
                                   option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
                                   ).decode() + "\n")
    elif output == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([_cell(v) for v in row] for row in rows)
    else:
        cells = [[_cell(v) or "-" for v in row] for row in rows]
        widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
        numeric = [all(_is_number(r[i]) for r in rows) and rows for i in range(len(header))]
        for line in [list(header), *cells]:
            out.write("  ".join(c.rjust(w) if numeric[i] else c.ljust(w)
                                for i, (c, w) in enumerate(zip(line, widths, strict=True)))
                      .rstrip() + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{_count(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _count(value: Any) -> str:
    return str(sum(value.values())) if isinstance(value, dict) else str(value)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _quoted(name: str) -> str:
    return f'"{name}"'


def _known_column(name: str) -> None:
    if name not in NAMES:
        raise AuditDataError(f"unknown column {name!r}{_near(name, NAMES)}; columns: "
                             f"{', '.join(NAMES)}")


def _near(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def nothing_matches(db: AuditDB, filters: Filters) -> int:
    first, last = db.span()
    held = f"the journal holds {_cell(first)} to {_cell(last)}" if first else \
        "the journal holds no records"
    print(f"egressguard: no records match ({filters.describe()}); {held}", file=sys.stderr)
    return 1


# -- export ---------------------------------------------------------------------------------

FORMATS = ("jsonl", "csv", "parquet")
MANIFEST = "manifest.json"


_JOURNAL = "regexp_replace(file, '/[^/]*$', '')"  # the folder a record's file is in


def export(db: AuditDB, filters: Filters, fmt: str, out: Path) -> int:
    """The records in the filters' time range, per journal as a contiguous run of its
    chain (so `audit verify` can check it: every record between the first and the last
    selected, checkpoints included), extended to the checkpoint after it (whose
    signature then covers the whole run), plus a manifest."""
    if fmt not in FORMATS:
        raise AuditDataError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if out.exists() and any(out.iterdir()):
        raise AuditDataError(f"{out} is not empty: export into a new folder")
    where, params = filters.where()
    spans = db.con.execute(f"""
        SELECT {_JOURNAL} AS journal, any_value(node), min(seq), max(seq) FROM records
        WHERE {where} GROUP BY journal ORDER BY journal""", params).fetchall()
    if not spans:
        return nothing_matches(db, filters)
    out.mkdir(parents=True, exist_ok=True)
    files, checkpoints = [], []
    for journal, node, first, last in spans:
        closing = db.con.execute(f"""SELECT min(seq) FROM records WHERE {_JOURNAL} = ?
            AND kind = 'checkpoint' AND seq >= ?""", [journal, last]).fetchone()
        last = closing[0] if closing and closing[0] is not None else last
        rows = db.con.execute(f"""SELECT file, line, id, seq, kind, checkpoint FROM records
            WHERE {_JOURNAL} = ? AND seq BETWEEN ? AND ? ORDER BY seq""",
                              [journal, first, last]).fetchall()
        name = f"records-{node or Path(journal).name}.{fmt}"
        _write_export(db, out / name, fmt, journal, rows)
        files.append({"name": name, "node": node, "journal": journal, "records": len(rows),
                      "first_id": rows[0][2], "last_id": rows[-1][2],
                      "first_seq": rows[0][3], "last_seq": rows[-1][3],
                      "sha256": _sha256(out / name)})
        checkpoints += [{"file": name, "id": r[2], "seq": r[3],
                         "key_id": orjson.loads(r[5]).get("key_id") if r[5] else None}
                        for r in rows if r[4] == "checkpoint"]
    manifest = {"egressguard_export": 1, "created": _cell(datetime.now(UTC).replace(
        tzinfo=None)), "selection": filters.describe(), "format": fmt, "files": files,
        "checkpoints": checkpoints}
    (out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    total = sum(f["records"] for f in files)
    print(f"exported {total} records in {len(files)} file(s) to {out} (with {MANIFEST}); "
          f"check it with: egressguard audit verify --pubkey KEY {out}")
    return 0


def _write_export(db: AuditDB, path: Path, fmt: str, journal: str,
                  rows: list[tuple[Any, ...]]) -> None:
    lines = _original_lines(rows)
    if fmt == "jsonl":
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        return
    # CSV and Parquet: the typed columns, and the record exactly as written (`record`),
    # which is what `audit verify` checks
    db.con.execute("CREATE OR REPLACE TEMP TABLE export_lines (seq BIGINT, record VARCHAR)")
    db.con.executemany("INSERT INTO export_lines VALUES (?, ?)",
                       [(r[3], line.decode()) for r, line in zip(rows, lines, strict=True)])
    columns = ", ".join(f"r.{_quoted(n)}" for n in NAMES if n not in ("file", "line"))
    select = (f"SELECT {columns}, e.record FROM records r JOIN export_lines e USING (seq) "
              f"WHERE {_JOURNAL.replace('file', 'r.file')} = {_sql_text(journal)} "
              "ORDER BY seq")
    option = "(FORMAT parquet)" if fmt == "parquet" else "(FORMAT csv, HEADER true)"
    db.con.execute(f"COPY ({select}) TO '{_sql_path(path)}' {option}")


def _original_lines(rows: list[tuple[Any, ...]]) -> list[bytes]:
    """The exact journal lines of `rows` ((file, line, ...), in seq order)."""
    wanted: dict[str, set[int]] = {}
    for row in rows:
        wanted.setdefault(row[0], set()).add(row[1])
    found: dict[tuple[str, int], bytes] = {}
    for file, numbers in wanted.items():
        for n, raw in enumerate(_numbered(Path(file)), 1):
            if n in numbers:
                found[(file, n)] = raw
    return [found[(r[0], r[1])] for r in rows]


def _numbered(path: Path) -> list[bytes]:
    """The file's lines as DuckDB numbered them (blank lines are not rows)."""
    return [line.raw for line in read_lines([path])]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _sql_text(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def read_export_records(path: Path) -> list[bytes]:
    """The records of an exported CSV or Parquet file, as written (its `record`)."""
    import duckdb

    con = duckdb.connect()
    try:
        reader = "read_parquet" if path.suffix == ".parquet" else "read_csv"
        return [r[0].encode() for r in con.execute(
            f"SELECT record FROM {reader}(?) ORDER BY seq", [str(path)]).fetchall()]
    finally:
        con.close()


def check_manifest(folder: Path) -> tuple[list[Path], list[str]]:
    """The export's files (in order) and what is wrong with them against the manifest."""
    problems: list[str] = []
    try:
        manifest = orjson.loads((folder / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        return [], [f"{folder / MANIFEST}: not a readable export manifest ({exc})"]
    files = []
    for entry in manifest.get("files", []):
        path = folder / entry["name"]
        files.append(path)
        if not path.exists():
            problems.append(f"{path}: listed in the manifest, missing")
        elif _sha256(path) != entry["sha256"]:
            problems.append(f"{path}: its SHA-256 is not the manifest's: the file was changed")
    return files, problems


def lines_of_export(path: Path) -> Iterator[Line]:
    """An export file's records as written, as lines to verify (CSV and Parquet: their
    `record` column)."""
    if path.suffix not in (".csv", ".parquet"):
        yield from read_lines([path])
        return
    for n, raw in enumerate(read_export_records(path), 1):
        yield Line(str(path), n, raw)


def column_docs() -> str:
    """The `records` columns, for the README and `audit sql --columns`."""
    width = max(len(n) for n in NAMES)
    return "\n".join(f"{n.ljust(width)}  {t:<34} {what}" for n, t, _, what in COLUMNS)
