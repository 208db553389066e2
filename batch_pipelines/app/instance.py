"""The Dagster instance the CLI and the Python API use, whether its daemon is running, and a
batch's active runs. Dagster is imported inside the functions, so importing this module stays
cheap for the CLI's read-only verbs."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_pipelines.app.dispatch import ACTIVE_RUN_STATUSES
from batch_pipelines.core import config
from batch_pipelines.core.warehouse import file_lock

if TYPE_CHECKING:
    from dagster import DagsterInstance

DAEMON_HEARTBEAT_TOLERANCE_S = 90
# The dispatcher ticks every 3 s while a daemon runs; this much silence with no daemon
# process here means the daemon is gone.
DISPATCHER_SILENCE_S = 20
DISPATCHER_SENSOR = "batch_dispatcher"


def ensure_dagster_home() -> Path:
    """Point DAGSTER_HOME at ``data/dagster_home`` unless it is set, and give it the project's
    ``dagster.yaml`` if it has none (``make run`` refreshes that copy on every start)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(config.get_paths().dagster_home)
        os.environ["DAGSTER_HOME"] = home
    path = Path(home)
    path.mkdir(parents=True, exist_ok=True)
    source = config.PROJECT_ROOT / "dagster.yaml"
    target = path / "dagster.yaml"
    if not target.exists() and source.exists():
        shutil.copyfile(source, target)
    return path


def get_instance() -> DagsterInstance:
    """The instance of DAGSTER_HOME. The first open of a new SQLite instance creates its
    schema; several CLI processes starting at once take turns so they don't race on it."""
    from dagster import DagsterInstance

    home = ensure_dagster_home()
    with file_lock(home / ".batch_pipelines_init", exclusive=True, timeout_s=120):
        return DagsterInstance.get()


@dataclass(frozen=True)
class DaemonCheck:
    """Whether a Dagster daemon serves this instance, and why it is thought so."""

    running: bool
    reason: str

    def __bool__(self) -> bool:
        return self.running


def daemon_running(instance: DagsterInstance) -> DaemonCheck:
    """Is a Dagster daemon serving this instance? Truthy if so; ``reason`` says why not.

    The heartbeat alone cannot tell within a minute (Dagster writes it every 30 s, and a
    stopped ``dagster dev`` leaves a fresh one behind), so: no heartbeat for
    ``DAEMON_HEARTBEAT_TOLERANCE_S`` means dead; a daemon process of this DAGSTER_HOME on this
    machine means alive; otherwise (a daemon elsewhere, or one just stopped here) it is alive
    while the ``batch_dispatcher`` sensor ticked in the last ``DISPATCHER_SILENCE_S``."""
    try:
        beat = instance.get_daemon_heartbeats().get("SENSOR")
    except Exception:  # noqa: BLE001 - storage without daemon tables, etc.
        return DaemonCheck(False, "this Dagster instance has no daemon heartbeats")
    if beat is None:
        return DaemonCheck(False, "no Dagster daemon has run on this instance")
    from batch_pipelines.app.devrun import dev_server_gone

    gone = dev_server_gone(Path(instance.root_directory), beat.timestamp)
    if gone:
        return DaemonCheck(False, gone)
    age = time.time() - beat.timestamp
    if age > DAEMON_HEARTBEAT_TOLERANCE_S:
        return DaemonCheck(False, f"the Dagster daemon's last heartbeat is {age:.0f} s old")
    pids = local_daemon_pids(instance)
    if pids:
        return DaemonCheck(True, f"dagster daemon process {pids[0]} runs on this machine")
    tick = _last_tick_age(instance, DISPATCHER_SENSOR)
    if tick is None:
        return DaemonCheck(True, f"the Dagster daemon's heartbeat is {age:.0f} s old")
    if tick > DISPATCHER_SILENCE_S:
        return DaemonCheck(
            False,
            f"no Dagster daemon process of this DAGSTER_HOME runs on this machine, and the "
            f"{DISPATCHER_SENSOR} sensor last ticked {tick:.0f} s ago",
        )
    return DaemonCheck(True, f"the {DISPATCHER_SENSOR} sensor ticked {tick:.0f} s ago")


def local_daemon_pids(instance: DagsterInstance) -> list[int]:
    """The Dagster daemon processes on this machine serving this instance's DAGSTER_HOME."""
    import psutil

    home = _resolved(instance.root_directory)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if not any("dagster._daemon" in a or a.endswith("dagster-daemon") for a in cmdline):
            continue
        try:
            their_home = proc.environ().get("DAGSTER_HOME")
        except (psutil.Error, OSError):
            continue
        if their_home and _resolved(their_home) == home and proc.status() != "zombie":
            found.append(proc.pid)
    return found


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _last_tick_age(instance: DagsterInstance, sensor_name: str) -> float | None:
    """Seconds since the sensor's latest tick started or ended (None: it never ticked)."""
    try:
        states = [s for s in instance.all_instigator_state() if s.name == sensor_name]
        ticks = [
            t
            for s in states
            for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1)
        ]
    except Exception:  # noqa: BLE001 - storage without schedule tables: nothing to tell
        return None
    if not ticks:
        return None
    latest = max(max(t.timestamp, t.tick_data.end_timestamp or 0) for t in ticks)
    return time.time() - latest


def active_runs(batch_id: str, instance: DagsterInstance | None = None) -> list[dict[str, Any]]:
    """The batch's queued and running Dagster runs as ``{run_id, chunk, status}``; empty when
    no instance can be opened (the ledger alone still answers for the batch)."""
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus(s) for s in sorted(ACTIVE_RUN_STATUSES - {"RETRY_PENDING"})]
    try:
        instance = instance or get_instance()
        runs = instance.get_runs(filters=RunsFilter(tags={"batch/id": batch_id}, statuses=statuses))
    except Exception:  # noqa: BLE001 - storage missing or unreadable: no runs to show
        return []
    return [
        {"run_id": r.run_id, "chunk": r.tags.get("batch/chunk"), "status": r.status.value}
        for r in runs
    ]
