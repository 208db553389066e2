"""Undoing a transform batch: the rows it appended (by their lineage columns; a replaced or
created target is put back from its snapshot by the host), then its rows of ``transforms``."""

from __future__ import annotations

import duckdb

from batch_pipelines.core.contract import UndoContext
from batch_pipelines.operations.transform.tables import TRANSFORMS


def undo_transform(con: duckdb.DuckDBPyConnection, ctx: UndoContext) -> dict[str, int]:
    tables = [
        r[0]
        for r in con.execute(
            "select distinct target_table from transforms where batch_id = ? and "
            "mode = 'append' order by 1",
            [ctx.batch_id],
        ).fetchall()
    ]
    rows = sum(ctx.delete_lineage_rows(con, table) for table in tables)
    return {"appended_rows": rows, TRANSFORMS: ctx.delete_rows(con, TRANSFORMS)}
