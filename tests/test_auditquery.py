"""Auditors' tools through the real CLI (`egressguard audit query | stats | sql | export`,
`egressguard.tools.auditdb` / `auditquery`): every filter, every output, answers checked
against the records written, exports that `audit verify` accepts (and rejects once
changed), and every input mistake one clear line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from egressguard.backends import housekeeping
from egressguard.backends.journal import Journal, Settings, read_records, segments
from egressguard.core import checkpoints, records
from egressguard.tools.auditdb import COLUMNS, AuditDataError, AuditDB, parse_time
from egressguard.tools.auditquery import QUIET_STATS, Filters

KEY = Ed25519PrivateKey.generate()
START = datetime(2026, 11, 1, tzinfo=UTC)
AGENTS = {"billing-bot": "finance", "triage": "support", "drafter": "support",
          "research-1": "research"}


def facts(i: int) -> records.RequestFacts:
    agent = list(AGENTS)[i % 4]
    deny = i % 10 == 0
    status = 403 if deny else (503 if i % 17 == 0 else 200)
    return records.RequestFacts(
        id=records.new_id(), started=(START + timedelta(hours=i)).timestamp(),
        client="10.0.0.2:4000", method="POST", host="api.openai.com",
        path="/v1/chat/completions", node="egress-1", agent=agent, team=AGENTS[agent],
        vendor="anthropic" if i % 3 == 0 else "openai",
        model="claude-sonnet-4-5" if i % 3 == 0 else "gpt-4o-mini",
        decision="deny" if deny else "allow",
        reason="model_not_allowed" if deny else "allowed",
        rule="support-default" if AGENTS[agent] == "support" else "everyone",
        status=status, latency_ms=float(10 + i % 50), bytes_in=100, bytes_out=200,
        usage=None if deny else {"input_tokens": 100 + i, "output_tokens": 10 + i % 7},
        spend_usd=None if deny else round(0.001 * (i % 5 + 1), 6),
        redactions={"EMAIL_ADDRESS": {"mask": 2}} if i % 7 == 0 else
        {"PERSON": {"pseudonymize": 1}} if i % 11 == 0 else None,
        response_redactions={"GITHUB_TOKEN": {"mask": 1}} if i % 13 == 0 else None)


N = 240  # ten days of one request an hour


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("audit") / "journal"
    j = Journal(directory, key=KEY, node="egress-1",
                settings=Settings(segment_bytes=40_000, checkpoint_records=50))
    j.open()
    for i in range(N):
        j.append_sync(records.build(facts(i)))
    j.close()
    housekeeping.run(directory, segments(directory)[-1].number, [], housekeeping.Retention())
    return directory


@pytest.fixture(scope="module")
def written(journal: Path) -> list[dict[str, Any]]:
    return [r for r in read_records([journal]) if r["kind"] == "request"]


def attempt(vendor: str, model: str, status: int | None, error: str | None = None
            ) -> dict[str, Any]:
    return {"vendor": vendor, "model": model, "key": f"egressguard/vendors/{vendor}",
            "status": status, "error": error, "ms": 120.5}


def relayed(i: int) -> records.RequestFacts:
    """facts(i) as a proxy with a cache, routes and fallbacks records them: support's
    rule caches (hits exact and semantic, one without a price), finance's routes to a
    cheaper model (or, now and then, a dearer one), research's retries and fails over."""
    f = facts(i)
    if f.decision == "deny" or f.usage is None or f.spend_usd is None or f.vendor is None:
        return f
    if f.team == "support":
        if i % 3 == 0:
            f.cache = {"status": "hit", "kind": "exact"} if i % 2 else \
                {"status": "hit", "kind": "semantic", "similarity": 0.97}
            f.savings = {"cache_tokens": sum(v or 0 for v in f.usage.values()),
                         "cache_usd": None if i % 5 == 0 else f.spend_usd}
            f.usage, f.spend_usd, f.upstream_ms = None, 0.0, None
        elif i % 3 == 1:
            f.cache = {"status": "miss"}
            f.attempts = [attempt(f.vendor, f.model or "", f.status)]
        else:
            f.cache = {"status": "bypass", "why": "temperature is not 0"}
    elif f.team == "finance":
        f.routing = {"requested_model": "gpt-4.1", "model": f.model,
                     "by": ["alias", "team"] if i % 2 else ["objective"]}
        f.savings = {"routing_usd": round(0.0045 - f.spend_usd, 9)}  # < 0 at times
    elif f.team == "research":
        other = "openai" if f.vendor == "anthropic" else "anthropic"
        if i % 8 == 3:  # research is i % 4 == 3: half fail over, half retry
            f.attempts = [attempt(f.vendor, f.model or "", 0, "Server disconnected"),
                          attempt(other, "fallback-model", 200)]
            f.served_by = {"vendor": other, "model": "fallback-model"}
        else:
            f.attempts = [attempt(f.vendor, f.model or "", 429),
                          attempt(f.vendor, f.model or "", 200)]
    return f


