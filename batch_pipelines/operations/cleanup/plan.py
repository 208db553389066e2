"""Planning a cleanup target: what it covers, found in the warehouse and under the data roots,
before anything is deleted."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from batch_pipelines.core import ledger, outbox
from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.keys import is_batch_id, partitions_def_name
from batch_pipelines.core.sql import quote_ident
from batch_pipelines.core.targets import TEMP_TABLE_MARK, TEMP_TABLE_SCHEMAS, owner_of
from batch_pipelines.operations.cleanup.files import check_inside, roots, walk_files
from batch_pipelines.operations.cleanup.models import CleanupItem, Planned
from batch_pipelines.operations.cleanup.tables import CLEANUP_LOG

NEVER_CLEANED = frozenset({CLEANUP_LOG, *ledger.TABLES})  # cleanup_log is the audit trail
WRITING_OPERATIONS = ("transform", "import")
WEBHOOK_TABLES = ("webhook_outbox", "webhook_deliveries")
WEBHOOK_NOTE = "webhooks delivered or given up"


# --- warehouse discovery ---------------------------------------------------------------------


def detail_tables(con: duckdb.DuckDBPyConnection, declared: Sequence[str]) -> list[str]:
    """The declared operation detail tables that exist in ``main`` and have a ``batch_id``
    column (never ``cleanup_log`` or the ledger's tables)."""
    candidates = set(declared) - NEVER_CLEANED
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
def registered_ids(con: duckdb.DuckDBPyConnection, name: str, ids: Sequence[str]) -> Iterator[str]:
    con.register(name, pa.table({"batch_id": pa.array(list(ids), pa.string())}))
    try:
        yield name
    finally:
        con.unregister(name)


def recorded_files(
    con: duckdb.DuckDBPyConnection, declared: Sequence[str], batch_ids: Sequence[str] | None = None
) -> set[str]:
    """File paths named by detail tables (of the given batches, or all)."""
    tables = detail_tables(con, declared)
    found: set[str] = set()
    for table, cols in path_columns(con, tables).items():
        for col in cols:
            q = f"select distinct {quote_ident(col)} from {quote_ident(table)} where {quote_ident(col)} is not null"
            if batch_ids is None:
                rows = con.execute(q).fetchall()
            else:
                with registered_ids(con, "_cleanup_ids", batch_ids):
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
    partitions: dict[str, list[str]]  # operation -> partition keys
    files: list[tuple[Path, str]]  # (path, root name)
    dirs: list[tuple[Path, str]]
    tables: list[str]
    refused: list[str]
    notes: list[str]
    webhooks_before: datetime | None = None  # webhook outbox rows and attempts before this


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


def plan_old_batches(ctx: ItemContext, days: float, declared: Sequence[str]) -> Plan:
    paths = ctx.paths
    rts = roots(paths)
    plan = Plan([], [], {}, [], [], [], [], [])
    cutoff = _cutoff(days)
    with ctx.read_warehouse() as con:
        plan.webhooks_before = cutoff
        for table, n in zip(WEBHOOK_TABLES, outbox.purgeable(con, cutoff), strict=True):
            if n:
                plan.objects.append(Planned("rows", table, rows=n, note=WEBHOOK_NOTE))
        batches = ledger.finished_before(con, cutoff, exclude=ctx.batch_id)
        ids = [b[0] for b in batches]
        plan.batch_ids = ids
        if not ids:
            return plan
        counts = ledger.row_counts(con, ids)
        with registered_ids(con, "_cleanup_ids", ids):
            for table in detail_tables(con, declared):
                for bid, n in con.execute(
                    f"select batch_id, count(*) from {quote_ident(table)} "
                    "where batch_id in (select batch_id from _cleanup_ids) group by 1"
                ).fetchall():
                    counts[(table, bid)] = n
        keys = ledger.partition_keys(con, ids)
        files = recorded_files(con, declared, ids)
    per_batch_keys: dict[str, int] = defaultdict(int)
    for bid, operation, key in keys:
        plan.partitions.setdefault(operation, []).append(key)
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
                    f"{partitions_def_name(operation)}:{bid}",
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


def plan_orphan_files(ctx: ItemContext, item: CleanupItem, declared: Sequence[str]) -> Plan:
    plan = Plan([], [], {}, [], [], [], [], [])
    root, folder = _scope(ctx, item)
    rts = roots(ctx.paths)
    with ctx.read_warehouse() as con:
        known = ledger.known_batch_ids(con)
        recorded = set()
        for raw in recorded_files(con, declared):
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


_TEMP_NAME = "%" + TEMP_TABLE_MARK.replace("_", "\\_") + "%"


def temp_tables(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    schemas = ", ".join("?" for _ in TEMP_TABLE_SCHEMAS)
    found = con.execute(
        "select table_schema, table_name from information_schema.tables "
        "where table_type = 'BASE TABLE' and table_catalog = current_database() and "
        f"(table_name like ? escape '\\' or table_schema in ({schemas})) order by 1, 2",
        [_TEMP_NAME, *TEMP_TABLE_SCHEMAS],
    ).fetchall()
    # Write targets obey the same rule, so an owned name here was not left by an operation.
    return [(schema, name) for schema, name in found if owner_of(name) is None]


def plan_temp_tables(ctx: ItemContext) -> Plan:
    plan = Plan([], [], {}, [], [], [], [], [])
    with ctx.read_warehouse() as con:
        running = ledger.count_active(con, WRITING_OPERATIONS, exclude=ctx.batch_id)
        tables = temp_tables(con)
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


def make_plan(ctx: ItemContext, item: CleanupItem, declared: Sequence[str]) -> Plan:
    """What the item's target covers; ``declared`` are the operations' detail tables."""
    if item.kind == "old_batches":
        return plan_old_batches(ctx, float(item.older_than_days or 0), declared)
    if item.kind == "old_files":
        return plan_old_files(ctx, item)
    if item.kind == "orphan_files":
        return plan_orphan_files(ctx, item, declared)
    if item.kind == "temp_tables":
        return plan_temp_tables(ctx)
    return plan_staging(ctx, item)
