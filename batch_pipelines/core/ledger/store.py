"""Every write to the ledger tables: batches, batch_items, item_attempts, batch_events.

Every function takes an open warehouse connection; callers decide how long to hold it and
where the transaction begins and ends (see :mod:`batch_pipelines.core.warehouse`). Item writes
are upserts keyed by (batch_id, item_id) and attempts by (batch_id, item_id, attempt), so a
re-run replaces and never duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from batch_pipelines.core.gates import CANARY_PASSED, CanaryProbe
from batch_pipelines.core.ledger import snapshots, states
from batch_pipelines.core.ledger.models import (
    BatchStatus,
    ItemStatus,
    from_json,
    to_json,
    utcnow,
)
from batch_pipelines.core.ledger.reads import finished_among, one, registered_ids
from batch_pipelines.core.redact import redact_optional, redact_value

PROGRESS_MARKS = (25, 50, 75)  # batch_progress events, at these percentages of items processed


def write(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> int:
    """Run a write and read its row count, so no unfinished result is left on the connection
    (DuckDB refuses ``register`` while one is)."""
    return int(con.execute(sql, params or []).fetchall()[0][0])


def add_event(
    con: duckdb.DuckDBPyConnection,
    batch_id: str | None,
    event: str,
    *,
    actor: str | None = None,
    item_id: str | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    write(
        con,
        'insert into batch_events (batch_id, item_id, event, "at", actor, detail) '
        "values (?, ?, ?, ?, ?, ?)",
        [batch_id, item_id, event, at or utcnow(), actor, to_json(redact_value(detail))],
    )


def insert_batch(
    con: duckdb.DuckDBPyConnection, batch: dict[str, Any], items: Sequence[dict[str, Any]]
) -> None:
    """Insert a batch (a dict of ``batches`` columns) and all its items (status pending) in the
    caller's transaction."""
    row = dict(batch)
    row["options"] = to_json(row.get("options"))
    row["settings"] = to_json(row.get("settings"))
    cols = list(row)
    write(
        con,
        f"insert into batches ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
        [row[c] for c in cols],
    )
    table = pa.table(
        {
            "batch_id": pa.array([batch["batch_id"]] * len(items), pa.string()),
            "item_id": pa.array([i["item_id"] for i in items], pa.string()),
            "seq": pa.array([i["seq"] for i in items], pa.int32()),
            "chunk_no": pa.array([i["chunk_no"] for i in items], pa.int32()),
            "partition_key": pa.array([i["partition_key"] for i in items], pa.string()),
            "payload": pa.array([to_json(i["payload"]) for i in items], pa.string()),
        }
    )
    con.register("_new_items", table)
    try:
        write(
            con,
            "insert into batch_items (batch_id, item_id, seq, chunk_no, partition_key, payload, "
            "status) select batch_id, item_id, seq, chunk_no, partition_key, payload::json, "
            "? from _new_items",
            [ItemStatus.PENDING],
        )
    finally:
        con.unregister("_new_items")


def delete_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> None:
    """Remove a batch whose submission failed before it was queued (its items and row)."""
    write(con, "delete from batch_items where batch_id = ?", [batch_id])
    write(con, "delete from batches where batch_id = ?", [batch_id])


def delete_finished_batches(con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]) -> list[str]:
    """Delete every ledger row of those batches that are (still) finished; returns their ids.
    Detail tables of the operations are the caller's."""
    still = finished_among(con, batch_ids)
    if still:
        snapshots.drop(con, still)
        with registered_ids(con, "_ledger_doomed", "batch_id", still):
            for table in ("item_attempts", "batch_events", "batch_items", "batches"):
                write(
                    con,
                    f"delete from {table} where batch_id in (select batch_id from _ledger_doomed)",
                )
    return still


def _batch_flags(con: duckdb.DuckDBPyConnection, batch_id: str) -> tuple[str, bool, int]:
    row = one(
        con, "select status, stopped, processed_items from batches where batch_id = ?", [batch_id]
    )
    if row is None:
        raise KeyError(batch_id)
    return row[0], bool(row[1]), int(row[2])


