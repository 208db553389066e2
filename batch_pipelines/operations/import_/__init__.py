"""The import operation: data files into warehouse tables."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.core.targets import ItemTarget
from batch_pipelines.operations.import_.handler import handle_import
from batch_pipelines.operations.import_.models import ImportItem, ImportOptions
from batch_pipelines.operations.import_.tables import DETAIL_TABLES
from batch_pipelines.operations.import_.undo import undo_import

SPEC = OperationSpec(
    name="import",
    description=(
        "Import files (CSV, TSV, JSON, NDJSON, Parquet, xlsx) into warehouse tables, one "
        "partition per file. Rows that cannot be parsed land in import_rejects; identical files "
        "already imported into the same table are skipped. Details per file: import_files."
    ),
    options_model=ImportOptions,
    item_model=ImportItem,
    handler=handle_import,
    detail_tables=DETAIL_TABLES,
    item_targets=(ItemTarget("options.target_table", lambda options, _: options.target_table),),
    undo=undo_import,
    scores_quality=True,  # share of rows accepted
)

__all__ = ["SPEC"]
