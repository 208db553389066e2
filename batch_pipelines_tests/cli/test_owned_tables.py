"""No manifest writes to a table batch_pipelines owns (the ledger, schema_migrations, the
operations' detail tables, the analytics views) or to one cleanup drops as temporary: the CLI
refuses it at submit with exit 2, the field and the table named, and the ledger stays whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch_pipelines_tests.helpers import cli

PENGUINS = "data/samples/penguins_2007.csv"


def _ledger(env) -> tuple:  # noqa: ANN001
    return (
        env.sql("select count(*) from batches")[0][0],
        env.sql("select count(*) from batch_items")[0][0],
        env.sql("select count(*) from batch_events")[0][0],
        [r[0] for r in env.sql("select id from schema_migrations order by id")],
    )


def _imported_once(env) -> tuple:  # noqa: ANN001
    p = cli(env, "submit", "import", "--items", PENGUINS, "--option", "target_table=t", "--wait")
    assert p.returncode == 0, p.stdout + p.stderr
    before = _ledger(env)
    assert before[0] == 1
    return before


@pytest.mark.parametrize(
    ("args", "field", "table", "owner"),
    [
        (
            ["import", "--items", PENGUINS, "--option", "target_table=batches"],
            "options.target_table",
            "batches",
            "the ledger",
        ),
        (
            ["import", "--items", PENGUINS, "--option", "target_table=main.BATCH_ITEMS"],
            "options.target_table",
            "main.BATCH_ITEMS",
            "the ledger",
        ),
        (
            ["import", "--items", PENGUINS, "--option", "target_table=schema_migrations"],
            "options.target_table",
            "schema_migrations",
            "the schema version table",
        ),
        (
            [
                "import",
                "--item",
                json.dumps({"id": "batch_events", "path": PENGUINS}),
                "--option",
                'target_table="{item_id}"',
            ],
            "options.target_table",
            "batch_events",
            "the ledger",
        ),
        (
            [
                "transform",
                "--item",
                json.dumps({"source": "t", "target": "batch_events", "sql": "select 1 as a"}),
            ],
            "items[0].target",
            "batch_events",
            "the ledger",
        ),
        (
            [
                "transform",
                "--item",
                json.dumps({"source": "t", "target": "t_ok", "sql": "select 1 as a"}),
                "--item",
                json.dumps({"source": "t", "target": "Exports", "sql": "select 1 as a"}),
            ],
            "items[1].target",
            "Exports",
            "an operation's detail table",
        ),
        (
            [
                "transform",
                "--item",
                json.dumps({"source": "t", "target": "batch_metrics", "sql": "select 1 as a"}),
            ],
            "items[0].target",
            "batch_metrics",
            "an analytics view",
        ),
    ],
)
def test_a_manifest_cannot_write_a_table_the_project_owns(
    samples: Path,
    env,  # noqa: ANN001
    args: list[str],
    field: str,
    table: str,
    owner: str,
) -> None:
    before = _imported_once(env)

    p = cli(env, "submit", *args, "--option", "mode=replace", "--wait")

    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert (
        f"{field}: {table!r} is a table batch_pipelines owns ({owner}); choose another name"
        in p.stderr
    ), p.stderr
    assert _ledger(env) == before
    listed = cli(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1


def test_a_manifest_cannot_write_a_table_cleanup_drops_as_temporary(
    samples: Path,
    env,  # noqa: ANN001
) -> None:
    for target in ("staging.kept", "kept__tmp_1a2b3c4d"):
        p = cli(env, "submit", "import", "--items", PENGUINS, "--option", f"target_table={target}")
        assert p.returncode == 2, p.stdout + p.stderr
        assert f"options.target_table: {target!r} " in p.stderr, p.stderr
        assert "cleanup" in p.stderr and "temp_tables" in p.stderr, p.stderr
    assert env.sql("select count(*) from batches") == [(0,)]


def test_a_batch_recorded_before_the_rule_is_refused_when_it_runs(
    samples: Path,
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
) -> None:
    """A batch submitted by an older version (or an old partition materialized by hand) is
    checked again when its items run."""
    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.core import warehouse
    from batch_pipelines.definitions import defs

    batch_id = submit_batch(
        {"operation": "import", "options": {"target_table": "t"}, "items": [PENGUINS]},
        instance=instance,
    )
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            "update batches set options = ? where batch_id = ?",
            [json.dumps({"target_table": "batches", "mode": "replace"}), batch_id],
        )

    batch = run_batch_in_process(batch_id, instance, defs)

    assert batch["status"] == "failed", batch
    ((category, error),) = env.sql("select error_category, error from batch_items")
    assert category == "validation"
    assert error == (
        "options.target_table: 'batches' is a table batch_pipelines owns (the ledger); "
        "choose another name"
    )
    assert env.sql("select count(*) from batches") == [(1,)]
