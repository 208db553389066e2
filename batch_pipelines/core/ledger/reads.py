"""Reads of the ledger tables that drive the application: batches and items for the API and
the CLI, chunks for the dispatcher and the in-process runner, running items for the reaper,
and the few facts a control, a submission or a cleanup decides on.

The public reads return plain dicts (JSON-ready, as the CLI prints them); :func:`load_batch`
and :func:`load_items` return the typed rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from batch_pipelines.core.ledger.models import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    BatchFilter,
    BatchStatus,
    Item,
    ItemStatus,
    column_list,
    from_json,
)

_BATCH_COLUMNS = column_list(Batch)
_ITEM_COLUMNS = column_list(Item)


@contextlib.contextmanager
def registered_ids(
    con: duckdb.DuckDBPyConnection, name: str, column: str, ids: Sequence[str]
) -> Iterator[str]:
    """A list of ids as a view ``name`` with one column, for ``in (select ...)`` clauses."""
    con.register(name, pa.table({column: pa.array(list(ids), pa.string())}))
    try:
        yield name
    finally:
        con.unregister(name)


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple | None:
    """The first row of a query that returns at most one. The result is read to its end: a
    half-read result on the connection makes DuckDB refuse a later ``register``."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def _rows(rel: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def _in(values: Sequence[Any]) -> str:
    return f"({', '.join('?' for _ in values)})"


