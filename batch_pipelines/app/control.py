"""Controls on a batch: cancel, pause, resume, retry. Every entry point (CLI, Python API, the
``batch_control`` launchpad job) calls these, and each writes an audit event to
``batch_events`` saying who did what, when, and from where."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from batch_pipelines.app.dispatch import ACTIVE_RUN_STATUSES
from batch_pipelines.app.recovery import (
    batch_run_records,
    cancel_unstarted_run,
    end_dead_runs,
    is_stalled,
    reap_dead_runs,
    retire_stale_retries,
)
from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.ledger import Batch, BatchStatus, ItemStatus
from batch_pipelines.core.manifest import ManifestError


class ControlError(ValueError):
    """The control cannot apply to this batch (unknown id, wrong state, nothing to retry)."""


@dataclass
class ControlResult:
    batch_id: str
    action: str
    status: str
    dequeued_runs: list[str] = field(default_factory=list)
    terminated_runs: list[str] = field(default_factory=list)
    still_active_runs: list[str] = field(default_factory=list)
    items_cancelled: int = 0
    new_batch_id: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batch_or_error(con, batch_id: str) -> Batch:  # noqa: ANN001
    batch = ledger.load_batch(con, batch_id)
    if batch is None:
        raise ControlError(f"no batch {batch_id!r}")
    return batch


def _active_runs(instance, batch_id: str) -> list:  # noqa: ANN001
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus(s) for s in sorted(ACTIVE_RUN_STATUSES - {"RETRY_PENDING"})]
    runs = list(
        instance.get_runs(filters=RunsFilter(tags={"batch/id": batch_id}, statuses=statuses))
    )
    # A run whose worker died (kill -9 of `submit --wait`) would never end: end it here.
    dead = set(end_dead_runs(instance, runs))
    return [r for r in runs if r.run_id not in dead]


def _stop_runs(  # noqa: ANN001
    instance, batch_id: str, queued_only: bool, result: ControlResult, only: list | None = None
) -> None:
    """Dequeue the batch's queued runs and (unless ``queued_only``) terminate its running
    ones through Dagster's run coordinator and launcher."""
    for run in only if only is not None else _active_runs(instance, batch_id):
        if run.status.value in ("QUEUED", "NOT_STARTED"):
            instance.report_run_canceling(run, message=f"batch {result.action}")
            instance.report_run_canceled(run, message=f"batch {batch_id}: {result.action}")
            result.dequeued_runs.append(run.run_id)
        elif not queued_only:
            try:
                ok = instance.run_coordinator.cancel_run(run.run_id)
            except Exception:  # noqa: BLE001 - the runner's own watcher stops it anyway
                ok = False
            if ok:
                result.terminated_runs.append(run.run_id)
            elif cancel_unstarted_run(instance, run, f"batch {batch_id}: {result.action}"):
                result.dequeued_runs.append(run.run_id)


def dequeue_for(  # noqa: ANN001
    instance, batch_ids: Iterable[str], result: ControlResult, settle_s: float
) -> None:
    """Take the batches' queued runs off the queue for ``settle_s``: a dispatcher tick that
    read the ledger just before a pause or hold may still enqueue one (it would do nothing)."""
    deadline = time.monotonic() + settle_s
    while True:
        for batch_id in batch_ids:
            queued = [
                r
                for r in _active_runs(instance, batch_id)
                if r.status.value in ("QUEUED", "NOT_STARTED")
            ]
            if queued:
                _stop_runs(instance, batch_id, queued_only=True, result=result, only=queued)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)


_RESTOP_S = 5.0


