"""The warehouse on DuckLake: a catalog in PostgreSQL or SQLite, the data in Parquet files.

``BATCH_PIPELINES_WAREHOUSE=ducklake:postgres:<libpq conninfo>`` (many machines) or
``ducklake:sqlite:<path>`` (one machine) selects it; ``BATCH_PIPELINES_LAKE_DATA_PATH`` says
where the data files go (default ``<data>/lake/``). Many DuckDB clients commit to a lake at
once with snapshot isolation, so no file lock is taken: a commit that loses a race to another
writer raises, and :func:`retry` runs the whole transaction again (bounded, with jitter).

The extensions come from the ``batch_pipelines[lake]`` packages only, never downloaded at run
time. A lake holds no PRIMARY KEY, UNIQUE, index or sequence and no ``INSERT ... ON CONFLICT``:
:func:`lake_statements` rewrites each migration statement for it, and the writers that upsert
ask :func:`is_lake` and delete + insert in their transaction instead.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb

from batch_pipelines.core import config
from batch_pipelines.core.errors import ConfigError, WarehouseError, WarehouseUnreadableError

PREFIX = "ducklake:"
ALIAS = "lake"
EXTRA = "pip install 'batch_pipelines[lake]'"
# extension name DuckDB looks for -> (package, module)
_EXTENSIONS = {
    "ducklake": ("duckdb-extension-ducklake", "duckdb_extension_ducklake"),
    "postgres_scanner": ("duckdb-extension-postgres", "duckdb_extension_postgres"),
    "sqlite_scanner": ("duckdb-extension-sqlite", "duckdb_extension_sqlite"),
}
_CATALOG_EXTENSION = {"postgres": "postgres_scanner", "sqlite": "sqlite_scanner"}
# A commit that lost a race: DuckLake's own conflict check, or the catalog database refusing
# a concurrent writer (SQLite's lock, PostgreSQL's serialization failures).
_CONFLICT = re.compile(
    r"transaction conflict|database is locked|could not serialize|deadlock detected|"
    r"duplicate key value",
    re.IGNORECASE,
)
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LakeSpec:
    """A parsed ``ducklake:<catalog>:<target>`` warehouse setting."""

    catalog: str  # "postgres" or "sqlite"
    target: str  # libpq conninfo or SQLite file
    data_path: str

    @property
    def attach_uri(self) -> str:
        return f"{PREFIX}{self.catalog}:{self.target}"

    def __str__(self) -> str:
        from batch_pipelines.core.redact import redact

        return redact(self.attach_uri)


def is_lake_setting(value: str | os.PathLike[str] | None) -> bool:
    return value is not None and str(value).startswith(PREFIX)


def parse(value: str | os.PathLike[str]) -> LakeSpec:
    """The lake a ``ducklake:...`` setting names; ConfigError naming the setting otherwise."""
    raw = str(value)
    rest = raw[len(PREFIX) :]
    catalog, _, target = rest.partition(":")
    if catalog not in _CATALOG_EXTENSION or not target.strip():
        raise ConfigError(
            f"BATCH_PIPELINES_WAREHOUSE: {raw.split(':', 2)[0]}:{catalog}:... is not a lake; "
            "use ducklake:postgres:<libpq conninfo> or ducklake:sqlite:<path>"
        )
    if catalog == "sqlite":
        target = str(Path(target).expanduser().resolve())
    data = os.environ.get("BATCH_PIPELINES_LAKE_DATA_PATH") or str(config.get_paths().data / "lake")
    if "://" not in data:  # a local or mounted path; s3:// and the like stay as they are
        data = str(Path(data).expanduser().resolve())
    return LakeSpec(catalog=catalog, target=target, data_path=data.rstrip("/") + "/")


def extension_file(name: str) -> Path:
    """The ``.duckdb_extension`` file of ``name`` inside its installed package, copied once to
    a cache under the name DuckDB expects (it derives the entry point from the file name)."""
    package, module = _EXTENSIONS[name]
    try:
        found = importlib.import_module(module)
    except ImportError:
        raise WarehouseError(
            f"the DuckLake warehouse needs the package {package}, which is not installed: {EXTRA}"
        ) from None
    files = sorted(Path(found.__file__ or "").parent.rglob("*.duckdb_extension"))
    wanted = [f for f in files if f"v{duckdb.__version__}" in f.parts] or files
    if not wanted:
        raise WarehouseError(f"the package {package} holds no extension file: {EXTRA}")
    cache = Path(tempfile.gettempdir()) / f"batch_pipelines-duckdb-{duckdb.__version__}"
    target = cache / f"{name}.duckdb_extension"
    source = wanted[0]
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)  # atomic: a concurrent loader sees the old file or the new one
    return target


def open_lake(
    spec: LakeSpec, *, read_only: bool = False, sandbox: bool = False
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as ``lake`` and in use. ``sandbox`` then
    closes every file but the lake's data files, extensions, ATTACH and SET."""
    con = duckdb.connect(
        config={
            "memory_limit": config.duckdb_memory_limit(),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    try:
        for name in ("ducklake", _CATALOG_EXTENSION[spec.catalog]):
            con.execute(f"load '{extension_file(name)}'")
        if "://" not in spec.data_path:
            Path(spec.data_path).mkdir(parents=True, exist_ok=True)
        if spec.catalog == "sqlite":
            Path(spec.target).parent.mkdir(parents=True, exist_ok=True)
        options = [f"data_path '{_quote(spec.data_path)}'"]
        if read_only:
            options.append("read_only")
        if spec.catalog == "sqlite":
            options += _sqlite_catalog_options(read_only)
        # A SQLite catalog that another process is committing to may still answer "database
        # is locked" to the catalog check of ATTACH: wait for it as for a conflict.
        attach = f"attach '{_quote(spec.attach_uri)}' as {ALIAS} ({', '.join(options)})"
        retry(lambda: con.execute(attach))
        con.execute(f"use {ALIAS}")
        if sandbox:
            con.execute(f"set allowed_directories = ['{_quote(spec.data_path)}']")
            con.execute("set enable_external_access = false")
            con.execute("set lock_configuration = true")
    except WarehouseError:
        con.close()
        raise
    except duckdb.Error as exc:
        con.close()
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        from batch_pipelines.core.redact import redact

        raise WarehouseUnreadableError(
            f"cannot open the lake warehouse {spec}: {redact(first_line)}"
        ) from None
    return con


def _sqlite_catalog_options(read_only: bool) -> list[str]:
    """A SQLite catalog in write-ahead-log mode, so that readers (every ATTACH, every query's
    snapshot lookup) never wait for a writer's commit and a commit writes and syncs one file;
    in the default rollback-journal mode a writer waiting to commit blocks every new reader,
    and four busy writers kept a fifth process's ATTACH locked out for minutes (in CI).
    SQLite's own busy wait (5 s in DuckDB) is raised to the warehouse's lock timeout, as for
    the single file. The mode stays with the file: a read-only open leaves it as it is."""
    busy = [f"meta_busy_timeout {int(config.lock_timeout_s() * 1000)}"]
    return busy if read_only else ["meta_journal_mode 'wal'", *busy]


_shared: dict[tuple[int, str], duckdb.DuckDBPyConnection] = {}
_shared_lock = threading.Lock()


def cursor(spec: LakeSpec, *, sandbox: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection of its own (a transaction of its own) to the lake. Loading the extensions
    and attaching takes about a second, so every connection of a process shares one DuckDB
    with the lake attached; a sandboxed one gets a DuckDB of its own, since those settings
    hold for a whole database."""
    if sandbox:
        return open_lake(spec, read_only=True, sandbox=True)
    key = (os.getpid(), spec.attach_uri + "|" + spec.data_path)  # never share across a fork
    with _shared_lock:
        root = _shared.get(key)
        if root is None:
            root = _shared[key] = open_lake(spec)
    con = root.cursor()
    con.execute(f"use {ALIAS}")
    return con


def close_shared() -> None:
    """Close this process's shared lake connections (tests that drop a lake call this)."""
    with _shared_lock:
        for key in [k for k in _shared if k[0] == os.getpid()]:
            with contextlib.suppress(duckdb.Error):
                _shared.pop(key).close()


def _quote(text: str) -> str:
    return text.replace("'", "''")


def is_lake(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` writes to a lake (its current database is the attached lake)."""
    return con.execute("select current_database()").fetchone()[0] == ALIAS


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a commit that lost a race and may simply run again."""
    return isinstance(exc, duckdb.Error) and bool(_CONFLICT.search(str(exc)))


class _Counter:
    """Conflicting commits run again by this process (read by ``make bench``)."""

    retries = 0


COUNTER = _Counter()
# Every flush of a chunk run updates batch_items, and DuckLake lets no two transactions change
# the same table at once: under four busy writers a commit may lose many times in a row, and
# how many depends on the disk. So the retries are bounded in time, not in number: the
# warehouse's lock timeout (BATCH_PIPELINES_LOCK_TIMEOUT_S), as for the single file's lock.
MAX_DELAY_S = 1.0


def retry(work: Callable[[], T], *, timeout_s: float | None = None) -> T:
    """Run ``work`` (a whole transaction: it must begin and commit itself) again after a
    conflict, with exponential backoff and full jitter, until ``timeout_s`` (default: the
    warehouse's lock timeout) has passed; then the last conflict is raised."""
    deadline = time.monotonic() + (config.lock_timeout_s() if timeout_s is None else timeout_s)
    delay = 0.05
    for attempt in itertools.count(1):
        try:
            return work()
        except duckdb.Error as exc:
            if not is_conflict(exc) or time.monotonic() >= deadline:
                raise
            COUNTER.retries += 1
            log.info("commit conflict, running the transaction again (%d): %s", attempt, exc)
            time.sleep(min(random.uniform(0, delay), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, MAX_DELAY_S)
    raise AssertionError("unreachable")


def once(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """``work()`` between ``begin`` and ``commit`` on ``con``, rolled back if it raises (one
    attempt: :func:`transaction` and ``warehouse.write`` retry it on a lake)."""
    con.execute("begin")
    try:
        result = work()
        con.execute("commit")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
        raise
    return result


def transaction(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """``work()`` between ``begin`` and ``commit`` on ``con`` (rolled back if it raises); on a
    lake a conflicting commit runs it again (:func:`retry`)."""
    return retry(lambda: once(con, work)) if is_lake(con) else once(con, work)


# --- migrations on a lake -------------------------------------------------------------------

_DROP = re.compile(r"^\s*create\s+(?:unique\s+)?(?:index|sequence)\b", re.IGNORECASE)
_TABLE_KEY = re.compile(r",\s*(?:primary\s+key|unique)\s*\([^)]*\)", re.IGNORECASE)
_COLUMN_KEY = re.compile(r"\s+(?:primary\s+key|unique)\b(?!\s*\()", re.IGNORECASE)
_NEXTVAL = re.compile(r"default\s+nextval\(\s*'[^']*'\s*\)", re.IGNORECASE)
_ADD_COLUMN_BOOL_DEFAULT = re.compile(
    r"^(\s*alter\s+table\s+.+\s+add\s+column\s+.+?\s+default\s+)(true|false)(\s*)$",
    re.IGNORECASE | re.DOTALL,
)
# Ids a sequence gave before: milliseconds since the epoch then 6 random digits, so they keep
# increasing with time across processes and collide with a chance of one in a million per
# pair written in the same millisecond.
LAKE_ID_DEFAULT = "default (epoch_ms(now()) * 1000000 + (random() * 1000000)::bigint)"


def lake_statements(statement: str) -> list[str]:
    """A migration statement as a lake can hold it: no index or sequence (dropped), no PRIMARY
    KEY or UNIQUE (the writers keep keys unique), ids from :data:`LAKE_ID_DEFAULT` instead of
    ``nextval``, and a boolean default of ``ALTER TABLE ... ADD COLUMN`` spelled as a string
    literal (DuckLake takes literal defaults only there)."""
    if _DROP.match(statement):
        return []
    out = _TABLE_KEY.sub("", statement)
    out = _COLUMN_KEY.sub("", out)
    out = _NEXTVAL.sub(LAKE_ID_DEFAULT, out)
    out = _ADD_COLUMN_BOOL_DEFAULT.sub(lambda m: f"{m[1]}'{m[2].lower()}'{m[3]}", out)
    return [out]


# --- maintenance ------------------------------------------------------------------------------


def maintain(con: duckdb.DuckDBPyConnection, *, older_than_s: float = 7 * 86400) -> dict[str, int]:
    """Compact small data files and expire snapshots older than ``older_than_s``, then delete
    the files nothing refers to any more; returns what each step did."""
    merged = con.execute(f"call ducklake_merge_adjacent_files('{ALIAS}')").fetchall()
    cutoff = f"now() - interval '{int(older_than_s)} seconds'"
    expired = con.execute(
        f"call ducklake_expire_snapshots('{ALIAS}', older_than => {cutoff})"
    ).fetchall()
    cleaned = con.execute(
        f"call ducklake_cleanup_old_files('{ALIAS}', older_than => {cutoff})"
    ).fetchall()
    return {
        "merged_files": len(merged),
        "expired_snapshots": len(expired),
        "deleted_files": len(cleaned),
    }
