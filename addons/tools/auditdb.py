"""The audit trail as one DuckDB table, `records`, for auditors' queries.

Journal files (plain or gzipped, rotated, several journals at once) and exported
JSONL files are read by DuckDB's own JSON reader into typed columns (`COLUMNS`, the
list the README documents). A line that is not a record — corrupt, or cut off by a
crash — is skipped and reported with its file and line; the rest stays readable.

Reading a million records (a gigabyte of JSON) takes DuckDB about ten seconds here, so
a cache keeps them: a DuckDB file per set of journal paths, under the user's cache
directory. Journal files only grow, and closed files never change: a file the proxy
appended to is read from where the last read stopped, one that changed otherwise is
read again whole, the rest not at all. The cache holds nothing the journal does not;
`audit verify` is what proves the journal, not the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from egressguard.backends.journal import segments

if TYPE_CHECKING:
    import duckdb

_COUNTS = "MAP(VARCHAR, MAP(VARCHAR, BIGINT))"
# name, DuckDB type, SQL over the raw JSON row `r`, meaning
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("id", "VARCHAR", "r.id", "record id (UUIDv7 hex)"),
    ("seq", "BIGINT", "r.seq", "position in its node's journal"),
    ("node", "VARCHAR", "r.node", "egressguard instance that wrote it"),
    ("kind", "VARCHAR", "r.kind", "request, connect, policy or checkpoint"),
    ("ts", "TIMESTAMP", "strptime(r.ts, '%Y-%m-%dT%H:%M:%S.%gZ')",
     "when the request started (UTC)"),
    ("day", "DATE", "CAST(strptime(r.ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS DATE)", "its UTC day"),
    ("agent", "VARCHAR", "r.agent", "agent name from its token"),
    ("team", "VARCHAR", "r.team", "the agent's team"),
    ("token_id", "VARCHAR", "r.token_id", "id of the agent's token"),
    ("client", "VARCHAR", "r.client", "agent's address host:port"),
    ("vendor", "VARCHAR", "r.vendor", "model vendor (catalogue name)"),
    ("host", "VARCHAR", "r.host", "destination host"),
    ("method", "VARCHAR", "r.method", "HTTP method"),
    ("path", "VARCHAR", "r.path", "URL path (never the query)"),
    ("model", "VARCHAR", "r.model", "model sent (if routed, not the one asked for)"),
    ("stream", "BOOLEAN", "r.stream", "streamed answer asked for"),
    ("decision", "VARCHAR", "r.decision", "allow or deny"),
    ("reason", "VARCHAR", "r.reason", "why (stable code)"),
    ("rule", "VARCHAR", "r.rule", "deciding policy rule"),
    ("policy", "VARCHAR", "r.policy", "sha256 of the policy in force"),
    ("status", "INTEGER", "r.status", "HTTP status the agent got"),
    ("error", "VARCHAR", "r.error", "connection error, if any"),
    ("message", "VARCHAR", "r.message", "refusal message shown to the agent"),
    ("latency_ms", "DOUBLE", "r.latency_ms", "time in egressguard and upstream, ms"),
    ("upstream_ms", "DOUBLE", "r.upstream_ms", "time until the vendor answered, ms"),
    ("bytes_in", "BIGINT", "r.bytes_in", "request body bytes"),
    ("bytes_out", "BIGINT", "r.bytes_out", "response body bytes"),
    ("input_tokens", "BIGINT", "CAST(r.usage->>'input_tokens' AS BIGINT)",
     "input tokens the vendor counted"),
    ("output_tokens", "BIGINT", "CAST(r.usage->>'output_tokens' AS BIGINT)",
     "output tokens the vendor counted"),
    ("spend_usd", "DOUBLE", "r.spend_usd", "cost at the price table then in force"),
    ("redactions", _COUNTS, f"CAST(r.redactions AS {_COUNTS})",
     "entity -> action -> count, in the request"),
    ("response_redactions", _COUNTS, f"CAST(r.response_redactions AS {_COUNTS})",
     "entity -> action -> count, secrets in the answer"),
    ("redacted_entities", "VARCHAR[]",
     f"list_distinct(list_concat(COALESCE(map_keys(CAST(r.redactions AS {_COUNTS})), []), "
     f"COALESCE(map_keys(CAST(r.response_redactions AS {_COUNTS})), [])))",
     "entity types found in the request or the answer"),
    ("clamps", "JSON", "r.clamps", "fields egressguard clamped"),
    ("limits", "JSON", "r.limits", "limit state"),
    ("credential_path", "VARCHAR", "r.credential->>'path'", "Vault path of the key used"),
    ("credential_version", "BIGINT", "CAST(r.credential->>'version' AS BIGINT)",
     "its version"),
    ("requested_model", "VARCHAR", "r.routing->>'requested_model'",
     "model the agent asked for, if a route rewrote it"),
    ("routed_by", "VARCHAR[]", "CAST(r.routing->'by' AS VARCHAR[])",
     "what rewrote it, in order: alias, team, objective"),
    ("attempts", "INTEGER", "CAST(json_array_length(r.attempts) AS INTEGER)",
     "tries the relay made (null: not relayed, or a cache hit)"),
    ("attempt_list", "JSON", "r.attempts",
     "each try: vendor, model, key path, status, error, ms"),
    ("served_by_vendor", "VARCHAR", "r.served_by->>'vendor'",
     "fallback vendor that answered instead of `vendor`"),
    ("served_by_model", "VARCHAR", "r.served_by->>'model'", "the model asked of it"),
    ("cache_status", "VARCHAR", "r.cache->>'status'",
     "hit, miss or bypass (null: the rule has no cache)"),
    ("cache_kind", "VARCHAR", "r.cache->>'kind'", "on a hit: exact or semantic"),
    ("cache_similarity", "DOUBLE", "CAST(r.cache->>'similarity' AS DOUBLE)",
     "on a semantic hit: cosine similarity"),
    ("cache_why", "VARCHAR", "r.cache->>'why'", "on a bypass: why it could not be cached"),
    ("saved_cache_tokens", "BIGINT", "CAST(r.savings->>'cache_tokens' AS BIGINT)",
     "on a hit: tokens of the cached answer, not bought"),
    ("saved_cache_usd", "DOUBLE", "CAST(r.savings->>'cache_usd' AS DOUBLE)",
     "on a hit: what that answer cost when bought"),
    ("saved_routing_usd", "DOUBLE", "CAST(r.savings->>'routing_usd' AS DOUBLE)",
     "price at requested_model less spend_usd (< 0: dearer)"),
    ("checkpoint", "JSON", "r.checkpoint", "a checkpoint's fields"),
    ("prev_hash", "VARCHAR", "r.prev_hash", "hash of the record before it"),
    ("hash", "VARCHAR", "r.hash", "the record's hash"),
    ("file", "VARCHAR", "r.filename", "the journal file it was read from"),
    ("line", "BIGINT", "r.line", "its line in that file"),
)
NAMES = tuple(c[0] for c in COLUMNS)
# what read_json is told the raw lines hold (nested objects kept as JSON)
_RAW = {"id": "VARCHAR", "seq": "BIGINT", "node": "VARCHAR", "kind": "VARCHAR",
        "ts": "VARCHAR", "agent": "VARCHAR", "team": "VARCHAR", "token_id": "VARCHAR",
        "client": "VARCHAR", "vendor": "VARCHAR", "host": "VARCHAR", "method": "VARCHAR",
        "path": "VARCHAR", "model": "VARCHAR", "stream": "BOOLEAN", "decision": "VARCHAR",
        "reason": "VARCHAR", "rule": "VARCHAR", "policy": "VARCHAR", "status": "INTEGER",
        "error": "VARCHAR", "message": "VARCHAR", "latency_ms": "DOUBLE",
        "upstream_ms": "DOUBLE", "bytes_in": "BIGINT", "bytes_out": "BIGINT",
        "usage": "JSON", "spend_usd": "DOUBLE", "redactions": "JSON",
        "response_redactions": "JSON", "clamps": "JSON", "limits": "JSON",
        "credential": "JSON", "routing": "JSON", "attempts": "JSON", "served_by": "JSON",
        "cache": "JSON", "savings": "JSON", "checkpoint": "JSON", "prev_hash": "VARCHAR",
        "hash": "VARCHAR"}  # a field older journals lack reads as null
_SCHEMA_VERSION = "6"  # bump when COLUMNS change: the cache is rebuilt
_READ_OPTIONS = ("format='newline_delimited', columns={"
                 + ", ".join(f"'{k}': '{v}'" for k, v in _RAW.items())
                 + "}, ignore_errors=true, filename=true, maximum_object_size=16777216")
_RELATIVE = re.compile(r"^(\d+)\s*(m|h|d|w)$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class AuditDataError(Exception):
    """Input an auditor must fix (a path, a time, a column); the message says how."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A journal line that is not a record."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: not a readable audit record (corrupt, or cut off); " \
               "skipped"


