"""Writes of what runs did to items: each item's final state in ``batch_items``, its
attempts in ``item_attempts`` and an ``item_failed`` event per failed item, one item at a time
or many at once (Arrow tables, one statement per table)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from batch_pipelines.core import lake
from batch_pipelines.core.ledger.models import ItemOutcome, ItemStatus, to_json, utcnow
from batch_pipelines.core.ledger.store import add_event, write
from batch_pipelines.core.redact import redact_optional, redact_value


def _failed_event(con: duckdb.DuckDBPyConnection, outcome: ItemOutcome, run_id: str | None) -> None:
    add_event(
        con,
        outcome.batch_id,
        "item_failed",
        item_id=outcome.item_id,
        actor=f"run:{run_id}" if run_id else "runner",
        detail={"error": outcome.error, "category": outcome.error_category},
    )


def _failed_events(
    con: duckdb.DuckDBPyConnection, outcomes: Sequence[ItemOutcome], run_id: str | None
) -> None:
    """:func:`_failed_event` for every failed item of ``outcomes``, in one statement."""
    failed = [o for o in outcomes if o.status == ItemStatus.FAILED]
    if not failed:
        return
    at, actor = utcnow(), f"run:{run_id}" if run_id else "runner"
    con.executemany(
        'insert into batch_events (batch_id, item_id, event, "at", actor, detail) '
        "values (?, ?, 'item_failed', ?, ?, ?)",
        [
            [
                o.batch_id,
                o.item_id,
                at,
                actor,
                to_json(redact_value({"error": o.error, "category": o.error_category})),
            ]
            for o in failed
        ],
    )


def record_outcome(
    con: duckdb.DuckDBPyConnection, outcome: ItemOutcome, run_id: str | None
) -> None:
    """Write one item's final state and its attempts (caller holds the transaction)."""
    write(
        con,
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
            to_json(outcome.result),
            redact_optional(outcome.error),
            outcome.error_category,
            outcome.severity,
            outcome.started_at,
            outcome.finished_at,
            run_id,
            outcome.batch_id,
            outcome.item_id,
        ],
    )
    on_lake = lake.is_lake(con)
    for a in outcome.attempts:
        if on_lake:  # a lake has no primary key to replace on
            write(
                con,
                "delete from item_attempts where batch_id = ? and item_id = ? and attempt = ?",
                [outcome.batch_id, outcome.item_id, a.attempt],
            )
        write(
            con,
            f"""
            insert {"" if on_lake else "or replace "}into item_attempts (batch_id, item_id, attempt, started_at,
                finished_at, duration_ms, outcome, error, error_category, severity, run_id,
                traceback)
            values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                outcome.batch_id,
                outcome.item_id,
                a.attempt,
                a.started_at,
                a.finished_at,
                a.duration_ms,
                a.outcome,
                redact_optional(a.error),
                a.error_category,
                a.severity,
                run_id,
                a.traceback,
            ],
        )
    if outcome.status == ItemStatus.FAILED:
        _failed_event(con, outcome, run_id)


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
        ("traceback", pa.string()),
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
                "result": to_json(o.result),
                "error": redact_optional(o.error),
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
                "error": redact_optional(a.error),
                "error_category": a.error_category,
                "severity": a.severity,
                "traceback": a.traceback,
            }
            for o in outcomes
            for a in o.attempts
        ],
        schema=_ATTEMPT_SCHEMA,
    )
    con.register("_outcomes", items)
    con.register("_attempts", attempts)
    try:
        write(
            con,
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
            on_lake = lake.is_lake(con)
            if on_lake:  # a lake has no primary key to replace on
                write(
                    con,
                    "delete from item_attempts using _attempts a where "
                    "item_attempts.batch_id = a.batch_id and item_attempts.item_id = a.item_id "
                    "and item_attempts.attempt = a.attempt",
                )
            write(
                con,
                f"""
                insert {"" if on_lake else "or replace "}into item_attempts (batch_id, item_id, attempt, started_at,
                    finished_at, duration_ms, outcome, error, error_category, severity, run_id,
                    traceback)
                select batch_id, item_id, attempt, started_at, finished_at, duration_ms,
                    outcome, error, error_category, severity, ?, traceback from _attempts
                """,
                [run_id],
            )
    finally:
        con.unregister("_outcomes")
        con.unregister("_attempts")
    _failed_events(con, outcomes, run_id)
