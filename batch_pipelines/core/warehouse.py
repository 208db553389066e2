"""The DuckDB warehouse: one writer at a time, short connections, schema migrations.

DuckDB lets one process open a file read-write, and while it does no other process may open
it at all. Every process of this project (run workers, the daemon's sensors, the CLI) opens
the warehouse only through :func:`connect`, which first takes a cross-process file lock
beside the database (exclusive for writers, shared for readers), then opens DuckDB, and
always closes both. Work that takes long (parsing a file, calling a model) happens outside
the lock; only the short write of its results happens inside. Connections from tools outside
the project (the ``duckdb`` shell) do not take the lock, so the DuckDB open is retried with
backoff as well.

A process brings the schema up to date on its first connection, under an exclusive lock
taken only when a migration is pending (checked read-only first), so a long read never
holds up a process that only wants to read. Reads may be bounded in time
(``query_timeout_s``): DuckDB is interrupted and :class:`QueryTimeoutError` raised. A busy
or unreadable warehouse raises a :class:`WarehouseError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import duckdb

from batch_pipelines.core import config, lake
from batch_pipelines.core.errors import (
    QueryTimeoutError,
    WarehouseBusyError,
    WarehouseError,
    WarehouseUnreadableError,
)
from batch_pipelines.core.schema import migrate, pending_migrations

__all__ = [
    "QueryTimeoutError",
    "WarehouseBusyError",
    "WarehouseError",
    "WarehouseUnreadableError",
    "connect",
    "file_lock",
    "forget_migrations",
    "is_lake",
    "write",
]
T = TypeVar("T")

_process_lock = threading.RLock()
_migrated: set[str] = set()
# Reads that cannot touch anything but the warehouse: no file, extension, URL or ATTACH, and
# no SET to turn that back on.
SANDBOX = {"enable_external_access": False, "lock_configuration": True}


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _newer_format(path: Path, first_line: str) -> str:
    """The error for a warehouse file in a storage format newer than this DuckDB reads (one
    written by an earlier release of the project on DuckDB 2.x): who wrote it, and the way
    over (docs/troubleshooting.md)."""
    writer = "a newer DuckDB"
    try:
        with path.open("rb") as fh:
            header = fh.read(84)
        # The main header: "DUCK" at 8, the storage version at 12, the writer's version in the
        # 32 bytes from 52.
        if header[8:12] == b"DUCK":
            name = header[52:84].split(b"\0", 1)[0].decode("ascii", "replace")
            if re.fullmatch(r"v\d+\.\d+\.\d+\S*", name):
                writer = f"DuckDB {name}"
    except OSError:
        pass
    stored = re.search(r"version number (\d+)", first_line)
    storage = f" (storage version {stored.group(1)})" if stored else ""
    return (
        f"cannot open the warehouse {path}: it was written by {writer}{storage}, which this "
        f"release's DuckDB {duckdb.__version__} cannot read; the file was left as it is. "
        "Copy it over with that DuckDB's EXPORT DATABASE and this one's IMPORT DATABASE "
        "(docs/troubleshooting.md, 'A warehouse written by a newer DuckDB')"
    )


@contextlib.contextmanager
def file_lock(path: Path, exclusive: bool, timeout_s: float) -> Iterator[None]:
    """Hold an flock on ``<path>.lock`` (exclusive or shared) for the block; raises
    WarehouseBusyError after ``timeout_s``. Also used for the submit and instance-init locks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WarehouseBusyError(
                        f"warehouse {path} is locked by another process for more than "
                        f"{timeout_s:.0f}s (set BATCH_PIPELINES_LOCK_TIMEOUT_S to wait longer)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _open(
    path: Path, read_only: bool, timeout_s: float, sandbox: bool = False
) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            # The memory limit of item work holds here too: committing a big import into a
            # table otherwise buffers it in DuckDB's default of 80% of RAM (docs/benchmarks.md).
            return duckdb.connect(
                str(path),
                read_only=read_only,
                config={
                    "memory_limit": config.duckdb_memory_limit(),
                    **(SANDBOX if sandbox else {}),
                },
            )
        except duckdb.IOException as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "can only read versions" in first_line:
                raise WarehouseUnreadableError(_newer_format(path, first_line)) from None
            if "lock" not in first_line.lower():
                raise WarehouseUnreadableError(
                    f"cannot open the warehouse {path}: {first_line}"
                ) from None
            # Another process outside our lock (a duckdb shell) holds the file.
            if time.monotonic() > deadline:
                raise WarehouseBusyError(
                    f"warehouse {path} is held by another program for more than "
                    f"{timeout_s:.0f}s: {first_line}"
                ) from None
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 2.0)
        except duckdb.Error as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WarehouseUnreadableError(
                f"cannot open the warehouse {path}: {first_line}"
            ) from None


