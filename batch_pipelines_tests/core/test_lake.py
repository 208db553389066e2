"""The DuckLake warehouse's pure parts: the migration rewrite every lake depends on, the
setting's parsing, the missing-extension message and the conflict retry.

Guards against: a migration statement a lake refuses (a key, an index, a sequence, a boolean
default in ALTER) reaching it; a statement changed on its way that should not be (the rewrite
touching a string or a view); a missing extension package failing with DuckDB's download
message instead of naming the package; a conflict retried forever or another error retried.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pytest

from batch_pipelines.core import config, lake
from batch_pipelines.core.errors import WarehouseError
from batch_pipelines.core.schema import all_migrations


def test_lake_statements_strip_what_a_lake_cannot_hold() -> None:
    assert lake.lake_statements("create sequence batch_events_seq") == []
    assert lake.lake_statements("create index i on batch_items (partition_key)") == []
    assert lake.lake_statements("CREATE UNIQUE INDEX u ON t (a)") == []
    (table,) = lake.lake_statements(
        "create table t (\n  id bigint primary key default nextval('t_seq'),\n"
        "  k varchar unique,\n  n integer not null default 0,\n  primary key (id, k)\n)"
    )
    assert "primary key" not in table.lower() and "unique" not in table.lower()
    assert "nextval" not in table and lake.LAKE_ID_DEFAULT in table
    assert "n integer not null default 0" in table
    (alter,) = lake.lake_statements("alter table batches add column stopped boolean default false")
    assert alter == "alter table batches add column stopped boolean default 'false'"
    view = "create view v as select 'primary key' as note, unique_count from t"
    assert lake.lake_statements(view) == [view]


def test_every_shipped_migration_runs_on_a_lake(tmp_path: Path) -> None:
    """The rewritten migrations, applied to a SQLite-catalog lake: every relation is there,
    and none carries a constraint or sequence."""
    spec = lake.LakeSpec("sqlite", str(tmp_path / "cat.sqlite"), str(tmp_path / "files") + "/")
    con = lake.open_lake(spec)
    try:
        from batch_pipelines.core.schema import migrate, owned_relations

        applied = migrate(con)
        assert applied == [m[0] for m in all_migrations()]
        assert migrate(con) == []  # once
        have = {
            r[0]
            for r in con.execute(
                "select table_name from information_schema.tables where table_catalog = 'lake'"
            ).fetchall()
        }
        wanted = {n for n, kind in owned_relations().items() if kind in ("table", "view")}
        assert wanted <= have, wanted - have
        con.execute("insert into batch_events (event, \"at\") values ('a', now()), ('b', now())")
        ids = [r[0] for r in con.execute("select event_id from batch_events").fetchall()]
        assert len(set(ids)) == 2 and all(i > 1_700_000_000_000_000_000 for i in ids)
        con.execute("insert into batches (batch_id, operation, name, status, priority, "
                    "total_items, created_at) values ('b', 'import', 'n', 'queued', 'normal', "
                    "0, now())")  # fmt: skip
        assert con.execute("select stopped, paused from batches").fetchall() == [(False, False)]
    finally:
        con.close()


def test_parse_and_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_PIPELINES_DATA", str(tmp_path))
    monkeypatch.delenv("BATCH_PIPELINES_LAKE_DATA_PATH", raising=False)
    spec = lake.parse("ducklake:postgres:host=db port=5432 dbname=lake password=s3cret")
    assert spec.catalog == "postgres" and spec.target.startswith("host=db")
    assert spec.data_path == f"{tmp_path / 'lake'}/"
    assert "s3cret" not in str(spec)
    monkeypatch.setenv("BATCH_PIPELINES_LAKE_DATA_PATH", "s3://bucket/lake")
    assert lake.parse("ducklake:sqlite:x.sqlite").data_path == "s3://bucket/lake/"
    with pytest.raises(ValueError, match="BATCH_PIPELINES_WAREHOUSE"):
        lake.parse("ducklake:mysql:db")
    monkeypatch.setenv("BATCH_PIPELINES_WAREHOUSE", "ducklake:sqlite:/x/cat.sqlite")
    assert str(config.get_paths().warehouse) == "ducklake:sqlite:/x/cat.sqlite"


def test_a_missing_extension_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb_extension_ducklake", None)  # as if not installed
    with pytest.raises(WarehouseError) as err:
        lake.extension_file("ducklake")
    assert "duckdb-extension-ducklake" in str(err.value)
    assert "pip install 'batch_pipelines[lake]'" in str(err.value)


def test_retry_is_bounded_in_time_and_only_for_conflicts(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]  # a fake clock: sleeping advances it, nothing else does
    monkeypatch.setattr(lake.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lake.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    calls = []

    def conflicting() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise duckdb.TransactionException("Transaction conflict - attempting to insert")
        return "done"

    before = lake.COUNTER.retries
    assert lake.retry(conflicting) == "done" and len(calls) == 3
    assert lake.COUNTER.retries == before + 2

    def always() -> None:
        calls.append(1)
        raise duckdb.TransactionException("Transaction conflict")

    calls.clear()
    start = clock[0]
    with pytest.raises(duckdb.TransactionException):
        lake.retry(always, timeout_s=30)
    # Tried again until the 30 s were over, never sleeping past them; backoff capped at 1 s.
    assert clock[0] - start == pytest.approx(30)
    assert len(calls) > 30

    monkeypatch.setenv("BATCH_PIPELINES_LOCK_TIMEOUT_S", "7")  # the default: the lock timeout
    calls.clear()
    start = clock[0]
    with pytest.raises(duckdb.TransactionException):
        lake.retry(always)
    assert clock[0] - start == pytest.approx(7)

    def other() -> None:
        calls.append(1)
        raise duckdb.CatalogException("Table with name x does not exist")

    calls.clear()
    with pytest.raises(duckdb.CatalogException):
        lake.retry(other)
    assert len(calls) == 1
