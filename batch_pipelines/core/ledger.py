"""Reads and writes of the ledger tables: batches, batch_items, item_attempts, batch_events.

Every function takes an open warehouse connection; callers decide how long to hold it
(see :mod:`batch_pipelines.core.warehouse`). Item writes are upserts keyed by (batch_id, item_id)
and attempts by (batch_id, item_id, attempt), so a re-run replaces and never duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

ALL_FAILED_PREFIX = "all "
TERMINAL_ITEM_STATUSES = ("succeeded", "failed", "skipped", "cancelled")
ITEM_STATUSES = ("pending", "running", *TERMINAL_ITEM_STATUSES)
TERMINAL_BATCH_STATUSES = ("completed", "completed_with_errors", "failed", "cancelled")
BATCH_STATUSES = ("pending", "queued", "running", "paused", *TERMINAL_BATCH_STATUSES)
ACTIVE_BATCH_STATUSES = ("queued", "running", "paused")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


@dataclass
class Attempt:
    attempt: int
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    outcome: str  # succeeded | failed | skipped | cancelled
    error: str | None = None
    error_category: str | None = None
    severity: str | None = None


@dataclass
class ItemOutcome:
    """What happened to one item in one run: its final status and every attempt."""

    batch_id: str
    item_id: str
    status: str
    attempts: list[Attempt] = field(default_factory=list)
    result: dict[str, Any] | None = None
    quality_score: float | None = None
    error: str | None = None
    error_category: str | None = None
    severity: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_ms(self) -> float | None:
        if not self.attempts:
            return None
        return sum(a.duration_ms for a in self.attempts)


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
    con.execute(
        'insert into batch_events (batch_id, item_id, event, "at", actor, detail) '
        "values (?, ?, ?, ?, ?, ?)",
        [batch_id, item_id, event, at or utcnow(), actor, _json(detail)],
    )


def insert_batch(
    con: duckdb.DuckDBPyConnection, batch: dict[str, Any], items: Sequence[dict[str, Any]]
) -> None:
    """Insert a batch and all its items (status pending) in the caller's transaction."""
    row = dict(batch)
    row["options"] = _json(row.get("options"))
    row["settings"] = _json(row.get("settings"))
    cols = list(row)
    con.execute(
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
            "payload": pa.array([_json(i["payload"]) for i in items], pa.string()),
        }
    )
    con.register("_new_items", table)
    try:
        con.execute(
            "insert into batch_items (batch_id, item_id, seq, chunk_no, partition_key, payload, "
            "status) select batch_id, item_id, seq, chunk_no, partition_key, payload::json, "
            "'pending' from _new_items"
        )
    finally:
        con.unregister("_new_items")


def set_batch_status(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    status: str,
    *,
    error: str | None = None,
    at: datetime | None = None,
) -> None:
    at = at or utcnow()
    con.execute(
        """
        update batches set status = ?, updated_at = ?,
            error = coalesce(?, error),
            queued_at = case when ? = 'queued' and queued_at is null then ? else queued_at end,
            completed_at = case when ? in ('completed', 'completed_with_errors', 'failed',
                'cancelled') and completed_at is null then ? else completed_at end
        where batch_id = ?
        """,
        [status, at, error, status, at, status, at, batch_id],
    )


