"""``make run`` (``batch-pipelines dev``) stops everything on Ctrl-C, chunk runs in flight
included, within its bound; and a ``submit --wait`` after that notices the daemon is gone,
says what to do and exits 1 (rather than waiting on a fresh-looking heartbeat), and what it
says works."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import duckdb
import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from batch_pipelines.app.devrun import STOP_BOUND_S
from batch_pipelines.app.devserver import (
    DevServer,
    Env,
    env_in_process,
    free_port,
    make_env,
    stop_process_group,
)
from batch_pipelines.app.instance import daemon_running
from batch_pipelines.app.queries import get_batch
from batch_pipelines_tests.conftest import CLI
from batch_pipelines_tests.helpers import cli_process as cli

pytestmark = pytest.mark.e2e

ROWS = 1_500_000


@pytest.fixture
def denv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with env_in_process(make_env(tmp_path_factory.mktemp("devstop"))) as env:
        folder = env.data / "big"
        folder.mkdir()
        con = duckdb.connect()
        for n in range(4):
            con.execute(
                f"copy (select i as id, md5(i::varchar) as h from range({n}, {ROWS}) t(i)) "
                f"to '{folder / f'big{n}.csv'}' (header)"
            )
        con.close()
        yield env


def _start(env: Env) -> DevServer:
    """``batch-pipelines dev`` as ``make run`` starts it, in a process group of its own as a
    terminal would give it."""
    port = free_port()
    log_path = env.root / "dev.log"
    environ = {**env.environ(), "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [CLI, "dev", "--host", "127.0.0.1", "--port", str(port)],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return DevServer(f"http://127.0.0.1:{port}", port, log_path, process, env.dagster_home)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_ctrl_c_stops_everything_and_a_waiting_submit_notices(denv: Env) -> None:
    server = _start(denv)
    waiting = None
    try:
        server.wait_for(lambda: server.get("/server_info", 5)[0] == 200, 180, "the UI")
        server.wait_for(server.location, 120, "the code location")
        instance = DagsterInstance.get()
        server.wait_for(lambda: daemon_running(instance), 120, "the daemon")
        instance.dispose()
        waiting = subprocess.Popen(
            [CLI, "submit", "import", "--items", "data/big/*.csv", "--option", "target_table=big"]
            + ["--chunk-size", "1", "--wait"],
            env={**denv.environ(), "COLUMNS": "200"},
            cwd=denv.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server.wait_for(lambda: _chunk_run_started(waiting), 180, "a chunk run started", 0.3)
        root = psutil.Process(server.process.pid)
        family = [root, *root.children(recursive=True)]
        assert len(family) >= 4  # dagster dev, its web server, daemon, code server, workers

        os.killpg(server.process.pid, signal.SIGINT)  # Ctrl-C in its terminal
        deadline = time.monotonic() + STOP_BOUND_S
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [(p.pid, p.cmdline()[:3]) for p in _alive(family)]
        assert left == [], f"still running {STOP_BOUND_S:.0f} s after Ctrl-C: {left}"
        assert server.process.wait(timeout=5) == 128 + signal.SIGINT

        # The daemon's heartbeat is seconds old, but nothing serves the instance any more.
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 1, out + err
    finally:
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
        stop_process_group(server.process, grace_s=2)
    assert "the Dagster daemon is not running" in err and "make run" in err
    batch_id = out.split("submitted ", 1)[1].split(";")[0].strip()
    assert f"batch-pipelines resume {batch_id} --wait" in err

    # What it says to do works: pause, then resume --wait runs what is left here.
    assert cli(denv, "pause", batch_id).returncode == 0
    p = cli(denv, "resume", batch_id, "--wait", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert get_batch(batch_id)["status"] == "completed"
    assert env_sql(denv, "select count(distinct _item_id) from big") == 4

    # Known gone from the start: --wait runs the batch here at once.
    p = cli(
        denv,
        "submit",
        "import",
        "--items",
        "data/big/big0.csv",
        "--option",
        "target_table=small",
        "--wait",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "running it in this process" in p.stdout


def _chunk_run_started(waiting: subprocess.Popen[str]) -> bool:
    """A chunk run of the batch is STARTED (its worker process exists). Read from the run
    storage, not the warehouse: an import holds the DuckDB writer lock while it reads its file,
    so a reader polling ``batch_items`` for 'running' can miss the whole batch."""
    if waiting.poll() is not None:
        out, err = waiting.communicate()
        pytest.fail(f"submit --wait exited {waiting.returncode} early: {out}{err}")
    instance = DagsterInstance.get()
    try:
        runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        return any("batch/id" in run.tags for run in runs)
    finally:
        instance.dispose()


def env_sql(env: Env, query: str) -> int:
    return env.sql(query)[0][0]
