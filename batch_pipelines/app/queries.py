"""Read the ledger: one batch, a page of batches, a batch's items. No Dagster import here, so
the CLI's read-only verbs start fast."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from batch_pipelines.core import ledger, warehouse

LIST_LIMIT_MAX = 100


def get_batch(batch_id: str) -> dict[str, Any] | None:
    """A batch's ledger row (counts, progress, status, timestamps), or None."""
    with warehouse.connect(read_only=True) as con:
        return ledger.get_batch(con, batch_id)


def list_batches(
    *,
    status: Iterable[str] | None = None,
    operation: Iterable[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Batches, newest first, filtered; ``limit`` is 1..100."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValueError(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")
    for s in status or ():
        if s not in ledger.BATCH_STATUSES:
            raise ValueError(f"status {s!r} is not one of {', '.join(ledger.BATCH_STATUSES)}")
    with warehouse.connect(read_only=True) as con:
        return ledger.list_batches(
            con,
            status=status,
            operation=operation,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            offset=offset,
        )


def may_have_active_runs(batch: Mapping[str, Any]) -> bool:
    """Whether Dagster can still hold runs of this batch (a ledger row from ``get_batch``): it
    is unfinished, or stopped with items still running. Lets a caller skip opening the Dagster
    instance for a finished batch."""
    return batch["status"] not in ledger.TERMINAL_BATCH_STATUSES or batch["completed_at"] is None


def get_items(
    batch_id: str,
    *,
    status: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    for s in status or ():
        if s not in ledger.ITEM_STATUSES:
            raise ValueError(f"status {s!r} is not one of {', '.join(ledger.ITEM_STATUSES)}")
    with warehouse.connect(read_only=True) as con:
        return ledger.get_items(con, batch_id, status=status, limit=limit, offset=offset)


def get_cleanup_log(batch_id: str) -> list[dict[str, Any]]:
    """What a cleanup batch deleted (or, in a dry run, would delete), in order."""
    with warehouse.connect(read_only=True) as con:
        rel = con.execute(
            'select item_id, target_kind, object_type, object, "rows", bytes, dry_run, '
            "deleted_at from cleanup_log where batch_id = ? order by log_id",
            [batch_id],
        )
        names = [d[0] for d in rel.description]
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