def _schema_is_current(path: Path, timeout_s: float) -> bool:
    """Whether every migration is applied, asked read-only under a shared lock."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with file_lock(path, exclusive=False, timeout_s=timeout_s):
        con = _open(path, True, timeout_s)
        try:
            return not pending_migrations(con)
        finally:
            con.close()


@contextlib.contextmanager
def _time_limit(con: duckdb.DuckDBPyConnection, seconds: float | None) -> Iterator[None]:
    """Interrupt ``con`` after ``seconds`` and turn whatever the block raises then into a
    QueryTimeoutError."""
    if not seconds:
        yield
        return
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        with contextlib.suppress(Exception):
            con.interrupt()

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if fired.is_set():
            raise QueryTimeoutError(
                f"the query ran longer than {seconds:g}s and was stopped "
                f"({config.query_timeout_setting()})"
            ) from exc
        raise
    finally:
        timer.cancel()


@contextlib.contextmanager
def connect(
    path: Path | str | None = None,
    *,
    read_only: bool = False,
    timeout_s: float | None = None,
    query_timeout_s: float | None = None,
    sandbox: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse under the project's cross-process lock; always closes it.

    A read-only connection to a warehouse that does not exist yet creates it first, so
    readers never fail on a fresh checkout. ``query_timeout_s`` bounds the time the block
    may spend in DuckDB; ``sandbox`` (read-only connections) refuses files, extensions and
    ATTACH. Raises a :class:`WarehouseError` when the warehouse stays locked or cannot be
    opened.
    """
    path = Path(path) if path is not None else config.get_paths().warehouse
    if lake.is_lake_setting(path):
        with _connect_lake(path, read_only, query_timeout_s, sandbox) as con:
            yield con
        return
    timeout_s = config.lock_timeout_s() if timeout_s is None else timeout_s
    key = str(path)
    with _process_lock:
        if key not in _migrated or not path.exists():
            # First use in this process (or a new file): bring the schema up to date with a
            # short read-write connection, whatever the caller asked for, but only when a
            # migration is pending: the exclusive lock would wait for every running read.
            if not _schema_is_current(path, timeout_s):
                with file_lock(path, exclusive=True, timeout_s=timeout_s):
                    con = _open(path, False, timeout_s)
                    try:
                        migrate(con)
                    finally:
                        con.close()
            _migrated.add(key)
        with file_lock(path, exclusive=not read_only, timeout_s=timeout_s):
            con = _open(path, read_only, timeout_s, sandbox=sandbox and read_only)
            try:
                with _time_limit(con, query_timeout_s):
                    yield con
            finally:
                con.close()


@contextlib.contextmanager
def _connect_lake(
    setting: Path, read_only: bool, query_timeout_s: float | None, sandbox: bool
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a DuckLake warehouse: no lock at all, since the lake takes many
    writers at once (a conflicting commit raises; the writers retry, see lake.retry)."""
    spec = lake.parse(setting)
    key = spec.attach_uri + "|" + spec.data_path
    if key not in _migrated:
        with _process_lock:
            if key not in _migrated:
                con = lake.cursor(spec)
                try:
                    lake.retry(lambda: migrate(con))
                finally:
                    con.close()
                _migrated.add(key)
    con = lake.cursor(spec, sandbox=sandbox and read_only)
    try:
        with _time_limit(con, query_timeout_s):
            yield con
    finally:
        con.close()


def is_lake(path: Path | str | None = None) -> bool:
    """Whether the warehouse (``path``, else the configured one) is a DuckLake."""
    return lake.is_lake_setting(path if path is not None else config.get_paths().warehouse)


def write(
    work: Callable[[duckdb.DuckDBPyConnection], T],
    path: Path | str | None = None,
    *,
    timeout_s: float | None = None,
) -> T:
    """Run ``work(con)`` in one transaction on a write connection and commit; returns what it
    returned. On a lake, a commit that conflicts with another writer's rolls back and ``work``
    runs again on fresh data (bounded, with jitter: :func:`lake.retry`), so ``work`` must
    decide from what it reads, not from what it read before."""

    def once() -> T:
        with connect(path, timeout_s=timeout_s) as con:
            return lake.once(con, lambda: work(con))

    return lake.retry(once) if is_lake(path) else once()


def forget_migrations() -> None:
    """Tests that delete a warehouse file call this so the next connect migrates again."""
    _migrated.clear()
    lake.close_shared()
