"""cleanup: delete what old batches left behind, safely, with an audit log.

An item is a target:

- ``{kind: old_batches, older_than_days}``: finished batches (completed, completed with
  errors, failed, cancelled) that finished more than N days ago: their ledger rows
  (``batches``, ``batch_items``, ``item_attempts``, ``batch_events``), their rows in every
  operation detail table that exists (found through ``information_schema``, so tables added
  later are covered), their Dagster dynamic partitions, and their files under
  ``data/exports/<batch_id>/``, ``data/reports/<batch_id>/`` and ``data/staging/<batch_id>/``.
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

``dry_run`` (default true) only lists what would go (``cleanup_log`` rows with
``dry_run = true``, replaced on re-run). A real run (``dry_run: false``) deletes in the
commit, under the writer lock: warehouse rows in the item's transaction, then files and
partitions, and logs each deleted object (those rows are kept across re-runs).

Nothing outside the exports, reports and staging roots is ever deleted: every file's real
path (symlinks and ``..`` resolved) must lie inside its root, symlinks are never followed
out of it, and a symlink that points outside is refused, not removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from batch_pipelines.core import config, ledger
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.keys import is_batch_id
from batch_pipelines.core.sql import quote_ident

log = logging.getLogger("batch_pipelines.cleanup")

Kind = Literal["old_batches", "old_files", "orphan_files", "temp_tables", "staging"]
KINDS: tuple[str, ...] = ("old_batches", "old_files", "orphan_files", "temp_tables", "staging")
LEDGER_TABLES = ledger.TABLES
# Detail tables known today; tables that operations declare (OperationSpec.detail_tables) are
# added at run time, and only those that exist with a batch_id column are touched.
KNOWN_DETAIL_TABLES = (
    "import_files",
    "import_rejects",
    "exports",
    "transforms",
    "validation_results",
    "annotations",
    "reports",
)
NEVER_CLEANED = frozenset({"cleanup_log", *LEDGER_TABLES})
TEMP_TABLE_SCHEMAS = ("staging",)
WRITING_OPERATIONS = ("transform", "import")
PARTITION_DELETE_CHUNK = 500
MAX_LISTED = 200  # objects named in the metrics; cleanup_log has them all


class CleanupOptions(BaseModel, extra="forbid"):
    """Options of a cleanup batch."""

    dry_run: bool = Field(
        True, description="List what would be deleted (default); false deletes for real"
    )


class CleanupItem(BaseModel, extra="forbid"):
    """One cleanup target."""

    id: str | None = None
    kind: Kind
    older_than_days: float | None = Field(None, ge=0, le=36500)
    root: Literal["exports", "reports"] | None = None
    path: str | None = Field(
        None, description="old_files/orphan_files: a folder inside the root to limit to"
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> CleanupItem:
        if self.kind in ("old_batches", "old_files") and self.older_than_days is None:
            raise ValueError(f"a {self.kind} target needs older_than_days")
        if self.kind in ("old_files", "orphan_files") and self.root is None:
            raise ValueError(f"a {self.kind} target needs root (exports or reports)")
        if self.kind not in ("old_files", "orphan_files"):
            for name in ("root", "path"):
                if getattr(self, name) is not None:
                    raise ValueError(f"a {self.kind} target does not take {name}")
        if self.kind in ("orphan_files", "temp_tables") and self.older_than_days is not None:
            raise ValueError(f"a {self.kind} target does not take older_than_days")
        if self.id is None:
            parts = [self.kind, self.root or ""]
            if self.older_than_days is not None:
                parts.append(f"{self.older_than_days:g}d")
            if self.path:
                parts.append(self.path)
            self.id = ":".join(p for p in parts if p)
        return self


@dataclass
class Planned:
    """One object to delete."""

    object_type: str  # batch | rows | partitions | file | directory | table
    object: str
    rows: int | None = None
    bytes: int | None = None
    note: str | None = None


# --- files: the only way this module deletes a file -----------------------------------------


def roots(paths: config.Paths) -> dict[str, Path]:
    return {
        "exports": paths.exports.resolve(),
        "reports": paths.reports.resolve(),
        "staging": paths.staging.resolve(),
    }


def check_inside(path: Path, root: Path) -> Path:
    """The real location of ``path`` (its folder resolved; the entry itself not followed) if
    it lies strictly inside ``root``; raises ``ValueError`` saying why not. A symlink must
    also point inside the root."""
    root = root.resolve()
    raw = Path(os.path.abspath(path))
    location = Path(os.path.realpath(raw.parent)) / raw.name
    if location == root or not location.is_relative_to(root):
        raise ValueError(f"{path} resolves to {location}, outside {root}")
    if os.path.islink(location):
        target = Path(os.path.realpath(location))
        if not target.is_relative_to(root):
            raise ValueError(f"{path} is a symlink to {target}, outside {root}")
    return location


def safe_unlink(path: Path, root: Path) -> int:
    """Delete one file (or symlink) inside ``root``; returns its size. Refuses (ValueError)
    anything whose real path is outside the root, and directories."""
    location = check_inside(path, root)
    st = os.lstat(location)
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is a directory")
    os.unlink(location)  # unlink never follows the last component
    return 0 if stat.S_ISLNK(st.st_mode) else st.st_size


def walk_files(folder: Path, root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Files (and symlinks) under ``folder``, never descending through symlinks."""
    try:
        start = check_inside(folder, root) if folder.resolve() != root.resolve() else root
    except ValueError:
        return
    if not start.is_dir() or start.is_symlink():
        return
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in [*filenames, *links]:
            p = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                yield p, os.lstat(p)


