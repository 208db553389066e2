"""Batch analytics read from the warehouse views of migration ``0009_analytics``.

The views (``batch_metrics``, ``error_distribution``, ``quality_distribution``,
``batch_timeline``, ``operation_stats``) are the contract that SQL users, the report assets
and the CLI share; this module only reads them. Definitions (finished items, success rate,
throughput, quality buckets) are in :mod:`batch_pipelines.core.migrations.m0009_analytics`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from batch_pipelines.core import costs, ledger, warehouse
from batch_pipelines.core.fmt import Column
from batch_pipelines.core.redact import redact_optional

VIEWS = (
    "batch_metrics",
    "error_distribution",
    "quality_distribution",
    "batch_timeline",
    "operation_stats",
)
_FINISHED = "status in ('succeeded', 'failed', 'skipped')"
# Every item of the ledger, as ``batch_metrics`` counts the items of one batch.
_ITEM_TOTALS = f"""
select
    count(*) as total,
    {", ".join(f"count(*) filter (where status = '{s}') as {s}" for s in ledger.ITEM_STATUSES)},
    count(*) filter (where {_FINISHED}) as finished,
    quantile_cont(duration_ms, [0.5, 0.95, 0.99]) filter (where {_FINISHED}) as q,
    avg(duration_ms) filter (where {_FINISHED}) as avg_ms,
    sum(duration_ms) filter (where {_FINISHED}) as total_ms,
    avg(quality_score) as mean_quality
from batch_items
"""


class BatchNotFoundError(KeyError):
    """No batch with that id in the ledger."""

    def __str__(self) -> str:
        return f"no batch {self.args[0]!r}"


def query_rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict]:
    rel = con.execute(sql, params or [])
    names = [d[0] for d in rel.description]
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def batch_metrics(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any]:
    """One batch's figures, error and quality distributions and timeline, on an open
    connection; raises :class:`BatchNotFoundError`."""
    rows = query_rows(con, "select * from batch_metrics where batch_id = ?", [batch_id])
    if not rows:
        raise BatchNotFoundError(batch_id)
    out = rows[0]
    out["errors"] = batch_errors(con, batch_id)
    by_category: dict[str, int] = {}
    for e in out["errors"]:
        by_category[e["error_category"]] = by_category.get(e["error_category"], 0) + e["count"]
    failed = out["failed"]
    out["error_categories"] = [
        {"error_category": cat, "count": n, "percentage": 100.0 * n / failed if failed else None}
        for cat, n in sorted(by_category.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    out["quality"] = quality_buckets(con, batch_id)
    out["timeline"] = batch_timeline(con, batch_id)
    out["resources"] = costs.batch_resources(con, batch_id)
    out["provenance"] = costs.batch_provenance(con, batch_id)
    out["quality_gate"] = ledger.gate_summary(con, batch_id)
    return out


def _batch_rows(
    con: duckdb.DuckDBPyConnection,
    view: str,
    columns: str,
    order: str,
    batch_id: str,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One batch's rows of an analytics view (the views push the filter into their scans)."""
    return query_rows(
        con,
        f"select {columns} from {view} where batch_id = ? order by {order} limit ?",
        [batch_id, limit],
    )


def batch_errors(
    con: duckdb.DuckDBPyConnection, batch_id: str, limit: int | None = None
) -> list[dict[str, Any]]:
    """A batch's rows of ``error_distribution``, most frequent first."""
    columns = (
        "error_category, severity, fingerprint, count, percentage, example_error, "
        "example_item_id, first_seen_at, last_seen_at"
    )
    order = "count desc, error_category, fingerprint"
    return _redacted(con, _batch_rows(con, "error_distribution", columns, order, batch_id, limit))


