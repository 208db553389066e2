"""The operation registry: the one list of operations and of the detail tables they own.

Each operation is a package ``operations/<name>/`` whose ``__init__`` exports ``SPEC``
(:class:`batch_pipelines.core.contract.OperationSpec`): ``models.py`` (options and item
models), ``handler.py`` (the item handler), ``tables.py`` (its detail tables), and its own
extras. Operations never import each other; what they share lives in
:mod:`batch_pipelines.operations.relations` or in ``core``.
"""

from __future__ import annotations

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations import (
    annotate,
    cleanup,
    export,
    import_,
    report,
    transform,
    validate,
)

REGISTRY: dict[str, OperationSpec] = {
    spec.name: spec
    for spec in (
        annotate.SPEC,
        import_.SPEC,
        export.SPEC,
        transform.SPEC,
        report.SPEC,
        validate.SPEC,
        cleanup.SPEC,
    )
}
OPERATION_NAMES: tuple[str, ...] = tuple(REGISTRY)
# Every operation's detail tables, in registry order: what cleanup may delete a batch's rows
# from (the host hands it over as the detail_tables resource).
DETAIL_TABLES: tuple[str, ...] = tuple(
    dict.fromkeys(table for spec in REGISTRY.values() for table in spec.detail_tables)
)


def get_operation(name: str) -> OperationSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown operation {name!r}; known operations: {known}") from None