def write_journal(directory: Path, made: list[records.RequestFacts],
                  drop: tuple[str, ...] = ()) -> Path:
    """A journal of these records; `drop`: fields left out, as an older proxy wrote."""
    j = Journal(directory, key=KEY, node="egress-1",
                settings=Settings(checkpoint_records=50))
    j.open()
    for f in made:
        record = records.build(f)
        for name in drop:
            del record[name]
        j.append_sync(record)
    j.close()
    return directory


NEW_FIELDS = ("routing", "attempts", "served_by", "cache", "savings")


@pytest.fixture(scope="module")
def relayed_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_journal(tmp_path_factory.mktemp("relayed") / "journal",
                         [relayed(i) for i in range(N)])


@pytest.fixture(scope="module")
def relayed_written(relayed_journal: Path) -> list[dict[str, Any]]:
    return [r for r in read_records([relayed_journal]) if r["kind"] == "request"]


def audit(*args: str | Path, cache: Path | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)} if cache else None
    done = subprocess.run([sys.executable, "-m", "egressguard.cli", "audit",
                           *map(str, args)], capture_output=True, text=True, env=env,
                          check=False)
    return done.returncode, done.stdout, done.stderr


def rows(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# -- the table and its loading -----------------------------------------------------

def test_every_record_is_loaded_from_plain_and_gzipped_files(journal: Path,
                                                            written: list[dict]) -> None:
    assert any(s.compressed for s in segments(journal))
    with AuditDB([journal]) as db:
        count, kinds = db.con.execute("SELECT count(*), list(DISTINCT kind ORDER BY kind) "
                                      "FROM records").fetchone()  # type: ignore[misc]
        assert kinds == ["checkpoint", "request"]
        assert db.con.execute("SELECT count(*) FROM records WHERE kind = 'request'"
                              ).fetchone() == (len(written),)
        assert db.skipped == []


def test_a_corrupt_and_a_cut_off_line_are_reported_and_the_rest_read(
        journal: Path, tmp_path: Path) -> None:
    copy = tmp_path / "journal"
    copy.mkdir()
    plain = [s.path for s in segments(journal) if not s.compressed]
    lines = plain[0].read_bytes().splitlines(keepends=True)
    damaged = [*lines[:2], b'{"id": "x", this is not json\n', *lines[2:], lines[0][:40]]
    (copy / plain[0].name).write_bytes(b"".join(damaged))
    code, out, err = audit("query", "--no-cache", "--json", copy)
    assert code == 0
    assert len(rows(out)) == sum(1 for line in lines if b'"kind":"request"' in line)
    target = copy / plain[0].name
    assert err.splitlines() == [
        f"egressguard: {target}:3: not a readable audit record (corrupt, or cut off); skipped",
        f"egressguard: {target}:{len(damaged)}: not a readable audit record (corrupt, or "
        "cut off); skipped"]


def test_the_cache_reads_a_file_again_only_when_it_changed(journal: Path,
                                                           tmp_path: Path) -> None:
    copy = tmp_path / "journal"
    copy.mkdir()
    for s in segments(journal):
        (copy / s.path.name).write_bytes(s.path.read_bytes())
    cache = tmp_path / "cache.duckdb"
    with AuditDB([copy], cache) as db:
        first = dict(db.con.execute("SELECT file, stamp FROM loaded").fetchall())
    newest = segments(copy)[-1].path
    with open(newest, "ab") as f:  # the file being written grows
        f.write(newest.read_bytes().splitlines(keepends=True)[-1])
    with AuditDB([copy], cache) as db:
        second = dict(db.con.execute("SELECT file, stamp FROM loaded").fetchall())
        assert db.con.execute("SELECT count(*) FROM records WHERE file = ?",
                              [str(newest)]).fetchone()[0] == \
            len(newest.read_bytes().splitlines())  # type: ignore[index]
    changed = {f for f in first if first[f] != second[f]}
    assert changed == {str(newest)}


@pytest.mark.parametrize("text, expected", [
    ("2026-12-01", datetime(2026, 12, 1)),
    ("2026-12-01T09:30:00Z", datetime(2026, 12, 1, 9, 30)),
    ("2026-12-01T10:30:00+01:00", datetime(2026, 12, 1, 9, 30)),
    ("24h", datetime(2026, 12, 6, 12)),
    ("30m", datetime(2026, 12, 7, 11, 30)),
    ("2w", datetime(2026, 11, 23, 12)),
])
def test_times(text: str, expected: datetime) -> None:
    assert parse_time(text, now=datetime(2026, 12, 7, 12, tzinfo=UTC)) == expected


def test_a_time_that_does_not_parse() -> None:
    with pytest.raises(AuditDataError, match=r"'yesterday' is not a time: give ISO 8601"):
        parse_time("yesterday")


# -- query ---------------------------------------------------------------------------

def expect(written: list[dict], **match: Any) -> list[str]:
    return [r["id"] for r in written if all(
        (r[k] in v if isinstance(v, set) else r[k] == v) for k, v in match.items())]


@pytest.mark.parametrize("args, match", [
    (("--agent", "triage"), {"agent": "triage"}),
    (("--team", "support"), {"team": "support"}),
    (("--team", "finance", "--team", "research"), {"team": {"finance", "research"}}),
    (("--vendor", "anthropic"), {"vendor": "anthropic"}),
    (("--model", "gpt-4o-mini", "--decision", "allow"), {"model": "gpt-4o-mini",
                                                        "decision": "allow"}),
    (("--rule", "support-default"), {"rule": "support-default"}),
    (("--status", "503"), {"status": 503}),
    (("--status", "4xx"), {"status": 403}),
])
def test_filters(journal: Path, written: list[dict], args: tuple[str, ...],
                 match: dict[str, Any]) -> None:
    code, out, _ = audit("query", "--no-cache", "--json", *args, journal)
    assert code == 0
    assert [r["id"] for r in rows(out)] == expect(written, **match)


def test_entity_and_time_filters(journal: Path, written: list[dict]) -> None:
    code, out, _ = audit("query", "--no-cache", "--json", "--entity", "GITHUB_TOKEN",
                         "--since", "2026-11-03", "--until", "2026-11-05T12:00:00Z", journal)
    low, high = datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 5, 12, tzinfo=UTC)
    want = [r["id"] for r in written if r["response_redactions"]
            and low <= datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) < high]
    assert code == 0 and want and [r["id"] for r in rows(out)] == want


