"""The cleanup operation and the ``batch-pipelines cleanup`` command.

Guards against: deleting anything outside the exports/reports/staging roots (through a
symlink, a ``..`` in a manifest or in a ledger row); a dry run that deletes; a real run that
leaves ledger rows, detail rows, partitions or files of old batches behind, or touches newer
ones; orphan detection that takes a known batch's files; temp-table cleanup that drops real
tables; partition deletion that is one storage call per key when a bulk path exists.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from batch_pipelines.app import dagster_storage, partitions
from batch_pipelines.app.services import host_resources
from batch_pipelines.core import warehouse
from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import ItemError, ValidationItemError
from batch_pipelines.core.keys import new_batch_id
from batch_pipelines.operations.cleanup.files import safe_unlink, walk_files
from batch_pipelines.operations.cleanup.handler import handle_cleanup
from batch_pipelines.operations.cleanup.models import CleanupItem, CleanupOptions
from batch_pipelines_tests.helpers import (
    cli,
    import_penguins,
    insert_queued_batch,
    item_context,
    run_batch,
    run_item,
)


def make_ctx(env, payload: dict, instance=None, **options) -> ItemContext:  # noqa: ANN001, ANN003
    return item_context(env, "cleanup", payload, options, resources=host_resources(instance))


def run_cleanup(env, payload: dict, instance=None, **options) -> dict:  # noqa: ANN001, ANN003
    return run_item(env, "cleanup", make_ctx(env, payload, instance, **options)).metrics


def write(path: Path, text: str = "x", age_days: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age_days:
        t = time.time() - age_days * 86400
        os.utime(path, (t, t))
    return path


def age_batches(env, batch_ids: list[str], days: float) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        for b in batch_ids:
            con.execute(
                "update batches set completed_at = completed_at - to_days(?), "
                "created_at = created_at - to_days(?) where batch_id = ?",
                [int(days), int(days), b],
            )


# --- the safety net ------------------------------------------------------------------------


def test_item_model() -> None:
    assert CleanupItem(kind="old_batches", older_than_days=30).id == "old_batches:30d"
    assert CleanupItem(kind="orphan_files", root="reports").id == "orphan_files:reports"
    with pytest.raises(ValueError, match="needs older_than_days"):
        CleanupItem(kind="old_batches")
    with pytest.raises(ValueError, match="needs root"):
        CleanupItem(kind="old_files", older_than_days=1)
    with pytest.raises(ValueError, match="does not take root"):
        CleanupItem(kind="temp_tables", root="exports")
    with pytest.raises(ValueError):
        CleanupItem(kind="old_files", root="samples", older_than_days=1)
    assert CleanupOptions().dry_run is True


def test_safe_unlink_refuses_everything_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data" / "exports"
    outside = write(tmp_path / "outside" / "secret.txt", "keep me")
    inside = write(root / "b1" / "file.csv")
    (root / "b1" / "link_out").symlink_to(outside)
    (root / "dir_out").symlink_to(outside.parent, target_is_directory=True)
    (root / "b1" / "link_in").symlink_to(inside)
    dotdot = root / "b1" / ".." / ".." / ".." / "outside" / "secret.txt"
    for bad, reason in [
        (root / "b1" / "link_out", "symlink to"),
        (dotdot, "outside"),
        (root / "dir_out" / "secret.txt", "outside"),
        (root, "outside"),
        (tmp_path / "outside" / "secret.txt", "outside"),
    ]:
        with pytest.raises(ValueError, match=reason):
            safe_unlink(bad, root)
    assert outside.read_text() == "keep me"
    assert safe_unlink(root / "b1" / "link_in", root) == 0  # the link, not its target
    assert inside.exists() and not (root / "b1" / "link_in").is_symlink()
    assert safe_unlink(inside, root) == 1 and not inside.exists()
    walked = sorted(p.name for p, _ in walk_files(root, root))
    assert walked == ["dir_out", "link_out"]  # never descends through a symlinked folder


def test_old_files_never_leave_the_root(env, tmp_path: Path) -> None:  # noqa: ANN001
    exports = env.data / "exports"
    outside = write(tmp_path / "elsewhere" / "precious.csv", "keep", age_days=90)
    old = write(exports / "b1" / "old.csv", "old", age_days=40)
    new = write(exports / "b1" / "new.csv", "new")
    (exports / "b1" / "link.csv").symlink_to(outside)
    (exports / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    t = time.time() - 90 * 86400
    for link in (exports / "b1" / "link.csv", exports / "linkdir"):
        os.utime(link, (t, t), follow_symlinks=False)
    sample = write(env.data / "samples" / "keep.csv", "sample", age_days=90)

    dry = run_cleanup(env, {"kind": "old_files", "root": "exports", "older_than_days": 30})
    assert dry["files"] == 1 and dry["dry_run"] and old.exists()
    assert dry["refused"] == 2 and all("symlink to" in r for r in dry["refused_objects"])

    real = run_cleanup(
        env, {"kind": "old_files", "root": "exports", "older_than_days": 30}, dry_run=False
    )
    assert real["deleted"] == 1 and not old.exists() and new.exists()
    assert outside.read_text() == "keep" and sample.exists()
    assert (exports / "b1" / "link.csv").is_symlink()
    log = env.sql("select object_type, object, dry_run, deleted_at is null from cleanup_log")
    assert log == [("file", str(old), False, False)]

    with pytest.raises(ValidationItemError, match="outside the exports root"):
        handle_cleanup(
            make_ctx(
                env,
                {
                    "kind": "old_files",
                    "root": "exports",
                    "older_than_days": 0,
                    "path": "data/exports/../samples",
                },
            )
        )
    with pytest.raises(ValidationItemError, match="outside the allowed roots"):
        handle_cleanup(
            make_ctx(
                env,
                {"kind": "orphan_files", "root": "exports", "path": "data/../../elsewhere"},
            )
        )
    with pytest.raises(ValidationItemError, match="linkdir.*outside the allowed roots"):
        handle_cleanup(
            make_ctx(
                env, {"kind": "orphan_files", "root": "exports", "path": "data/exports/linkdir"}
            )
        )
    assert outside.read_text() == "keep" and sample.exists()


# --- targets ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("any_env")  # and again on a lake
def test_old_batches_dry_run_then_real(env, samples: Path, instance, tmp_path: Path) -> None:  # noqa: ANN001
    old_id = import_penguins(instance, "penguins_old")
    new_id = import_penguins(instance, "penguins_new")
    age_batches(env, [old_id], 40)
    outside = write(tmp_path / "outside.txt", "keep")
    files = [
        write(env.data / "exports" / old_id / "a.csv", "a" * 10),
        write(env.data / "reports" / old_id / "r.html", "r" * 20),
        write(env.data / "staging" / old_id / "s.parquet", "s"),
    ]
    keep_new = write(env.data / "exports" / new_id / "b.csv")
    (env.data / "reports" / old_id / "evil.html").symlink_to(outside)
    with warehouse.connect(env.warehouse) as con:
        # A detail row whose path climbs out of the reports root must not reach the sample.
        con.execute(
            "insert into reports (batch_id, item_id, kind, subject, html_path, created_at) "
            "values (?, 'x', 'batch', 's', ?, now()::timestamp)",
            [old_id, str(env.data / "reports" / ".." / "samples" / "penguins_2007.csv")],
        )
    keys_before = set(instance.get_dynamic_partitions("import_items"))
    assert len(keys_before) == 4

    dry = run_cleanup(env, {"kind": "old_batches", "older_than_days": 30}, instance)
    assert dry["batches"] == 1 and dry["files"] == 3 and dry["partitions"] == 2
    assert all(f.exists() for f in files)
    assert env.sql("select count(*) from batches") == [(2,)]
    listed = env.sql(
        "select object_type, object from cleanup_log where dry_run order by object_type, object"
    )
    assert ("batch", old_id) in listed and ("partitions", f"import_items:{old_id}") in listed
    assert ("rows", f"import_files:{old_id}") in listed and ("rows", f"reports:{old_id}") in listed
    # a second dry run replaces its listing
    run_cleanup(env, {"kind": "old_batches", "older_than_days": 30}, instance)
    assert env.sql("select count(*) from cleanup_log") == [(len(listed),)]

    real = run_cleanup(env, {"kind": "old_batches", "older_than_days": 30}, instance, dry_run=False)
    assert real["partition_delete"] == "sql" and real["refused"] == 1
    for table in (
        "batches",
        "batch_items",
        "item_attempts",
        "batch_events",
        "import_files",
        "reports",
    ):
        assert env.sql(f"select count(*) from {table} where batch_id = ?", [old_id]) == [(0,)]
    assert env.sql("select count(*) from batch_items where batch_id = ?", [new_id]) == [(2,)]
    assert env.sql("select count(*) from penguins_old") == [(210,)]  # imported data stays
    assert not any(f.exists() for f in files) and keep_new.exists()
    assert not (env.data / "staging" / old_id).exists()
    assert outside.read_text() == "keep" and (samples / "penguins_2007.csv").exists()
    keys_after = set(instance.get_dynamic_partitions("import_items"))
    assert keys_after == {k for k in keys_before if k.startswith(new_id)}
    deleted = env.sql("select object_type, count(*) from cleanup_log where not dry_run group by 1")
    assert dict(deleted)["file"] == 3 and dict(deleted)["batch"] == 1
    # a re-run finds nothing and keeps the audit of what was deleted
    again = run_cleanup(
        env, {"kind": "old_batches", "older_than_days": 30}, instance, dry_run=False
    )
    assert again["deleted"] == 0
    assert env.sql("select count(*) from cleanup_log where not dry_run")[0][0] == sum(
        n for _, n in deleted
    )

    # The nightly cleanup then compacts a lake and expires its snapshots; the data stays.
    from batch_pipelines.defs.schedules import nightly_cleanup_manifest

    kinds = [i["kind"] for i in nightly_cleanup_manifest(30)["items"]]
    assert ("lake" in kinds) == bool(env.lake)
    kept = env.sql("select count(*) from penguins_new")
    done = run_cleanup(env, {"kind": "lake", "older_than_days": 0}, instance, dry_run=False)
    if env.lake:
        assert done["expired_snapshots"] > 0 and done["deleted_files"] > 0, done
        assert env.sql("select count(*) from penguins_new") == kept
        assert env.sql("select count(*) from batch_items where batch_id = ?", [new_id]) == [(2,)]
        assert env.sql("select count(*) from cleanup_log where target_kind = 'lake'") == [(1,)]
    else:
        assert "nothing to compact" in done["notes"]


def test_orphan_files(env, samples: Path, instance) -> None:  # noqa: ANN001
    known = import_penguins(instance)
    kept = write(env.data / "reports" / known / "r.md")
    orphans = [
        write(env.data / "reports" / "report-20200101-000000-000000" / "gone.html"),
        write(env.data / "reports" / "loose.md"),
    ]
    recorded = write(env.data / "reports" / "manual" / "recorded.html")
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            "insert into reports (batch_id, item_id, kind, subject, html_path, created_at) "
            "values (?, 'x', 'batch', 's', ?, now()::timestamp)",
            [known, str(recorded)],
        )
    metrics = run_cleanup(env, {"kind": "orphan_files", "root": "reports"}, dry_run=False)
    assert metrics["files"] == 2
    assert kept.exists() and recorded.exists() and not any(o.exists() for o in orphans)
    assert not (env.data / "reports" / "report-20200101-000000-000000").exists()


def test_temp_tables(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute("create table sales (a int)")
        con.execute("create table sales__tmp_1a2b3c4d as select 1 as a")
        con.execute("create table sales_tmp (a int)")  # not the pattern
        con.execute("create schema staging")
        con.execute("create table staging.half_done (a int)")
    dry = run_cleanup(env, {"kind": "temp_tables"})
    assert dry["tables"] == 2
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            "insert into batches (batch_id, operation, name, status, priority, total_items, "
            "created_at) values ('transform-20260101-000000-aaaaaa', 'transform', 't', "
            "'running', 'normal', 1, now()::timestamp)"
        )
    busy = run_cleanup(env, {"kind": "temp_tables"}, dry_run=False)
    assert busy["tables"] == 0 and "left alone" in busy["notes"]
    with warehouse.connect(env.warehouse) as con:
        con.execute("update batches set status = 'completed'")
    real = run_cleanup(env, {"kind": "temp_tables"}, dry_run=False)
    assert real["deleted"] == 2
    tables = {
        r[0]
        for r in env.sql("select table_schema || '.' || table_name from information_schema.tables")
    }
    assert "main.sales" in tables and "main.sales_tmp" in tables
    assert "main.sales__tmp_1a2b3c4d" not in tables and "staging.half_done" not in tables


def test_staging(env, samples: Path, instance) -> None:  # noqa: ANN001
    done = import_penguins(instance)
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            "insert into batches (batch_id, operation, name, status, priority, total_items, "
            "created_at) values ('import-20260101-000000-bbbbbb', 'import', 't', "
            "'running', 'normal', 1, now()::timestamp)"
        )
    finished = write(env.data / "staging" / done / "x.parquet", age_days=3)
    unknown = write(
        env.data / "staging" / "import-20200101-000000-cccccc" / "y.parquet", age_days=3
    )
    running = write(
        env.data / "staging" / "import-20260101-000000-bbbbbb" / "z.parquet", age_days=3
    )
    spill = write(env.data / "staging" / "_spill" / "tmp.block", age_days=3)
    fresh_only = run_cleanup(env, {"kind": "staging", "older_than_days": 7})
    assert fresh_only["files"] == 0
    metrics = run_cleanup(env, {"kind": "staging", "older_than_days": 1}, dry_run=False)
    assert metrics["files"] == 2
    assert not finished.exists() and not unknown.exists() and running.exists() and spill.exists()


def test_partition_delete_paths(instance) -> None:  # noqa: ANN001
    """Both ways of deleting dynamic partitions work. The bulk path is measured on 5,000 keys
    against the per-key public API (one SQLite transaction per key: measured on a sample of
    300 keys and scaled, to keep this test short); printed, not asserted."""
    name = "cleanup_items"
    keys = [f"cleanup-20260101-000000-abcdef~k{i}~{i:08x}" for i in range(5000)]
    instance.add_dynamic_partitions(name, [*keys, "keep-me"])
    started = time.perf_counter()
    assert dagster_storage.delete_dynamic_partitions(instance, name, keys) == 5000
    bulk = time.perf_counter() - started
    assert instance.get_dynamic_partitions(name) == ["keep-me"]
    sample = keys[:300]
    instance.add_dynamic_partitions(name, sample)
    started = time.perf_counter()
    partitions.delete_keys_per_key(instance, "cleanup", sample)
    per_key = (time.perf_counter() - started) / len(sample) * len(keys)
    assert instance.get_dynamic_partitions(name) == ["keep-me"]
    print(
        f"\ndelete 5,000 dynamic partitions: bulk SQL {bulk:.3f}s, one call per key "
        f"~{per_key:.1f}s (scaled from 300 keys): {per_key / bulk:.0f}x"
    )
    instance.add_dynamic_partitions(name, keys[:3])
    assert partitions.delete_keys(instance, "cleanup", keys[:3]) == "sql"
    assert partitions.delete_keys(instance, "cleanup", []) == "none"
    assert instance.get_dynamic_partitions(name) == ["keep-me"]

    class NotSql:
        event_log_storage = object()

        def __init__(self) -> None:
            self.deleted: list[str] = []

        def delete_dynamic_partition(self, n: str, key: str) -> None:
            assert n == name
            self.deleted.append(key)

    fake = NotSql()
    assert partitions.delete_keys(fake, "cleanup", ["a", "b", "a"]) == "per_key"
    assert fake.deleted == ["a", "b"]


def test_real_run_without_a_partition_deleter_fails_before_deleting(
    env,
    samples: Path,
    instance,  # noqa: ANN001
) -> None:
    old_id = import_penguins(instance)
    age_batches(env, [old_id], 40)
    ctx = make_ctx(env, {"kind": "old_batches", "older_than_days": 30}, dry_run=False)
    assert "delete_partitions" not in ctx.resources  # no instance: no deleter
    with pytest.raises(ItemError, match="needs the 'delete_partitions' resource"):
        handle_cleanup(ctx)
    assert env.sql("select count(*) from batches where batch_id = ?", [old_id]) == [(1,)]
    ctx.resources.clear()
    with pytest.raises(ItemError, match="needs the 'detail_tables' resource"):
        handle_cleanup(ctx)


# --- through the asset and the CLI -----------------------------------------------------------


def test_asset_batch_with_a_bad_target(env, samples: Path, instance) -> None:  # noqa: ANN001
    old = import_penguins(instance)
    age_batches(env, [old], 10)
    write(env.data / "exports" / "stale.csv", age_days=10)
    batch = run_batch(
        {
            "operation": "cleanup",
            "options": {"dry_run": False},
            "settings": {"max_retries": 0},
            "items": [
                {"kind": "old_batches", "older_than_days": 5},
                {"kind": "old_files", "root": "exports", "older_than_days": 5},
                {
                    "kind": "old_files",
                    "root": "exports",
                    "older_than_days": 0,
                    "path": "data/samples",
                },
                {"kind": "temp_tables"},
            ],
        },
        instance,
    )
    assert (batch["succeeded_items"], batch["failed_items"]) == (3, 1)
    (failed,) = env.sql("select error from batch_items where status = 'failed'")
    assert "outside the exports root" in failed[0]
    assert env.sql("select count(*) from batches where batch_id = ?", [old]) == [(0,)]
    assert not (env.data / "exports" / "stale.csv").exists()
    assert len(list((samples).glob("penguins_*"))) == 6
    assert not [k for k in instance.get_dynamic_partitions("import_items") if k.startswith(old)]


@pytest.mark.e2e
def test_cli_cleanup_command(env, samples: Path, instance) -> None:  # noqa: ANN001
    old = import_penguins(instance)
    age_batches(env, [old], 60)
    stale = write(env.data / "reports" / "old_report.html", age_days=60)
    running = new_batch_id("import")
    with warehouse.connect(env.warehouse) as con:
        insert_queued_batch(con, running, [{"id": "i0", "path": "x.csv"}])
        # event_id: (batch, status, age in days); each row has one attempt of its age.
        for event_id, (batch_id, status, days) in {
            1: (old, "delivered", 60),
            2: (None, "failed", 60),
            3: (None, "pending", 60),  # still to send: kept whatever its age
            4: (None, "delivered", 5),
            5: (running, "delivered", 60),  # its batch's last event: kept while it runs
        }.items():
            at = f"now()::timestamp - interval {days} day"
            con.execute(
                "insert into webhook_outbox (event_id, endpoint_id, endpoint, batch_id, event, "
                f"body, status, attempts, created_at) values (?, 'e1', 'http://h/***', ?, "
                f"'batch.completed', '{{}}', ?, 1, {at})",
                [event_id, batch_id, status],
            )
            con.execute(
                "insert into webhook_deliveries (event_id, endpoint_id, endpoint, batch_id, "
                f"event, attempt, \"at\", delivered) values (?, 'e1', 'http://h/***', ?, "
                f"'batch.completed', 1, {at}, ?)",
                [event_id, batch_id, status == "delivered"],
            )
    instance.dispose()

    dry = cli(env, "cleanup", "--older-than-days", "30", "--json", timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = json.loads(dry.stdout)
    assert out["dry_run"] is True and out["batch"]["status"] == "completed"
    assert {o["object"] for o in out["objects"] if o["object_type"] == "batch"} == {old}
    assert stale.exists() and env.sql("select count(*) from batches where batch_id = ?", [old]) == [
        (1,)
    ]
    webhook_rows = {
        (o["object"], o["rows"]) for o in out["objects"] if o["object"].startswith("webhook")
    }
    assert webhook_rows == {("webhook_outbox", 2), ("webhook_deliveries", 3)}
    assert env.sql("select count(*) from webhook_outbox") == [(5,)]

    real = cli(env, "cleanup", "--older-than-days", "30", "--no-dry-run", timeout=300)
    assert real.returncode == 0, real.stderr[-3000:]
    assert "cleanup: deleted" in real.stdout and f"deleted batch {old}" in real.stdout
    assert not stale.exists()
    assert env.sql("select count(*) from batches where batch_id = ?", [old]) == [(0,)]
    assert env.sql("select event_id from webhook_outbox order by 1") == [(3,), (4,), (5,)]
    assert env.sql("select event_id from webhook_deliveries order by 1") == [(3,), (4,)]
    assert "deleted rows webhook_outbox" in real.stdout
    assert cli(env, "cleanup", "--older-than-days", "-1").returncode == 2

    submitted = cli(
        env,
        "submit",
        "cleanup",
        "--item",
        '{"kind": "temp_tables"}',
        "--item",
        '{"kind": "orphan_files", "root": "exports"}',
        "--wait",
        "--json",
        timeout=300,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert json.loads(submitted.stdout)["succeeded_items"] == 2
