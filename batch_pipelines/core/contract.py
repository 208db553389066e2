"""What an operation is: an item handler, its options and item models, its detail tables.

An operation module defines a pydantic options model, a pydantic item model and a plain
function ``handler(ctx: ItemContext) -> ItemResult``. Heavy work happens in the handler,
outside the warehouse lock; anything that must be written to the warehouse is returned as
``ItemResult.rows`` (the item's rows in its detail tables) and/or ``ItemResult.commit``, which
the runner writes under the writer lock together with the item's ledger rows: the items of a
flush in one transaction when the operation allows it (``OperationSpec.group_commits``), one
transaction per item otherwise or when that one fails.

Threads: a chunk runs up to ``item_concurrency`` items at once (``OperationSpec.item_concurrency``
by default, manifest ``settings.item_concurrency``), each attempt in a thread of its own. A
handler may share what is safe across threads: its arguments are its own (``ctx``, the item,
its DuckDB connections from ``ctx.local_duckdb``/``ctx.read_warehouse``), the options model
is read-only, and a resource (the annotator, an HTTP client) is shared by every item in
flight, so it must be thread-safe; module-level state needs a lock. Commits and cleanups run
one at a time in the runner's thread, never beside another commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from pydantic import BaseModel

from batch_pipelines.core import config, warehouse
from batch_pipelines.core.errors import ItemCancelledError, ItemTimeoutError, ValidationItemError
from batch_pipelines.core.ledger import snapshots
from batch_pipelines.core.sql import quote_ident
from batch_pipelines.core.targets import ItemTarget


class CommitContext:
    """Passed to ``ItemResult.commit``: who is committing, for writes keyed by item."""

    def __init__(self, batch_id: str, item_id: str, run_id: str | None):
        self.batch_id = batch_id
        self.item_id = item_id
        self.run_id = run_id

    def replace_row(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        **values: Any,  # noqa: ANN401 - a column's value
    ) -> None:
        """Make ``values`` (by column name) the item's one row in the detail table ``table``,
        keyed by ``batch_id`` and ``item_id``: what an earlier run of the item wrote goes."""
        key = [self.batch_id, self.item_id]
        target = quote_ident(table)
        columns = ", ".join(quote_ident(c) for c in ("batch_id", "item_id", *values))
        marks = ", ".join("?" for _ in range(len(values) + 2))
        con.execute(f"delete from {target} where batch_id = ? and item_id = ?", key)
        con.execute(f"insert into {target} ({columns}) values ({marks})", [*key, *values.values()])

    def replace_rows(
        self, con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Make ``rows`` the item's rows in the detail table ``table`` (none: delete them)."""
        target = quote_ident(table)
        con.execute(
            f"delete from {target} where batch_id = ? and item_id = ?",
            [self.batch_id, self.item_id],
        )
        for columns in dict.fromkeys(tuple(r) for r in rows):
            names = ", ".join(quote_ident(c) for c in ("batch_id", "item_id", *columns))
            marks = ", ".join("?" for _ in range(len(columns) + 2))
            con.executemany(
                f"insert into {target} ({names}) values ({marks})",
                [
                    [self.batch_id, self.item_id, *(r[c] for c in columns)]
                    for r in rows
                    if tuple(r) == columns
                ],
            )

    def snapshot_before_write(
        self, con: duckdb.DuckDBPyConnection, table: str, *, copy: bool = True
    ) -> None:
        """Call before writing ``table``, in the commit's transaction: the first time the
        batch writes it, what rollback needs is kept (a copy of the table when ``copy``, or
        the fact that the batch created it). Writes that tag their rows with ``_batch_id``
        pass ``copy=False``: rollback deletes those rows instead."""
        snapshots.take(con, self.batch_id, table, copy=copy)


@dataclass(frozen=True)
class UndoContext:
    """Passed to ``OperationSpec.undo``: the batch whose writes go, and helpers that are safe
    to call twice (a rollback or delete stopped halfway is run again)."""

    batch_id: str
    paths: config.Paths

    def delete_rows(self, con: duckdb.DuckDBPyConnection, table: str) -> int:
        """Delete the batch's rows of a detail table keyed by ``batch_id``."""
        if not snapshots.table_exists(con, table):
            return 0
        return int(
            con.execute(
                f"delete from {quote_ident(table)} where batch_id = ?", [self.batch_id]
            ).fetchall()[0][0]
        )

    def delete_lineage_rows(self, con: duckdb.DuckDBPyConnection, table: str) -> int:
        """Delete the rows the batch added to ``table`` (tagged ``_batch_id``), unless the table
        is gone or has no lineage column."""
        if not snapshots.table_exists(con, table):
            return 0
        columns = {r[0] for r in con.execute(f"describe {quote_ident(table)}").fetchall()}
        if "_batch_id" not in columns:
            return 0
        return int(
            con.execute(
                f"delete from {quote_ident(table)} where _batch_id = ?", [self.batch_id]
            ).fetchall()[0][0]
        )

    def delete_file(self, raw: str | None) -> bool:
        """Delete a file the batch wrote, if it is still there and under the data roots."""
        if not raw:
            return False
        path = Path(raw)
        if not any(path.resolve().is_relative_to(root) for root in self.paths.allowed_roots):
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


