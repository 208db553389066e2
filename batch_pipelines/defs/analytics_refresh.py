"""When the analytics assets refresh: as soon as a batch finishes, and on a schedule as a
fallback.

A batch finishes when its last chunk run ends, successfully or not (a run fails when any of
its items failed). Two run status sensors watch the ``<operation>_job`` runs; after each one
they read the run's batch (tag ``batch/id``) from the ledger and, if it is now terminal,
request one ``analytics_reports_job`` run focused on it (run key ``analytics:<batch_id>``).
The schedule catches what the sensors cannot see (batches run in-process by the CLI, a
daemon that was down): every 15 minutes it requests a run if a batch finished after the
last refresh started, and skips otherwise. Decisions live in the pure functions
:func:`decide_for_run` and :func:`decide_for_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
)

from batch_pipelines.core import analytics, config, ledger, warehouse
from batch_pipelines.defs.analytics_assets import analytics_reports_job, analytics_run_config
from batch_pipelines.defs.jobs import OPERATION_JOBS
from batch_pipelines.defs.schedules import utc_schedule

BATCH_TAG = "batch/id"
FOCUS_TAG = "analytics/batch_id"
SCHEDULE_CRON = "*/15 * * * *"
_NOT_REFRESHED = {"FAILURE", "CANCELED", "CANCELING"}


@dataclass(frozen=True)
class BatchState:
    batch_id: str
    status: str | None  # None: not in the ledger


def decide_for_run(
    run_tags: dict[str, str], state: BatchState | None, already_requested: bool
) -> RunRequest | SkipReason:
    """What to do after an operation run ended: an analytics run if its batch is now finished."""
    batch_id = run_tags.get(BATCH_TAG)
    if not batch_id:
        return SkipReason("run was not launched for a batch (no batch/id tag)")
    if state is None or state.status is None:
        return SkipReason(f"batch {batch_id} is not in the ledger")
    if state.status not in ledger.TERMINAL_BATCH_STATUSES:
        return SkipReason(f"batch {batch_id} is {state.status}: analytics wait until it finishes")
    if already_requested:
        return SkipReason(f"analytics for batch {batch_id} were already requested")
    return RunRequest(
        run_key=f"analytics:{batch_id}",
        run_config=analytics_run_config(batch_id),
        tags={FOCUS_TAG: batch_id},
    )


def decide_for_schedule(
    last_completion: datetime | None, last_refresh_start: datetime | None
) -> RunRequest | SkipReason:
    """Refresh the analytics if a batch finished after the last refresh started; the run key
    names that completion, so the schedule refreshes for one completion at most once."""
    if last_completion is None:
        return SkipReason("no batch has finished yet")
    if last_refresh_start is not None and last_completion <= last_refresh_start:
        return SkipReason(
            f"no batch finished since the last analytics run ({last_refresh_start:%Y-%m-%d %H:%M} UTC)"
        )
    return RunRequest(run_key=f"analytics-schedule:{last_completion.isoformat()}", run_config={})


def _batch_state(batch_id: str | None) -> BatchState | None:
    if not batch_id:
        return None
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True, timeout_s=20) as con:
        status = ledger.batch_status(con, batch_id)
    return BatchState(batch_id, str(status) if status else None)


def _already_requested(instance, batch_id: str | None) -> bool:  # noqa: ANN001
    if not batch_id:
        return False
    return bool(instance.get_run_ids(filters=RunsFilter(tags={FOCUS_TAG: batch_id}), limit=1))


def _evaluate(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    tags = dict(context.dagster_run.tags)
    batch_id = tags.get(BATCH_TAG)
    try:
        state = _batch_state(batch_id)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable: {exc}")
    return decide_for_run(tags, state, _already_requested(context.instance, batch_id))


_ON_BATCH_END: dict[str, Any] = {
    "monitored_jobs": list(OPERATION_JOBS.values()),
    "request_job": analytics_reports_job,
    "default_status": DefaultSensorStatus.RUNNING,
    "minimum_interval_seconds": 10,
}


@run_status_sensor(
    name="analytics_on_batch_success",
    run_status=DagsterRunStatus.SUCCESS,
    description=(
        "After an operation chunk run succeeds, refreshes the analytics assets if the run's "
        "batch has now finished."
    ),
    **_ON_BATCH_END,
)
def analytics_on_batch_success(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    return _evaluate(context)


@run_failure_sensor(
    name="analytics_on_batch_failure",
    description=(
        "After an operation chunk run fails (some of its items failed), refreshes the "
        "analytics assets if the run's batch has now finished."
    ),
    **_ON_BATCH_END,
)
def analytics_on_batch_failure(context: RunFailureSensorContext) -> RunRequest | SkipReason:
    return _evaluate(context)


def _last_refresh_start(instance) -> datetime | None:  # noqa: ANN001
    # A failed refresh does not count: the next tick tries again.
    records = instance.get_run_records(
        filters=RunsFilter(
            job_name=analytics_reports_job.name,
            statuses=[s for s in DagsterRunStatus if s.value not in _NOT_REFRESHED],
        ),
        limit=1,
    )
    if not records:
        return None
    record = records[0]
    ts = record.start_time or record.create_timestamp.timestamp()
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


@utc_schedule(
    "analytics_reports_schedule",
    SCHEDULE_CRON,
    analytics_reports_job,
    "Fallback for the analytics sensors: every 15 minutes, refreshes the analytics assets if "
    "a batch finished since the last analytics run (e.g. batches run in-process by the CLI).",
)
def analytics_reports_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    try:
        with warehouse.connect(config.get_paths().warehouse, read_only=True, timeout_s=20) as con:
            completed = analytics.last_completion(con)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable: {exc}")
    return decide_for_schedule(completed, _last_refresh_start(context.instance))


ANALYTICS_SENSORS = [analytics_on_batch_success, analytics_on_batch_failure]
ANALYTICS_SCHEDULES = [analytics_reports_schedule]
