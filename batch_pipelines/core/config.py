"""Where things live and the limits that apply, resolved at call time from the environment.

Every path the project reads or writes is resolved against these roots; nothing depends on
the current directory by accident. Environment variables (all optional):

- ``BATCH_PIPELINES_DATA``: the data root (default: ``<project>/data``).
- ``BATCH_PIPELINES_WAREHOUSE``: the DuckDB warehouse file (default ``<data>/warehouse.duckdb``).
  ``ducklake:postgres:<libpq conninfo>`` or ``ducklake:sqlite:<path>`` puts it on DuckLake.
- ``BATCH_PIPELINES_LAKE_DATA_PATH``: where a DuckLake warehouse keeps its Parquet files
  (default ``<data>/lake/``; a shared volume or ``s3://...`` for several machines).
- ``BATCH_PIPELINES_ALLOWED_ROOTS``: extra roots (``os.pathsep``-separated) that manifests may
  read items from; the data root is always allowed.
- ``BATCH_PIPELINES_MAX_ITEMS``: the most items one batch may hold (default 100000).
- ``BATCH_PIPELINES_DUCKDB_MEMORY``: DuckDB memory limit for item work (default ``1GB``).
- ``BATCH_PIPELINES_LOCK_TIMEOUT_S``: how long a process waits for the warehouse (default 300).
- ``BATCH_PIPELINES_QUERY_TIMEOUT_S``: the longest a read of the warehouse may run: a manifest's
  ``items_from.sql``, ``batch-pipelines sql``, an operation's reads (default 300; 0: no limit).
- ``BATCH_PIPELINES_INBOX_QUERY_TIMEOUT_S``: the same for a manifest's ``items_from.sql`` taken
  from the inbox, whose sensor must finish within Dagster's 60 s (default 20).
- ``BATCH_PIPELINES_MAX_QUEUED_ITEMS``: the most unfinished items across all batches; a
  submission beyond it is refused whole (default 1000000; 0: no limit).
- ``BATCH_PIPELINES_PRIORITY_AGING_S``: a chunk waiting this long rises one priority level per
  interval, up to high (default 600; 0: no aging).
- ``BATCH_PIPELINES_GLOB_MAX_FILES``: the most files and folders an ``items_from.glob`` may look
  at (default 200000).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from batch_pipelines.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _default_data_root() -> Path:
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "data"
    return Path.cwd() / "data"


@dataclass(frozen=True)
class Paths:
    """Resolved locations of the data root and everything under it."""

    data: Path
    warehouse: Path
    allowed_roots: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def inbox(self) -> Path:
        return self.data / "inbox"

    @property
    def exports(self) -> Path:
        return self.data / "exports"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    @property
    def staging(self) -> Path:
        return self.data / "staging"

    @property
    def samples(self) -> Path:
        return self.data / "samples"

    @property
    def dagster_home(self) -> Path:
        return self.data / "dagster_home"


def get_paths(data_root: str | None = None, warehouse_path: str | None = None) -> Paths:
    """The paths in force now: explicit arguments, else the environment, else defaults."""
    data = Path(
        data_root or os.environ.get("BATCH_PIPELINES_DATA") or _default_data_root()
    ).resolve()
    setting = warehouse_path or os.environ.get("BATCH_PIPELINES_WAREHOUSE")
    # A lake (``ducklake:<catalog>:<target>``, see core/lake.py) is no file to resolve.
    warehouse = (
        Path(setting)
        if setting and str(setting).startswith("ducklake:")
        else Path(setting or data / "warehouse.duckdb").resolve()
    )
    extra = [
        Path(p).resolve()
        for p in os.environ.get("BATCH_PIPELINES_ALLOWED_ROOTS", "").split(os.pathsep)
        if p.strip()
    ]
    return Paths(data=data, warehouse=warehouse, allowed_roots=(data, *extra))


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def max_items() -> int:
    return _int_env("BATCH_PIPELINES_MAX_ITEMS", 100_000)


def duckdb_memory_limit() -> str:
    return os.environ.get("BATCH_PIPELINES_DUCKDB_MEMORY", "1GB")


def lock_timeout_s() -> float:
    return float(_int_env("BATCH_PIPELINES_LOCK_TIMEOUT_S", 300))


def max_batches_per_hour() -> int:
    """Submission rate limit per submitter (0 disables it)."""
    return _int_env("BATCH_PIPELINES_MAX_BATCHES_PER_HOUR", 0)


def max_queued_items() -> int:
    """The most unfinished items across all batches (0 disables the cap)."""
    return _int_env("BATCH_PIPELINES_MAX_QUEUED_ITEMS", 1_000_000)


def priority_aging_s() -> float | None:
    """Seconds a chunk waits before it rises one priority level; None: no aging."""
    return _seconds_env("BATCH_PIPELINES_PRIORITY_AGING_S", 600.0)


QUERY_TIMEOUT_SETTING = "BATCH_PIPELINES_QUERY_TIMEOUT_S"
_query_limit: ContextVar[tuple[float, str] | None] = ContextVar("query_limit", default=None)


def _seconds_env(name: str, default: float) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    return value if value > 0 else None


def query_timeout_s() -> float | None:
    """The longest a read of the warehouse may run now, or None for no limit."""
    limit = _query_limit.get()
    return limit[0] if limit else _seconds_env(QUERY_TIMEOUT_SETTING, 300.0)


def query_timeout_setting() -> str:
    """The setting that chose :func:`query_timeout_s`, to name in a timeout message."""
    limit = _query_limit.get()
    return limit[1] if limit else QUERY_TIMEOUT_SETTING


def inbox_query_timeout_s() -> float | None:
    return _seconds_env("BATCH_PIPELINES_INBOX_QUERY_TIMEOUT_S", 20.0)


@contextlib.contextmanager
def query_time_limit(seconds: float | None, setting: str) -> Iterator[None]:
    """Reads started in this block (this thread) stop after ``seconds``, or after the general
    limit if that is shorter."""
    general = query_timeout_s()
    if seconds is None or (general is not None and general <= seconds):
        yield
        return
    token = _query_limit.set((seconds, setting))
    try:
        yield
    finally:
        _query_limit.reset(token)


def glob_max_files() -> int:
    return _int_env("BATCH_PIPELINES_GLOB_MAX_FILES", 200_000)
