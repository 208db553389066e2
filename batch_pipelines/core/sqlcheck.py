"""Refuse SQL that is not a single read-only SELECT, by asking DuckDB's own parser.

Checks run on DuckDB's parse tree (``json_serialize_sql``), never on the text: exactly one
statement, of type SELECT, whose tree holds no data-changing query node (DuckDB accepts
``with d as (delete ... returning *) select ...``), no table function outside a short
allow-list (``read_csv('/etc/passwd')``, ``glob``, ``query`` ...), and no table name that is
really a file path or URL (DuckDB's replacement scans read ``from '/tmp/x.csv'`` as a file).
A query whose tree cannot be serialised is refused: the check fails closed.
"""

from __future__ import annotations

import json
import re

import duckdb

SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "values"})
# Query nodes that only read. Anything else (DELETE_QUERY_NODE, INSERT_QUERY_NODE,
# UPDATE_QUERY_NODE, MERGE_INTO ...) is a write hidden inside a SELECT, e.g. in a CTE.
_READ_ONLY_NODES = frozenset(
    {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
)
# A table reference that is a plain name; anything else (a path, a URL, a glob) would be
# resolved by a replacement scan that reads a file.
_PLAIN_NAME = re.compile(r"^[^\W\d][\w$]*$")


def ensure_read_only_select(query: str) -> str:
    """Raise ``ValueError`` unless ``query`` is exactly one read-only SELECT statement
    (WITH/VALUES and set operations included) that reads only tables and views by name.

    Returns the statement's text without a trailing semicolon or comment, ready to be
    wrapped as a subquery (``copy (<query>) to ...``).
    """
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
        statement = statements[0]
        if statement.type != duckdb.StatementType.SELECT:
            raise ValueError(
                f"query must be a read-only SELECT, found a {statement.type.name} statement"
            )
        try:
            tree = con.execute("select json_serialize_sql(?::varchar)", [query]).fetchone()[0]
            parsed = json.loads(tree)
        except (duckdb.Error, ValueError, TypeError) as exc:
            raise ValueError(f"query cannot be checked: {str(exc).splitlines()[0]}") from None
        if not isinstance(parsed, dict) or parsed.get("error"):
            detail = parsed.get("error_message") if isinstance(parsed, dict) else None
            raise ValueError(
                "query uses syntax that cannot be checked as a read-only SELECT"
                + (f": {detail}" if detail else "")
            )
        problems = _inspect(parsed)
        if problems:
            raise ValueError(problems[0])
        return _without_terminator(query)
    finally:
        con.close()


def ensure_predicate(predicate: str) -> str:
    """Raise ``ValueError`` unless ``predicate`` is one read-only SQL expression (a per-row
    condition such as ``bill_length_mm > 0 and species is not null``), not a statement.

    Returns it ready to be wrapped in parentheses (``where not (<predicate>)``)."""
    if not isinstance(predicate, str) or not predicate.strip():
        raise ValueError("predicate must be a non-empty SQL expression")
    try:
        duckdb.SQLExpression(predicate)
    except duckdb.Error as exc:
        raise ValueError(
            f"predicate is not one SQL expression: {str(exc).splitlines()[0]}"
        ) from None
    try:
        ensure_read_only_select(f"select count(*) from t where not (\n{predicate}\n)")
    except ValueError as exc:
        raise ValueError(f"predicate: {exc}") from None
    return predicate.strip() + "\n"


def _without_terminator(query: str) -> str:
    """The query without a trailing ``;`` (and any comment after it), so that it can be
    wrapped in parentheses; a comment that ends the query is kept but ends with a newline."""
    tokens = duckdb.tokenize(query)
    while tokens and tokens[-1][1] == duckdb.token_type.comment:
        tokens.pop()
    if tokens and tokens[-1][1] == duckdb.token_type.operator and query[tokens[-1][0]] == ";":
        query = query[: tokens[-1][0]]
    return query.strip() + "\n"


def _inspect(tree: object) -> list[str]:
    """Problems found in a serialised parse tree, most telling first."""
    writes: set[str] = set()
    functions: set[str] = set()
    files: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            kind = node.get("type")
            if isinstance(kind, str):
                if kind.endswith("_NODE") and kind not in _READ_ONLY_NODES:
                    writes.add(kind.removesuffix("_NODE").removesuffix("_QUERY"))
                elif kind == "TABLE_FUNCTION":
                    fn = node.get("function")
                    name = fn.get("function_name") if isinstance(fn, dict) else None
                    functions.add(str(name or "?").lower())
                elif kind == "BASE_TABLE":
                    for part in ("catalog_name", "schema_name", "table_name"):
                        value = node.get(part)
                        if value and not _PLAIN_NAME.match(str(value)):
                            files.add(str(value))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    problems = []
    if writes:
        problems.append(
            f"query must be read-only: it contains {', '.join(sorted(writes))} "
            "(a data-changing statement inside the SELECT)"
        )
    bad = sorted(functions - SAFE_TABLE_FUNCTIONS)
    if bad:
        problems.append(f"query may not call table function(s): {', '.join(bad)}")
    if files:
        names = ", ".join(repr(f) for f in sorted(files))
        problems.append(f"query may only read tables and views by name, not files or URLs: {names}")
    return problems


# Statements that reach outside the warehouse: files, other databases, extensions.
_SIDE_EFFECTS = frozenset(
    {"COPY", "COPY_DATABASE", "EXPORT", "ATTACH", "DETACH", "LOAD", "EXTENSION"}
)


def refuse_side_effects(query: str) -> None:
    """Raise ``ValueError`` if any statement of ``query`` would write a file, attach a
    database or install or load an extension. A query that does not parse passes: running it
    gives DuckDB's own message."""
    con = duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(query)
    except duckdb.Error:
        return
    finally:
        con.close()
    for statement in statements:
        if statement.type.name in _SIDE_EFFECTS:
            words = statement.query.split()
            verb = words[0].upper() if words else statement.type.name
            if verb == "FORCE" and len(words) > 1:
                verb = words[1].upper()
            raise ValueError(
                f"the warehouse is read-only here: {verb} statements are not allowed "
                "(write files with the export operation)"
            )
