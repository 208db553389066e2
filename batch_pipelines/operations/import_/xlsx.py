"""import: xlsx workbooks, streamed.

openpyxl reads a sheet in ``read_only`` mode (the sheet's XML is parsed as it is iterated,
never held whole); rows go out in batches of ``BATCH_ROWS`` as Arrow tables, each written to
a Parquet part file, and DuckDB then unions the parts by name into the item's staging
Parquet file, as the staged load of the other formats. Memory stays bounded by one batch
(plus the workbook's shared-strings table, which openpyxl keeps whole).

Every sheet (or the one ``sheet`` names) goes to the one target table: the first non-empty
row of a sheet is its header (``header: false``: columns ``column0``, ``column1``, ...),
empty rows are skipped, and with ``lineage_columns`` each row carries its sheet's name in
``_sheet``. Sheets with different columns are unioned by name (missing values are NULL).
A column's type is found from its values across the whole file (integers and decimals give
DOUBLE, any text makes the column text); appending to an existing table, values are
converted to its column types instead. A row is rejected (``import_rejects``: ``line`` is the
Excel row number, the error names the sheet and cell, e.g. ``Q2!D7``) when a cell holds an
Excel error (``#DIV/0!``, ``#N/A``, ...), when it has values beyond its header's columns,
or when a value does not fit the existing table's column type.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import ItemError, ValidationItemError
from batch_pipelines.core.files import check_xlsx
from batch_pipelines.core.sql import quote_ident, quote_literal
from batch_pipelines.operations.import_.load import MAX_STORED_REJECTS, SHEET_COLUMN

BATCH_ROWS = 10_000
_INT64 = (-(2**63), 2**63 - 1)


def open_workbook(path: Path) -> Any:  # noqa: ANN401 - openpyxl's Workbook
    import openpyxl  # here: ~0.3 s, which every CLI start would pay at module level

    check_xlsx(path)
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # a damaged workbook surfaces as any of zipfile/XML/KeyError...
        raise ValidationItemError(
            f"cannot read {path.name} as xlsx (a damaged workbook?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        ) from exc


def pick_sheets(workbook: Any, wanted: str | None, name: str) -> list[Any]:  # noqa: ANN401
    """The worksheets to read: every one, or the one ``wanted`` names (case-insensitive, as
    Excel compares sheet names)."""
    sheets = list(workbook.worksheets)
    if wanted is None:
        return sheets
    found = [s for s in sheets if s.title == wanted] or [
        s for s in sheets if s.title.casefold() == wanted.casefold()
    ]
    if not found:
        there = ", ".join(repr(s.title) for s in sheets) or "none"
        raise ValidationItemError(f"sheet: {name} has no sheet {wanted!r}; its sheets: {there}")
    return found[:1]


def _header_names(row: list[Any]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for i, value in enumerate(row):
        base = str(value).strip() if value is not None else ""
        base = base or f"column{i}"
        candidate, n = base, 0
        while candidate.casefold() in seen:  # DuckDB column names are case-insensitive
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate.casefold())
        names.append(candidate)
    return names


def _converter(duck_type: str) -> Any:  # noqa: ANN401 - a callable or None
    """A function that converts a cell value to the existing column's type, raising
    ValueError when it does not fit; None leaves the value for DuckDB to cast."""
    t = duck_type.upper()
    if t in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER"):
        return _to_int
    if t in ("DOUBLE", "FLOAT", "REAL") or t.startswith("DECIMAL"):
        return _to_float
    if t == "BOOLEAN":
        return _to_bool
    if t == "VARCHAR":
        return _to_text
    if t.startswith("TIMESTAMP") or t == "DATE":
        return _to_datetime
    return None


def _to_int(v: Any) -> int:  # noqa: ANN401
    if isinstance(v, bool | dt.date | dt.time | dt.timedelta):
        raise ValueError
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    return int(str(v).strip()) if isinstance(v, str) else int(v)


def _to_float(v: Any) -> float:  # noqa: ANN401
    if isinstance(v, bool | dt.date | dt.time | dt.timedelta):
        raise ValueError
    return float(v.strip()) if isinstance(v, str) else float(v)


def _to_bool(v: Any) -> bool:  # noqa: ANN401
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError


def _to_text(v: Any) -> str:  # noqa: ANN401
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    return str(v)


def _to_datetime(v: Any) -> dt.datetime:  # noqa: ANN401
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    if isinstance(v, str):
        return dt.datetime.fromisoformat(v.strip())
    raise ValueError


def _arrow_column(values: list[Any]) -> pa.Array:
    """The values of one column of a batch as an Arrow array of the narrowest type that holds
    them all; DuckDB widens the parts' types when it unions them."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {int} and all(_INT64[0] <= v <= _INT64[1] for v in values if v is not None):
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds <= {dt.datetime, dt.date}:
        return pa.array([v if v is None else _to_datetime(v) for v in values], pa.timestamp("us"))
    if kinds == {dt.time}:
        return pa.array(values, pa.time64("us"))
    if kinds == {dt.timedelta}:
        return pa.array(values, pa.duration("us"))
    return pa.array([None if v is None else _to_text(v) for v in values], pa.string())


