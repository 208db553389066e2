"""Runs whose worker process is gone, and the items they left ``running``.

Every chunk run records its worker in its tags: ``batch/worker_pid``, ``batch/worker_host``,
``batch/worker_started`` (the process's start time, so a reused pid is not taken for the
worker) and ``batch/worker_run`` (the run they were written for: a retry run inherits its
parent's tags until its own step starts). An in-process run (``submit --wait``) has them from
its creation, a run launched by the daemon from the start of its step.

A run whose worker on this machine no longer exists is over, whatever Dagster still says:
:func:`end_dead_runs` marks it failed (canceled if it was being canceled) and frees its
concurrency slots, so it holds neither its chunk nor a pool slot. Runs on other machines, and
a daemon-launched run killed before its step started, are left to Dagster's run monitoring
(``dagster/max_runtime``, ``start_timeout_seconds``).

The dispatcher's reaper (every tick, every batch) and the CLI verbs (one batch, without a
daemon) go through :func:`reap_dead_runs`; ``status`` and ``retry`` only look
(:func:`find_orphans`). Dagster is imported inside the functions: the CLI's read verbs load
it only when a batch has items ``running``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psutil

from batch_pipelines.app.dispatch import (
    ACTIVE_RUN_STATUSES,
    HANDED_OVER_TAG,
    ReapDecision,
    RunState,
    plan_reaping,
    planning_status,
)
from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.ledger import BatchStatus, ItemStatus, recovery

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun, RunRecord

WORKER_PID_TAG = "batch/worker_pid"
WORKER_HOST_TAG = "batch/worker_host"
WORKER_STARTED_TAG = "batch/worker_started"
WORKER_RUN_TAG = "batch/worker_run"
LAUNCHED_BY_TAG = "batch/launched_by"
IN_PROCESS = "in_process"
# Dagster statuses of a run that has not ended; a run in one of them holds its chunk (and,
# once started, a slot of the duckdb_writer pool).
LIVE_RUN_STATUSES = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING")
_PID_START_TOLERANCE_S = 1.0


def worker_tags(run_id: str) -> dict[str, str]:
    """The tags naming this process as the worker of run ``run_id``."""
    return {
        WORKER_PID_TAG: str(os.getpid()),
        WORKER_HOST_TAG: socket.gethostname(),
        WORKER_STARTED_TAG: f"{psutil.Process().create_time():.3f}",
        WORKER_RUN_TAG: run_id,
    }


def worker_is_gone(tags: Mapping[str, str]) -> bool:
    """True if the run's worker (see :func:`worker_tags`) ran on this machine and no longer
    exists: no process with its pid, a zombie, or another process that reused the pid.
    Workers on other machines are left to Dagster."""
    pid, host = tags.get(WORKER_PID_TAG), tags.get(WORKER_HOST_TAG)
    if not pid or host != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        started = tags.get(WORKER_STARTED_TAG)
        return bool(started and abs(proc.create_time() - float(started)) > _PID_START_TOLERANCE_S)
    except (psutil.NoSuchProcess, ValueError):
        return True
    except psutil.Error:
        return False


def worker_of(tags: Mapping[str, str]) -> str:
    return f"pid {tags.get(WORKER_PID_TAG)} on {tags.get(WORKER_HOST_TAG)}"


def _is_dead(run: DagsterRun) -> bool:
    """A live run whose own worker is gone (worker tags inherited from a parent run, whose
    worker is of course gone, say nothing about this one)."""
    own = run.tags.get(WORKER_RUN_TAG, run.run_id if run.parent_run_id is None else None)
    return run.status.value in LIVE_RUN_STATUSES and own == run.run_id and worker_is_gone(run.tags)


def _free_slots(instance: DagsterInstance, run_id: str) -> None:
    storage = instance.event_log_storage
    try:
        if storage.supports_global_concurrency_limits:
            storage.free_concurrency_slots_for_run(run_id)
    except Exception:  # noqa: BLE001 - a storage without concurrency tables has no slots
        pass


def cancel_unstarted_run(instance: DagsterInstance, run: DagsterRun, message: str) -> bool:
    """Report ``run`` canceled (and free its slots) if its worker never started it: STARTING
    or CANCELING with no ``RUN_START``. Dagster's launcher cannot tell such a run to stop (it
    has no worker to ask yet), and a worker that starts while the run is CANCELING ignores it,
    so the run would hold its slot until run monitoring gives up on the cancel
    (``cancel_timeout_seconds``). A worker that starts once it is CANCELED does not run it."""
    from dagster import DagsterRunStatus

    record = instance.get_run_record_by_id(run.run_id)
    if record is None or record.start_time is not None:
        return False
    if record.dagster_run.status not in (
        DagsterRunStatus.STARTING,
        DagsterRunStatus.CANCELING,
        DagsterRunStatus.NOT_STARTED,
    ):
        return False
    instance.report_run_canceled(record.dagster_run, message=message)
    _free_slots(instance, run.run_id)
    return True


def end_dead_runs(instance: DagsterInstance, runs: Iterable[DagsterRun] | None = None) -> list[str]:
    """End every run (of ``runs``, default: every live run of the instance) whose worker is
    gone: it is reported failed (canceled if it was being canceled) and its concurrency slots
    are freed. Returns their ids. An in-process run is also tagged ``dagster/will_retry=false``:
    Dagster's run retries cannot re-launch a run that has no code location, so nothing should
    wait for them."""
    from dagster import DagsterRunStatus, RunsFilter

    from batch_pipelines.app.dagster_storage import WILL_RETRY_TAG

    if runs is None:
        live = [DagsterRunStatus(s) for s in LIVE_RUN_STATUSES]
        runs = instance.get_runs(filters=RunsFilter(statuses=live))
    ended = []
    for run in runs:
        if not _is_dead(run):
            continue
        message = f"run worker ({worker_of(run.tags)}) is gone"
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=message)
        else:
            instance.report_run_failed(run, message=message)
        if run.tags.get(LAUNCHED_BY_TAG) == IN_PROCESS:
            instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
        _free_slots(instance, run.run_id)
        ended.append(run.run_id)
    return ended


def _failed_s_ago(record: RunRecord, now: float) -> float:
    ended = record.end_time or record.update_timestamp.timestamp()
    return now - ended


def status_of(record: RunRecord, now: float) -> str:
    """The status the planners see for a run (see :func:`~.dispatch.planning_status`); a live
    run whose worker is gone counts as failed, which is what :func:`end_dead_runs` makes it."""
    from batch_pipelines.app.dagster_storage import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

    run = record.dagster_run
    if _is_dead(run):
        return "FAILURE"
    return planning_status(
        run.status.value,
        will_retry=run.tags.get(WILL_RETRY_TAG) == "true",
        retry_launched=AUTO_RETRY_RUN_ID_TAG in run.tags,
        in_process=run.tags.get(LAUNCHED_BY_TAG) == IN_PROCESS,
        failed_s_ago=_failed_s_ago(record, now),
    )


def batch_run_records(instance: DagsterInstance, batch_ids: Iterable[str]) -> list[RunRecord]:
    """Every run of these batches."""
    from dagster import RunsFilter

    return [
        record
        for batch_id in batch_ids
        for record in instance.get_run_records(filters=RunsFilter(tags={"batch/id": batch_id}))
    ]


def run_states_from(records: Iterable[RunRecord], now: float | None = None) -> list[RunState]:
    """Chunk runs (records of runs tagged ``batch/id``) as the planners see them."""
    from batch_pipelines.app.dagster_storage import RETRY_NUMBER_TAG

    now = time.time() if now is None else now
    states = []
    for record in records:
        run = record.dagster_run
        try:
            chunk_no = int(run.tags.get("batch/chunk", "-1"))
        except ValueError:
            continue
        states.append(
            RunState(
                run.tags["batch/id"],
                chunk_no,
                status_of(record, now),
                RETRY_NUMBER_TAG in run.tags,
                handed_over=HANDED_OVER_TAG in run.tags,
            )
        )
    return states


def run_states(
    instance: DagsterInstance, batch_ids: Iterable[str], now: float | None = None
) -> list[RunState]:
    """The runs of these batches as the planners see them."""
    return run_states_from(batch_run_records(instance, batch_ids), now)


def retire_stale_retries(
    instance: DagsterInstance, records: Iterable[RunRecord], now: float | None = None
) -> list[str]:
    """Tag ``dagster/will_retry=false`` on the failed runs whose automatic retry no longer
    counts (executed in a process, or not launched within the grace): the dispatcher plans
    their chunks again, and a retry daemon that comes back late must not run them twice."""
    from batch_pipelines.app.dagster_storage import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

    now = time.time() if now is None else now
    retired = []
    for record in records:
        run = record.dagster_run
        if (
            run.status.value == "FAILURE"
            and run.tags.get(WILL_RETRY_TAG) == "true"
            and AUTO_RETRY_RUN_ID_TAG not in run.tags
            and status_of(record, now) == "FAILURE"
        ):
            instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
            retired.append(run.run_id)
    return retired


@dataclass(frozen=True)
class Orphan:
    """Items of a chunk marked ``running`` by a run that is over, or whose worker is gone."""

    batch_id: str
    chunk: int
    run_id: str
    items: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _records_by_id(instance: DagsterInstance, run_ids: Iterable[str]) -> dict[str, RunRecord]:
    from dagster import RunsFilter

    ids = sorted({r for r in run_ids if r})
    if not ids:
        return {}
    return {
        r.dagster_run.run_id: r for r in instance.get_run_records(filters=RunsFilter(run_ids=ids))
    }


def _why(run_id: str, record: RunRecord | None) -> str:
    if record is None:
        return f"its run {run_id or '(none)'} is not in Dagster's run storage"
    run = record.dagster_run
    if _is_dead(run):
        return f"its worker ({worker_of(run.tags)}) is gone"
    return f"its run {run_id} ended {run.status.value.lower()}"


def _plan(
    instance: DagsterInstance,
    groups: Sequence[tuple[str, int, str]],
    now: float,
) -> tuple[list[ReapDecision], dict[str, RunRecord]]:
    records = _records_by_id(instance, (g[2] for g in groups))
    statuses = {
        run_id: status_of(records[run_id], now) if run_id in records else None
        for _b, _c, run_id in groups
    }
    states = run_states(instance, sorted({g[0] for g in groups}), now)
    return plan_reaping(groups, statuses, states), records


def find_orphans(instance: DagsterInstance, batch_id: str) -> list[Orphan]:
    """The items of ``batch_id`` left ``running`` by a run that is over or whose worker is
    gone, per chunk and run; changes nothing."""
    with warehouse.connect(config.get_paths().warehouse, read_only=True) as con:
        counts = recovery.running_items_by_run(con, batch_id)
    if not counts:
        return []
    groups = [(batch_id, chunk, run_id) for chunk, run_id in counts]
    decisions, records = _plan(instance, groups, time.time())
    return [
        Orphan(
            batch_id,
            d.chunk_no,
            d.run_id,
            counts[(d.chunk_no, d.run_id)],
            _why(d.run_id, records.get(d.run_id)),
        )
        for d in decisions
    ]


def reap_dead_runs(
    instance: DagsterInstance,
    paths: config.Paths | None = None,
    *,
    batch_id: str | None = None,
    now: float | None = None,
) -> list[str]:
    """End the runs whose worker is gone (every such run of the instance, whatever its batch),
    then put the items that runs which are over left ``running`` back to ``pending`` (their
    chunk is launched again) or, after repeated crashes, fail them; only ``batch_id``'s
    items if given. Returns what was done, one line each."""
    paths = paths or config.get_paths()
    now = time.time() if now is None else now
    done = [f"ended run {r}: its worker is gone" for r in end_dead_runs(instance)]
    with warehouse.connect(paths.warehouse, read_only=True, timeout_s=20) as con:
        groups = [g for g in ledger.running_groups(con) if batch_id is None or g[0] == batch_id]
    if not groups:
        return done
    decisions, _records = _plan(instance, groups, now)
    if decisions:
        with warehouse.connect(paths.warehouse, timeout_s=20) as con:
            for d in decisions:

                def reap(d: Any = d) -> int:  # noqa: ANN401 - a decision of _plan
                    n = ledger.reap_items(con, d.batch_id, d.chunk_no, d.run_id, d.action, d.reason)
                    ledger.refresh_batch(con, d.batch_id)
                    return n

                n = lake.transaction(con, reap)  # on a lake, again after a conflict
                if n:
                    done.append(
                        f"{d.action} {n} item(s) of {d.batch_id} chunk {d.chunk_no}: {d.reason}"
                    )
        # A batch the reaper ended failed had no chunk run left to roll it back.
        from batch_pipelines.app.lifecycle import rollback_if_failed

        for failed in sorted({d.batch_id for d in decisions if d.action == "fail"}):
            if rollback_if_failed(failed, actor="reaper"):
                done.append(f"rolled back {failed} (rollback_on_failure)")
    return done


def is_stalled(instance: DagsterInstance, batch_id: str) -> bool:
    """True for a started batch that is not paused, has pending items, none running and no
    live run: nothing will run it unless a daemon's dispatcher or ``resume --wait`` does (its
    worker died, or its in-process run failed before its items)."""
    with warehouse.connect(config.get_paths().warehouse, read_only=True) as con:
        batch = ledger.load_batch(con, batch_id)
        if batch is None or batch.paused or batch.status != BatchStatus.RUNNING:
            return False
        if ledger.count_items(con, batch_id, ItemStatus.RUNNING):
            return False
        if not ledger.count_items(con, batch_id, ItemStatus.PENDING):
            return False
    return not any(s.status in ACTIVE_RUN_STATUSES for s in run_states(instance, [batch_id]))
