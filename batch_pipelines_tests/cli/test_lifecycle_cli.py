"""The lifecycle verbs as a user runs them, on one data dir: rollback, priority, cancel
--rollback, pause --all / resume --all, delete, the queue cap; refusals exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from batch_pipelines_tests.helpers import cli

PENGUINS = ("--items", "data/samples/penguins_2007.csv", "--option", "target_table=t")


def test_lifecycle_verbs(samples: Path, env) -> None:  # noqa: ANN001
    p = cli(env, "submit", "import", *PENGUINS, "--wait", "--json")
    done = json.loads(p.stdout)["batch_id"]
    assert env.sql("select count(*) from t")[0][0] > 0

    p = cli(env, "rollback", done)
    assert p.returncode == 0, p.stderr
    assert "rolled back" in p.stdout
    assert env.sql("select count(*) from duckdb_tables() where table_name = 't'") == [(0,)]
    p = cli(env, "priority", done, "high")
    assert p.returncode == 2 and "it is rolled_back" in p.stderr

    p = cli(env, "submit", "import", *PENGUINS, "--json")
    queued = json.loads(p.stdout)["batch_id"]
    p = cli(env, "priority", queued, "critical", "--json")
    assert p.returncode == 0, p.stderr
    assert env.sql("select priority from batches where batch_id = ?", [queued]) == [("critical",)]
    p = cli(env, "delete", queued, "--yes")
    assert p.returncode == 2 and "it is queued; cancel it first" in p.stderr

    p = cli(env, "pause", "--all")
    assert p.returncode == 0, p.stderr
    assert "held: 1 batch(es) paused" in p.stdout
    p = cli(env, "resume", "--all")
    assert p.returncode == 0 and "1 batch(es) resumed" in p.stdout
    p = cli(env, "resume", "--all")
    assert p.returncode == 2 and "not held" in p.stderr

    p = cli(env, "cancel", queued, "--rollback", "--wait-s", "0", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "rolled_back"

    p = cli(env, "delete", done)  # not a terminal: refuses to delete without --yes
    assert p.returncode == 2 and "--yes" in p.stderr
    p = cli(env, "delete", done, "--yes")
    assert p.returncode == 0, p.stderr
    p = cli(env, "status", done)
    assert p.returncode == 1 and "deleted" in p.stderr and "by cli:" in p.stderr
    assert env.sql("select event from batch_events where batch_id = ?", [done]) == [
        ("batch_deleted",)
    ]

    p = cli(env, "submit", "import", *PENGUINS, BATCH_PIPELINES_MAX_QUEUED_ITEMS="0")
    assert p.returncode == 0, p.stderr
    p = cli(env, "submit", "import", *PENGUINS, BATCH_PIPELINES_MAX_QUEUED_ITEMS="1")
    assert p.returncode == 2
    assert "queue is full: 1 queued, limit 1" in p.stderr
