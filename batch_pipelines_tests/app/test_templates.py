"""Templates through the Python API: validated when saved (nothing saved otherwise), submitted
with overrides and recorded on the batch; and the recurring_templates sensor, evaluated
in-process: once per tick, not before the schedule started, never twice for one tick, a skip
while the previous batch is still going, and nothing while paused."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from dagster import build_sensor_context

import batch_pipelines as bp
from batch_pipelines.app import recurring
from batch_pipelines.app.templates import apply_overrides, parse_sets
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.core.manifest import ManifestError
from batch_pipelines.core.templates import Template
from batch_pipelines.defs.recurring import recurring_templates

MANIFEST = {
    "operation": "import",
    "name": "penguins",
    "options": {"target_table": "penguins", "mode": "append"},
    "settings": {"chunk_size": 1},
    "items": [{"id": "p2007", "path": "data/samples/penguins_2007.csv"}],
}


def _problems(exc: pytest.ExceptionInfo) -> list[str]:
    return [f for f, _ in exc.value.problems]


def _count_templates(env) -> int:  # noqa: ANN001
    with warehouse.connect(env.warehouse, read_only=True) as con:
        return con.execute("select count(*) from templates").fetchone()[0]


def test_save_validates_and_submit_records_the_template(samples: Path, env, instance) -> None:  # noqa: ANN001
    with pytest.raises(ManifestError) as bad:
        bp.save_template("t", {**MANIFEST, "options": {"mode": "sideways"}})
    assert "options.target_table" in _problems(bad) and "options.mode" in _problems(bad)
    with pytest.raises(bp.TemplateError) as bad:
        bp.save_template("no good", {**MANIFEST, "schedule": "0 25 * * *", "timezone": "X/Y"})
    assert _problems(bad) == ["name", "schedule", "timezone"]
    assert _count_templates(env) == 0

    saved = bp.save_template("t", {**MANIFEST, "schedule": "0 6 * * *", "timezone": "UTC"})
    assert saved["schedule"] == "0 6 * * *" and "schedule" not in saved["manifest"]
    batch_id = bp.submit_template(
        "t", {"settings.chunk_size": 5, "name": "override"}, instance=instance
    )
    batch = bp.get_batch(batch_id)
    assert batch["template"] == "t" and batch["name"] == "override"
    assert batch["settings"]["chunk_size"] == 5
    with pytest.raises(ManifestError) as bad:
        bp.submit_template("t", ["settings.chunk_size=lots"], instance=instance)
    assert _problems(bad) == ["settings.chunk_size"]
    [listed] = bp.list_templates()
    assert listed["last_batch"]["batch_id"] == batch_id and listed["next_tick"]
    bp.delete_template("t")
    with pytest.raises(bp.TemplateNotFound):
        bp.get_template("t")
    assert bp.get_batch(batch_id)["template"] == "t"


def test_overrides_name_a_bad_key() -> None:
    assert apply_overrides(MANIFEST, parse_sets(["options.mode=replace", "priority=high"])) == {
        **MANIFEST,
        "options": {"target_table": "penguins", "mode": "replace"},
        "priority": "high",
    }
    assert parse_sets(["settings.chunk_size=5", "x=2026-01-01", "y="]) == {
        "settings.chunk_size": 5,
        "x": "2026-01-01",
        "y": "",
    }
    for sets, field in (
        (["name.first=x"], "name.first"),
        (["options..mode=x"], "options..mode"),
        (["options.mode=[a, b]"], "options.mode"),
        (["schedule=* * * * *"], "schedule"),
    ):
        with pytest.raises(ManifestError) as bad:
            apply_overrides(MANIFEST, parse_sets(sets))
        assert _problems(bad) == [field]
    with pytest.raises(ManifestError) as bad:
        parse_sets(["no-equals"])
    assert _problems(bad) == ["--set"]


def _due(name: str, schedule: str, since: datetime, **kw) -> Template:  # noqa: ANN003
    return Template(
        name=name,
        manifest=MANIFEST,
        operation="import",
        schedule=schedule,
        active_since=since,
        created_at=since,
        updated_at=since,
        **kw,
    )


def test_due_ticks_once_per_tick_from_when_the_schedule_started() -> None:
    saved = datetime(2026, 1, 5, 10, 40, 30)
    t = _due("t", "*/5 * * * *", saved)
    assert recurring.due_ticks([t], {}, saved + timedelta(seconds=5)) == []
    [due] = recurring.due_ticks([t], {}, saved + timedelta(minutes=5))
    assert due.tick.isoformat() == "2026-01-05T10:45:00+00:00"
    cursor = {"t": "2026-01-05T10:45:00"}
    assert recurring.due_ticks([t], cursor, saved + timedelta(minutes=6)) == []
    assert len(recurring.due_ticks([t], cursor, saved + timedelta(minutes=10))) == 1
    # catch_up: the latest tick before the schedule started is due at once; paused: nothing.
    assert len(recurring.due_ticks([_due("c", "0 0 * * *", saved, catch_up=True)], {}, saved)) == 1
    assert recurring.due_ticks([_due("p", "* * * * *", saved, paused=True)], {}, saved) == []


def _events(env, event: str) -> list[tuple]:  # noqa: ANN001
    with warehouse.connect(env.warehouse, read_only=True) as con:
        return con.execute(
            "select batch_id, detail::varchar from batch_events where event = ?", [event]
        ).fetchall()


def test_sensor_submits_once_skips_while_going_and_stops_when_paused(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
) -> None:
    # Daily with catch_up: today's tick is due at once, and stays the latest during the test.
    bp.save_template("every", MANIFEST, schedule="0 0 * * *", catch_up=True)
    result = recurring_templates(build_sensor_context(instance=instance))
    cursor = json.loads(result.cursor)
    with warehouse.connect(env.warehouse, read_only=True) as con:
        [(batch_id, source, key)] = con.execute(
            "select batch_id, source, idempotency_key from batches where template = 'every'"
        ).fetchall()
    assert source == "schedule" and key.startswith("template:every:")
    assert batch_id in result.skip_reason.skip_message

    # The same tick again (a restart that lost the cursor): no second batch.
    [again] = recurring.run_due(instance, {}).submitted
    assert again.endswith(f"-> {batch_id} (already submitted)")

    # The next tick, while the first batch is still queued: skipped, and recorded.
    later = ledger.utcnow() + timedelta(days=1)
    skipped = recurring.run_due(instance, cursor, now=later)
    assert not skipped.submitted and "still going" in skipped.skipped[0]
    [(on_batch, detail)] = _events(env, "template_tick_skipped")
    assert on_batch == batch_id and json.loads(detail)["template"] == "every"

    bp.pause_template("every")
    assert recurring.run_due(instance, {}, now=later + timedelta(days=1)).submitted == []
    resumed = bp.resume_template("every")
    assert not resumed["paused"]
    with warehouse.connect(env.warehouse, read_only=True) as con:
        assert con.execute("select count(*) from batches").fetchone() == (1,)


def test_launchpad_job_submits_a_template_with_overrides(samples: Path, env, instance) -> None:  # noqa: ANN001
    from batch_pipelines.defs.jobs import submit_batch_job

    bp.save_template("lp", MANIFEST)
    config = {"template": "lp", "overrides": {"settings.chunk_size": 3}}
    result = submit_batch_job.execute_in_process(
        run_config={"ops": {"register_batch": {"config": config}}}, instance=instance
    )
    batch = bp.get_batch(result.output_for_node("register_batch"))
    assert batch["template"] == "lp" and batch["settings"]["chunk_size"] == 3


def test_a_refused_tick_is_recorded_and_not_retried_until_the_next(env, instance) -> None:  # noqa: ANN001
    nightly = {**MANIFEST, "items_from": {"glob": "data/incoming/*.csv"}}
    del nightly["items"]
    bp.save_template("nightly", nightly, schedule="0 0 * * *", catch_up=True)
    failed = recurring.run_due(instance, {})
    assert failed.failed and "no file matches" in failed.failed[0]
    [(batch_id, detail)] = _events(env, "template_tick_failed")
    assert batch_id is None and "no file matches" in json.loads(detail)["error"]
    assert recurring.run_due(instance, failed.cursor).failed == []