def remove_empty_dirs(folder: Path, root: Path) -> list[Path]:
    """Remove empty directories under and including ``folder`` (never ``root``)."""
    removed: list[Path] = []
    root = root.resolve()
    if Path(os.path.realpath(folder)) == root:
        start = root
    else:
        try:
            start = check_inside(folder, root)
        except ValueError:
            return removed
    if not start.is_dir() or start.is_symlink():
        return removed
    for dirpath, _dirnames, _files in os.walk(start, topdown=False, followlinks=False):
        d = Path(dirpath)
        if d == root or os.path.islink(d):
            continue
        with contextlib.suppress(OSError):
            d.rmdir()
            removed.append(d)
    return removed


def prune_parents(path: Path, root: Path) -> list[Path]:
    """Remove the now-empty folders above a deleted file, up to (not including) ``root``."""
    removed: list[Path] = []
    root = root.resolve()
    parent = path.parent
    while parent != root and parent.is_relative_to(root) and not parent.is_symlink():
        try:
            parent.rmdir()
        except OSError:
            break
        removed.append(parent)
        parent = parent.parent
    return removed


# --- Dagster partitions ----------------------------------------------------------------------


def delete_partitions_fast(instance: Any, partitions_def_name: str, keys: Sequence[str]) -> int:
    """Delete dynamic partition keys with one SQL ``DELETE ... WHERE partition IN (...)`` per
    chunk through the instance's event log storage (what ``delete_dynamic_partition`` does for
    one key). Raises ``NotImplementedError`` for storages that are not SQL."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        raise NotImplementedError(f"{type(storage).__name__} is not a SQL event log storage")
    deleted = 0
    unique = list(dict.fromkeys(keys))
    with storage.index_connection() as conn:
        for start in range(0, len(unique), PARTITION_DELETE_CHUNK):
            chunk = unique[start : start + PARTITION_DELETE_CHUNK]
            result = conn.execute(
                DynamicPartitionsTable.delete().where(
                    db.and_(
                        DynamicPartitionsTable.c.partitions_def_name == partitions_def_name,
                        DynamicPartitionsTable.c.partition.in_(chunk),
                    )
                )
            )
            deleted += max(0, result.rowcount or 0)
    return deleted


def delete_partitions_per_key(instance: Any, partitions_def_name: str, keys: Sequence[str]) -> int:
    """The public API: one storage call per key."""
    for key in dict.fromkeys(keys):
        instance.delete_dynamic_partition(partitions_def_name, key)
    return len(set(keys))


def delete_partitions(instance: Any, partitions_def_name: str, keys: Sequence[str]) -> str:
    """Delete keys the fast way, falling back to one call per key; returns the path used."""
    if not keys:
        return "none"
    try:
        delete_partitions_fast(instance, partitions_def_name, keys)
        return "sql"
    except Exception as exc:  # noqa: BLE001 - any storage problem: use the public API
        log.warning("bulk partition delete failed (%s); deleting key by key", exc)
        delete_partitions_per_key(instance, partitions_def_name, keys)
        return "per_key"


@contextlib.contextmanager
def _dagster_instance(ctx: ItemContext) -> Iterator[Any]:
    given = ctx.resources.get("dagster_instance")
    if given is not None:
        yield given
        return
    from batch_pipelines.app.instance import get_instance

    instance = get_instance()
    try:
        yield instance
    finally:
        instance.dispose()


# --- warehouse discovery ---------------------------------------------------------------------


def detail_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Operation detail tables that exist in ``main`` and have a ``batch_id`` column."""
    from batch_pipelines.operations import REGISTRY

    candidates = set(KNOWN_DETAIL_TABLES)
    for spec in REGISTRY.values():
        candidates.update(spec.detail_tables)
    candidates -= NEVER_CLEANED
    existing = {
        r[0]
        for r in con.execute(
            "select table_name from information_schema.columns where table_schema = 'main' "
            "and column_name = 'batch_id'"
        ).fetchall()
    }
    return sorted(candidates & existing)


