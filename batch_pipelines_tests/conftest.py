"""Every test gets its own data root, warehouse and DAGSTER_HOME under tmp_path."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch_pipelines.core import config, warehouse

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
CLI = str(Path(sys.executable).with_name("batch-pipelines"))


@dataclass
class Env:
    root: Path
    data: Path
    dagster_home: Path

    @property
    def paths(self) -> config.Paths:
        return config.get_paths()

    @property
    def warehouse(self) -> Path:
        return self.data / "warehouse.duckdb"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BATCH_PIPELINES_DATA"] = str(self.data)
        env["BATCH_PIPELINES_WAREHOUSE"] = str(self.warehouse)
        env["DAGSTER_HOME"] = str(self.dagster_home)
        env.pop("BATCH_PIPELINES_ALLOWED_ROOTS", None)
        return env

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        with warehouse.connect(self.warehouse, read_only=True) as con:
            return con.execute(query, params or []).fetchall()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    e = Env(tmp_path, data, home)
    for k, v in e.environ().items():
        if k.startswith(("BATCH_PIPELINES_", "DAGSTER_HOME")):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("BATCH_PIPELINES_ALLOWED_ROOTS", raising=False)
    monkeypatch.delenv("BATCH_PIPELINES_MAX_ITEMS", raising=False)
    warehouse.forget_migrations()
    yield e
    warehouse.forget_migrations()


@pytest.fixture
def samples(env: Env) -> Path:
    """The bundled sample files, copied into this test's data root."""
    shutil.copytree(SAMPLES, env.data / "samples")
    return env.data / "samples"


@pytest.fixture
def instance(env: Env):  # noqa: ANN201
    from dagster import DagsterInstance

    inst = DagsterInstance.get()
    yield inst
    inst.dispose()


@pytest.fixture
def dev_server(env: Env):  # noqa: ANN201 - Iterator[dev_server.DevServer]
    """A real ``dagster dev`` (UI + daemon) on this test's env; mark such tests ``e2e``."""
    from batch_pipelines_tests.e2e.dev_server import dagster_dev

    with dagster_dev(env) as server:
        yield server
