"""Rough edges a new user hits, through the real CLI: the rate limit counts who really
submits (not the manifest's ``submitted_by``) and says so; ``items_from`` SQL with integer
ids; glob item ids relative to the data root in natural order. (The severity in ``report``
and the stack trace of unexpected errors: core/test_runner.py.)"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from batch_pipelines_tests.helpers import cli

pytestmark = pytest.mark.e2e


def test_rate_limit_is_per_os_user_whatever_the_manifest_says(samples: Path, env) -> None:  # noqa: ANN001
    manifest = env.data / "m.yaml"
    manifest.write_text(
        "operation: import\noptions: {target_table: t}\nsubmitted_by: someone_else\n"
        "items: [{path: data/samples/penguins_2007.csv}]\n"
    )
    limit = {"BATCH_PIPELINES_MAX_BATCHES_PER_HOUR": "1"}
    p = cli(env, "submit", str(manifest), **limit)
    assert p.returncode == 0, p.stderr
    manifest.write_text(manifest.read_text().replace("someone_else", "yet_another_name"))
    p = cli(env, "submit", str(manifest), **limit)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "rate limit" in p.stderr and "invalid manifest" not in p.stderr
    assert f"{getpass.getuser()} submitted 1 batches" in p.stderr
    p = cli(env, "submit", str(manifest), "--json", **limit)
    assert p.returncode == 2 and json.loads(p.stdout)["error"] == "rate limit"
    assert env.sql(
        "select b.submitted_by, e.actor from batches b join batch_events e using (batch_id) "
        "where e.event = 'batch_submitted'"
    ) == [("someone_else", f"cli:{getpass.getuser()}")]


def test_items_from_sql_with_integer_ids(env) -> None:  # noqa: ANN001
    manifest = env.data / "m.yaml"
    manifest.write_text(
        "operation: annotate\nitems_from:\n"
        "  sql: select i as id, 'penguins live on islands number ' || i as text "
        "from range(1, 4) t(i)\n"
    )
    p = cli(env, "submit", str(manifest), "--wait", "--json")
    assert p.returncode == 0, p.stderr
    batch_id = json.loads(p.stdout)["batch_id"]
    p = cli(env, "items", batch_id, "--json")
    assert [i["item_id"] for i in json.loads(p.stdout)] == ["1", "2", "3"]


def test_glob_ids_are_relative_to_the_data_root_in_natural_order(env) -> None:  # noqa: ANN001
    folder = env.data / "notes"
    folder.mkdir()
    for n in (10, 2, 1, 11):
        (folder / f"ok_{n}.txt").write_text(f"note number {n} about penguins and islands")
    p = cli(env, "submit", "annotate", "--items", "data/notes/*.txt", "--wait", "--json")
    assert p.returncode == 0, p.stderr
    batch_id = json.loads(p.stdout)["batch_id"]
    items = json.loads(cli(env, "items", batch_id, "--json").stdout)
    ids = [f"notes/ok_{n}.txt" for n in (1, 2, 10, 11)]
    assert [i["item_id"] for i in items] == ids
    assert [i["status"] for i in items] == ["succeeded"] * 4
    assert [Path(i["payload"]["path"]) for i in items] == [env.data / i for i in ids]
    p = cli(env, "items", batch_id)
    table = p.stdout
    assert table.index("notes/ok_2.txt") < table.index("notes/ok_10.txt")
    assert str(env.data) not in table