def test_the_table_is_aligned_sorted_and_limited(journal: Path, written: list[dict]) -> None:
    code, out, err = audit("query", "--no-cache", "--limit", "5", "--columns",
                           "ts,agent,status,spend_usd", journal)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ts", "agent", "status", "spend_usd"]
    assert [line.split()[1] for line in lines[1:]] == [r["agent"] for r in written[:5]]
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # a column lines up
    assert err == f"({len(written) - 5} more; --limit N to see more, --json or --csv for all)\n"


def test_csv(journal: Path, written: list[dict]) -> None:
    code, out, _ = audit("query", "--no-cache", "--csv", "--columns", "id,team,input_tokens",
                         journal)
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["id"] for r in table] == [r["id"] for r in written]
    assert table[1]["input_tokens"] == str(written[1]["usage"]["input_tokens"])


def test_an_unknown_column_lists_the_columns(journal: Path) -> None:
    code, out, err = audit("query", "--no-cache", "--columns", "ts,agnt", journal)
    assert (code, out) == (2, "")
    assert err.startswith("egressguard: unknown column 'agnt' (did you mean 'agent'?); "
                          "columns: id, seq, node, kind, ts, day, agent, ")


def test_an_empty_range_says_what_the_journal_holds(journal: Path) -> None:
    code, out, err = audit("query", "--no-cache", "--since", "2027-01-01", journal)
    assert (code, out) == (1, "")
    assert err == ("egressguard: no records match (since 2027-01-01); the journal holds "
                   "2026-11-01T00:00:00.000Z to 2026-11-10T23:00:00.000Z\n")


