"""The figures of each kind of report, computed with DuckDB SQL on a read-only connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from batch_pipelines.core import ledger
from batch_pipelines.core.errors import NOT_FOUND, ItemError, ValidationItemError
from batch_pipelines.core.fmt import round_figure
from batch_pipelines.core.redact import redact_optional
from batch_pipelines.core.sql import quote_ident, validate_table_name
from batch_pipelines.operations.relations import table_exists
from batch_pipelines.operations.report.models import (
    Chart,
    Report,
    ReportItem,
    ReportOptions,
    Table,
)

NUMERIC_TYPES = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL",
)  # fmt: skip
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUALITY_BUCKETS = ("0.0–0.2", "0.2–0.4", "0.4–0.6", "0.6–0.8", "0.8–1.0")


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] = ()) -> list[tuple]:
    return con.execute(query, list(params)).fetchall()


def _one(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] = ()) -> tuple:
    return con.execute(query, list(params)).fetchone()


def _redact_column(rows: list[tuple], index: int) -> list[tuple]:
    """Errors are redacted when stored; a ledger older than that may still hold secrets."""
    return [(*r[:index], redact_optional(r[index]), *r[index + 1 :]) for r in rows]


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
    messages = _redact_column(messages, 1)
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
    items = _redact_column(items, 6)
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
        ("duration p50 (ms)", round_figure(p50)),
        ("duration p95 (ms)", round_figure(p95)),
        ("duration p99 (ms)", round_figure(p99)),
        ("duration mean (ms)", round_figure(davg)),
        ("duration max (ms)", round_figure(dmax)),
        ("mean quality", round_figure(qmean, 4)),
        ("created", batch["created_at"]),
        ("started", batch["started_at"]),
        ("completed", batch["completed_at"]),
    ]
    report.summary = {
        "batch_id": batch_id,
        "status": batch["status"],
        "counts": counts,
        "duration_ms": {
            "p50": round_figure(p50),
            "p95": round_figure(p95),
            "p99": round_figure(p99),
        },
        "errors_by_category": dict(errors),
        "mean_quality": round_figure(qmean, 4),
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
    report.charts.append(Chart.of("Items by status", "bar", by_status))
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
        report.charts.append(Chart.of("Errors by category", "bar", errors))
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


def table_profile_report(
    con: duckdb.DuckDBPyConnection, table: str, options: ReportOptions
) -> Report:
    validate_table_name(table, "table")
    if not table_exists(con, table):
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
        row = [
            name,
            typ,
            non_null,
            nulls,
            round_figure(nulls / total if total else 0.0, 4),
            distinct,
        ]
        c = quote_ident(name)
        if is_numeric and non_null:
            mn, mx, mean, sd, qs = _one(
                con,
                f"select min({c})::double, max({c})::double, avg({c}::double), "
                f"stddev_samp({c}::double), quantile_cont({c}::double, {qlist}) from {src}",
            )
            row += [round_figure(mn), round_figure(mx), round_figure(mean), round_figure(sd)] + [
                round_figure(q) for q in qs
            ]
            numeric_rows.append(
                [name, round_figure(mn), round_figure(mx), round_figure(mean), round_figure(sd)]
                + list(map(round_figure, qs))
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
    nulls_chart = Chart.of("Nulls per column", "bar", profile_rows, value=3, ylabel="null rows")
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
        ("success rate", round_figure(succeeded / processed, 4) if processed else None),
        ("item duration p50 (ms)", round_figure(p50)),
        ("item duration p95 (ms)", round_figure(p95)),
        ("mean quality", round_figure(quality, 4)),
        ("throughput (items/min while running)", round_figure(per_min_busy)),
        ("throughput (items/min, first start to last end)", round_figure(per_min_span)),
    ]
    report.summary = {
        "operation": item.operation,
        "since": item.since,
        "until": item.until,
        "batches": n,
        "by_status": {s: c for s, c, _ in by_status},
        "items": total,
        "processed": processed,
        "throughput_per_min": round_figure(per_min_busy),
    }
    report.tables.append(Table("Batches by status", ["status", "batches", "items"], by_status))
    report.charts.append(Chart.of("Batches by status", "bar", by_status, ylabel="batches"))
    if timeline:
        report.charts.append(
            Chart.of("Items submitted per hour", "timeline", timeline, value=2, ylabel="items")
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
