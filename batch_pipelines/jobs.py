"""Jobs: one ``<operation>_job`` per operation, and the ``submit_batch`` launchpad job."""

from typing import Any

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from batch_pipelines.assets import build_operation_asset, build_operation_job
from batch_pipelines.manifest import ManifestError
from batch_pipelines.operations import REGISTRY
from batch_pipelines.service import submit_batch as submit_batch_service

OPERATION_ASSETS = {name: build_operation_asset(spec) for name, spec in REGISTRY.items()}
OPERATION_JOBS = {
    name: build_operation_job(spec, OPERATION_ASSETS[name]) for name, spec in REGISTRY.items()
}


class SubmitBatchConfig(Config):
    """A batch manifest (SPEC §4), as launchpad config."""

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
    try:
        batch_id = submit_batch_service(
            manifest,
            instance=context.instance,
            source="launchpad",
            submitted_by=context.run.tags.get("dagster/user"),
        )
    except ManifestError as exc:
        from dagster import Failure, MetadataValue

        raise Failure(
            description=f"invalid manifest: {exc}",
            metadata={"problems": MetadataValue.json(exc.to_dict())},
            allow_retries=False,
        ) from None
    context.add_output_metadata({"batch_id": batch_id})
    context.log.info(f"registered batch {batch_id}")
    return batch_id


@job(
    name="submit_batch",
    description=(
        "Submit a batch from the launchpad: the run config is the manifest (operation, name, "
        "priority, options, settings, items or items_from)."
    ),
    tags={"batch/entry_point": "launchpad"},
)
def submit_batch_job() -> None:
    register_batch()
