"""The cleanup operation: what old batches left behind, deleted safely, with an audit log."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations.cleanup.handler import handle_cleanup
from batch_pipelines.operations.cleanup.models import CleanupItem, CleanupOptions
from batch_pipelines.operations.cleanup.tables import DETAIL_TABLES

SPEC = OperationSpec(
    name="cleanup",
    description=(
        "Cleanup targets, one partition per target: old finished batches (ledger and detail "
        "rows, Dagster partitions, export/report/staging files), old or orphan files under "
        "data/exports and data/reports, leftover temporary tables, stale staging folders. "
        "Dry run by default (lists what would go); dry_run: false deletes. Never touches "
        "anything outside the data roots. Audit: cleanup_log."
    ),
    options_model=CleanupOptions,
    item_model=CleanupItem,
    handler=handle_cleanup,
    detail_tables=DETAIL_TABLES,
)

__all__ = ["SPEC"]
