"""Sensors: the manifest inbox and the batch dispatcher."""

import time

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import RETRY_NUMBER_TAG

from batch_pipelines import config, ledger, warehouse
from batch_pipelines.dispatch import RunState, chunk_states, plan_launches
from batch_pipelines.inbox import list_inbox, pick_manifests, take
from batch_pipelines.service import submit_batch


def _jobs():  # noqa: ANN202
    from batch_pipelines.jobs import OPERATION_JOBS

    return list(OPERATION_JOBS.values())


@sensor(
    name="inbox_sensor",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Registers batch manifests (JSON or YAML) dropped into data/inbox/. Accepted files move "
        "to data/inbox/processed/ (prefixed with their batch id), rejected ones to "
        "data/inbox/rejected/ with a .error.json naming each bad field. The batch_dispatcher "
        "sensor then launches the batch's chunk runs."
    ),
)
def inbox_sensor(context: SensorEvaluationContext) -> SkipReason:
    paths = config.get_paths()
    try:
        picked = pick_manifests(list_inbox(paths.inbox), time.time())
    except OSError as exc:
        return SkipReason(f"cannot read inbox {paths.inbox}: {exc}")
    if not picked:
        return SkipReason(f"no manifest waiting in {paths.inbox}")

    def submit(path, key):  # noqa: ANN001, ANN202
        return submit_batch(path, instance=context.instance, source="inbox", idempotency_key=key)

    accepted, rejected = [], []
    for f in picked:
        result = take(f, submit, paths.inbox)
        if result.batch_id:
            accepted.append(f"{f.path.name} -> {result.batch_id}")
            context.log.info(f"registered {f.path.name} as batch {result.batch_id}")
        else:
            rejected.append(f"{f.path.name}: {result.error}")
            context.log.warning(f"rejected {f.path.name}: {result.error}")
    return SkipReason(
        f"registered {len(accepted)} batch(es) {accepted}; rejected {len(rejected)} {rejected}. "
        "Runs are launched by batch_dispatcher."
    )


def run_states(instance, batch_ids) -> list[RunState]:  # noqa: ANN001
    states = []
    for batch_id in batch_ids:
        for run in instance.get_runs(filters=RunsFilter(tags={"batch/id": batch_id})):
            try:
                chunk_no = int(run.tags.get("batch/chunk", "-1"))
            except ValueError:
                continue
            states.append(
                RunState(batch_id, chunk_no, run.status.value, RETRY_NUMBER_TAG in run.tags)
            )
    return states


@sensor(
    name="batch_dispatcher",
    minimum_interval_seconds=3,
    default_status=DefaultSensorStatus.RUNNING,
    jobs=_jobs(),
    description=(
        "Launches the chunk runs of queued and running batches through the run queue: one run "
        "per chunk of items (a range of partition keys), highest batch priority first, "
        "respecting pause, cancel and each batch's max_concurrency."
    ),
)
def batch_dispatcher(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    paths = config.get_paths()
    try:
        with warehouse.connect(paths.warehouse, read_only=True, timeout_s=20) as con:
            rows = ledger.launchable_chunks(con)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable this tick: {exc}")
    if not rows:
        return SkipReason("no batch has chunks waiting to run")
    chunks = chunk_states(rows)
    runs = run_states(context.instance, sorted({c.batch_id for c in chunks}))
    launches = plan_launches(chunks, runs)
    if not launches:
        return SkipReason(f"{len(chunks)} chunk(s) waiting, all running or held by limits")
    return SensorResult(
        run_requests=[
            RunRequest(run_key=launch.run_key, job_name=launch.job_name, tags=launch.tags)
            for launch in launches
        ]
    )
