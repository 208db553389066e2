"""Undoing an export batch: the files it wrote (and its folder once empty), then its rows of
``exports``."""

from __future__ import annotations

import contextlib

import duckdb

from batch_pipelines.core.contract import UndoContext
from batch_pipelines.operations.export.tables import EXPORTS


def undo_export(con: duckdb.DuckDBPyConnection, ctx: UndoContext) -> dict[str, int]:
    paths = con.execute(
        "select path from exports where batch_id = ? order by path", [ctx.batch_id]
    ).fetchall()
    files = sum(ctx.delete_file(p) for (p,) in paths)
    with contextlib.suppress(OSError):
        (ctx.paths.exports / ctx.batch_id).rmdir()
    return {"files": files, EXPORTS: ctx.delete_rows(con, EXPORTS)}