def cancel_batch(
    batch_id: str,
    *,
    instance=None,  # noqa: ANN001
    actor: str = "python",
    wait_s: float = 30.0,
    settle_s: float = 4.0,
    rollback: bool = False,
) -> ControlResult:
    """Cancel a batch: no new chunk is launched, queued runs are dequeued, running ones
    terminated; unfinished items become ``cancelled``, finished ones keep their results
    (unless ``rollback``: then what the batch wrote is undone too, see
    :func:`batch_pipelines.app.lifecycle.rollback_batch`). Returns once nothing of the batch
    has been queued or running for ``settle_s`` (or after ``wait_s``)."""
    from batch_pipelines.app.instance import get_instance

    instance = instance or get_instance()
    paths = config.get_paths()

    def cancel_all(con: duckdb.DuckDBPyConnection) -> int:
        batch = _batch_or_error(con, batch_id)
        if batch.status in ledger.TERMINAL_BATCH_STATUSES:
            raise ControlError(f"batch {batch_id} is already {batch.status}")
        ledger.set_batch_status(con, batch_id, BatchStatus.CANCELLED, error=f"cancelled by {actor}")
        n = ledger.cancel_pending(con, batch_id, f"cancelled by {actor}", include_running=True)
        ledger.add_event(
            con, batch_id, "batch_cancel_requested", actor=actor, detail={"items_cancelled": n}
        )
        ledger.refresh_batch(con, batch_id)
        return n

    n = warehouse.write(cancel_all, paths.warehouse)
    result = ControlResult(batch_id, "cancel", BatchStatus.CANCELLED, items_cancelled=n)
    # A dispatcher tick that read the ledger just before the cancel may still enqueue a run,
    # and the queue may be starting one as we cancel it: sweep until nothing of the batch has
    # been queued or running for a whole dispatcher interval (or until wait_s).
    # A run still active _RESTOP_S after it was stopped is stopped again: one that was
    # STARTING cannot be terminated yet, and one the queue launched as it was dequeued is
    # running after all.
    handled: dict[str, float] = {}
    deadline = time.monotonic() + wait_s
    quiet_since: float | None = None
    while True:
        # A run of the batch that failed (before or while it was terminated) must not come back
        # as an automatic retry after this returns: Dagster's retry daemon reads the tag.
        retire_stale_retries(instance, batch_run_records(instance, [batch_id]), now=math.inf)
        active = _active_runs(instance, batch_id)
        now = time.monotonic()
        due = [r for r in active if now - handled.get(r.run_id, -math.inf) >= _RESTOP_S]
        if due:
            _stop_runs(instance, batch_id, queued_only=False, result=result, only=due)
            handled.update((r.run_id, now) for r in due)
        now = time.monotonic()
        if active:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= settle_s:
            break
        if now >= deadline:
            break
        time.sleep(0.5)
    result.still_active_runs = [r.run_id for r in active]
    result.dequeued_runs = list(dict.fromkeys(result.dequeued_runs))
    result.terminated_runs = list(dict.fromkeys(result.terminated_runs))
    with warehouse.connect(paths.warehouse) as con:

        def settle() -> None:
            # An item a terminated run was in the middle of stays cancelled, not running.
            ledger.cancel_pending(con, batch_id, f"cancelled by {actor}", include_running=True)
            ledger.refresh_batch(con, batch_id)
            ledger.add_event(
                con,
                batch_id,
                "batch_cancelled",
                actor=actor,
                detail={
                    "dequeued_runs": result.dequeued_runs,
                    "terminated_runs": result.terminated_runs,
                    "still_active_runs": result.still_active_runs,
                },
            )

        lake.transaction(con, settle)
        result.status = ledger.batch_status(con, batch_id)
    result.message = (
        f"cancelled {batch_id}: {n} item(s) cancelled, "
        f"{len(result.dequeued_runs)} queued run(s) dequeued, "
        f"{len(result.terminated_runs)} running run(s) terminated"
    )
    if rollback:
        from batch_pipelines.app.lifecycle import rollback_batch

        rolled = rollback_batch(batch_id, actor=actor)
        result.status = rolled.status
        result.message += f"; {rolled.message}"
    return result


def pause_batch(  # noqa: ANN001
    batch_id: str, *, instance=None, actor: str = "python", settle_s: float = 4.0
) -> ControlResult:
    """Stop launching the batch's chunks; queued runs are taken off the queue (their items
    stay pending), running ones finish. The batch shows ``paused`` once drained."""
    from batch_pipelines.app.instance import get_instance

    instance = instance or get_instance()
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:
        batch = _batch_or_error(con, batch_id)
        if batch.status in ledger.TERMINAL_BATCH_STATUSES:
            raise ControlError(f"batch {batch_id} is {batch.status}; nothing to pause")

        def pause_it() -> None:
            ledger.set_paused(con, batch_id, True)
            ledger.add_event(con, batch_id, "batch_pause_requested", actor=actor)

        lake.transaction(con, pause_it)
    result = ControlResult(batch_id, "pause", "pausing")
    # As for cancel, sweep the queue for a dispatcher interval: a run enqueued by a tick that
    # read the ledger just before the pause is taken off too (and would do nothing anyway).
    dequeue_for(instance, [batch_id], result, settle_s)
    with warehouse.connect(paths.warehouse) as con:

        def settle() -> str:
            status = ledger.refresh_batch(con, batch_id)
            ledger.add_event(
                con,
                batch_id,
                "batch_paused" if status == BatchStatus.PAUSED else "batch_draining",
                actor=actor,
                detail={"dequeued_runs": result.dequeued_runs},
            )
            return status

        status = lake.transaction(con, settle)
    result.status = status
    result.message = (
        f"paused {batch_id}"
        if status == BatchStatus.PAUSED
        else f"pausing {batch_id}: running chunks finish, then it shows paused"
    )
    return result


