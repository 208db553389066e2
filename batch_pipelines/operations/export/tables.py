"""The export operation's detail table: one row per written file in ``exports``."""

from __future__ import annotations

import duckdb

from batch_pipelines.core.contract import CommitContext

EXPORTS = "exports"
DETAIL_TABLES = (EXPORTS,)


def other_item_with_path(
    con: duckdb.DuckDBPyConnection, cc: CommitContext, path: str
) -> str | None:
    """The id of another item of this batch that already wrote ``path``, if any."""
    row = con.execute(
        "select item_id from exports where batch_id = ? and path = ? and item_id <> ?",
        [cc.batch_id, path, cc.item_id],
    ).fetchone()
    return row[0] if row else None
