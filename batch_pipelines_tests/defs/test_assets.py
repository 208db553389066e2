"""Operation assets on a real (temporary) Dagster instance: a chunk run over a range of
dynamic partitions materializes each succeeded item as its own partition (with its metrics),
marks failed items' partitions failed, and a single partition can be re-run through the real
`dagster asset materialize` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, AssetPartitionStatus

from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.partitions import PARTITIONS
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.definitions import defs
from batch_pipelines_tests.conftest import REPO

KEY = AssetKey("import_items")


def test_range_run_materializes_each_item_partition(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "t"},
            "settings": {"chunk_size": 3, "max_retries": 0},
            "items": [
                {"id": "good1", "path": "data/samples/penguins_2007.csv"},
                {"id": "bad", "path": "data/samples/bad/empty.csv"},
                {"id": "good2", "path": "data/samples/penguins_2011.parquet"},
                {"id": "good3", "path": "data/samples/penguins_2010.ndjson"},
            ],
        },
        instance=instance,
    )
    keys = dict(env.sql("select item_id, partition_key from batch_items"))
    assert instance.get_dynamic_partitions(PARTITIONS["import"].name) == [
        keys["good1"],
        keys["bad"],
        keys["good2"],
        keys["good3"],
    ]
    batch = run_batch_in_process(batch_id, instance, defs)
    assert batch["status"] == "completed_with_errors"
    status = instance.get_status_by_partition(KEY, list(keys.values()), PARTITIONS["import"])
    assert status[keys["good1"]] == AssetPartitionStatus.MATERIALIZED
    assert status[keys["good2"]] == AssetPartitionStatus.MATERIALIZED
    assert status[keys["good3"]] == AssetPartitionStatus.MATERIALIZED
    assert status[keys["bad"]] == AssetPartitionStatus.FAILED
    event = instance.get_latest_materialization_event(KEY)
    assert event.asset_materialization.partition == keys["good3"]
    md = event.asset_materialization.metadata
    assert md["rows"].value == 90 and md["item_id"].value == "good3"
    assert md["batch_id"].value == batch_id and md["status"].value == "succeeded"
    # Two chunk runs, each tagged with its batch and range.
    runs = instance.get_runs()
    assert len(runs) == 2
    assert {r.tags["batch/chunk"] for r in runs} == {"0", "1"}
    assert all(r.tags["batch/id"] == batch_id for r in runs)


def test_dagster_asset_materialize_reruns_one_item(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "t", "skip_identical": False},
            "items": [{"id": "y2007", "path": "data/samples/penguins_2007.csv"}],
        },
        instance=instance,
    )
    run_batch_in_process(batch_id, instance, defs)
    key = env.sql("select partition_key from batch_items")[0][0]
    dagster = str(Path(sys.executable).with_name("dagster"))
    proc = subprocess.run(
        [
            dagster,
            "asset",
            "materialize",
            "-m",
            "batch_pipelines.definitions",
            "--select",
            "import_items",
            "--partition",
            key,
        ],
        env=env.environ(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert env.sql("select count(*) from t") == [(110,)]
    assert env.sql("select attempts, status from batch_items") == [(2, "succeeded")]
    assert env.sql("select count(*) from item_attempts") == [(2,)]
