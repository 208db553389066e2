"""Refuse SQL that is not a single read-only SELECT, by asking DuckDB's own parser."""

from __future__ import annotations

import json

import duckdb


def ensure_read_only_select(query: str) -> None:
    """Raise ``ValueError`` unless ``query`` is exactly one SELECT statement (WITH/VALUES and
    set operations included) that calls no table function outside a short allow-list."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-empty SELECT statement")
    con = duckdb.connect(":memory:")
    try:
        try:
            statements = con.extract_statements(query)
        except duckdb.Error as exc:
            raise ValueError(f"query does not parse: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1:
            raise ValueError(f"query must be one statement, found {len(statements)}")
        if statements[0].type != duckdb.StatementType.SELECT:
            raise ValueError(
                f"query must be a read-only SELECT, found a {statements[0].type.name} statement"
            )
        try:
            tree = con.execute("select json_serialize_sql(?::varchar)", [query]).fetchone()[0]
        except duckdb.Error:
            return
        parsed = json.loads(tree)
        if parsed.get("error"):
            return
        bad = sorted(_table_functions(parsed) - SAFE_TABLE_FUNCTIONS)
        if bad:
            raise ValueError(f"query may not call table function(s): {', '.join(bad)}")
    finally:
        con.close()


SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "values"})


def _table_functions(node: object) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if node.get("type") == "TABLE_FUNCTION":
            fn = node.get("function", {})
            name = fn.get("function_name") if isinstance(fn, dict) else None
            if name:
                found.add(str(name).lower())
        for value in node.values():
            found |= _table_functions(value)
    elif isinstance(node, list):
        for value in node:
            found |= _table_functions(value)
    return found
