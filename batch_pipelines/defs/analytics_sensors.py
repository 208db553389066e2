"""When the report assets refresh: as soon as a batch finishes, and on a schedule as a fallback.

A batch finishes when its last chunk run ends, successfully or not (a run fails when any of
its items failed). Two run status sensors watch the ``<operation>_job`` runs; after each one
they read the run's batch (tag ``batch/id``) from the ledger and, if it is now terminal,
request one ``analytics_reports_job`` run focused on it (run key ``analytics:<batch_id>``).
The schedule catches what the sensors cannot see (batches run in-process by the CLI, a
daemon that was down): every 15 minutes it requests a run if a batch finished after the
last report run started, and skips otherwise. Decisions live in the pure functions
:func:`decide_for_run` and :func:`decide_for_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    schedule,
)

from batch_pipelines.core import analytics, config, ledger, warehouse
from batch_pipelines.defs.analytics_assets import analytics_reports_job, report_run_config
from batch_pipelines.defs.jobs import OPERATION_JOBS

BATCH_TAG = "batch/id"
REPORT_TAG = "analytics/batch_id"
SCHEDULE_CRON = "*/15 * * * *"
_NOT_REPORTED = {"FAILURE", "CANCELED", "CANCELING"}


@dataclass(frozen=True)
class BatchState:
    batch_id: str
    status: str | None  # None: not in the ledger


def decide_for_run(
    run_tags: dict[str, str], state: BatchState | None, already_reported: bool
) -> RunRequest | SkipReason:
    """What to do after an operation run ended: a report run if its batch is now finished."""
    batch_id = run_tags.get(BATCH_TAG)
    if not batch_id:
        return SkipReason("run was not launched for a batch (no batch/id tag)")
    if state is None or state.status is None:
        return SkipReason(f"batch {batch_id} is not in the ledger")
    if state.status not in ledger.TERMINAL_BATCH_STATUSES:
        return SkipReason(f"batch {batch_id} is {state.status}: reports wait until it finishes")
    if already_reported:
        return SkipReason(f"reports for batch {batch_id} were already requested")
    return RunRequest(
        run_key=f"analytics:{batch_id}",
        run_config=report_run_config(batch_id),
        tags={REPORT_TAG: batch_id},
    )


def decide_for_schedule(
    last_completion: datetime | None, last_report_start: datetime | None
) -> RunRequest | SkipReason:
    """Refresh the reports if a batch finished after the last report run started; the run key
    names that completion, so one completion is reported at most once by the schedule."""
    if last_completion is None:
        return SkipReason("no batch has finished yet")
    if last_report_start is not None and last_completion <= last_report_start:
        return SkipReason(
            f"no batch finished since the last report run ({last_report_start:%Y-%m-%d %H:%M} UTC)"
        )
    return RunRequest(run_key=f"analytics-schedule:{last_completion.isoformat()}", run_config={})


def _batch_state(batch_id: str | None) -> BatchState | None:
    if not batch_id:
        return None
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True, timeout_s=20) as con:
        row = con.execute("select status from batches where batch_id = ?", [batch_id]).fetchone()
    return BatchState(batch_id, row[0] if row else None)


def _already_reported(instance, batch_id: str | None) -> bool:  # noqa: ANN001
    if not batch_id:
        return False
    return bool(instance.get_run_ids(filters=RunsFilter(tags={REPORT_TAG: batch_id}), limit=1))


def _evaluate(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    tags = dict(context.dagster_run.tags)
    batch_id = tags.get(BATCH_TAG)
    try:
        state = _batch_state(batch_id)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable: {exc}")
    return decide_for_run(tags, state, _already_reported(context.instance, batch_id))


_MONITORED = list(OPERATION_JOBS.values())


@run_status_sensor(
    name="analytics_on_batch_success",
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=_MONITORED,
    request_job=analytics_reports_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description=(
        "After an operation chunk run succeeds, refreshes the analytics reports if the run's "
        "batch has now finished."
    ),
)
def analytics_on_batch_success(context: RunStatusSensorContext) -> RunRequest | SkipReason:
    return _evaluate(context)


@run_failure_sensor(
    name="analytics_on_batch_failure",
    monitored_jobs=_MONITORED,
    request_job=analytics_reports_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description=(
        "After an operation chunk run fails (some of its items failed), refreshes the "
        "analytics reports if the run's batch has now finished."
    ),
)
def analytics_on_batch_failure(context: RunFailureSensorContext) -> RunRequest | SkipReason:
    return _evaluate(context)


def _last_report_start(instance) -> datetime | None:  # noqa: ANN001
    # A failed report run does not count: the next tick tries again.
    records = instance.get_run_records(
        filters=RunsFilter(
            job_name=analytics_reports_job.name,
            statuses=[s for s in DagsterRunStatus if s.value not in _NOT_REPORTED],
        ),
        limit=1,
    )
    if not records:
        return None
    record = records[0]
    ts = record.start_time or record.create_timestamp.timestamp()
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


@schedule(
    name="analytics_reports_schedule",
    cron_schedule=SCHEDULE_CRON,
    job=analytics_reports_job,
    default_status=DefaultScheduleStatus.RUNNING,
    execution_timezone="UTC",
    description=(
        "Fallback for the analytics sensors: every 15 minutes, refreshes the report assets if "
        "a batch finished since the last report run (e.g. batches run in-process by the CLI)."
    ),
)
def analytics_reports_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    try:
        with warehouse.connect(config.get_paths().warehouse, read_only=True, timeout_s=20) as con:
            completed = analytics.last_completion(con)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable: {exc}")
    return decide_for_schedule(completed, _last_report_start(context.instance))


REPORT_SENSORS = [analytics_on_batch_success, analytics_on_batch_failure]
REPORT_SCHEDULES = [analytics_reports_schedule]
