"""report: a self-contained HTML report, a Markdown summary and a CSV per report request.

An item asks for one of three reports:

- ``{kind: batch, batch_id}``: a batch from the ledger: counts by status, durations (p50,
  p95, p99), errors by category and message, quality histogram; CSV = its items.
- ``{kind: table_profile, table}``: a warehouse table: row count, nulls and distinct values
  per column, numeric distributions (min, max, mean, quantiles, histograms), top values of
  text columns; CSV = the column profile.
- ``{kind: operation_window, operation, since?, until?}``: the batches of an operation in a
  time window (UTC): counts by status, items, durations and throughput; CSV = the batches.

Figures are computed with DuckDB SQL on a read-only warehouse connection held only while
querying; charts are PNGs drawn with matplotlib (Agg backend) and embedded as data URIs, so
the HTML needs nothing else. Files go to ``data/reports/<batch_id>/`` under temporary names
and are renamed into place by the commit, which also replaces the item's row in ``reports``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core import ledger
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import NOT_FOUND, ItemError, ValidationItemError
from batch_pipelines.core.keys import slugify
from batch_pipelines.core.sql import quote_ident, validate_table_name

NUMERIC_TYPES = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL",
)  # fmt: skip
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUALITY_BUCKETS = ("0.0–0.2", "0.2–0.4", "0.4–0.6", "0.6–0.8", "0.8–1.0")


class ReportOptions(BaseModel, extra="forbid"):
    """Options of a report batch."""

    histogram_bins: int = Field(20, ge=2, le=200)
    max_table_rows: int = Field(50, ge=1, le=10_000, description="Rows shown per HTML table")
    max_columns: int = Field(100, ge=1, le=1000, description="Columns profiled per table")
    max_charts: int = Field(12, ge=0, le=100)
    top_values: int = Field(5, ge=0, le=50, description="Most frequent values per text column")


class ReportItem(BaseModel, extra="forbid"):
    """One report request."""

    id: str | None = None
    kind: Literal["batch", "table_profile", "operation_window"]
    batch_id: str | None = None
    table: str | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    title: str | None = Field(None, max_length=200)

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    @model_validator(mode="after")
    def _fields_for_kind(self) -> ReportItem:
        needed = {"batch": ("batch_id",), "table_profile": ("table",)}.get(self.kind, ())
        if self.kind == "operation_window":
            needed = ("operation",)
        allowed = {
            "batch": {"batch_id"},
            "table_profile": {"table"},
            "operation_window": {"operation", "since", "until"},
        }[self.kind]
        for name in needed:
            if not getattr(self, name):
                raise ValueError(f"a {self.kind} report needs {name}")
        extra = [
            n
            for n in ("batch_id", "table", "operation", "since", "until")
            if getattr(self, n) is not None and n not in allowed
        ]
        if extra:
            raise ValueError(f"a {self.kind} report does not take {', '.join(extra)}")
        if self.table is not None:
            validate_table_name(self.table, "table")
        if self.operation is not None:
            from batch_pipelines.operations import OPERATION_NAMES

            if self.operation not in OPERATION_NAMES:
                raise ValueError(
                    f"operation {self.operation!r} is not one of {', '.join(OPERATION_NAMES)}"
                )
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be earlier than until")
        if self.id is None:
            self.id = f"{self.kind}:{self.subject}"
        return self

    @property
    def subject(self) -> str:
        if self.kind == "batch":
            return str(self.batch_id)
        if self.kind == "table_profile":
            return str(self.table)
        window = ""
        if self.since or self.until:
            since = self.since.isoformat(timespec="seconds") if self.since else ""
            until = self.until.isoformat(timespec="seconds") if self.until else ""
            window = f"[{since}/{until})"
        return f"{self.operation}{window}"


# --- the report model, filled by a query function and rendered to HTML/Markdown/CSV --------


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[Sequence[Any]]
    note: str | None = None


@dataclass
class Chart:
    title: str
    kind: str  # bar | hist | line
    labels: list[Any]
    values: list[float]
    xlabel: str = ""
    ylabel: str = "count"
    png: bytes | None = None


@dataclass
class Report:
    title: str
    subtitle: str
    facts: list[tuple[str, Any]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    main: Table | None = None  # the CSV
    summary: dict[str, Any] = field(default_factory=dict)


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] = ()) -> list[tuple]:
    return con.execute(query, list(params)).fetchall()


def _one(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] = ()) -> tuple:
    return con.execute(query, list(params)).fetchone()


def _fmt(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return round(value, digits)
    return value


def batch_report(con: duckdb.DuckDBPyConnection, batch_id: str, options: ReportOptions) -> Report:
    batch = ledger.get_batch(con, batch_id)
    if batch is None:
        raise ItemError(f"batch {batch_id!r} not found in the ledger", category=NOT_FOUND)
    by_status = _rows(
        con,
        "select status, count(*) from batch_items where batch_id = ? group by 1 order by 2 desc",
        [batch_id],
    )
    d = _one(
        con,
        "select count(duration_ms), min(duration_ms), avg(duration_ms), "
        "quantile_cont(duration_ms, 0.5), quantile_cont(duration_ms, 0.95), "
        "quantile_cont(duration_ms, 0.99), max(duration_ms), sum(duration_ms), "
        "avg(quality_score), count(quality_score), sum(attempts) "
        "from batch_items where batch_id = ? and duration_ms is not null",
        [batch_id],
    )
    errors = _rows(
        con,
        "select coalesce(error_category, 'unknown'), count(*) from batch_items "
        "where batch_id = ? and status = 'failed' group by 1 order by 2 desc, 1",
        [batch_id],
    )
    messages = _rows(
        con,
        "select coalesce(error_category, 'unknown'), left(error, 300), count(*) "
        "from batch_items where batch_id = ? and status = 'failed' "
        "group by 1, 2 order by 3 desc, 1, 2 limit 20",
        [batch_id],
    )
    quality = dict(
        _rows(
            con,
            "select least(cast(floor(quality_score * 5) as integer), 4), count(*) "
            "from batch_items where batch_id = ? and quality_score is not null group by 1",
            [batch_id],
        )
    )
    durations = _histogram(
        con, "batch_items", "duration_ms", options.histogram_bins, "batch_id = ?", [batch_id]
    )
    items = _rows(
        con,
        "select item_id, status, attempts, round(duration_ms, 3), round(quality_score, 4), "
        "error_category, error, started_at, finished_at from batch_items "
        "where batch_id = ? order by seq",
        [batch_id],
    )
    n_dur, dmin, davg, p50, p95, p99, dmax, dsum, qmean, nq, attempts = d
    counts = {s: n for s, n in by_status}
    report = Report(
        title=f"Batch {batch_id}",
        subtitle=f"{batch['operation']} · {batch['name']}",
    )
    report.facts = [
        ("status", batch["status"]),
        ("operation", batch["operation"]),
        ("priority", batch["priority"]),
        ("items", batch["total_items"]),
        ("succeeded", counts.get("succeeded", 0)),
        ("failed", counts.get("failed", 0)),
        ("skipped", counts.get("skipped", 0)),
        ("cancelled", counts.get("cancelled", 0)),
        ("pending/running", counts.get("pending", 0) + counts.get("running", 0)),
        ("attempts", attempts or 0),
        ("duration p50 (ms)", _fmt(p50)),
        ("duration p95 (ms)", _fmt(p95)),
        ("duration p99 (ms)", _fmt(p99)),
        ("duration mean (ms)", _fmt(davg)),
        ("duration max (ms)", _fmt(dmax)),
        ("mean quality", _fmt(qmean, 4)),
        ("created", batch["created_at"]),
        ("started", batch["started_at"]),
        ("completed", batch["completed_at"]),
    ]
    report.summary = {
        "batch_id": batch_id,
        "status": batch["status"],
        "counts": counts,
        "duration_ms": {"p50": _fmt(p50), "p95": _fmt(p95), "p99": _fmt(p99)},
        "errors_by_category": dict(errors),
        "mean_quality": _fmt(qmean, 4),
    }
    report.tables.append(Table("Items by status", ["status", "items"], by_status))
    if errors:
        report.tables.append(Table("Errors by category", ["category", "items"], errors))
        report.tables.append(
            Table("Most frequent errors", ["category", "error", "items"], messages)
        )
    q_rows = [(QUALITY_BUCKETS[i], quality.get(i, 0)) for i in range(5)]
    if nq:
        report.tables.append(Table("Quality histogram", ["quality", "items"], q_rows))
    report.charts.append(
        Chart("Items by status", "bar", [s for s, _ in by_status], [n for _, n in by_status])
    )
    if n_dur:
        report.charts.append(
            Chart("Item durations", "hist", *durations, xlabel="duration (ms)", ylabel="items")
        )
    if nq:
        report.charts.append(
            Chart(
                "Quality score",
                "bar",
                list(QUALITY_BUCKETS),
                [n for _, n in q_rows],
                xlabel="quality",
                ylabel="items",
            )
        )
    if errors:
        report.charts.append(
            Chart("Errors by category", "bar", [c for c, _ in errors], [n for _, n in errors])
        )
    cols = [
        "item_id", "status", "attempts", "duration_ms", "quality_score", "error_category",
        "error", "started_at", "finished_at",
    ]  # fmt: skip
    report.main = Table("Items", cols, items)
    return report


def _histogram(
    con: duckdb.DuckDBPyConnection,
    table: str,
    column: str,
    bins: int,
    where: str = "true",
    params: Sequence[Any] = (),
) -> tuple[list[float], list[float]]:
    """Equal-width bins over [min, max]: (left edges, counts). ``table`` and ``column`` are
    validated names; ``where`` is a constant fragment of this module."""
    col = quote_ident(column)
    src = quote_ident(table)
    lo, hi = _one(
        con,
        f"select min({col})::double, max({col})::double from {src} "
        f"where {where} and {col} is not null",
        params,
    )
    if lo is None:
        return [], []
    if hi == lo:
        n = _one(con, f"select count(*) from {src} where {where} and {col} is not null", params)[0]
        return [lo], [n]
    width = (hi - lo) / bins
    found = dict(
        _rows(
            con,
            f"select least(cast(floor(({col}::double - ?) / ?) as integer), ?) as b, count(*) "
            f"from {src} where {where} and {col} is not null group by b",
            [lo, width, bins - 1, *params],
        )
    )
    return [lo + i * width for i in range(bins)], [found.get(i, 0) for i in range(bins)]


def _table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    parts = table.split(".")
    schema, name = (parts[-2], parts[-1]) if len(parts) > 1 else ("main", parts[0])
    return bool(
        _one(
            con,
            "select count(*) from information_schema.tables where table_schema = ? "
            "and table_name = ?",
            [schema, name],
        )[0]
    )


def table_profile_report(
    con: duckdb.DuckDBPyConnection, table: str, options: ReportOptions
) -> Report:
    validate_table_name(table, "table")
    if not _table_exists(con, table):
        raise ValidationItemError(f"table {table!r} does not exist in the warehouse")
    src = quote_ident(table)
    described = _rows(con, f"describe {src}")
    columns = [(r[0], str(r[1])) for r in described][: options.max_columns]
    total = _one(con, f"select count(*) from {src}")[0]
    aggs = []
    for name, _ in columns:
        c = quote_ident(name)
        aggs += [f"count({c})", f"approx_count_distinct({c})"]
    stats = _one(con, f"select {', '.join(aggs)} from {src}") if aggs else ()
    profile_rows = []
    numeric_rows = []
    charts: list[Chart] = []
    top_tables: list[Table] = []
    qlist = "[" + ", ".join(str(q) for q in QUANTILES) + "]"
    for i, (name, typ) in enumerate(columns):
        non_null, distinct = stats[2 * i], stats[2 * i + 1]
        nulls = total - non_null
        base = typ.split("(")[0].upper()
        is_numeric = base in NUMERIC_TYPES or base == "DECIMAL"
        row = [name, typ, non_null, nulls, _fmt(nulls / total if total else 0.0, 4), distinct]
        c = quote_ident(name)
        if is_numeric and non_null:
            mn, mx, mean, sd, qs = _one(
                con,
                f"select min({c})::double, max({c})::double, avg({c}::double), "
                f"stddev_samp({c}::double), quantile_cont({c}::double, {qlist}) from {src}",
            )
            row += [_fmt(mn), _fmt(mx), _fmt(mean), _fmt(sd)] + [_fmt(q) for q in qs]
            numeric_rows.append(
                [name, _fmt(mn), _fmt(mx), _fmt(mean), _fmt(sd)] + list(map(_fmt, qs))
            )
            if len(charts) < options.max_charts:
                edges, counts = _histogram(con, table, name, options.histogram_bins)
                charts.append(
                    Chart(
                        f"Distribution of {name}", "hist", edges, counts, xlabel=name, ylabel="rows"
                    )
                )
        else:
            row += [None] * (4 + len(QUANTILES))
            if options.top_values and non_null and base in ("VARCHAR", "BOOLEAN", "DATE", "ENUM"):
                top = _rows(
                    con,
                    f"select {c}::varchar, count(*) from {src} where {c} is not null "
                    f"group by 1 order by 2 desc, 1 limit {int(options.top_values)}",
                )
                top_tables.append(Table(f"Top values of {name}", ["value", "rows"], top))
        profile_rows.append(row)
    qnames = [f"p{int(q * 100)}" for q in QUANTILES]
    profile_cols = [
        "column", "type", "non_null", "nulls", "null_share", "distinct_approx",
        "min", "max", "mean", "stddev", *qnames,
    ]  # fmt: skip
    report = Report(
        title=f"Table profile: {table}", subtitle=f"{total} rows, {len(described)} columns"
    )
    report.facts = [("rows", total), ("columns", len(described))]
    if len(described) > len(columns):
        report.facts.append(("columns profiled", len(columns)))
    report.tables.append(
        Table(
            "Columns",
            ["column", "type", "non_null", "nulls", "null_share", "distinct_approx"],
            [r[:6] for r in profile_rows],
        )
    )
    if numeric_rows:
        report.tables.append(
            Table(
                "Numeric distributions",
                ["column", "min", "max", "mean", "stddev", *qnames],
                numeric_rows,
            )
        )
    report.tables += top_tables
    nulls_chart = Chart(
        "Nulls per column",
        "bar",
        [r[0] for r in profile_rows],
        [r[3] for r in profile_rows],
        ylabel="null rows",
    )
    if options.max_charts:
        report.charts = [nulls_chart, *charts[: max(0, options.max_charts - 1)]]
    report.main = Table("Column profile", profile_cols, profile_rows)
    report.summary = {
        "table": table,
        "rows": total,
        "columns": len(described),
        "nulls": {r[0]: r[3] for r in profile_rows},
    }
    return report


def _window(item: ReportItem, prefix: str = "") -> tuple[str, list[Any]]:
    """The batches filter of an operation_window report (constant SQL, bound values)."""
    where = f"{prefix}operation = ?"
    params: list[Any] = [item.operation]
    if item.since:
        where += f" and {prefix}created_at >= ?"
        params.append(item.since)
    if item.until:
        where += f" and {prefix}created_at < ?"
        params.append(item.until)
    return where, params


def operation_window_report(
    con: duckdb.DuckDBPyConnection, item: ReportItem, options: ReportOptions
) -> Report:
    where, params = _window(item)
    b_where, _ = _window(item, "b.")
    batches = _rows(
        con,
        "select batch_id, name, status, priority, total_items, succeeded_items, failed_items, "
        "skipped_items, cancelled_items, created_at, started_at, completed_at, "
        "round(date_diff('millisecond', started_at, completed_at) / 1000.0, 3) as wall_s, "
        "case when date_diff('millisecond', started_at, completed_at) > 0 then "
        "round(processed_items * 60000.0 / date_diff('millisecond', started_at, completed_at), "
        "3) end as items_per_min "
        f"from batches where {where} order by created_at",
        params,
    )
    by_status = _rows(
        con,
        f"select status, count(*), sum(total_items) from batches where {where} "
        "group by 1 order by 2 desc, 1",
        params,
    )
    agg = _one(
        con,
        "select count(*), coalesce(sum(total_items), 0), coalesce(sum(processed_items), 0), "
        "coalesce(sum(succeeded_items), 0), coalesce(sum(failed_items), 0), "
        "min(started_at), max(completed_at), "
        "sum(date_diff('millisecond', started_at, completed_at)) "
        f"from batches where {where}",
        params,
    )
    item_stats = _one(
        con,
        "select quantile_cont(i.duration_ms, 0.5), quantile_cont(i.duration_ms, 0.95), "
        "avg(i.quality_score) from batch_items i join batches b using (batch_id) "
        f"where {b_where} and i.duration_ms is not null",
        params,
    )
    n, total, processed, succeeded, failed, first, last, busy_ms = agg
    p50, p95, quality = item_stats
    span_s = (last - first).total_seconds() if first and last and last > first else None
    per_min_busy = processed * 60000.0 / busy_ms if busy_ms else None
    per_min_span = processed * 60.0 / span_s if span_s else None
    timeline = _rows(
        con,
        "select date_trunc('hour', created_at) as h, count(*), sum(total_items) "
        f"from batches where {where} group by 1 order by 1",
        params,
    )
    report = Report(
        title=f"Operation {item.operation}",
        subtitle=(f"batches created {item.since or 'any time'} to {item.until or 'now'} (UTC)"),
    )
    report.facts = [
        ("batches", n),
        ("items", total),
        ("processed", processed),
        ("succeeded", succeeded),
        ("failed", failed),
        ("success rate", _fmt(succeeded / processed, 4) if processed else None),
        ("item duration p50 (ms)", _fmt(p50)),
        ("item duration p95 (ms)", _fmt(p95)),
        ("mean quality", _fmt(quality, 4)),
        ("throughput (items/min while running)", _fmt(per_min_busy)),
        ("throughput (items/min, first start to last end)", _fmt(per_min_span)),
    ]
    report.summary = {
        "operation": item.operation,
        "since": item.since,
        "until": item.until,
        "batches": n,
        "by_status": {s: c for s, c, _ in by_status},
        "items": total,
        "processed": processed,
        "throughput_per_min": _fmt(per_min_busy),
    }
    report.tables.append(Table("Batches by status", ["status", "batches", "items"], by_status))
    report.charts.append(
        Chart(
            "Batches by status",
            "bar",
            [s for s, _, _ in by_status],
            [c for _, c, _ in by_status],
            ylabel="batches",
        )
    )
    if timeline:
        report.charts.append(
            Chart(
                "Items submitted per hour",
                "timeline",
                [t for t, _, _ in timeline],
                [v for _, _, v in timeline],
                ylabel="items",
            )
        )
    with_rate = [b for b in batches if b[13] is not None]
    if with_rate:
        report.charts.append(
            Chart(
                "Throughput per batch",
                "bar",
                [b[0][-6:] for b in with_rate[-30:]],
                [b[13] for b in with_rate[-30:]],
                xlabel="batch (last 6 chars)",
                ylabel="items/min",
            )
        )
    cols = [
        "batch_id", "name", "status", "priority", "total_items", "succeeded_items",
        "failed_items", "skipped_items", "cancelled_items", "created_at", "started_at",
        "completed_at", "wall_s", "items_per_min",
    ]  # fmt: skip
    report.main = Table("Batches", cols, batches)
    return report


# --- rendering -----------------------------------------------------------------------------


def _plt():  # noqa: ANN202 - matplotlib modules, imported lazily (slow import)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def render_chart(chart: Chart) -> bytes:
    """A PNG of the chart (matplotlib's object API on the Agg canvas: no global state, so
    charts can be drawn from several threads)."""
    Figure, FigureCanvasAgg = _plt()
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if chart.kind == "hist" and chart.labels:
        edges = list(chart.labels)
        width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
        ax.bar(edges, chart.values, width=width, align="edge", color="#4C72B0", edgecolor="white")
    elif chart.kind == "timeline":
        ax.plot(chart.labels, chart.values, marker="o", color="#4C72B0")
        fig.autofmt_xdate()
    else:
        labels = [str(x) for x in chart.labels]
        ax.bar(range(len(labels)), chart.values, color="#4C72B0")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(
            labels,
            rotation=30 if len(labels) > 4 else 0,
            ha="right" if len(labels) > 4 else "center",
            fontsize=8,
        )
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.xlabel, fontsize=8)
    ax.set_ylabel(chart.ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem;color:#222;
max-width:1100px}h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.85rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.facts td:first-child{font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts img{border:1px solid #eee;max-width:100%}
.note{color:#666;font-size:.8rem}footer{color:#888;font-size:.75rem;margin-top:2rem}
"""