def _raw(values: list[Any]) -> str:
    return ",".join("" if v is None else _to_text(v) for v in values)[:1000]


class _SheetReader:
    """Rows of the sheets into Parquet parts, with the rejects and counts."""

    def __init__(
        self,
        ctx: ItemContext,
        parts: Path,
        header: bool,
        sheet_column: bool,
        types: dict[str, str],
    ) -> None:
        self.ctx, self.parts, self.header, self.sheet_column = ctx, parts, header, sheet_column
        self.types = {k.casefold(): v for k, v in types.items()}
        self.rows = self.rejected = 0
        self.rejects: list[tuple] = []
        self.columns: list[str] = []
        self.files: list[Path] = []
        self.typed: set[str] = set()  # columns with a value somewhere, so a type

    def _reject(self, line: int, column: str | None, error: str, values: list[Any]) -> None:
        self.rejected += 1
        if len(self.rejects) < MAX_STORED_REJECTS:
            self.rejects.append((line, column, error, _raw(values)))

    def _write(self, names: list[str], batch: list[list[Any]], sheet: str) -> None:
        arrays = [_arrow_column([row[i] for row in batch]) for i in range(len(names))]
        table = pa.Table.from_arrays(arrays, names=names)
        if self.sheet_column:
            table = table.append_column(SHEET_COLUMN, pa.array([sheet] * len(batch), pa.string()))
        part = self.parts / f"part-{len(self.files):06d}.parquet"
        pq.write_table(table, part)
        self.files.append(part)
        for name, array in zip(names, arrays, strict=True):
            if name not in self.columns:
                self.columns.append(name)
            if array.type != pa.null():
                self.typed.add(name)

    def union_select(self) -> str:
        """The parts unioned by name; a column empty everywhere is text (DuckDB would make it
        INTEGER), as DuckDB's CSV reader makes an empty column."""
        sources = ", ".join(quote_literal(str(p)) for p in self.files)
        untyped = [c for c in self.columns if c not in self.typed]
        replace = ", ".join(
            f"cast({quote_ident(c)} as varchar) as {quote_ident(c)}" for c in untyped
        )
        star = f"* replace ({replace})" if untyped else "*"
        return f"select {star} from read_parquet([{sources}], union_by_name = true)"

    def read(self, ws: Any) -> None:  # noqa: ANN401 - an openpyxl ReadOnlyWorksheet
        names: list[str] | None = None
        converters: list[Any] = []
        batch: list[list[Any]] = []
        wrote = False
        for line, cells in enumerate(ws.iter_rows(), start=1):
            if line % 1000 == 0:
                self.ctx.check()
            values = [c.value for c in cells]
            while values and values[-1] is None:
                values.pop()
            if not values:
                continue
            if names is None:
                if self.header:
                    names = _header_names(values)
                    converters = [_converter(self.types.get(n.casefold(), "")) for n in names]
                    continue
                names = [f"column{i}" for i in range(len(values))]
                converters = [_converter(self.types.get(n, "")) for n in names]
            row = self._row(ws.title, line, cells, values, names, converters)
            if row is None:
                continue
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                self._write(names, batch, ws.title)
                self.rows += len(batch)
                batch, wrote = [], True
        if names is not None and (batch or not wrote):
            # A sheet with a header and no rows still gives the table its columns.
            self._write(names, batch, ws.title)
            self.rows += len(batch)

    def _row(
        self,
        sheet: str,
        line: int,
        cells: tuple,
        values: list[Any],
        names: list[str],
        converters: list[Any],
    ) -> list[Any] | None:
        for cell in cells[: len(values)]:
            if cell.data_type == "e":
                column = names[cell.column - 1] if cell.column <= len(names) else None
                self._reject(
                    line,
                    column,
                    f"{sheet}!{cell.coordinate}: the cell holds the Excel error {cell.value}",
                    values,
                )
                return None
        if len(values) > len(names):
            extra = next(j for j in range(len(names), len(values)) if values[j] is not None)
            self._reject(
                line,
                None,
                f"{sheet}!{cells[extra].coordinate}: a value beyond the header's "
                f"{len(names)} columns",
                values,
            )
            return None
        row = values + [None] * (len(names) - len(values))
        for i, convert in enumerate(converters):
            v = row[i]
            if convert is None or v is None:
                continue
            if isinstance(v, float) and math.isnan(v):
                row[i] = None
                continue
            try:
                row[i] = convert(v)
            except (ValueError, TypeError, OverflowError):
                self._reject(
                    line,
                    names[i],
                    f"{sheet}!{cells[i].coordinate}: {_to_text(v)!r} does not fit column "
                    f"{names[i]} ({self.types[names[i].casefold()]})",
                    values,
                )
                return None
        return row


