"""The Dagster instance the CLI and the Python API use, and whether its daemon is running."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from batch_pipelines.core import config

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


def get_instance():  # noqa: ANN201 - DagsterInstance (import kept lazy for CLI start-up)
    """The instance of DAGSTER_HOME. The first open of a new SQLite instance creates its
    schema; several CLI processes starting at once take turns so they don't race on it."""
    from dagster import DagsterInstance

    from batch_pipelines.core.warehouse import file_lock

    home = ensure_dagster_home()
    with file_lock(home / ".batch_pipelines_init", exclusive=True, timeout_s=120):
        return DagsterInstance.get()


def daemon_running(instance) -> bool:  # noqa: ANN001
    """True if the instance's sensor daemon sent a heartbeat recently."""
    try:
        beats = instance.get_daemon_heartbeats()
    except Exception:  # noqa: BLE001 - storage without daemon tables, etc.
        return False
    beat = beats.get("SENSOR")
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_TOLERANCE_S
