"""Controls on the queue as a whole: re-prioritising a batch, aging queued runs, and the
instance-wide hold (``pause --all`` / ``resume --all``). Every entry point calls these; each
is audited in ``batch_events``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC

from batch_pipelines.app.control import ControlError, ControlResult, dequeue_for
from batch_pipelines.app.dispatch import QueuedRun, plan_run_priorities
from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.ledger import BatchStatus
from batch_pipelines.core.manifest import PRIORITIES

PRIORITY_TAG = "dagster/priority"


def queued_runs(records: Iterable, now: float | None = None) -> list[QueuedRun]:  # noqa: ANN001
    """The queued chunk runs among run records, with their priority tag and time queued."""
    now = time.time() if now is None else now
    out = []
    for record in records:
        run = record.dagster_run
        if run.status.value not in ("QUEUED", "NOT_STARTED") or "batch/id" not in run.tags:
            continue
        try:
            tag = int(run.tags.get(PRIORITY_TAG, "0"))
        except ValueError:
            tag = 0
        created = record.create_timestamp
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        out.append(QueuedRun(run.run_id, run.tags["batch/id"], tag, now - created.timestamp()))
    return out


def retag_queued_runs(
    instance,  # noqa: ANN001
    records: Iterable,
    batch_priority: Mapping[str, str],
    batch_waiting: Mapping[str, float],
    now: float | None = None,
) -> dict[str, int]:
    """Give queued chunk runs the priority their batch has now, aged by how long they have
    waited (``BATCH_PIPELINES_PRIORITY_AGING_S``); returns ``{run_id: new priority}``."""
    plan = plan_run_priorities(
        queued_runs(records, now), batch_priority, config.priority_aging_s(), batch_waiting
    )
    for run_id, priority in plan.items():
        instance.add_run_tags(run_id, {PRIORITY_TAG: str(priority)})
    return plan


def change_priority(
    batch_id: str,
    priority: str,
    *,
    instance=None,  # noqa: ANN001
    actor: str = "python",
) -> ControlResult:
    """Give a batch that has not finished a new priority: chunks not yet launched take it, and
    so do its runs still in Dagster's queue (their ``dagster/priority`` tag)."""
    from dagster import RunsFilter

    from batch_pipelines.app.instance import get_instance

    if priority not in PRIORITIES:
        raise ControlError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:
        batch = ledger.load_batch(con, batch_id)
        if batch is None:
            raise ControlError(f"no batch {batch_id!r}")
        if batch.status in ledger.TERMINAL_BATCH_STATUSES:
            raise ControlError(
                f"cannot change the priority of batch {batch_id}: it is {batch.status}; "
                "only a queued, running or paused batch has chunks left to launch"
            )
        old = lake.transaction(
            con, lambda: ledger.set_priority(con, batch_id, priority, actor=actor)
        )
    instance = instance or get_instance()
    records = instance.get_run_records(filters=RunsFilter(tags={"batch/id": batch_id}))
    waited = (ledger.utcnow() - batch.queued_at).total_seconds() if batch.queued_at else 0.0
    retagged = retag_queued_runs(instance, records, {batch_id: priority}, {batch_id: waited})
    return ControlResult(
        batch_id,
        "priority",
        batch.status,
        message=(
            f"{batch_id}: priority {old} -> {priority}; {len(retagged)} queued run(s) retagged"
        ),
    )


def _unfinished_batches(con) -> list[str]:  # noqa: ANN001
    terminal = list(ledger.TERMINAL_BATCH_STATUSES)
    marks = ", ".join("?" for _ in terminal)
    return [
        r[0]
        for r in con.execute(
            f"select batch_id from batches where status not in ({marks}) and not paused "
            "order by created_at",
            terminal,
        ).fetchall()
    ]


def hold_all(
    *,
    instance=None,  # noqa: ANN001
    actor: str = "python",
    settle_s: float = 4.0,
) -> ControlResult:
    """Hold the instance: every unfinished batch is paused (its queued runs taken off the
    queue, running ones finish: a drain), and the dispatcher launches nothing, not even the
    chunks of batches submitted meanwhile (submissions are still accepted), until
    :func:`release_all`."""
    from batch_pipelines.app.instance import get_instance

    instance = instance or get_instance()
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:

        def hold() -> list[str]:
            batch_ids = _unfinished_batches(con)
            for batch_id in batch_ids:
                ledger.set_paused(con, batch_id, True)
                ledger.add_event(
                    con, batch_id, "batch_pause_requested", actor=actor, detail={"hold": True}
                )
            ledger.set_hold(con, actor=actor, paused_batches=batch_ids)
            return batch_ids

        batch_ids = lake.transaction(con, hold)
    result = ControlResult("*", "hold", "held")
    # A tick that read the ledger just before the hold may still enqueue runs: sweep for one
    # dispatcher interval, as pause does.
    dequeue_for(instance, batch_ids, result, settle_s)
    with warehouse.connect(paths.warehouse) as con:
        paused = lake.transaction(
            con,
            lambda: sum(
                ledger.refresh_batch(con, batch_id) == BatchStatus.PAUSED for batch_id in batch_ids
            ),
        )
    result.message = (
        f"held: {len(batch_ids)} batch(es) paused ({paused} drained, the others finish their "
        f"running chunks), {len(result.dequeued_runs)} queued run(s) dequeued; submissions "
        "are accepted but nothing launches until `resume --all`"
    )
    return result


def release_all(*, actor: str = "python") -> ControlResult:
    """Lift the hold: the batches it paused are resumed (not those paused one by one before
    it), and the dispatcher launches again."""
    paths = config.get_paths()

    def release() -> int:
        hold = ledger.clear_hold(con, actor=actor)
        if hold is None:
            raise ControlError("the instance is not held (hold it with `pause --all`)")
        resumed = 0
        for batch_id in hold["paused_batches"]:
            batch = ledger.load_batch(con, batch_id)
            if batch is None or not batch.paused:
                continue
            ledger.set_paused(con, batch_id, False)
            ledger.refresh_batch(con, batch_id)
            ledger.add_event(con, batch_id, "batch_resumed", actor=actor, detail={"hold": True})
            resumed += 1
        return resumed

    with warehouse.connect(paths.warehouse) as con:
        resumed = lake.transaction(con, release)
    return ControlResult(
        "*",
        "release",
        "released",
        message=f"released the hold: {resumed} batch(es) resumed",
    )


def hold_state() -> dict | None:
    """The hold in force (held_at, held_by, paused_batches), or None."""
    with warehouse.connect(config.get_paths().warehouse, read_only=True) as con:
        return ledger.get_hold(con)
