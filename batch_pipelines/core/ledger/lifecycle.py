"""Ledger writes for a batch's later life: re-prioritising, rolling back, deleting, and the
instance-wide hold. Every function takes an open warehouse connection; the caller holds the
transaction."""

from __future__ import annotations

from typing import Any

import duckdb

from batch_pipelines.core.gates import CANARY_RELEASED
from batch_pipelines.core.ledger import snapshots
from batch_pipelines.core.ledger.models import BatchStatus, from_json, to_json, utcnow
from batch_pipelines.core.ledger.reads import one
from batch_pipelines.core.ledger.store import add_event, set_batch_status, write


def set_priority(
    con: duckdb.DuckDBPyConnection, batch_id: str, priority: str, *, actor: str
) -> str:
    """Give a batch a new priority; returns the old one."""
    row = one(con, "select priority from batches where batch_id = ?", [batch_id])
    if row is None:
        raise KeyError(batch_id)
    write(
        con,
        "update batches set priority = ?, updated_at = ? where batch_id = ?",
        [priority, utcnow(), batch_id],
    )
    add_event(
        con,
        batch_id,
        "batch_priority_changed",
        actor=actor,
        detail={"from": row[0], "to": priority},
    )
    return row[0]


def mark_rolled_back(
    con: duckdb.DuckDBPyConnection, batch_id: str, *, actor: str, detail: dict[str, Any]
) -> None:
    """The batch's writes are undone: it becomes ``rolled_back`` (raises
    :class:`~.states.TransitionError` for an unfinished batch) and its snapshots go."""
    set_batch_status(con, batch_id, BatchStatus.ROLLED_BACK)
    snapshots.drop(con, [batch_id])
    add_event(con, batch_id, "batch_rolled_back", actor=actor, detail=detail)


def purge_batch(
    con: duckdb.DuckDBPyConnection, batch_id: str, *, actor: str, detail: dict[str, Any]
) -> dict[str, int]:
    """Delete every ledger row of a batch and its snapshots, and leave one ``batch_deleted``
    event (with the counts) as the audit record; returns the counts."""
    counts = {
        table: write(con, f"delete from {table} where batch_id = ?", [batch_id])
        for table in ("item_attempts", "batch_events", "batch_items")
    }
    counts["snapshots"] = snapshots.drop(con, [batch_id])
    # What was recorded about the batch goes with it: its runs' costs, and the diffs that
    # name its items.
    counts["run_metrics"] = write(con, "delete from run_metrics where batch_id = ?", [batch_id])
    counts["batch_diffs"] = write(
        con, "delete from batch_diffs where ? in (batch_a, batch_b)", [batch_id]
    )
    counts["batches"] = write(con, "delete from batches where batch_id = ?", [batch_id])
    add_event(con, batch_id, "batch_deleted", actor=actor, detail={**detail, **counts})
    return counts


# --- the instance-wide hold ------------------------------------------------------------------