# -- stats ---------------------------------------------------------------------------

def test_stats_by_team_and_model(journal: Path, written: list[dict]) -> None:
    code, out, _ = audit("stats", "--no-cache", "--json", "--by", "team,model", journal)
    assert code == 0
    got = {(r["team"], r["model"]): r for r in rows(out)}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in written:
        groups.setdefault((r["team"], r["model"]), []).append(r)
    assert set(got) == set(groups)
    for key, members in groups.items():
        row = got[key]
        redacted: Counter[str] = Counter()
        for r in members:
            for field in ("redactions", "response_redactions"):
                for entity, actions in (r[field] or {}).items():
                    redacted[entity] += sum(actions.values())
        assert row["requests"] == len(members)
        assert row["denials"] == sum(r["decision"] == "deny" for r in members)
        assert row["redactions"] == dict(redacted)
        assert row["tokens_in"] == sum((r["usage"] or {}).get("input_tokens", 0)
                                       for r in members)
        assert row["spend_usd"] == pytest.approx(sum(r["spend_usd"] or 0 for r in members))
        assert row["p50_ms"] == pytest.approx(statistics.median(
            r["latency_ms"] for r in members), abs=0.05)


def test_stats_by_day_as_a_table(journal: Path) -> None:
    code, out, _ = audit("stats", "--no-cache", "--by", "day", journal)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["day", "requests", "denials"]
    assert [line.split()[:2] for line in lines[1:3]] == [["2026-11-01", "24"],
                                                         ["2026-11-02", "24"]]


def saved(members: list[dict], field: str) -> float | None:
    values = [(r["savings"] or {}).get(field) for r in members]
    return sum(v for v in values if v is not None) if any(
        v is not None for v in values) else None


@pytest.mark.parametrize("by", ["team", "team,model", "agent"])
def test_stats_show_what_the_cache_and_routing_saved(relayed_journal: Path,
                                                    relayed_written: list[dict],
                                                    by: str) -> None:
    code, out, err = audit("stats", "--no-cache", "--json", "--by", by, relayed_journal)
    assert code == 0, err
    dims = by.split(",")
    got = {tuple(r[d] for d in dims): r for r in rows(out)}
    groups: dict[tuple[str, ...], list[dict]] = {}
    for r in relayed_written:
        groups.setdefault(tuple(r[d] for d in dims), []).append(r)
    assert set(got) == set(groups)
    for key, members in groups.items():
        row, usd = got[key], [saved(members, "cache_usd"), saved(members, "routing_usd")]
        assert row["cache_hits"] == sum((r["cache"] or {}).get("status") == "hit"
                                        for r in members)
        assert row["saved_tokens"] == saved(members, "cache_tokens")
        assert row["saved_usd"] == (None if usd == [None, None] else pytest.approx(
            sum(u or 0 for u in usd), abs=1e-6))
        assert row["failovers"] == sum(r["served_by"] is not None for r in members)
        assert row["retried"] == sum(len(r["attempts"] or []) > 1 for r in members)
        assert row["spend_usd"] == pytest.approx(sum(r["spend_usd"] or 0 for r in members))
        counted = [r["usage"]["input_tokens"] for r in members if r["usage"]]
        assert row["tokens_in"] == (sum(counted) if counted else None)  # all hits: none


