"""How the runner writes what its items did: one short locked write per flush.

A flush commits the items buffered since the last one and refreshes their batches. The
items whose commits only touch the warehouse (every item of an operation with
``OperationSpec.group_commits``, and any item without a commit callable: failed, cancelled,
or with ``ItemResult.rows`` only) are written together in one transaction: their detail rows
table by table (one DELETE and one INSERT from an Arrow table each), their commit callables,
then their ``batch_items`` and ``item_attempts`` rows set-wise, and when no item needs a
transaction of its own the refresh of their batches joins it. If that transaction fails it
is rolled back and the same items are committed one transaction each, so only the item at
fault fails (with its error) and the others are written. Items whose commits have effects
outside DuckDB (a file renamed or deleted) always get a transaction of their own. Re-running
an item replaces its rows (deleted by key first), so a flush that is retried never
duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.contract import CommitContext, RowsCommit
from batch_pipelines.core.errors import classify, is_interrupt
from batch_pipelines.core.execution import PendingCommit
from batch_pipelines.core.ledger import ItemStatus
from batch_pipelines.core.redact import redact
from batch_pipelines.core.sql import quote_ident

log = logging.getLogger("batch_pipelines.core.runner")


@dataclass(frozen=True)
class BatchState:
    """A batch as a flush leaves it: what the runner decides on next."""

    status: str
    paused: bool
    failed: int
    total: int


def _mark_skipped(p: PendingCommit, override: str | None) -> None:
    if override == ItemStatus.SKIPPED:
        p.outcome.status = ItemStatus.SKIPPED
        p.outcome.attempts[-1].outcome = ItemStatus.SKIPPED


def _commit_one(con: duckdb.DuckDBPyConnection, pending: PendingCommit, run_id: str | None) -> None:
    """One item, its commit and its ledger rows in a transaction of its own; a commit that
    fails fails the item (recorded in a second transaction)."""
    outcome = pending.outcome
    result = pending.result

    def attempt() -> None:
        if result is not None and result.commit is not None:
            cc = CommitContext(outcome.batch_id, outcome.item_id, run_id)
            _mark_skipped(pending, result.commit(con, cc))
        ledger.record_outcome(con, outcome, run_id)

    try:
        lake.transaction(con, attempt)
    except Exception as exc:
        if is_interrupt(exc):
            raise KeyboardInterrupt from exc
        c = classify(exc)
        outcome.status = ItemStatus.FAILED
        outcome.error = f"commit failed: {c.message}"
        outcome.error_category, outcome.severity = c.category, c.severity
        outcome.result = None
        outcome.quality_score = None
        if outcome.attempts:
            last = outcome.attempts[-1]
            last.outcome, last.error = ItemStatus.FAILED, outcome.error
            last.error_category, last.severity = c.category, c.severity
        lake.transaction(con, lambda: ledger.record_outcome(con, outcome, run_id))


def replace_rows_together(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows_by_item: Sequence[tuple[str, str, Sequence[dict[str, Any]]]],
) -> None:
    """``CommitContext.replace_rows`` for many items at once: ``rows_by_item`` holds
    ``(batch_id, item_id, rows)``; every earlier row of those items goes, then all the rows
    are inserted with one statement (caller holds the transaction)."""
    if not rows_by_item:
        return
    target = quote_ident(table)
    keys = pa.table(
        {
            "batch_id": pa.array([b for b, _, _ in rows_by_item], pa.string()),
            "item_id": pa.array([i for _, i, _ in rows_by_item], pa.string()),
        }
    )
    records = [{"batch_id": b, "item_id": i, **row} for b, i, rows in rows_by_item for row in rows]
    con.register("_commit_keys", keys)
    try:
        con.execute(
            f"delete from {target} using _commit_keys k "
            f"where {target}.batch_id = k.batch_id and {target}.item_id = k.item_id"
        ).fetchall()
    finally:
        con.unregister("_commit_keys")
    if not records:
        return
    columns = list(dict.fromkeys(c for r in records for c in r))
    data = pa.table({c: pa.array([r.get(c) for r in records]) for c in columns})
    names = ", ".join(quote_ident(c) for c in columns)
    con.register("_commit_rows", data)
    try:
        con.execute(f"insert into {target} ({names}) select {names} from _commit_rows").fetchall()
    finally:
        con.unregister("_commit_rows")


def _commit_together(
    con: duckdb.DuckDBPyConnection,
    pending: Sequence[PendingCommit],
    run_id: str | None,
    then: Callable[[], None] | None = None,
) -> bool:
    """Commit every item and its ledger rows in one transaction, ending with ``then()``. If
    anything fails, nothing is written, the outcomes are as they were, and False is returned
    (the caller commits the items one by one, so only the failing one fails)."""
    before = [
        (p.outcome.status, p.outcome.attempts[-1].outcome if p.outcome.attempts else None)
        for p in pending
    ]

    def attempt() -> None:
        try:
            _write_together(con, pending, run_id)
            if then is not None:
                then()
        except BaseException:
            # What the failed attempt changed of the outcomes (skipped) is undone with it.
            for p, (status, last) in zip(pending, before, strict=True):
                p.outcome.status = status
                if p.outcome.attempts:
                    p.outcome.attempts[-1].outcome = last
            raise

    try:
        lake.transaction(con, attempt)
        return True
    except Exception as exc:  # noqa: BLE001 - retried item by item, where it is classified
        if is_interrupt(exc):
            raise KeyboardInterrupt from exc
        log.info(
            "bulk commit of %d items failed (%s); committing them one by one",
            len(pending),
            redact(str(exc)),
        )
        return False


def _write_together(
    con: duckdb.DuckDBPyConnection, pending: Sequence[PendingCommit], run_id: str | None
) -> None:
    """The rows of every item (one DELETE and INSERT per table), their commits, their
    ledger rows, in the caller's transaction."""
    tables: dict[str, list[tuple[str, str, Sequence[dict[str, Any]]]]] = {}
    for p in pending:
        commit = p.result.commit if p.result is not None else None
        if isinstance(commit, RowsCommit):
            for table, rows in commit.rows.items():
                tables.setdefault(table, []).append((p.outcome.batch_id, p.outcome.item_id, rows))
    for table, rows_by_item in tables.items():
        replace_rows_together(con, table, rows_by_item)
    for p in pending:
        commit = p.result.commit if p.result is not None else None
        if isinstance(commit, RowsCommit):
            commit = commit.then
        if commit is not None:
            cc = CommitContext(p.outcome.batch_id, p.outcome.item_id, run_id)
            _mark_skipped(p, commit(con, cc))
    ledger.record_outcomes(con, [p.outcome for p in pending], run_id)


