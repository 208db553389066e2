"""The warehouse schema as an ordered list of named migrations.

Migrations live in :mod:`batch_pipelines.core.migrations`, one module each, applied in name order,
once per warehouse, each in its own transaction, and recorded in ``schema_migrations`` (the
schema version table). To change the schema, add a module with the next number; never edit
one that has shipped. Timestamps are UTC ``TIMESTAMP`` values.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re

import duckdb

from batch_pipelines.core import lake
from batch_pipelines.core import migrations as _migrations_pkg

SCHEMA_TABLE = "schema_migrations"
_CREATES = re.compile(
    r"\bcreate\s+(?:or\s+replace\s+)?(?:unique\s+)?(table|view|sequence|macro|index)\s+"
    r"(?:if\s+not\s+exists\s+)?([A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE,
)


def all_migrations() -> list[tuple[str, list[str]]]:
    found = []
    for info in sorted(pkgutil.iter_modules(_migrations_pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("m"):
            continue
        module = importlib.import_module(f"{_migrations_pkg.__name__}.{info.name}")
        found.append((module.ID, list(module.STATEMENTS)))
    ids = [m[0] for m in found]
    if len(ids) != len(set(ids)):
        raise RuntimeError(f"duplicate migration ids: {ids}")
    return found


@functools.cache
def owned_relations() -> dict[str, str]:
    """Every name the schema creates (lower case) and what it is: ``table``, ``view``,
    ``sequence``, ``macro`` or ``index``; read from the migrations, so a new one is covered
    as soon as it exists."""
    owned = {SCHEMA_TABLE: "table"}
    for _, statements in all_migrations():
        for statement in statements:
            for kind, name in _CREATES.findall(statement):
                owned.setdefault(name.lower(), kind.lower())
    return owned


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this warehouse has not seen; returns the ids applied. On a lake
    each statement is first rewritten by :func:`lake.lake_statements`; a migration another
    process applied meanwhile makes this one's commit conflict, and the caller runs
    ``migrate`` again (it then finds the migration done)."""
    on_lake = lake.is_lake(con)
    create = (
        f"create table if not exists {SCHEMA_TABLE} "
        "(id varchar primary key, applied_at timestamp default current_timestamp)"
    )
    if on_lake:
        if not pending_migrations(con):
            return []
        # Every commit to a lake costs round trips to its catalog: all in one transaction.
        con.execute("begin")
    try:
        for statement in lake.lake_statements(create) if on_lake else [create]:
            con.execute(statement)
        applied = _apply(con, on_lake)
        if on_lake:
            con.execute("commit")
    except Exception:
        if on_lake:
            con.execute("rollback")
        raise
    return applied


def _apply(con: duckdb.DuckDBPyConnection, on_lake: bool) -> list[str]:
    done = {row[0] for row in con.execute("select id from schema_migrations").fetchall()}
    applied = []
    for migration_id, statements in all_migrations():
        if migration_id in done:
            continue
        if on_lake:
            for statement in statements:
                for sql in lake.lake_statements(statement):
                    con.execute(sql)
            con.execute("insert into schema_migrations (id) values (?)", [migration_id])
            applied.append(migration_id)
            continue
        con.execute("begin")
        try:
            for statement in statements:
                con.execute(statement)
            con.execute("insert into schema_migrations (id) values (?)", [migration_id])
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
        applied.append(migration_id)
    return applied


def pending_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The ids of the migrations this warehouse has not seen, read without writing."""
    try:
        done = {row[0] for row in con.execute("select id from schema_migrations").fetchall()}
    except duckdb.CatalogException:
        done = set()
    return [migration_id for migration_id, _ in all_migrations() if migration_id not in done]


def schema_version(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("select id from schema_migrations order by id").fetchall()]
