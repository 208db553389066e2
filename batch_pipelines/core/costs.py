"""What batches cost and what runs now, read from ``run_metrics`` and the ledger: the
"Resources" part of a batch's report, the batch's provenance record, and the "now" part of
``stats`` (queue depth, run slots in use)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from batch_pipelines.core import config
from batch_pipelines.core.fmt import Column

SLOT_TIMELINE_POINTS = 60  # the run-slots chart of a report: at most this many points


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    rel = con.execute(sql, params)
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def batch_resources(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any]:
    """A batch's chunk runs: how many, peak memory, CPU seconds (in all and per item), queue
    wait p50/p95, bytes read and written, and ``slots``: the runs executing at each point of
    its run time (the run slots it used over time)."""
    (summary,) = _query(
        con,
        """
        select count(*) as runs, sum(items) as items,
            max(peak_rss_mb) as peak_rss_mb,
            sum(cpu_user_s) as cpu_user_s, sum(cpu_system_s) as cpu_system_s,
            sum(cpu_user_s + cpu_system_s) / nullif(sum(items), 0) as cpu_s_per_item,
            quantile_cont(queue_wait_s, 0.5) as queue_wait_p50_s,
            quantile_cont(queue_wait_s, 0.95) as queue_wait_p95_s,
            sum(read_bytes) as read_bytes, sum(write_bytes) as write_bytes,
            sum(wall_s) as run_time_s,
            min(started_at) as first_run_started_at, max(ended_at) as last_run_ended_at
        from run_metrics where batch_id = ?
        """,
        [batch_id],
    )
    spans = con.execute(
        "select started_at, ended_at from run_metrics where batch_id = ? and started_at "
        "is not null and ended_at is not null order by started_at",
        [batch_id],
    ).fetchall()
    summary["slots"] = slot_timeline(spans)
    summary["max_slots"] = max((p["runs"] for p in summary["slots"]), default=0)
    return summary


def slot_timeline(
    spans: list[tuple[datetime, datetime]], points: int = SLOT_TIMELINE_POINTS
) -> list[dict[str, Any]]:
    """How many of ``spans`` (start, end) cover each of ``points`` evenly spaced instants
    from the first start to the last end."""
    if not spans:
        return []
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    total = (last - first).total_seconds()
    if total <= 0:
        return [{"at": first, "runs": len(spans)}]
    n = max(2, min(points, int(total) + 1))
    step = total / (n - 1)
    out = []
    for k in range(n):
        at = first + timedelta(seconds=k * step)
        out.append({"at": at, "runs": sum(1 for s, e in spans if s <= at <= e)})
    return out


def batch_provenance(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any]:
    """The batch-level provenance record: counts, parallelism, formats, timings, versions,
    options hash and correlation id."""
    (batch,) = _query(
        con,
        "select batch_id, operation, correlation_id, options_hash, total_items, "
        "succeeded_items, failed_items, skipped_items, cancelled_items, chunk_count, "
        "settings->>'chunk_size' as chunk_size, settings->>'max_concurrency' as max_concurrency, "
        "created_at, started_at, completed_at from batches where batch_id = ?",
        [batch_id],
    )
    batch["formats"] = dict(
        con.execute(
            "select coalesce(result->>'format', payload->>'format', 'n/a'), count(*) "
            "from batch_items where batch_id = ? group by all order by all",
            [batch_id],
        ).fetchall()
    )
    batch["versions"] = _query(
        con,
        "select code_version, dagster_version, duckdb_version, python_version, "
        "count(*) as runs from run_metrics where batch_id = ? group by all order by all",
        [batch_id],
    )
    batch["max_parallel_runs"] = batch_resources(con, batch_id)["max_slots"]
    return batch


def run_slot_limit(paths: config.Paths | None = None) -> int | None:
    """``max_concurrent_runs`` of the instance's dagster.yaml (None when unknown)."""
    import yaml

    paths = paths or config.get_paths()
    home = Path(os.environ.get("DAGSTER_HOME") or paths.dagster_home)
    try:
        conf = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
        value = conf["concurrency"]["runs"]["max_concurrent_runs"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return int(value) if isinstance(value, int) else None


def now(con: duckdb.DuckDBPyConnection, paths: config.Paths | None = None) -> dict[str, Any]:
    """What is queued and running at this moment: pending items and chunks of active
    (queued or running, not paused) batches, chunk runs with items running, and the share
    of the instance's run slots they take."""
    (row,) = _query(
        con,
        """
        select count(*) filter (where i.status = 'pending') as queued_items,
            count(distinct i.batch_id || ':' || i.chunk_no) filter (where i.status = 'pending')
                as queued_chunks,
            count(distinct i.run_id) filter (where i.status = 'running') as running_runs,
            count(*) filter (where i.status = 'running') as running_items
        from batch_items i join batches b using (batch_id)
        where b.status in ('queued', 'running') and not b.paused
        """,
        [],
    )
    limit = run_slot_limit(paths)
    row["run_slots"] = limit
    row["run_slot_utilisation"] = row["running_runs"] / limit if limit else None
    return row


# How the Resources part is shown (key, header with its unit, kind of core.fmt.fmt_value).
RESOURCE_COLUMNS: list[Column] = [
    ("runs", "chunk runs", "int"),
    ("peak_rss_mb", "peak MB", ""),
    ("cpu_s_per_item", "cpu s/item", ""),
    ("queue_wait_p50_s", "wait p50 s", "s"),
    ("queue_wait_p95_s", "wait p95 s", "s"),
    ("max_slots", "max slots", "int"),
]