def _groupable(p: PendingCommit, group_commits: bool) -> bool:
    if group_commits or p.result is None or p.result.commit is None:
        return True
    # Rows alone are warehouse writes; an operation's own commit may touch files.
    return isinstance(p.result.commit, RowsCommit) and p.result.commit.then is None


def commit_items(
    con: duckdb.DuckDBPyConnection,
    pending: Sequence[PendingCommit],
    run_id: str | None,
    *,
    group_commits: bool = False,
    then: Callable[[], None] | None = None,
) -> bool:
    """Commit buffered items on ``con``: together where allowed, one by one otherwise.
    ``then`` (more writes) joins the transaction of the items when they all went together;
    returns whether it did (if not, the caller still has to run it)."""
    together = [p for p in pending if _groupable(p, group_commits)]
    alone = [p for p in pending if not _groupable(p, group_commits)]
    joined = bool(together) and not alone and then is not None
    if len(together) > 1 or joined:
        if not _commit_together(con, together, run_id, then if joined else None):
            alone, joined = together + alone, False
    else:
        alone = together + alone
    for p in alone:
        _commit_one(con, p, run_id)
    return joined


def flush(
    pending: Sequence[PendingCommit],
    batch_ids: set[str],
    run_id: str | None,
    paths: config.Paths,
    *,
    group_commits: bool = False,
) -> dict[str, BatchState]:
    """Commit buffered items (:func:`commit_items`), refresh their batches and run the
    items' cleanups; returns each batch's state."""
    states: dict[str, BatchState] = {}
    statuses: dict[str, str] = {}
    try:
        with warehouse.connect(paths.warehouse) as con:

            def refresh() -> None:
                for batch_id in sorted(batch_ids):
                    statuses[batch_id] = ledger.refresh_batch(con, batch_id)

            # The batches' refresh shares the items' transaction when it can: one commit less.
            if not commit_items(con, pending, run_id, group_commits=group_commits, then=refresh):
                lake.transaction(con, refresh)
            for batch_id in sorted(batch_ids):
                paused, failed, total = ledger.paused_failed_total(con, batch_id)
                states[batch_id] = BatchState(statuses[batch_id], paused, failed, total)
    finally:
        for p in pending:
            if p.result is not None and p.result.cleanup is not None:
                try:
                    p.result.cleanup()
                except Exception:  # noqa: BLE001 - cleanup is best effort
                    log.warning("cleanup of item %s failed", p.outcome.item_id, exc_info=True)
    return states
