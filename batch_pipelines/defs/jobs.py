"""Jobs: one ``<operation>_job`` per operation, and the ``submit_batch`` launchpad job."""

from collections.abc import Callable
from typing import Any

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op
from pydantic import Field

from batch_pipelines.app import control, lifecycle, queue
from batch_pipelines.app.submit import RateLimitError
from batch_pipelines.app.submit import submit_batch as submit_batch_service
from batch_pipelines.app.templates import TemplateNotFound, submit_template
from batch_pipelines.core.manifest import ManifestError
from batch_pipelines.defs.assets import build_operation_asset, build_operation_job
from batch_pipelines.operations import REGISTRY

OPERATION_ASSETS = {name: build_operation_asset(spec) for name, spec in REGISTRY.items()}
OPERATION_JOBS = {
    name: build_operation_job(spec, OPERATION_ASSETS[name]) for name, spec in REGISTRY.items()
}


class SubmitBatchConfig(Config):
    """A batch manifest, as launchpad config; or a saved template and overrides."""

    template: str | None = Field(
        None,
        description="Submit this saved template (batch-pipelines template list) instead of a "
        "manifest; the other fields are then ignored except overrides",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="With template: dotted keys of its manifest to set, e.g. "
        '{"options.model": "x", "settings.chunk_size": 5}',
    )
    operation: str = Field(
        "",
        description="One of annotate, import, export, transform, report, validate, cleanup",
    )
    name: str | None = None
    priority: str = Field("normal", description="low, normal, high or critical")
    options: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    items: list[dict[str, Any]] | None = None
    items_from: dict[str, Any] | None = None


@op(description="Validate the manifest and register the batch; the dispatcher runs it.")
def register_batch(context: OpExecutionContext, config: SubmitBatchConfig) -> str:
    manifest = {
        k: v
        for k, v in config.model_dump(exclude={"template", "overrides"}).items()
        if v is not None
    }
    source = context.run.tags.get("batch/entry_point", "launchpad")
    # The manifest's submitted_by is a label: the actor is who launched the run.
    actor = context.run.tags.get("dagster/user") or source
    try:
        if config.template:
            batch_id = submit_template(
                config.template,
                config.overrides,
                instance=context.instance,
                source=source,
                actor=actor,
            )
        else:
            if not manifest.get("operation"):
                raise ManifestError([("operation", "give an operation, or a template")])
            batch_id = submit_batch_service(
                manifest, instance=context.instance, source=source, actor=actor
            )
    except TemplateNotFound as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    except ManifestError as exc:
        raise Failure(
            description=f"{exc.kind}: {exc}",
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
    "priority, options, settings, items or items_from), or a saved template and its "
    "overrides ({template: NAME, overrides: {options.model: x}}).",
)
def submit_batch_job() -> None:
    register_batch()


ACTIONS = ("cancel", "pause", "resume", "retry", "delete", "rollback", "priority")


class BatchControlConfig(Config):
    """A control on one batch (or, for pause and resume with ``all``, on every batch), from
    the launchpad."""

    batch_id: str = Field("", description="The batch to act on (empty with all: true)")
    action: str = Field(description=", ".join(ACTIONS))
    all: bool = Field(
        False, description="pause/resume: hold or release every batch (pause --all/resume --all)"
    )
    categories: list[str] = Field(
        default_factory=list, description="retry: only failed items of these error categories"
    )
    items: list[str] = Field(default_factory=list, description="retry: only these item ids")
    level: str | None = Field(None, description="priority: low, normal, high or critical")
    keep_data: bool = Field(False, description="delete: keep what the batch wrote")
    rollback: bool = Field(False, description="cancel: also undo what the batch wrote")


def _control(config: BatchControlConfig, instance, actor: str) -> control.ControlResult:  # noqa: ANN001
    if config.action not in ACTIONS:
        raise control.ControlError(f"action {config.action!r} is not one of {', '.join(ACTIONS)}")
    if config.all:
        if config.action == "pause":
            return queue.hold_all(instance=instance, actor=actor)
        if config.action == "resume":
            return queue.release_all(actor=actor)
        raise control.ControlError(f"all: true applies to pause and resume, not {config.action}")
    if not config.batch_id:
        raise control.ControlError("batch_id is required (or all: true for pause/resume)")
    batch_id = config.batch_id
    if config.action == "cancel":
        return control.cancel_batch(
            batch_id, instance=instance, actor=actor, rollback=config.rollback
        )
    if config.action == "pause":
        return control.pause_batch(batch_id, instance=instance, actor=actor)
    if config.action == "resume":
        return control.resume_batch(batch_id, instance=instance, actor=actor)
    if config.action == "retry":
        return control.retry_batch(
            batch_id,
            categories=config.categories,
            item_ids=config.items,
            instance=instance,
            actor=actor,
            source="launchpad",
        )
    if config.action == "delete":
        return lifecycle.delete_batch(
            batch_id, keep_data=config.keep_data, instance=instance, actor=actor
        )
    if config.action == "rollback":
        return lifecycle.rollback_batch(batch_id, actor=actor)
    if config.level is None:
        raise control.ControlError("priority: give level (low, normal, high or critical)")
    return queue.change_priority(batch_id, config.level, instance=instance, actor=actor)


@op(
    description="Cancel, pause, resume, retry, delete, roll back or re-prioritise a batch; the "
    "result is logged and audited."
)
def control_batch(context: OpExecutionContext, config: BatchControlConfig) -> dict:
    actor = f"launchpad:{context.run.tags.get('dagster/user', 'ui')}"
    try:
        result = _control(config, context.instance, actor)
    except control.ControlError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    context.log.info(result.message)
    context.add_output_metadata({"result": result.message})
    return result.to_dict()


@_launchpad_job(
    "batch_control",
    "Control a batch from the launchpad: config {batch_id, action: cancel | pause | resume "
    "| retry | delete | rollback | priority, categories?, items?, level?, keep_data?, "
    "rollback?, all?}. Each control is recorded in batch_events.",
)
def batch_control_job() -> None:
    control_batch()
