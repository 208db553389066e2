"""Canary batches and quality gates, in process: the dispatcher sensor evaluated with
``build_sensor_context``, ``submit --wait`` as ``run_batch_in_process``, the CLI with
``CliRunner``. The local annotate backend makes the quality scores deterministic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dagster import (
    AssetCheckKey,
    AssetKey,
    RunsFilter,
    SensorResult,
    build_sensor_context,
    materialize,
)

from batch_pipelines.app.control import resume_batch
from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.cli.main import main
from batch_pipelines.core import ledger, warehouse, webhooks
from batch_pipelines.core.gates import (
    CanaryProbe,
    CanarySettings,
    canary_positions,
    canary_verdict,
    chunk_numbers,
)
from batch_pipelines.core.ledger.states import ItemCounts, Refresh, can_transition, refresh
from batch_pipelines.definitions import defs
from batch_pipelines.defs.analytics_assets import quality_report
from batch_pipelines.defs.resources import WarehouseResource
from batch_pipelines.defs.sensors import batch_dispatcher
from batch_pipelines_tests.core.test_outbox import Hook

GOOD = (
    "The stock market rallied as the central bank cut interest rates; investors bought bonds "
    "and shares while the banks reported strong profits and earnings for the quarter."
)
# Scores under 0.6 with the default taxonomy, over 0.8 with GADGETS (the local backend).
ODD = (
    "The zorblax quibbles with the flimflam near the wobbly gizmo and the zorblax is happy "
    "with the flimflam today."
)
GADGETS = {"gadgets": ["zorblax", "flimflam", "gizmo", "quibbles", "wobbly"]}


def _items(n: int, bad: set[int] = frozenset(), odd: set[int] = frozenset()) -> list[dict]:
    out = []
    for k in range(n):
        if k in bad:
            # Fails when it runs: the table is not there.
            row = {"table": "no_such_table", "id_column": "id", "id_value": k, "text_column": "t"}
            out.append({"id": f"t{k:02d}", **row})
        else:
            out.append({"id": f"t{k:02d}", "text": ODD if k in odd else GOOD})
    return out


def _events(batch_id: str) -> list[tuple[str, dict[str, Any]]]:
    with warehouse.connect(read_only=True) as con:
        rows = con.execute(
            "select event, detail::varchar from batch_events where batch_id = ? order by event_id",
            [batch_id],
        ).fetchall()
    return [(e, json.loads(d) if d else {}) for e, d in rows]


def _runs(instance, batch_id: str) -> list:  # noqa: ANN001
    return list(instance.get_runs(filters=RunsFilter(tags={"batch/id": batch_id})))


def test_canary_items_are_spread_and_fill_the_first_chunks() -> None:
    assert canary_positions(20, 4) == [0, 5, 10, 15]
    assert canary_positions(3, 5) == [0, 1, 2]
    chunks = chunk_numbers(10, {0, 5}, 3)
    assert chunks[0] == chunks[5] == 0  # the canary chunk
    assert [chunks[k] for k in (1, 2, 3, 4, 6, 7, 8, 9)] == [1, 1, 1, 2, 2, 2, 3, 3]
    limits = CanarySettings(items=4, max_failure_ratio=0.25, min_mean_quality=0.7)
    out = canary_verdict(limits, CanaryProbe(total=4, processed=4, failed=2, mean_quality=0.5))
    assert not out.passed
    assert "failure ratio 0.50 (2 of 4) is over max_failure_ratio 0.25" in out.reason
    assert "mean quality 0.500 is under min_mean_quality 0.7" in out.reason
    assert canary_verdict(limits, CanaryProbe(4, 4, 1, 0.9)).passed


def test_failed_canary_stops_the_batch_and_resume_releases_the_rest(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hook = Hook([])
    monkeypatch.setenv(webhooks.WEBHOOK_ENV, hook.url)
    manifest = {
        "operation": "annotate",
        "items": _items(20, bad={5, 15}),
        "settings": {"chunk_size": 16, "canary": {"items": 4, "max_failure_ratio": 0.25}},
    }
    batch_id = submit_batch(manifest, instance=instance)
    # The dispatcher launches the canary chunk only, tagged apart.
    result = batch_dispatcher(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    assert [r.tags["batch/chunk"] for r in result.run_requests] == ["0"]
    assert result.run_requests[0].tags["batch/canary"] == "true"
    # No quality gate: the run leaves the gate's check out (each costs a row per partition).
    assert result.run_requests[0].asset_check_keys == []

    batch = run_batch_in_process(batch_id, instance, defs)
    assert batch["status"] == "canary_failed"
    assert batch["processed_items"] == 4 and batch["failed_items"] == 2
    assert "failure ratio 0.50 (2 of 4) is over max_failure_ratio 0.25" in batch["error"]
    runs = _runs(instance, batch_id)
    assert len(runs) == 1 and runs[0].tags["batch/canary"] == "true"
    with warehouse.connect(read_only=True) as con:
        canary = con.execute(
            "select list(item_id order by seq) from batch_items where batch_id = ? and "
            "status <> 'pending'",
            [batch_id],
        ).fetchone()[0]
    assert canary == ["t00", "t05", "t10", "t15"]  # spread, not the first four
    detail = [d for e, d in _events(batch_id) if e == "batch_canary_failed"][0]
    assert detail["failure_ratio"] == 0.5 and detail["max_failure_ratio"] == 0.25
    # The webhook went out through the outbox while the batch ran here, saying why.
    sent = [json.loads(raw) for raw, _ in hook.received]
    hook.close()
    body = [b for b in sent if b["event"] == "batch.canary_failed"][0]
    assert body["batch_id"] == batch_id and body["status"] == "canary_failed"
    assert body["detail"]["failure_ratio"] == 0.5
    assert "over max_failure_ratio 0.25" in body["detail"]["error"]
    # Nothing launches for a canary_failed batch until a person resumes it.
    assert not isinstance(batch_dispatcher(build_sensor_context(instance=instance)), SensorResult)

    shown = CliRunner().invoke(main, ["status", batch_id], terminal_width=200)
    assert "canary_failed" in shown.output
    assert f"batch-pipelines resume {batch_id}` releases the rest" in " ".join(shown.output.split())
    resumed = resume_batch(batch_id, instance=instance, here=True)
    assert resumed.status == "running"
    batch = run_batch_in_process(batch_id, instance, defs)
    assert batch["status"] == "completed_with_errors"
    assert batch["processed_items"] == 20 and batch["canary_status"] == "released"
    assert len(_runs(instance, batch_id)) == 2  # the canary, then the other 16 items
    assert "batch_canary_released" in [e for e, _ in _events(batch_id)]


def test_canary_within_its_limits_releases_the_rest(env, instance, tmp_path: Path) -> None:  # noqa: ANN001
    manifest = {
        "operation": "annotate",
        "items": _items(12, odd={3}),
        "settings": {
            "chunk_size": 10,
            "canary": {"items": 3, "max_failure_ratio": 0, "min_mean_quality": 0.6},
        },
    }
    path = tmp_path / "canary.json"
    path.write_text(json.dumps(manifest))
    # `submit --wait --in-process`, as a user runs it.
    out = CliRunner().invoke(main, ["submit", str(path), "--in-process", "--json"])
    assert out.exit_code == 0, out.output
    batch = json.loads(out.output)
    assert batch["status"] == "completed" and batch["canary_status"] == "passed"
    runs = _runs(instance, batch["batch_id"])
    assert sum(r.tags.get("batch/canary") == "true" for r in runs) == 1
    assert len(runs) == 2  # the canary chunk, then the nine others
    passed = [d for e, d in _events(batch["batch_id"]) if e == "batch_canary_passed"]
    assert passed[0]["failed"] == 0 and passed[0]["mean_quality"] > 0.6


def test_quality_gate_sends_low_scorers_back_as_a_child_batch(env, instance) -> None:  # noqa: ANN001
    manifest = {
        "operation": "annotate",
        "items": _items(6, odd={1, 4}),
        "settings": {
            "quality_gate": {"min_score": 0.6, "requeue_options": {"taxonomy": GADGETS}},
        },
    }
    batch_id = submit_batch(manifest, instance=instance)
    batch = run_batch_in_process(batch_id, instance, defs)
    assert batch["status"] == "completed" and batch["gate_status"] == "requeued"
    with warehouse.connect(read_only=True) as con:
        child = con.execute(
            "select batch_id, status, source, gate_round, total_items, options::varchar "
            "from batches where parent_batch_id = ?",
            [batch_id],
        ).fetchall()
        summary = ledger.gate_summary(con, batch_id)
    assert len(child) == 1
    child_id, status, source, gate_round, total, options = child[0]
    assert (status, source, gate_round, total) == ("completed", "quality_gate", 1, 2)
    assert json.loads(options)["taxonomy"] == GADGETS
    assert summary["sent_back"] == 2 and summary["passed_after"] == 2
    assert summary["rounds"][0]["batch_id"] == child_id
    # The child reached its gate's last round: no grandchild.
    with warehouse.connect(read_only=True) as con:
        assert ledger.get_batch(con, child_id)["gate_status"] == "passed"
    # The partitioned asset check shows the gate per item.
    key = AssetCheckKey(AssetKey("annotate_items"), "quality_gate")
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
    assert len(records) >= 1
    # The report says how many went back and how many passed after.
    out = CliRunner().invoke(main, ["report", batch_id], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "2 item(s) sent back, 2 passed after" in " ".join(out.output.split())
    as_json = CliRunner().invoke(main, ["report", child_id, "--json"])
    assert json.loads(as_json.output)["quality_gate"]["batch_id"] == batch_id
    # ... and so does the quality_report asset focused on the batch.
    result = materialize(
        [quality_report],
        instance=instance,
        resources={"warehouse": WarehouseResource()},
        run_config={"ops": {"quality_report": {"config": {"batch_id": batch_id}}}},
    )
    preview = result.get_asset_materialization_events()[0].materialization.metadata["preview"]
    assert "2 item(s) sent back, 2 passed after" in preview.value
    assert f"| 1 | {child_id} | completed | 2 | 2 | 0 |" in preview.value


BAD = [
    ({"canary": {"items": 3}}, "annotate", "settings.canary.items", "leave nothing to release"),
    ({"canary": {"max_failure_ratio": 0.1}}, "annotate", "settings.canary.items", "required"),
    (
        {"quality_gate": {"min_score": 0.5, "requeue_options": {"max_keywords": 0}}},
        "annotate",
        "settings.quality_gate.requeue_options.max_keywords",
        "greater than or equal to 1",
    ),
    ({"quality_gate": {"min_score": 0.5}}, "export", "settings.quality_gate", "no quality score"),
]


def test_bad_canary_or_gate_is_refused_naming_the_field(env, tmp_path: Path) -> None:  # noqa: ANN001
    for settings, operation, field, message in BAD:
        manifest = {"operation": operation, "settings": settings, "items": _items(3)}
        if operation == "export":
            manifest["items"] = [{"table": "t", "path": "data/exports/t.csv"}]
        path = tmp_path / "m.json"
        path.write_text(json.dumps(manifest))
        out = CliRunner().invoke(main, ["submit", str(path), "--json"])
        assert out.exit_code == 2, out.output
        problems = {p["field"]: p["message"] for p in json.loads(out.output)["problems"]}
        assert message in problems[field], (field, problems)
    with warehouse.connect(read_only=True) as con:
        assert con.execute("select count(*) from batches").fetchone()[0] == 0


def test_the_state_machine_stops_a_failed_canary_until_a_person_acts() -> None:
    settings = {"canary": {"items": 2, "max_failure_ratio": 0}}
    counts = ItemCounts(pending=8, failed=1, succeeded=1)

    def derive(status: str, probe: CanaryProbe, canary_status: str = "running") -> Refresh:
        return refresh(
            status,
            counts,
            total=10,
            paused=False,
            stopped=False,
            settings=settings,
            first_failure=lambda: ("x", "e"),
            canary_status=canary_status,
            canary=lambda: probe,
        )

    failed = derive("running", CanaryProbe(2, 2, 1, None))
    assert (failed.status, failed.canary_status) == ("canary_failed", "failed")
    assert failed.detail["failure_ratio"] == 0.5 and not failed.cancel_pending
    assert derive("running", CanaryProbe(2, 1, 1, None)).status == "running"  # not done yet
    passed = derive("running", CanaryProbe(2, 2, 0, None))
    assert (passed.status, passed.canary_status) == ("running", "passed")
    assert derive("canary_failed", CanaryProbe(2, 2, 1, None), "failed").status == "canary_failed"
    assert can_transition("canary_failed", "running") and can_transition(
        "canary_failed", "cancelled"
    )
    assert not can_transition("canary_failed", "completed")


def test_the_dispatcher_applies_the_gate_of_a_batch_the_daemon_finished(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batch_pipelines.app.inprocess as inprocess

    # As if the daemon's runs had finished it: no gate applied in this process.
    monkeypatch.setattr(inprocess, "apply_quality_gate", lambda *a, **k: None)
    manifest = {
        "operation": "annotate",
        "items": _items(2, odd={1}),
        "settings": {"quality_gate": {"min_score": 0.6, "requeue_options": {"max_keywords": 3}}},
    }
    batch = run_batch_in_process(submit_batch(manifest, instance=instance), instance, defs)
    assert batch["status"] == "completed" and batch["gate_status"] is None
    result = batch_dispatcher(build_sensor_context(instance=instance))
    with warehouse.connect(read_only=True) as con:
        parent = ledger.get_batch(con, batch["batch_id"])
        (child,) = con.execute(
            "select batch_id from batches where parent_batch_id = ?", [batch["batch_id"]]
        ).fetchone()
    assert parent["gate_status"] == "requeued"
    # The same tick launches the child's chunk.
    assert isinstance(result, SensorResult)
    assert [r.tags["batch/id"] for r in result.run_requests] == [child]
    # A second tick does not gate the batch twice.
    batch_dispatcher(build_sensor_context(instance=instance))
    with warehouse.connect(read_only=True) as con:
        n = con.execute(
            "select count(*) from batches where parent_batch_id = ?", [batch["batch_id"]]
        ).fetchone()[0]
    assert n == 1


def test_only_runs_of_a_gated_batch_plan_the_gate_check(env, instance) -> None:  # noqa: ANN001
    manifest = {
        "operation": "annotate",
        "items": _items(2, odd={1}),
        "settings": {"quality_gate": {"min_score": 0.6, "requeue_options": {"max_keywords": 3}}},
    }
    submit_batch(manifest, instance=instance)
    result = batch_dispatcher(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.asset_selection == [AssetKey("annotate_items")]
    assert request.asset_check_keys == [AssetCheckKey(AssetKey("annotate_items"), "quality_gate")]
