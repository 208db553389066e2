"""What a manifest, a slow query, a busy or broken warehouse or a full disk does to the real
CLI: a clear one-line answer with the documented exit code, never a traceback, a wedge or a
silent overwrite."""

from __future__ import annotations

import base64
import gzip
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from batch_pipelines.core import warehouse
from batch_pipelines_tests.conftest import CLI
from batch_pipelines_tests.helpers import cli, cli_process

pytestmark = pytest.mark.e2e

SLOW_QUERY = "select count(*)::varchar as path from range(100000000) a, range(100000000) b"


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


# {item_id} in a target table


def test_item_id_tables_that_collide_are_refused_at_submit(samples: Path, env) -> None:  # noqa: ANN001
    items = [
        {"id": "a.b", "path": "data/samples/penguins_2007.csv"},
        {"id": "a-b", "path": "data/samples/penguins_2008.tsv"},
        {"id": "\U0001f642", "path": "data/samples/penguins_2009.json"},
        {"id": "\U0001f643", "path": "data/samples/penguins_2010.ndjson"},
        {"id": "Penguins", "path": "data/samples/penguins_2011.parquet"},
        {"id": "penguins", "path": "data/samples/penguins_2012_messy.csv"},
    ]
    (env.data / "items.json").write_text(json.dumps(items))
    p = cli(
        env,
        "submit",
        "import",
        "--items-json",
        str(env.data / "items.json"),
        "--option",
        "target_table=raw_{item_id}",
        "--wait",
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert "options.target_table" in p.stderr
    for pair in (("a.b", "a-b"), ("\U0001f642", "\U0001f643"), ("Penguins", "penguins")):
        assert any(pair[0] in line and pair[1] in line for line in p.stderr.splitlines()), (
            pair,
            p.stderr,
        )
    assert env.sql("select count(*) from batches") == [(0,)]

    # Ids that give distinct tables are fine.
    p = cli(
        env,
        "submit",
        "import",
        "--item",
        json.dumps(items[0]),
        "--item",
        json.dumps(items[2]),
        "--option",
        "target_table=raw_{item_id}",
        "--wait",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    tables = {r[0] for r in env.sql("select table_name from duckdb_tables()")}
    assert {"raw_a_b", "raw_item"} <= tables


# Slow reads, busy and broken warehouses


def test_manifest_sql_is_bounded_by_the_query_timeout(env) -> None:  # noqa: ANN001
    manifest = env.data / "slow.yaml"
    manifest.write_text(
        f"operation: import\noptions: {{target_table: t}}\nitems_from: {{sql: '{SLOW_QUERY}'}}\n"
    )
    started = time.monotonic()
    p = cli(env, "submit", str(manifest), timeout=90, BATCH_PIPELINES_QUERY_TIMEOUT_S="2")
    assert time.monotonic() - started < 60
    assert p.returncode == 2, p.stdout + p.stderr
    assert "items_from.sql" in p.stderr and "BATCH_PIPELINES_QUERY_TIMEOUT_S" in p.stderr


def test_sql_command_is_bounded_by_the_query_timeout(env) -> None:  # noqa: ANN001
    p = cli(env, "sql", SLOW_QUERY, timeout=90, BATCH_PIPELINES_QUERY_TIMEOUT_S="2")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "BATCH_PIPELINES_QUERY_TIMEOUT_S" in one_line_error(p)


def test_export_queries_are_bounded_by_the_query_timeout(env) -> None:  # noqa: ANN001
    slow = {"id": "slow", "query": SLOW_QUERY.replace("::varchar as path", "")}
    started = time.monotonic()
    p = cli(
        env,
        "submit",
        "export",
        "--item",
        json.dumps(slow),
        "--max-retries",
        "0",
        "--item-timeout",
        "3600",
        "--in-process",
        timeout=90,
        BATCH_PIPELINES_QUERY_TIMEOUT_S="2",
    )
    assert time.monotonic() - started < 60
    assert p.returncode == 1, p.stdout + p.stderr
    [(category, error)] = env.sql("select error_category, error from batch_items")
    assert category == "timeout" and "BATCH_PIPELINES_QUERY_TIMEOUT_S" in error, error


def test_a_long_read_blocks_neither_new_readers_nor_gives_writers_a_traceback(
    samples: Path,
    env,  # noqa: ANN001
) -> None:
    assert env.sql("select count(*) from batches") == [(0,)]  # the warehouse exists, migrated
    with warehouse.connect(env.warehouse, read_only=True):  # a long read in another process
        p = cli_process(env, "list", "--json", BATCH_PIPELINES_LOCK_TIMEOUT_S="3")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == []
        p = cli_process(
            env, "sql", "select 42 as n", "--format", "json", BATCH_PIPELINES_LOCK_TIMEOUT_S="3"
        )
        assert p.returncode == 0 and json.loads(p.stdout) == [{"n": 42}], p.stderr

        p = cli_process(
            env,
            "submit",
            "import",
            "--items",
            "data/samples/penguins_2007.csv",
            "--option",
            "target_table=t",
            BATCH_PIPELINES_LOCK_TIMEOUT_S="3",
        )
        assert p.returncode == 1, p.stdout + p.stderr
        assert "locked by another process" in one_line_error(p)
    assert env.sql("select count(*) from batches") == [(0,)]


def test_a_corrupt_warehouse_is_one_line(env) -> None:  # noqa: ANN001
    env.warehouse.write_bytes(b"this is not a database" * 1000)
    for args in (("list",), ("status", "import-20260101-000000-abcdef"), ("sql", "select 1")):
        p = cli(env, *args)
        assert p.returncode == 1, p.stdout + p.stderr
        line = one_line_error(p)
        assert str(env.warehouse) in line and "not a valid DuckDB database" in line


# The first 4 KiB (the main header) of a database file written by DuckDB 2.0.1, as the
# project's releases on DuckDB 2.0 left data/warehouse.duckdb: this DuckDB refuses it there.
DUCKDB_2_0_1_HEADER = gzip.decompress(
    base64.b64decode(
        "H4sIAAAAAAACAys63O/Hnq3U5hLq7P2cmYEoUGakZ6BniFveIsXcwtDQJNXSAL85J0LmP7XYs/DW5ZtO62KM"
        "fXMYRsEoGAWjYBSMglEwCkbBKBgFo2AUjIJRQBMAAKS9pyUAEAAA"
    )
)


def test_a_warehouse_written_by_a_newer_duckdb_says_who_wrote_it_and_the_way_over(env) -> None:  # noqa: ANN001
    env.warehouse.write_bytes(DUCKDB_2_0_1_HEADER)
    for args in (("list",), ("sql", "select 1")):
        p = cli(env, *args)
        assert p.returncode == 1, p.stdout + p.stderr
        line = one_line_error(p)
        assert str(env.warehouse) in line, line
        assert "written by DuckDB v2.0.1 (storage version 999)" in line, line
        assert f"DuckDB {duckdb.__version__} cannot read" in line, line
        assert "EXPORT DATABASE" in line and "A warehouse written by a newer DuckDB" in line
    # Left as it was: not migrated over, not replaced by a fresh database.
    assert env.warehouse.read_bytes() == DUCKDB_2_0_1_HEADER


# Lower-impact cases


def test_items_csv_is_read_only_up_to_the_item_limit(env) -> None:  # noqa: ANN001
    listing = env.data / "many.csv"
    with listing.open("wb") as fh:
        fh.write(b"path\n")
        fh.write(b"data/samples/penguins_2007.csv\n" * 1000)
        fh.write(b"\xff\xfe not utf-8 past the limit\n")
    p = cli(
        env,
        "submit",
        "import",
        "--items-csv",
        str(listing),
        "--option",
        "target_table=t",
        BATCH_PIPELINES_MAX_ITEMS="10",
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "more than the maximum of 10" in p.stderr, p.stderr
    assert "codec" not in p.stderr


@pytest.mark.parametrize(
    ("query", "what"),
    [
        ("copy (select 42) to '{tmp}/stolen.csv'", "COPY"),
        ("export database '{tmp}/dump'", "EXPORT"),
        ("attach '{tmp}/other.duckdb' as other", "ATTACH"),
        ("install httpfs", "INSTALL"),
        ("load httpfs", "LOAD"),
        ("select 1; copy (select 42) to '{tmp}/stolen.csv'", "COPY"),
    ],
)
def test_sql_refuses_statements_with_side_effects(env, query: str, what: str) -> None:  # noqa: ANN001
    assert env.sql("select 1") == [(1,)]
    p = cli(env, "sql", query.format(tmp=env.root), timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert what in p.stderr and "read-only" in p.stderr
    assert sorted(p.name for p in env.root.iterdir()) == ["dagster_home", "data"]


def test_sql_cannot_read_files_outside_the_warehouse(env) -> None:  # noqa: ANN001
    secret = env.root / "secret.csv"
    secret.write_text("password\nhunter2\n")
    p = cli(env, "sql", f"select * from read_csv('{secret}')")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "hunter2" not in p.stdout


def _can_mount_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_private_tmpfs(), reason="needs unshare and tmpfs mounts")
def test_a_full_disk_is_a_transient_error(env) -> None:  # noqa: ANN001
    big = env.data / "big.csv"
    with big.open("w") as fh:
        fh.write("id,blob\n")
        for i in range(60_000):
            fh.write(f"{i},{secrets.token_hex(32)}\n")
    staging = env.data / "staging"
    staging.mkdir()
    command = [
        CLI,
        "submit",
        "import",
        "--items",
        str(big),
        "--option",
        "target_table=big",
        # The staged load writes the file's rows under staging/, the full disk here (the
        # direct load would read the file straight into the warehouse).
        "--option",
        "load=staged",
        "--max-retries",
        "0",
        "--in-process",
        "--json",
    ]
    script = f'mount -t tmpfs -o size=512k tmpfs "{staging}" && exec "$@"'
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *command],
        env={**env.environ(), "COLUMNS": "200"},
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    rows = env.sql("select error_category, error from batch_items")
    assert len(rows) == 1
    category, error = rows[0]
    assert "No space left on device" in error, error
    assert category == "transient", rows
    assert os.path.ismount(staging) is False