UndoFn = Callable[[duckdb.DuckDBPyConnection, UndoContext], "dict[str, int]"]
"""``(con, ctx) -> counts``: delete what a batch of the operation wrote (its rows, its files,
its detail rows), in the caller's transaction; files first, so a run stopped halfway leaves
the rows that name what is left. Tables a snapshot governs are restored by the host."""


CommitFn = Callable[[duckdb.DuckDBPyConnection, CommitContext], "str | None"]

# What the host (the operation asset) puts in every ItemContext.resources, besides the
# Dagster resources an operation declares in OperationSpec.resources:
DELETE_PARTITIONS = "delete_partitions"  # a PartitionDeleter bound to the run's instance
DETAIL_TABLES = "detail_tables"  # tuple[str, ...]: every registered operation's detail tables
PartitionDeleter = Callable[[str, Sequence[str]], str]
"""``(operation, partition_keys) -> how``: deletes Dagster dynamic partitions of an
operation, returning the path it took (``"sql"``, ``"per_key"`` or ``"none"``)."""


class RowsCommit:
    """The commit of an :class:`ItemResult` with ``rows``: called with one item's connection
    and context it replaces the item's rows table by table, then runs the operation's own
    commit (``then``); the runner instead writes the rows of a whole flush set-wise
    (:func:`batch_pipelines.core.commits.replace_rows_together`) and calls ``then`` alone."""

    def __init__(self, rows: dict[str, list[dict[str, Any]]], then: CommitFn | None) -> None:
        self.rows = rows
        self.then = then

    def __call__(self, con: duckdb.DuckDBPyConnection, cc: CommitContext) -> str | None:
        for table, rows in self.rows.items():
            cc.replace_rows(con, table, rows)
        return self.then(con, cc) if self.then is not None else None


