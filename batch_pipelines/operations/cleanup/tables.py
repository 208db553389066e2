"""The cleanup operation's detail table: ``cleanup_log``, the audit trail of what a cleanup
listed (dry run) or deleted. It is never cleaned itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from batch_pipelines.core import ledger
from batch_pipelines.core.contract import CommitContext
from batch_pipelines.operations.cleanup.models import Planned

CLEANUP_LOG = "cleanup_log"
DETAIL_TABLES = (CLEANUP_LOG,)


def forget_dry_run(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
    """Drop the item's earlier dry-run listing (what was really deleted stays logged)."""
    con.execute(
        "delete from cleanup_log where batch_id = ? and item_id = ? and dry_run",
        [cc.batch_id, cc.item_id],
    )


def log_objects(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    kind: str,
    objects: Sequence[Planned],
    dry_run: bool,
) -> None:
    now = ledger.utcnow()
    rows: list[list[Any]] = [
        [
            cc.batch_id,
            cc.item_id,
            kind,
            o.object_type,
            o.object,
            o.rows,
            o.bytes,
            dry_run,
            None if dry_run else now,
            now,
            o.note,
        ]
        for o in objects
    ]
    if rows:
        con.executemany(
            "insert into cleanup_log (batch_id, item_id, target_kind, object_type, object, "
            '"rows", bytes, dry_run, deleted_at, logged_at, note) '
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