def items_for_keys(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The ledger rows (with their batch's operation, options and settings) for partition keys,
    in submission order."""
    if not keys:
        return []
    con.register("_keys", pa.table({"partition_key": pa.array(list(keys), pa.string())}))
    try:
        rel = con.execute(
            """
            select i.batch_id, i.item_id, i.seq, i.chunk_no, i.partition_key,
                   i.payload::varchar as payload, i.status, i.attempts, b.operation,
                   b.options::varchar as options, b.settings::varchar as settings,
                   b.status as batch_status, b.paused
            from batch_items i join _keys k using (partition_key)
            join batches b using (batch_id)
            order by i.batch_id, i.seq
            """
        )
        names = [d[0] for d in rel.description]
        rows = [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
    finally:
        con.unregister("_keys")
    for row in rows:
        row["payload"] = json.loads(row["payload"]) if row["payload"] else {}
        row["options"] = json.loads(row["options"]) if row["options"] else {}
        row["settings"] = json.loads(row["settings"]) if row["settings"] else {}
    return rows


def mark_running(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    item_ids: Sequence[str],
    run_id: str | None,
    at: datetime | None = None,
) -> None:
    at = at or utcnow()
    con.register("_ids", pa.table({"item_id": pa.array(list(item_ids), pa.string())}))
    try:
        con.execute(
            "update batch_items set status = 'running', run_id = ?, started_at = ?, "
            "finished_at = null where batch_id = ? and item_id in (select item_id from _ids)",
            [run_id, at, batch_id],
        )
    finally:
        con.unregister("_ids")
    con.execute(
        "update batches set status = case when status in ('pending', 'queued') then 'running' "
        "else status end, started_at = coalesce(started_at, ?), updated_at = ? "
        "where batch_id = ?",
        [at, at, batch_id],
    )


def release_items(
    con: duckdb.DuckDBPyConnection, batch_id: str, item_ids: Sequence[str], run_id: str | None
) -> int:
    """Put items a run marked ``running`` but did not start back to ``pending``, for the next
    run of their chunk; returns how many."""
    con.register("_ids", pa.table({"item_id": pa.array(list(item_ids), pa.string())}))
    try:
        n = con.execute(
            "update batch_items set status = 'pending', run_id = null where batch_id = ? and "
            "status = 'running' and run_id is not distinct from ? and "
            "item_id in (select item_id from _ids)",
            [batch_id, run_id],
        ).fetchone()[0]
    finally:
        con.unregister("_ids")
    return int(n)


def record_outcome(
    con: duckdb.DuckDBPyConnection, outcome: ItemOutcome, run_id: str | None
) -> None:
    """Write one item's final state and its attempts (caller holds the transaction)."""
    con.execute(
        """
        update batch_items set status = ?, attempts = attempts + ?, duration_ms = ?,
            quality_score = ?, result = ?::json, error = ?, error_category = ?, severity = ?,
            started_at = coalesce(?, started_at), finished_at = ?, run_id = ?
        where batch_id = ? and item_id = ?
        """,
        [
            outcome.status,
            len(outcome.attempts),
            outcome.duration_ms,
            outcome.quality_score,
            _json(outcome.result),
            outcome.error,
            outcome.error_category,
            outcome.severity,
            outcome.started_at,
            outcome.finished_at,
            run_id,
            outcome.batch_id,
            outcome.item_id,
        ],
    )
    for a in outcome.attempts:
        con.execute(
            """
            insert or replace into item_attempts (batch_id, item_id, attempt, started_at,
                finished_at, duration_ms, outcome, error, error_category, severity, run_id)
            values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                outcome.batch_id,
                outcome.item_id,
                a.attempt,
                a.started_at,
                a.finished_at,
                a.duration_ms,
                a.outcome,
                a.error,
                a.error_category,
                a.severity,
                run_id,
            ],
        )
    if outcome.status == "failed":
        add_event(
            con,
            outcome.batch_id,
            "item_failed",
            item_id=outcome.item_id,
            actor=f"run:{run_id}" if run_id else "runner",
            detail={"error": outcome.error, "category": outcome.error_category},
        )


_OUTCOME_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("item_id", pa.string()),
        ("status", pa.string()),
        ("n_attempts", pa.int32()),
        ("duration_ms", pa.float64()),
        ("quality_score", pa.float64()),
        ("result", pa.string()),
        ("error", pa.string()),
        ("error_category", pa.string()),
        ("severity", pa.string()),
        ("started_at", pa.timestamp("us")),
        ("finished_at", pa.timestamp("us")),
    ]
)
_ATTEMPT_SCHEMA = pa.schema(
    [
        ("batch_id", pa.string()),
        ("item_id", pa.string()),
        ("attempt", pa.int32()),
        ("started_at", pa.timestamp("us")),
        ("finished_at", pa.timestamp("us")),
        ("duration_ms", pa.float64()),
        ("outcome", pa.string()),
        ("error", pa.string()),
        ("error_category", pa.string()),
        ("severity", pa.string()),
    ]
)


def record_outcomes(
    con: duckdb.DuckDBPyConnection, outcomes: Sequence[ItemOutcome], run_id: str | None
) -> None:
    """:func:`record_outcome` for many items at once: one UPDATE of ``batch_items`` and one
    INSERT into ``item_attempts`` from Arrow tables (same rows; caller holds the transaction)."""
    if not outcomes:
        return
    items = pa.Table.from_pylist(
        [
            {
                "batch_id": o.batch_id,
                "item_id": o.item_id,
                "status": o.status,
                "n_attempts": len(o.attempts),
                "duration_ms": o.duration_ms,
                "quality_score": o.quality_score,
                "result": _json(o.result),
                "error": o.error,
                "error_category": o.error_category,
                "severity": o.severity,
                "started_at": o.started_at,
                "finished_at": o.finished_at,
            }
            for o in outcomes
        ],
        schema=_OUTCOME_SCHEMA,
    )
    attempts = pa.Table.from_pylist(
        [
            {
                "batch_id": o.batch_id,
                "item_id": o.item_id,
                "attempt": a.attempt,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "duration_ms": a.duration_ms,
                "outcome": a.outcome,
                "error": a.error,
                "error_category": a.error_category,
                "severity": a.severity,
            }
            for o in outcomes
            for a in o.attempts
        ],
        schema=_ATTEMPT_SCHEMA,
    )
    con.register("_outcomes", items)
    con.register("_attempts", attempts)
    try:
        con.execute(
            """
            update batch_items set status = o.status,
                attempts = batch_items.attempts + o.n_attempts, duration_ms = o.duration_ms,
                quality_score = o.quality_score, result = o.result::json, error = o.error,
                error_category = o.error_category, severity = o.severity,
                started_at = coalesce(o.started_at, batch_items.started_at),
                finished_at = o.finished_at, run_id = ?
            from _outcomes o
            where batch_items.batch_id = o.batch_id and batch_items.item_id = o.item_id
            """,
            [run_id],
        )
        if attempts.num_rows:
            con.execute(
                """
                insert or replace into item_attempts (batch_id, item_id, attempt, started_at,
                    finished_at, duration_ms, outcome, error, error_category, severity, run_id)
                select batch_id, item_id, attempt, started_at, finished_at, duration_ms,
                    outcome, error, error_category, severity, ? from _attempts
                """,
                [run_id],
            )
    finally:
        con.unregister("_outcomes")
        con.unregister("_attempts")
    for outcome in outcomes:
        if outcome.status == "failed":
            add_event(
                con,
                outcome.batch_id,
                "item_failed",
                item_id=outcome.item_id,
                actor=f"run:{run_id}" if run_id else "runner",
                detail={"error": outcome.error, "category": outcome.error_category},
            )


def cancel_pending(
    con: duckdb.DuckDBPyConnection, batch_id: str, reason: str, *, include_running: bool = False
) -> int:
    statuses = ("pending", "running") if include_running else ("pending",)
    placeholders = ", ".join("?" for _ in statuses)
    n = con.execute(
        f"update batch_items set status = 'cancelled', error = ?, error_category = 'cancelled', "
        f"finished_at = ? where batch_id = ? and status in ({placeholders})",
        [reason, utcnow(), batch_id, *statuses],
    ).fetchone()[0]
    return int(n)


def refresh_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> str:
    """Recompute a batch's counts, progress and status from its items; returns the status.

    The error budget (``max_failure_ratio``) and stop-on-first-error are enforced here: once
    crossed, the batch becomes ``failed`` with the reason and its pending items ``cancelled``.
    """
    batch = con.execute(
        "select status, total_items, settings::varchar, paused, error from batches "
        "where batch_id = ?",
        [batch_id],
    ).fetchone()
    if batch is None:
        raise KeyError(batch_id)
    status, total, settings_json, paused, old_error = batch
    # Cancelled batches and batches stopped by stop-on-error or the error budget stay so;
    # a finished batch whose items are re-run gets its final status recomputed.
    sticky = status == "cancelled" or (
        status == "failed" and not (old_error or "").startswith(ALL_FAILED_PREFIX)
    )
    settings = json.loads(settings_json) if settings_json else {}
    counts = dict(
        con.execute(
            "select status, count(*) from batch_items where batch_id = ? group by status",
            [batch_id],
        ).fetchall()
    )
    succeeded = counts.get("succeeded", 0)
    failed = counts.get("failed", 0)
    skipped = counts.get("skipped", 0)
    cancelled = counts.get("cancelled", 0)
    running = counts.get("running", 0)
    pending = counts.get("pending", 0)
    now = utcnow()
    error = None
    new_status = status
    if not sticky:
        ratio = settings.get("max_failure_ratio")
        if failed and not settings.get("continue_on_error", True):
            new_status = "failed"
            first = con.execute(
                "select item_id, error from batch_items where batch_id = ? and status = 'failed' "
                "order by finished_at limit 1",
                [batch_id],
            ).fetchone()
            error = (
                f"stopped on first error (continue_on_error is false): item {first[0]}: {first[1]}"
            )
        elif ratio is not None and total and failed / total > ratio:
            new_status = "failed"
            error = (
                f"error budget exceeded: {failed} of {total} items failed "
                f"(max_failure_ratio {ratio})"
            )
        if new_status == "failed":
            n = cancel_pending(con, batch_id, f"batch stopped: {error}")
            cancelled += n
            pending -= n
    processed = succeeded + failed + skipped + cancelled
    if not sticky and new_status != "failed":
        if total and processed >= total:
            if failed == 0 and cancelled == 0:
                new_status = "completed"
            elif succeeded + skipped == 0:
                new_status = "failed"
                error = f"{ALL_FAILED_PREFIX}{total} items failed or were cancelled"
            else:
                new_status = "completed_with_errors"
        elif total == 0:
            new_status = "completed"
        elif paused and running == 0:
            new_status = "paused"
        elif running or processed:
            new_status = "running"
    completed = new_status in TERMINAL_BATCH_STATUSES and running == 0
    if not sticky and new_status in ("completed", "completed_with_errors", "running"):
        error = ""  # clears an "all items failed" left from before a re-run
    con.execute(
        """
        update batches set status = ?, processed_items = ?, succeeded_items = ?,
            failed_items = ?, skipped_items = ?, cancelled_items = ?,
            progress = case when total_items = 0 then 1.0 else ? / total_items end,
            updated_at = ?, error = nullif(coalesce(?, error), ''),
            started_at = case when ? > 0 then coalesce(started_at, ?) else started_at end,
            completed_at = case when ? then coalesce(completed_at, ?) else completed_at end
        where batch_id = ?
        """,
        [
            new_status,
            processed,
            succeeded,
            failed,
            skipped,
            cancelled,
            float(processed),
            now,
            error,
            processed + running,
            now,
            completed,
            now,
            batch_id,
        ],
    )
    if new_status != status:
        add_event(
            con,
            batch_id,
            f"batch_{new_status}",
            actor="ledger",
            detail={"from": status, "error": error} if error else {"from": status},
        )
    return new_status


def _rows(rel: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


_BATCH_COLUMNS = """batch_id, operation, name, status, priority, total_items, processed_items,
    succeeded_items, failed_items, skipped_items, cancelled_items, progress, options::varchar
    as options, settings::varchar as settings, submitted_by, source, parent_batch_id,
    chunk_count, paused, created_at, queued_at, started_at, completed_at, updated_at, error"""


def _decode_batch(row: dict[str, Any]) -> dict[str, Any]:
    for k in ("options", "settings"):
        row[k] = json.loads(row[k]) if row.get(k) else {}
    return row


def get_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any] | None:
    rows = _rows(
        con.execute(f"select {_BATCH_COLUMNS} from batches where batch_id = ?", [batch_id])
    )
    return _decode_batch(rows[0]) if rows else None


def list_batches(
    con: duckdb.DuckDBPyConnection,
    *,
    status: Iterable[str] | None = None,
    operation: Iterable[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    where, params = [], []
    if status:
        status = list(status)
        where.append(f"status in ({', '.join('?' for _ in status)})")
        params += status
    if operation:
        operation = list(operation)
        where.append(f"operation in ({', '.join('?' for _ in operation)})")
        params += operation
    if created_after:
        where.append("created_at >= ?")
        params.append(created_after)
    if created_before:
        where.append("created_at < ?")
        params.append(created_before)
    clause = f"where {' and '.join(where)}" if where else ""
    rel = con.execute(
        f"select {_BATCH_COLUMNS} from batches {clause} order by created_at desc, batch_id desc "
        "limit ? offset ?",
        [*params, limit, offset],
    )
    return [_decode_batch(r) for r in _rows(rel)]


def get_items(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    *,
    status: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    params: list[Any] = [batch_id]
    clause = ""
    if status:
        status = list(status)
        clause = f"and status in ({', '.join('?' for _ in status)})"
        params += status
    limit_clause = ""
    if limit is not None:
        limit_clause = "limit ? offset ?"
        params += [limit, offset]
    rel = con.execute(
        f"""select batch_id, item_id, seq, chunk_no, partition_key, payload::varchar as payload,
            status, attempts, duration_ms, quality_score, result::varchar as result, error,
            error_category, severity, started_at, finished_at, run_id
        from batch_items where batch_id = ? {clause} order by seq {limit_clause}""",
        params,
    )
    rows = _rows(rel)
    for r in rows:
        r["payload"] = json.loads(r["payload"]) if r["payload"] else None
        r["result"] = json.loads(r["result"]) if r["result"] else None
    return rows


def chunk_plan(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """Per chunk of a batch: first and last partition key and how many items are unfinished."""
    return _rows(
        con.execute(
            """
            select chunk_no, arg_min(partition_key, seq) as first_key,
                   arg_max(partition_key, seq) as last_key, count(*) as items,
                   count(*) filter (where status in ('pending', 'running')) as unfinished,
                   count(*) filter (where status = 'pending') as pending
            from batch_items where batch_id = ? group by chunk_no order by chunk_no
            """,
            [batch_id],
        )
    )


def launchable_chunks(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Chunks with pending items of batches that may run now (queued or running, not paused).

    ``first_key``..``last_key`` spans the chunk's pending items: a chunk resumed after a
    pause, a crash or a time slice is run over what is left of it, not over what is done."""
    return _rows(
        con.execute(
            """
            select i.batch_id, b.operation, b.priority, i.chunk_no,
                   arg_min(i.partition_key, i.seq) filter (where i.status = 'pending')
                       as first_key,
                   arg_max(i.partition_key, i.seq) filter (where i.status = 'pending')
                       as last_key,
                   count(*) as items,
                   count(*) filter (where i.status = 'pending') as pending,
                   try_cast(json_extract(b.settings, '$.max_concurrency') as integer)
                       as max_concurrency,
                   try_cast(json_extract(b.settings, '$.item_timeout_s') as double)
                       as item_timeout_s
            from batch_items i join batches b using (batch_id)
            where b.status in ('queued', 'running') and not b.paused
            group by all
            having count(*) filter (where i.status = 'pending') > 0
            order by i.batch_id, i.chunk_no
            """
        )
    )


def running_groups(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, str]]:
    """(batch_id, chunk_no, run_id) of items marked running, for the reaper."""
    return [
        (r[0], int(r[1]), r[2])
        for r in con.execute(
            "select batch_id, chunk_no, coalesce(run_id, '') from batch_items "
            "where status = 'running' group by all order by all"
        ).fetchall()
    ]


def reap_items(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    chunk_no: int,
    run_id: str,
    action: str,
    reason: str,
) -> int:
    """Put items a dead run left ``running`` back to ``pending`` (or fail them)."""
    if action == "requeue":
        n = con.execute(
            "update batch_items set status = 'pending', run_id = null where batch_id = ? and "
            "chunk_no = ? and coalesce(run_id, '') = ? and status = 'running'",
            [batch_id, chunk_no, run_id],
        ).fetchone()[0]
    else:
        n = con.execute(
            "update batch_items set status = 'failed', error = ?, error_category = 'crashed', "
            "severity = 'critical', finished_at = ? where batch_id = ? and chunk_no = ? and "
            "coalesce(run_id, '') = ? and status = 'running'",
            [f"run crashed: {reason}", utcnow(), batch_id, chunk_no, run_id],
        ).fetchone()[0]
    if n:
        add_event(
            con,
            batch_id,
            f"items_{'requeued' if action == 'requeue' else 'failed'}",
            actor="reaper",
            detail={"chunk": chunk_no, "run_id": run_id, "items": int(n), "reason": reason},
        )
    return int(n)
