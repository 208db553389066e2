"""The shared factory that turns an operation into a partitioned asset and its job.

Every operation asset has one dynamic partition per item and executes a range of partitions
per run (``context.partition_keys``). Each item that succeeds (or is skipped) is recorded as
a materialization of its own partition with its metrics as metadata; if any item fails, the
step fails at the end so the failed partitions show as failed in the UI, while the items
that worked keep their materializations. Item-level retries happen inside the run (see
:mod:`batch_pipelines.core.runner`); the step retry policy only covers errors outside the items,
such as the warehouse staying locked.
"""

import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    DagsterExecutionInterruptedError,
    Failure,
    Jitter,
    MetadataValue,
    Output,
    RetryPolicy,
    define_asset_job,
    in_process_executor,
    multi_asset,
)

from batch_pipelines.app import runmetrics
from batch_pipelines.app.dagster_storage import buffer_materialization_batch
from batch_pipelines.app.dispatch import HANDED_OVER_TAG
from batch_pipelines.app.lifecycle import rollback_if_failed
from batch_pipelines.app.partitions import PARTITIONS
from batch_pipelines.app.recovery import IN_PROCESS, LAUNCHED_BY_TAG, worker_tags
from batch_pipelines.app.services import host_resources
from batch_pipelines.core import ledger, limits, warehouse
from batch_pipelines.core.contract import ItemCheck, OperationSpec
from batch_pipelines.core.errors import is_interrupt
from batch_pipelines.core.gates import GATE_CHECK_NAME
from batch_pipelines.core.redact import redact_optional
from batch_pipelines.core.runner import ExecutionSettings, WorkItem, run_chunk
from batch_pipelines.core.usage import Meter
from batch_pipelines.defs.resources import WarehouseResource

WRITER_POOL = "duckdb_writer"
STEP_RETRY = RetryPolicy(
    max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
UI_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=100)
# The run worker's console (its stderr, kept as the step's compute log) at INFO: at DEBUG it
# printed every item's materialization event, about 1 ms per item; the events themselves are
# in the event log either way, where the UI reads them.
CHUNK_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _scalar_metadata(result: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (result or {}).items():
        if isinstance(v, bool | int | float | str) and (not isinstance(v, str) or len(v) < 500):
            out[k] = v
    return out


def _materialization(
    asset_key: AssetKey,
    row: dict[str, Any],
    outcome: ledger.ItemOutcome | None,
    extra: dict[str, Any] | None = None,
) -> AssetMaterialization:
    status = outcome.status if outcome else row["status"]
    metadata: dict[str, Any] = {
        "batch_id": row["batch_id"],
        "item_id": row["item_id"],
        "status": status,
    }
    if outcome is not None:
        if outcome.duration_ms is not None:
            metadata["duration_ms"] = round(outcome.duration_ms, 3)
        metadata["attempts"] = len(outcome.attempts)
        if outcome.quality_score is not None:
            metadata["quality_score"] = round(outcome.quality_score, 4)
        metadata.update(_scalar_metadata(outcome.result))
    metadata.update(extra or {})
    return AssetMaterialization(
        asset_key=asset_key, partition=row["partition_key"], metadata=metadata
    )


def log_materializations(
    context: AssetExecutionContext, materializations: list[AssetMaterialization]
) -> None:
    """Log the materializations of one flush, each of its own partition.

    With Dagster's event batching on (``DAGSTER_EVENT_BATCH_SIZE`` > 0) they are logged as one
    batch of events, which the instance hands to ``EventLogStorage.store_event_batch`` (one
    transaction with :mod:`batch_pipelines.app.dagster_storage` or Postgres) instead of one
    storage write per partition; otherwise, and if Dagster's internals differ from what this
    expects, through ``context.log_event`` one by one. Either way every partition gets the
    same event with the same metadata.
    """
    if len(materializations) > 1 and buffer_materialization_batch(
        context.op_execution_context, materializations
    ):
        return
    for m in materializations:
        context.log_event(m)


def _check_evaluation(
    context: AssetExecutionContext, check: ItemCheck, partition_key: str, metrics: dict[str, Any]
) -> AssetCheckEvaluation | None:
    outcome = check.evaluate(metrics)
    if outcome is None:
        return None
    return AssetCheckEvaluation(
        asset_key=context.asset_key,
        check_name=check.name,
        passed=outcome.passed,
        metadata=outcome.metadata,
        partition=partition_key,
        severity=AssetCheckSeverity.WARN
        if outcome.severity == "warn"
        else AssetCheckSeverity.ERROR,
        description=outcome.description,
        blocking=check.blocking,
    )


# Every operation that scores quality has this partitioned check: one result per item of a
# batch with settings.quality_gate, failed (WARN) when the gate sends the item back.
GATE_CHECK = ItemCheck(
    name=GATE_CHECK_NAME,
    description=(
        "The item's quality score reached the min_score of its batch's quality gate "
        "(settings.quality_gate); failed (WARN) when the gate sends it back for a second "
        "opinion. Only items of batches with a quality gate get a result."
    ),
    evaluate=lambda _metrics: None,
)


def _item_checks(spec: OperationSpec) -> tuple[ItemCheck, ...]:
    return (*spec.asset_checks, GATE_CHECK) if spec.scores_quality else spec.asset_checks


def _gate_evaluation(
    asset_key: AssetKey, partition_key: str, outcome: ledger.ItemOutcome, gate: Any
) -> AssetCheckEvaluation | None:
    if outcome.quality_score is None:
        return None
    passed = outcome.quality_score >= gate.min_score
    return AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=GATE_CHECK.name,
        passed=passed,
        metadata={"quality_score": outcome.quality_score, "min_score": gate.min_score},
        partition=partition_key,
        severity=AssetCheckSeverity.WARN,
        description=None if passed else "sent back by the quality gate for a second opinion",
    )


