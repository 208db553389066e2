"""The report operation: HTML, Markdown and CSV reports on batches, tables and operations."""

from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.operations.report.handler import handle_report
from batch_pipelines.operations.report.models import ReportItem, ReportOptions
from batch_pipelines.operations.report.tables import DETAIL_TABLES
from batch_pipelines.operations.report.undo import undo_report

SPEC = OperationSpec(
    name="report",
    description=(
        "Reports, one partition per request: a batch summary (counts, duration percentiles, "
        "errors, quality), a table profile (nulls, distinct values, distributions) or an "
        "operation over a time window (status counts, throughput). Each writes a "
        "self-contained HTML file with PNG charts, a Markdown summary and a CSV under "
        "data/reports/<batch_id>/. Details: reports."
    ),
    options_model=ReportOptions,
    item_model=ReportItem,
    handler=handle_report,
    detail_tables=DETAIL_TABLES,
    undo=undo_report,
)

__all__ = ["SPEC"]
