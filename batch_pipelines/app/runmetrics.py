"""A chunk run records what it cost: a ``run_metrics`` row written by the run itself (through
the ledger) and the same figures as Dagster metadata. Recording never fails the run."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.usage import Usage, versions

if TYPE_CHECKING:
    from dagster import DagsterInstance

log = logging.getLogger("batch_pipelines.app.runmetrics")
CORRELATION_TAG = "batch/correlation_id"


def queued_at(instance: DagsterInstance, run_id: str) -> datetime | None:
    """When the run was created (enqueued, for a run of the queue), naive UTC."""
    try:
        record = instance.get_run_record_by_id(run_id)
    except Exception:  # noqa: BLE001 - an ephemeral or odd instance: no queue time
        return None
    created = getattr(record, "create_timestamp", None) if record else None
    if created is None:
        return None
    if created.tzinfo is not None:
        created = created.astimezone(UTC).replace(tzinfo=None)
    return created


def run_metrics_row(
    *,
    run_id: str,
    batch_id: str,
    operation: str,
    chunk_no: int | None,
    usage: Usage,
    outcomes: list[ledger.ItemOutcome],
    launched_by: str | None,
    queued: datetime | None,
    correlation_id: str | None,
) -> dict[str, Any]:
    wait = None
    if queued is not None:
        wait = max(0.0, (usage.started_at - queued).total_seconds())
    return {
        "run_id": run_id,
        "batch_id": batch_id,
        "operation": operation,
        "chunk_no": chunk_no,
        "items": len(outcomes),
        "succeeded": sum(1 for o in outcomes if o.status == "succeeded"),
        "failed": sum(1 for o in outcomes if o.status == "failed"),
        "launched_by": launched_by,
        "queued_at": queued,
        "started_at": usage.started_at,
        "ended_at": usage.ended_at,
        "queue_wait_s": wait,
        "wall_s": usage.wall_s,
        "cpu_user_s": usage.cpu_user_s,
        "cpu_system_s": usage.cpu_system_s,
        "peak_rss_mb": usage.peak_rss_mb,
        "read_bytes": usage.read_bytes,
        "write_bytes": usage.write_bytes,
        "pid": usage.pid,
        "correlation_id": correlation_id,
        **versions(),
    }


def record(paths: config.Paths, row: dict[str, Any]) -> bool:
    """Write the row; a failure is logged, never raised (the items are already committed)."""
    try:
        warehouse.write(
            lambda con: ledger.record_run_metrics(con, row), paths.warehouse, timeout_s=60
        )
        return True
    except Exception:  # noqa: BLE001 - what a run cost must not fail the run
        log.warning("could not record run_metrics of run %s", row["run_id"], exc_info=True)
        return False


def metadata(row: dict[str, Any]) -> dict[str, Any]:
    """The row's figures as Dagster metadata (floats rounded; nulls left out)."""
    keys = (
        "batch_id",
        "chunk_no",
        "items",
        "queue_wait_s",
        "wall_s",
        "cpu_user_s",
        "cpu_system_s",
        "peak_rss_mb",
        "read_bytes",
        "write_bytes",
        "code_version",
        "correlation_id",
    )
    out: dict[str, Any] = {}
    for k in keys:
        v = row.get(k)
        if v is not None:
            out[k] = round(v, 4) if isinstance(v, float) else v
    return out