def stage_xlsx(
    ctx: ItemContext,
    path: Path,
    sheet: str | None,
    header: bool | None,
    sheet_column: bool,
    types: dict[str, str],
    stage: Path,
) -> tuple[int, list[str], int, list[tuple], list[str]]:
    """Stream the workbook's sheets into the Parquet file ``stage``; returns rows, column
    names (without ``_sheet``), rejected count, a sample of rejects (line, column, error,
    raw) and the names of the sheets read."""
    parts = stage.with_name(f"{stage.stem}-{uuid.uuid4().hex[:6]}.parts")
    parts.mkdir(parents=True)
    reader = _SheetReader(ctx, parts, header is not False, sheet_column, types)
    try:
        workbook = open_workbook(path)
        try:
            sheets = pick_sheets(workbook, sheet, path.name)
            for ws in sheets:
                try:
                    reader.read(ws)
                except ItemError:  # our own, a timeout or a cancel
                    raise
                except Exception as exc:  # a damaged sheet part: XML or zip errors
                    raise ValidationItemError(
                        f"cannot read sheet {ws.title!r} of {path.name}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
        finally:
            workbook.close()
        if not reader.files:
            names = ", ".join(repr(s.title) for s in sheets)
            raise ValidationItemError(f"{path.name} has no rows in its sheet(s) {names}")
        with ctx.local_duckdb() as con:
            try:
                con.execute(
                    f"copy ({reader.union_select()}) to {quote_literal(str(stage))} "
                    "(format parquet)"
                )
            except duckdb.InterruptException:
                ctx.check()
                raise
    finally:
        for part in reader.files:
            part.unlink(missing_ok=True)
        parts.rmdir()
    return (
        reader.rows,
        reader.columns,
        reader.rejected,
        reader.rejects,
        [s.title for s in sheets],
    )
