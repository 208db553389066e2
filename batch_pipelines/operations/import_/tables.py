"""The import operation's detail tables: ``import_files`` (one row per file) and
``import_rejects`` (the rows DuckDB could not parse, with the reason)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb

from batch_pipelines.core.contract import CommitContext

IMPORT_FILES = "import_files"
IMPORT_REJECTS = "import_rejects"
DETAIL_TABLES = (IMPORT_FILES, IMPORT_REJECTS)


def identical_import(
    con: duckdb.DuckDBPyConnection, cc: CommitContext, target: str, sha256: str
) -> tuple[str, str] | None:
    """(batch_id, item_id) of another item that already imported this content into
    ``target``, if any."""
    return con.execute(
        "select batch_id, item_id from import_files where target_table = ? and "
        "sha256 = ? and status = 'imported' and not (batch_id = ? and item_id = ?) "
        "limit 1",
        [target, sha256, cc.batch_id, cc.item_id],
    ).fetchone()


def replace_file_row(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    *,
    path: str,
    fmt: str,
    target: str,
    mode: str,
    status: str,
    rows: int,
    rejected: int,
    columns: list[str],
    size: int,
    sha256: str,
) -> None:
    con.execute(
        "delete from import_files where batch_id = ? and item_id = ?", [cc.batch_id, cc.item_id]
    )
    con.execute(
        "insert into import_files values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            cc.batch_id,
            cc.item_id,
            path,
            fmt,
            target,
            mode,
            status,
            rows,
            rejected,
            len(columns),
            json.dumps(columns),
            size,
            sha256,
        ],
    )


def replace_rejects(
    con: duckdb.DuckDBPyConnection, cc: CommitContext, rejects: Sequence[Sequence[Any]]
) -> None:
    """Replace the item's rejects with ``rejects`` (line, column, error, raw)."""
    con.execute(
        "delete from import_rejects where batch_id = ? and item_id = ?",
        [cc.batch_id, cc.item_id],
    )
    if rejects:
        con.executemany(
            "insert into import_rejects values (?, ?, ?, ?, ?, ?)",
            [[cc.batch_id, cc.item_id, r[0], r[1], r[2], r[3]] for r in rejects],
        )
