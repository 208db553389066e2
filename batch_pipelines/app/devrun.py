"""``make run`` (``batch-pipelines dev``): ``dagster dev`` for this project, stopped within
:data:`STOP_BOUND_S` of Ctrl-C or SIGTERM, leaving no process behind.

Left to itself, ``dagster dev`` can take most of a minute to stop: it waits for its daemon
threads to finish their current iteration (a sensor tick may run up to a minute), for the web
server, for its code servers (which wait for the run launches in flight), and the run workers
it started finish the step they are in. So ``dagster dev`` runs here in its own process group:
the first SIGINT or SIGTERM is passed to that group as a SIGINT (Dagster's orderly
shutdown), and whatever is still alive :data:`GRACE_S` later, the group and every process it
started, is killed. The items a killed chunk run left ``running`` are found by the
dispatcher's reaper when the daemon is back, and run again.

While it runs, ``<DAGSTER_HOME>/.batch_pipelines_dev.json`` names its process, so a
``submit --wait`` elsewhere can tell it is gone at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psutil

from batch_pipelines.core import config

GRACE_S = 5.0
STOP_BOUND_S = 10.0
PID_FILE = ".batch_pipelines_dev.json"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def dagster_dev_command(host: str, port: int) -> list[str]:
    dagster = str(Path(sys.executable).with_name("dagster"))
    return [dagster, "dev", "-w", "workspace.yaml", "-h", host, "-p", str(port)]


def run_dev(
    command: Sequence[str], dagster_home: Path, grace_s: float = GRACE_S, cwd: Path | None = None
) -> int:
    """Run ``command`` (``dagster dev ...``) until it exits or this process is asked to stop;
    returns its exit code (128 + the signal when stopped by one)."""
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
    try:
        process = subprocess.Popen(
            list(command), cwd=cwd or config.PROJECT_ROOT, start_new_session=True
        )
        pid_file = dagster_home / PID_FILE
        _write_pid_file(pid_file, process.pid)
        try:
            while process.poll() is None and not received:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)
            if received:
                stop(process, grace_s)
                return 128 + received[0]
            return process.returncode
        finally:
            with contextlib.suppress(OSError):
                _mark_stopped(pid_file)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop(process: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGINT ``process``'s group, then SIGKILL whatever of it (and of the processes it
    started, even in groups of their own) is left after ``grace_s``."""
    pgid = process.pid
    family = _family(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        family |= _family(process.pid)
        if not _alive(family):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for proc in _alive(family):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2)
    psutil.wait_procs(list(family), timeout=2)


def _family(pid: int) -> set[psutil.Process]:
    """The process and all its descendants (those that left its group too)."""
    try:
        root = psutil.Process(pid)
        return {root, *root.children(recursive=True)}
    except psutil.Error:
        return set()


def _alive(procs: set[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def _write_pid_file(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    started = psutil.Process(pid).create_time()
    path.write_text(json.dumps({"pid": pid, "create_time": started}))


def _mark_stopped(path: Path) -> None:
    info = json.loads(path.read_text())
    info["stopped_at"] = time.time()
    path.write_text(json.dumps(info))


def dev_server_gone(dagster_home: Path, last_heartbeat: float) -> str | None:
    """Why the daemon of this DAGSTER_HOME is known to be gone: the ``batch-pipelines dev``
    that wrote the last heartbeat (``last_heartbeat``, a UNIX time) has stopped, or its
    process no longer runs. None when unknown (never started here, or a daemon started
    since: a heartbeat later than the stop)."""
    path = dagster_home / PID_FILE
    try:
        info = json.loads(path.read_text())
        pid, started = int(info["pid"]), float(info["create_time"])
        stopped_at = info.get("stopped_at")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if last_heartbeat > (stopped_at or time.time()) or last_heartbeat < started:
        return None
    if stopped_at:
        return f"`make run` (dagster dev, pid {pid}) was stopped"
    try:
        if abs(psutil.Process(pid).create_time() - started) < 1:
            return None
    except psutil.Error:
        pass
    return f"`make run` (dagster dev, pid {pid}) is no longer running"