class AuditDB:
    """`records` over the given journal paths; `skipped` lists the unreadable lines."""

    def __init__(self, paths: Iterable[Path], cache: Path | None = None) -> None:
        self.files = list(_files(paths))
        if not self.files:
            raise AuditDataError("no journal files in " + ", ".join(map(str, paths)))
        import duckdb  # here: the rest of the CLI starts without it

        self.con: duckdb.DuckDBPyConnection = duckdb.connect(str(cache) if cache else
                                                             ":memory:")
        self.skipped: list[Skipped] = []
        self._load()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> AuditDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loading ---------------------------------------------------------------------
    def _load(self) -> None:
        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        version = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None or version[0] != _SCHEMA_VERSION:
            con.execute("DROP TABLE IF EXISTS records")
            con.execute("DROP TABLE IF EXISTS loaded")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", [_SCHEMA_VERSION])
        con.execute("CREATE TABLE IF NOT EXISTS records ("
                    + ", ".join(f'"{n}" {t}' for n, t, _, _ in COLUMNS) + ")")
        con.execute("CREATE TABLE IF NOT EXISTS loaded (file VARCHAR PRIMARY KEY, "
                    "stamp VARCHAR, inode BIGINT, bytes BIGINT, lines BIGINT, "
                    "skipped BIGINT[])")
        known = {row[0]: row[1:] for row in con.execute(
            "SELECT file, stamp, inode, bytes, lines FROM loaded").fetchall()}
        whole, grown = [], []
        for path in self.files:
            entry = known.get(str(path))
            st = path.stat()
            if entry is None or entry[0] != _stamp(path):
                appended = entry is not None and entry[1] == st.st_ino and \
                    st.st_size > entry[2] > 0 and path.suffix != ".gz"
                (grown if appended else whole).append(path)
        con.execute("BEGIN")  # one transaction: fast, and an interrupted load keeps nothing
        for gone in set(known) - {str(f) for f in self.files}:
            self._forget(gone)
        for path in whole:
            if str(path) in known:
                self._forget(str(path))
        if whole:
            self._read_whole(whole)
        for path in grown:
            self._read_appended(path, int(known[str(path)][2]), int(known[str(path)][3]))
        con.execute("COMMIT")
        for file, skipped, done, lines in con.execute(
                "SELECT file, skipped, bytes, lines FROM loaded ORDER BY file").fetchall():
            self.skipped += [Skipped(file, n) for n in skipped or []]
            if not file.endswith(".gz") and Path(file).stat().st_size > done:
                self.skipped.append(Skipped(file, lines + 1))  # cut off (or being written)

    def _forget(self, file: str) -> None:
        self.con.execute("DELETE FROM records WHERE file = ?", [file])
        self.con.execute("DELETE FROM loaded WHERE file = ?", [file])

    def _read_whole(self, paths: list[Path]) -> None:
        """Files read whole, all in one pass of DuckDB's reader (files in order, lines in
        order: a line's number is its row's position less its file's first)."""
        self.con.execute(f"""CREATE OR REPLACE TEMP TABLE raw AS
            SELECT *, row_number() OVER () AS n FROM read_json(?, {_READ_OPTIONS})""",
                         [[str(p) for p in paths]])
        self.con.execute("""CREATE OR REPLACE TEMP TABLE raw AS
            SELECT raw.* EXCLUDE (n), n - f.first + 1 AS line FROM raw
            JOIN (SELECT filename, min(n) AS first FROM raw GROUP BY filename) f
            USING (filename)""")
        self._insert_raw()
        rows = dict(self.con.execute(
            "SELECT filename, count(*) FROM raw GROUP BY filename").fetchall())
        bad: dict[str, list[int]] = {}
        for file, line in self.con.execute("SELECT filename, line FROM raw WHERE id IS NULL "
                                           "OR hash IS NULL ORDER BY filename, line"
                                           ).fetchall():
            bad.setdefault(file, []).append(line)
        entries = []
        for path in paths:
            st = path.stat()
            partial = _partial_tail(path)  # a line still being written: read next time
            lines = rows.get(str(path), 0) - (1 if partial else 0)
            entries.append((str(path), _stamp(path), st.st_ino, st.st_size - partial, lines,
                            [n for n in bad.get(str(path), []) if n <= lines]))
        self.con.executemany("INSERT OR REPLACE INTO loaded VALUES (?, ?, ?, ?, ?, ?)",
                             entries)

    def _read_appended(self, path: Path, done_bytes: int, done_lines: int) -> None:
        """A file the proxy has appended to since it was read: only the new lines."""
        with open(path, "rb") as f:
            f.seek(done_bytes)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]  # a line still being written waits
        if data:
            with tempfile.NamedTemporaryFile(suffix=".jsonl") as tail:
                tail.write(data)
                tail.flush()
                self.con.execute(f"""CREATE OR REPLACE TEMP TABLE raw AS SELECT * EXCLUDE
                    (filename, n), ? AS filename, n + ? AS line FROM (SELECT *, row_number()
                    OVER () AS n FROM read_json(?, {_READ_OPTIONS}))""",
                                 [str(path), done_lines, tail.name])
                self._insert_raw()
        self._remember(path, done_lines + data.count(b"\n"), done_bytes + len(data),
                       keep_skipped=True)

    def _insert_raw(self) -> None:
        self.con.execute("INSERT INTO records SELECT " + ", ".join(
            f'{sql} AS "{name}"' for name, _, sql, _ in COLUMNS)
            + " FROM raw r WHERE r.id IS NOT NULL AND r.hash IS NOT NULL")

    def _remember(self, path: Path, lines: int, done: int, keep_skipped: bool = False) -> None:
        """What was read of `path`: its stamp, and the complete lines and bytes so far
        (a line still being written is read next time); the unreadable lines read now."""
        bad = [n for (n,) in self.con.execute(
            "SELECT line FROM raw WHERE filename = ? AND (id IS NULL OR hash IS NULL) "
            "AND line <= ? ORDER BY line", [str(path), lines]).fetchall()]
        if keep_skipped:
            before = self.con.execute("SELECT skipped FROM loaded WHERE file = ?",
                                      [str(path)]).fetchone()
            bad = [*(before[0] or [] if before else []), *bad]
        st = path.stat()
        self.con.execute("INSERT OR REPLACE INTO loaded VALUES (?, ?, ?, ?, ?, ?)",
                         [str(path), _stamp(path), st.st_ino, done, lines, bad])

    # -- helpers for the commands ------------------------------------------------------
    def span(self) -> tuple[datetime | None, datetime | None]:
        first, last = self.con.execute(  # of what happened: checkpoints are bookkeeping
            "SELECT min(ts), max(ts) FROM records WHERE kind IN ('request', 'connect')"
        ).fetchone() or (None, None)
        return first, last


