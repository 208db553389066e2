"""Every test gets its own data root, warehouse and DAGSTER_HOME under tmp_path."""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_pipelines.app.devserver import DevServer, Env, dagster_dev, make_env
from batch_pipelines.core import warehouse

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
CLI = str(Path(sys.executable).with_name("batch-pipelines"))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    e = make_env(tmp_path)
    for name, value in e.overrides().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
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
def dev_server(env: Env) -> Iterator[DevServer]:
    """A real ``dagster dev`` (UI + daemon) on this test's env; mark such tests ``e2e``."""
    with dagster_dev(env) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():  # noqa: ANN201 - a batch_pipelines.app.devpostgres.Postgres
    """One throwaway PostgreSQL server for the session (each lake gets a database of its own)."""
    from batch_pipelines.app.devpostgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(params=["file", "lake"])
def any_env(request: pytest.FixtureRequest, env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """``env`` on the single DuckDB file, then again on a DuckLake whose catalog is a database
    of a real PostgreSQL server (the representative tests that must hold on both)."""
    if request.param == "lake":
        server = request.getfixturevalue("postgres")
        db = f"lake_{next(_LAKES)}"
        server.create_database(db)
        env.lake = f"ducklake:postgres:{server.conninfo(db)}"
        monkeypatch.setenv("BATCH_PIPELINES_WAREHOUSE", env.lake)
        warehouse.forget_migrations()
        with warehouse.connect():  # the schema, once, before the processes of the test start
            pass
    return env


_LAKES = itertools.count()
