"""export: write a warehouse table or a SELECT query to a Parquet, CSV, JSON, NDJSON or xlsx
file.

DuckDB ``COPY`` streams the rows from a read-only warehouse connection into a temporary file
beside the destination, outside the writer lock (xlsx: into a staging Parquet file that
openpyxl then writes from once the warehouse is closed, see xlsx.py). The commit records
rows, bytes and sha256 in ``exports`` and then renames the temporary file onto ``data/exports/<batch_id>/<name>``
(``os.replace``), so the file and its row appear together and a reader never sees half a
file. A query must be one read-only SELECT (checked on DuckDB's parse tree).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import duckdb

from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.files import sha256_file
from batch_pipelines.core.keys import slugify
from batch_pipelines.core.ledger import utcnow
from batch_pipelines.core.sql import quote_ident, quote_literal
from batch_pipelines.operations.export import tables
from batch_pipelines.operations.export.models import (
    EXTENSIONS,
    TEXT_COMPRESSIONS,
    ExportItem,
    ExportOptions,
    check_compression,
)
from batch_pipelines.operations.export.xlsx import staging_select, write_xlsx
from batch_pipelines.operations.relations import describe_table, read_only_select


def _copy_options(fmt: str, compression: str, options: ExportOptions) -> str:
    if fmt == "parquet":
        return f"format parquet, compression {compression}"
    parts = [f"compression {'none' if compression == 'none' else compression}"]
    if fmt == "csv":
        parts = [
            "format csv",
            f"header {str(options.header).lower()}",
            f"delimiter {quote_literal(options.delimiter)}",
            *parts,
        ]
    elif fmt == "json":
        parts = ["format json", "array true", *parts]
    else:
        parts = ["format json", *parts]
    return ", ".join(parts)


def file_name(
    template: str | None, fmt: str, compression: str, batch_id: str, item_id: str, table: str
) -> str:
    """The export's file name: the template filled in and made safe, with its extension."""
    slug = slugify(item_id)
    if template is None:
        name = slug
    else:
        name = template.format(item_id=slug, batch_id=batch_id, table=slugify(table), format=fmt)
        name = slugify(name, max_length=120)
    suffix = EXTENSIONS[fmt] + (TEXT_COMPRESSIONS.get(compression, "") if fmt != "parquet" else "")
    if not name.lower().endswith(suffix):
        name += suffix
    return name


def handle_export(ctx: ItemContext) -> ItemResult:
    options: ExportOptions = ctx.options
    item: ExportItem = ctx.item
    fmt = item.format or options.format
    compression = options.compression or ("snappy" if fmt == "parquet" else "none")
    try:
        check_compression(fmt, compression, "options.compression")
    except ValueError as exc:
        raise ValidationItemError(str(exc)) from None
    if item.query is not None:
        select = read_only_select(item.query, "query")
        source_kind, source = "query", item.query.strip()
    else:
        select = f"select * from {quote_ident(item.table)}\n"
        source_kind, source = "table", item.table

    folder = ctx.paths.exports / ctx.batch_id
    folder.mkdir(parents=True, exist_ok=True)
    name = file_name(
        item.filename or options.filename,
        fmt,
        compression,
        ctx.batch_id,
        ctx.item_id,
        item.table or "query",
    )
    final = folder / name
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    # xlsx: the rows leave the warehouse through this file (see xlsx.py).
    staged = (
        ctx.staging_dir / f"{slugify(ctx.item_id)}-{uuid.uuid4().hex[:8]}.parquet"
        if fmt == "xlsx"
        else None
    )
    copy = f"copy (\n{select}) to {quote_literal(str(tmp))} ({_copy_options(fmt, compression, options)})"
    started = time.monotonic()
    try:
        with ctx.read_warehouse() as con:
            if item.table is not None:
                columns = len(describe_table(con, item.table, "table"))
            try:
                if item.query is not None:
                    columns = len(con.execute(f"select * from (\n{select}) limit 0").description)
                if fmt == "xlsx":
                    con.execute(
                        f"copy ({staging_select(con, select)}) to "
                        f"{quote_literal(str(staged))} (format parquet)"
                    )
                else:
                    rows = con.execute(copy).fetchone()[0]
            except duckdb.InterruptException:
                ctx.check()
                raise
            except (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException) as exc:
                raise ValidationItemError(f"{source_kind}: {str(exc).splitlines()[0]}") from exc
        ctx.check()
        if fmt == "xlsx":  # outside the read lock: openpyxl is slow
            rows, sheets, cut = write_xlsx(ctx, staged, tmp, item.table or slugify(ctx.item_id))
        size = tmp.stat().st_size
        sha256 = sha256_file(tmp, ctx)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    metrics = {
        "source_kind": source_kind,
        source_kind: source[:400],
        "format": fmt,
        "compression": compression,
        "path": str(final),
        "rows": int(rows),
        "columns": columns,
        "bytes": size,
        "sha256": sha256,
        "copy_ms": round((time.monotonic() - started) * 1000, 3),
    }
    if fmt == "xlsx":
        metrics.update(sheets=", ".join(sheets), truncated_cells=cut)

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        clash = tables.other_item_with_path(con, cc, str(final))
        if clash:
            raise ValidationItemError(
                f"file name {name!r} is already used by item {clash!r} of this batch; "
                "give each item its own filename (e.g. with {item_id})"
            )
        cc.replace_row(
            con,
            tables.EXPORTS,
            source_kind=source_kind,
            source=source,
            format=fmt,
            compression=compression,
            path=str(final),
            rows=rows,
            columns=columns,
            bytes=size,
            sha256=sha256,
            exported_at=utcnow(),
        )
        # Last, so that a failed insert leaves no file behind and the rename is the commit.
        os.replace(tmp, final)

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)

    return ItemResult(metrics=metrics, commit=commit, cleanup=cleanup)