def test_stats_per_team_in_figures(relayed_journal: Path) -> None:
    code, out, _ = audit("stats", "--no-cache", "--json", "--by", "team", relayed_journal)
    got = {r["team"]: {k: r[k] for k in QUIET_STATS} for r in rows(out)}
    # support: 120 requests (i % 4 in 1, 2), 40 of them i % 3 == 0, 4 of those denied
    assert got["support"]["cache_hits"] == 36
    assert got["support"]["saved_tokens"] == sum(
        100 + i + 10 + i % 7 for i in range(0, N, 3) if i % 4 in (1, 2) and i % 10)
    assert (got["support"]["failovers"], got["support"]["retried"]) == (0, 0)
    assert (got["research"]["cache_hits"], got["research"]["saved_tokens"],
            got["research"]["saved_usd"]) == (0, None, None)
    assert (got["research"]["failovers"], got["research"]["retried"]) == (30, 60)
    assert got["finance"]["saved_usd"] == pytest.approx(sum(
        0.0045 - 0.001 * (i % 5 + 1) for i in range(0, N, 4) if i % 10), abs=1e-6)
    assert (got["finance"]["cache_hits"], got["finance"]["failovers"]) == (0, 0)


def test_the_stats_table_shows_savings_only_when_there_are_some(
        relayed_journal: Path, tmp_path: Path) -> None:
    code, out, _ = audit("stats", "--no-cache", "--by", "team", relayed_journal)
    assert code == 0
    assert out.splitlines()[0].split() == [
        "team", "requests", "denials", "redactions", "tokens_in", "tokens_out", "spend_usd",
        "cache_hits", "saved_tokens", "saved_usd", "failovers", "retried", "p50_ms",
        "p95_ms"]
    old = write_journal(tmp_path / "old", [facts(i) for i in range(40)], drop=NEW_FIELDS)
    code, out, _ = audit("stats", "--no-cache", "--by", "team", old)
    assert code == 0
    assert out.splitlines()[0].split() == [
        "team", "requests", "denials", "redactions", "tokens_in", "tokens_out", "spend_usd",
        "p50_ms", "p95_ms"]


def test_an_unknown_dimension(journal: Path) -> None:
    code, _, err = audit("stats", "--no-cache", "--by", "tem", journal)
    assert code == 2 and "--by 'tem': not a dimension (did you mean 'team'?)" in err


# -- sql -----------------------------------------------------------------------------

def test_sql(journal: Path, written: list[dict]) -> None:
    code, out, _ = audit("sql", "--no-cache", "--json", journal,
                         "SELECT team, count(*) AS n FROM records WHERE kind = 'request' "
                         "GROUP BY team ORDER BY team")
    assert code == 0
    assert rows(out) == [{"team": t, "n": n} for t, n in sorted(
        Counter(r["team"] for r in written).items())]


RELAY_COLUMNS = ("id", "requested_model", "routed_by", "attempts", "attempt_list",
                 "served_by_vendor", "served_by_model", "cache_status", "cache_kind",
                 "cache_similarity", "cache_why", "saved_cache_tokens", "saved_cache_usd",
                 "saved_routing_usd")


