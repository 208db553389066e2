"""import: the SQL that reads a file and the load of rows into the target table.

Two ways in. The direct load (CSV, TSV, JSON, NDJSON, Parquet into an append or replace
target) reads the file straight into the table in the item's commit transaction: one pass
over the file, lineage columns added in the same SELECT, CSV values parsed with the existing
table's types so those that do not fit become rejects (``read_csv``'s ``store_rejects``).
The staged load (upsert, ``load: staged``, an NDJSON file with invalid lines) inserts the
rows the handler streamed into a staging Parquet file outside the writer lock.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb

from batch_pipelines.core.contract import CommitContext
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.sql import quote_ident, quote_literal
from batch_pipelines.operations.import_.models import ImportOptions
from batch_pipelines.operations.relations import table_exists

MAX_STORED_REJECTS = 1000
LINEAGE_COLUMNS = ("_batch_id", "_item_id")
# The sheet an xlsx row came from: lineage, not data, so other files' types never name it.
SHEET_COLUMN = "_sheet"


def csv_source(
    path: Path,
    fmt: str,
    options: ImportOptions,
    types: dict[str, str] | None = None,
    rejects: tuple[str, str] | None = None,
) -> str:
    """``read_csv(...)`` of the file; rejected rows go to DuckDB's ``reject_errors`` table, or
    to the (errors, scans) temporary tables ``rejects`` names."""
    args = [quote_literal(str(path)), "store_rejects = true", "auto_detect = true"]
    if rejects:
        args += [f"rejects_table = {quote_literal(rejects[0])}"]
        args += [f"rejects_scan = {quote_literal(rejects[1])}"]
    if types:
        pairs = ", ".join(f"{quote_literal(k)}: {quote_literal(v)}" for k, v in types.items())
        args.append(f"types = {{{pairs}}}")
    delimiter = options.delimiter or ("\t" if fmt == "tsv" else None)
    if delimiter:
        args.append(f"delim = {quote_literal(delimiter)}")
    if options.header is not None:
        args.append(f"header = {str(options.header).lower()}")
    return f"read_csv({', '.join(args)})"


def file_source(
    path: Path,
    fmt: str,
    options: ImportOptions,
    types: dict[str, str] | None = None,
    rejects: tuple[str, str] | None = None,
) -> str:
    """The table function that reads ``path`` as ``fmt``."""
    if fmt in ("csv", "tsv"):
        return csv_source(path, fmt, options, types, rejects)
    src = quote_literal(str(path))
    if fmt == "parquet":
        return f"read_parquet({src})"
    if fmt == "json":
        return f"read_json({src}, format = 'array')"
    if fmt == "ndjson":
        return f"read_json({src}, format = 'newline_delimited')"
    raise ValidationItemError(f"format: unsupported format {fmt!r}")


def table_types(con: duckdb.DuckDBPyConnection, target: str) -> dict[str, str]:
    """The column types of ``target`` (without lineage columns); {} if it does not exist."""
    if not table_exists(con, target):
        return {}
    return {
        name: typ
        for name, typ, *_ in con.execute(f"describe {quote_ident(target)}").fetchall()
        if name not in LINEAGE_COLUMNS and name != SHEET_COLUMN
    }


def load_select(source: str, options: ImportOptions, batch_id: str, item_id: str) -> str:
    """The SELECT a load inserts: every column of ``source``, plus the lineage columns."""
    lineage = (
        f", {quote_literal(batch_id)} as _batch_id, {quote_literal(item_id)} as _item_id"
        if options.lineage_columns
        else ""
    )
    return f"select *{lineage} from {source}"


def load_rows(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    target: str,
    source: str,
    options: ImportOptions,
    add_columns: tuple[str, ...] = (),
) -> int:
    """Insert ``select * from <source>`` (plus the lineage columns) into ``target`` as the
    mode says, after deleting what an earlier run of this item wrote; the rows inserted.
    ``add_columns``: lineage columns the source carries itself, added to an existing table
    that lacks them."""
    select = load_select(source, options, cc.batch_id, cc.item_id)
    table = quote_ident(target)
    # Rollback: rows appended with lineage columns are deleted by them; a table replaced or
    # upserted (rows of other batches change) is copied before the batch first writes it.
    cc.snapshot_before_write(
        con, target, copy=options.mode != "append" or not options.lineage_columns
    )
    if "." in target:
        con.execute(f"create schema if not exists {quote_ident(target.rsplit('.', 1)[0])}")
    if options.mode == "replace" or not table_exists(con, target):
        return con.execute(f"create or replace table {table} as {select}").fetchone()[0]
    existing = [r[0] for r in con.execute(f"describe {table}").fetchall()]
    if options.lineage_columns:
        for col in (*LINEAGE_COLUMNS, *add_columns):
            if col not in existing:
                con.execute(f"alter table {table} add column {col} varchar")
        con.execute(
            f"delete from {table} where _batch_id = ? and _item_id = ?", [cc.batch_id, cc.item_id]
        )
    if options.mode == "upsert":
        keys = ", ".join(quote_ident(k) for k in options.key_columns)
        con.execute(f"delete from {table} where ({keys}) in (select ({keys}) from ({select}))")
    return con.execute(f"insert into {table} by name {select}").fetchone()[0]


def load_direct(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    target: str,
    path: Path,
    fmt: str,
    options: ImportOptions,
) -> tuple[int, int, list[tuple]]:
    """Read the file straight into ``target`` (under the writer lock, in the caller's
    transaction); returns (rows loaded, rows rejected, a sample of rejects: line, column,
    error, raw line)."""
    # Appending to an existing table: parse with its column types, so values that do not fit
    # become rejects with a reason instead of failing the whole file.
    types = table_types(con, target) if options.mode != "replace" else {}
    tag = uuid.uuid4().hex[:12]
    rejects = (f"import_reject_errors_{tag}", f"import_reject_scans_{tag}")
    source = file_source(path, fmt, options, types, rejects)
    try:
        rows = load_rows(con, cc, target, source, options)
    except (duckdb.BinderException, duckdb.ConversionException) as exc:
        raise ValidationItemError(
            f"file does not fit table {target}: {str(exc).splitlines()[0]}"
        ) from exc
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        raise ValidationItemError(
            f"cannot parse {path.name} as {fmt}: {str(exc).splitlines()[0]}"
        ) from exc
    if fmt not in ("csv", "tsv"):
        return rows, 0, []
    errors = quote_ident(rejects[0])
    rejected = con.execute(f"select count(distinct line) from {errors}").fetchone()[0]
    sample = con.execute(
        "select line, column_name, error_type || ': ' || error_message, csv_line "
        f"from {errors} order by line limit {MAX_STORED_REJECTS}"
    ).fetchall()
    for name in rejects:
        con.execute(f"drop table if exists temp.{quote_ident(name)}")
    return rows, rejected, sample
