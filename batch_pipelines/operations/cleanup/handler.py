"""cleanup: delete what old batches left behind, safely, with an audit log.

An item is a target:

- ``{kind: old_batches, older_than_days}``: finished batches (completed, completed with
  errors, failed, cancelled) that finished more than N days ago: their ledger rows
  (``batches``, ``batch_items``, ``item_attempts``, ``batch_events``), their rows in every
  operation detail table that exists with a ``batch_id`` column, their Dagster dynamic
  partitions, and their files under ``data/exports/<batch_id>/``,
  ``data/reports/<batch_id>/`` and ``data/staging/<batch_id>/``. Also the webhook outbox rows
  delivered or given up, and the delivery attempts, older than N days (never a webhook still
  to send, nor the rows of a batch still running).
  ``cleanup_log`` itself is never cleaned (it is the audit trail); imported data tables keep
  their rows.
- ``{kind: old_files, root: exports|reports, older_than_days, path?}``: files under the root
  (or under ``path`` inside it) not modified for N days.
- ``{kind: orphan_files, root: exports|reports, path?}``: files that no ledger row points to
  (not in a known batch's folder and not named by any detail table).
- ``{kind: temp_tables}``: leftover ``<table>__tmp_<suffix>`` tables and tables in the
  ``staging`` schema (left alone while a transform or import batch is running).
- ``{kind: staging, older_than_days?}``: ``data/staging/<batch_id>/`` folders of finished or
  unknown batches.
- ``{kind: lake, older_than_days?}``: on a DuckLake warehouse, merge small adjacent data
  files, expire snapshots older than N days (default 7) and delete the files no snapshot
  needs any more; nothing to do on the single DuckDB file.

``dry_run`` (default true) only lists what would go (``cleanup_log`` rows with
``dry_run = true``, replaced on re-run). A real run (``dry_run: false``) deletes in the
commit, under the writer lock: warehouse rows in the item's transaction, then files and
partitions, and logs each deleted object (those rows are kept across re-runs). Partitions are
deleted by the ``delete_partitions`` host resource, the application's own bulk delete; the
detail tables come from the ``detail_tables`` host resource (the operation registry), so
tables that operations declare later are covered.

Nothing outside the exports, reports and staging roots is ever deleted: every file's real
path (symlinks and ``..`` resolved) must lie inside its root, symlinks are never followed
out of it, and a symlink that points outside is refused, not removed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from batch_pipelines.core import lake, ledger, outbox, warehouse
from batch_pipelines.core.contract import (
    DELETE_PARTITIONS,
    DETAIL_TABLES,
    CommitContext,
    ItemContext,
    ItemResult,
    PartitionDeleter,
)
from batch_pipelines.core.errors import ItemError
from batch_pipelines.core.keys import batch_id_of
from batch_pipelines.core.sql import quote_ident
from batch_pipelines.operations.cleanup import tables
from batch_pipelines.operations.cleanup.files import (
    prune_parents,
    remove_empty_dirs,
    roots,
    safe_unlink,
)
from batch_pipelines.operations.cleanup.models import CleanupItem, CleanupOptions, Planned
from batch_pipelines.operations.cleanup.plan import (
    WEBHOOK_NOTE,
    WEBHOOK_TABLES,
    Plan,
    detail_tables,
    make_plan,
    registered_ids,
    temp_tables,
)

MAX_LISTED = 200  # objects named in the metrics; cleanup_log has them all


def _host_resource(ctx: ItemContext, key: str) -> Any:
    try:
        return ctx.resources[key]
    except KeyError:
        raise ItemError(
            f"cleanup needs the {key!r} resource, which the operation asset provides",
            category="permanent",
        ) from None


# --- execution (in the commit, under the writer lock) ----------------------------------------


def _delete_batches(
    con: duckdb.DuckDBPyConnection, ids: Sequence[str], declared: Sequence[str]
) -> list[str]:
    """Delete the ledger and detail rows of those batches that are still finished; returns
    the ids deleted."""
    if not ids:
        return []
    still = ledger.finished_among(con, ids)
    if not still:
        return []
    with registered_ids(con, "_cleanup_doomed", still):
        for table in detail_tables(con, declared):
            con.execute(
                f"delete from {quote_ident(table)} "
                "where batch_id in (select batch_id from _cleanup_doomed)"
            )
    ledger.delete_finished_batches(con, still)
    return still


def _drop_tables(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> list[str]:
    current = {f"{s}.{n}" for s, n in temp_tables(con)}
    dropped = []
    for full in names:
        if full in current:  # re-checked: the name still matches the temp-table pattern
            con.execute(f"drop table if exists {quote_ident(full)}")
            dropped.append(full)
    return dropped


def execute_plan(
    ctx: ItemContext,
    con: duckdb.DuckDBPyConnection,
    plan: Plan,
    declared: Sequence[str],
    delete_partitions: PartitionDeleter | None,
) -> tuple[list[Planned], list[str], dict[str, str]]:
    """Delete what the plan lists; returns (objects deleted, errors, partition paths used)."""
    deleted: list[Planned] = []
    errors: list[str] = []
    by_type = defaultdict(list)
    for o in plan.objects:
        by_type[o.object_type].append(o)
    gone = set(_delete_batches(con, plan.batch_ids, declared))
    for o in plan.objects:
        if o.object_type in ("batch", "rows") and o.object.rsplit(":", 1)[-1] in gone:
            deleted.append(o)
    if plan.webhooks_before is not None:
        # Counted again here: the sender may have delivered more since the plan.
        counts = outbox.purge(con, plan.webhooks_before)
        deleted += [
            Planned("rows", table, rows=n, note=WEBHOOK_NOTE)
            for table, n in zip(WEBHOOK_TABLES, counts, strict=True)
            if n
        ]
    dropped = set(_drop_tables(con, plan.tables))
    deleted += [o for o in by_type["table"] if o.object in dropped]
    rts = roots(ctx.paths)
    for path, root_name in plan.files:
        try:
            safe_unlink(path, rts[root_name])
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            errors.append(f"{path}: {exc}")
            continue
    files_left = {str(p) for p, _ in plan.files if os.path.lexists(p)}
    deleted += [o for o in by_type["file"] if o.object not in files_left]
    removed: set[Path] = set()
    for folder, root_name in plan.dirs:
        removed.update(remove_empty_dirs(folder, rts[root_name]))
    # Folders emptied by this run go too; other empty folders may be about to be written to.
    for path, root_name in plan.files:
        removed.update(prune_parents(path, rts[root_name]))
    deleted += [Planned("directory", str(d)) for d in sorted(removed)]
    methods: dict[str, str] = {}
    doomed_keys = {
        operation: [k for k in keys if batch_id_of(k) in gone]
        for operation, keys in plan.partitions.items()
    }
    if any(doomed_keys.values()):
        assert delete_partitions is not None  # checked before the commit
        for operation, keys in doomed_keys.items():
            if keys:
                methods[operation] = delete_partitions(operation, keys)
        deleted += [o for o in by_type["partitions"] if o.object.rsplit(":", 1)[-1] in gone]
    return deleted, errors, methods


def _maintain_lake(ctx: ItemContext, item: CleanupItem, dry_run: bool) -> ItemResult:
    """Compaction and snapshot expiry run on a connection of their own: DuckLake commits each
    as its own snapshot, so they stay out of the item's transaction."""
    days = 7.0 if item.older_than_days is None else float(item.older_than_days)
    metrics: dict[str, Any] = {"kind": item.kind, "dry_run": dry_run, "older_than_days": days}
    on_lake = warehouse.is_lake(ctx.paths.warehouse)
    if not on_lake:
        metrics["notes"] = "the warehouse is a single DuckDB file: nothing to compact"
    done: dict[str, int] = {}
    if on_lake and not dry_run:
        with warehouse.connect(ctx.paths.warehouse) as con:
            done = lake.maintain(con, older_than_s=days * 86400)
        metrics.update(done)

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        tables.forget_dry_run(con, cc)
        note = ", ".join(f"{k} {v}" for k, v in done.items()) or "compact, expire snapshots"
        if on_lake:
            objects = [Planned("lake", str(lake.parse(ctx.paths.warehouse)), note=note)]
            tables.log_objects(con, cc, item.kind, objects, dry_run)

    return ItemResult(metrics=metrics, commit=commit)