def path_columns(con: duckdb.DuckDBPyConnection, tables: Sequence[str]) -> dict[str, list[str]]:
    """Text columns named like ``*path*`` of the given tables (where files are recorded)."""
    out: dict[str, list[str]] = defaultdict(list)
    for table, column in con.execute(
        "select table_name, column_name from information_schema.columns "
        "where table_schema = 'main' and column_name like '%path%' and data_type = 'VARCHAR' "
        "order by table_name, ordinal_position"
    ).fetchall():
        if table in tables:
            out[table].append(column)
    return dict(out)


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, ids: Sequence[str]) -> Iterator[str]:
    con.register(name, pa.table({"batch_id": pa.array(list(ids), pa.string())}))
    try:
        yield name
    finally:
        con.unregister(name)


def recorded_files(
    con: duckdb.DuckDBPyConnection, batch_ids: Sequence[str] | None = None
) -> set[str]:
    """File paths named by detail tables (of the given batches, or all)."""
    tables = detail_tables(con)
    found: set[str] = set()
    for table, cols in path_columns(con, tables).items():
        for col in cols:
            q = f"select distinct {quote_ident(col)} from {quote_ident(table)} where {quote_ident(col)} is not null"
            if batch_ids is None:
                rows = con.execute(q).fetchall()
            else:
                with _registered(con, "_cleanup_ids", batch_ids):
                    rows = con.execute(
                        q + " and batch_id in (select batch_id from _cleanup_ids)"
                    ).fetchall()
            found.update(str(r[0]) for r in rows)
    return found


# --- planning --------------------------------------------------------------------------------


@dataclass
class Plan:
    objects: list[Planned]
    batch_ids: list[str]
    partitions: dict[str, list[str]]  # partitions_def name -> keys
    files: list[tuple[Path, str]]  # (path, root name)
    dirs: list[tuple[Path, str]]
    tables: list[str]
    refused: list[str]
    notes: list[str]


def _cutoff(days: float) -> Any:
    return ledger.utcnow() - timedelta(days=days)


def _add_file(plan: Plan, p: Path, root_name: str, rts: dict[str, Path], seen: set[Path]) -> None:
    try:
        location = check_inside(p, rts[root_name])
    except ValueError as exc:
        plan.refused.append(f"refused: {exc}")
        return
    if location in seen:
        return
    seen.add(location)
    try:
        st = os.lstat(location)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        return
    plan.files.append((location, root_name))
    plan.objects.append(Planned("file", str(location), bytes=st.st_size, note=root_name))