def set_batch_status(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    status: str,
    *,
    error: str | None = None,
    at: datetime | None = None,
) -> None:
    """Set a batch's status by decision (submit queues it, a control cancels it); raises
    :class:`~.states.TransitionError` if the state machine does not allow it. A batch set
    ``failed`` or ``cancelled`` this way is stopped: its items no longer change its status."""
    current, stopped, _ = _batch_flags(con, batch_id)
    states.check_transition(current, status, stopped=stopped)
    at = at or utcnow()
    new = BatchStatus(status)
    write(
        con,
        """
        update batches set status = ?, updated_at = ?,
            error = coalesce(?, error),
            stopped = stopped or ?,
            queued_at = case when ? and queued_at is null then ? else queued_at end,
            completed_at = case when ? and completed_at is null then ? else completed_at end
        where batch_id = ?
        """,
        [
            new,
            at,
            redact_optional(error),
            new in (BatchStatus.FAILED, BatchStatus.CANCELLED),
            new == BatchStatus.QUEUED,
            at,
            states.is_finished(new),
            at,
            batch_id,
        ],
    )


def set_paused(con: duckdb.DuckDBPyConnection, batch_id: str, paused: bool) -> BatchStatus:
    """Raise or lift a batch's pause flag; lifting it puts a ``paused`` batch back to running
    or queued. Returns the batch's status (until the next :func:`refresh_batch`)."""
    current, _stopped, processed = _batch_flags(con, batch_id)
    status = BatchStatus(current) if paused else states.resumed_status(current, processed)
    write(
        con,
        "update batches set paused = ?, status = ?, updated_at = ? where batch_id = ?",
        [paused, status, utcnow(), batch_id],
    )
    return status


def mark_running(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    item_ids: Sequence[str],
    run_id: str | None,
    at: datetime | None = None,
) -> None:
    at = at or utcnow()
    first = one(con, "select started_at is null from batches where batch_id = ?", [batch_id])
    with registered_ids(con, "_ids", "item_id", item_ids):
        write(
            con,
            "update batch_items set status = ?, run_id = ?, started_at = ?, "
            "finished_at = null where batch_id = ? and item_id in (select item_id from _ids)",
            [ItemStatus.RUNNING, run_id, at, batch_id],
        )
    write(
        con,
        "update batches set status = case when status in (?, ?) then ? "
        "else status end, started_at = coalesce(started_at, ?), updated_at = ? "
        "where batch_id = ?",
        [BatchStatus.PENDING, BatchStatus.QUEUED, BatchStatus.RUNNING, at, at, batch_id],
    )
    if first and first[0]:
        add_event(con, batch_id, "batch_started", actor=f"run:{run_id}" if run_id else "runner")


def release_items(
    con: duckdb.DuckDBPyConnection, batch_id: str, item_ids: Sequence[str], run_id: str | None
) -> int:
    """Put items a run marked ``running`` but did not start back to ``pending``, for the next
    run of their chunk; returns how many."""
    with registered_ids(con, "_ids", "item_id", item_ids):
        return write(
            con,
            "update batch_items set status = ?, run_id = null where batch_id = ? and "
            "status = ? and run_id is not distinct from ? and "
            "item_id in (select item_id from _ids)",
            [ItemStatus.PENDING, batch_id, ItemStatus.RUNNING, run_id],
        )


def cancel_pending(
    con: duckdb.DuckDBPyConnection, batch_id: str, reason: str, *, include_running: bool = False
) -> int:
    statuses = [ItemStatus.PENDING, ItemStatus.RUNNING] if include_running else [ItemStatus.PENDING]
    placeholders = ", ".join("?" for _ in statuses)
    return write(
        con,
        "update batch_items set status = ?, error = ?, error_category = 'cancelled', "
        f"finished_at = ? where batch_id = ? and status in ({placeholders})",
        [ItemStatus.CANCELLED, redact_optional(reason), utcnow(), batch_id, *statuses],
    )