def handle_cleanup(ctx: ItemContext) -> ItemResult:
    options: CleanupOptions = ctx.options
    item: CleanupItem = ctx.item
    if item.kind == "lake":
        return _maintain_lake(ctx, item, options.dry_run)
    declared = _host_resource(ctx, DETAIL_TABLES)
    plan = make_plan(ctx, item, declared)
    ctx.check()
    delete_partitions: PartitionDeleter | None = None
    if plan.partitions and not options.dry_run:
        delete_partitions = _host_resource(ctx, DELETE_PARTITIONS)
    summary = _summarize(plan.objects)
    metrics: dict[str, Any] = {
        "kind": item.kind,
        "dry_run": options.dry_run,
        "objects": len(plan.objects),
        "batches": len(plan.batch_ids),
        "files": summary["file"]["count"],
        "bytes": summary["file"]["bytes"],
        "rows": sum(v["rows"] for k, v in summary.items() if k in ("rows", "batch")),
        "tables": summary["table"]["count"],
        "partitions": summary["partitions"]["rows"],
        "refused": len(plan.refused),
    }
    if plan.refused:
        metrics["refused_objects"] = plan.refused[:MAX_LISTED]
        for r in plan.refused[:20]:
            ctx.log.warning("cleanup %s: %s", ctx.item_id, r)
    if plan.notes:
        metrics["notes"] = "; ".join(plan.notes)
    metrics["would_delete" if options.dry_run else "planned"] = [
        f"{o.object_type} {o.object}" for o in plan.objects[:MAX_LISTED]
    ]

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        tables.forget_dry_run(con, cc)
        if options.dry_run:
            objects = plan.objects
        else:
            objects, errors, methods = execute_plan(ctx, con, plan, declared, delete_partitions)
            metrics["deleted"] = len(objects)
            metrics["deleted_bytes"] = sum(o.bytes or 0 for o in objects if o.object_type == "file")
            if errors:
                metrics["errors"] = errors[:MAX_LISTED]
            if methods:
                metrics["partition_delete"] = ", ".join(sorted(set(methods.values())))
        tables.log_objects(con, cc, item.kind, objects, options.dry_run)

    return ItemResult(metrics=metrics, commit=commit)


def _summarize(objects: Sequence[Planned]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "rows": 0, "bytes": 0})
    for o in objects:
        s = out[o.object_type]
        s["count"] += 1
        s["rows"] += o.rows or 0
        s["bytes"] += o.bytes or 0
    return out