def _batches(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    rows = _rows(con.execute(sql, params))
    for r in rows:
        r["options"] = from_json(r["options"], {})
        r["settings"] = from_json(r["settings"], {})
    return rows


def get_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> dict[str, Any] | None:
    rows = _batches(con, f"select {_BATCH_COLUMNS} from batches where batch_id = ?", [batch_id])
    return rows[0] if rows else None


def load_batch(con: duckdb.DuckDBPyConnection, batch_id: str) -> Batch | None:
    row = get_batch(con, batch_id)
    return Batch.from_dict(row) if row else None


def list_batches(
    con: duckdb.DuckDBPyConnection, where: BatchFilter | None = None
) -> list[dict[str, Any]]:
    where = where or BatchFilter()
    clauses, params = [], []
    for column in ("status", "operation"):
        values = getattr(where, column)
        if values:
            clauses.append(f"{column} in {_in(values)}")
            params += values
    if where.created_after:
        clauses.append("created_at >= ?")
        params.append(where.created_after)
    if where.created_before:
        clauses.append("created_at < ?")
        params.append(where.created_before)
    clause = f"where {' and '.join(clauses)}" if clauses else ""
    return _batches(
        con,
        f"select {_BATCH_COLUMNS} from batches {clause} order by created_at desc, batch_id desc "
        "limit ? offset ?",
        [*params, where.limit, where.offset],
    )


def get_items(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    *,
    status: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    params: list[Any] = [batch_id]
    clause = ""
    if status:
        status = list(status)
        clause = f"and status in {_in(status)}"
        params += status
    limit_clause = ""
    if limit is not None:
        limit_clause = "limit ? offset ?"
        params += [limit, offset]
    rows = _rows(
        con.execute(
            f"select {_ITEM_COLUMNS} from batch_items where batch_id = ? {clause} "
            f"order by seq {limit_clause}",
            params,
        )
    )
    for r in rows:
        r["payload"] = from_json(r["payload"])
        r["result"] = from_json(r["result"])
    return rows


def load_items(
    con: duckdb.DuckDBPyConnection, batch_id: str, *, status: Iterable[str] | None = None
) -> list[Item]:
    return [Item.from_dict(r) for r in get_items(con, batch_id, status=status)]


def batch_status(con: duckdb.DuckDBPyConnection, batch_id: str) -> BatchStatus | None:
    row = one(con, "select status from batches where batch_id = ?", [batch_id])
    return BatchStatus(row[0]) if row else None


def is_paused(con: duckdb.DuckDBPyConnection, batch_id: str) -> bool:
    row = one(con, "select paused from batches where batch_id = ?", [batch_id])
    return bool(row and row[0])


def paused_failed_total(con: duckdb.DuckDBPyConnection, batch_id: str) -> tuple[bool, int, int]:
    """(paused, failed items, total items) of a batch as its last refresh left it, in one
    read: what a flush tells the runner."""
    row = one(
        con,
        "select paused, failed_items, total_items from batches where batch_id = ?",
        [batch_id],
    )
    return (bool(row[0]), int(row[1] or 0), int(row[2] or 0)) if row else (False, 0, 0)


def failed_of_total(con: duckdb.DuckDBPyConnection, batch_id: str) -> tuple[int, int]:
    """(failed items, total items) of a batch as its last refresh counted them: what the
    runner checks the error budget against between flushes."""
    row = one(con, "select failed_items, total_items from batches where batch_id = ?", [batch_id])
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


def count_items(con: duckdb.DuckDBPyConnection, batch_id: str, status: str) -> int:
    return int(
        one(
            con,
            "select count(*) from batch_items where batch_id = ? and status = ?",
            [batch_id, status],
        )[0]
    )


def batch_for_idempotency_key(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    row = one(con, "select batch_id from batches where idempotency_key = ?", [key])
    return row[0] if row else None


def unfinished_batch_of_template(con: duckdb.DuckDBPyConnection, template: str) -> str | None:
    """The latest batch submitted from ``template`` that has not finished (any status but a
    terminal one), if there is one."""
    row = one(
        con,
        f"select batch_id from batches where template = ? and status not in "
        f"{_in(TERMINAL_BATCH_STATUSES)} order by created_at desc limit 1",
        [template, *TERMINAL_BATCH_STATUSES],
    )
    return row[0] if row else None


def latest_batch_per_template(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """Template name -> its latest batch (``batch_id``, ``status``, ``created_at``)."""
    rel = con.execute(
        "select template, batch_id, status, created_at from batches where template is not null "
        "qualify row_number() over (partition by template order by created_at desc) = 1"
    )
    return {r["template"]: r for r in _rows(rel)}


def batches_submitted_since(con: duckdb.DuckDBPyConnection, actor: str, since: datetime) -> int:
    """How many batches ``actor`` (who really submitted, whatever the entry point: the part
    of a ``batch_submitted`` event's ``<source>:<actor>`` after the first colon) submitted
    since ``since`` (UTC); a batch deleted since still counts."""
    return int(
        one(
            con,
            "select count(*) from batch_events where event = 'batch_submitted' and \"at\" > ? "
            "and substr(actor, strpos(actor, ':') + 1) = ?",
            [since, actor],
        )[0]
    )


def batches_finished_since(
    con: duckdb.DuckDBPyConnection, since: datetime, limit: int
) -> list[tuple[str, datetime]]:
    """``(batch_id, completed_at)`` of the batches in a final status that finished after
    ``since`` (UTC), oldest first."""
    terminal = [str(s) for s in TERMINAL_BATCH_STATUSES]
    return [
        (r[0], r[1])
        for r in con.execute(
            "select batch_id, completed_at from batches where completed_at > ? and status in "
            f"({', '.join('?' for _ in terminal)}) order by completed_at, batch_id limit ?",
            [since, *terminal, limit],
        ).fetchall()
    ]


def items_for_keys(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The ledger rows (with their batch's operation, options and settings) for partition keys,
    in submission order."""
    if not keys:
        return []
    with registered_ids(con, "_keys", "partition_key", keys):
        rows = _rows(
            con.execute(
                """
                select i.batch_id, i.item_id, i.seq, i.chunk_no, i.partition_key,
                       i.payload::varchar as payload, i.status, i.attempts, b.operation,
                       b.options::varchar as options, b.settings::varchar as settings,
                       b.status as batch_status, b.paused, b.correlation_id
                from batch_items i join _keys k using (partition_key)
                join batches b using (batch_id)
                order by i.batch_id, i.seq
                """
            )
        )
    for row in rows:
        for k in ("payload", "options", "settings"):
            row[k] = from_json(row[k], {})
    return rows


def chunk_plan(con: duckdb.DuckDBPyConnection, batch_id: str) -> list[dict[str, Any]]:
    """Per chunk of a batch: first and last partition key and how many items are unfinished."""
    return _rows(
        con.execute(
            """
            select chunk_no, arg_min(partition_key, seq) as first_key,
                   arg_max(partition_key, seq) as last_key, count(*) as items,
                   count(*) filter (where status in (?, ?)) as unfinished,
                   count(*) filter (where status = ?) as pending
            from batch_items where batch_id = ? group by chunk_no order by chunk_no
            """,
            [ItemStatus.PENDING, ItemStatus.RUNNING, ItemStatus.PENDING, batch_id],
        )
    )


def launchable_chunks(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Chunks with pending items of batches that may run now (queued or running, not paused;
    only its canary chunks while a batch's canary runs).

    ``first_key``..``last_key`` spans the chunk's pending items: a chunk resumed after a
    pause, a crash or a time slice is run over what is left of it, not over what is done."""
    return _rows(
        con.execute(
            """
            select i.batch_id, b.operation, b.priority, b.queued_at, i.chunk_no,
                   arg_min(i.partition_key, i.seq) filter (where i.status = 'pending')
                       as first_key,
                   arg_max(i.partition_key, i.seq) filter (where i.status = 'pending')
                       as last_key,
                   count(*) as items,
                   count(*) filter (where i.status = 'pending') as pending,
                   try_cast(json_extract(b.settings, '$.max_concurrency') as integer)
                       as max_concurrency,
                   try_cast(json_extract(b.settings, '$.item_timeout_s') as double)
                       as item_timeout_s,
                   i.chunk_no < coalesce(b.canary_chunks, 0) as canary,
                   coalesce(json_extract(b.settings, '$.quality_gate')::varchar, 'null')
                       <> 'null' as gated
            from batch_items i join batches b using (batch_id)
            where b.status in ('queued', 'running') and not b.paused
              -- while its canary runs, only the canary chunks of a batch may launch
              and (b.canary_status is distinct from 'running'
                   or i.chunk_no < coalesce(b.canary_chunks, 0))
            group by all
            having count(*) filter (where i.status = 'pending') > 0
            order by i.batch_id, i.chunk_no
            """
        )
    )


def unfinished_items(con: duckdb.DuckDBPyConnection) -> int:
    """Items not yet finished (pending or running) across all batches that are not."""
    terminal = list(TERMINAL_BATCH_STATUSES)
    return int(
        one(
            con,
            "select count(*) from batch_items i join batches b using (batch_id) "
            f"where i.status in ('pending', 'running') and b.status not in {_in(terminal)}",
            terminal,
        )[0]
    )


def running_groups(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, str]]:
    """(batch_id, chunk_no, run_id) of items marked running, for the reaper."""
    return [
        (r[0], int(r[1]), r[2])
        for r in con.execute(
            "select batch_id, chunk_no, coalesce(run_id, '') from batch_items "
            "where status = 'running' group by all order by all"
        ).fetchall()
    ]


# --- for cleanup ---------------------------------------------------------------------------


def finished_before(
    con: duckdb.DuckDBPyConnection, cutoff: datetime, *, exclude: str | None = None
) -> list[tuple[str, str, int]]:
    """(batch_id, operation, total_items) of the batches that finished before ``cutoff``,
    oldest first."""
    terminal = list(TERMINAL_BATCH_STATUSES)
    return con.execute(
        f"select batch_id, operation, total_items from batches where status in {_in(terminal)} "
        "and coalesce(completed_at, updated_at, created_at) < ? and batch_id is distinct from ? "
        "order by created_at, batch_id",
        [*terminal, cutoff, exclude],
    ).fetchall()


def finished_among(con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]) -> list[str]:
    """Those of ``batch_ids`` that are finished now."""
    if not batch_ids:
        return []
    terminal = list(TERMINAL_BATCH_STATUSES)
    with registered_ids(con, "_ledger_ids", "batch_id", batch_ids):
        return [
            r[0]
            for r in con.execute(
                "select batch_id from batches where batch_id in (select batch_id from "
                f"_ledger_ids) and status in {_in(terminal)}",
                terminal,
            ).fetchall()
        ]


def row_counts(
    con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]
) -> dict[tuple[str, str], int]:
    """{(table, batch_id): rows} in the ledger tables other than ``batches``."""
    counts: dict[tuple[str, str], int] = {}
    with registered_ids(con, "_ledger_ids", "batch_id", batch_ids):
        for table in ("item_attempts", "batch_events", "batch_items"):
            for bid, n in con.execute(
                f"select batch_id, count(*) from {table} "
                "where batch_id in (select batch_id from _ledger_ids) group by 1"
            ).fetchall():
                counts[(table, bid)] = n
    return counts


def partition_keys(
    con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(batch_id, operation, partition_key) of every item of those batches."""
    with registered_ids(con, "_ledger_ids", "batch_id", batch_ids):
        return con.execute(
            "select i.batch_id, b.operation, i.partition_key from batch_items i "
            "join batches b using (batch_id) "
            "where i.batch_id in (select batch_id from _ledger_ids) order by i.batch_id, i.seq"
        ).fetchall()


def known_batch_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("select batch_id from batches").fetchall()}


def statuses_of(con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str]) -> dict[str, str]:
    """{batch_id: status} of those of ``batch_ids`` the ledger knows."""
    if not batch_ids:
        return {}
    return dict(
        con.execute(
            f"select batch_id, status from batches where batch_id in {_in(batch_ids)}",
            list(batch_ids),
        ).fetchall()
    )


def count_active(
    con: duckdb.DuckDBPyConnection, operations: Sequence[str], *, exclude: str | None = None
) -> int:
    """How many batches of those operations are queued or running."""
    active = [BatchStatus.RUNNING, BatchStatus.QUEUED]
    return int(
        one(
            con,
            f"select count(*) from batches where status in {_in(active)} and "
            f"operation in {_in(operations)} and batch_id is distinct from ?",
            [*active, *operations, exclude],
        )[0]
    )