@dataclass
class ItemResult:
    """The outcome of a successful handler call.

    ``rows`` (optional) are the item's rows in detail tables, ``{table: [{column: value}]}``
    (scalar values; ``batch_id`` and ``item_id`` are added): they replace whatever an earlier
    run of the same (batch, item) wrote in those tables. The runner writes the rows of many
    items at once, so prefer ``rows`` to a ``commit`` that only replaces rows.
    ``commit`` (optional) writes anything else under the writer lock, after the rows; it may
    return ``"skipped"`` to mark the item skipped (e.g. a file already imported), and it must
    delete what an earlier run of the same (batch, item) wrote before writing, so re-running
    an item replaces its result. A commit that learns the quality only as it reads the item's
    data may set ``quality_score`` on its result; the ledger records that value. With
    ``rows``, ``commit`` becomes a :class:`RowsCommit` that writes both, so
    ``result.commit(con, cc)`` commits the whole item either way. ``cleanup`` runs after the
    commit, success or not.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    quality_score: float | None = None
    status: str = "succeeded"
    commit: CommitFn | None = None
    cleanup: Callable[[], None] | None = None
    # Commit as soon as the item ends, before any item not started yet runs (e.g. it creates
    # a table the next items read); items already in flight are not waited for.
    flush_now: bool = False
    rows: dict[str, list[dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        if self.quality_score is not None and not 0.0 <= self.quality_score <= 1.0:
            raise ValueError(f"quality_score must be in [0, 1], got {self.quality_score}")
        if self.status not in ("succeeded", "skipped"):
            raise ValueError(f"status must be succeeded or skipped, got {self.status!r}")
        if self.rows is not None and not isinstance(self.commit, RowsCommit):
            self.commit = RowsCommit(self.rows, self.commit)


@dataclass
class ItemContext:
    """Everything a handler may use for one attempt at one item."""

    batch_id: str
    item_id: str
    partition_key: str
    item: Any  # the operation's item model instance
    options: Any  # the operation's options model instance
    attempt: int
    run_id: str | None
    paths: config.Paths
    deadline: float | None = None
    timeout_s: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    batch_stop: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("batch_pipelines"))
    resources: dict[str, Any] = field(default_factory=dict)
    _connections: list[duckdb.DuckDBPyConnection] = field(default_factory=list)

    def check(self) -> None:
        """Raise if this attempt timed out or the batch was cancelled; call it in loops."""
        if self.batch_stop.is_set():
            raise ItemCancelledError("batch cancelled or stopped while the item ran")
        if self.cancel_event.is_set():
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise ItemTimeoutError("item timed out")
            raise ItemCancelledError("item cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise ItemTimeoutError("item timed out")

    @property
    def staging_dir(self) -> Path:
        path = self.paths.staging / self.batch_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resolve_path(self, raw: str, *, must_exist: bool = True, field_name: str = "path") -> Path:
        return resolve_under_roots(raw, self.paths, must_exist=must_exist, field_name=field_name)

    @contextlib.contextmanager
    def local_duckdb(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB for item work, with the configured memory limit and a spill
        directory; interrupted if the item times out."""
        con = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": config.duckdb_memory_limit(),
                "temp_directory": str(self.paths.staging / "_spill"),
                "threads": 2,
            },
        )
        self._connections.append(con)
        try:
            yield con
        finally:
            self._connections.remove(con)
            con.close()

    @contextlib.contextmanager
    def read_warehouse(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the warehouse, held as briefly as possible and for no
        longer than BATCH_PIPELINES_QUERY_TIMEOUT_S."""
        with warehouse.connect(
            self.paths.warehouse, read_only=True, query_timeout_s=config.query_timeout_s()
        ) as con:
            self._connections.append(con)
            try:
                yield con
            finally:
                self._connections.remove(con)

    def interrupt(self) -> None:
        for con in list(self._connections):
            with contextlib.suppress(Exception):
                con.interrupt()


def resolve_under_roots(
    raw: str, paths: config.Paths, *, must_exist: bool = True, field_name: str = "path"
) -> Path:
    """Resolve a manifest path (relative paths are taken from the data root's parent, i.e.
    the project directory, so ``data/samples/x.csv`` works) and refuse anything that, after
    following symlinks and ``..``, lies outside the allowed roots."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationItemError(f"{field_name}: must be a non-empty path")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = paths.data.parent / candidate
    resolved = candidate.resolve()
    if not any(resolved.is_relative_to(root) for root in paths.allowed_roots):
        roots = ", ".join(str(r) for r in paths.allowed_roots)
        raise ValidationItemError(
            f"{field_name}: {raw!r} resolves to {resolved}, outside the allowed roots ({roots})"
        )
    if must_exist and not resolved.exists():
        raise ValidationItemError(f"{field_name}: {raw!r} does not exist")
    return resolved


@dataclass(frozen=True)
class CheckOutcome:
    """The result of an :class:`ItemCheck` for one item (``severity``: ``error`` or ``warn``)."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    severity: str = "error"


@dataclass(frozen=True)
class ItemCheck:
    """A partitioned asset check on the operation's asset: one result per item partition,
    derived from the metrics of each item that succeeded (``None`` = no result)."""

    name: str
    description: str
    evaluate: Callable[[dict[str, Any]], CheckOutcome | None]
    blocking: bool = False


@dataclass(frozen=True)
class OperationSpec:
    """One operation: its name, models, handler and a one-paragraph description for the UI."""

    name: str
    description: str
    options_model: type[BaseModel]
    item_model: type[BaseModel]
    handler: Callable[[ItemContext], ItemResult]
    detail_tables: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    asset_checks: tuple[ItemCheck, ...] = ()
    # True when ItemResult.commit only writes the warehouse (no file renamed or deleted): the
    # runner may then commit the items of one flush in a single transaction, and commits them
    # one by one again if any of them fails. Leave False when a commit has side effects
    # outside DuckDB that a rollback cannot undo.
    group_commits: bool = False
    # Every table an item writes or replaces: one batch_pipelines owns, or one that two
    # items of the batch would both write ({item_id} templates), is refused at submit, and
    # again by the runner before the item runs.
    item_targets: tuple[ItemTarget, ...] = ()
    # How to undo a batch's writes (rollback, delete); None: they cannot be undone (cleanup
    # deletes), so such a batch is never rolled back and a delete leaves its effects.
    undo: UndoFn | None = None
    # Items of a chunk in flight at once when the manifest's settings.item_concurrency is
    # unset: 1 for work that holds the GIL (parsing, pandas, DuckDB in this process), more
    # when an item mostly waits (an HTTP call); the handler must then be thread-safe (above).
    item_concurrency: int = 1
    # The default above as the run's resources decide it, where they do (annotate: 1 on the
    # local backend, whose work holds the GIL, so more threads only take turns on it); None: unchanged.
    concurrency_for_resources: Callable[[Mapping[str, Any]], int | None] | None = None
    # Its handler sets ItemResult.quality_score: a canary's min_mean_quality and a quality
    # gate need one, so they are refused at submit for an operation without.
    scores_quality: bool = False
