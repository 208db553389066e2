"""Registered transforms for the ``transform`` operation.

Two kinds, both registered by name and both with a pydantic options model (an item's
``transform_options``):

- **chunk transforms** (``@register_transform``): a Python function applied to the source in
  chunks of rows, ``fn(chunk, options) -> chunk``, where a chunk is a pandas DataFrame with
  Arrow-backed dtypes (``batch_format="pandas"``, the default) or a ``pyarrow.RecordBatch``
  (``batch_format="arrow"``). The source streams through DuckDB, so a table larger than
  memory never lands in pandas whole. Each chunk is transformed on its own: use this for
  row-wise work (cleaning, renaming, casting, enriching).
- **relation transforms** (``@register_sql_transform``): a Python function that, given the
  source's columns and the options, returns one SELECT that reads the source as ``source``.
  Use this for work that needs the whole relation (deduplicate, aggregate, window).

Shipped: ``normalize_columns`` (chunk) and ``dedupe_latest`` (relation).

pandas is imported inside the functions that use it, not at the top: the operation registry
loads this module, and the CLI's fast verbs (``list --operation``, ``--help``) must not pay
for pandas.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from batch_pipelines.core.sql import quote_ident, validate_identifier

if TYPE_CHECKING:
    import pandas as pd

BatchFormat = Literal["pandas", "arrow"]


class NoOptions(BaseModel, extra="forbid"):
    """A transform without options."""


@dataclass(frozen=True)
class RegisteredTransform:
    """A transform the ``transform`` operation can apply by name."""

    name: str
    description: str
    options_model: type[BaseModel]
    chunk_fn: Callable[[Any, Any], Any] | None = None
    batch_format: BatchFormat = "pandas"
    sql_fn: Callable[[list[tuple[str, str]], Any], str] | None = None

    @property
    def kind(self) -> str:
        return "chunk" if self.chunk_fn is not None else "relation"


TRANSFORMS: dict[str, RegisteredTransform] = {}


def _registering(
    name: str,
    options_model: type[BaseModel],
    description: str | None,
    fn_field: str,
    **fields: Any,  # noqa: ANN401
) -> Callable[[Callable], Callable]:
    """The decorator that registers its function as transform ``name``, in ``fn_field``
    (``chunk_fn`` or ``sql_fn``); the description defaults to the docstring's first line."""
    validate_identifier(name, "transform name")

    def decorate(fn: Callable) -> Callable:
        if name in TRANSFORMS:
            raise ValueError(f"transform {name!r} is already registered")
        TRANSFORMS[name] = RegisteredTransform(
            name=name,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            options_model=options_model,
            **{fn_field: fn},
            **fields,
        )
        return fn

    return decorate


def register_transform(
    name: str,
    *,
    options_model: type[BaseModel] = NoOptions,
    batch_format: BatchFormat = "pandas",
    description: str | None = None,
) -> Callable[[Callable], Callable]:
    """Register ``fn(chunk, options) -> chunk`` as a chunk transform called ``name``.

    The function may return a pandas DataFrame, a ``pyarrow.RecordBatch`` or a
    ``pyarrow.Table``; every chunk's result must have the same columns."""
    return _registering(name, options_model, description, "chunk_fn", batch_format=batch_format)


def register_sql_transform(
    name: str, *, options_model: type[BaseModel] = NoOptions, description: str | None = None
) -> Callable[[Callable], Callable]:
    """Register ``fn(columns, options) -> "select ... from source"`` as a relation transform;
    ``columns`` are the source's (name, DuckDB type) pairs. The SELECT is checked like a
    user's SQL (one read-only SELECT) before it runs."""
    return _registering(name, options_model, description, "sql_fn")


def get_transform(name: str) -> RegisteredTransform:
    try:
        return TRANSFORMS[name]
    except KeyError:
        known = ", ".join(sorted(TRANSFORMS)) or "none"
        raise KeyError(f"unknown transform {name!r}; registered transforms: {known}") from None


# --- normalize_columns -----------------------------------------------------------------

CastType = Literal[
    "integer", "bigint", "double", "decimal", "varchar", "boolean", "date", "timestamp"
]
_ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "decimal": pa.decimal128(18, 3),
    "varchar": pa.string(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}


