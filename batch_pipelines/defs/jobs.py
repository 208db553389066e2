"""Jobs: one ``<operation>_job`` per operation, and the ``submit_batch`` launchpad job."""

from collections.abc import Callable
from typing import Any

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op
from pydantic import Field

from batch_pipelines.app import control
from batch_pipelines.app.submit import RateLimitError
from batch_pipelines.app.submit import submit_batch as submit_batch_service
from batch_pipelines.core.manifest import ManifestError
from batch_pipelines.defs.assets import build_operation_asset, build_operation_job
from batch_pipelines.operations import REGISTRY

OPERATION_ASSETS = {name: build_operation_asset(spec) for name, spec in REGISTRY.items()}
OPERATION_JOBS = {
    name: build_operation_job(spec, OPERATION_ASSETS[name]) for name, spec in REGISTRY.items()
}


class SubmitBatchConfig(Config):
    """A batch manifest, as launchpad config."""

    operation: str = Field(
        description="One of annotate, import, export, transform, report, validate, cleanup"
    )
    name: str | None = None
    priority: str = Field("normal", description="low, normal, high or critical")
    options: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    items: list[dict[str, Any]] | None = None
    items_from: dict[str, Any] | None = None


@op(description="Validate the manifest and register the batch; the dispatcher runs it.")
def register_batch(context: OpExecutionContext, config: SubmitBatchConfig) -> str:
    manifest = {k: v for k, v in config.model_dump().items() if v is not None}
    source = context.run.tags.get("batch/entry_point", "launchpad")
    try:
        batch_id = submit_batch_service(
            manifest,
            instance=context.instance,
            source=source,
            # The manifest's submitted_by is a label: the actor is who launched the run.
            actor=context.run.tags.get("dagster/user") or source,
        )
    except ManifestError as exc:
        raise Failure(
            description=f"invalid manifest: {exc}",
            metadata={"problems": MetadataValue.json(exc.to_dict())},
            allow_retries=False,
        ) from None
    except RateLimitError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    context.add_output_metadata({"batch_id": batch_id})
    context.log.info(f"registered batch {batch_id}")
    return batch_id


def _launchpad_job(name: str, description: str) -> Callable:
    """A job people launch from the launchpad, tagged as such."""
    return job(name=name, description=description, tags={"batch/entry_point": "launchpad"})


@_launchpad_job(
    "submit_batch",
    "Submit a batch from the launchpad: the run config is the manifest (operation, name, "
    "priority, options, settings, items or items_from).",
)
def submit_batch_job() -> None:
    register_batch()


class BatchControlConfig(Config):
    """A control on one batch, from the launchpad."""

    batch_id: str = Field(description="The batch to act on")
    action: str = Field(description="cancel, pause, resume or retry")
    categories: list[str] = Field(
        default_factory=list, description="retry: only failed items of these error categories"
    )
    items: list[str] = Field(default_factory=list, description="retry: only these item ids")


@op(description="Cancel, pause, resume or retry a batch; the result is logged and audited.")
def control_batch(context: OpExecutionContext, config: BatchControlConfig) -> dict:
    actor = f"launchpad:{context.run.tags.get('dagster/user', 'ui')}"
    try:
        if config.action == "cancel":
            result = control.cancel_batch(config.batch_id, instance=context.instance, actor=actor)
        elif config.action == "pause":
            result = control.pause_batch(config.batch_id, instance=context.instance, actor=actor)
        elif config.action == "resume":
            result = control.resume_batch(config.batch_id, instance=context.instance, actor=actor)
        elif config.action == "retry":
            result = control.retry_batch(
                config.batch_id,
                categories=config.categories,
                item_ids=config.items,
                instance=context.instance,
                actor=actor,
                source="launchpad",
            )
        else:
            raise control.ControlError(
                f"action {config.action!r} is not one of cancel, pause, resume, retry"
            )
    except control.ControlError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    context.log.info(result.message)
    context.add_output_metadata({"result": result.message})
    return result.to_dict()


@_launchpad_job(
    "batch_control",
    "Control a batch from the launchpad: config {batch_id, action: cancel | pause | resume "
    "| retry, categories?, items?}. Each control is recorded in batch_events.",
)
def batch_control_job() -> None:
    control_batch()