def _html_table(t: Table, limit: int) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in t.rows[:limit]
    )
    more = (
        f'<p class="note">{len(t.rows) - limit} more rows in the CSV.</p>'
        if len(t.rows) > limit
        else ""
    )
    return f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>{more}"


def render_html(report: Report, options: ReportOptions, generated: datetime, csv_name: str) -> str:
    facts = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_cell(v))}</td></tr>"
        for k, v in report.facts
    )
    charts = "".join(
        f'<figure><img alt="{html.escape(c.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(c.png).decode()}"/></figure>'
        for c in report.charts
        if c.png
    )
    tables = "".join(_html_table(t, options.max_table_rows) for t in report.tables)
    main = _html_table(report.main, options.max_table_rows) if report.main else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{html.escape(report.title)}</h1><p class="sub">{html.escape(report.subtitle)}</p>'
        f'<table class="facts">{facts}</table>'
        + (f'<h2>Charts</h2><div class="charts">{charts}</div>' if charts else "")
        + tables
        + main
        + f"<footer>Generated {generated:%Y-%m-%d %H:%M:%S} UTC by batch_pipelines. "
        f"Data: {html.escape(csv_name)}.</footer></body></html>\n"
    )


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table, limit: int) -> str:
    lines = [f"## {t.title}", "", "| " + " | ".join(t.columns) + " |"]
    lines.append("|" + "---|" * len(t.columns))
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t.rows[:limit]]
    if len(t.rows) > limit:
        lines.append(f"\n_{len(t.rows) - limit} more rows in the CSV._")
    return "\n".join(lines) + "\n"


