"""The CLI starts fast: ``--help`` and the read verbs load neither Dagster nor pandas (checked
in one fresh interpreter), ``import batch_pipelines`` resolves its public names on demand, and
every path a help text shows exists."""

from __future__ import annotations

import glob
import importlib
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import batch_pipelines
from batch_pipelines.cli import batches
from batch_pipelines.cli.main import main
from batch_pipelines.core import warehouse
from batch_pipelines.core.manifest import load_manifest, read_manifest_file, resolve_items
from batch_pipelines_tests.conftest import REPO

DONE = "import-20260101-120000-aaaaaa"
RUNNING = "import-20260101-120100-bbbbbb"
T0 = datetime(2026, 1, 1, 12, 0, 0)

FAST_VERBS = [
    ["--help"],
    ["list"],
    ["list", "--json", "--status", "completed"],
    ["list", "--operation", "import"],
    ["list", "--help"],
    ["status", DONE],
    ["status", DONE, "--json"],
    ["items", DONE],
    ["items", DONE, "--provenance"],
    ["report", DONE],
    ["stats"],
    ["diff", DONE, DONE],
    ["sql", "select count(*) from batch_items"],
    ["metrics"],
    ["webhooks", "list"],
    ["template", "list"],
]

PROBE = """
import json, sys
from click.testing import CliRunner
from batch_pipelines.cli.main import main

codes = {" ".join(v): CliRunner().invoke(main, v).exit_code for v in json.loads(sys.argv[1])}
heavy = sorted(m for m in ("dagster", "pandas", "matplotlib") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _finished_batch(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.executemany(
            "insert into batches (batch_id, operation, name, status, priority, total_items, "
            "processed_items, succeeded_items, progress, created_at, started_at, completed_at) "
            "values (?, 'import', 'b', ?, 'normal', 2, ?, ?, ?, ?, ?, ?)",
            [
                [DONE, "completed", 2, 2, 1.0, T0, T0, T0 + timedelta(seconds=5)],
                [RUNNING, "running", 1, 1, 0.5, T0, T0, None],
            ],
        )
        con.executemany(
            "insert into batch_items (batch_id, item_id, seq, chunk_no, partition_key, status, "
            "attempts, duration_ms, started_at, finished_at) "
            "values (?, ?, ?, 0, ?, 'succeeded', 1, 12.5, ?, ?)",
            [[DONE, f"i{n}", n, f"{DONE}|i{n}", T0, T0 + timedelta(seconds=n)] for n in (1, 2)],
        )


@pytest.mark.e2e
def test_help_and_read_verbs_load_neither_dagster_nor_pandas(env) -> None:  # noqa: ANN001
    _finished_batch(env)
    p = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(FAST_VERBS)],
        env=env.environ(),
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["codes"] == {" ".join(v): 0 for v in FAST_VERBS}
    assert result["heavy"] == []


def test_the_operation_registry_loads_neither_dagster_nor_pandas() -> None:
    probe = (
        "import sys; from batch_pipelines.operations import OPERATION_NAMES; "
        "print(sorted(m for m in ('dagster', 'pandas') if m in sys.modules))"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert p.stdout.strip() == "[]"


def test_public_names_resolve_on_demand() -> None:
    homes = {name: getattr(batch_pipelines, name).__module__ for name in batch_pipelines.__all__}
    for name, module in homes.items():
        assert getattr(importlib.import_module(module), name) is getattr(batch_pipelines, name)
    assert set(batch_pipelines.__all__) <= set(dir(batch_pipelines))
    with pytest.raises(AttributeError):
        batch_pipelines.no_such_name  # noqa: B018


def _help_texts() -> list[str]:
    texts = [CliRunner().invoke(main, ["--help"]).output]
    for name in main.commands:
        result = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
        assert result.exit_code == 0, (name, result.output)
        texts.append(result.output)
    return texts


def test_paths_in_help_texts_exist() -> None:
    shown = {m for text in _help_texts() for m in re.findall(r"\bdata/[\w./*?-]+\w", text)}
    assert "data/samples/manifests/import_penguins.yaml" in shown
    for path in shown:
        assert glob.glob(str(REPO / path)), f"{path} is shown in a help text but does not exist"


def test_the_example_manifest_is_valid(samples: Path) -> None:
    manifest = load_manifest(read_manifest_file(samples / "manifests" / "import_penguins.yaml"))
    assert manifest.operation == "import"
    assert len(resolve_items(manifest)) == 6


def test_every_command_is_registered_once() -> None:
    assert isinstance(main, click.Group)
    assert sorted(main.commands) == [
        "cancel",
        "cleanup",
        "delete",
        "demo",
        "dev",
        "diff",
        "items",
        "list",
        "metrics",
        "pause",
        "priority",
        "report",
        "resume",
        "retry",
        "rollback",
        "sql",
        "stats",
        "status",
        "submit",
        "template",
        "webhooks",
    ]


def test_status_asks_dagster_for_runs_only_while_the_batch_can_have_some(
    env,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    _finished_batch(env)
    asked: list[str] = []

    def fake_runs(batch_id: str) -> list[dict]:
        asked.append(batch_id)
        return [{"run_id": "r1", "chunk": "0", "status": "STARTED"}]

    monkeypatch.setattr(batches, "active_runs", fake_runs)
    runner = CliRunner()
    running = runner.invoke(main, ["status", RUNNING, "--json"])
    assert running.exit_code == 0, running.output
    assert json.loads(running.output)["runs"][0]["run_id"] == "r1"
    shown = runner.invoke(main, ["status", RUNNING], terminal_width=160)
    assert "current runs" in shown.output and "STARTED" in shown.output
    done = runner.invoke(main, ["status", DONE, "--json"])
    assert json.loads(done.output)["runs"] == []
    assert asked == [RUNNING, RUNNING]
