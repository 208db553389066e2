"""Warehouse relations as the export, transform and validate operations see them."""

from __future__ import annotations

import difflib

import duckdb

from batch_pipelines.errors import ValidationItemError
from batch_pipelines.sql import quote_ident, validate_table_name


def describe_table(
    con: duckdb.DuckDBPyConnection, name: str, field: str = "table"
) -> list[tuple[str, str]]:
    """The (column, type) pairs of a table or view; a missing one is a validation error of
    the item that names it, with the closest existing names as a hint."""
    try:
        validate_table_name(name, field)
    except ValueError as exc:
        raise ValidationItemError(str(exc)) from None
    try:
        rows = con.execute(f"describe {quote_ident(name)}").fetchall()
    except duckdb.CatalogException:
        known = [
            r[0]
            for r in con.execute(
                "select case when schema_name = 'main' then table_name "
                "else schema_name || '.' || table_name end from duckdb_tables() "
                "where not internal and not temporary "
                "union select case when schema_name = 'main' then view_name "
                "else schema_name || '.' || view_name end from duckdb_views() "
                "where not internal and not temporary"
            ).fetchall()
        ]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValidationItemError(
            f"{field}: table {name!r} does not exist in the warehouse{hint}"
        ) from None
    return [(r[0], r[1]) for r in rows]


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    try:
        con.execute(f"describe {quote_ident(name)}")
    except duckdb.CatalogException:
        return False
    return True
