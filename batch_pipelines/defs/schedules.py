"""Nightly housekeeping: a schedule that submits a cleanup batch (real deletion, never outside
the data roots) for everything past the retention period; and how this project's schedules
are declared."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from batch_pipelines.core import warehouse
from batch_pipelines.defs.jobs import submit_batch_job

RETENTION_ENV = "BATCH_PIPELINES_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 30
CLEANUP_CRON = "30 2 * * *"


LAKE_SNAPSHOT_DAYS = 7  # how far back a lake can still be read "as of" (time travel)


def retention_days() -> int:
    raw = os.environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    days = int(raw)  # ValueError names the value
    if days < 1:
        raise ValueError(f"{RETENTION_ENV} must be at least 1, got {days}")
    return days


def nightly_cleanup_manifest(days: int) -> dict[str, Any]:
    """Finished batches (ledger rows, partitions, files), sent webhooks, export and report
    files, and staging leftovers older than ``days``; temporary tables left by interrupted
    transforms; on a DuckLake warehouse, compaction and snapshot expiry."""
    items: list[dict[str, Any]] = [
        {"kind": "old_batches", "older_than_days": days},
        {"kind": "old_files", "root": "exports", "older_than_days": days},
        {"kind": "old_files", "root": "reports", "older_than_days": days},
        {"kind": "staging", "older_than_days": 1},
        {"kind": "temp_tables"},
    ]
    if warehouse.is_lake():
        # Last, so it compacts what the deletions above left and frees the files they freed.
        items.append({"kind": "lake", "older_than_days": LAKE_SNAPSHOT_DAYS})
    return {
        "operation": "cleanup",
        "name": f"nightly cleanup (retention {days} days)",
        "priority": "low",
        "options": {"dry_run": False},
        "settings": {"max_retries": 1, "chunk_size": 10},
        "items": items,
    }


def utc_schedule(name: str, cron: str, job: Any, description: str) -> Callable:  # noqa: ANN401
    """A schedule on a UTC cron that runs unless stopped in the UI (``job``: a job or an asset
    job, as ``dagster.schedule`` takes)."""
    return schedule(
        name=name,
        cron_schedule=cron,
        job=job,
        default_status=DefaultScheduleStatus.RUNNING,
        execution_timezone="UTC",
        description=description,
    )


@utc_schedule(
    "nightly_cleanup",
    CLEANUP_CRON,
    submit_batch_job,
    "Every night at 02:30 UTC, submits a cleanup batch deleting finished batches, export and "
    "report files and sent webhooks older than BATCH_PIPELINES_RETENTION_DAYS (default 30), "
    "staging leftovers and interrupted transforms' temporary tables. Every deletion is "
    "recorded in cleanup_log. Stop the schedule in the UI to keep everything.",
)
def nightly_cleanup(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    try:
        days = retention_days()
    except ValueError as exc:
        return SkipReason(f"not cleaning up: {exc}")
    when = context.scheduled_execution_time
    key = f"nightly-cleanup:{when:%Y-%m-%d}" if when else "nightly-cleanup"
    return RunRequest(
        run_key=key,
        run_config={"ops": {"register_batch": {"config": nightly_cleanup_manifest(days)}}},
        tags={"batch/entry_point": "schedule"},
    )
