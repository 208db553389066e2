"""The real `batch-pipelines` CLI in subprocesses against a temporary DAGSTER_HOME and
warehouse: submit (manifest and flags) with --wait running in-process, status, list, items,
--json output and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch_pipelines_tests.helpers import cli

pytestmark = pytest.mark.e2e


def test_submit_manifest_ok_then_failures_exit_1(samples: Path, env) -> None:  # noqa: ANN001
    manifest = env.data / "m.yaml"
    manifest.write_text(
        "operation: import\nname: cli manifest\npriority: high\n"
        "options: {target_table: penguins}\nsettings: {chunk_size: 2}\n"
        "items_from: {glob: 'data/samples/penguins_*'}\n"
    )
    p = cli(env, "submit", str(manifest), "--wait", "--json")
    assert p.returncode == 0, p.stderr
    batch = json.loads(p.stdout)
    assert batch["status"] == "completed" and batch["succeeded_items"] == 6
    assert batch["source"] == "cli" and batch["chunk_count"] == 3
    assert env.sql("select count(*) from penguins") == [(592,)]

    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/samples/bad/*",
        "--option",
        "target_table=penguins",
        "--max-retries",
        "0",
        "--wait",
    )
    assert p.returncode == 1
    assert "failed" in p.stdout

    p = cli(env, "status", batch["batch_id"], "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["progress"] == 1.0
    p = cli(env, "status", batch["batch_id"])
    assert "completed" in p.stdout and "100%" in p.stdout

    p = cli(env, "list", "--json")
    rows = json.loads(p.stdout)
    assert [r["status"] for r in rows] == ["failed", "completed"]
    p = cli(env, "list", "--status", "completed", "--operation", "import", "--json")
    assert [r["batch_id"] for r in json.loads(p.stdout)] == [batch["batch_id"]]
    p = cli(env, "list", "--limit", "1", "--offset", "1", "--json")
    assert [r["batch_id"] for r in json.loads(p.stdout)] == [batch["batch_id"]]
    p = cli(env, "list", "--created-after", "2999-01-01", "--json")
    assert json.loads(p.stdout) == []

    failed_id = rows[0]["batch_id"]
    p = cli(env, "items", failed_id, "--status", "failed", "--json")
    items = json.loads(p.stdout)
    assert len(items) == 4 and all(i["error_category"] == "validation" for i in items)
    p = cli(env, "items", failed_id)
    assert p.returncode == 0 and "validation" in p.stdout


def test_bad_input_exits_2_and_names_the_field(samples: Path, env) -> None:  # noqa: ANN001
    p = cli(env, "submit", "import", "--items", "/etc/passwd", "--option", "target_table=a-b")
    assert p.returncode == 2
    assert "options.target_table" in p.stderr and "items[0].path" in p.stderr
    p = cli(env, "submit", "import", "--items", "data/samples/penguins_2007.csv", "--json")
    assert p.returncode == 2
    assert json.loads(p.stdout)["problems"][0]["field"] == "options.target_table"
    p = cli(env, "submit", "nonsense")
    assert p.returncode == 2 and "neither a manifest file nor an operation" in p.stderr
    p = cli(
        env, "submit", "import", "--items", "data/samples/penguins_2007.csv", "--option", "novalue"
    )
    assert p.returncode == 2 and "expected key=value" in p.stderr
    p = cli(env, "list", "--limit", "101")
    assert p.returncode == 2 and "limit" in p.stderr
    p = cli(env, "list", "--limit", "0")
    assert p.returncode == 2
    p = cli(env, "list", "--created-after", "yesterday")
    assert p.returncode == 2 and "--created-after" in p.stderr
    p = cli(env, "status", "import-20990101-000000-abcdef")
    assert p.returncode == 1 and "no batch" in p.stderr
    p = cli(env, "submit", "annotate", "--item", '{"text": "hi"}', "--item-concurrency", "0")
    assert p.returncode == 2 and "settings.item_concurrency" in p.stderr
    manifest = env.root / "too_many.yaml"
    manifest.write_text(
        "operation: annotate\nsettings: {item_concurrency: 300}\nitems: [{text: hi}]\n"
    )
    p = cli(env, "submit", str(manifest), "--json")
    assert p.returncode == 2
    (problem,) = json.loads(p.stdout)["problems"]
    assert problem["field"] == "settings.item_concurrency" and "256" in problem["message"]
    # Nothing was registered by any of these.
    if env.warehouse.exists():
        assert env.sql("select count(*) from batches") == [(0,)]


@pytest.mark.parametrize(
    ("args", "setting", "value"),
    [
        (["list"], "BATCH_PIPELINES_WAREHOUSE", "ducklake:mysql:db"),
        (["stats"], "BATCH_PIPELINES_WAREHOUSE", "ducklake:sqlite:"),
        (
            ["submit", "import", "--items", "data/samples/*.csv", "--option", "target_table=t"],
            "BATCH_PIPELINES_MAX_ITEMS",
            "many",
        ),
    ],
)
def test_a_bad_setting_exits_2_naming_it(env, args: list[str], setting: str, value: str) -> None:  # noqa: ANN001
    p = cli(env, *args, **{setting: value})
    assert p.returncode == 2, p.stdout + p.stderr
    assert setting in p.stderr and "--limit" not in p.stderr and "Traceback" not in p.stderr


def test_submit_without_wait_queues(samples: Path, env) -> None:  # noqa: ANN001
    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/samples/penguins_2007.csv",
        "--option",
        "target_table=t",
    )
    assert p.returncode == 0, p.stderr
    assert "submitted" in p.stdout and "no Dagster daemon is running" in p.stdout
    assert env.sql("select status from batches") == [("queued",)]


def test_control_verbs(samples: Path, env) -> None:  # noqa: ANN001
    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/samples/penguins_*",
        "--option",
        "target_table=t",
        "--chunk-size",
        "2",
        "--json",
    )
    batch_id = json.loads(p.stdout)["batch_id"]
    p = cli(env, "pause", batch_id, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "paused"
    p = cli(env, "pause", "import-20990101-000000-abcdef")
    assert p.returncode == 1 and "no batch" in p.stderr
    p = cli(env, "resume", batch_id)
    assert p.returncode == 0 and "6 item(s) left" in p.stdout
    p = cli(env, "resume", batch_id)
    assert p.returncode == 2 and "not paused" in p.stderr
    p = cli(env, "cancel", batch_id, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["items_cancelled"] == 6
    p = cli(env, "cancel", batch_id)
    assert p.returncode == 2 and "already cancelled" in p.stderr
    p = cli(env, "status", batch_id, "--json")
    assert json.loads(p.stdout)["status"] == "cancelled"

    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/samples/bad/*",
        "--option",
        "target_table=t",
        "--max-retries",
        "0",
        "--wait",
        "--json",
    )
    failed_id = json.loads(p.stdout)["batch_id"]
    p = cli(env, "retry", failed_id, "--category", "transient")
    assert p.returncode == 2 and "no failed items in categories" in p.stderr
    p = cli(env, "retry", failed_id, "--category", "validation", "--wait", "--json")
    child = json.loads(p.stdout)
    assert p.returncode == 1 and child["parent_batch_id"] == failed_id
    assert child["total_items"] == 4 and child["failed_items"] == 4
    events = [
        e
        for (e,) in env.sql(
            "select event from batch_events where batch_id = ? order by event_id", [batch_id]
        )
    ]
    assert "batch_pause_requested" in events and "batch_resumed" in events
    assert env.sql("select actor from batch_events where event = 'batch_resumed'")[0][0].startswith(
        "cli:"
    )


def test_sql_is_read_only(samples: Path, env) -> None:  # noqa: ANN001
    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/samples/penguins_2007.csv",
        "--option",
        "target_table=t",
        "--wait",
    )
    assert p.returncode == 0, p.stderr
    p = cli(env, "sql", "select count(*) as n from t", "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout) == [{"n": 110}]
    p = cli(env, "sql", "delete from t")
    assert p.returncode == 2 and "read-only" in p.stderr
    p = cli(env, "sql", "select * from nowhere")
    assert p.returncode == 2 and "nowhere" in p.stderr
    assert env.sql("select count(*) from t") == [(110,)]