def resume_batch(
    batch_id: str,
    *,
    actor: str = "python",
    instance=None,  # noqa: ANN001
    here: bool = False,
) -> ControlResult:
    """Let the dispatcher launch the batch's unfinished chunks again: a paused batch, one
    whose worker died (its runs are ended, the items they left running pending again), or one
    whose canary failed (the rest is released anyway).
    ``here``: the caller runs the rest in its own process, as no daemon runs: no automatic
    retry of its failed runs will come either, so their items are pending again too."""
    from batch_pipelines.app.instance import get_instance

    instance = instance or get_instance()
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        _batch_or_error(con, batch_id)
    if here:
        retire_stale_retries(instance, batch_run_records(instance, [batch_id]), now=math.inf)
    recovered = reap_dead_runs(instance, paths, batch_id=batch_id)
    stalled = is_stalled(instance, batch_id)
    with warehouse.connect(paths.warehouse) as con:
        batch = _batch_or_error(con, batch_id)
        canary_failed = batch.status == BatchStatus.CANARY_FAILED
        if not batch.paused and not stalled and not canary_failed:
            raise ControlError(f"batch {batch_id} is not paused (it is {batch.status})")

        def release() -> tuple[str, int]:
            if canary_failed:
                # A person looked at the failed canary and lets the rest run anyway.
                ledger.release_canary(con, batch_id, actor=actor)
            ledger.set_paused(con, batch_id, False)
            status = ledger.refresh_batch(con, batch_id)
            pending = ledger.count_items(con, batch_id, ItemStatus.PENDING)
            ledger.add_event(
                con,
                batch_id,
                "batch_resumed",
                actor=actor,
                detail={"pending_items": pending, "recovered": recovered},
            )
            return status, pending

        status, pending = lake.transaction(con, release)
    message = f"resumed {batch_id}: {pending} item(s) left to run"
    if recovered:
        message += " (the runs of its dead worker ended, their items back to pending)"
    return ControlResult(batch_id, "resume", status, message=message)


def submit_child_batch(
    parent: Batch,
    rows: Iterable[ledger.Item],
    *,
    name: str,
    options: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    priority: str | None = None,
    instance=None,  # noqa: ANN001
    actor: str = "python",
    source: str = "python",
    gate_round: int = 0,
) -> str:
    """Submit ``rows`` of ``parent`` again as a new batch linked by ``parent_batch_id``, with
    the parent's options and settings unless overridden (``retry``, the quality gate)."""
    from batch_pipelines.app.submit import RateLimitError, submit_batch

    manifest = {
        "operation": parent.operation,
        "name": name[:200],
        "priority": priority or parent.priority,
        "options": {**parent.options, **(options or {})},
        "settings": {**parent.settings, **(settings or {})},
        "items": [{**(r.payload or {}), "id": r.item_id} for r in rows],
    }
    if "canary" not in (settings or {}):
        # The parent's canary was checked; its items re-run need none.
        manifest["settings"]["canary"] = None
    if parent.correlation_id:
        # A child answers the same request as its parent.
        manifest["correlation_id"] = parent.correlation_id
    try:
        return submit_batch(
            manifest,
            instance=instance,
            source=source,
            parent_batch_id=parent.batch_id,
            submitted_by=actor.split(":", 1)[-1],
            actor=actor.split(":", 1)[-1],
            gate_round=gate_round,
        )
    except (ManifestError, RateLimitError) as exc:
        raise ControlError(f"cannot re-run items of {parent.batch_id}: {exc}") from exc


def retry_batch(
    batch_id: str,
    *,
    categories: Iterable[str] | None = None,
    item_ids: Iterable[str] | None = None,
    options: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    priority: str | None = None,
    instance=None,  # noqa: ANN001
    actor: str = "python",
    source: str = "python",
) -> ControlResult:
    """A new batch with only the failed items of ``batch_id`` (optionally only some error
    categories, or the given item ids — which must have failed or been cancelled), linked by
    ``parent_batch_id``, with the parent's options and settings unless overridden."""

    paths = config.get_paths()
    categories = list(categories or [])
    wanted = list(item_ids or [])
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        parent = _batch_or_error(con, batch_id)
        rows = ledger.load_items(
            con,
            batch_id,
            status=[ItemStatus.FAILED, ItemStatus.CANCELLED] if wanted else [ItemStatus.FAILED],
        )
    if wanted:
        by_id = {r.item_id: r for r in rows}
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise ControlError(f"items not failed or cancelled in {batch_id}: {unknown[:10]}")
        rows = [by_id[i] for i in wanted]
    if categories:
        rows = [r for r in rows if r.error_category in categories]
    if not rows:
        what = f" in categories {categories}" if categories else ""
        raise ControlError(f"batch {batch_id} has no failed items{what} to retry")
    new_id = submit_child_batch(
        parent,
        rows,
        name=f"retry of {parent.name}",
        options=options,
        settings=settings,
        priority=priority,
        instance=instance,
        actor=actor,
        source=source,
    )
    warehouse.write(
        lambda con: ledger.add_event(
            con,
            batch_id,
            "batch_retried",
            actor=actor,
            detail={"new_batch_id": new_id, "items": len(rows), "categories": categories},
        ),
        paths.warehouse,
    )
    return ControlResult(
        batch_id,
        "retry",
        parent.status,
        new_batch_id=new_id,
        message=f"retrying {len(rows)} item(s) of {batch_id} as {new_id}",
    )
