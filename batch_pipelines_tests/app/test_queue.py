"""The queue as a whole, through the dispatcher sensor: the queue cap refuses a submission
whole, re-prioritising retags queued runs and later launches, waiting chunks and queued runs
age up to high, and the global hold launches nothing (not even batches submitted during it)
until it is released, which resumes only the batches it paused."""

from __future__ import annotations

import time

import pytest
from dagster import build_sensor_context

from batch_pipelines.app import queue
from batch_pipelines.app.control import ControlError, pause_batch
from batch_pipelines.app.dispatch import (
    ChunkState,
    QueuedRun,
    aged_priority,
    plan_launches,
    plan_run_priorities,
)
from batch_pipelines.app.queries import get_batch
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import warehouse
from batch_pipelines.core.keys import partitions_def_name
from batch_pipelines.core.manifest import ManifestError, QueueFullError
from batch_pipelines.defs.sensors import batch_dispatcher
from batch_pipelines_tests.app.test_control import import_manifest, queue_run


def manifest(n: int, **over) -> dict:  # noqa: ANN003
    return {
        "operation": "import",
        "options": {"target_table": "t"},
        "items": [{"id": f"i{k}", "path": "data/samples/penguins_2007.csv"} for k in range(n)],
        "settings": {"chunk_size": 1},
        **over,
    }


def dispatch(instance):  # noqa: ANN001, ANN201
    return batch_dispatcher(build_sensor_context(instance=instance))


def test_queue_cap_refuses_the_whole_batch(env, samples, instance, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BATCH_PIPELINES_MAX_QUEUED_ITEMS", "3")
    first = submit_batch(manifest(2), instance=instance)
    with pytest.raises(QueueFullError, match=r"queue is full: 2 queued, limit 3") as exc:
        submit_batch(manifest(2), instance=instance)
    assert isinstance(exc.value, ManifestError) and exc.value.to_dict()["error"] == "queue is full"
    assert env.sql("select batch_id from batches") == [(first,)]
    assert len(instance.get_dynamic_partitions(partitions_def_name("import"))) == 2
    # One more item fits.
    submit_batch(manifest(1), instance=instance)


def test_priority_retags_queued_runs_and_later_launches(env, samples, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(import_manifest(priority="low"), instance=instance)
    run_id = queue_run(instance, batch_id, 0)
    assert instance.get_run_by_id(run_id).tags["dagster/priority"] == "0"  # queue_run: normal
    result = queue.change_priority(batch_id, "critical", instance=instance, actor="test")
    assert "low -> critical; 1 queued run(s) retagged" in result.message
    assert instance.get_run_by_id(run_id).tags["dagster/priority"] == "20"
    assert get_batch(batch_id)["priority"] == "critical"
    assert env.sql("select event, actor from batch_events where event like '%priority%'") == [
        ("batch_priority_changed", "test")
    ]
    launched = dispatch(instance).run_requests
    assert launched and {r.tags["dagster/priority"] for r in launched} == {"20"}
    with pytest.raises(ControlError, match="priority must be one of"):
        queue.change_priority(batch_id, "urgent", instance=instance)


def test_priority_of_a_finished_batch_is_refused(env, samples, instance) -> None:  # noqa: ANN001
    from batch_pipelines_tests.helpers import import_penguins

    done = import_penguins(instance)
    with pytest.raises(ControlError, match="it is completed"):
        queue.change_priority(done, "high", instance=instance)


def test_aging_raises_waiting_chunks_one_level_per_interval_up_to_high() -> None:
    assert aged_priority("low", 599, 600) == "low"
    assert aged_priority("low", 600, 600) == "normal"
    assert aged_priority("low", 1300, 600) == "high"
    assert aged_priority("low", 99_999, 600) == "high"
    assert aged_priority("critical", 99_999, 600) == "critical"
    assert aged_priority("low", 99_999, None) == "low"

    def chunk(batch: str, priority: str, waiting: float) -> ChunkState:
        return ChunkState(batch, "import", priority, 0, "a", "b", 1, waiting_s=waiting)

    # An old low batch overtakes a fresh normal one, and its run carries the aged priority.
    launches = plan_launches(
        [chunk("a-fresh", "normal", 0), chunk("b-old", "low", 1300)], [], aging_s=600
    )
    assert [(x.batch_id, x.tags["dagster/priority"]) for x in launches] == [
        ("b-old", "10"),
        ("a-fresh", "0"),
    ]
    assert launches[0].tags["batch/priority"] == "low"
    # Queued runs: aged by their time in the queue, and re-prioritised batches retagged.
    plan = plan_run_priorities(
        [
            QueuedRun("r1", "b", -10, 0),
            QueuedRun("r2", "b", -10, 700),
            QueuedRun("r3", "c", 0, 0),
            QueuedRun("r4", "gone", 0, 0),
        ],
        {"b": "low", "c": "high"},
        600,
    )
    assert plan == {"r2": 0, "r3": 10}
    # A run launched aged (its batch has waited) keeps the aged priority while queued.
    assert plan_run_priorities([QueuedRun("r5", "b", 10, 5)], {"b": "low"}, 600, {"b": 1300}) == {}


def test_dispatcher_ages_queued_runs_and_new_launches(env, samples, instance, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BATCH_PIPELINES_PRIORITY_AGING_S", "0.5")
    batch_id = submit_batch(import_manifest(priority="low"), instance=instance)
    run_id = queue_run(instance, batch_id, 0)
    time.sleep(1.1)  # two aging intervals: low -> high
    launched = dispatch(instance).run_requests
    assert instance.get_run_by_id(run_id).tags["dagster/priority"] == "10"
    assert launched and {r.tags["dagster/priority"] for r in launched} == {"10"}


def test_global_hold_launches_nothing_until_released(env, samples, instance) -> None:  # noqa: ANN001
    running = submit_batch(import_manifest(), instance=instance)
    mine = submit_batch(import_manifest(), instance=instance)
    pause_batch(mine, instance=instance, actor="test", settle_s=0)
    queued = queue_run(instance, running, 0)

    held = queue.hold_all(instance=instance, actor="test", settle_s=0)
    assert held.dequeued_runs == [queued]
    assert get_batch(running)["status"] == "paused"
    late = submit_batch(import_manifest(), instance=instance)  # accepted while held
    assert get_batch(late)["status"] == "queued"
    skip = dispatch(instance)
    assert "the instance is held (by test" in skip.skip_message
    with warehouse.connect(read_only=True) as con:
        assert con.execute(
            "select count(*) from batch_events where event = 'instance_held'"
        ).fetchone() == (1,)

    released = queue.release_all(actor="test")
    assert "1 batch(es) resumed" in released.message
    assert get_batch(running)["status"] == "queued"
    assert get_batch(mine)["paused"]  # paused on its own before the hold: stays paused
    launched = {r.tags["batch/id"] for r in dispatch(instance).run_requests}
    assert launched == {running, late}
    with pytest.raises(ControlError, match="not held"):
        queue.release_all(actor="test")
