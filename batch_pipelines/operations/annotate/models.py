"""The options and item models of the annotate operation."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.sql import validate_identifier, validate_table_name
from batch_pipelines.operations.annotate.backends.base import DEFAULT_TAXONOMY


class AnnotateOptions(BaseModel, extra="forbid"):
    """Options of an annotate batch."""

    taxonomy: dict[str, list[str]] | None = Field(
        None,
        description="Categories and their keywords ({category: [keyword, ...]}); "
        "default: a built-in taxonomy (finance, technology, sports, health, politics, "
        "science, travel, customer_support). Texts matching none get 'other'.",
    )
    max_keywords: int = Field(8, ge=1, le=50)
    summary_max_chars: int = Field(300, ge=40, le=5000)
    summary_max_sentences: int = Field(3, ge=1, le=20)
    max_chars: int = Field(200_000, ge=100, le=10_000_000, description="Longer texts are truncated")
    max_file_bytes: int = Field(10_000_000, ge=1, le=1_000_000_000)

    @field_validator("taxonomy")
    @classmethod
    def _taxonomy(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("taxonomy must name at least one category")
        for category, keywords in value.items():
            if not category.strip() or len(category) > 64:
                raise ValueError(f"taxonomy category {category!r} must be 1 to 64 characters")
            if not keywords or not all(isinstance(k, str) and k.strip() for k in keywords):
                raise ValueError(
                    f"taxonomy category {category!r} needs a non-empty list of keywords"
                )
        return value

    def effective_taxonomy(self) -> dict[str, list[str]]:
        return self.taxonomy or DEFAULT_TAXONOMY


class AnnotateItem(BaseModel, extra="forbid"):
    """One text: inline ``text``, a file ``path``, or a table row."""

    id: str | None = None
    text: str | None = None
    path: str | None = None
    table: str | None = None
    id_column: str | None = None
    id_value: int | str | None = None
    text_column: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AnnotateItem:
        row_fields = ("table", "id_column", "id_value", "text_column")
        given_row = [f for f in row_fields if getattr(self, f) is not None]
        sources = [s for s in ("text", "path") if getattr(self, s) is not None]
        if given_row:
            sources.append("table")
        if len(sources) != 1:
            raise ValueError(
                "give exactly one source: text, path, or table + id_column + id_value + "
                f"text_column (got {', '.join(sources) or 'none'})"
            )
        if given_row:
            missing = [f for f in row_fields if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a table row item also needs {', '.join(missing)}")
            validate_table_name(self.table, "table")
            validate_identifier(self.id_column, "id_column")
            validate_identifier(self.text_column, "text_column")
            if self.id is None:
                self.id = f"{self.table}:{self.id_value}"
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        return self