def render_markdown(
    report: Report, options: ReportOptions, generated: datetime, html_name: str, csv_name: str
) -> str:
    parts = [f"# {report.title}", "", f"_{report.subtitle}_", "", "| | |", "|---|---|"]
    parts += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in report.facts]
    parts += ["", *(_md_table(t, options.max_table_rows) for t in report.tables)]
    parts.append(
        f"Charts: {len(report.charts)} in [{html_name}]({html_name}); data: [{csv_name}]({csv_name}). "
        f"Generated {generated:%Y-%m-%d %H:%M:%S} UTC."
    )
    return "\n".join(parts) + "\n"


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(
            [
                "" if v is None else (v.isoformat(sep=" ") if isinstance(v, datetime) else v)
                for v in row
            ]
        )
    return buf.getvalue()


def _write_temp(folder: Path, name: str, text: str) -> Path:
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def build_report(ctx: ItemContext, item: ReportItem, options: ReportOptions) -> Report:
    with ctx.read_warehouse() as con:
        try:
            if item.kind == "batch":
                return batch_report(con, str(item.batch_id), options)
            if item.kind == "table_profile":
                return table_profile_report(con, str(item.table), options)
            return operation_window_report(con, item, options)
        except duckdb.InterruptException:
            ctx.check()
            raise


