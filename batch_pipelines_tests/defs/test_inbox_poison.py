"""One bad manifest never stops the inbox: a file that cannot be parsed, validated or
submitted goes to rejected/ with its reason and the newer manifests are still taken; a glob
is resolved inside the allowed roots only, with a bound on the files it visits."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from dagster import SkipReason, build_sensor_context

from batch_pipelines.core import warehouse
from batch_pipelines.defs import sensors
from batch_pipelines.defs.sensors import inbox_sensor

GOOD = (
    "operation: import\nname: good\noptions: {target_table: t}\n"
    "items:\n  - data/samples/penguins_2007.csv\n"
)


def write_at(path: Path, text: str, age_s: float) -> None:
    path.write_text(text)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def tick(instance) -> SkipReason:  # noqa: ANN001
    result = inbox_sensor(build_sensor_context(instance=instance))
    assert isinstance(result, SkipReason)
    return result


def rejection(inbox: Path, name: str) -> dict:
    assert (inbox / "rejected" / name).exists(), sorted(p.name for p in inbox.rglob("*"))
    return json.loads((inbox / "rejected" / f"{name}.error.json").read_text())


def processed(inbox: Path) -> list[str]:
    folder = inbox / "processed"
    return sorted(p.name.split("__", 1)[1] for p in folder.iterdir()) if folder.is_dir() else []


def test_deeply_nested_manifests_are_rejected_and_newer_ones_taken(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
) -> None:
    inbox = env.data / "inbox"
    depth = 20_000
    write_at(
        inbox / "deep.json",
        '{"operation": "import", "options": ' + "[" * depth + "]" * depth + "}",
        age_s=30,
    )
    write_at(inbox / "deep.yaml", "operation: import\noptions: " + "[" * depth + "]" * depth, 20)
    write_at(inbox / "good.yaml", GOOD, age_s=10)

    result = tick(instance)

    assert "registered 1 batch" in result.skip_message
    assert processed(inbox) == ["good.yaml"]
    for name in ("deep.json", "deep.yaml"):
        err = rejection(inbox, name)
        assert "nested too deeply" in json.dumps(err), err
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []


def test_glob_outside_the_roots_is_refused_before_any_walk(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox = env.data / "inbox"
    real_scandir = os.scandir
    outside = env.root / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "deeper" / "x.csv").write_text("a\n1\n")

    def guarded_scandir(path=".", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        resolved = Path(os.fsdecode(path) if not isinstance(path, int) else ".").resolve()
        if resolved == Path("/") or resolved.is_relative_to(outside):
            raise AssertionError(f"the inbox listed {resolved}, outside the allowed roots")
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", guarded_scandir)
    write_at(
        inbox / "everything.yaml",
        "operation: import\noptions: {target_table: t}\nitems_from: {glob: '/**/*'}\n",
        age_s=40,
    )
    write_at(
        inbox / "sideways.yaml",
        "operation: import\noptions: {target_table: t}\n"
        f"items_from: {{glob: '{outside}/**/*.csv'}}\n",
        age_s=30,
    )
    write_at(
        inbox / "climb.yaml",
        "operation: import\noptions: {target_table: t}\n"
        "items_from: {glob: 'data/*/../../outside/**/*.csv'}\n",
        age_s=20,
    )
    write_at(inbox / "good.yaml", GOOD, age_s=10)

    started = time.monotonic()
    result = tick(instance)

    assert time.monotonic() - started < 30
    assert "registered 1 batch" in result.skip_message, result.skip_message
    assert processed(inbox) == ["good.yaml"]
    for name in ("everything.yaml", "sideways.yaml", "climb.yaml"):
        problems = rejection(inbox, name)["problems"]
        assert [p["field"] for p in problems] == ["items_from.glob"], problems
    assert (
        "outside the allowed roots" in rejection(inbox, "everything.yaml")["problems"][0]["message"]
    )
    assert ".." in rejection(inbox, "climb.yaml")["problems"][0]["message"]


def test_glob_visiting_too_many_files_is_refused(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox = env.data / "inbox"
    many = env.data / "many"
    for d in range(4):
        (many / f"d{d}").mkdir(parents=True)
        for i in range(30):
            (many / f"d{d}" / f"f{i}.txt").write_text("x")
    monkeypatch.setenv("BATCH_PIPELINES_GLOB_MAX_FILES", "50")
    write_at(
        inbox / "wide.yaml",
        "operation: import\noptions: {target_table: t}\nitems_from: {glob: 'data/many/**/*.csv'}\n",
        age_s=20,
    )
    write_at(
        inbox / "narrow.yaml",
        "operation: import\nname: good\noptions: {target_table: t}\n"
        "items_from: {glob: 'data/samples/penguins_200*'}\n",
        age_s=10,
    )

    result = tick(instance)

    assert "registered 1 batch" in result.skip_message, result.skip_message
    assert processed(inbox) == ["narrow.yaml"]
    problems = rejection(inbox, "wide.yaml")["problems"]
    assert problems[0]["field"] == "items_from.glob"
    assert "BATCH_PIPELINES_GLOB_MAX_FILES" in problems[0]["message"]


def test_an_unexpected_error_rejects_that_file_only_and_a_busy_warehouse_keeps_it(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox = env.data / "inbox"
    real_submit = sensors.submit_batch

    def flaky_submit(path: Path, **kwargs):  # noqa: ANN003, ANN202
        if path.name == "boom.yaml":
            raise RuntimeError("something nobody expected")
        if path.name == "busy.yaml":
            raise warehouse.WarehouseBusyError("warehouse is locked by another process")
        return real_submit(path, **kwargs)

    monkeypatch.setattr(sensors, "submit_batch", flaky_submit)
    write_at(inbox / "boom.yaml", GOOD, age_s=40)
    write_at(inbox / "busy.yaml", GOOD, age_s=30)
    write_at(inbox / "good.yaml", GOOD, age_s=10)

    result = tick(instance)

    assert "registered 1 batch" in result.skip_message, result.skip_message
    assert processed(inbox) == ["good.yaml"]
    err = rejection(inbox, "boom.yaml")
    assert "RuntimeError: something nobody expected" in err["error"]
    assert (inbox / "busy.yaml").exists()
    assert not (inbox / "rejected" / "busy.yaml").exists()


def test_a_slow_items_from_sql_is_stopped_within_the_tick(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dagster ends a sensor tick after 60 s; a manifest whose query runs longer must be
    rejected inside the tick, not retried by every tick."""
    inbox = env.data / "inbox"
    monkeypatch.setenv("BATCH_PIPELINES_INBOX_QUERY_TIMEOUT_S", "2")
    query = "select count(*)::varchar as path from range(100000000) a, range(100000000) b"
    write_at(
        inbox / "slow.yaml",
        f"operation: import\noptions: {{target_table: t}}\nitems_from: {{sql: '{query}'}}\n",
        age_s=20,
    )
    write_at(inbox / "good.yaml", GOOD, age_s=10)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(tick(instance)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=50)
    assert not worker.is_alive(), "the inbox tick is still running after 50 s"
    assert time.monotonic() - started < 50
    assert processed(inbox) == ["good.yaml"]
    problems = rejection(inbox, "slow.yaml")["problems"]
    assert problems[0]["field"] == "items_from.sql"
    assert "BATCH_PIPELINES_INBOX_QUERY_TIMEOUT_S" in problems[0]["message"]


