"""Undoing a report batch: the files it wrote (and its folder once empty), then its rows of
``reports``."""

from __future__ import annotations

import contextlib

import duckdb

from batch_pipelines.core.contract import UndoContext
from batch_pipelines.operations.report.tables import REPORTS


def undo_report(con: duckdb.DuckDBPyConnection, ctx: UndoContext) -> dict[str, int]:
    rows = con.execute(
        "select html_path, markdown_path, csv_path from reports where batch_id = ?",
        [ctx.batch_id],
    ).fetchall()
    files = sum(ctx.delete_file(p) for row in rows for p in row)
    with contextlib.suppress(OSError):
        (ctx.paths.reports / ctx.batch_id).rmdir()
    return {"files": files, REPORTS: ctx.delete_rows(con, REPORTS)}
