"""What a piece of work cost this process: CPU seconds, peak memory, bytes read and written,
and the versions of the code that did it.

CPU is ``getrusage(RUSAGE_SELF)`` (every thread of the process: a chunk run's items, its
flushes and its watcher) taken before and after; bytes are ``rchar``/``wchar`` of
``/proc/self/io`` (everything read or written through system calls, files and sockets alike,
cached or not), zero where that file does not exist. Peak memory is the process's high-water
mark of resident memory (``VmHWM``, else ``ru_maxrss``): in a run worker that is the run's
own peak; where one process runs several chunks (``submit --wait``) it never goes down.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import resource
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from batch_pipelines.core.ledger.models import utcnow

PACKAGE = "batch_pipelines"


def _io() -> tuple[int, int]:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/io").read_text().splitlines())
        return int(fields["rchar"]), int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def peak_rss_mb() -> float:
    """The process's peak resident memory in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    # ru_maxrss is in KB on Linux, bytes on macOS.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if platform.system() == "Darwin" else maxrss / 1024


@dataclass
class Usage:
    started_at: datetime
    ended_at: datetime
    wall_s: float
    cpu_user_s: float
    cpu_system_s: float
    peak_rss_mb: float
    read_bytes: int
    write_bytes: int
    pid: int

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_system_s


class Meter:
    """Measures the work done between ``start()`` (or construction) and :meth:`stop`."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._at = utcnow()
        self._t = time.monotonic()
        self._ru = resource.getrusage(resource.RUSAGE_SELF)
        self._io = _io()

    def stop(self) -> Usage:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        read, written = _io()
        return Usage(
            started_at=self._at,
            ended_at=utcnow(),
            wall_s=time.monotonic() - self._t,
            cpu_user_s=max(0.0, ru.ru_utime - self._ru.ru_utime),
            cpu_system_s=max(0.0, ru.ru_stime - self._ru.ru_stime),
            peak_rss_mb=round(peak_rss_mb(), 3),
            read_bytes=max(0, read - self._io[0]),
            write_bytes=max(0, written - self._io[1]),
            pid=os.getpid(),
        )


def _git_commit(start: Path) -> str | None:
    """The commit checked out where the package lives, read from ``.git`` without running git
    (None when it is not installed from a checkout)."""
    for folder in (start, *start.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            git = (folder / text.split(":", 1)[1].strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head[:40]
            ref = head.split(":", 1)[1].strip()
            for base in (git, _common_dir(git)):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip()[:40]
                packed = base / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            return line.split()[0][:40]
        except OSError:
            return None
        return None
    return None


def _common_dir(git: Path) -> Path:
    common = git / "commondir"
    if common.is_file():
        return (git / common.read_text().strip()).resolve()
    return git


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def versions() -> dict[str, str | None]:
    """``code_version`` (the package version, ``+g<commit>`` when installed from a checkout),
    and the Dagster, DuckDB and Python versions. Read once per process."""
    import duckdb

    code = _version(PACKAGE) or "unknown"
    commit = _git_commit(Path(__file__).resolve().parent)
    if commit:
        code = f"{code}+g{commit[:12]}"
    return {
        "code_version": code,
        "dagster_version": _version("dagster"),
        "duckdb_version": duckdb.__version__,
        "python_version": platform.python_version(),
    }
