"""`egressguard audit report --html FILE`: one self-contained page for auditors.

The records that match the filters, summed up by DuckDB (one aggregate query per
chart: a third of a second for a million records), drawn as inline SVG in a single
HTML file: no script, no font, no image, no address outside the page, so it opens
offline, prints, and can be mailed or archived as it is. Every value that
came from a record (agent, team, rule and model names are chosen by whoever set them)
is HTML-escaped where it is written, in the page and inside the SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

from egressguard.tools.auditdb import AuditDataError, AuditDB
from egressguard.tools.auditquery import Filters, nothing_matches

TOP = 20  # rows a bar chart shows; the rest are counted in its note
TOP_MODELS = 12
TOP_TEAMS = 7  # the others share one colour
OTHER_TEAMS = "(other teams)"
W = 960  # SVG width in user units; the page scales it to its column
LEFT, RIGHT = 250, 130  # room for labels and for the values after the bars

# Okabe & Ito's colour-blind-safe palette; denials are also hatched, for grey print
BLUE, ORANGE, SKY, GREEN = "#0072B2", "#E69F00", "#56B4E9", "#009E73"
PURPLE, VERMILLION, YELLOW, GREY = "#CC79A7", "#D55E00", "#F0E442", "#999999"
TEAM_COLOURS = (BLUE, ORANGE, SKY, GREEN, PURPLE, VERMILLION, YELLOW)
LATENCY_COLOURS = ("#9ecae1", "#4292c6", "#08519c")  # light to dark: p50, p95, p99
HATCH = "hatch"  # Series.fill value: vermillion with white stripes


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    fill: str


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    values: tuple[float, ...]
    note: str = ""  # written after a stacked bar


Format = Callable[[float], str]
ALLOWED_DENIED = (Series("allowed", BLUE), Series("denied", HATCH))


def report(db: AuditDB, filters: Filters, out: Path) -> int:
    where, params = filters.where()
    head = _one(db, f"""
        SELECT count(*) AS records, count(*) FILTER (kind = 'request') AS requests,
               count(*) FILTER (decision = 'deny') AS denials,
               sum(spend_usd) AS spend, sum(input_tokens) AS tokens_in,
               sum(output_tokens) AS tokens_out,
               quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.95) AS p95,
               count(DISTINCT agent) AS agents, count(DISTINCT team) AS teams,
               min(ts) AS first, max(ts) AS last
        FROM records WHERE {where}""", params)
    if not head["records"]:
        return nothing_matches(db, filters)
    page = _page(db, filters, head, where, params)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise AuditDataError(f"cannot write the report to {out}: {exc.strerror}") from None
    print(f"wrote {out}: {_plural(head['records'], 'record')}, {_when(head['first'])} to "
          f"{_when(head['last'])}")
    return 0


def _one(db: AuditDB, sql: str, params: list[Any]) -> dict[str, Any]:
    cursor = db.con.execute(sql, params)
    row = cursor.fetchone() or ()
    return dict(zip([d[0] for d in cursor.description or ()], row, strict=True))


def _all(db: AuditDB, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    return db.con.execute(sql, params).fetchall()


# -- the page -----------------------------------------------------------------------------

def _page(db: AuditDB, filters: Filters, head: dict[str, Any], where: str,
          params: list[Any]) -> str:
    entities = _entities(db, where, params)
    sections = [
        _spend_section(db, head, where, params),
        _agents_section(db, where, params),
        _rules_section(db, where, params),
        _redactions_section(entities),
        _latency_section(db, where, params),
    ]
    title = f"Egress audit report, {_day(head['first'])} to {_day(head['last'])}"
    redactions = sum(sum(r.values) for r in entities)
    return _HTML.format(title=escape(title), style=_STYLE, header=_header(db, filters, head),
                        figures=_figures(head, redactions), sections="\n".join(sections))


def _header(db: AuditDB, filters: Filters, head: dict[str, Any]) -> str:
    made = datetime.now(UTC).replace(tzinfo=None)
    lines = ["<h1>Egress audit report</h1>",
             f'<p class="period">{escape(_when(head["first"]))} to '
             f'{escape(_when(head["last"]))}</p>',
             f'<p class="meta">Filters: {escape(filters.describe())} &middot; '
             f'{_plural(head["records"], "record")} from '
             f'{_plural(len(db.files), "journal file")} &middot; '
             f"generated {escape(_when(made))}</p>"]
    if db.skipped:
        lines.append(f'<p class="warn">{_plural(len(db.skipped), "unreadable journal line")}'
                     " skipped: see <code>egressguard audit verify</code>.</p>")
    return "\n".join(lines)


def _figures(head: dict[str, Any], redactions: float) -> str:
    records, denials = head["records"], head["denials"]
    tunnels = records - head["requests"]
    cards = [
        ("Requests", _count(head["requests"]),
         f"+ {_plural(tunnels, 'refused tunnel')}" if tunnels else "to model vendors"),
        ("Denials", _count(denials), f"{100 * denials / records:.1f}% of {records:,}"),
        ("Spend", _usd(head["spend"] or 0), "at the price tables in force"),
        ("Tokens in", _count(head["tokens_in"] or 0), "counted by the vendors"),
        ("Tokens out", _count(head["tokens_out"] or 0), "counted by the vendors"),
        ("Redactions", _count(redactions), "in requests and answers"),
        ("Latency p50", _ms(head["p50"]), "median, all records"),
        ("Latency p95", _ms(head["p95"]), "95th percentile"),
        ("Agents", _count(head["agents"]), "with at least one record"),
        ("Teams", _count(head["teams"]), "with at least one record"),
    ]
    return "\n".join(f'<div class="card"><dt>{escape(name)}</dt><dd>{escape(value)}</dd>'
                     f'<dd class="sub">{escape(sub)}</dd></div>' for name, value, sub in cards)


def _section(title: str, note: str, chart: str | None, empty: str, more: str = "") -> str:
    body = chart or f'<p class="empty">{escape(empty)}</p>'
    extra = f" {escape(more)}" if more and chart else ""
    return (f'<section class="chart"><h2>{escape(title)}</h2>'
            f'<p class="note">{escape(note)}.{extra}</p>\n{body}</section>')


def _more(total: int, what: str, shown: int = TOP) -> str:
    return f"The top {shown} of {total:,} {what} are shown." if total > shown else ""


# -- the charts' data ---------------------------------------------------------------------

def _spend_section(db: AuditDB, head: dict[str, Any], where: str, params: list[Any]) -> str:
    return _section("Spend per day, by team", "Priced usage, in US dollars, per UTC day",
                    _spend_chart(db, head, where, params), "No priced usage in this period.")


def _spend_chart(db: AuditDB, head: dict[str, Any], where: str, params: list[Any]
                 ) -> str | None:
    rows = _all(db, f"""
        WITH t AS (SELECT day, coalesce(team, '(no team)') AS team, sum(spend_usd) AS usd
                   FROM records WHERE {where} AND spend_usd > 0 GROUP BY ALL),
             top AS (SELECT team FROM t GROUP BY team ORDER BY sum(usd) DESC, team
                     LIMIT {TOP_TEAMS})
        SELECT day, CASE WHEN team IN (SELECT team FROM top) THEN team
                         ELSE '{OTHER_TEAMS}' END AS team, sum(usd)
        FROM t GROUP BY ALL""", params)
    if not rows:
        return None
    totals: dict[str, float] = {}
    for _, team, usd in rows:
        totals[team] = totals.get(team, 0) + usd
    teams = sorted(totals, key=lambda t: (t == OTHER_TEAMS, -totals[t], t))
    first, last = head["first"].date(), head["last"].date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    spend = {(day, team): usd for day, team, usd in rows}
    # at most TOP_TEAMS named teams, then the others
    series = [Series(t, GREY if t == OTHER_TEAMS else TEAM_COLOURS[i])
              for i, t in enumerate(teams)]
    return _day_bars("spend", days, series, spend, _usd)


def _agents_section(db: AuditDB, where: str, params: list[Any]) -> str:
    rows, total = _allowed_denied(db, "agent", "(no agent)", where, params)
    return _section("Requests and denials per agent", "Every record, allowed or denied, by "
                    "the agent named in its token", _hbars("agents", rows, ALLOWED_DENIED,
                                                           _count),
                    "No records.", _more(total, "agents"))


def _rules_section(db: AuditDB, where: str, params: list[Any]) -> str:
    rows, total = _allowed_denied(db, "rule", "(no rule)", where, params)
    return _section("Top deciding rules", "The policy rule that decided each record",
                    _hbars("rules", rows, ALLOWED_DENIED, _count), "No records.",
                    _more(total, "rules"))


def _allowed_denied(db: AuditDB, column: str, missing: str, where: str, params: list[Any]
                    ) -> tuple[list[Row], int]:
    """Records allowed and denied per value of `column` (the TOP busiest), and how many
    values there are."""
    found = _all(db, f"""
        SELECT coalesce("{column}", ?), count(*) AS n,
               count(*) FILTER (decision = 'deny'), count(*) OVER ()
        FROM records WHERE {where} GROUP BY ALL ORDER BY n DESC, 1 LIMIT {TOP}""",
                 [missing, *params])
    rows = [Row(value, (n - denied, denied), f"{n:,} ({denied:,} denied)" if denied
                else f"{n:,}") for value, n, denied, _ in found]
    return rows, found[0][3] if found else 0


def _entities(db: AuditDB, where: str, params: list[Any]) -> list[Row]:
    found = _all(db, f"""
        SELECT e.key AS entity,
               coalesce(sum(list_sum(map_values(e.value))) FILTER (side = 'request'), 0),
               coalesce(sum(list_sum(map_values(e.value))) FILTER (side = 'answer'), 0)
        FROM (SELECT 'request' AS side, unnest(map_entries(redactions)) AS e
              FROM records WHERE {where}
              UNION ALL
              SELECT 'answer', unnest(map_entries(response_redactions))
              FROM records WHERE {where})
        GROUP BY entity ORDER BY sum(list_sum(map_values(e.value))) DESC, entity""",
                 params + params)
    return [Row(entity, (int(asked), int(answered)), _count(asked + answered))
            for entity, asked, answered in found]


def _redactions_section(entities: Sequence[Row]) -> str:
    series = (Series("in requests", PURPLE), Series("in answers", GREEN))
    return _section("Redactions by entity type", "Values found in requests and in answers, "
                    "whatever was done with them (mask, pseudonymize, block or log)",
                    _hbars("redactions", entities[:TOP], series, _count) if entities else None,
                    "Nothing was redacted in this period.",
                    _more(len(entities), "entity types"))


def _latency_section(db: AuditDB, where: str, params: list[Any]) -> str:
    rows = _all(db, f"""
        SELECT coalesce(vendor, '?'), coalesce(model, '?'), count(latency_ms) AS n,
               quantile_cont(latency_ms, [0.5, 0.95, 0.99]), count(*) OVER ()
        FROM records WHERE {where} AND decision = 'allow' AND latency_ms IS NOT NULL
        GROUP BY ALL ORDER BY n DESC, 1, 2 LIMIT {TOP_MODELS}""", params)
    bars = [Row(f"{vendor} / {model}", tuple(q), f"{n:,} requests")
            for vendor, model, n, q, _ in rows]
    series = [Series(p, c) for p, c in zip(("p50", "p95", "p99"), LATENCY_COLOURS,
                                           strict=True)]
    more = _more(rows[0][4] if rows else 0, "vendors and models", TOP_MODELS)
    return _section("Latency percentiles per vendor and model", "Allowed requests: time "
                    "in egressguard and upstream (denials are answered at once)",
                    _hbars("latency", bars, series, _ms, stacked=False) if bars else None,
                    "No allowed request with a latency in this period.", more)


# -- SVG ----------------------------------------------------------------------------------

def _hbars(cid: str, rows: Sequence[Row], series: Sequence[Series], fmt: Format,
           stacked: bool = True) -> str:
    """Horizontal bars, one band per row: its series stacked, or side by side."""
    legend, top = _legend(cid, series, LEFT)
    band = 26 if stacked else 12 * len(series) + 10
    bottom = top + band * len(rows)
    ticks = _ticks(max(sum(r.values) if stacked else max(r.values) for r in rows),
                   whole=fmt is _count)
    x = _scale(ticks[-1], LEFT, W - RIGHT)
    parts = [legend, *_grid_x(ticks, x, top, bottom, fmt)]
    for i, row in enumerate(rows):
        y = top + i * band
        parts.append(_text(LEFT - 8, y + band / 2, row.label, "end", cls="label"))
        parts += _stacked(cid, row, series, x, y + 4, band - 8, fmt) if stacked else \
            _grouped(cid, row, series, x, y + 5, fmt)
    return _svg(cid, bottom + 24, parts, series)


def _stacked(cid: str, row: Row, series: Sequence[Series], x: Callable[[float], float],
             y: float, h: float, fmt: Format) -> list[str]:
    parts, start = [], 0.0
    for s, v in zip(series, row.values, strict=True):
        if v > 0:
            parts.append(_bar(cid, s, row.label, x(start), y, x(start + v) - x(start), h,
                              fmt(v)))
        start += v
    parts.append(_text(x(start) + 6, y + h / 2, row.note, cls="value"))
    return parts


def _grouped(cid: str, row: Row, series: Sequence[Series], x: Callable[[float], float],
             y: float, fmt: Format) -> list[str]:
    parts = []
    for i, (s, v) in enumerate(zip(series, row.values, strict=True)):
        top = y + i * 12
        parts.append(_bar(cid, s, row.label, x(0), top, x(v) - x(0), 10, fmt(v)))
        parts.append(_text(x(v) + 6, top + 5, f"{s.name} {fmt(v)}", cls="value small"))
    return parts


def _day_bars(cid: str, days: Sequence[date], series: Sequence[Series],
              values: dict[tuple[date, str], float], fmt: Format) -> str:
    """Vertical bars per day, the series stacked bottom up."""
    legend, top = _legend(cid, series, 70)
    bottom, left, right = top + 260, 70, W - 20
    totals = [sum(values.get((d, s.name), 0) for s in series) for d in days]
    ticks = _ticks(max(totals))
    y = _scale(ticks[-1], bottom, top)
    slot = (right - left) / len(days)
    parts = [legend, *_grid_y(ticks, y, left, right, fmt)]
    every = math.ceil(len(days) / 16)  # at most 16 dates under the axis; a day's total
    # over its bar only when there is room for every one
    for i, day in enumerate(days):
        x, level = left + i * slot + slot * 0.15, 0.0
        for s in series:
            v = values.get((day, s.name), 0)
            if v > 0:
                parts.append(_bar(cid, s, f"{day:%Y-%m-%d}", x, y(level + v),
                                  y(level) - y(level + v), slot * 0.7, fmt(v), vertical=True))
            level += v
        if every == 1 and level > 0:
            parts.append(_text(x + slot * 0.35, y(level) - 6, fmt(level), "middle",
                               cls="value small"))
        if i % every == 0:
            parts.append(_text(x + slot * 0.35, bottom + 16, f"{day:%b %d}", "middle",
                               cls="tick"))
    return _svg(cid, bottom + 30, parts, series)


def _bar(cid: str, s: Series, label: str, x: float, y: float, w: float, h: float,
         value: str, vertical: bool = False) -> str:
    width, height = (h, w) if vertical else (w, h)
    return (f'<rect class="bar" data-series="{escape(s.name)}" data-label="{escape(label)}" '
            f'x="{x:.1f}" y="{y:.1f}" width="{max(width, 0.5):.1f}" '
            f'height="{max(height, 0.5):.1f}" fill="{_fill(cid, s)}"><title>{escape(label)}: '
            f"{escape(s.name)} {escape(value)}</title></rect>")


def _legend(cid: str, series: Sequence[Series], x0: float) -> tuple[str, float]:
    """The legend, wrapped to the width, and the y where the chart may start."""
    items, x, y = [], x0, 6.0
    for s in series:
        name = _short(s.name, 28)
        width = 30 + 7 * len(name)
        if x + width > W and x > x0:
            x, y = x0, y + 20
        items.append(f'<g class="legend-item"><rect x="{x:.0f}" y="{y:.0f}" width="12" '
                     f'height="12" fill="{_fill(cid, s)}" stroke="#555" stroke-width="0.5"/>'
                     + _text(x + 17, y + 6, s.name, limit=28) + "</g>")
        x += width
    return '<g class="legend">' + "".join(items) + "</g>", y + 30


def _grid_x(ticks: Sequence[float], x: Callable[[float], float], top: float, bottom: float,
            fmt: Format) -> list[str]:
    return [f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 4:.0f}" '
            f'y2="{bottom:.0f}"/>' + _text(x(t), bottom + 14, fmt(t), "middle", cls="tick")
            for t in ticks]


def _grid_y(ticks: Sequence[float], y: Callable[[float], float], left: float, right: float,
            fmt: Format) -> list[str]:
    return [f'<line class="grid" x1="{left:.0f}" x2="{right:.0f}" y1="{y(t):.1f}" '
            f'y2="{y(t):.1f}"/>' + _text(left - 6, y(t), fmt(t), "end", cls="tick")
            for t in ticks]


def _svg(cid: str, height: float, parts: Sequence[str], series: Sequence[Series]) -> str:
    hatch = ""
    if any(s.fill == HATCH for s in series):
        hatch = (f'<defs><pattern id="{cid}-hatch" width="6" height="6" '
                 'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
                 f'<rect width="6" height="6" fill="{VERMILLION}"/>'
                 '<line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/>'
                 "</pattern></defs>")
    return (f'<svg id="chart-{cid}" viewBox="0 0 {W} {height:.0f}" role="img" '
            f'aria-label="{cid} chart">{hatch}\n' + "\n".join(parts) + "\n</svg>")


def _fill(cid: str, s: Series) -> str:
    return f"url(#{cid}-hatch)" if s.fill == HATCH else s.fill


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "",
          limit: int = 34) -> str:
    """A line of text (shortened to `limit`; the whole of it as its tooltip)."""
    short = _short(text, limit)
    tip = f"<title>{escape(text)}</title>" if short != text else ""
    css = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" '
            f'dominant-baseline="middle"{css}>{tip}{escape(short)}</text>')


def _scale(top: float, start: float, end: float) -> Callable[[float], float]:
    return lambda v: start + (end - start) * v / top


def _ticks(largest: float, whole: bool = False) -> list[float]:
    """0 and round steps (1, 2 or 5 times a power of ten) up to just past `largest`;
    `whole`: no step under 1 (counts)."""
    if largest <= 0:
        return [0, 1]
    rough = largest / 4
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    step = max(step, 1) if whole else step
    return [i * step for i in range(math.ceil(largest / step - 1e-9) + 1)]


# -- numbers and times ---------------------------------------------------------------------

def _count(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _usd(value: float) -> str:
    if value == 0:
        return "$0"
    if abs(value) < 0.1:
        return f"${value:.3g}"
    return f"${value:,.2f}" if abs(value) < 1000 else f"${value:,.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 10 and value != int(value) else f"{value:.0f} ms"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _when(ts: datetime) -> str:
    return f"{ts:%Y-%m-%d %H:%M} UTC"


def _day(ts: datetime) -> str:
    return f"{ts:%Y-%m-%d}"


_STYLE = """
:root { color: #1b1b1b; background: #fff; }
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       max-width: 1120px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 28px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 0 0 2px; }
.period { font-size: 19px; margin: 0; font-weight: 600; color: #0b4f80; }
.meta, .note, footer { color: #555; margin: 4px 0; font-size: 13.5px; }
.warn { color: #8a2800; font-weight: 600; }
dl.figures { display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px;
             margin: 20px 0 8px; }
.card { border: 1px solid #d5d9de; border-radius: 6px; padding: 10px 12px;
        border-top: 4px solid #0072B2; }
.card dt { font-size: 12.5px; text-transform: uppercase; letter-spacing: .04em;
           color: #555; }
.card dd { margin: 2px 0 0; font-size: 24px; font-weight: 650;
           font-variant-numeric: tabular-nums; }
.card dd.sub { font-size: 12px; font-weight: 400; color: #666; }
section.chart { margin-top: 26px; break-inside: avoid; page-break-inside: avoid; }
section.chart svg { width: 100%; height: auto; display: block; margin-top: 8px; }
.empty { border: 1px dashed #bbb; border-radius: 6px; padding: 18px; color: #555;
         text-align: center; background: #fafafa; }
svg text { font-size: 12px; fill: #222; font-family: inherit; }
svg text.tick { fill: #555; font-size: 11px; font-variant-numeric: tabular-nums; }
svg text.value { font-variant-numeric: tabular-nums; }
svg text.small { font-size: 10px; fill: #444; }
svg line.grid { stroke: #e2e5e9; stroke-width: 1; }
svg rect.bar { stroke: #fff; stroke-width: 0.6; }
footer { margin-top: 30px; border-top: 1px solid #ddd; padding-top: 10px; }
@media print {
  body { max-width: none; padding: 0; font-size: 12px; }
  dl.figures { grid-template-columns: repeat(5, 1fr); }
  section.chart { margin-top: 16px; }
}
"""

_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
{header}
</header>
<dl class="figures">
{figures}
</dl>
{sections}
<footer>Figures are read from the journal; they do not prove it intact. To check the
chain and its signed checkpoints, run <code>egressguard audit verify</code>.</footer>
</body>
</html>
"""
