"""The options and item models of the import operation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.sql import validate_identifier, validate_table_name

Format = Literal["auto", "csv", "tsv", "json", "ndjson", "parquet", "xlsx"]


class ImportOptions(BaseModel, extra="forbid"):
    """Options of an import batch."""

    target_table: str = Field(
        description="Table to load into; may contain {item_id} for one table per item"
    )
    mode: Literal["append", "replace", "upsert"] = "append"
    key_columns: list[str] = Field(default_factory=list, description="Keys for mode upsert")
    format: Format = "auto"
    delimiter: str | None = Field(None, min_length=1, max_length=1)
    header: bool | None = None
    sheet: str | None = Field(
        None,
        min_length=1,
        description="xlsx: the one sheet to read (default: every sheet, each row's sheet in "
        "the _sheet lineage column); other formats ignore it",
    )
    skip_identical: bool = True
    lineage_columns: bool = True
    max_reject_ratio: float | None = Field(
        None, ge=0, le=1, description="Fail the item if more than this share of rows is rejected"
    )
    load: Literal["auto", "staged"] = Field(
        "auto",
        description=(
            "auto: read the file straight into the table in the item's commit (one pass; "
            "upsert stages); staged: stream it to Parquet first, outside the writer lock"
        ),
    )

    @field_validator("target_table")
    @classmethod
    def _table(cls, value: str) -> str:
        validate_table_name(value.replace("{item_id}", "x"), "target_table")
        return value

    @field_validator("key_columns")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        return [validate_identifier(v, "key column") for v in value]

    @model_validator(mode="after")
    def _upsert_needs_keys(self) -> ImportOptions:
        if self.mode == "upsert" and not self.key_columns:
            raise ValueError("key_columns is required when mode is upsert")
        return self


class ImportItem(BaseModel, extra="forbid"):
    """One file to import."""

    id: str | None = None
    path: str = Field(min_length=1)
    format: Format | None = None
    sheet: str | None = Field(None, min_length=1, description="xlsx: overrides options.sheet")
