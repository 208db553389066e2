"""The operations: one module each, registered here by name."""

from __future__ import annotations

from batch_pipelines.handler import OperationSpec
from batch_pipelines.operations import (
    annotate_op,
    cleanup_op,
    export_op,
    import_op,
    report_op,
    transform_op,
    validate_op,
)

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
