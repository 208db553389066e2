"""import: load a file (CSV, TSV, JSON, NDJSON, Parquet, xlsx) into a warehouse table.

Outside the writer lock the handler hashes the file and sniffs its columns; the commit then
reads the file straight into the target table, under the lock, in the item's transaction
(rows DuckDB cannot parse go to ``import_rejects`` with the reason). Upserts, ``load:
staged`` and NDJSON files with invalid lines stream through a staging Parquet file outside
the lock first (see load.py); so do xlsx workbooks, read in row batches (see xlsx.py). A
file whose sha256 was already imported into the same table by another item is ``skipped``,
unread. With ``lineage_columns`` (default) every row carries
``_batch_id`` and ``_item_id``, so re-running an item replaces exactly its own rows (a file
with columns of those names is refused).
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
from batch_pipelines.core.sql import quote_literal, validate_table_name
from batch_pipelines.core.targets import item_table_name
from batch_pipelines.operations.import_ import tables
from batch_pipelines.operations.import_.load import (
    LINEAGE_COLUMNS,
    MAX_STORED_REJECTS,
    SHEET_COLUMN,
    csv_source,
    file_source,
    load_direct,
    load_rows,
    table_types,
)
from batch_pipelines.operations.import_.models import ImportItem, ImportOptions
from batch_pipelines.operations.import_.xlsx import stage_xlsx

_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


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


def _split_ndjson(path: Path, ctx: ItemContext, valid: Path) -> list[tuple[int, str, str]]:
    """Copy the lines that are JSON objects to ``valid``; returns the others as (line number,
    reason, raw line). DuckDB's ``ignore_errors`` would read an invalid line as a row of
    NULLs, indistinguishable from a valid ``{}``: only the valid lines are read."""
    bad = []
    with (
        path.open("r", encoding="utf-8", errors="replace") as fh,
        valid.open("w", encoding="utf-8") as out,
    ):
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
                continue
            out.write(line if line.endswith("\n") else line + "\n")
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
                    f"copy (select * from {csv_source(path, fmt, options, types)}) "
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
                    valid = stage.with_suffix(".valid.ndjson")
                    try:
                        bad = _split_ndjson(path, ctx, valid)
                        if not bad:
                            raise
                        rejected = len(bad)
                        rejects = [(n, None, e, raw) for n, e, raw in bad[:MAX_STORED_REJECTS]]
                        if valid.stat().st_size == 0:
                            raise ValidationItemError(
                                f"all {rejected} rows were rejected; first: {bad[0][1]}"
                            ) from None
                        con.execute(
                            f"copy (select * from read_json({quote_literal(str(valid))}, "
                            f"format = 'newline_delimited')) to {target} (format parquet)"
                        )
                    finally:
                        valid.unlink(missing_ok=True)
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


def _refuse_own_lineage(
    path: Path, columns: list[str], options: ImportOptions, fmt: str = ""
) -> None:
    # Re-runs delete an item's rows by these columns: a file's own values there would make a
    # re-run delete rows of another item, or keep this item's old rows.
    lineage = (*LINEAGE_COLUMNS, SHEET_COLUMN) if fmt == "xlsx" else LINEAGE_COLUMNS
    own = [c for c in columns if c.lower() in lineage]
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


def _sniff_columns(ctx: ItemContext, path: Path, fmt: str, options: ImportOptions) -> list[str]:
    """The file's column names, from DuckDB's sniffer (a sample of the file, not a pass)."""
    with ctx.local_duckdb() as con:
        try:
            return [
                r[0]
                for r in con.execute(
                    f"describe select * from {file_source(path, fmt, options)}"
                ).fetchall()
            ]
        except duckdb.InterruptException:
            ctx.check()
            raise
        except duckdb.Error as exc:
            raise ValidationItemError(
                f"cannot parse {path.name} as {fmt}: {str(exc).splitlines()[0]}"
            ) from exc


def _ndjson_parses(ctx: ItemContext, path: Path) -> bool:
    """Whether every line of an NDJSON file is valid JSON: a parse without types or writes,
    so that a file with invalid lines takes the staged load, which reports them as rejects."""
    with ctx.local_duckdb() as con:
        try:
            con.execute(
                f"select count(*) from read_json({quote_literal(str(path))}, "
                "format = 'newline_delimited')"
            ).fetchone()
        except duckdb.InterruptException:
            ctx.check()
            raise
        except duckdb.Error:
            return False
    return True


def _check_rejects(rows: int, rejected: int, rejects: list[tuple], options: ImportOptions) -> None:
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
    direct = options.load == "auto" and options.mode != "upsert"
    types: dict[str, str] = {}
    rows = rejected = 0
    rejects: list[tuple] = []
    sheets: list[str] = []
    stage = ctx.staging_dir / f"{slugify(ctx.item_id)}-{uuid.uuid4().hex[:8]}.parquet"
    try:
        # The sha256 skips identical files later, so it must be the one of the rows loaded:
        # a file written to while it is hashed or parsed is read again on a retry (and the
        # direct load checks it again after its read, in the commit).
        with unchanged_while_read(path, before):
            sha256 = sha256_file(path, ctx)
            fmt = detect_format(path, item.format or options.format)
            if item.sheet is not None and fmt != "xlsx":
                raise ValidationItemError(f"sheet: {path.name} is {fmt}, not an xlsx workbook")
            if fmt in ("csv", "tsv", "json", "ndjson"):
                with path.open("rb") as fh:
                    if looks_binary(fh.read(65536)):
                        raise ValidationItemError(
                            f"{path.name} is not a {fmt} file: binary content"
                        )
            if direct and fmt == "ndjson":
                direct = _ndjson_parses(ctx, path)
            direct = direct and fmt != "xlsx"  # DuckDB cannot read xlsx: always staged
            if direct:
                columns = _sniff_columns(ctx, path, fmt, options)
            else:
                # Appending to an existing table: parse with its column types, so values
                # that do not fit become rejects with a reason instead of failing at commit.
                if options.mode != "replace":
                    with ctx.read_warehouse() as con:
                        types = table_types(con, target)
                if fmt == "xlsx":
                    rows, columns, rejected, rejects, sheets = stage_xlsx(
                        ctx,
                        path,
                        item.sheet or options.sheet,
                        options.header,
                        options.lineage_columns,
                        types,
                        stage,
                    )
                else:
                    rows, columns, rejected, rejects = _stage(ctx, path, fmt, options, stage, types)
            if fmt in ("csv", "tsv"):
                _check_delimiter(path, fmt, len(columns), options)
        _refuse_own_lineage(path, columns, options, fmt)
        if not direct:
            _check_rejects(rows, rejected, rejects, options)
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
        "load": "direct" if direct else "staged",
        "rows": rows,
        "rejected_rows": rejected,
        "columns": len(columns),
        "bytes": size,
        "sha256": sha256,
    }
    if sheets:
        metrics["sheets"] = ", ".join(sheets)

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> str | None:
        nonlocal rows, rejected, rejects
        same = tables.identical_import(con, cc, target, sha256) if options.skip_identical else None
        if same:
            metrics["skipped_because"] = (
                f"identical file already imported into {target} by batch {same[0]} item {same[1]}"
            )
        elif direct:
            # The read happens here, under the writer lock: the file must still be the one
            # hashed, or the sha256 recorded would not be the one of the rows loaded.
            with unchanged_while_read(path, before):
                rows, rejected, rejects = load_direct(con, cc, target, path, fmt, options)
            _check_rejects(rows, rejected, rejects, options)
            metrics.update(rows=rows, rejected_rows=rejected)
            # Known only now: the runner records the result's score after the commit.
            result.quality_score = rows / (rows + rejected) if rows + rejected else 1.0
        else:
            source = f"read_parquet({quote_literal(str(stage))})"
            try:
                load_rows(
                    con,
                    cc,
                    target,
                    source,
                    options,
                    add_columns=(SHEET_COLUMN,) if sheets and options.lineage_columns else (),
                )
            except duckdb.BinderException as exc:
                raise ValidationItemError(
                    f"file does not fit table {target}: {str(exc).splitlines()[0]}"
                ) from exc
        tables.replace_file_row(
            con,
            cc,
            path=str(path),
            fmt=fmt,
            target=target,
            mode=options.mode,
            status="skipped" if same else "imported",
            rows=0 if same else rows,
            rejected=rejected,
            columns=columns,
            size=size,
            sha256=sha256,
        )
        tables.replace_rejects(con, cc, [] if same else rejects)
        return "skipped" if same else None

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            stage.unlink(missing_ok=True)

    result = ItemResult(
        metrics=metrics,
        quality_score=rows / (rows + rejected) if rows + rejected else 1.0,
        commit=commit,
        cleanup=cleanup,
        # A staged file is parsed with the types of the table it goes to: a table this item
        # creates must exist before the next item is parsed. A direct load parses in the
        # commit, with the table as it is then.
        flush_now=not direct and options.mode != "replace" and not types,
    )
    return result
