"""The code location loads with the expected jobs, sensors and assets, and the launchpad job
registers a batch (or fails with the manifest's problems) — guards against renames that
would break the UI, schedules and users' scripts."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance

from batch_pipelines.definitions import defs
from batch_pipelines.operations import OPERATION_NAMES, REGISTRY


def test_definitions_names() -> None:
    repo = defs.get_repository_def()
    jobs = {j.name for j in repo.get_all_jobs()}
    for name in REGISTRY:
        assert f"{name}_job" in jobs
    assert "submit_batch" in jobs
    sensors = {s.name for s in repo.sensor_defs}
    assert {"inbox_sensor", "batch_dispatcher"} <= sensors
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    for name in REGISTRY:
        assert f"{name}_items" in keys
    assert set(REGISTRY) <= set(OPERATION_NAMES)


def test_operation_asset_shape() -> None:
    import_items = defs.resolve_assets_def("import_items")
    assert import_items.partitions_def.name == "import_items"
    assert import_items.backfill_policy is not None
    job = defs.resolve_job_def("import_job")
    assert job.tags["batch/operation"] == "import"


def test_launchpad_job_registers_a_batch(samples: Path, env, instance: DagsterInstance) -> None:  # noqa: ANN001
    job = defs.resolve_job_def("submit_batch")
    config = {
        "ops": {
            "register_batch": {
                "config": {
                    "operation": "import",
                    "name": "from the launchpad",
                    "priority": "critical",
                    "options": {"target_table": "lp"},
                    "settings": {"chunk_size": 2},
                    "items": [
                        {"path": "data/samples/penguins_2007.csv"},
                        {"path": "data/samples/penguins_2008.tsv"},
                    ],
                }
            }
        }
    }
    result = job.execute_in_process(run_config=config, instance=instance)
    assert result.success
    batch_id = result.output_for_node("register_batch")
    assert env.sql(
        "select name, priority, source, total_items, status from batches where batch_id = ?",
        [batch_id],
    ) == [("from the launchpad", "critical", "launchpad", 2, "queued")]


def test_launchpad_job_rejects_bad_manifest(samples: Path, env, instance) -> None:  # noqa: ANN001
    job = defs.resolve_job_def("submit_batch")
    config = {
        "ops": {
            "register_batch": {
                "config": {"operation": "import", "options": {}, "items": [{"path": "/etc/passwd"}]}
            }
        }
    }
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    message = failure.event_specific_data.error.message
    assert "options.target_table" in message and "items[0].path" in message
    if env.warehouse.exists():
        assert env.sql("select count(*) from batches") == [(0,)]