def handle_report(ctx: ItemContext) -> ItemResult:
    options: ReportOptions = ctx.options
    item: ReportItem = ctx.item
    report = build_report(ctx, item, options)
    if item.title:
        report.title = item.title
    for chart in report.charts:
        ctx.check()
        chart.png = render_chart(chart)
    generated = ledger.utcnow()
    folder = ctx.paths.reports / ctx.batch_id
    folder.mkdir(parents=True, exist_ok=True)
    stem = slugify(ctx.item_id)
    final = {ext: folder / f"{stem}.{ext}" for ext in ("html", "md", "csv")}
    temps: dict[str, Path] = {}
    try:
        temps["csv"] = _write_temp(folder, final["csv"].name, render_csv(report.main))
        temps["html"] = _write_temp(
            folder, final["html"].name, render_html(report, options, generated, final["csv"].name)
        )
        temps["md"] = _write_temp(
            folder,
            final["md"].name,
            render_markdown(report, options, generated, final["html"].name, final["csv"].name),
        )
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    size = sum(p.stat().st_size for p in temps.values())
    rows = len(report.main.rows) if report.main else 0
    metrics = {
        "kind": item.kind,
        "subject": item.subject,
        "html_path": str(final["html"]),
        "markdown_path": str(final["md"]),
        "csv_path": str(final["csv"]),
        "bytes": size,
        "charts": len(report.charts),
        "rows": rows,
    }

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        con.execute(
            "delete from reports where batch_id = ? and item_id = ?", [cc.batch_id, cc.item_id]
        )
        con.execute(
            "insert into reports (batch_id, item_id, kind, subject, html_path, markdown_path, "
            'csv_path, bytes, charts, "rows", summary, created_at) '
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                cc.batch_id,
                cc.item_id,
                item.kind,
                item.subject,
                str(final["html"]),
                str(final["md"]),
                str(final["csv"]),
                size,
                len(report.charts),
                rows,
                json.dumps(report.summary, default=str),
                generated,
            ],
        )
        for ext, tmp in temps.items():
            os.replace(tmp, final[ext])

    def cleanup() -> None:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    return ItemResult(metrics=metrics, commit=commit, cleanup=cleanup)


SPEC = OperationSpec(
    name="report",
    description=(
        "Reports, one partition per request: a batch summary (counts, duration percentiles, "
        "errors, quality), a table profile (nulls, distinct values, distributions) or an "
        "operation over a time window (status counts, throughput). Each writes a "
        "self-contained HTML file with PNG charts, a Markdown summary and a CSV under "
        "data/reports/<batch_id>/. Details: reports."
    ),
    options_model=ReportOptions,
    item_model=ReportItem,
    handler=handle_report,
    detail_tables=("reports",),
)
