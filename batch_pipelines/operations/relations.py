"""Warehouse relations as operations see them (shared here: operations never import each
other)."""

from __future__ import annotations

import difflib

import duckdb

from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.sql import quote_ident, validate_table_name
from batch_pipelines.core.sqlcheck import ensure_read_only_select


def read_only_select(sql: str, field: str) -> str:
    """``sql`` if it is one read-only SELECT (normalised); otherwise a validation error of the
    item, prefixed with the item's ``field`` that holds it."""
    try:
        return ensure_read_only_select(sql)
    except ValueError as exc:
        raise ValidationItemError(f"{field}: {exc}") from None


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


def relation_kind(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """``"table"``, ``"view"`` or None; asks the catalog (no failing statement), so it is safe
    inside a transaction, where any error would abort the transaction."""
    parts = name.split(".")
    table = parts[-1]
    schema = parts[-2] if len(parts) > 1 else None
    database = parts[-3] if len(parts) > 2 else None
    row = con.execute(
        """
        select kind from (
            select 'table' as kind, database_name, schema_name, table_name as name
            from duckdb_tables()
            union all
            select 'view', database_name, schema_name, view_name from duckdb_views()
            where not internal
        )
        where lower(name) = lower($name)
          and lower(schema_name) = lower(coalesce($schema, current_schema()))
          and lower(database_name) = lower(coalesce($database, current_database()))
        limit 1
        """,
        {"name": table, "schema": schema, "database": database},
    ).fetchone()
    return row[0] if row else None


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return relation_kind(con, name) is not None
