"""export: write a warehouse table or a SELECT query to a Parquet, CSV, JSON or NDJSON file.

DuckDB ``COPY`` streams the rows from a read-only warehouse connection into a temporary file
beside the destination, outside the writer lock. The commit records rows, bytes and sha256
in ``exports`` and then renames the temporary file onto ``data/exports/<batch_id>/<name>``
(``os.replace``), so the file and its row appear together and a reader never sees half a
file. A query must be one read-only SELECT (checked on DuckDB's parse tree).
"""

from __future__ import annotations

import contextlib
import os
import string
import time
import uuid
from typing import Literal

import duckdb
from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.keys import slugify
from batch_pipelines.core.sql import quote_ident, quote_literal, validate_table_name
from batch_pipelines.core.sqlcheck import ensure_read_only_select
from batch_pipelines.operations.import_.handler import sha256_file
from batch_pipelines.operations.relations import describe_table

Format = Literal["parquet", "csv", "json", "ndjson"]
Compression = Literal["snappy", "zstd", "gzip", "lz4", "brotli", "uncompressed", "none"]
PARQUET_COMPRESSIONS = {"snappy", "zstd", "gzip", "lz4", "brotli", "uncompressed"}
TEXT_COMPRESSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "json": ".json", "ndjson": ".ndjson"}
TEMPLATE_FIELDS = ("item_id", "batch_id", "table", "format")


def _check_template(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    unknown = sorted({n for n in names if n not in TEMPLATE_FIELDS})
    if unknown:
        raise ValueError(
            f"{field}: unknown placeholder(s) {unknown}; use {', '.join(TEMPLATE_FIELDS)}"
        )
    if "/" in value or "\\" in value or value.strip(". ") == "":
        raise ValueError(f"{field}: must be a file name, not a path")
    return value


def _check_compression(fmt: str, compression: str | None, field: str = "compression") -> None:
    if compression is None:
        return
    allowed = PARQUET_COMPRESSIONS if fmt == "parquet" else set(TEXT_COMPRESSIONS)
    if compression not in allowed:
        raise ValueError(
            f"{field}: {compression!r} does not apply to {fmt}; use one of {sorted(allowed)}"
        )


class ExportOptions(BaseModel, extra="forbid"):
    """Options of an export batch."""

    format: Format = Field("parquet", description="parquet, csv, json (an array) or ndjson")
    filename: str | None = Field(
        None,
        description="File name template: {item_id}, {batch_id}, {table}, {format}; the "
        "extension is added when missing (default: the item id)",
    )
    compression: Compression | None = Field(
        None,
        description="parquet: snappy (default), zstd, gzip, lz4, brotli, uncompressed; "
        "csv/json/ndjson: none (default), gzip, zstd",
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV delimiter")
    header: bool = Field(True, description="CSV header line")

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str | None) -> str | None:
        return _check_template(value, "filename")

    @model_validator(mode="after")
    def _compression_fits(self) -> ExportOptions:
        _check_compression(self.format, self.compression)
        return self


class ExportItem(BaseModel, extra="forbid"):
    """One table or SELECT query to export (exactly one of the two)."""

    id: str | None = None
    table: str | None = Field(None, description="A warehouse table or view")
    query: str | None = Field(None, description="One read-only SELECT on the warehouse")
    format: Format | None = Field(None, description="Overrides options.format")
    filename: str | None = Field(None, description="Overrides options.filename")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return None if value is None else validate_table_name(value, "table")

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str | None) -> str | None:
        return _check_template(value, "filename")

    @model_validator(mode="after")
    def _exactly_one(self) -> ExportItem:
        if (self.table is None) == (self.query is None or not self.query.strip()):
            raise ValueError("give exactly one of table or query")
        return self


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
        _check_compression(fmt, compression, "options.compression")
    except ValueError as exc:
        raise ValidationItemError(str(exc)) from None
    if item.query is not None:
        try:
            select = ensure_read_only_select(item.query)
        except ValueError as exc:
            raise ValidationItemError(f"query: {exc}") from None
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
    copy = f"copy (\n{select}) to {quote_literal(str(tmp))} ({_copy_options(fmt, compression, options)})"
    started = time.monotonic()
    try:
        with ctx.read_warehouse() as con:
            if item.table is not None:
                columns = len(describe_table(con, item.table, "table"))
            try:
                if item.query is not None:
                    columns = len(con.execute(f"select * from (\n{select}) limit 0").description)
                rows = con.execute(copy).fetchone()[0]
            except duckdb.InterruptException:
                ctx.check()
                raise
            except (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException) as exc:
                raise ValidationItemError(f"{source_kind}: {str(exc).splitlines()[0]}") from exc
        ctx.check()
        size = tmp.stat().st_size
        sha256 = sha256_file(tmp, ctx)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        clash = con.execute(
            "select item_id from exports where batch_id = ? and path = ? and item_id <> ?",
            [cc.batch_id, str(final), cc.item_id],
        ).fetchone()
        if clash:
            raise ValidationItemError(
                f"file name {name!r} is already used by item {clash[0]!r} of this batch; "
                "give each item its own filename (e.g. with {item_id})"
            )
        con.execute(
            "delete from exports where batch_id = ? and item_id = ?", [cc.batch_id, cc.item_id]
        )
        con.execute(
            "insert into exports values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
            [
                cc.batch_id,
                cc.item_id,
                source_kind,
                source,
                fmt,
                compression,
                str(final),
                rows,
                columns,
                size,
                sha256,
            ],
        )
        # Last, so that a failed insert leaves no file behind and the rename is the commit.
        os.replace(tmp, final)

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)

    return ItemResult(metrics=metrics, commit=commit, cleanup=cleanup)


SPEC = OperationSpec(
    name="export",
    description=(
        "Export warehouse tables or read-only SELECT queries to Parquet, CSV, JSON or NDJSON "
        "files under data/exports/<batch_id>/, one partition per table or query, written "
        "atomically. Rows, bytes and sha256 per file: exports."
    ),
    options_model=ExportOptions,
    item_model=ExportItem,
    handler=handle_export,
    detail_tables=("exports",),
)
