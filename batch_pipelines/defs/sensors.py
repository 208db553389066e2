"""Sensors: the manifest inbox and the batch dispatcher."""

import socket
import time

import psutil
from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from batch_pipelines.app.dagster_storage import (
    AUTO_RETRY_RUN_ID_TAG,
    RETRY_NUMBER_TAG,
    WILL_RETRY_TAG,
)
from batch_pipelines.app.dispatch import (
    HANDED_OVER_TAG,
    RunState,
    chunk_states,
    plan_launches,
    plan_reaping,
)
from batch_pipelines.app.inbox import list_inbox, pick_manifests, take, tick_deadline
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.webhooks import failure_payload, post_webhook
from batch_pipelines.defs.jobs import OPERATION_JOBS


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
    deadline = tick_deadline()
    for n, f in enumerate(picked):
        if n and time.monotonic() > deadline:
            break
        result = take(f, submit, paths.inbox)
        if result.batch_id:
            accepted.append(f"{f.path.name} -> {result.batch_id}")
            context.log.info(f"registered {f.path.name} as batch {result.batch_id}")
        elif result.moved_to == f.path:
            context.log.warning(f"kept {f.path.name} for a later tick: {result.error}")
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
            status = run.status.value
            if (
                status == "FAILURE"
                and run.tags.get(WILL_RETRY_TAG) == "true"
                and AUTO_RETRY_RUN_ID_TAG not in run.tags
            ):
                # Dagster's run retry daemon is about to re-launch it: treat it as active.
                status = "RETRY_PENDING"
            states.append(
                RunState(
                    batch_id,
                    chunk_no,
                    status,
                    RETRY_NUMBER_TAG in run.tags,
                    handed_over=HANDED_OVER_TAG in run.tags,
                )
            )
    return states


WORKER_PID_TAG = "batch/worker_pid"
WORKER_HOST_TAG = "batch/worker_host"


def worker_is_gone(tags: dict) -> bool:
    """True if the run's worker process (recorded in its tags when the chunk started) ran on
    this machine and no longer exists. Workers on other machines are left to Dagster."""
    pid, host = tags.get(WORKER_PID_TAG), tags.get(WORKER_HOST_TAG)
    if not pid or host != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(pid))
        return proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return True
    except psutil.Error:
        return False


def reap_dead_runs(instance, paths: config.Paths) -> list[str]:  # noqa: ANN001
    """Items a crashed or killed run left ``running`` go back to ``pending`` (the chunk is
    launched again) or fail after repeated crashes; nothing stays ``running`` forever."""
    with warehouse.connect(paths.warehouse, read_only=True, timeout_s=20) as con:
        groups = ledger.running_groups(con)
    if not groups:
        return []
    statuses: dict[str, str | None] = {}
    for _batch, _chunk, run_id in groups:
        if run_id and run_id not in statuses:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status.value == "STARTED" and worker_is_gone(run.tags):
                instance.report_run_failed(
                    run, message=f"run worker (pid {run.tags.get(WORKER_PID_TAG)}) is gone"
                )
                run = instance.get_run_by_id(run_id)
            status = run.status.value if run else None
            if status == "FAILURE" and run.tags.get(WILL_RETRY_TAG) == "true":
                status = "RETRY_PENDING"
            statuses[run_id] = status
    decisions = plan_reaping(groups, statuses, run_states(instance, {g[0] for g in groups}))
    done = []
    if decisions:
        with warehouse.connect(paths.warehouse, timeout_s=20) as con:
            for d in decisions:
                con.execute("begin")
                n = ledger.reap_items(con, d.batch_id, d.chunk_no, d.run_id, d.action, d.reason)
                ledger.refresh_batch(con, d.batch_id)
                con.execute("commit")
                if n:
                    done.append(
                        f"{d.action} {n} item(s) of {d.batch_id} chunk {d.chunk_no}: {d.reason}"
                    )
    return done


@sensor(
    name="batch_dispatcher",
    minimum_interval_seconds=3,
    default_status=DefaultSensorStatus.RUNNING,
    jobs=list(OPERATION_JOBS.values()),
    description=(
        "Launches the chunk runs of queued and running batches through the run queue: one run "
        "per chunk of items (a range of partition keys), highest batch priority first, "
        "respecting pause, cancel and each batch's max_concurrency."
    ),
)
def batch_dispatcher(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    paths = config.get_paths()
    try:
        reaped = reap_dead_runs(context.instance, paths)
        if reaped:
            context.log.warning(f"reaper: {reaped}")
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


@run_failure_sensor(
    name="run_failure_recorder",
    monitored_jobs=list(OPERATION_JOBS.values()),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description=(
        "Records every failed chunk run in the ledger (batch_events: run_failed, with the "
        "error) and posts it as JSON to the webhook in BATCH_PIPELINES_WEBHOOK_URL, if set."
    ),
)
def run_failure_recorder(context: RunFailureSensorContext) -> None:
    run = context.dagster_run
    message = context.failure_event.message or "run failed"
    payload = failure_payload(run.run_id, run.job_name, run.tags, message)
    delivered, detail = post_webhook(payload)
    batch_id = run.tags.get("batch/id")
    if batch_id:
        with warehouse.connect(config.get_paths().warehouse, timeout_s=60) as con:
            ledger.add_event(
                con,
                batch_id,
                "run_failed",
                actor="run_failure_recorder",
                detail={**payload, "webhook_delivered": delivered, "webhook_detail": detail},
            )
    context.log.info(f"run {run.run_id} failed (batch {batch_id}); webhook: {detail}")
