"""The report operation's detail table: one row per written report in ``reports``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb

from batch_pipelines.core.contract import CommitContext

REPORTS = "reports"
DETAIL_TABLES = (REPORTS,)


def replace_report_row(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    *,
    kind: str,
    subject: str,
    paths: dict[str, str],
    size: int,
    charts: int,
    rows: int,
    summary: dict[str, Any],
    created_at: datetime,
) -> None:
    """Replace the item's row; ``paths`` holds the html, md and csv file paths."""
    con.execute("delete from reports where batch_id = ? and item_id = ?", [cc.batch_id, cc.item_id])
    con.execute(
        "insert into reports (batch_id, item_id, kind, subject, html_path, markdown_path, "
        'csv_path, bytes, charts, "rows", summary, created_at) '
        "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            cc.batch_id,
            cc.item_id,
            kind,
            subject,
            paths["html"],
            paths["md"],
            paths["csv"],
            size,
            charts,
            rows,
            json.dumps(summary, default=str),
            created_at,
        ],
    )
