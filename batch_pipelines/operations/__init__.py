"""The operations: one module each, registered here by name."""

from __future__ import annotations

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations.annotate import handler as annotate_op
from batch_pipelines.operations.cleanup import handler as cleanup_op
from batch_pipelines.operations.export import handler as export_op
from batch_pipelines.operations.import_ import handler as import_op
from batch_pipelines.operations.report import handler as report_op
from batch_pipelines.operations.transform import handler as transform_op
from batch_pipelines.operations.validate import handler as validate_op

OPERATION_NAMES = ("annotate", "import", "export", "transform", "report", "validate", "cleanup")

REGISTRY: dict[str, OperationSpec] = {
    spec.name: spec
    for spec in (
        annotate_op.SPEC,
        import_op.SPEC,
        export_op.SPEC,
        transform_op.SPEC,
        validate_op.SPEC,
        report_op.SPEC,
        cleanup_op.SPEC,
    )
}


def get_operation(name: str) -> OperationSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown operation {name!r}; known operations: {known}") from None
