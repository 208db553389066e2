"""Sensors: the manifest inbox, the batch dispatcher (whose reaper, in
:mod:`batch_pipelines.app.recovery`, ends runs whose worker is gone), the failed-run recorder
and the lifecycle webhook sender (:mod:`batch_pipelines.core.outbox`)."""

import time

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from batch_pipelines.app.dispatch import chunk_states, plan_launches
from batch_pipelines.app.gate import apply_due_gates
from batch_pipelines.app.inbox import file_owner, list_inbox, pick_manifests, take, tick_deadline
from batch_pipelines.app.partitions import chunk_check_keys
from batch_pipelines.app.queue import retag_queued_runs
from batch_pipelines.app.recovery import (
    batch_run_records,
    reap_dead_runs,
    retire_stale_retries,
    run_states_from,
)
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import config, ledger, outbox, warehouse, webhooks
from batch_pipelines.core.webhooks import failure_payload, post_webhook
from batch_pipelines.defs.assets import CHUNK_RUN_CONFIG
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
        return submit_batch(
            path,
            instance=context.instance,
            source="inbox",
            idempotency_key=key,
            actor=file_owner(path),
        )

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


@sensor(
    name="batch_dispatcher",
    minimum_interval_seconds=3,
    default_status=DefaultSensorStatus.RUNNING,
    jobs=list(OPERATION_JOBS.values()),
    description=(
        "Launches the chunk runs of queued and running batches through the run queue: one run "
        "per chunk of items (a range of partition keys), highest batch priority first, "
        "respecting pause, cancel, the instance-wide hold and each batch's max_concurrency; "
        "a batch's canary chunks (tag batch/canary) first, the rest once they passed; "
        "finished batches with a quality gate send their low scorers back as a child batch; "
        "chunks that wait rise in priority (BATCH_PIPELINES_PRIORITY_AGING_S). Each tick first "
        "ends the "
        "runs whose worker process is gone (freeing their pool slots) and puts the items "
        "they left running back to pending."
    ),
)
def batch_dispatcher(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    paths = config.get_paths()
    try:
        reaped = reap_dead_runs(context.instance, paths)
        if reaped:
            context.log.warning(f"reaper: {reaped}")
        # Finished batches with a quality gate send their low scorers back as a child batch,
        # whose chunks this same tick launches.
        for gated in apply_due_gates(context.instance):
            context.log.info(f"quality gate of {gated.batch_id}: {gated.message}")
        with warehouse.connect(paths.warehouse, read_only=True, timeout_s=20) as con:
            hold = ledger.get_hold(con)
            rows = [] if hold else ledger.launchable_chunks(con)
    except (warehouse.WarehouseBusyError, OSError) as exc:
        return SkipReason(f"warehouse not readable this tick: {exc}")
    if hold:
        since = f"{hold['held_at']:%Y-%m-%d %H:%M:%S}"
        return SkipReason(
            f"the instance is held (by {hold['held_by']} since {since} UTC): nothing "
            "launches until `batch-pipelines resume --all`"
        )
    if not rows:
        return SkipReason("no batch has chunks waiting to run")
    chunks = chunk_states(rows, ledger.utcnow())
    now = time.time()
    records = batch_run_records(context.instance, sorted({c.batch_id for c in chunks}))
    retired = retire_stale_retries(context.instance, records, now)
    if retired:
        context.log.warning(f"no automatic retry will come for failed runs {retired}")
    # Queued runs take their batch's priority now (re-prioritised, or aged while waiting).
    retagged = retag_queued_runs(
        context.instance,
        records,
        {c.batch_id: c.priority for c in chunks},
        {c.batch_id: c.waiting_s for c in chunks},
        now,
    )
    if retagged:
        context.log.info(f"priority of queued runs changed: {retagged}")
    launches = plan_launches(
        chunks, run_states_from(records, now), aging_s=config.priority_aging_s()
    )
    if not launches:
        return SkipReason(f"{len(chunks)} chunk(s) waiting, all running or held by limits")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=launch.run_key,
                job_name=launch.job_name,
                tags=launch.tags,
                run_config=CHUNK_RUN_CONFIG,
                asset_selection=[AssetKey(f"{launch.operation}_items")],
                asset_check_keys=chunk_check_keys(launch.operation, launch.gated),
            )
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
        # On a lake, a commit that conflicts with another writer's runs again.
        warehouse.write(
            lambda con: ledger.add_event(
                con,
                batch_id,
                "run_failed",
                actor="run_failure_recorder",
                detail={**payload, "webhook_delivered": delivered, "webhook_detail": detail},
            ),
            config.get_paths().warehouse,
            timeout_s=60,
        )
    context.log.info(f"run {run.run_id} failed (batch {batch_id}); webhook: {detail}")


@sensor(
    name="webhook_sender",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Sends the lifecycle webhooks (batch.submitted, started, progress, completed, failed, "
        "cancelled, paused, resumed, ...) read from batch_events to the endpoints in "
        "BATCH_PIPELINES_WEBHOOK_URL, signed with BATCH_PIPELINES_WEBHOOK_SECRET; every "
        "attempt is in webhook_deliveries."
    ),
)
def webhook_sender(context: SensorEvaluationContext) -> SkipReason:
    try:
        if not webhooks.endpoints():
            return SkipReason(f"{webhooks.WEBHOOK_ENV} is not set")
    except webhooks.WebhookConfigError as exc:
        return SkipReason(str(exc))
    result = outbox.deliver(config.get_paths())
    return SkipReason(
        f"{result.enqueued} queued, {result.delivered} delivered, {result.failed_attempts} "
        f"failed attempts, {result.due_later} waiting"
    )
