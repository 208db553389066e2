"""The options and item models of the transform operation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.sql import validate_table_name

Mode = Literal["replace", "append"]


class TransformOptions(BaseModel, extra="forbid"):
    """Options of a transform batch."""

    mode: Mode = Field(
        "replace",
        description="replace: the target becomes the result; append: the result's rows are "
        "added (tagged with _batch_id and _item_id so re-runs replace them)",
    )
    chunk_rows: int = Field(
        50_000, ge=100, le=5_000_000, description="Rows per chunk for chunk transforms"
    )


class TransformItem(BaseModel, extra="forbid"):
    """One transformation: source table -> target table, by SQL or a registered transform."""

    id: str | None = None
    source: str = Field(description="The table (or view) to read")
    target: str = Field(description="The table to write")
    sql: str | None = Field(None, description="One SELECT reading the source as `source`")
    transform: str | None = Field(None, description="A registered transform's name")
    transform_options: dict[str, Any] = Field(default_factory=dict)
    mode: Mode | None = Field(None, description="Overrides options.mode")

    @field_validator("source", "target")
    @classmethod
    def _table(cls, value: str, info: Any) -> str:
        return validate_table_name(value, info.field_name)

    @model_validator(mode="after")
    def _exactly_one(self) -> TransformItem:
        if (self.sql is None or not self.sql.strip()) == (self.transform is None):
            raise ValueError("give exactly one of sql or transform")
        if self.transform_options and self.transform is None:
            raise ValueError("transform_options apply to a registered transform only")
        return self
