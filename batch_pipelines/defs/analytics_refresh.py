"""When the analytics assets refresh: as soon as a batch finishes, and on a schedule as a
fallback.

The ``analytics_on_batch_finished`` sensor reads the ledger, not Dagster's runs: every 5 s it
asks for the batches that finished since its cursor (the latest ``completed_at`` it has seen)
and requests one ``analytics_reports_job`` run focused on each (run key
``analytics:<batch_id>:<completed_at>``, tag ``analytics/batch_id``), however the batch ran:
chunk runs of the daemon, ``submit --wait`` or ``make demo`` in-process, a cancel. It reads
again a little before its cursor, so a batch whose finish committed late is not missed (the
run keys keep it from being requested twice). The schedule catches what the sensor cannot see
(a daemon that was down for long): every 15 minutes it requests a run if a batch finished
after the last refresh started, and skips otherwise. Decisions live in the pure functions
:func:`decide_for_finished` and :func:`decide_for_schedule`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from batch_pipelines.core import analytics, config, ledger, warehouse
from batch_pipelines.defs.analytics_assets import analytics_reports_job, analytics_run_config
from batch_pipelines.defs.schedules import utc_schedule

FOCUS_TAG = "analytics/batch_id"
SCHEDULE_CRON = "*/15 * * * *"
SENSOR_INTERVAL_S = 5
# How far before its cursor the sensor reads again (a finish stamped before the cursor but
# committed after the tick that set it), and how far back it looks on its first tick.
LOOKBACK = timedelta(minutes=2)
FIRST_WINDOW = timedelta(minutes=15)
MAX_PER_TICK = 200
_NOT_REFRESHED = {"FAILURE", "CANCELED", "CANCELING"}


def decide_for_finished(
    finished: list[tuple[str, datetime]], cursor: datetime | None
) -> tuple[list[RunRequest], datetime | None]:
    """One analytics run per finished batch ``(batch_id, completed_at)``, and the new cursor
    (the latest ``completed_at`` seen)."""
    requests = [
        RunRequest(
            run_key=f"analytics:{batch_id}:{completed_at.isoformat()}",
            run_config=analytics_run_config(batch_id),
            tags={FOCUS_TAG: batch_id},
        )
        for batch_id, completed_at in finished
    ]
    latest = max((at for _, at in finished), default=None)
    if cursor is not None and (latest is None or latest < cursor):
        latest = cursor
    return requests, latest


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


@sensor(
    name="analytics_on_batch_finished",
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    job=analytics_reports_job,
    description=(
        "Refreshes the analytics assets, focused on each batch that finished since the last "
        "tick, read from the ledger: batches run by the daemon and in-process alike."
    ),
)
def analytics_on_batch_finished(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    cursor = datetime.fromisoformat(context.cursor) if context.cursor else None
    since = cursor - LOOKBACK if cursor else ledger.utcnow() - FIRST_WINDOW
    try:
        with warehouse.connect(config.get_paths().warehouse, read_only=True, timeout_s=20) as con:
            finished = ledger.batches_finished_since(con, since, MAX_PER_TICK)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable: {exc}")
    if cursor is not None:
        # Read again from before the cursor: keep only what no analytics run was asked for.
        finished = [
            (batch_id, at)
            for batch_id, at in finished
            if at > cursor or not _already_requested(context.instance, batch_id)
        ]
    requests, latest = decide_for_finished(finished, cursor)
    new_cursor = latest.isoformat() if latest else context.cursor
    if not requests:
        return SensorResult(
            skip_reason=SkipReason("no batch finished since the last tick"), cursor=new_cursor
        )
    return SensorResult(run_requests=requests, cursor=new_cursor)


def _already_requested(instance, batch_id: str) -> bool:  # noqa: ANN001
    return bool(instance.get_run_ids(filters=RunsFilter(tags={FOCUS_TAG: batch_id}), limit=1))


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


ANALYTICS_SENSORS = [analytics_on_batch_finished]
ANALYTICS_SCHEDULES = [analytics_reports_schedule]
