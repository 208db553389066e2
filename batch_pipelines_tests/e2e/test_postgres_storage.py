"""Postgres instance storage (``batch_pipelines/deploy/dagster.postgres.yaml``) against a real
PostgreSQL server started here on 127.0.0.1 with a temporary data directory.

Guards against a documented scale-out setup that does not work: the storage block failing to
load, dynamic partitions or materializations that do not reach Postgres, concurrent batches
(several CLI processes at once) that lose or duplicate partitions or runs there, and results
that differ from the default SQLite storage for the same batches. The server is always
stopped, even when the test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch_pipelines.app.devpostgres import postgres_server
from batch_pipelines.app.devserver import Env, dagster_dev, env_in_process, make_env
from batch_pipelines_tests.conftest import CLI, REPO, SAMPLES

pytestmark = pytest.mark.e2e

POSTGRES_YAML = REPO / "batch_pipelines" / "deploy" / "dagster.postgres.yaml"


# ------------------------------------------------------------------------- the batches

MANIFESTS: dict[str, dict[str, Any]] = {
    "import_ok": {
        "operation": "import",
        "name": "pg import ok",
        "options": {"target_table": "penguins_a"},
        "settings": {"chunk_size": 2},
        "items_from": {"glob": "data/samples/penguins_20*"},
    },
    "import_mixed": {
        "operation": "import",
        "name": "pg import mixed",
        "options": {"target_table": "penguins_b"},
        "settings": {"chunk_size": 3, "max_retries": 0},
        "items": [
            {"id": "good", "path": "data/samples/penguins_2010.ndjson"},
            {"id": "empty", "path": "data/samples/bad/empty.csv"},
            {"id": "garbage", "path": "data/samples/bad/garbage.bin"},
            {"id": "truncated", "path": "data/samples/bad/truncated.json"},
        ],
    },
    "validate": {
        "operation": "validate",
        "name": "pg validate",
        "options": {"rules": [{"type": "not_null", "column": "species"}]},
        "settings": {"chunk_size": 1},
        "items": [
            {"id": "p2007", "path": "data/samples/penguins_2007.csv"},
            {"id": "p2008", "path": "data/samples/penguins_2008.tsv"},
        ],
    },
    "annotate": {
        "operation": "annotate",
        "name": "pg annotate",
        "settings": {"chunk_size": 3},
        "items_from": {"glob": "data/samples/texts/*"},
    },
}


def _prepare(env: Env) -> None:
    if not (env.data / "samples").exists():
        shutil.copytree(SAMPLES, env.data / "samples")


def _submit_concurrently(env: Env) -> None:
    """All batches at once, each by its own ``batch-pipelines submit --in-process``."""
    from batch_pipelines.operations import REGISTRY

    procs = {}
    for name, manifest in MANIFESTS.items():
        if manifest["operation"] not in REGISTRY:
            continue
        path = env.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        procs[name] = subprocess.Popen(
            [CLI, "submit", path.name, "--in-process", "--json"],
            env=env.environ(),
            cwd=env.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        # 1 = the batch ended with failed items (import_mixed), anything else is a bug.
        assert proc.returncode in (0, 1), f"{name}: exit {proc.returncode}\n{out}\n{err}"


def _summary(env: Env) -> dict[str, Any]:
    """What a user sees of the batches: ledger counts, partitions, materializations, runs."""
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

    with env_in_process(env):
        batches = env.sql(
            "select name, operation, status, total_items, succeeded_items, failed_items, "
            "skipped_items, chunk_count from batches order by name"
        )
        items = env.sql(
            "select b.name, i.status, count(*) from batch_items i join batches b using "
            "(batch_id) group by all order by all"
        )
        instance = DagsterInstance.get()
        try:
            ops = sorted({b[1] for b in batches})
            partitions = {op: len(instance.get_dynamic_partitions(f"{op}_items")) for op in ops}
            materialized = {
                op: len(instance.get_materialized_partitions(AssetKey(f"{op}_items"))) for op in ops
            }
            runs = {
                (op, status.value): len(
                    instance.get_runs(filters=RunsFilter(job_name=f"{op}_job", statuses=[status]))
                )
                for op in ops
                for status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)
            }
            storage = type(instance.run_storage).__name__
        finally:
            instance.dispose()
    return {
        "batches": batches,
        "items": items,
        "partitions": partitions,
        "materialized": materialized,
        "runs": runs,
        "storage": storage,
    }


def test_concurrent_batches_on_postgres_match_sqlite(env: Env, tmp_path: Path) -> None:
    # The same batches, four CLI processes at once, on SQLite (the default) ...
    _prepare(env)
    _submit_concurrently(env)
    on_sqlite = _summary(env)
    assert on_sqlite["storage"] == "SqliteRunStorage"
    assert on_sqlite["batches"], "no batch ran"
    by_name = {b[0]: b for b in on_sqlite["batches"]}
    assert by_name["pg import ok"][2:5] == ("completed", 6, 6)
    assert by_name["pg import mixed"][2:6] == ("completed_with_errors", 4, 1, 3)

    # ... and on Postgres, configured exactly as docs/scaling-out.md and docs/lake.md say:
    # Dagster's storage and the warehouse's lake catalog on the same server.
    with postgres_server() as pg, pytest.MonkeyPatch.context() as mp:
        for k, v in pg.environ().items():
            mp.setenv(k, v)
        pg_env = make_env(tmp_path / "pg")
        # The warehouse on a DuckLake whose catalog is a database of the same server.
        pg.create_database("lake")
        pg_env.lake = f"ducklake:postgres:{pg.conninfo('lake')}"
        _prepare(pg_env)
        (pg_env.dagster_home / "dagster.yaml").write_text(
            (REPO / "dagster.yaml").read_text() + "\n" + POSTGRES_YAML.read_text()
        )
        _submit_concurrently(pg_env)
        on_postgres = _summary(pg_env)

        assert on_postgres["storage"] == "PostgresRunStorage"
        assert {k: v for k, v in on_postgres.items() if k != "storage"} == {
            k: v for k, v in on_sqlite.items() if k != "storage"
        }
        # Nothing fell back to SQLite files under DAGSTER_HOME, nor to a DuckDB file.
        assert not list(pg_env.dagster_home.rglob("*.db"))
        assert not list(pg_env.data.rglob("*.duckdb"))
        # The ledger's tables are in the lake's catalog, their rows in its data files.
        with contextlib.closing(pg.connect("lake")) as con, con.cursor() as cur:
            cur.execute("select table_name from ducklake_table where end_snapshot is null")
            assert {"batches", "batch_items", "penguins_a"} <= {r[0] for r in cur.fetchall()}

        # The rows really are in Postgres.
        n_keys = sum(on_postgres["partitions"].values())
        assert pg.query("select count(*) from dynamic_partitions") == [(n_keys,)]
        n_mat = pg.query(
            "select count(distinct (asset_key, partition)) from event_logs "
            "where dagster_event_type = 'ASSET_MATERIALIZATION'"
        )[0][0]
        assert n_mat == sum(on_postgres["materialized"].values())
        n_runs = pg.query("select count(*) from runs")[0][0]
        assert n_runs == sum(on_postgres["runs"].values())

        run_ids = {row[0] for row in pg.query("select run_id from runs")}

        # The UI and daemon start on the same storage and see those runs (the daemon may add
        # report runs for the finished batches at once: compare the runs that were there).
        with dagster_dev(pg_env, dagster_yaml=yaml.safe_load(POSTGRES_YAML.read_text())) as dev:
            runs = dev.graphql("{ runsOrError { ... on Runs { results { runId } } } }")
            seen = {r["runId"] for r in runs["runsOrError"]["results"]}
            assert run_ids <= seen, run_ids - seen
