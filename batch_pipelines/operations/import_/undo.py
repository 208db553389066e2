"""Undoing an import batch: the rows it appended (by their lineage columns; tables it
replaced, upserted or created are put back from their snapshot by the host), then its rows of
``import_files`` and ``import_rejects``."""

from __future__ import annotations

import duckdb

from batch_pipelines.core.contract import UndoContext
from batch_pipelines.operations.import_.tables import IMPORT_FILES, IMPORT_REJECTS


def undo_import(con: duckdb.DuckDBPyConnection, ctx: UndoContext) -> dict[str, int]:
    tables = [
        r[0]
        for r in con.execute(
            "select distinct target_table from import_files where batch_id = ? and "
            "status = 'imported' order by 1",
            [ctx.batch_id],
        ).fetchall()
    ]
    rows = sum(ctx.delete_lineage_rows(con, table) for table in tables)
    return {
        "imported_rows": rows,
        IMPORT_REJECTS: ctx.delete_rows(con, IMPORT_REJECTS),
        IMPORT_FILES: ctx.delete_rows(con, IMPORT_FILES),
    }
