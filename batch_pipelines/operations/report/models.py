"""The options and item models of the report operation, and the report itself: what a query
function fills in and the renderers turn into HTML, Markdown and CSV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.sql import validate_table_name


class ReportOptions(BaseModel, extra="forbid"):
    """Options of a report batch."""

    histogram_bins: int = Field(20, ge=2, le=200)
    max_table_rows: int = Field(50, ge=1, le=10_000, description="Rows shown per HTML table")
    max_columns: int = Field(100, ge=1, le=1000, description="Columns profiled per table")
    max_charts: int = Field(12, ge=0, le=100)
    top_values: int = Field(5, ge=0, le=50, description="Most frequent values per text column")


class ReportItem(BaseModel, extra="forbid"):
    """One report request."""

    id: str | None = None
    kind: Literal["batch", "table_profile", "operation_window"]
    batch_id: str | None = None
    table: str | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    title: str | None = Field(None, max_length=200)

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    @model_validator(mode="after")
    def _fields_for_kind(self) -> ReportItem:
        needed = {"batch": ("batch_id",), "table_profile": ("table",)}.get(self.kind, ())
        if self.kind == "operation_window":
            needed = ("operation",)
        allowed = {
            "batch": {"batch_id"},
            "table_profile": {"table"},
            "operation_window": {"operation", "since", "until"},
        }[self.kind]
        for name in needed:
            if not getattr(self, name):
                raise ValueError(f"a {self.kind} report needs {name}")
        extra = [
            n
            for n in ("batch_id", "table", "operation", "since", "until")
            if getattr(self, n) is not None and n not in allowed
        ]
        if extra:
            raise ValueError(f"a {self.kind} report does not take {', '.join(extra)}")
        if self.table is not None:
            validate_table_name(self.table, "table")
        if self.operation is not None:
            from batch_pipelines.operations import OPERATION_NAMES

            if self.operation not in OPERATION_NAMES:
                raise ValueError(
                    f"operation {self.operation!r} is not one of {', '.join(OPERATION_NAMES)}"
                )
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be earlier than until")
        if self.id is None:
            self.id = f"{self.kind}:{self.subject}"
        return self

    @property
    def subject(self) -> str:
        if self.kind == "batch":
            return str(self.batch_id)
        if self.kind == "table_profile":
            return str(self.table)
        window = ""
        if self.since or self.until:
            since = self.since.isoformat(timespec="seconds") if self.since else ""
            until = self.until.isoformat(timespec="seconds") if self.until else ""
            window = f"[{since}/{until})"
        return f"{self.operation}{window}"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[Sequence[Any]]
    note: str | None = None


@dataclass
class Chart:
    title: str
    kind: str  # bar | hist | line
    labels: list[Any]
    values: list[float]
    xlabel: str = ""
    ylabel: str = "count"
    png: bytes | None = None

    @classmethod
    def of(
        cls,
        title: str,
        kind: str,
        rows: Sequence[Sequence[Any]],
        label: int = 0,
        value: int = 1,
        **axes: str,
    ) -> Chart:
        """A chart of query rows: the labels from column ``label``, values from ``value``."""
        return cls(title, kind, [r[label] for r in rows], [r[value] for r in rows], **axes)


@dataclass
class Report:
    title: str
    subtitle: str
    facts: list[tuple[str, Any]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    main: Table | None = None  # the CSV
    summary: dict[str, Any] = field(default_factory=dict)