def plan_old_batches(ctx: ItemContext, days: float) -> Plan:
    paths = ctx.paths
    rts = roots(paths)
    plan = Plan([], [], {}, [], [], [], [], [])
    cutoff = _cutoff(days)
    with ctx.read_warehouse() as con:
        batches = ledger.finished_before(con, cutoff, exclude=ctx.batch_id)
        ids = [b[0] for b in batches]
        plan.batch_ids = ids
        if not ids:
            return plan
        with _registered(con, "_cleanup_ids", ids):
            counts = ledger.row_counts(con, ids)
            for table in detail_tables(con):
                for bid, n in con.execute(
                    f"select batch_id, count(*) from {quote_ident(table)} "
                    "where batch_id in (select batch_id from _cleanup_ids) group by 1"
                ).fetchall():
                    counts[(table, bid)] = n
            keys = ledger.partition_keys(con, ids)
        files = recorded_files(con, ids)
    from batch_pipelines.app.partitions import PARTITIONS

    per_batch_keys: dict[str, int] = defaultdict(int)
    for bid, operation, key in keys:
        spec = PARTITIONS.get(operation)
        if spec is None:
            continue
        plan.partitions.setdefault(spec.name, []).append(key)
        per_batch_keys[bid] += 1
    for bid, operation, total in batches:
        plan.objects.append(Planned("batch", bid, rows=1, note=f"{operation}, {total} items"))
        for (table, b), n in sorted(counts.items()):
            if b == bid:
                plan.objects.append(Planned("rows", f"{table}:{bid}", rows=n))
        if per_batch_keys.get(bid):
            plan.objects.append(
                Planned(
                    "partitions",
                    f"{PARTITIONS[operation].name}:{bid}",
                    rows=per_batch_keys[bid],
                )
            )
    seen: set[Path] = set()
    for raw in sorted(files):
        p = Path(raw)
        if not p.is_absolute():
            p = paths.data.parent / p
        root_name = next(
            (
                name
                for name in ("exports", "reports")
                if Path(os.path.abspath(p)).is_relative_to(rts[name])
                or Path(os.path.realpath(p)).is_relative_to(rts[name])
            ),
            None,
        )
        if root_name is None:
            continue  # e.g. an imported source file under data/samples: not ours to delete
        _add_file(plan, p, root_name, rts, seen)
    for bid in ids:
        for root_name in ("exports", "reports", "staging"):
            folder = rts[root_name] / bid
            if folder.is_symlink():
                plan.refused.append(f"refused: {folder} is a symlink")
                continue
            for p, _st in walk_files(folder, rts[root_name]):
                _add_file(plan, p, root_name, rts, seen)
            if folder.is_dir():
                plan.dirs.append((folder, root_name))
    return plan


def _scope(ctx: ItemContext, item: CleanupItem) -> tuple[Path, Path]:
    """The root and the folder inside it that a file target covers."""
    root = roots(ctx.paths)[item.root or "exports"]
    if not item.path:
        return root, root
    folder = ctx.resolve_path(item.path, must_exist=False, field_name="path")
    if not folder.is_relative_to(root):
        raise ValidationItemError(
            f"path: {item.path!r} resolves to {folder}, outside the {item.root} root {root}"
        )
    return root, folder


def plan_old_files(ctx: ItemContext, item: CleanupItem) -> Plan:
    plan = Plan([], [], {}, [], [], [], [], [])
    root, folder = _scope(ctx, item)
    rts = roots(ctx.paths)
    cutoff = time.time() - float(item.older_than_days or 0) * 86400
    seen: set[Path] = set()
    for i, (p, st) in enumerate(walk_files(folder, root)):
        if i % 1000 == 0:
            ctx.check()
        if st.st_mtime < cutoff:
            _add_file(plan, p, str(item.root), rts, seen)
    return plan


