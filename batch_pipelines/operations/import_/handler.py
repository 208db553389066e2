"""import: load a file (CSV, TSV, JSON, NDJSON, Parquet) into a warehouse table.

The file streams through DuckDB into a staging Parquet file outside the writer lock (rows
DuckDB cannot parse go to ``import_rejects`` with the reason); the commit then loads the
staged rows into the target table under the lock, in the item's transaction. A file whose
sha256 was already imported into the same table by another item is ``skipped``. With
``lineage_columns`` (default) every row carries ``_batch_id`` and ``_item_id``, so re-running
an item replaces exactly its own rows (a file with columns of those names is refused).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import duckdb

from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.files import (
    detect_format,
    file_state,
    looks_binary,
    sha256_file,
    unchanged_while_read,
)
from batch_pipelines.core.keys import slugify
from batch_pipelines.core.sql import quote_ident, quote_literal, validate_table_name
from batch_pipelines.core.targets import item_table_name
from batch_pipelines.operations.import_ import tables
from batch_pipelines.operations.import_.models import ImportItem, ImportOptions
from batch_pipelines.operations.relations import table_exists

MAX_STORED_REJECTS = 1000
LINEAGE_COLUMNS = ("_batch_id", "_item_id")
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _csv_source(
    path: Path, fmt: str, options: ImportOptions, types: dict[str, str] | None = None
) -> str:
    args = [quote_literal(str(path)), "store_rejects = true", "auto_detect = true"]
    if types:
        pairs = ", ".join(f"{quote_literal(k)}: {quote_literal(v)}" for k, v in types.items())
        args.append(f"types = {{{pairs}}}")
    delimiter = options.delimiter or ("\t" if fmt == "tsv" else None)
    if delimiter:
        args.append(f"delim = {quote_literal(delimiter)}")
    if options.header is not None:
        args.append(f"header = {str(options.header).lower()}")
    return f"read_csv({', '.join(args)})"


def _check_delimiter(path: Path, fmt: str, columns: int, options: ImportOptions) -> None:
    if columns != 1:
        return
    expected = options.delimiter or ("\t" if fmt == "tsv" else None)
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    found = [d for d in _DELIMITERS if d != expected and first.count(d) >= 1]
    if expected and found:
        raise ValidationItemError(
            f"delimiter mismatch: expected {_DELIMITERS.get(expected, repr(expected))}-separated "
            f"values but the header line is separated by {_DELIMITERS[found[0]]}"
        )


def _invalid_ndjson_lines(path: Path, ctx: ItemContext) -> list[tuple[int, str, str]]:
    bad = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if number % 10000 == 0:
                ctx.check()
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError("line is not a JSON object")
            except ValueError as exc:
                bad.append((number, str(exc), line.rstrip("\n")[:1000]))
    return bad


def _stage(
    ctx: ItemContext,
    path: Path,
    fmt: str,
    options: ImportOptions,
    stage: Path,
    types: dict[str, str] | None = None,
) -> tuple[int, list[str], int, list[tuple]]:
    """Stream the file into a Parquet file; returns rows, column names, rejected count and a
    sample of rejects (line, column, error, raw)."""
    rejects: list[tuple] = []
    rejected = 0
    target = quote_literal(str(stage))
    with ctx.local_duckdb() as con:
        try:
            if fmt in ("csv", "tsv"):
                con.execute(
                    f"copy (select * from {_csv_source(path, fmt, options, types)}) "
                    f"to {target} (format parquet)"
                )
                rejected = con.execute("select count(distinct line) from reject_errors").fetchone()[
                    0
                ]
                rejects = con.execute(
                    "select line, column_name, error_type || ': ' || error_message, csv_line "
                    f"from reject_errors order by line limit {MAX_STORED_REJECTS}"
                ).fetchall()
            elif fmt == "parquet":
                con.execute(
                    f"copy (select * from read_parquet({quote_literal(str(path))})) "
                    f"to {target} (format parquet)"
                )
            elif fmt == "json":
                con.execute(
                    f"copy (select * from read_json({quote_literal(str(path))}, "
                    f"format = 'array')) to {target} (format parquet)"
                )
            elif fmt == "ndjson":
                src = quote_literal(str(path))
                try:
                    con.execute(
                        f"copy (select * from read_json({src}, format = 'newline_delimited')) "
                        f"to {target} (format parquet)"
                    )
                except duckdb.Error:
                    bad = _invalid_ndjson_lines(path, ctx)
                    if not bad:
                        raise
                    rejected = len(bad)
                    rejects = [(n, None, err, raw) for n, err, raw in bad[:MAX_STORED_REJECTS]]
                    con.execute(
                        f"copy (select * from read_json({src}, format = 'newline_delimited', "
                        f"ignore_errors = true)) to {target} (format parquet)"
                    )
            else:
                raise ValidationItemError(f"format: unsupported format {fmt!r}")
        except duckdb.InterruptException:
            ctx.check()
            raise
        except duckdb.Error as exc:
            raise ValidationItemError(
                f"cannot parse {path.name} as {fmt}: {str(exc).splitlines()[0]}"
            ) from exc
        rows = con.execute(f"select count(*) from read_parquet({target})").fetchone()[0]
        columns = [
            r[0] for r in con.execute(f"describe select * from read_parquet({target})").fetchall()
        ]
    return rows, columns, rejected, rejects


def _refuse_own_lineage(path: Path, columns: list[str], options: ImportOptions) -> None:
    # Re-runs delete an item's rows by these columns: a file's own values there would make a
    # re-run delete rows of another item, or keep this item's old rows.
    own = [c for c in columns if c.lower() in LINEAGE_COLUMNS]
    if not own or not options.lineage_columns:
        return
    if len(own) == 1:
        what, them = f"column {own[0]}, a lineage column", "it"
    else:
        what, them = f"columns {', '.join(own)}, the lineage columns", "them"
    raise ValidationItemError(
        f"{path.name} has {what} import adds to every row; rename {them} in the file, or "
        f"import with lineage_columns: false to keep {them} as in the file"
    )


def _target_types(ctx: ItemContext, target: str) -> dict[str, str]:
    with ctx.read_warehouse() as con:
        if not table_exists(con, target):
            return {}
        return {
            name: typ
            for name, typ, *_ in con.execute(f"describe {quote_ident(target)}").fetchall()
            if name not in LINEAGE_COLUMNS
        }


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"describe {quote_ident(table)}").fetchall()]


def handle_import(ctx: ItemContext) -> ItemResult:
    options: ImportOptions = ctx.options
    item: ImportItem = ctx.item
    path = ctx.resolve_path(item.path, field_name="items.path")
    if not path.is_file():
        raise ValidationItemError(f"path: {item.path!r} is not a regular file")
    before = file_state(path)
    size = before.size
    if size == 0:
        raise ValidationItemError(f"{path.name} is empty (0 bytes)")
    target = item_table_name(options.target_table, ctx.item_id)
    validate_table_name(target, "target_table")
    # Appending to an existing table: parse with its column types, so values that do not fit
    # become rejects with a reason instead of failing the whole file at commit.
    types = _target_types(ctx, target) if options.mode != "replace" else {}
    stage = ctx.staging_dir / f"{slugify(ctx.item_id)}-{uuid.uuid4().hex[:8]}.parquet"
    try:
        # The sha256 skips identical files later, so it must be the one of the rows staged:
        # a file written to while it is hashed or parsed is read again on a retry.
        with unchanged_while_read(path, before):
            sha256 = sha256_file(path, ctx)
            fmt = detect_format(path, item.format or options.format)
            if fmt in ("csv", "tsv", "json", "ndjson"):
                with path.open("rb") as fh:
                    if looks_binary(fh.read(65536)):
                        raise ValidationItemError(
                            f"{path.name} is not a {fmt} file: binary content"
                        )
            rows, columns, rejected, rejects = _stage(ctx, path, fmt, options, stage, types)
            if fmt in ("csv", "tsv"):
                _check_delimiter(path, fmt, len(columns), options)
        _refuse_own_lineage(path, columns, options)
        if rows == 0 and rejected:
            first = rejects[0][2] if rejects else "unknown error"
            raise ValidationItemError(f"all {rejected} rows were rejected; first: {first}")
        total = rows + rejected
        reject_ratio = rejected / total if total else 0.0
        if options.max_reject_ratio is not None and reject_ratio > options.max_reject_ratio:
            raise ValidationItemError(
                f"{rejected} of {total} rows rejected ({reject_ratio:.0%}), more than "
                f"max_reject_ratio {options.max_reject_ratio:.0%}"
            )
        missing = [k for k in options.key_columns if k not in columns]
        if missing:
            raise ValidationItemError(f"key_columns {missing} are not columns of {path.name}")
    except BaseException:
        stage.unlink(missing_ok=True)
        raise
    metrics = {
        "path": str(path),
        "format": fmt,
        "target_table": target,
        "mode": options.mode,
        "rows": rows,
        "rejected_rows": rejected,
        "columns": len(columns),
        "bytes": size,
        "sha256": sha256,
    }

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> str | None:
        status = "imported"
        same = tables.identical_import(con, cc, target, sha256) if options.skip_identical else None
        if same:
            status = "skipped"
            metrics["skipped_because"] = (
                f"identical file already imported into {target} by batch {same[0]} item {same[1]}"
            )
        else:
            _load(con, cc, target, stage, options)
        tables.replace_file_row(
            con,
            cc,
            path=str(path),
            fmt=fmt,
            target=target,
            mode=options.mode,
            status=status,
            rows=rows if status == "imported" else 0,
            rejected=rejected,
            columns=columns,
            size=size,
            sha256=sha256,
        )
        tables.replace_rejects(con, cc, rejects if status == "imported" else [])
        return "skipped" if status == "skipped" else None

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            stage.unlink(missing_ok=True)

    quality = rows / (rows + rejected) if rows + rejected else 1.0
    # A table this item creates must exist before the next item is parsed with its types.
    return ItemResult(
        metrics=metrics,
        quality_score=quality,
        commit=commit,
        cleanup=cleanup,
        flush_now=options.mode != "replace" and not types,
    )


def _load(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    target: str,
    stage: Path,
    options: ImportOptions,
) -> None:
    lineage = (
        f", {quote_literal(cc.batch_id)} as _batch_id, {quote_literal(cc.item_id)} as _item_id"
        if options.lineage_columns
        else ""
    )
    source = f"select *{lineage} from read_parquet({quote_literal(str(stage))})"
    table = quote_ident(target)
    # Rollback: rows appended with lineage columns are deleted by them; a table replaced or
    # upserted (rows of other batches change) is copied before the batch first writes it.
    cc.snapshot_before_write(
        con, target, copy=options.mode != "append" or not options.lineage_columns
    )
    if "." in target:
        con.execute(f"create schema if not exists {quote_ident(target.rsplit('.', 1)[0])}")
    if options.mode == "replace" or not table_exists(con, target):
        con.execute(f"create or replace table {table} as {source}")
        return
    existing = _columns(con, target)
    if options.lineage_columns:
        for col in LINEAGE_COLUMNS:
            if col not in existing:
                con.execute(f"alter table {table} add column {col} varchar")
        con.execute(
            f"delete from {table} where _batch_id = ? and _item_id = ?", [cc.batch_id, cc.item_id]
        )
    if options.mode == "upsert":
        keys = ", ".join(quote_ident(k) for k in options.key_columns)
        con.execute(f"delete from {table} where ({keys}) in (select ({keys}) from ({source}))")
    try:
        con.execute(f"insert into {table} by name {source}")
    except duckdb.BinderException as exc:
        raise ValidationItemError(
            f"file does not fit table {target}: {str(exc).splitlines()[0]}"
        ) from exc