def most_frequent_errors(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    """The most frequent (category, fingerprint) pairs across all batches."""
    return _redacted(
        con,
        query_rows(
            con,
            "select error_category, severity, fingerprint, sum(count)::bigint as count, "
            "count(distinct batch_id) as batches, min(example_error) as example_error "
            "from error_distribution group by error_category, severity, fingerprint "
            "order by count desc, error_category, severity, fingerprint limit ?",
            [limit],
        ),
    )


def _redacted(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors are redacted when stored; a ledger older than that may still hold secrets, in
    its example errors and in the fingerprints made of them (so those are made again)."""
    for row in rows:
        example = redact_optional(row["example_error"])
        if example != row["example_error"]:
            row["example_error"] = example
            (row["fingerprint"],) = con.execute("select error_fingerprint(?)", [example]).fetchone()
        row["fingerprint"] = redact_optional(row["fingerprint"])
    return rows


def quality_buckets(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """A batch's five rows of ``quality_distribution``."""
    columns = "bucket, label, lower_bound, upper_bound, count, percentage"
    return _batch_rows(con, "quality_distribution", columns, "bucket", batch_id)


def overall_quality(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The five quality buckets summed over all batches."""
    return query_rows(
        con,
        "select label, sum(count)::bigint as count, "
        "100.0 * sum(count) / nullif(sum(sum(count)) over (), 0) as percentage "
        "from quality_distribution group by bucket, label order by bucket",
    )


def batch_timeline(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """A batch's rows of ``batch_timeline``, one per minute."""
    columns = (
        "minute, finished, succeeded, failed, skipped, cumulative_finished, "
        "cumulative_succeeded, cumulative_failed, running_success_rate"
    )
    return _batch_rows(con, "batch_timeline", columns, "minute", batch_id)


def latest_batches(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    """The newest rows of ``batch_metrics``."""
    return query_rows(
        con,
        "select * from batch_metrics order by created_at desc, batch_id desc limit ?",
        [limit],
    )


def operation_stats(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The rows of ``operation_stats``, by operation name."""
    return query_rows(con, "select * from operation_stats order by operation")


def view_rows(con: duckdb.DuckDBPyConnection, view: str) -> int:
    """How many rows one of the analytics views holds."""
    if view not in VIEWS:
        raise ValueError(f"{view!r} is not one of the analytics views {VIEWS}")
    return int(con.execute(f"select count(*) from {view}").fetchone()[0])


def item_durations(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[float]:
    """The durations (ms) of a batch's finished items, for histograms."""
    return [
        r[0]
        for r in con.execute(
            "select duration_ms from batch_items where batch_id = ? and duration_ms is not null "
            "and status in ('succeeded', 'failed', 'skipped')",
            [batch_id],
        ).fetchall()
    ]


def stats(con: duckdb.DuckDBPyConnection, top_errors: int = 10) -> dict[str, Any]:
    """Global figures on an open connection (see :func:`get_stats`)."""
    by_operation = operation_stats(con)
    status_counts = dict(
        con.execute("select status, count(*) from batches group by status").fetchall()
    )
    items = query_rows(con, _ITEM_TOTALS)[0]
    q = items.pop("q") or [None, None, None]
    durations = {
        "p50_ms": q[0],
        "p95_ms": q[1],
        "p99_ms": q[2],
        "avg_ms": items.pop("avg_ms"),
        "total_ms": items.pop("total_ms"),
    }
    mean_quality = items.pop("mean_quality")
    finished_batches = sum(status_counts.get(s, 0) for s in ledger.TERMINAL_BATCH_STATUSES)
    completed = status_counts.get("completed", 0) + status_counts.get("completed_with_errors", 0)
    return {
        "generated_at": ledger.utcnow(),
        "batches": sum(status_counts.values()),
        "batches_by_status": {s: int(status_counts.get(s, 0)) for s in ledger.BATCH_STATUSES},
        "completion_rate": completed / finished_batches if finished_batches else None,
        "items": items,
        "item_success_rate": (
            items["succeeded"] / items["finished"] if items["finished"] else None
        ),
        "durations": durations,
        "mean_quality": mean_quality,
        "by_operation": by_operation,
        "top_errors": most_frequent_errors(con, top_errors),
        "now": costs.now(con),
    }


def get_batch_metrics(batch_id: str) -> dict[str, Any]:
    """A batch's analytics: every column of ``batch_metrics`` (counts, success rate,
    p50/p95/p99/avg/total duration, throughput, wall time, mean quality), plus ``errors``
    (rows of ``error_distribution``), ``error_categories``, ``quality`` (the five buckets of
    ``quality_distribution``), ``timeline`` (``batch_timeline``), ``resources`` (what its
    chunk runs cost, from ``run_metrics``) and ``provenance`` (the batch-level record).

    Raises :class:`BatchNotFoundError` (a ``KeyError``) for an unknown id."""
    with warehouse.connect(read_only=True) as con:
        return batch_metrics(con, batch_id)


def get_stats(top_errors: int = 10) -> dict[str, Any]:
    """Global figures: batches by status, completion rate (completed or completed with errors
    among finished batches), items by status, item success rate, duration percentiles, mean
    quality, ``by_operation`` (rows of ``operation_stats``), the most frequent errors and
    ``now`` (queue depth and run slots in use: :func:`.costs.now`)."""
    with warehouse.connect(read_only=True) as con:
        return stats(con, top_errors)


def latest_finished_batch(con: duckdb.DuckDBPyConnection) -> str | None:
    """The id of the batch that most recently reached a terminal status, if any."""
    row = con.execute(
        "select batch_id from batches where status in ("
        + ", ".join("?" for _ in ledger.TERMINAL_BATCH_STATUSES)
        + ") order by completed_at desc nulls last, batch_id desc limit 1",
        list(ledger.TERMINAL_BATCH_STATUSES),
    ).fetchone()
    return row[0] if row else None


def last_completion(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """When the most recent batch finished (None if none has)."""
    row = con.execute("select max(completed_at) from batches").fetchone()
    return row[0] if row else None


# How the views' rows are shown, the same in the CLI and in the Dagster previews: the columns
# of each table (key, header with its unit, kind of core.fmt.fmt_value).
_SUCCESS_AND_SPEED: list[Column] = [
    ("success_rate", "success", "rate"),
    ("p50_duration_ms", "p50 ms", "ms"),
    ("p95_duration_ms", "p95 ms", "ms"),
]
_THROUGHPUT_AND_QUALITY: list[Column] = [
    ("throughput_per_min", "items/min", "ms"),
    ("mean_quality", "quality", ""),
]
BATCH_COLUMNS: list[Column] = [
    ("batch_id", "batch", ""),
    ("operation", "operation", ""),
    ("status", "status", ""),
    ("total", "items", "int"),
    ("failed", "failed", "int"),
    *_SUCCESS_AND_SPEED,
    *_THROUGHPUT_AND_QUALITY,
]
FOCUS_BATCH_COLUMNS: list[Column] = [
    ("status", "status", ""),
    ("total", "items", "int"),
    ("succeeded", "ok", "int"),
    ("failed", "failed", "int"),
    ("skipped", "skipped", "int"),
    ("cancelled", "cancelled", "int"),
    *_SUCCESS_AND_SPEED,
    ("p99_duration_ms", "p99 ms", "ms"),
    *_THROUGHPUT_AND_QUALITY,
]
DURATION_COLUMNS: list[Column] = [
    (f"{k}_duration_ms", f"{k} ms", "ms") for k in ("p50", "p95", "p99", "avg", "total")
]
_ERROR_GROUP: list[Column] = [
    ("error_category", "category", ""),
    ("severity", "severity", ""),
    ("fingerprint", "fingerprint", ""),
    ("count", "items", "int"),
]
BATCH_ERROR_COLUMNS: list[Column] = [*_ERROR_GROUP, ("percentage", "% of failed", "pct")]
TOP_ERROR_COLUMNS: list[Column] = [*_ERROR_GROUP, ("batches", "batches", "int")]
QUALITY_COLUMNS: list[Column] = [
    ("label", "score", ""),
    ("count", "items", "int"),
    ("percentage", "%", "pct"),
]
TIMELINE_COLUMNS: list[Column] = [
    ("minute", "minute (UTC)", "time"),
    ("finished", "finished", "int"),
    ("succeeded", "ok", "int"),
    ("failed", "failed", "int"),
    ("cumulative_finished", "cumulative", "int"),
    ("running_success_rate", "running success", "rate"),
]
OPERATION_COLUMNS: list[Column] = [
    ("operation", "operation", ""),
    ("batches", "batches", "int"),
    ("batches_running", "running", "int"),
    ("batches_completed", "completed", "int"),
    ("batches_completed_with_errors", "with errors", "int"),
    ("batches_failed", "failed", "int"),
    ("batches_cancelled", "cancelled", "int"),
    ("completion_rate", "completion", "rate"),
    ("items_total", "items", "int"),
    ("item_success_rate", "item success", "rate"),
    ("avg_duration_ms", "avg ms", "ms"),
    ("mean_quality", "quality", ""),
]