def relay_columns(r: dict[str, Any]) -> dict[str, Any]:
    """What the `records` columns must hold for record `r`."""
    routing, cache, savings = r.get("routing"), r.get("cache") or {}, r.get("savings") or {}
    served = r.get("served_by") or {}
    return {"id": r["id"], "requested_model": routing and routing["requested_model"],
            "routed_by": routing and routing["by"],
            "attempts": len(r["attempts"]) if r.get("attempts") else None,
            "attempt_list": json.dumps(r["attempts"]) if r.get("attempts") else None,
            "served_by_vendor": served.get("vendor"), "served_by_model": served.get("model"),
            "cache_status": cache.get("status"), "cache_kind": cache.get("kind"),
            "cache_similarity": cache.get("similarity"), "cache_why": cache.get("why"),
            "saved_cache_tokens": savings.get("cache_tokens"),
            "saved_cache_usd": savings.get("cache_usd"),
            "saved_routing_usd": savings.get("routing_usd")}


def test_the_relay_fields_are_typed_columns(relayed_journal: Path,
                                            relayed_written: list[dict]) -> None:
    with AuditDB([relayed_journal]) as db:
        types = dict(db.con.execute("SELECT column_name, data_type FROM "
                                    "information_schema.columns WHERE table_name = "
                                    "'records'").fetchall())
        assert {c: types[c] for c in RELAY_COLUMNS[1:]} == {
            "requested_model": "VARCHAR", "routed_by": "VARCHAR[]", "attempts": "INTEGER",
            "attempt_list": "JSON", "served_by_vendor": "VARCHAR",
            "served_by_model": "VARCHAR", "cache_status": "VARCHAR", "cache_kind": "VARCHAR",
            "cache_similarity": "DOUBLE", "cache_why": "VARCHAR",
            "saved_cache_tokens": "BIGINT", "saved_cache_usd": "DOUBLE",
            "saved_routing_usd": "DOUBLE"}
        got = db.con.execute(f"SELECT {', '.join(RELAY_COLUMNS)} FROM records WHERE kind = "
                             "'request' ORDER BY seq").fetchall()
    table = [dict(zip(RELAY_COLUMNS, row, strict=True)) for row in got]
    for row in table:  # the JSON column as DuckDB writes it
        row["attempt_list"] = row["attempt_list"] and json.dumps(json.loads(
            row["attempt_list"]))
    assert table == [relay_columns(r) for r in relayed_written]
    assert {r["cache_status"] for r in table} == {"hit", "miss", "bypass", None}
    assert {r["attempts"] for r in table} == {1, 2, None}


def test_an_old_journal_without_the_relay_fields(tmp_path: Path) -> None:
    old = write_journal(tmp_path / "old", [facts(i) for i in range(40)], drop=NEW_FIELDS)
    assert all("cache" not in r for r in read_records([old]) if r["kind"] == "request")
    code, out, err = audit("sql", "--no-cache", "--json", old, "SELECT "
                           + ", ".join(RELAY_COLUMNS) + " FROM records WHERE kind = "
                           "'request' ORDER BY seq")
    assert (code, err) == (0, "")
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows(out)] == \
        [dict.fromkeys(RELAY_COLUMNS[1:])] * 40
    code, out, err = audit("stats", "--no-cache", "--json", "--by", "team", old)
    assert (code, err) == (0, "")
    assert [{k: r[k] for k in QUIET_STATS} for r in rows(out)] == [
        {"cache_hits": 0, "saved_tokens": None, "saved_usd": None, "failovers": 0,
         "retried": 0}] * 3
    assert sum(r["requests"] for r in rows(out)) == 40


@pytest.mark.parametrize("cache", [["hit"], ["miss", "bypass"]])
def test_the_cache_filter(relayed_journal: Path, relayed_written: list[dict],
                          cache: list[str]) -> None:
    where, params = Filters(cache=cache).where()
    with AuditDB([relayed_journal]) as db:
        got = [i for (i,) in db.con.execute(f"SELECT id FROM records WHERE {where} "
                                             "ORDER BY seq", params).fetchall()]
    assert got == [r["id"] for r in relayed_written
                   if (r["cache"] or {}).get("status") in cache]
    assert Filters(cache=cache).describe() == f"cache={','.join(cache)}"


