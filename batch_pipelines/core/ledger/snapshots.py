"""Rollback snapshots: a table as it was before a batch first wrote it.

An operation that replaces a table's rows (an ``upsert`` or ``replace`` import, a ``replace``
transform) calls :func:`take` in the transaction of the batch's first write to that table,
before writing; the copy lands in the ``_bp_snapshots`` schema and a row in
``batch_snapshots`` says where. A table the batch created is recorded without a copy (its
rollback drops it). A rollback restores each table once (``restored_at`` is its progress
mark, so a rollback stopped halfway resumes), and the copies are dropped when the batch is
rolled back or deleted.

A snapshot is the table as a whole: rolling a batch back also undoes what other batches
wrote to the same table after it.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from batch_pipelines.core.ledger.models import utcnow
from batch_pipelines.core.ledger.reads import one
from batch_pipelines.core.sql import quote_ident

SCHEMA = "_bp_snapshots"


def _parts(table: str) -> tuple[str, str]:
    parts = table.split(".")
    return (parts[-2] if len(parts) > 1 else "main"), parts[-1]


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = _parts(table)
    return (
        one(
            con,
            "select 1 from duckdb_tables() where lower(schema_name) = lower(?) and "
            "lower(table_name) = lower(?) and database_name = current_database()",
            [schema, name],
        )
        is not None
    )


def _snapshot_name(batch_id: str, table: str) -> str:
    flat = re.sub(r"[^0-9A-Za-z_]", "_", f"{batch_id}__{table}".lower())
    return f"{SCHEMA}.{flat}"


def take(con: duckdb.DuckDBPyConnection, batch_id: str, table: str, *, copy: bool = True) -> bool:
    """Record ``table`` as it is now, the first time ``batch_id`` writes it (in the caller's
    transaction, before the write). A missing table is recorded as created by the batch; an
    existing one is copied only when ``copy`` (a write that tags its rows with the lineage
    columns is undone by them, no copy needed). Returns whether anything was recorded."""
    if one(
        con,
        "select 1 from batch_snapshots where batch_id = ? and table_name = ?",
        [batch_id, table],
    ):
        return False
    exists = table_exists(con, table)
    if exists and not copy:
        return False
    snapshot, rows = None, None
    if exists:
        snapshot = _snapshot_name(batch_id, table)
        con.execute(f"create schema if not exists {quote_ident(SCHEMA)}")
        con.execute(
            f"create or replace table {quote_ident(snapshot)} as select * from {quote_ident(table)}"
        )
        rows = one(con, f"select count(*) from {quote_ident(snapshot)}")[0]
    con.execute(
        'insert into batch_snapshots (batch_id, table_name, snapshot_table, "rows", taken_at) '
        "values (?, ?, ?, ?, ?)",
        [batch_id, table, snapshot, rows, utcnow()],
    )
    return True


def unrestored(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """The batch's snapshots a rollback has not restored yet."""
    return [
        {"table_name": r[0], "snapshot_table": r[1], "rows": r[2]}
        for r in con.execute(
            'select table_name, snapshot_table, "rows" from batch_snapshots '
            "where batch_id = ? and restored_at is null order by taken_at, table_name",
            [batch_id],
        ).fetchall()
    ]


def restored_tables(con: duckdb.DuckDBPyConnection, batch_id: str) -> set[str]:
    """Tables of the batch a snapshot governs (restored or not): their lineage rows need no
    separate delete."""
    return {
        r[0]
        for r in con.execute(
            "select table_name from batch_snapshots where batch_id = ?", [batch_id]
        ).fetchall()
    }


def restore(con: duckdb.DuckDBPyConnection, batch_id: str, snapshot: dict[str, Any]) -> str:
    """Put one table back as the snapshot has it (drop it if the batch created it), and mark
    it restored; in the caller's transaction. Returns what was done."""
    table, copy = snapshot["table_name"], snapshot["snapshot_table"]
    if copy is None:
        con.execute(f"drop table if exists {quote_ident(table)}")
        done = "dropped"
    else:
        schema, _ = _parts(table)
        if "." in table:
            con.execute(f"create schema if not exists {quote_ident(schema)}")
        con.execute(
            f"create or replace table {quote_ident(table)} as select * from {quote_ident(copy)}"
        )
        done = "restored"
    con.execute(
        "update batch_snapshots set restored_at = ? where batch_id = ? and table_name = ?",
        [utcnow(), batch_id, table],
    )
    return done


def drop(con: duckdb.DuckDBPyConnection, batch_ids: list[str]) -> int:
    """Drop the snapshot copies of those batches and forget them; returns how many."""
    n = 0
    for batch_id in batch_ids:
        for (copy,) in con.execute(
            "select snapshot_table from batch_snapshots where batch_id = ? and "
            "snapshot_table is not null",
            [batch_id],
        ).fetchall():
            con.execute(f"drop table if exists {quote_ident(copy)}")
            n += 1
        con.execute("delete from batch_snapshots where batch_id = ?", [batch_id])
    return n
