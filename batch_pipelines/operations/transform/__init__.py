"""The transform operation: warehouse tables built from other tables, by SQL or Python."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.core.targets import ItemTarget
from batch_pipelines.operations.transform.handler import handle_transform
from batch_pipelines.operations.transform.models import TransformItem, TransformOptions
from batch_pipelines.operations.transform.tables import DETAIL_TABLES
from batch_pipelines.operations.transform.undo import undo_transform

SPEC = OperationSpec(
    name="transform",
    description=(
        "Build warehouse tables from other tables, one partition per source -> target: a "
        "read-only SELECT over `source`, or a registered Python transform applied in chunks "
        "(normalize_columns, dedupe_latest, ...). The target is swapped in atomically. Rows "
        "in and out per item: transforms."
    ),
    options_model=TransformOptions,
    item_model=TransformItem,
    handler=handle_transform,
    detail_tables=DETAIL_TABLES,
    item_targets=(ItemTarget("target", lambda _, payload: payload.get("target")),),
    undo=undo_transform,
)

__all__ = ["SPEC"]
