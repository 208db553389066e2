"""Controls on a batch: cancel really stops (queued runs dequeued, running chunks stop
mid-item, finished items keep their results), pause drains and resume continues exactly,
retry re-runs only what failed, the reaper frees items of dead runs, the submission rate
limit, and failed runs reach the ledger and a webhook."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from dagster import DagsterEvent, DagsterEventType, DagsterRunStatus, build_sensor_context

from batch_pipelines.app import control
from batch_pipelines.app.dispatch import RunState, chunk_tags, plan_reaping
from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.submit import RateLimitError, submit_batch
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.core.contract import ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.manifest import ManifestError
from batch_pipelines.core.runner import ExecutionSettings, run_chunk
from batch_pipelines.definitions import defs
from batch_pipelines.defs.sensors import batch_dispatcher, inbox_sensor, reap_dead_runs
from batch_pipelines_tests.helpers import Item, Opts, make_batch


def import_manifest(**over) -> dict:  # noqa: ANN003
    m = {
        "operation": "import",
        "options": {"target_table": "t"},
        "settings": {"chunk_size": 2, "max_retries": 0},
        "items_from": {"glob": "data/samples/penguins_*"},
    }
    m.update(over)
    return m


def queue_run(instance, batch_id: str, chunk: int) -> str:  # noqa: ANN001
    """A not-yet-started run of a chunk (a QUEUED one needs a code location origin)."""
    with warehouse.connect(read_only=True) as con:
        plan = {c["chunk_no"]: c for c in ledger.chunk_plan(con, batch_id)}
    tags = chunk_tags(
        batch_id, "import", "normal", chunk, plan[chunk]["first_key"], plan[chunk]["last_key"]
    )
    run = instance.create_run_for_job(
        job_def=defs.resolve_job_def("import_job"), tags=tags, status=DagsterRunStatus.NOT_STARTED
    )
    return run.run_id


def test_cancel_stops_a_running_chunk_mid_item(env) -> None:  # noqa: ANN001
    started = threading.Event()

    def slow(ctx: ItemContext) -> ItemResult:
        if ctx.item_id == "b":
            started.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ctx.check()
                time.sleep(0.02)
        return ItemResult(metrics={"ok": True})

    spec = OperationSpec("testop", "t", Opts, Item, slow)
    s = ExecutionSettings(max_retries=3, item_timeout_s=60)
    batch_id, work = make_batch([{"id": "a"}, {"id": "b"}, {"id": "c"}], s)
    worker = threading.Thread(
        target=run_chunk, args=(spec, work, Opts(), s), kwargs={"run_id": "r"}
    )
    t0 = time.monotonic()
    worker.start()
    assert started.wait(10)
    from dagster import DagsterInstance

    result = control.cancel_batch(batch_id, instance=DagsterInstance.get(), actor="test")
    worker.join(15)
    assert not worker.is_alive() and time.monotonic() - t0 < 12
    assert result.status == "cancelled"
    rows = dict(env.sql("select item_id, status from batch_items"))
    assert rows == {"a": "succeeded", "b": "cancelled", "c": "cancelled"}
    assert env.sql("select status, succeeded_items, cancelled_items from batches") == [
        ("cancelled", 1, 2)
    ]
    events = [e for (e,) in env.sql("select event from batch_events order by event_id")]
    assert "batch_cancel_requested" in events and "batch_cancelled" in events
    assert env.sql("select actor from batch_events where event = 'batch_cancelled'") == [("test",)]
    with pytest.raises(control.ControlError, match="already cancelled"):
        control.cancel_batch(batch_id, instance=DagsterInstance.get())


def test_cancel_dequeues_queued_runs(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(import_manifest(), instance=instance)
    runs = [queue_run(instance, batch_id, c) for c in (0, 1)]
    result = control.cancel_batch(batch_id, instance=instance, actor="test", wait_s=5)
    assert sorted(result.dequeued_runs) == sorted(runs)
    assert result.still_active_runs == []
    assert {instance.get_run_by_id(r).status for r in runs} == {DagsterRunStatus.CANCELED}
    assert env.sql("select status, cancelled_items from batches") == [("cancelled", 6)]
    assert isinstance(
        batch_dispatcher(build_sensor_context(instance=instance)),
        type(batch_dispatcher(build_sensor_context(instance=instance))),
    )
    # Nothing launchable any more.
    assert (
        "no batch has chunks"
        in batch_dispatcher(build_sensor_context(instance=instance)).skip_message
    )


def test_pause_drains_and_resume_runs_exactly_the_rest(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(import_manifest(), instance=instance)
    # Chunk 0 runs to completion; chunk 1 is queued when the pause comes.
    with warehouse.connect(read_only=True) as con:
        plan = ledger.chunk_plan(con, batch_id)
    job = defs.resolve_job_def("import_job")
    tags = chunk_tags(batch_id, "import", "normal", 0, plan[0]["first_key"], plan[0]["last_key"])
    assert job.execute_in_process(instance=instance, tags=tags).success
    queued = queue_run(instance, batch_id, 1)
    result = control.pause_batch(batch_id, instance=instance, actor="test")
    assert result.status == "paused" and result.dequeued_runs == [queued]
    assert (
        "no batch has chunks"
        in batch_dispatcher(build_sensor_context(instance=instance)).skip_message
    )
    assert env.sql("select status, paused, processed_items from batches") == [("paused", True, 2)]
    with pytest.raises(control.ControlError, match="is not paused"):
        control.resume_batch(submit_batch(import_manifest(), instance=instance))
    resumed = control.resume_batch(batch_id, actor="test")
    assert resumed.status == "running" and "4 item(s) left" in resumed.message
    requests = batch_dispatcher(build_sensor_context(instance=instance)).run_requests
    mine = [r for r in requests if r.tags["batch/id"] == batch_id]
    assert sorted(r.tags["batch/chunk"] for r in mine) == ["1", "2"]
    # The relaunch of chunk 1 gets a fresh run key (its first run was cancelled by the pause).
    assert {r.run_key for r in mine} == {f"{batch_id}:1:1", f"{batch_id}:2:0"}
    done = run_batch_in_process(batch_id, instance, defs)
    assert done["status"] == "completed"
    assert env.sql(
        "select max(attempts), count(*) from batch_items where batch_id = ?", [batch_id]
    ) == [(1, 6)]
    events = [
        e
        for (e,) in env.sql(
            "select event from batch_events where batch_id = ? order by event_id", [batch_id]
        )
    ]
    assert events.index("batch_paused") < events.index("batch_resumed")


def test_retry_only_failed_items(samples: Path, env, instance) -> None:  # noqa: ANN001
    files = [
        "penguins_2007.csv",
        "bad/empty.csv",
        "bad/garbage.bin",
        "penguins_2008.tsv",
        "bad/truncated.json",
        "bad/wrong_delimiter.tsv",
    ]
    parent = submit_batch(
        import_manifest(items=[{"path": f"data/samples/{f}"} for f in files], items_from=None),
        instance=instance,
    )
    run_batch_in_process(parent, instance, defs)
    failed = {
        i
        for (i,) in env.sql(
            "select item_id from batch_items where batch_id = ? and status = 'failed'", [parent]
        )
    }
    assert len(failed) == 4
    with pytest.raises(control.ControlError, match="no failed items in categories"):
        control.retry_batch(parent, categories=["transient"], instance=instance)
    result = control.retry_batch(parent, categories=["validation"], instance=instance, actor="test")
    child = result.new_batch_id
    assert env.sql(
        "select parent_batch_id, total_items, options->>'target_table' from batches "
        "where batch_id = ?",
        [child],
    ) == [(parent, 4, "t")]
    assert {
        i for (i,) in env.sql("select item_id from batch_items where batch_id = ?", [child])
    } == failed
    one = sorted(failed)[0]
    r2 = control.retry_batch(parent, item_ids=[one], instance=instance)
    assert env.sql("select item_id from batch_items where batch_id = ?", [r2.new_batch_id]) == [
        (one,)
    ]
    ok = env.sql(
        "select item_id from batch_items where batch_id = ? and status = 'succeeded' limit 1",
        [parent],
    )[0][0]
    with pytest.raises(control.ControlError, match="not failed or cancelled"):
        control.retry_batch(parent, item_ids=[ok], instance=instance)


def test_reaper_requeues_then_fails_items_of_dead_runs(env) -> None:  # noqa: ANN001
    groups = [("b", 0, "dead"), ("b", 1, "alive"), ("b", 2, "gone")]
    statuses = {"dead": "FAILURE", "alive": "STARTED", "gone": None}
    decisions = plan_reaping(groups, statuses, [RunState("b", 0, "FAILURE")])
    assert [(d.chunk_no, d.action) for d in decisions] == [(0, "requeue"), (2, "requeue")]
    thrice = [RunState("b", 0, "FAILURE")] * 3
    assert [d.action for d in plan_reaping(groups[:1], statuses, thrice)] == ["fail"]


def test_reaper_against_the_ledger(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(import_manifest(), instance=instance)
    run_id = queue_run(instance, batch_id, 0)
    with warehouse.connect() as con:
        ledger.mark_running(
            con,
            batch_id,
            [
                r[0]
                for r in con.execute(
                    "select item_id from batch_items where chunk_no = 0"
                ).fetchall()
            ],
            run_id,
        )
    # The run is still queued: nothing to reap.
    assert reap_dead_runs(instance, env.paths) == []
    run = instance.get_run_by_id(run_id)
    instance.report_run_failed(run)
    # run_retries will re-launch it: the retry run picks the items up, not the reaper.
    assert instance.get_run_by_id(run_id).tags["dagster/will_retry"] == "true"
    assert reap_dead_runs(instance, env.paths) == []
    instance.add_run_tags(run_id, {"dagster/will_retry": "false"})
    reaped = reap_dead_runs(instance, env.paths)
    assert len(reaped) == 1 and "requeue 2 item(s)" in reaped[0]
    assert env.sql("select status, count(*) from batch_items group by 1") == [("pending", 6)]


def test_cancel_stops_the_automatic_retry_of_a_failed_run(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(import_manifest(), instance=instance)
    run_id = queue_run(instance, batch_id, 0)
    instance.report_run_failed(instance.get_run_by_id(run_id))
    assert instance.get_run_by_id(run_id).tags["dagster/will_retry"] == "true"
    result = control.cancel_batch(batch_id, instance=instance, settle_s=0.1, wait_s=5)
    assert result.status == "cancelled"
    # Else the retry daemon re-launches the chunk of a cancelled batch after cancel returned.
    assert instance.get_run_by_id(run_id).tags["dagster/will_retry"] == "false"


def test_cancel_ends_a_run_that_was_starting(samples: Path, env, instance) -> None:  # noqa: ANN001
    """Regression (CI): cancelled while STARTING, the run could not be told to stop (Dagster's
    launcher has no worker to ask yet) and was left CANCELING; its worker, starting then,
    ignored a run that was no longer starting, and the run held its slot until run monitoring
    gave up on it two minutes later, so the queue stood still."""
    batch_id = submit_batch(import_manifest(), instance=instance)
    run_id = queue_run(instance, batch_id, 0)
    starting = DagsterEvent(event_type_value=DagsterEventType.RUN_STARTING.value, job_name="j")
    instance.report_dagster_event(starting, run_id=run_id)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTING
    result = control.cancel_batch(batch_id, instance=instance, settle_s=0.1, wait_s=3)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.CANCELED
    assert result.still_active_runs == [] and result.dequeued_runs == [run_id]


def test_submission_rate_limit_counts_who_submits_not_the_label(
    samples: Path,
    env,
    instance,
    monkeypatch,  # noqa: ANN001
) -> None:
    monkeypatch.setenv("BATCH_PIPELINES_MAX_BATCHES_PER_HOUR", "2")
    submit_batch(import_manifest(), instance=instance, actor="ana")
    submit_batch(import_manifest(submitted_by="someone_else"), instance=instance, actor="ana")
    # Neither the manifest's submitted_by nor the argument's label bypasses the limit.
    for label in ({"submitted_by": "bob"}, {}):
        with pytest.raises(RateLimitError, match="rate limit: ana submitted 2 batches") as info:
            submit_batch(import_manifest(**label), instance=instance, actor="ana")
        assert not isinstance(info.value, ManifestError)
    assert env.sql("select count(*) from batches") == [(2,)]
    submit_batch(import_manifest(), instance=instance, actor="bob")
    rows = env.sql(
        "select b.submitted_by, e.actor from batches b join batch_events e using (batch_id) "
        "where e.event = 'batch_submitted' order by e.event_id"
    )
    assert rows == [("ana", "python:ana"), ("someone_else", "python:ana"), ("bob", "python:bob")]


def test_inbox_actor_is_the_file_owner(samples: Path, env, instance, monkeypatch) -> None:  # noqa: ANN001
    import pwd

    monkeypatch.setenv("BATCH_PIPELINES_MAX_BATCHES_PER_HOUR", "1")
    owner = pwd.getpwuid(os.getuid()).pw_name
    for n in range(2):
        path = env.data / "inbox" / f"m{n}.json"
        path.write_text(json.dumps(import_manifest(submitted_by=f"label{n}")))
        os.utime(path, (time.time() - 5 - n, time.time() - 5 - n))
    inbox_sensor(build_sensor_context(instance=instance))
    assert env.sql("select submitted_by from batches") == [("label1",)]
    assert env.sql("select actor from batch_events where event = 'batch_submitted'") == [
        (f"inbox:{owner}",)
    ]
    (rejected,) = (env.data / "inbox" / "rejected").glob("*.error.json")
    error = json.loads(rejected.read_text())
    assert error["error"] == "rate limit" and f"rate limit: {owner} submitted 1" in error["message"]


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_failed_runs_reach_the_ledger_and_the_webhook(
    samples: Path,
    env,
    instance,
    monkeypatch,  # noqa: ANN001
) -> None:
    from dagster import DagsterEventType, EventRecordsFilter, build_run_status_sensor_context

    from batch_pipelines.defs.sensors import run_failure_recorder

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BATCH_PIPELINES_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    try:
        batch_id = submit_batch(
            import_manifest(items=[{"path": "data/samples/bad/empty.csv"}], items_from=None),
            instance=instance,
        )
        run_batch_in_process(batch_id, instance, defs)
        record = instance.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.RUN_FAILURE), limit=1
        )[0]
        run = instance.get_run_by_id(record.event_log_entry.run_id)
        context = build_run_status_sensor_context(
            sensor_name="run_failure_recorder",
            dagster_event=record.event_log_entry.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()
        run_failure_recorder(context)
    finally:
        server.shutdown()
    assert _Hook.received[-1]["batch_id"] == batch_id
    assert _Hook.received[-1]["event"] == "run_failed"
    detail = json.loads(env.sql("select detail from batch_events where event = 'run_failed'")[0][0])
    assert detail["webhook_delivered"] is True and detail["run_id"] == run.run_id


def test_nightly_cleanup_schedule_submits_a_cleanup_batch(
    samples: Path,
    env,
    instance,
    monkeypatch,  # noqa: ANN001
) -> None:
    from datetime import UTC, datetime

    from dagster import build_schedule_context

    from batch_pipelines.defs.schedules import nightly_cleanup

    when = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    monkeypatch.setenv("BATCH_PIPELINES_RETENTION_DAYS", "7")
    request = nightly_cleanup(
        build_schedule_context(instance=instance, scheduled_execution_time=when)
    )
    assert request.run_key == "nightly-cleanup:2026-11-26"
    config = request.run_config["ops"]["register_batch"]["config"]
    assert config["options"] == {"dry_run": False}
    assert {"kind": "old_batches", "older_than_days": 7} in config["items"]
    result = defs.resolve_job_def("submit_batch").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags
    )
    assert result.success
    assert env.sql("select operation, source, total_items, priority from batches") == [
        ("cleanup", "schedule", 5, "low")
    ]
    monkeypatch.setenv("BATCH_PIPELINES_RETENTION_DAYS", "soon")
    skip = nightly_cleanup(build_schedule_context(instance=instance, scheduled_execution_time=when))
    assert "not cleaning up" in skip.skip_message