def plan_orphan_files(ctx: ItemContext, item: CleanupItem) -> Plan:
    plan = Plan([], [], {}, [], [], [], [], [])
    root, folder = _scope(ctx, item)
    rts = roots(ctx.paths)
    with ctx.read_warehouse() as con:
        known = ledger.known_batch_ids(con)
        recorded = set()
        for raw in recorded_files(con):
            with contextlib.suppress(OSError, ValueError):
                recorded.add(Path(os.path.realpath(raw)))
    seen: set[Path] = set()
    for i, (p, _st) in enumerate(walk_files(folder, root)):
        if i % 1000 == 0:
            ctx.check()
        rel = p.relative_to(root) if p.is_relative_to(root) else None
        first = rel.parts[0] if rel is not None and len(rel.parts) > 1 else None
        if first in known:
            continue
        if Path(os.path.realpath(p)) in recorded:
            continue
        _add_file(plan, p, str(item.root), rts, seen)
    return plan


_TEMP_NAME = r"%\_\_tmp\_%"


def _temp_tables(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    schemas = ", ".join("?" for _ in TEMP_TABLE_SCHEMAS)
    return con.execute(
        "select table_schema, table_name from information_schema.tables "
        "where table_type = 'BASE TABLE' and table_catalog = current_database() and "
        f"(table_name like ? escape '\\' or table_schema in ({schemas})) order by 1, 2",
        [_TEMP_NAME, *TEMP_TABLE_SCHEMAS],
    ).fetchall()


def plan_temp_tables(ctx: ItemContext) -> Plan:
    plan = Plan([], [], {}, [], [], [], [], [])
    with ctx.read_warehouse() as con:
        running = ledger.count_active(con, WRITING_OPERATIONS, exclude=ctx.batch_id)
        tables = _temp_tables(con)
        if running:
            plan.notes.append(
                f"{len(tables)} temporary table(s) left alone: {running} import/transform "
                "batch(es) are queued or running"
            )
            return plan
        for schema, name in tables:
            full = f"{schema}.{name}"
            n = con.execute(f"select count(*) from {quote_ident(full)}").fetchone()[0]
            plan.tables.append(full)
            plan.objects.append(Planned("table", full, rows=n))
    return plan


def plan_staging(ctx: ItemContext, item: CleanupItem) -> Plan:
    plan = Plan([], [], {}, [], [], [], [], [])
    rts = roots(ctx.paths)
    root = rts["staging"]
    if not root.is_dir():
        return plan
    folders = [d for d in sorted(root.iterdir()) if is_batch_id(d.name) and d.name != ctx.batch_id]
    if not folders:
        return plan
    with ctx.read_warehouse() as con:
        status = ledger.statuses_of(con, [d.name for d in folders])
    cutoff = time.time() - float(item.older_than_days or 0) * 86400
    seen: set[Path] = set()
    for d in folders:
        if d.is_symlink():
            plan.refused.append(f"refused: {d} is a symlink")
            continue
        st = status.get(d.name)
        if st is not None and st not in ledger.TERMINAL_BATCH_STATUSES:
            continue
        files = list(walk_files(d, root))
        newest = max(s.st_mtime for _, s in files) if files else d.stat().st_mtime
        if item.older_than_days is not None and newest >= cutoff:
            continue
        for p, _ in files:
            _add_file(plan, p, "staging", rts, seen)
        plan.dirs.append((d, "staging"))
        if not files:
            plan.objects.append(Planned("directory", str(d), note="empty"))
    return plan


def make_plan(ctx: ItemContext, item: CleanupItem) -> Plan:
    if item.kind == "old_batches":
        return plan_old_batches(ctx, float(item.older_than_days or 0))
    if item.kind == "old_files":
        return plan_old_files(ctx, item)
    if item.kind == "orphan_files":
        return plan_orphan_files(ctx, item)
    if item.kind == "temp_tables":
        return plan_temp_tables(ctx)
    return plan_staging(ctx, item)


# --- execution (in the commit, under the writer lock) ----------------------------------------


def _delete_batches(con: duckdb.DuckDBPyConnection, ids: Sequence[str]) -> list[str]:
    """Delete the ledger and detail rows of those batches that are still finished; returns
    the ids deleted."""
    if not ids:
        return []
    still = ledger.finished_among(con, ids)
    if not still:
        return []
    with _registered(con, "_cleanup_doomed", still):
        for table in detail_tables(con):
            con.execute(
                f"delete from {quote_ident(table)} "
                "where batch_id in (select batch_id from _cleanup_doomed)"
            )
    ledger.delete_finished_batches(con, still)
    return still


def _drop_tables(con: duckdb.DuckDBPyConnection, tables: Sequence[str]) -> list[str]:
    current = {f"{s}.{n}" for s, n in _temp_tables(con)}
    dropped = []
    for full in tables:
        if full in current:  # re-checked: the name still matches the temp-table pattern
            con.execute(f"drop table if exists {quote_ident(full)}")
            dropped.append(full)
    return dropped


def execute_plan(
    ctx: ItemContext, con: duckdb.DuckDBPyConnection, plan: Plan
) -> tuple[list[Planned], list[str], dict[str, str]]:
    """Delete what the plan lists; returns (objects deleted, errors, partition paths used)."""
    deleted: list[Planned] = []
    errors: list[str] = []
    by_type = defaultdict(list)
    for o in plan.objects:
        by_type[o.object_type].append(o)
    gone = set(_delete_batches(con, plan.batch_ids))
    for o in plan.objects:
        if o.object_type in ("batch", "rows") and o.object.rsplit(":", 1)[-1] in gone:
            deleted.append(o)
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
        name: [k for k in keys if k.split("~", 1)[0] in gone]
        for name, keys in plan.partitions.items()
    }
    if any(doomed_keys.values()):
        with _dagster_instance(ctx) as instance:
            for name, keys in doomed_keys.items():
                if keys:
                    methods[name] = delete_partitions(instance, name, keys)
        deleted += [o for o in by_type["partitions"] if o.object.rsplit(":", 1)[-1] in gone]
    return deleted, errors, methods


