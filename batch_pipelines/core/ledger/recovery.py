"""Ledger writes that recover a batch from a worker that stopped: the items a run left
``running`` go back to ``pending`` (nothing of an item is written before its commit, which is
one transaction, so running it again is safe), and a batch stopped by a signal is paused.

Every function takes an open warehouse connection; the caller holds the transaction."""

from __future__ import annotations

import duckdb

from batch_pipelines.core import ledger
from batch_pipelines.core.ledger import BatchStatus, ItemStatus
from batch_pipelines.core.ledger.store import write


def requeue_run_items(
    con: duckdb.DuckDBPyConnection, batch_id: str, run_id: str, *, actor: str, reason: str
) -> int:
    """Put the items ``run_id`` left ``running`` in ``batch_id`` back to ``pending``; returns
    how many (an ``items_requeued`` event says why)."""
    n = write(
        con,
        "update batch_items set status = ?, run_id = null where batch_id = ? and "
        "coalesce(run_id, '') = ? and status = ?",
        [ItemStatus.PENDING, batch_id, run_id, ItemStatus.RUNNING],
    )
    if n:
        ledger.add_event(
            con,
            batch_id,
            "items_requeued",
            actor=actor,
            detail={"run_id": run_id, "items": n, "reason": reason},
        )
    return n


def pause_interrupted(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    run_ids: list[str],
    *,
    signal_name: str,
    actor: str,
) -> tuple[BatchStatus, int]:
    """A batch whose worker was stopped by ``signal_name``: the items its runs left
    ``running`` go back to ``pending`` and the batch is paused (``resume`` continues it);
    returns its status and how many items went back."""
    released = sum(
        requeue_run_items(con, batch_id, r, actor=actor, reason=f"stopped by {signal_name}")
        for r in run_ids
    )
    unfinished = ledger.count_items(con, batch_id, ItemStatus.PENDING) + ledger.count_items(
        con, batch_id, ItemStatus.RUNNING
    )
    status = ledger.batch_status(con, batch_id)
    if unfinished and status not in ledger.TERMINAL_BATCH_STATUSES:
        ledger.set_paused(con, batch_id, True)
    status = ledger.refresh_batch(con, batch_id)
    ledger.add_event(
        con,
        batch_id,
        "batch_interrupted",
        actor=actor,
        detail={"signal": signal_name, "items_requeued": released, "runs": run_ids},
    )
    return status, released


def running_items_by_run(
    con: duckdb.DuckDBPyConnection, batch_id: str
) -> dict[tuple[int, str], int]:
    """How many of the batch's items are ``running``, per (chunk, run id); '' for no run."""
    return {
        (int(chunk), run_id): int(n)
        for chunk, run_id, n in con.execute(
            "select chunk_no, coalesce(run_id, ''), count(*) from batch_items "
            "where batch_id = ? and status = ? group by all order by all",
            [batch_id, ItemStatus.RUNNING],
        ).fetchall()
    }