def execute_partitions(
    spec: OperationSpec,
    context: AssetExecutionContext,
    warehouse_resource: WarehouseResource,
    resources: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Run the items behind ``context.partition_keys``, batch by batch."""
    paths = warehouse_resource.paths()
    keys = list(context.partition_keys)
    # Looked up once: context.asset_key costs ~0.1 ms a call, once per item adds up.
    asset_key = context.asset_key
    mine = worker_tags(context.run_id)
    if not context.instance.is_ephemeral and any(
        context.run.tags.get(k) != v for k, v in mine.items()
    ):
        # Lets the dispatcher's reaper tell a killed worker from a slow one.
        context.instance.add_run_tags(context.run_id, mine)
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        rows = ledger.items_for_keys(con, keys)
    known = {r["partition_key"] for r in rows}
    unknown = [k for k in keys if k not in known]
    if unknown:
        context.log.warning(
            f"{len(unknown)} partition(s) have no ledger row (deleted batch?): {unknown[:5]}"
        )
    # A run launched by the dispatcher (tag batch/id) resumes its chunk: items already
    # finished by an earlier attempt are not run again. A run launched by hand (UI
    # materialize, `dagster asset materialize --partition`) re-runs the items it names.
    dispatched = "batch/id" in context.run.tags
    # Only runs of the run queue hand unstarted items over to a next run (the dispatcher
    # launches it); an in-process run (`submit --wait`) runs its whole chunk.
    sliced = dispatched and context.run.tags.get("batch/launched_by") != "in_process"
    # Partitioned asset checks (spec.asset_checks): a range run cannot target one partition
    # with AssetCheckResult, so each item's result is logged as an AssetCheckEvaluation of
    # its own partition, and the check's output is yielded once at the end.
    all_checks = _item_checks(spec)
    selected_checks = set(context.selected_asset_check_keys) if all_checks else set()
    checks = [c for c in all_checks if AssetCheckKey(context.asset_key, c.name) in selected_checks]
    by_batch: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_batch[r["batch_id"]].append(r)
    failed: list[str] = []
    for batch_id, batch_rows in by_batch.items():
        first = batch_rows[0]
        if first["operation"] != spec.name:
            raise Failure(
                f"partition of batch {batch_id} belongs to {first['operation']}, not {spec.name}",
                allow_retries=False,
            )
        if dispatched and first["batch_status"] in ("cancelled", "failed", "rolled_back"):
            context.log.info(f"batch {batch_id} is {first['batch_status']}: nothing to run")
            continue
        if dispatched and first["paused"]:
            # Launched just before a pause: leave the chunk for resume.
            context.log.info(f"batch {batch_id} is paused: its items stay pending")
            continue
        settings = ExecutionSettings.model_validate(first["settings"])
        options = spec.options_model.model_validate(first["options"])
        todo, done = [], []
        for r in batch_rows:
            if dispatched and r["status"] in ledger.TERMINAL_ITEM_STATUSES:
                done.append(r)
            else:
                todo.append(r)
        log_materializations(
            context,
            [
                _materialization(asset_key, r, None)
                for r in done
                if r["status"] in ("succeeded", "skipped")
            ],
        )
        by_item = {r["item_id"]: r for r in todo}
        gate = settings.quality_gate

        def on_flushed(outcomes: list[ledger.ItemOutcome], by_item=by_item, gate=gate) -> None:
            # The shared HTTP limits as this flush saw them (cap now, 429s so far), if any.
            http_now = limits.run_metadata()
            log_materializations(
                context,
                [
                    _materialization(asset_key, by_item[o.item_id], o, http_now)
                    for o in outcomes
                    if o.status in ("succeeded", "skipped")
                ],
            )
            for o in outcomes:
                if o.status in ("succeeded", "skipped"):
                    for check in checks:
                        key = by_item[o.item_id]["partition_key"]
                        if check is GATE_CHECK:
                            evaluation = gate and _gate_evaluation(asset_key, key, o, gate)
                        else:
                            evaluation = _check_evaluation(context, check, key, o.result or {})
                        if evaluation is not None:
                            context.log_event(evaluation)

        work = [
            WorkItem(
                r["batch_id"],
                r["item_id"],
                r["partition_key"],
                r["payload"],
                previous_attempts=int(r["attempts"] or 0),
            )
            for r in todo
        ]
        correlation = first.get("correlation_id")
        tagged = context.run.tags.get(runmetrics.CORRELATION_TAG) == correlation
        if correlation and not tagged and not context.instance.is_ephemeral:
            context.instance.add_run_tags(context.run_id, {runmetrics.CORRELATION_TAG: correlation})
        meter = Meter()
        summary = run_chunk(
            spec,
            work,
            options,
            settings,
            run_id=context.run_id,
            paths=paths,
            resources=resources,
            on_flushed=on_flushed,
            time_slice_s=settings.chunk_time_slice_s if sliced else None,
        )
        usage = runmetrics.run_metrics_row(
            run_id=context.run_id,
            batch_id=batch_id,
            operation=spec.name,
            chunk_no=first["chunk_no"],
            usage=meter.stop(),
            outcomes=summary.outcomes,
            launched_by=context.run.tags.get(LAUNCHED_BY_TAG),
            queued=runmetrics.queued_at(context.instance, context.run_id),
            correlation_id=correlation,
        )
        runmetrics.record(paths, usage)
        context.log_event(
            AssetObservation(asset_key=context.asset_key, metadata=runmetrics.metadata(usage))
        )
        n_failed = summary.count("failed")
        context.log.info(
            f"batch {batch_id}: {summary.count('succeeded')} succeeded, {n_failed} failed, "
            f"{summary.count('skipped')} skipped, {summary.count('cancelled')} cancelled "
            f"(batch is {summary.batch_status}; correlation id {correlation}); "
            f"cpu {usage['cpu_user_s'] + usage['cpu_system_s']:.2f}s, "
            f"peak rss {usage['peak_rss_mb']:.0f} MB"
        )
        if summary.batch_status == "failed" and rollback_if_failed(batch_id):
            context.log.warning(f"batch {batch_id} failed: rolled back (rollback_on_failure)")
        if summary.handed_over:
            context.log.info(
                f"time slice of {settings.chunk_time_slice_s:g}s used: "
                f"{len(summary.handed_over)} item(s) left pending for the next run of the chunk"
            )
            if not context.instance.is_ephemeral:
                context.instance.add_run_tags(
                    context.run_id, {HANDED_OVER_TAG: str(len(summary.handed_over))}
                )
        failed += [
            f"{o.item_id}: {redact_optional(o.error)}"
            for o in summary.outcomes
            if o.status == "failed"
        ]
    for check in checks:
        key = AssetCheckKey(context.asset_key, check.name)
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
    if failed:
        raise Failure(
            description=f"{len(failed)} item(s) failed; the others are materialized",
            metadata={"failed_items": MetadataValue.md("\n".join(f"- {f}" for f in failed[:50]))},
            allow_retries=False,
        )


def _check_specs(spec: OperationSpec) -> list[AssetCheckSpec] | None:
    """One partitioned AssetCheckSpec per ``spec.asset_checks`` (partitioned checks are a
    Dagster preview feature; its warning is silenced here, where we chose it)."""
    if not _item_checks(spec):
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec")
        return [
            AssetCheckSpec(
                c.name,
                asset=AssetKey(f"{spec.name}_items"),
                description=c.description,
                blocking=c.blocking,
                partitions_def=PARTITIONS[spec.name],
            )
            for c in _item_checks(spec)
        ]


def build_operation_asset(spec: OperationSpec) -> AssetsDefinition:
    """The partitioned asset of an operation: ``<operation>_items``."""

    # A multi_asset of one asset, only so that it can be subset: a chunk run selects the
    # quality gate's check only for a batch that has a gate (see chunk_check_keys).
    @multi_asset(
        name=f"{spec.name}_items",
        specs=[
            AssetSpec(
                f"{spec.name}_items",
                description=spec.description,
                group_name="operations",
                kinds={"duckdb", "python"},
                tags={"batch/operation": spec.name},
                partitions_def=PARTITIONS[spec.name],
                skippable=True,
            )
        ],
        partitions_def=PARTITIONS[spec.name],
        backfill_policy=UI_BACKFILL_POLICY,
        pool=WRITER_POOL,
        retry_policy=STEP_RETRY,
        required_resource_keys={"warehouse", *spec.resources},
        check_specs=_check_specs(spec),
        can_subset=True,
    )
    def _operation_asset(context: AssetExecutionContext) -> Iterator[Any]:
        resources = {k: getattr(context.resources, k) for k in spec.resources}
        resources.update(host_resources(context.instance))
        try:
            yield from execute_partitions(spec, context, context.resources.warehouse, resources)
        except (KeyboardInterrupt, DagsterExecutionInterruptedError, RuntimeError) as exc:
            interrupted = not isinstance(exc, RuntimeError) or is_interrupt(exc)
            if not interrupted or context.run.tags.get(LAUNCHED_BY_TAG) != IN_PROCESS:
                raise
            # Ctrl-C or SIGTERM on `submit --wait`: the step retry policy would run the chunk
            # again; the in-process runner puts its unfinished items back to pending instead.
            raise Failure(
                "interrupted: the chunk's unfinished items go back to pending",
                allow_retries=False,
            ) from None

    return _operation_asset


def build_operation_job(spec: OperationSpec, asset_def: AssetsDefinition):  # noqa: ANN201
    # One step per run: the in-process executor saves a process spawn per chunk.
    return define_asset_job(
        name=f"{spec.name}_job",
        executor_def=in_process_executor,
        config=CHUNK_RUN_CONFIG,
        selection=[asset_def],
        partitions_def=PARTITIONS[spec.name],
        tags={"batch/operation": spec.name},
        description=f"Chunk runs of {spec.name} batches. {spec.description}",
    )