def test_an_unknown_cache_status() -> None:
    with pytest.raises(AuditDataError, match=r"--cache 'hits': one of hit, miss, bypass"):
        Filters(cache=["hits"]).where()


def test_sql_mistakes_list_the_columns(journal: Path) -> None:
    code, out, err = audit("sql", "--no-cache", journal, "SELECT agnt FROM records")
    assert (code, out) == (2, "")
    assert 'Referenced column "agnt" not found' in err
    assert "the table is `records`, its columns: id, seq, node," in err


# -- export --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_export_verifies_and_a_changed_one_does_not(journal: Path, tmp_path: Path,
                                                       fmt: str) -> None:
    pubkey = tmp_path / "audit.pub"
    pubkey.write_bytes(checkpoints.public_pem(KEY))
    out = tmp_path / "export"
    code, printed, err = audit("export", "--no-cache", "--journal", journal, "--since",
                               "2026-11-02", "--until", "2026-11-04", "--format", fmt, out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    [entry] = manifest["files"]
    assert entry["name"] == f"records-egress-1.{fmt}"
    assert manifest["checkpoints"] and manifest["checkpoints"][-1]["seq"] == entry["last_seq"]
    code, ok, err = audit("verify", "--pubkey", pubkey, out)
    assert code == 0, ok + err
    assert ok.startswith(f"OK {entry['records']} records")
    assert "signatures verified" in ok
    exported = out / entry["name"]
    data = bytearray(exported.read_bytes())
    data[len(data) // 2] ^= 0x01
    exported.write_bytes(bytes(data))
    code, broken, err = audit("verify", "--pubkey", pubkey, out)
    assert code == 1
    assert f"BROKEN {exported}: its SHA-256 is not the manifest's" in broken


def test_an_export_into_a_folder_with_files_is_refused(journal: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("mine")
    code, _, err = audit("export", "--no-cache", "--journal", journal, tmp_path)
    assert code == 2 and f"{tmp_path} is not empty: export into a new folder" in err


def test_gzip_fixture_is_real(journal: Path) -> None:  # the tests above read gzip too
    gz = next(s.path for s in segments(journal) if s.compressed)
    assert gzip.decompress(gz.read_bytes()).count(b"\n") > 10


def test_the_readme_documents_every_column() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("Columns of `records`", 1)[1].split("\n## ", 1)[0]
    rows_ = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| `")]
    assert [(name.strip(" `"), kind.strip(" `")) for name, kind, _ in rows_] == \
        [(c[0], c[1]) for c in COLUMNS]


def test_a_line_being_written_is_read_once_it_is_whole(journal: Path, tmp_path: Path) -> None:
    copy = tmp_path / "journal"
    copy.mkdir()
    for s in segments(journal):
        (copy / s.path.name).write_bytes(s.path.read_bytes())
    newest = segments(copy)[-1].path
    last = newest.read_bytes().splitlines(keepends=True)[-1]
    record = json.loads(last)
    record["id"] = "f" * 32
    whole = json.dumps(record).encode() + b"\n"
    cache = tmp_path / "cache"
    newest.write_bytes(newest.read_bytes() + whole[:50])  # the proxy is mid-write
    code, out, err = audit("query", "--json", "--columns", "id", copy, cache=cache)
    count = len(newest.read_bytes().splitlines()) - 1
    assert f"{newest}:{count + 1}: not a readable audit record" in err
    with open(newest, "ab") as f:
        f.write(whole[50:])
    code, again, err = audit("sql", "--json", copy, "SELECT id FROM records WHERE id = "
                             "'" + "f" * 32 + "'", cache=cache)
    assert (code, err) == (0, "")
    assert rows(again) == [{"id": "f" * 32}]