def refresh_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> BatchStatus:
    """Recompute a batch's counts, progress and status from its items (see
    :func:`.states.refresh`); returns the status. A batch that stops (error budget,
    stop-on-first-error) has its pending items cancelled."""
    batch = one(
        con,
        "select status, total_items, settings::varchar, paused, stopped, processed_items, "
        "canary_status, coalesce(canary_chunks, 0) from batches where batch_id = ?",
        [batch_id],
    )
    if batch is None:
        raise KeyError(batch_id)
    status, total, settings_json, paused, stopped, processed_before, canary, canary_chunks = batch
    counts = states.ItemCounts.from_mapping(
        dict(
            con.execute(
                "select status, count(*) from batch_items where batch_id = ? group by status",
                [batch_id],
            ).fetchall()
        )
    )

    def first_failure() -> tuple[str, str | None]:
        return one(
            con,
            "select item_id, error from batch_items where batch_id = ? and status = ? "
            "order by finished_at limit 1",
            [batch_id, ItemStatus.FAILED],
        )

    def canary_probe() -> CanaryProbe:
        n, done, failed, quality = one(
            con,
            "select count(*), count(*) filter (where status not in (?, ?)), "
            "count(*) filter (where status = ?), "
            "avg(quality_score) filter (where status = ?) "
            "from batch_items where batch_id = ? and chunk_no < ?",
            [
                ItemStatus.PENDING,
                ItemStatus.RUNNING,
                ItemStatus.FAILED,
                ItemStatus.SUCCEEDED,
                batch_id,
                canary_chunks,
            ],
        )
        return CanaryProbe(int(n), int(done), int(failed), quality)

    decision = states.refresh(
        status,
        counts,
        total=total,
        paused=bool(paused),
        stopped=bool(stopped),
        settings=from_json(settings_json, {}),
        first_failure=first_failure,
        canary_status=canary,
        canary=canary_probe,
    )
    if decision.canary_status:
        write(
            con,
            "update batches set canary_status = ? where batch_id = ?",
            [decision.canary_status, batch_id],
        )
        if decision.canary_status == CANARY_PASSED:
            add_event(con, batch_id, "batch_canary_passed", actor="ledger", detail=decision.detail)
    if decision.cancel_pending:
        cancel_pending(con, batch_id, f"batch stopped: {decision.error}")
    c = decision.counts
    now = utcnow()
    write(
        con,
        """
        update batches set status = ?, processed_items = ?, succeeded_items = ?,
            failed_items = ?, skipped_items = ?, cancelled_items = ?,
            progress = case when total_items = 0 then 1.0 else ? / total_items end,
            updated_at = ?, error = case when ? then null else coalesce(?, error) end,
            stopped = stopped or ?,
            started_at = case when ? > 0 then coalesce(started_at, ?) else started_at end,
            completed_at = case when ? then coalesce(completed_at, ?) else completed_at end
        where batch_id = ?
        """,
        [
            decision.status,
            c.processed,
            c.succeeded,
            c.failed,
            c.skipped,
            c.cancelled,
            float(c.processed),
            now,
            decision.clear_error,
            decision.error,
            decision.stopped,
            c.processed + c.running,
            now,
            decision.finished,
            now,
            batch_id,
        ],
    )
    # One event per mark crossed (a flush may cross several at once); items a stop cancels
    # are no progress.
    working = not (decision.stopped or stopped)
    for percent in PROGRESS_MARKS if working else ():
        if processed_before * 100 < percent * total <= c.processed * 100:
            add_event(
                con,
                batch_id,
                "batch_progress",
                actor="ledger",
                detail={"percent": percent, "processed": c.processed, "total": total},
            )
    if decision.status != status:
        add_event(
            con,
            batch_id,
            f"batch_{decision.status}",
            actor="ledger",
            detail={"from": status, "error": decision.error, **(decision.detail or {})}
            if decision.error
            else {"from": status},
        )
    return decision.status


def reap_items(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    chunk_no: int,
    run_id: str,
    action: str,
    reason: str,
) -> int:
    """Put items a dead run left ``running`` back to ``pending`` (``action`` "requeue") or fail
    them."""
    if action == "requeue":
        n = write(
            con,
            "update batch_items set status = ?, run_id = null where batch_id = ? and "
            "chunk_no = ? and coalesce(run_id, '') = ? and status = ?",
            [ItemStatus.PENDING, batch_id, chunk_no, run_id, ItemStatus.RUNNING],
        )
    else:
        n = write(
            con,
            "update batch_items set status = ?, error = ?, error_category = 'crashed', "
            "severity = 'critical', finished_at = ? where batch_id = ? and chunk_no = ? and "
            "coalesce(run_id, '') = ? and status = ?",
            [
                ItemStatus.FAILED,
                redact_optional(f"run crashed: {reason}"),
                utcnow(),
                batch_id,
                chunk_no,
                run_id,
                ItemStatus.RUNNING,
            ],
        )
    if n:
        add_event(
            con,
            batch_id,
            f"items_{'requeued' if action == 'requeue' else 'failed'}",
            actor="reaper",
            detail={"chunk": chunk_no, "run_id": run_id, "items": n, "reason": reason},
        )
    return n