def _log_rows(
    cc: CommitContext, kind: str, objects: Sequence[Planned], dry_run: bool
) -> list[list[Any]]:
    now = ledger.utcnow()
    return [
        [
            cc.batch_id,
            cc.item_id,
            kind,
            o.object_type,
            o.object,
            o.rows,
            o.bytes,
            dry_run,
            None if dry_run else now,
            now,
            o.note,
        ]
        for o in objects
    ]


def handle_cleanup(ctx: ItemContext) -> ItemResult:
    options: CleanupOptions = ctx.options
    item: CleanupItem = ctx.item
    plan = make_plan(ctx, item)
    ctx.check()
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
        con.execute(
            "delete from cleanup_log where batch_id = ? and item_id = ? and dry_run",
            [cc.batch_id, cc.item_id],
        )
        if options.dry_run:
            objects = plan.objects
        else:
            objects, errors, methods = execute_plan(ctx, con, plan)
            metrics["deleted"] = len(objects)
            metrics["deleted_bytes"] = sum(o.bytes or 0 for o in objects if o.object_type == "file")
            if errors:
                metrics["errors"] = errors[:MAX_LISTED]
            if methods:
                metrics["partition_delete"] = ", ".join(sorted(set(methods.values())))
        rows = _log_rows(cc, item.kind, objects, options.dry_run)
        if rows:
            con.executemany(
                "insert into cleanup_log (batch_id, item_id, target_kind, object_type, object, "
                '"rows", bytes, dry_run, deleted_at, logged_at, note) '
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    return ItemResult(metrics=metrics, commit=commit)


def _summarize(objects: Sequence[Planned]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "rows": 0, "bytes": 0})
    for o in objects:
        s = out[o.object_type]
        s["count"] += 1
        s["rows"] += o.rows or 0
        s["bytes"] += o.bytes or 0
    return out


SPEC = OperationSpec(
    name="cleanup",
    description=(
        "Cleanup targets, one partition per target: old finished batches (ledger and detail "
        "rows, Dagster partitions, export/report/staging files), old or orphan files under "
        "data/exports and data/reports, leftover temporary tables, stale staging folders. "
        "Dry run by default (lists what would go); dry_run: false deletes. Never touches "
        "anything outside the data roots. Audit: cleanup_log."
    ),
    options_model=CleanupOptions,
    item_model=CleanupItem,
    handler=handle_cleanup,
    detail_tables=("cleanup_log",),
)
