"""transform: build a target table from a source table, with SQL or a registered transform.

An item names a ``source`` table, a ``target`` table and either ``sql`` (one read-only SELECT
that reads the source through the name ``source``) or ``transform`` (a transform registered
in :mod:`batch_pipelines.operations.transform.functions`, with ``transform_options``). The result is built
outside the writer lock into staging Parquet files: SQL runs in DuckDB on a read-only
warehouse connection; a chunk transform streams the source in Arrow record batches, so the
table never lands in pandas whole. The commit then swaps the result in, in the item's
transaction: ``replace`` builds ``<target>__tmp_<suffix>``, drops the old target and renames
the new table onto it, so readers see the old table or the new one, never half of one;
``append`` adds the rows (tagged ``_batch_id``/``_item_id``, so a re-run replaces its own rows).

pandas is imported only where a chunk transform needs it, not at the top: the operation
registry loads this module, and the CLI's fast verbs must not pay for pandas.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.keys import slugify
from batch_pipelines.core.ledger import utcnow
from batch_pipelines.core.sql import quote_ident, quote_literal
from batch_pipelines.core.sqlcheck import ensure_read_only_select
from batch_pipelines.core.targets import TEMP_TABLE_MARK
from batch_pipelines.operations.relations import (
    describe_table,
    read_only_select,
    relation_kind,
)
from batch_pipelines.operations.transform import tables
from batch_pipelines.operations.transform.functions import RegisteredTransform, get_transform
from batch_pipelines.operations.transform.models import TransformItem, TransformOptions

LINEAGE = ("_batch_id", "_item_id")


def _registered(item: TransformItem) -> tuple[RegisteredTransform, BaseModel]:
    try:
        registered = get_transform(item.transform or "")
    except KeyError as exc:
        raise ValidationItemError(f"transform: {exc.args[0]}") from None
    try:
        options = registered.options_model.model_validate(item.transform_options)
    except ValidationError as exc:
        problems = "; ".join(
            f"transform_options.{'.'.join(str(p) for p in e['loc'])}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
        raise ValidationItemError(problems) from None
    return registered, options


def _with_source(source: str, select: str) -> str:
    """The item's SELECT with the source table bound to the name ``source``."""
    return f"with source as (select * from {quote_ident(source)})\nselect * from (\n{select}) as result"


def _arrow(result: Any, chunk_no: int) -> pa.Table:  # noqa: ANN401 - what a transform returns
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        table = pa.Table.from_pandas(result, preserve_index=False)
    elif isinstance(result, pa.RecordBatch):
        table = pa.Table.from_batches([result])
    elif isinstance(result, pa.Table):
        table = result
    else:
        raise ValidationItemError(
            f"transform returned {type(result).__name__} for chunk {chunk_no}, "
            "not a DataFrame, RecordBatch or Table"
        )
    names = table.column_names
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValidationItemError(f"transform produced duplicate column names {duplicated}")
    if not names:
        raise ValidationItemError("transform produced no columns")
    return table.replace_schema_metadata(None)


def _run_chunks(
    ctx: ItemContext,
    registered: RegisteredTransform,
    transform_options: BaseModel,
    staged_input: Path,
    stage: Path,
    chunk_rows: int,
) -> int:
    """Stream the staged source through the chunk function into part files; rows written."""
    rows_out = 0
    columns: list[str] | None = None
    with ctx.local_duckdb() as con:
        reader = con.sql(
            f"select * from read_parquet({quote_literal(str(staged_input))})"
        ).to_arrow_reader(chunk_rows)
        chunk_no = -1
        for chunk_no, batch in enumerate(reader):
            ctx.check()
            table = _apply(registered, transform_options, batch, chunk_no)
            if columns is None:
                columns = table.column_names
            elif table.column_names != columns:
                raise ValidationItemError(
                    f"transform {registered.name} returned columns {table.column_names} for "
                    f"chunk {chunk_no}, but {columns} for the first chunk"
                )
            pq.write_table(table, stage / f"part-{chunk_no:06d}.parquet")
            rows_out += table.num_rows
        if chunk_no < 0:
            # An empty source still gives an (empty) target with the transform's columns.
            empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
            table = _apply(registered, transform_options, empty, 0)
            pq.write_table(table, stage / "part-000000.parquet")
    return rows_out


def _apply(
    registered: RegisteredTransform,
    transform_options: BaseModel,
    batch: pa.RecordBatch,
    chunk_no: int,
) -> pa.Table:
    assert registered.chunk_fn is not None
    chunk: Any = batch
    if registered.batch_format == "pandas":
        import pandas as pd

        chunk = batch.to_pandas(types_mapper=pd.ArrowDtype)
    try:
        result = registered.chunk_fn(chunk, transform_options)
    except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise ValidationItemError(f"transform {registered.name}: {exc}") from exc
    return _arrow(result, chunk_no)


