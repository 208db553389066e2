"""Controls against a real ``dagster dev`` (daemon + run queue, one run slot): a critical batch
jumps a queue of low-priority chunk runs; cancel dequeues and terminates and leaves nothing
queued or running; pause drains, survives a restart of ``dagster dev`` and resume runs exactly
the unfinished items; a killed run worker is detected and its chunk re-run to completion."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import duckdb
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from batch_pipelines.app.devserver import DevServer, Env, dagster_dev, env_in_process, make_env
from batch_pipelines.app.queries import get_batch, get_items
from batch_pipelines_tests.helpers import cli_process as cli

pytestmark = pytest.mark.e2e

SMALL_ROWS = 200_000
BIG_ROWS = 1_500_000
ONE_SLOT = {"concurrency": {"runs": {"max_concurrent_runs": 1}}}
FINISHED = ("completed", "completed_with_errors", "failed", "cancelled")


@pytest.fixture(scope="module")
def qenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with env_in_process(make_env(tmp_path_factory.mktemp("queue"))) as env:
        folder = env.data / "big"
        folder.mkdir()
        con = duckdb.connect()
        for n in range(12):
            # Small files for the queue tests; three big ones (a second or two of real
            # import work each) so a chunk run is surely in flight when its worker is killed.
            con.execute(
                f"copy (select i as id, i % 97 as k, md5(i::varchar) as h from range({n}, "
                f"{SMALL_ROWS} + {n}) t(i)) to '{folder / f'part{n:02d}.csv'}' (header)"
            )
        for n in range(3):
            con.execute(
                f"copy (select i as id, i % 97 as k, md5(i::varchar) as h from range({n}, "
                f"{BIG_ROWS} + {n}) t(i)) to '{folder / f'big{n:02d}.csv'}' (header)"
            )
        con.close()
        yield env


@pytest.fixture(scope="module")
def dev(qenv: Env) -> Iterator[DevServer]:
    with dagster_dev(qenv, dagster_yaml=ONE_SLOT) as server:
        yield server


def submit(env: Env, files: list[str], table: str, priority: str = "normal") -> str:
    items = json.dumps([{"id": f, "path": f"data/big/{f}"} for f in files])
    path = env.root / f"items_{table}.json"
    path.write_text(items)
    p = cli(
        env,
        "submit",
        "import",
        "--items-json",
        str(path),
        "--option",
        f"target_table={table}",
        "--option",
        "skip_identical=false",
        "--chunk-size",
        "1",
        "--priority",
        priority,
        "--json",
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["batch_id"]


def runs_of(batch_id: str) -> list:
    instance = DagsterInstance.get()
    try:
        return list(instance.get_run_records(filters=RunsFilter(tags={"batch/id": batch_id})))
    finally:
        instance.dispose()


def active_runs(batch_id: str) -> list:
    return [r for r in runs_of(batch_id) if not r.dagster_run.is_finished]


def wait_finished(dev: DevServer, batch_id: str, timeout_s: float = 150) -> dict:
    return dev.wait_for(
        lambda: (b := get_batch(batch_id)) and b["status"] in FINISHED and b,
        timeout_s,
        f"batch {batch_id} to finish",
        interval=1.0,
    )


def test_critical_batch_jumps_the_queue(dev: DevServer, qenv: Env) -> None:
    low = submit(qenv, [f"part{n:02d}.csv" for n in range(5)], "low_t", "low")
    dev.wait_for(lambda: len(runs_of(low)) >= 5, 60, "5 low-priority chunk runs queued")
    critical = submit(qenv, ["part10.csv", "part11.csv"], "crit_t", "critical")
    assert wait_finished(dev, critical)["status"] == "completed"
    assert wait_finished(dev, low)["status"] == "completed"
    crit_runs = runs_of(critical)
    assert {r.dagster_run.tags["dagster/priority"] for r in crit_runs} == {"20"}
    crit_created = min(r.create_timestamp.timestamp() for r in crit_runs)
    # A run that never started (cancelled while queued once its items were done) has no
    # start time and says nothing about the order.
    crit_last_start = max(r.start_time for r in crit_runs if r.start_time is not None)
    low_starts = sorted(r.start_time for r in runs_of(low) if r.start_time is not None)
    # Low runs still waiting when the critical runs were queued started only after them
    # (one low run may have been leaving the queue at that very moment).
    waiting = [t for t in low_starts if t > crit_created]
    assert len(waiting) >= 2, (low_starts, crit_created)
    overtaken = [t for t in waiting if t > crit_last_start]
    assert len(overtaken) >= len(waiting) - 1, (waiting, crit_last_start)


def test_cancel_leaves_nothing_queued_or_running(dev: DevServer, qenv: Env) -> None:
    batch_id = submit(qenv, [f"part{n:02d}.csv" for n in range(6)], "cancel_t")
    dev.wait_for(lambda: get_batch(batch_id)["succeeded_items"] >= 1, 90, "a first item done")
    t0 = time.monotonic()
    p = cli(qenv, "cancel", batch_id, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert result["status"] == "cancelled" and result["still_active_runs"] == []
    assert time.monotonic() - t0 < 30
    assert active_runs(batch_id) == []
    batch = get_batch(batch_id)
    assert batch["status"] == "cancelled"
    items = get_items(batch_id)
    assert {i["status"] for i in items} <= {"succeeded", "cancelled"}
    done = [i for i in items if i["status"] == "succeeded"]
    assert done and batch["succeeded_items"] == len(done)
    # Finished items keep their results; nothing more is launched afterwards.
    time.sleep(8)
    assert active_runs(batch_id) == []
    assert get_batch(batch_id)["succeeded_items"] == len(done)


def test_killed_worker_is_detected_and_its_chunk_rerun(dev: DevServer, qenv: Env) -> None:
    batch_id = submit(qenv, ["big00.csv", "big01.csv", "big02.csv"], "crash_t")

    def running_with_pid() -> tuple[str, int] | None:
        for r in runs_of(batch_id):
            pid = r.dagster_run.tags.get("batch/worker_pid")
            if r.dagster_run.status == DagsterRunStatus.STARTED and pid:
                return r.dagster_run.run_id, int(pid)
        return None

    run_id, pid = dev.wait_for(
        running_with_pid, 90, "a chunk run with its worker pid", interval=0.2
    )
    os.kill(pid, signal.SIGKILL)
    batch = wait_finished(dev, batch_id, 180)
    assert batch["status"] == "completed", batch
    runs = {r.dagster_run.run_id: r.dagster_run for r in runs_of(batch_id)}
    assert runs[run_id].status == DagsterRunStatus.FAILURE
    assert any(r.tags.get("dagster/parent_run_id") == run_id for r in runs.values()) or any(
        r.tags.get("batch/chunk") == runs[run_id].tags["batch/chunk"] and rid != run_id
        for rid, r in runs.items()
    )
    # Each file's rows are in the table exactly once.
    # Through the warehouse's lock: a report run may be writing after the batch finished.
    assert qenv.sql("select count(*), count(distinct (_item_id, id)) from crash_t") == [
        (3 * BIG_ROWS, 3 * BIG_ROWS)
    ]


def test_canary_runs_first_stops_the_batch_and_resume_releases_the_rest(
    dev: DevServer, qenv: Env
) -> None:
    """Through the daemon's dispatcher: only the canary chunk launches (tagged apart), the
    batch stops as canary_failed, `resume` releases the rest."""
    text = "The zorblax quibbles with the flimflam near the wobbly gizmo today."
    manifest = {
        "operation": "annotate",
        "items": [{"id": f"c{n}", "text": text} for n in range(6)],
        "settings": {"chunk_size": 4, "canary": {"items": 2, "min_mean_quality": 0.99}},
    }
    path = qenv.root / "canary.json"
    path.write_text(json.dumps(manifest))
    p = cli(qenv, "submit", str(path), "--json")
    assert p.returncode == 0, p.stderr
    batch_id = json.loads(p.stdout)["batch_id"]
    batch = dev.wait_for(
        lambda: (b := get_batch(batch_id)) and b["status"] == "canary_failed" and b,
        90,
        f"batch {batch_id} to stop as canary_failed",
        interval=1.0,
    )
    assert batch["processed_items"] == 2 and "min_mean_quality 0.99" in batch["error"]
    runs = runs_of(batch_id)
    assert [r.dagster_run.tags.get("batch/canary") for r in runs] == ["true"]
    time.sleep(3)  # a dispatcher tick: nothing else launches
    assert len(runs_of(batch_id)) == 1
    p = cli(qenv, "resume", batch_id, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert wait_finished(dev, batch_id)["processed_items"] == 6
    assert len(runs_of(batch_id)) == 2  # the canary chunk, then the other four items


# Last: it restarts `dagster dev`, which the module's `dev` then no longer is.
def test_pause_drains_survives_restart_and_resume_finishes(qenv: Env, dev: DevServer) -> None:
    batch_id = submit(qenv, [f"part{n:02d}.csv" for n in range(6)], "pause_t")
    dev.wait_for(lambda: get_batch(batch_id)["succeeded_items"] >= 1, 90, "a first item done")
    p = cli(qenv, "pause", batch_id, "--json")
    assert p.returncode == 0, p.stderr
    dev.wait_for(lambda: get_batch(batch_id)["status"] == "paused", 60, "the batch drained")
    done_before = get_batch(batch_id)["processed_items"]
    assert 1 <= done_before < 6
    dev.wait_for(lambda: active_runs(batch_id) == [], 30, "no run of the paused batch")
    # Restart dagster dev: the pause is in the ledger, so nothing is launched.
    dev.process.send_signal(signal.SIGTERM)
    from batch_pipelines.app.devserver import stop_process_group

    stop_process_group(dev.process)
    with dagster_dev(qenv, dagster_yaml=ONE_SLOT) as again:
        time.sleep(10)
        assert get_batch(batch_id)["status"] == "paused"
        assert get_batch(batch_id)["processed_items"] == done_before
        assert active_runs(batch_id) == []
        p = cli(qenv, "resume", batch_id)
        assert p.returncode == 0, p.stderr
        batch = wait_finished(again, batch_id, 150)
    assert batch["status"] == "completed" and batch["succeeded_items"] == 6
    items = get_items(batch_id)
    assert [i["attempts"] for i in items] == [1] * 6
    assert qenv.sql("select count(*) from item_attempts where batch_id = ?", [batch_id]) == [(6,)]
    assert qenv.sql("select count(distinct _item_id), count(*) from pause_t") == [
        (6, 6 * SMALL_ROWS)
    ]