def test_a_tick_stops_taking_files_after_its_budget(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batch_pipelines.app import inbox as inbox_mod

    inbox = env.data / "inbox"
    monkeypatch.setattr(inbox_mod, "TICK_BUDGET_S", 0.0)
    write_at(inbox / "first.yaml", GOOD, age_s=20)
    write_at(inbox / "second.yaml", GOOD.replace("good", "second"), age_s=10)
    tick(instance)
    assert processed(inbox) == ["first.yaml"]
    tick(instance)
    assert processed(inbox) == ["first.yaml", "second.yaml"]


def test_a_manifest_writing_a_ledger_table_is_rejected(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
) -> None:
    inbox = env.data / "inbox"
    write_at(
        inbox / "wipe.yaml",
        "operation: transform\noptions: {mode: replace}\n"
        "items:\n  - {source: batches, target: Main.Batch_Events, sql: 'select 1 as a'}\n",
        age_s=20,
    )
    write_at(inbox / "good.yaml", GOOD, age_s=10)

    result = tick(instance)

    assert "registered 1 batch" in result.skip_message, result.skip_message
    assert processed(inbox) == ["good.yaml"]
    problems = rejection(inbox, "wipe.yaml")["problems"]
    assert problems == [
        {
            "field": "items[0].target",
            "message": "'Main.Batch_Events' is a table batch_pipelines owns (the ledger); "
            "choose another name",
        }
    ], problems
    assert env.sql("select count(*) from batches") == [(1,)]