def handle_transform(ctx: ItemContext) -> ItemResult:
    options: TransformOptions = ctx.options
    item: TransformItem = ctx.item
    mode = item.mode or options.mode
    started = time.monotonic()
    registered: RegisteredTransform | None = None
    transform_options: BaseModel | None = None
    select: str | None = None
    if item.sql is not None:
        select = read_only_select(item.sql, "sql")
        kind, name = "sql", item.sql.strip()
    else:
        registered, transform_options = _registered(item)
        kind, name = "python", registered.name

    stage = ctx.staging_dir / f"transform-{slugify(ctx.item_id, 40)}-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        with ctx.read_warehouse() as con:
            source_columns = describe_table(con, item.source, "source")
            rows_in = con.execute(f"select count(*) from {quote_ident(item.source)}").fetchone()[0]
            if registered is not None and registered.sql_fn is not None:
                try:
                    built = registered.sql_fn(source_columns, transform_options)
                    select = ensure_read_only_select(built)
                except ValueError as exc:
                    raise ValidationItemError(f"transform {registered.name}: {exc}") from None
            if select is not None:
                query = _with_source(item.source, select)
                target = stage / "part-000000.parquet"
            else:
                query = f"select * from {quote_ident(item.source)}"
                target = stage / "input.parquet"
            try:
                copied = con.execute(
                    f"copy (\n{query}\n) to {quote_literal(str(target))} (format parquet)"
                ).fetchone()[0]
            except duckdb.InterruptException:
                ctx.check()
                raise
            except (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException) as exc:
                what = "sql" if kind == "sql" else f"transform {name}"
                raise ValidationItemError(f"{what}: {str(exc).splitlines()[0]}") from exc
        if select is not None:
            rows_out = int(copied)
        else:
            assert registered is not None and transform_options is not None
            rows_out = _run_chunks(
                ctx, registered, transform_options, target, stage, options.chunk_rows
            )
            target.unlink()
        parts = sorted(stage.glob("part-*.parquet"))
        out_schema = pq.read_schema(parts[0])
        out_columns = list(out_schema.names)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    duration_ms = (time.monotonic() - started) * 1000
    staged = f"read_parquet({quote_literal(str(stage / 'part-*.parquet'))}, union_by_name = true)"
    metrics = {
        "source": item.source,
        "target": item.target,
        "kind": kind,
        "transform": name[:400],
        "mode": mode,
        "rows_in": int(rows_in),
        "rows_out": rows_out,
        "columns": len(out_columns),
        "duration_ms": round(duration_ms, 3),
    }

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        # Rollback puts a replaced target back from this copy; appended rows go by lineage.
        cc.snapshot_before_write(con, item.target, copy=mode == "replace")
        if mode == "replace":
            _swap_in(con, item.target, staged)
        else:
            _append(con, cc, item.target, staged, out_columns)
        cc.replace_row(
            con,
            tables.TRANSFORMS,
            source_table=item.source,
            target_table=item.target,
            kind=kind,
            transform=name,
            transform_options=json.dumps(transform_options.model_dump(mode="json"))
            if transform_options
            else None,
            mode=mode,
            rows_in=rows_in,
            rows_out=rows_out,
            columns=len(out_columns),
            duration_ms=duration_ms,
            transformed_at=utcnow(),
        )

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage, ignore_errors=True)

    return ItemResult(metrics=metrics, commit=commit, cleanup=cleanup)


def _schema_of(target: str) -> str | None:
    return target.rsplit(".", 1)[0] if "." in target else None


def _swap_in(con: duckdb.DuckDBPyConnection, target: str, staged: str) -> None:
    """Build the new table beside the target, then drop the old one and rename the new one
    onto it, all in the caller's transaction."""
    schema = _schema_of(target)
    base = target.rsplit(".", 1)[-1]
    tmp_name = f"{base}{TEMP_TABLE_MARK}{uuid.uuid4().hex[:8]}"
    tmp = f"{schema}.{tmp_name}" if schema else tmp_name
    if schema:
        con.execute(f"create schema if not exists {quote_ident(schema)}")
    con.execute(f"create table {quote_ident(tmp)} as select * from {staged}")
    kind = relation_kind(con, target)
    if kind == "view":
        raise ValidationItemError(f"target: {target!r} is a view, not a table")
    if kind == "table":
        con.execute(f"drop table {quote_ident(target)}")
    con.execute(f"alter table {quote_ident(tmp)} rename to {quote_ident(base)}")


def _append(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    target: str,
    staged: str,
    out_columns: list[str],
) -> None:
    data = [quote_ident(c) for c in out_columns if c not in LINEAGE]
    select = (
        f"select {', '.join(data)}, {quote_literal(cc.batch_id)} as _batch_id, "
        f"{quote_literal(cc.item_id)} as _item_id from {staged}"
    )
    table = quote_ident(target)
    schema = _schema_of(target)
    kind = relation_kind(con, target)
    if kind == "view":
        raise ValidationItemError(f"target: {target!r} is a view, not a table")
    if kind is None:
        if schema:
            con.execute(f"create schema if not exists {quote_ident(schema)}")
        con.execute(f"create table {table} as {select}")
        return
    existing = [r[0] for r in con.execute(f"describe {table}").fetchall()]
    for column in LINEAGE:
        if column not in existing:
            con.execute(f"alter table {table} add column {column} varchar")
    con.execute(
        f"delete from {table} where _batch_id = ? and _item_id = ?", [cc.batch_id, cc.item_id]
    )
    try:
        con.execute(f"insert into {table} by name {select}")
    except (duckdb.BinderException, duckdb.ConversionException) as exc:
        raise ValidationItemError(
            f"the result does not fit table {target}: {str(exc).splitlines()[0]}"
        ) from exc
