"""The Dagster instance the CLI and the Python API use, whether its daemon is running, and a
batch's active runs. Dagster is imported inside the functions, so importing this module stays
cheap for the CLI's read-only verbs."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_pipelines.app.dispatch import ACTIVE_RUN_STATUSES
from batch_pipelines.core import config
from batch_pipelines.core.warehouse import file_lock

if TYPE_CHECKING:
    from dagster import DagsterInstance

DAEMON_HEARTBEAT_TOLERANCE_S = 90


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


def daemon_running(instance: DagsterInstance) -> bool:
    """True if the instance's sensor daemon sent a heartbeat recently."""
    try:
        beats = instance.get_daemon_heartbeats()
    except Exception:  # noqa: BLE001 - storage without daemon tables, etc.
        return False
    beat = beats.get("SENSOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_TOLERANCE_S


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
