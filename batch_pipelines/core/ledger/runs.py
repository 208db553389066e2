"""What each chunk run cost: one ``run_metrics`` row per run and batch, written by the run
itself when its items are done (a step retried in the same run replaces its row)."""

from __future__ import annotations

from typing import Any

import duckdb

from batch_pipelines.core import lake
from batch_pipelines.core.ledger.store import write

RUN_METRICS_COLUMNS = (
    "run_id",
    "batch_id",
    "operation",
    "chunk_no",
    "items",
    "succeeded",
    "failed",
    "launched_by",
    "queued_at",
    "started_at",
    "ended_at",
    "queue_wait_s",
    "wall_s",
    "cpu_user_s",
    "cpu_system_s",
    "peak_rss_mb",
    "read_bytes",
    "write_bytes",
    "pid",
    "code_version",
    "dagster_version",
    "duckdb_version",
    "python_version",
    "correlation_id",
)


def record_run_metrics(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    """Insert or replace one run's row (keys: :data:`RUN_METRICS_COLUMNS`; missing ones are
    null)."""
    unknown = set(row) - set(RUN_METRICS_COLUMNS)
    if unknown:
        raise ValueError(f"not run_metrics columns: {sorted(unknown)}")
    cols = ", ".join(RUN_METRICS_COLUMNS)
    marks = ", ".join("?" for _ in RUN_METRICS_COLUMNS)
    on_lake = lake.is_lake(con)
    if on_lake:  # a lake has no primary key to replace on
        write(
            con,
            "delete from run_metrics where run_id = ? and batch_id = ?",
            [row.get("run_id"), row.get("batch_id")],
        )
    write(
        con,
        f"insert {'' if on_lake else 'or replace '}into run_metrics ({cols}) values ({marks})",
        [row.get(c) for c in RUN_METRICS_COLUMNS],
    )


def correlation_id(con: duckdb.DuckDBPyConnection, batch_id: str) -> str | None:
    row = con.execute(
        "select correlation_id from batches where batch_id = ?", [batch_id]
    ).fetchone()
    return row[0] if row else None
