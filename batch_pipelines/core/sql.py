"""Identifier validation and quoting: the one place user-supplied names become SQL."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_QUALIFIED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62}){0,2}$")


def _matching(pattern: re.Pattern[str], name: str, what: str, expected: str) -> str:
    if not isinstance(name, str) or not pattern.match(name):
        raise ValueError(f"{what} {name!r} is not a valid {expected}")
    return name


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, underscore)."""
    return _matching(
        _IDENT,
        name,
        what,
        "name: use letters, digits and underscores, starting with a letter or underscore, "
        "at most 63 characters",
    )


def validate_table_name(name: str, what: str = "table") -> str:
    """A table name, optionally qualified as ``schema.table`` or ``catalog.schema.table``."""
    return _matching(
        _QUALIFIED,
        name,
        what,
        "table name: use letters, digits and underscores (optionally schema.table)",
    )


def _table_field(name: str, info: ValidationInfo) -> str:
    return validate_table_name(name, info.field_name or "table")


TableName = Annotated[str, AfterValidator(_table_field)]
"""A pydantic field holding a table name (:func:`validate_table_name`, named by the field)."""


def quote_ident(name: str) -> str:
    """Quote a validated identifier (or dotted table name) for DuckDB."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def validate_column_name(name: str, what: str = "column") -> str:
    """A column name as tables and files really have them (``Bill Length (mm)`` included):
    any text of 1 to 255 characters without control characters."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 255
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
    ):
        raise ValueError(
            f"{what} {name!r} is not a valid column name: 1 to 255 characters, "
            "no control characters"
        )
    return name


def quote_column(name: str) -> str:
    """Quote a validated column name as one identifier (dots and quotes included)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal for the few DuckDB statements that cannot take parameters
    (``COPY ... TO``, ``ATTACH``, table functions in DDL)."""
    return "'" + str(value).replace("'", "''") + "'"
