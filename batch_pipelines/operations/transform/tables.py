"""The transform operation's detail table: one row per transformed item in ``transforms``."""

from __future__ import annotations

import duckdb

from batch_pipelines.core.contract import CommitContext

TRANSFORMS = "transforms"
DETAIL_TABLES = (TRANSFORMS,)


def replace_transform_row(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    *,
    source: str,
    target: str,
    kind: str,
    name: str,
    transform_options: str | None,
    mode: str,
    rows_in: int,
    rows_out: int,
    columns: int,
    duration_ms: float,
) -> None:
    con.execute(
        "delete from transforms where batch_id = ? and item_id = ?", [cc.batch_id, cc.item_id]
    )
    con.execute(
        "insert into transforms values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            cc.batch_id,
            cc.item_id,
            source,
            target,
            kind,
            name,
            transform_options,
            mode,
            rows_in,
            rows_out,
            columns,
            duration_ms,
        ],
    )