class NormalizeColumnsOptions(BaseModel, extra="forbid"):
    """Options of ``normalize_columns``."""

    snake_case: bool = Field(True, description="Rename columns to snake_case")
    trim_strings: bool = Field(True, description="Strip leading and trailing whitespace")
    empty_as_null: bool = Field(True, description="Turn empty strings into NULL")
    casts: dict[str, CastType] = Field(
        default_factory=dict,
        description="Column (its name after renaming) -> integer, bigint, double, decimal, "
        "varchar, boolean, date or timestamp",
    )


_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^0-9a-zA-Z]+")


def snake_case(name: str) -> str:
    """``"Bill Length (mm)"`` -> ``bill_length_mm``, ``"bodyMassG"`` -> ``body_mass_g``;
    leading underscores (``_batch_id``) are kept and a leading digit gets one."""
    leading = "_" * (len(name) - len(name.lstrip("_")))
    text = _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", name))
    text = _NON_WORD.sub("_", text).strip("_").lower()
    if not text:
        return leading or "column"
    if text[0].isdigit() and not leading:
        leading = "_"
    return leading + text


def normalized_names(names: list[str]) -> list[str]:
    """snake_case names, made unique with ``_2``, ``_3`` ... in column order."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        base = snake_case(name)
        candidate, n = base, 1
        while candidate in seen:
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _is_text(series: pd.Series) -> bool:
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(
            dtype.pyarrow_dtype
        )
    return isinstance(dtype, pd.StringDtype)


@register_transform(
    "normalize_columns",
    options_model=NormalizeColumnsOptions,
    description="snake_case column names, trim strings, empty strings to NULL, optional casts",
)
def normalize_columns(chunk: pd.DataFrame, options: NormalizeColumnsOptions) -> pd.DataFrame:
    """Clean a chunk: snake_case names, trimmed strings, NULL for empty strings, casts."""
    import pandas as pd

    if options.snake_case:
        chunk = chunk.set_axis(normalized_names([str(c) for c in chunk.columns]), axis=1)
    missing = sorted(set(options.casts) - {str(c) for c in chunk.columns})
    if missing:
        raise ValueError(
            f"casts: column(s) {missing} not found; columns are {[str(c) for c in chunk.columns]}"
        )
    out = {}
    for column in chunk.columns:
        series = chunk[column]
        if _is_text(series):
            if options.trim_strings:
                series = series.str.strip()
            if options.empty_as_null:
                series = series.where((series != "").fillna(True), None)
        target = options.casts.get(str(column))
        if target is not None:
            try:
                series = series.astype(pd.ArrowDtype(_ARROW_TYPES[target]))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError) as exc:
                raise ValueError(
                    f"casts: cannot cast column {column!r} to {target}: {exc}"
                ) from None
        out[column] = series
    return pd.DataFrame(out, index=chunk.index)


# --- dedupe_latest ---------------------------------------------------------------------


class DedupeLatestOptions(BaseModel, extra="forbid"):
    """Options of ``dedupe_latest``."""

    key_columns: list[str] = Field(min_length=1, description="Columns that identify a record")
    order_by: list[str] = Field(
        min_length=1,
        description="Column(s) that order versions of a record; the highest is the latest "
        "(a string is taken as one column)",
    )
    keep: Literal["latest", "earliest"] = "latest"

    @field_validator("key_columns", "order_by", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("key_columns", "order_by")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [validate_identifier(v, "column") for v in value]


@register_sql_transform(
    "dedupe_latest",
    options_model=DedupeLatestOptions,
    description="one row per key: the latest (or earliest) by the order column(s)",
)
def dedupe_latest(columns: list[tuple[str, str]], options: DedupeLatestOptions) -> str:
    """Keep one row per key: the latest (or earliest) by ``order_by``; a row whose order
    value is NULL is kept only when its key has no other row."""
    names = {c for c, _ in columns}
    for field_name in ("key_columns", "order_by"):
        missing = [c for c in getattr(options, field_name) if c not in names]
        if missing:
            raise ValueError(
                f"{field_name}: column(s) {missing} not in the source; columns are {sorted(names)}"
            )
    direction = "desc nulls last" if options.keep == "latest" else "asc nulls last"
    keys = ", ".join(quote_ident(c) for c in options.key_columns)
    order = ", ".join(f"{quote_ident(c)} {direction}" for c in options.order_by)
    return (
        "select * from source\n"
        f"qualify row_number() over (partition by {keys} order by {order}) = 1"
    )
