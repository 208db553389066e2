"""The end of a batch's life: rollback (undo its writes, keep its record) and delete (its record
goes too). Every entry point (CLI, Python API, the ``batch_control`` launchpad job) calls
these; each is audited in ``batch_events`` and safe to run again after a crash halfway.

Undoing a batch's writes takes two steps: the tables it replaced, upserted or created are put
back from their snapshots (one transaction per table, each marked restored), then the
operation's ``undo`` deletes the rest (rows it appended, by their lineage columns; files it
wrote; its detail rows) in one transaction that also records the outcome.
"""

from __future__ import annotations

from typing import Any

from batch_pipelines.app.control import ControlError, ControlResult
from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.contract import UndoContext
from batch_pipelines.core.ledger import Batch, BatchStatus, ItemStatus, snapshots
from batch_pipelines.operations import get_operation


def _finished_batch(con, batch_id: str, verb: str) -> Batch:  # noqa: ANN001
    batch = ledger.load_batch(con, batch_id)
    if batch is None:
        raise ControlError(f"no batch {batch_id!r}")
    if batch.status not in ledger.TERMINAL_BATCH_STATUSES:
        raise ControlError(
            f"cannot {verb} batch {batch_id}: it is {batch.status}; cancel it first "
            f"(`batch-pipelines cancel {batch_id}`) or wait for it to finish"
        )
    running = ledger.count_items(con, batch_id, ItemStatus.RUNNING)
    if running:
        raise ControlError(
            f"cannot {verb} batch {batch_id}: {running} item(s) are still running; "
            "try again once its runs have ended"
        )
    return batch


def _undo_writes(paths: config.Paths, batch: Batch) -> dict[str, Any]:
    """Put back what the batch changed; returns counts. Run with the writer lock released
    between steps so readers are not starved by a long rollback."""
    spec = get_operation(batch.operation)
    assert spec.undo is not None
    done: dict[str, Any] = {"tables_restored": [], "tables_dropped": []}
    while True:
        with warehouse.connect(paths.warehouse) as con:
            pending = snapshots.unrestored(con, batch.batch_id)
            if not pending:
                break
            first = pending[0]
            how = lake.transaction(
                con, lambda first=first: snapshots.restore(con, batch.batch_id, first)
            )
        done[f"tables_{how}"].append(pending[0]["table_name"])
    return done


def _undo_and(
    paths: config.Paths,
    batch: Batch,
    finish: Any,  # noqa: ANN401 - a callback (con, counts)
) -> dict[str, Any]:
    """Restore the snapshots, then in one transaction the operation's undo and ``finish``."""
    done = _undo_writes(paths, batch)
    spec = get_operation(batch.operation)
    with warehouse.connect(paths.warehouse) as con:

        def undo() -> None:
            done.update(spec.undo(con, UndoContext(batch.batch_id, paths)))
            finish(con, done)

        lake.transaction(con, undo)
    return done


def rollback_batch(batch_id: str, *, actor: str = "python") -> ControlResult:
    """Undo a finished batch's writes and mark it ``rolled_back``: the tables it replaced,
    upserted or created are as they were before it, the rows it appended, the files it wrote
    and its result rows are gone; its items stay, as the record. Rolling back a rolled-back
    batch does nothing; a rollback stopped halfway (a crash) completes when run again."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:
        batch = ledger.load_batch(con, batch_id)
        if batch is not None and batch.status == BatchStatus.ROLLED_BACK:
            return ControlResult(
                batch_id, "rollback", batch.status, message=f"{batch_id} is already rolled back"
            )
        batch = _finished_batch(con, batch_id, "roll back")
        if get_operation(batch.operation).undo is None:
            raise ControlError(
                f"cannot roll back batch {batch_id}: a {batch.operation} batch's writes "
                "cannot be undone (what it deleted is gone)"
            )
        ledger.add_event(
            con, batch_id, "batch_rollback_started", actor=actor, detail={"from": batch.status}
        )

    def finish(con, done: dict[str, Any]) -> None:  # noqa: ANN001
        ledger.mark_rolled_back(con, batch_id, actor=actor, detail={"from": batch.status, **done})

    done = _undo_and(paths, batch, finish)
    restored = len(done["tables_restored"]) + len(done["tables_dropped"])
    rows = sum(v for k, v in done.items() if isinstance(v, int) and k != "files")
    return ControlResult(
        batch_id,
        "rollback",
        BatchStatus.ROLLED_BACK,
        message=(
            f"rolled back {batch_id}: {restored} table(s) put back, {rows} row(s) and "
            f"{done.get('files', 0)} file(s) deleted"
        ),
    )


def rollback_if_failed(batch_id: str, *, actor: str = "rollback_on_failure") -> bool:
    """Roll back a batch that ended ``failed`` with ``settings.rollback_on_failure``, once no
    item of it is running; returns whether it was rolled back now. Called where a batch may
    end: after a chunk run, and by cancel."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        batch = ledger.load_batch(con, batch_id)
        if batch is None or batch.status != BatchStatus.FAILED:
            return False
        if not batch.settings.get("rollback_on_failure"):
            return False
        if ledger.count_items(con, batch_id, ItemStatus.RUNNING):
            return False  # the last chunk run to end does it
    try:
        rollback_batch(batch_id, actor=actor)
    except ControlError:
        return False  # another run rolled it back first, or an item started meanwhile
    return True


def delete_batch(
    batch_id: str,
    *,
    keep_data: bool = False,
    instance=None,  # noqa: ANN001
    actor: str = "python",
) -> ControlResult:
    """Delete a finished batch: its writes (unless ``keep_data``: as ``rollback`` undoes them),
    its Dagster item partitions, its items, attempts and events. One ``batch_deleted`` event
    with the counts stays as the audit record. Run again after a crash halfway, it finishes."""
    from batch_pipelines.app.instance import get_instance
    from batch_pipelines.app.partitions import delete_keys

    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        batch = _finished_batch(con, batch_id, "delete")
        keys = [k for _, _, k in ledger.partition_keys(con, [batch_id])]
    spec = get_operation(batch.operation)
    undo = not keep_data and spec.undo is not None and batch.status != BatchStatus.ROLLED_BACK
    done: dict[str, Any] = {}
    if undo:
        done = _undo_and(paths, batch, lambda con, done: None)
    # Partitions before the ledger rows: a crash in between leaves the batch to delete again.
    instance = instance or get_instance()
    delete_keys(instance, batch.operation, keys)
    detail = {
        "operation": batch.operation,
        "status": batch.status,
        "keep_data": keep_data,
        "partitions": len(keys),
        "undone": {k: v for k, v in done.items() if v} if undo else None,
    }
    with warehouse.connect(paths.warehouse) as con:
        counts = lake.transaction(
            con, lambda: ledger.purge_batch(con, batch_id, actor=actor, detail=detail)
        )
    what = "its data kept" if not undo else "its writes undone"
    return ControlResult(
        batch_id,
        "delete",
        "deleted",
        message=(
            f"deleted {batch_id}: {counts['batch_items']} item(s), {len(keys)} partition(s), {what}"
        ),
    )
