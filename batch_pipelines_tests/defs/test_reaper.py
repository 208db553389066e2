"""Orphaned runs never wedge the dispatcher: a run whose worker process is gone ends failed
within a tick of ``batch_dispatcher`` wherever it was started (in-process or by the daemon),
even when its batch is finished, its items go back to pending and its pool slots are freed;
a failed run that Dagster's run retries will never re-launch does not hold its chunk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterRunStatus, RunsFilter, SensorResult, build_sensor_context

from batch_pipelines.app import dispatch
from batch_pipelines.app.dispatch import chunk_tags
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.definitions import defs
from batch_pipelines.defs.assets import WRITER_POOL
from batch_pipelines.defs.sensors import batch_dispatcher
from batch_pipelines_tests.conftest import CLI
from batch_pipelines_tests.helpers import run_batch

MANIFEST = {
    "operation": "import",
    "options": {"target_table": "t"},
    "settings": {"chunk_size": 2, "max_retries": 0},
    "items_from": {"glob": "data/samples/penguins_*"},
}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def chunk_run(instance, batch_id: str, chunk: int, status: DagsterRunStatus, **tags: str):  # noqa: ANN001, ANN201
    """A run of a chunk of ``batch_id`` as the dispatcher or ``submit --wait`` tags it."""
    with warehouse.connect(read_only=True) as con:
        plan = {c["chunk_no"]: c for c in ledger.chunk_plan(con, batch_id)}
    all_tags = chunk_tags(
        batch_id, "import", "normal", chunk, plan[chunk]["first_key"], plan[chunk]["last_key"]
    )
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def("import_job"), tags={**all_tags, **tags}, status=status
    )


def tick(instance):  # noqa: ANN001, ANN201
    return batch_dispatcher(build_sensor_context(instance=instance))


def launched(result) -> list[tuple[str, str]]:  # noqa: ANN001
    if not isinstance(result, SensorResult):
        return []
    return [(r.tags["batch/id"], r.tags["batch/chunk"]) for r in result.run_requests]


@pytest.mark.e2e
def test_killed_in_process_submit_is_reaped_and_relaunched(samples: Path, env, instance) -> None:  # noqa: ANN001
    """``submit --wait --in-process`` killed with SIGKILL mid-chunk, then the dispatcher."""
    folder = env.data / "big"
    folder.mkdir()
    con = duckdb.connect()
    for n in range(4):
        con.execute(
            f"copy (select i as id, md5(i::varchar) as h from range({n}, 1500000 + {n}) t(i)) "
            f"to '{folder / f'f{n}.csv'}' (header)"
        )
    con.close()
    items = env.root / "items.json"
    items.write_text(json.dumps([{"id": f"f{n}", "path": f"data/big/f{n}.csv"} for n in range(4)]))
    proc = subprocess.Popen(
        [CLI, "submit", "import", "--items-json", str(items), "--option", "target_table=t"]
        + ["--option", "skip_identical=false", "--chunk-size", "2", "--in-process", "--json"],
        env=env.environ(),
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    running: list = []
    while not running and time.monotonic() < deadline:
        time.sleep(0.1)
        assert proc.poll() is None, "submit finished before it could be killed"
        try:
            running = env.sql(
                "select batch_id, chunk_no, run_id from batch_items where status = 'running'"
            )
        except Exception:  # noqa: BLE001 - the warehouse is still being created
            running = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    batch_id, chunk_no, run_id = running[0]
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED

    result = tick(instance)
    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.FAILURE
    assert run.tags.get("dagster/will_retry") == "false"
    assert env.sql("select count(*) from batch_items where status = 'running'") == [(0,)]
    # The chunk the dead worker held is launched again through the run queue.
    assert (batch_id, str(chunk_no)) in launched(result), result


def test_dead_worker_run_of_a_finished_batch_ends_and_frees_its_slots(
    samples: Path,
    env,
    instance,  # noqa: ANN001
) -> None:
    """Killed after its commit: nothing is ``running`` in the ledger, the run is STARTED."""
    batch = run_batch(MANIFEST, instance)
    assert batch["status"] == "completed"
    host = socket.gethostname()
    orphans = [
        chunk_run(
            instance,
            batch["batch_id"],
            chunk,
            DagsterRunStatus.STARTED,
            **{
                "batch/launched_by": "in_process",
                "batch/worker_pid": str(dead_pid()),
                "batch/worker_host": host,
            },
        ).run_id
        for chunk in (0, 1)
    ]
    alive = chunk_run(
        instance,
        batch["batch_id"],
        2,
        DagsterRunStatus.STARTED,
        **{"batch/worker_pid": str(os.getpid()), "batch/worker_host": host},
    ).run_id
    # A retry run inherits its parent's worker tags until its own step starts: they say
    # nothing about its own worker.
    inherited = chunk_run(
        instance,
        batch["batch_id"],
        2,
        DagsterRunStatus.STARTED,
        **{
            "batch/worker_pid": str(dead_pid()),
            "batch/worker_host": host,
            "batch/worker_run": orphans[0],
        },
    ).run_id
    storage = instance.event_log_storage
    storage.set_concurrency_slots(WRITER_POOL, 2)
    for run_id in orphans:
        assert storage.claim_concurrency_slot(WRITER_POOL, run_id, "import_items").is_claimed

    tick(instance)
    assert {instance.get_run_by_id(r).status for r in orphans} == {DagsterRunStatus.FAILURE}
    assert instance.get_run_by_id(alive).status == DagsterRunStatus.STARTED
    assert instance.get_run_by_id(inherited).status == DagsterRunStatus.STARTED
    assert storage.get_concurrency_info(WRITER_POOL).claimed_slots == []
    in_progress = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
    )
    assert sorted(r.run_id for r in in_progress) == sorted([alive, inherited])
    assert env.sql("select status from batches") == [("completed",)]


def test_a_retry_dagster_will_never_launch_does_not_hold_the_chunk(
    samples: Path,
    env,
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id = submit_batch(MANIFEST, instance=instance)
    # A run of chunk 0 executed in a process (submit --wait) that failed: run_retries tags it
    # will_retry=true, but the retry daemon cannot re-launch a run that has no code location.
    in_process = chunk_run(
        instance, batch_id, 0, DagsterRunStatus.NOT_STARTED, **{"batch/launched_by": "in_process"}
    )
    instance.report_run_failed(in_process)
    assert instance.get_run_by_id(in_process.run_id).tags["dagster/will_retry"] == "true"
    # A failed run of chunk 1 launched by the daemon: its retry is pending for a while.
    daemon = chunk_run(instance, batch_id, 1, DagsterRunStatus.NOT_STARTED)
    instance.report_run_failed(daemon)
    assert instance.get_run_by_id(daemon.run_id).tags["dagster/will_retry"] == "true"

    assert sorted(launched(tick(instance))) == [(batch_id, "0"), (batch_id, "2")]
    # Once the retry daemon has had its time and launched nothing, the chunk is re-planned.
    monkeypatch.setattr(dispatch, "RETRY_LAUNCH_GRACE_S", 0.0, raising=False)
    assert sorted(launched(tick(instance))) == [(batch_id, "0"), (batch_id, "1"), (batch_id, "2")]
    assert instance.get_run_by_id(daemon.run_id).tags["dagster/will_retry"] == "false"
