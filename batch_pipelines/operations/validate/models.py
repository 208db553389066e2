"""The options, item and rule models of the validate operation."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.sql import TableName, validate_column_name

Scalar = str | int | float | bool
_TYPE_NAME = re.compile(
    r"^[A-Za-z][A-Za-z0-9_]*( [A-Za-z][A-Za-z0-9_]*)*(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\d*\])*$"
)

ColumnName = Annotated[str, AfterValidator(validate_column_name)]


class BaseRule(BaseModel, extra="forbid"):
    name: str | None = Field(
        None, min_length=1, max_length=200, description="Defaults to type(column)"
    )
    weight: float = Field(1.0, gt=0, le=1000, description="Weight in the quality score")
    severity: Literal["error", "warn"] = Field(
        "error", description="Severity of the asset check when this rule fails"
    )

    def column_list(self) -> list[str]:
        return []

    def label(self) -> str:
        cols = self.column_list()
        return self.name or (f"{self.type}({', '.join(cols)})" if cols else self.type)  # type: ignore[attr-defined]


class NotNullRule(BaseRule):
    """No NULL in the column."""

    type: Literal["not_null"]
    column: ColumnName

    def column_list(self) -> list[str]:
        return [self.column]


class UniqueRule(BaseRule):
    """No two rows share the column(s); rows with a NULL key are not compared."""

    type: Literal["unique"]
    columns: list[ColumnName] = Field(min_length=1)

    @field_validator("columns", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def column_list(self) -> list[str]:
        return list(self.columns)


class RangeRule(BaseRule):
    """Values within [min, max] (either bound optional; NULLs are not checked)."""

    type: Literal["range"]
    column: ColumnName
    min: float | int | str | None = None
    max: float | int | str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        numbers = (int, float)
        if isinstance(self.min, numbers) and isinstance(self.max, numbers) and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def column_list(self) -> list[str]:
        return [self.column]


class RegexRule(BaseRule):
    """Values (as text) match the pattern (a search: anchor it with ^ and $ for a full match;
    NULLs are not checked)."""

    type: Literal["regex"]
    column: ColumnName
    pattern: str = Field(min_length=1)

    def column_list(self) -> list[str]:
        return [self.column]


class AcceptedValuesRule(BaseRule):
    """Values are among the listed ones (NULLs are not checked)."""

    type: Literal["accepted_values"]
    column: ColumnName
    values: list[Scalar] = Field(min_length=1, max_length=10000)

    def column_list(self) -> list[str]:
        return [self.column]


class RowCountRule(BaseRule):
    """The number of rows is within [min, max]."""

    type: Literal["row_count"]
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCountRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ColumnTypesRule(BaseRule):
    """The columns exist with these DuckDB types (``{body_mass_g: BIGINT}``)."""

    type: Literal["column_types"]
    columns: dict[ColumnName, str] = Field(min_length=1)

    @field_validator("columns")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        for column, type_name in value.items():
            if not _TYPE_NAME.match(type_name.strip()):
                raise ValueError(f"{column}: {type_name!r} is not a DuckDB type name")
        return {k: v.strip() for k, v in value.items()}

    def label(self) -> str:
        return self.name or "column_types"


class SqlPredicateRule(BaseRule):
    """A boolean SQL expression that must hold for every row (rows where it is NULL are not
    counted, as in a SQL CHECK constraint)."""

    type: Literal["sql_predicate"]
    predicate: str = Field(min_length=1, max_length=10000)

    def label(self) -> str:
        return self.name or "sql_predicate"


Rule = Annotated[
    NotNullRule
    | UniqueRule
    | RangeRule
    | RegexRule
    | AcceptedValuesRule
    | RowCountRule
    | ColumnTypesRule
    | SqlPredicateRule,
    Field(discriminator="type"),
]
FileFormat = Literal["auto", "csv", "tsv", "json", "ndjson", "parquet"]


class ValidateOptions(BaseModel, extra="forbid"):
    """Options of a validate batch."""

    rules: list[Rule] = Field(
        default_factory=list, description="Rules applied to every item, before its own rules"
    )
    sample_size: int = Field(5, ge=0, le=100, description="Failing rows kept per rule")
    fail_item_on_rule_failure: bool = Field(
        False,
        description="false: rule failures are findings and the item succeeds with its quality "
        "score; true: an item with a failed rule fails",
    )


class ValidateItem(BaseModel, extra="forbid"):
    """One table or file to validate (exactly one of the two) and its rules."""

    id: str | None = None
    table: TableName | None = Field(None, description="A warehouse table or view")
    path: str | None = Field(None, description="A CSV, TSV, JSON, NDJSON or Parquet file")
    format: FileFormat | None = Field(None, description="File format (default: from extension)")
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exactly_one(self) -> ValidateItem:
        if (self.table is None) == (self.path is None):
            raise ValueError("give exactly one of table or path")
        if self.format is not None and self.path is None:
            raise ValueError("format applies to a path only")
        return self
