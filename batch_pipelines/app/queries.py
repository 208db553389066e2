"""Read the ledger: one batch, a page of batches, a batch's items. No Dagster import here, so
the CLI's read-only verbs start fast."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from batch_pipelines.core import ledger, warehouse


def get_batch(batch_id: str) -> dict[str, Any] | None:
    """A batch's ledger row (counts, progress, status, timestamps), or None."""
    with warehouse.connect(read_only=True) as con:
        return ledger.get_batch(con, batch_id)


def list_batches(**filters: Any) -> list[dict[str, Any]]:  # noqa: ANN401
    """Batches, newest first; ``filters`` are the fields of
    :class:`~batch_pipelines.core.ledger.BatchFilter` (``status``, ``operation``,
    ``created_after``, ``created_before``, ``limit`` 1..100, ``offset``). A bad value raises
    ValueError."""
    where = ledger.BatchFilter(**filters)
    with warehouse.connect(read_only=True) as con:
        return ledger.list_batches(con, where)


def deleted_record(batch_id: str) -> dict[str, Any] | None:
    """What a deleted batch left (its ``batch_deleted`` event: at, actor, counts), or None."""
    with warehouse.connect(read_only=True) as con:
        row = con.execute(
            'select "at", actor, detail::varchar from batch_events where batch_id = ? and '
            "event = 'batch_deleted' order by event_id desc limit 1",
            [batch_id],
        ).fetchone()
    if row is None:
        return None
    return {"at": row[0], "actor": row[1], "detail": json.loads(row[2] or "{}")}


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


def get_provenance(
    batch_id: str,
    *,
    status: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """A batch's rows of the ``item_provenance`` view (code and library versions, options
    hash, input hash and key, backend and model, run and attempt), in submission order."""
    statuses = list(status or ())
    where = f" and p.status in ({', '.join('?' for _ in statuses)})" if statuses else ""
    with warehouse.connect(read_only=True) as con:
        rel = con.execute(
            "select p.* from item_provenance p join batch_items i using (batch_id, item_id) "
            f"where p.batch_id = ?{where} order by i.seq limit ? offset ?",
            [batch_id, *statuses, limit, offset],
        )
        names = [d[0] for d in rel.description]
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
