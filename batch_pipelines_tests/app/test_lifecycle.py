"""A batch's later life, in this process: rollback puts tables, rows and files back as they
were (idempotent, and it completes after a crash halfway), rollback_on_failure and cancel
--rollback do it by themselves, delete removes the batch, its partitions and its writes, and
the launchpad's batch_control job does the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from batch_pipelines.app import lifecycle
from batch_pipelines.app.control import ControlError, cancel_batch
from batch_pipelines.app.queries import deleted_record, get_batch
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.core.diff import diff_batches, record_diff
from batch_pipelines.core.keys import partitions_def_name
from batch_pipelines.definitions import defs
from batch_pipelines.operations import REGISTRY
from batch_pipelines_tests.helpers import import_penguins, run_batch


def rows(sql: str) -> list[tuple]:
    with warehouse.connect(read_only=True) as con:
        return con.execute(sql).fetchall()


def events(batch_id: str) -> list[str]:
    return [
        r[0]
        for r in rows(f"select event from batch_events where batch_id = '{batch_id}' order by 1")
    ]


@pytest.mark.usefixtures("any_env")  # and again on a lake
def test_rollback_restores_replaced_upserted_appended_and_created_tables(
    env, samples, instance
) -> None:  # noqa: ANN001
    base = import_penguins(instance, table="penguins")
    before = rows("select * from penguins order by all")
    replace = run_batch(
        {
            "operation": "transform",
            "items": [
                {
                    "id": "shrink",
                    "source": "penguins",
                    "target": "penguins",
                    "sql": "select * from source where year = 2007",
                },
                {
                    "id": "new",
                    "source": "penguins",
                    "target": "fresh",
                    "sql": "select species from source",
                },
            ],
        },
        instance,
    )
    assert replace["status"] == "completed"
    appended = import_penguins(
        instance,
        table="penguins",
        items=[{"id": "p2009", "path": "data/samples/penguins_2009.json"}],
    )
    after_append = rows("select count(*) from penguins")[0][0]
    assert after_append > rows("select count(*) from penguins where year = 2007")[0][0]

    # The append is undone by its lineage rows: the table is the transform's result again.
    result = lifecycle.rollback_batch(appended, actor="test")
    assert result.status == "rolled_back"
    assert rows(f"select count(*) from penguins where _batch_id = '{appended}'") == [(0,)]
    assert get_batch(appended)["status"] == "rolled_back"
    assert "batch_rolled_back" in events(appended)

    # The transform is undone by its snapshot: penguins as the import left it, fresh gone.
    lifecycle.rollback_batch(replace["batch_id"], actor="test")
    assert rows("select * from penguins order by all") == before
    assert rows("select count(*) from duckdb_tables() where table_name = 'fresh'") == [(0,)]
    assert rows(f"select count(*) from transforms where batch_id = '{replace['batch_id']}'") == [
        (0,)
    ]
    assert rows("select count(*) from duckdb_tables() where schema_name = '_bp_snapshots'") == [
        (0,)
    ]
    # Idempotent: a second rollback changes nothing and says so.
    again = lifecycle.rollback_batch(replace["batch_id"], actor="test")
    assert "already rolled back" in again.message
    assert rows("select * from penguins order by all") == before
    # The import that created the table is undone too: the table goes.
    lifecycle.rollback_batch(base, actor="test")
    assert rows("select count(*) from duckdb_tables() where table_name = 'penguins'") == [(0,)]
    assert rows(f"select count(*) from import_files where batch_id = '{base}'") == [(0,)]


def test_rollback_of_upsert_and_files_survives_a_crash_halfway(
    env, samples, instance, monkeypatch
) -> None:  # noqa: ANN001
    import_penguins(instance, table="birds")
    with warehouse.connect() as con:
        con.execute("create table keyed as select 1 as k, 'old' as v union all select 2, 'old'")
    (env.data / "up.csv").write_text("k,v\n2,new\n3,new\n")
    upsert = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "keyed", "mode": "upsert", "key_columns": ["k"]},
            "items": [{"id": "up", "path": str(env.data / "up.csv")}],
        },
        instance,
    )
    assert rows("select k, v from keyed order by k") == [(1, "old"), (2, "new"), (3, "new")]
    export = run_batch(
        {"operation": "export", "items": [{"id": "out", "table": "birds", "format": "csv"}]},
        instance,
    )
    assert export["status"] == "completed", export
    (path,) = rows(f"select path from exports where batch_id = '{export['batch_id']}'")[0]
    assert Path(path).exists()  # noqa: PTH110

    # A crash after the snapshot is restored, before the rest: the batch is not rolled back,
    # and running rollback again completes it.
    spec = REGISTRY["import"]

    def crash(con, ctx):  # noqa: ANN001, ANN202
        raise RuntimeError("power cut")

    monkeypatch.setitem(REGISTRY, "import", dataclasses.replace(spec, undo=crash))
    with pytest.raises(RuntimeError):
        lifecycle.rollback_batch(upsert["batch_id"], actor="test")
    assert get_batch(upsert["batch_id"])["status"] == "completed"
    assert rows("select k, v from keyed order by k") == [(1, "old"), (2, "old")]
    monkeypatch.setitem(REGISTRY, "import", spec)
    lifecycle.rollback_batch(upsert["batch_id"], actor="test")
    assert get_batch(upsert["batch_id"])["status"] == "rolled_back"
    assert rows("select k, v from keyed order by k") == [(1, "old"), (2, "old")]
    assert events(upsert["batch_id"]).count("batch_rollback_started") == 2

    lifecycle.rollback_batch(export["batch_id"], actor="test")
    assert not Path(path).exists()
    assert not (env.data / "exports" / export["batch_id"]).exists()


def test_rollback_on_failure_and_cancel_rollback(env, samples, instance) -> None:  # noqa: ANN001
    with warehouse.connect() as con:
        con.execute("create table kept as select 1 as k")
    failed = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "kept", "mode": "replace"},
            "settings": {
                "continue_on_error": False,
                "rollback_on_failure": True,
                "max_retries": 0,
                "chunk_size": 1,
            },
            "items": [
                {"id": "good", "path": "data/samples/penguins_2007.csv"},
                {"id": "bad", "path": "data/samples/bad/empty.csv"},
            ],
        },
        instance,
    )
    assert get_batch(failed["batch_id"])["status"] == "rolled_back"
    # The good item had replaced the table before the bad one stopped the batch.
    assert rows(
        f"select item_id, status from batch_items where batch_id = '{failed['batch_id']}' "
        "order by seq"
    ) == [("good", "succeeded"), ("bad", "failed")]
    assert rows("select * from kept") == [(1,)]
    assert "batch_rolled_back" in events(failed["batch_id"])
    assert rows(
        "select actor from batch_events where event = 'batch_rolled_back' and "
        f"batch_id = '{failed['batch_id']}'"
    ) == [("rollback_on_failure",)]

    # cancel --rollback: the batch ends rolled_back, not cancelled.
    queued = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "t2"},
            "items": [{"path": "data/samples/penguins_2007.csv"}],
        },
        instance=instance,
    )
    result = cancel_batch(queued, instance=instance, actor="test", settle_s=0, rollback=True)
    assert result.status == "rolled_back"
    assert get_batch(queued)["status"] == "rolled_back"


@pytest.mark.usefixtures("any_env")  # and again on a lake
def test_delete_removes_batch_partitions_and_writes(env, samples, instance) -> None:  # noqa: ANN001
    keep = import_penguins(instance, table="kept_rows")
    gone = import_penguins(
        instance,
        table="kept_rows",
        items=[{"id": "p2009", "path": "data/samples/penguins_2009.json"}],
    )
    name = partitions_def_name("import")
    # An unfinished batch is refused, and nothing changes.
    queued = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "x"},
            "items": [{"path": "data/samples/penguins_2007.csv"}],
        },
        instance=instance,
    )
    with pytest.raises(ControlError, match="it is queued; cancel it first"):
        lifecycle.delete_batch(queued, instance=instance, actor="test")
    assert get_batch(queued) is not None
    assert len(instance.get_dynamic_partitions(name)) == 4

    diff = diff_batches(keep, gone)
    with warehouse.connect() as con:
        record_diff(con, diff, template=None)
    assert rows(f"select count(*) from run_metrics where batch_id = '{gone}'")[0][0] > 0

    result = lifecycle.delete_batch(gone, instance=instance, actor="test")
    assert "deleted" in result.message
    assert get_batch(gone) is None
    assert rows(f"select count(*) from batch_diffs where batch_b = '{gone}'") == [(0,)]
    for table in ("batch_items", "item_attempts", "import_files", "run_metrics"):
        assert rows(f"select count(*) from {table} where batch_id = '{gone}'") == [(0,)]
    assert rows(f"select count(*) from kept_rows where _batch_id = '{gone}'") == [(0,)]
    assert rows(f"select count(*) from kept_rows where _batch_id = '{keep}'")[0][0] > 0
    assert len(instance.get_dynamic_partitions(name)) == 3
    assert events(gone) == ["batch_deleted"]
    record = deleted_record(gone)
    assert record["actor"] == "test"
    assert record["detail"]["batch_items"] == 1 and record["detail"]["partitions"] == 1
    assert record["detail"]["undone"]["imported_rows"] > 0

    # --keep-data: the record goes, the rows stay.
    lifecycle.delete_batch(keep, keep_data=True, instance=instance, actor="test")
    assert get_batch(keep) is None
    assert rows(f"select count(*) from kept_rows where _batch_id = '{keep}'")[0][0] > 0


def test_batch_control_job_rolls_back_reprioritises_and_deletes(env, samples, instance) -> None:  # noqa: ANN001
    job = defs.resolve_job_def("batch_control")

    def control(**config) -> dict:  # noqa: ANN003
        result = job.execute_in_process(
            run_config={"ops": {"control_batch": {"config": config}}},
            instance=instance,
            raise_on_error=False,
        )
        return result

    done = import_penguins(instance, table="lp")
    assert control(batch_id=done, action="rollback").success
    assert get_batch(done)["status"] == "rolled_back"
    refused = control(batch_id=done, action="priority", level="high")
    assert not refused.success
    queued = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "lp2"},
            "items": [{"path": "data/samples/penguins_2007.csv"}],
        },
        instance=instance,
    )
    assert control(batch_id=queued, action="priority", level="critical").success
    assert get_batch(queued)["priority"] == "critical"
    assert control(action="pause", all=True).success
    with warehouse.connect(read_only=True) as con:
        assert ledger.get_hold(con) is not None
    assert control(action="resume", all=True).success
    assert control(batch_id=done, action="delete").success
    assert get_batch(done) is None
    actors = rows(
        "select distinct actor from batch_events where event in "
        "('batch_rolled_back', 'batch_priority_changed', 'batch_deleted', 'instance_held')"
    )
    assert all(a[0].startswith("launchpad:") for a in actors), actors


def test_a_batch_the_reaper_fails_rolls_back(env, samples, instance) -> None:  # noqa: ANN001
    from dagster import DagsterRunStatus

    from batch_pipelines.app.recovery import reap_dead_runs

    batch_id = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "r"},
            "settings": {"rollback_on_failure": True},
            "items": [{"id": "only", "path": "data/samples/penguins_2007.csv"}],
        },
        instance=instance,
    )
    with warehouse.connect() as con:
        ledger.mark_running(con, batch_id, ["only"], "gone-run")
    # The chunk failed three times already: the reaper gives up on the item.
    tags = {"batch/id": batch_id, "batch/chunk": "0"}
    for _ in range(3):
        instance.create_run_for_job(
            job_def=defs.resolve_job_def("import_job"), tags=tags, status=DagsterRunStatus.FAILURE
        )
    done = reap_dead_runs(instance)
    assert f"rolled back {batch_id} (rollback_on_failure)" in done
    assert get_batch(batch_id)["status"] == "rolled_back"
    assert rows(
        f"select actor from batch_events where batch_id = '{batch_id}' and "
        "event = 'batch_rolled_back'"
    ) == [("reaper",)]