def get_hold(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The hold in force (held_at, held_by, paused_batches), or None."""
    row = one(
        con,
        "select held_at, held_by, paused_batches::varchar from instance_hold "
        "order by held_at limit 1",
    )
    if row is None:
        return None
    return {"held_at": row[0], "held_by": row[1], "paused_batches": from_json(row[2], [])}


def set_hold(con: duckdb.DuckDBPyConnection, *, actor: str, paused_batches: list[str]) -> None:
    """Hold the instance: the dispatcher launches nothing until :func:`clear_hold`. A second
    hold adds the batches it paused to the first one's."""
    current = get_hold(con)
    if current is None:
        write(
            con,
            "insert into instance_hold (held_at, held_by, paused_batches) values (?, ?, ?)",
            [utcnow(), actor, to_json(paused_batches)],
        )
    else:
        merged = list(dict.fromkeys([*current["paused_batches"], *paused_batches]))
        write(con, "update instance_hold set paused_batches = ?", [to_json(merged)])
    add_event(
        con, None, "instance_held", actor=actor, detail={"paused_batches": len(paused_batches)}
    )


def clear_hold(con: duckdb.DuckDBPyConnection, *, actor: str) -> dict[str, Any] | None:
    """Lift the hold; returns what it was (None if there was none)."""
    current = get_hold(con)
    if current is None:
        return None
    write(con, "delete from instance_hold")
    add_event(
        con,
        None,
        "instance_released",
        actor=actor,
        detail={"paused_batches": len(current["paused_batches"])},
    )
    return current


def release_canary(con: duckdb.DuckDBPyConnection, batch_id: str, *, actor: str) -> None:
    """A person resumed a ``canary_failed`` batch: the rest of its items may run anyway."""
    set_batch_status(con, batch_id, BatchStatus.RUNNING)
    write(
        con,
        "update batches set canary_status = ?, error = null where batch_id = ?",
        [CANARY_RELEASED, batch_id],
    )
    add_event(con, batch_id, "batch_canary_released", actor=actor)


def claim_gate(con: duckdb.DuckDBPyConnection, batch_id: str) -> bool:
    """Take the quality gate of a finished batch (once: a second caller gets False)."""
    return bool(
        write(
            con,
            "update batches set gate_status = 'checking' where batch_id = ? and "
            "gate_status is null",
            [batch_id],
        )
    )


def set_gate_status(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    gate_status: str,
    *,
    detail: dict[str, Any] | None = None,
) -> None:
    """What the quality gate did with a finished batch (passed, requeued, max_rounds, error),
    with an event saying so."""
    write(con, "update batches set gate_status = ? where batch_id = ?", [gate_status, batch_id])
    add_event(con, batch_id, f"quality_gate_{gate_status}", actor="quality_gate", detail=detail)


def gates_due(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Finished batches with a quality gate it has not looked at yet."""
    return [
        r[0]
        for r in con.execute(
            "select batch_id from batches where gate_status is null and status in (?, ?) "
            "and json_extract(settings, '$.quality_gate') is not null "
            "and json_extract(settings, '$.quality_gate')::varchar <> 'null' "
            "order by created_at",
            [BatchStatus.COMPLETED, BatchStatus.COMPLETED_WITH_ERRORS],
        ).fetchall()
    ]


def gate_summary(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any] | None:
    """The quality gate of a batch: its status, and per round the child batch it sent back,
    how many items went back, how many passed after (quality at or over ``min_score``), how
    many stayed under. None when the batch has no gate."""
    row = one(
        con,
        "select gate_status, try_cast(json_extract(settings, '$.quality_gate.min_score') "
        "as double) from batches where batch_id = ?",
        [batch_id],
    )
    if row is None or row[1] is None:
        return None
    status, min_score = row
    rounds, parent = [], batch_id
    # A child the gate sent back answers for its parent: show the gate from the top.
    while True:
        up = one(
            con,
            "select parent_batch_id from batches where batch_id = ? and source = 'quality_gate'",
            [parent],
        )
        if up is None or up[0] is None:
            break
        parent = up[0]
    root = parent
    status = one(con, "select gate_status from batches where batch_id = ?", [root])[0]
    while True:
        child = one(
            con,
            "select b.batch_id, b.status, b.gate_round, count(i.item_id), "
            "count(*) filter (where i.status = 'succeeded' and i.quality_score >= ?), "
            "count(*) filter (where i.status = 'succeeded' and i.quality_score < ?) "
            "from batches b left join batch_items i using (batch_id) "
            "where b.parent_batch_id = ? and b.source = 'quality_gate' "
            "group by b.batch_id, b.status, b.gate_round, b.created_at "
            "order by b.created_at limit 1",
            [min_score, min_score, parent],
        )
        if child is None:
            break
        rounds.append(
            {
                "round": child[2],
                "batch_id": child[0],
                "status": child[1],
                "sent_back": child[3],
                "passed_after": child[4],
                "still_below": child[5],
            }
        )
        parent = child[0]
    return {
        "batch_id": root,
        "min_score": min_score,
        "status": status,
        "sent_back": rounds[0]["sent_back"] if rounds else 0,
        "passed_after": sum(r["passed_after"] for r in rounds),
        "rounds": rounds,
    }