def cache_for(paths: Iterable[Path]) -> Path | None:
    """The cache file for these journal paths, or None when no cache folder is
    writable (everything is then read afresh)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "egressguard"
    key = hashlib.sha256("\n".join(sorted(str(p.resolve()) for p in paths)).encode())
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return base / f"audit-{key.hexdigest()[:16]}.duckdb" if os.access(base, os.W_OK) else None


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An absolute time (ISO 8601, UTC unless it says otherwise; a date is its midnight)
    or one relative to now: `30m`, `24h`, `7d`, `2w` ago. Naive UTC for DuckDB."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return (now - timedelta(**{_UNITS[m[2]]: int(m[1])})).replace(tzinfo=None)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise AuditDataError(f"{text!r} is not a time: give ISO 8601 (2026-12-01, "
                             "2026-12-01T09:30:00Z) or a span back from now (30m, 24h, "
                             "7d, 2w)") from None
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from (s.path for s in segments(path))
        elif path.exists():
            yield path
        else:
            raise AuditDataError(f"no such file or directory: {path}")


def _partial_tail(path: Path) -> int:
    """Bytes of a last line without its newline (a plain file being written); 0 else."""
    if path.suffix == ".gz":
        return 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    return 0 if not tail or tail.endswith(b"\n") else len(tail) - tail.rfind(b"\n") - 1


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
