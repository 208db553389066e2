"""The export operation: warehouse tables and queries out to files."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations.export.handler import handle_export
from batch_pipelines.operations.export.models import ExportItem, ExportOptions
from batch_pipelines.operations.export.tables import DETAIL_TABLES
from batch_pipelines.operations.export.undo import undo_export

SPEC = OperationSpec(
    name="export",
    description=(
        "Export warehouse tables or read-only SELECT queries to Parquet, CSV, JSON, NDJSON or "
        "xlsx files under data/exports/<batch_id>/, one partition per table or query, written "
        "atomically. Rows, bytes and sha256 per file: exports."
    ),
    options_model=ExportOptions,
    item_model=ExportItem,
    handler=handle_export,
    detail_tables=DETAIL_TABLES,
    undo=undo_export,
)

__all__ = ["SPEC"]
