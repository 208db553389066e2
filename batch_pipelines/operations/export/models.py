"""The options and item models of the export operation."""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from batch_pipelines.core.sql import TableName

Format = Literal["parquet", "csv", "json", "ndjson", "xlsx"]
Compression = Literal["snappy", "zstd", "gzip", "lz4", "brotli", "uncompressed", "none"]
PARQUET_COMPRESSIONS = {"snappy", "zstd", "gzip", "lz4", "brotli", "uncompressed"}
TEXT_COMPRESSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
EXTENSIONS = {
    "parquet": ".parquet",
    "csv": ".csv",
    "json": ".json",
    "ndjson": ".ndjson",
    "xlsx": ".xlsx",
}
TEMPLATE_FIELDS = ("item_id", "batch_id", "table", "format")


def check_template(value: str | None, field: str) -> str | None:
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


FileNameTemplate = Annotated[str, AfterValidator(lambda v: check_template(v, "filename"))]


def check_compression(fmt: str, compression: str | None, field: str = "compression") -> None:
    if compression is None:
        return
    if fmt == "xlsx":
        allowed = {"none"}  # an xlsx file is a zip archive already
    else:
        allowed = PARQUET_COMPRESSIONS if fmt == "parquet" else set(TEXT_COMPRESSIONS)
    if compression not in allowed:
        raise ValueError(
            f"{field}: {compression!r} does not apply to {fmt}; use one of {sorted(allowed)}"
        )


class ExportOptions(BaseModel, extra="forbid"):
    """Options of an export batch."""

    format: Format = Field(
        "parquet",
        description="parquet, csv, json (an array), ndjson or xlsx (one sheet, more past "
        "1,048,575 rows)",
    )
    filename: FileNameTemplate | None = Field(
        None,
        description="File name template: {item_id}, {batch_id}, {table}, {format}; the "
        "extension is added when missing (default: the item id)",
    )
    compression: Compression | None = Field(
        None,
        description="parquet: snappy (default), zstd, gzip, lz4, brotli, uncompressed; "
        "csv/json/ndjson: none (default), gzip, zstd; xlsx: none",
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV delimiter")
    header: bool = Field(True, description="CSV header line")

    @model_validator(mode="after")
    def _compression_fits(self) -> ExportOptions:
        check_compression(self.format, self.compression)
        return self


class ExportItem(BaseModel, extra="forbid"):
    """One table or SELECT query to export (exactly one of the two)."""

    id: str | None = None
    table: TableName | None = Field(None, description="A warehouse table or view")
    query: str | None = Field(None, description="One read-only SELECT on the warehouse")
    format: Format | None = Field(None, description="Overrides options.format")
    filename: FileNameTemplate | None = Field(None, description="Overrides options.filename")

    @model_validator(mode="after")
    def _exactly_one(self) -> ExportItem:
        if (self.table is None) == (self.query is None or not self.query.strip()):
            raise ValueError("give exactly one of table or query")
        return self
