"""export: an xlsx workbook, streamed.

openpyxl writes a few thousand rows a second, far slower than DuckDB reads them: the rows
are first copied (DuckDB ``COPY``, at DuckDB's speed) to a staging Parquet file under the
warehouse's read lock, which every writer waits for; then, with the lock released, they are
read back in Arrow batches and openpyxl's ``write_only`` workbook writes them row by row to a
temporary sheet file, so memory stays bounded by one batch whatever the size of the table. A sheet holds at most 1,048,576 rows (Excel's limit): past
``MAX_SHEET_ROWS`` data rows under the header, the rows go on in a new sheet (``<name>_2``,
``<name>_3``, ...) that repeats the header, so nothing is cut off and an import of the
workbook (every sheet) gets every row back.

Cells are written as values, never as formulas: a text starting with ``=`` or looking like
an Excel error (``#N/A``) stays text. What Excel cannot hold is adapted: timestamps with a
time zone in UTC without it, NaN and infinities as empty cells, lists, structs and maps as
JSON text, control characters removed, text beyond 32,767 characters cut (counted in the
item's ``truncated_cells``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.sql import quote_ident

MAX_SHEET_ROWS = 1_048_575  # Excel's 1,048,576 rows per sheet, less the header
MAX_CELL_CHARS = 32_767
BATCH_ROWS = 10_000
# DuckDB types with no Excel (or plain Arrow) counterpart: written as their text.
_AS_TEXT = ("UUID", "INTERVAL", "BIT", "HUGEINT", "UHUGEINT", "TIME WITH TIME ZONE", "UNION")
_SHEET_NAME_BAD = re.compile(r"[\[\]:*?/\\]")
# As openpyxl's ILLEGAL_CHARACTERS_RE and ERROR_CODES (openpyxl is imported only to write).
_ILLEGAL = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")
_ERROR_CODES = ("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A")


def sheet_title(name: str, n: int) -> str:
    """The title of the ``n``-th sheet (1-based): Excel allows 31 characters, not ``[]:*?/\\``."""
    base = _SHEET_NAME_BAD.sub("_", name).strip("'") or "data"
    suffix = "" if n == 1 else f"_{n}"
    return base[: 31 - len(suffix)] + suffix


class _Cells:
    """Converts Arrow values to what an openpyxl write-only sheet accepts."""

    def __init__(self) -> None:
        self.truncated = 0
        self.sheet: Any = None

    def text(self, value: Any) -> Any:  # noqa: ANN401
        if not isinstance(value, str):
            value = str(value)
        value = _ILLEGAL.sub("", value)
        if len(value) > MAX_CELL_CHARS:
            self.truncated += 1
            value = value[:MAX_CELL_CHARS]
        if value.startswith("=") or value in _ERROR_CODES:
            from openpyxl.cell import WriteOnlyCell

            # openpyxl would write these as a formula or an error: a value must stay a value.
            cell = WriteOnlyCell(self.sheet, value=value)
            cell.data_type = "s"
            return cell
        return value

    def json(self, value: Any) -> Any:  # noqa: ANN401
        return self.text(json.dumps(value, default=str, ensure_ascii=False))

    def converter(self, typ: pa.DataType) -> Callable[[Any], Any] | None:
        """The conversion of a column of type ``typ``; None when values go as they are."""
        if pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_decimal(typ):
            return None
        if pa.types.is_floating(typ):
            return lambda v: v if v is None or math.isfinite(v) else None
        if pa.types.is_timestamp(typ) and typ.tz is not None:
            return lambda v: v if v is None else v.astimezone(dt.UTC).replace(tzinfo=None)
        if pa.types.is_timestamp(typ) or pa.types.is_date(typ) or pa.types.is_duration(typ):
            return None
        if pa.types.is_time(typ):
            return lambda v: v if v is None else v.replace(tzinfo=None)
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return lambda v: v if v is None else self.text(v)
        if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
            return lambda v: v if v is None else v.hex()
        if pa.types.is_nested(typ):
            return lambda v: v if v is None else self.json(v)
        return lambda v: v if v is None else self.text(v)


def staging_select(con: duckdb.DuckDBPyConnection, select: str) -> str:
    """``select`` with the columns Excel has no type for cast to text."""
    columns = con.execute(f"describe select * from (\n{select})").fetchall()
    exprs = [
        f"cast({quote_ident(name)} as varchar) as {quote_ident(name)}"
        if typ.upper().startswith(_AS_TEXT)
        else quote_ident(name)
        for name, typ, *_ in columns
    ]
    return f"select {', '.join(exprs)} from (\n{select}) _export_source"


def write_xlsx(
    ctx: ItemContext, source: Path, target: Path, name: str
) -> tuple[int, list[str], int]:
    """Write the rows of the Parquet file ``source`` to the workbook ``target``; returns the
    rows, the sheet titles and the number of text cells cut to Excel's limit."""
    import openpyxl  # here: ~0.3 s, which every CLI start would pay at module level

    parquet = pq.ParquetFile(source)
    schema = parquet.schema_arrow
    header = list(schema.names)
    cells = _Cells()
    converters = [cells.converter(field.type) for field in schema]
    workbook = openpyxl.Workbook(write_only=True)
    titles: list[str] = []
    rows = in_sheet = 0

    def new_sheet() -> None:
        titles.append(sheet_title(name, len(titles) + 1))
        cells.sheet = workbook.create_sheet(titles[-1])
        cells.sheet.append([cells.text(h) for h in header])

    new_sheet()  # first: the text cells of the rows belong to a sheet
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        ctx.check()
        columns = [
            col.to_pylist() if convert is None else [convert(v) for v in col.to_pylist()]
            for col, convert in zip(batch.columns, converters, strict=True)
        ]
        for row in zip(*columns, strict=True):
            if in_sheet >= MAX_SHEET_ROWS:
                new_sheet()
                in_sheet = 0
            cells.sheet.append(row)
            in_sheet += 1
        rows += batch.num_rows
    workbook.save(target)
    return rows, titles, cells.truncated
