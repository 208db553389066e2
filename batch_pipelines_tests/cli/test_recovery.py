"""A batch run by ``submit --wait`` (in this process, no daemon) whose worker dies or is
stopped is recoverable from the CLI: kill -9 leaves items ``running`` under a dead worker,
which ``status`` shows, ``resume`` runs again and ``cancel`` cancels in seconds; Ctrl-C or
SIGTERM stops the items cleanly (exit 130 / 143, unfinished items pending, batch paused) and
``resume --wait`` continues exactly the rest; a chunk run that cannot commit leaves no item
``running``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from batch_pipelines.app.devserver import Env
from batch_pipelines_tests.conftest import CLI
from batch_pipelines_tests.helpers import cli_process as cli

pytestmark = pytest.mark.e2e

FILES = 6
ROWS = 1_000_000  # about half a second of import work per file: a chunk is surely in flight


@pytest.fixture
def big(env: Env) -> Path:
    """Six CSV files of ROWS rows each under data/big, and their item list."""
    folder = env.data / "big"
    folder.mkdir()
    con = duckdb.connect()
    for n in range(FILES):
        con.execute(
            f"copy (select i as id, i % 97 as k, md5(i::varchar) as h from range({n}, "
            f"{ROWS} + {n}) t(i)) to '{folder / f'f{n}.csv'}' (header)"
        )
    con.close()
    items = env.root / "items.json"
    items.write_text(
        json.dumps([{"id": f"f{n}", "path": f"data/big/f{n}.csv"} for n in range(FILES)])
    )
    return items


def start_submit(env: Env, items: Path, table: str, *extra: str) -> subprocess.Popen:
    """``submit import ... --wait`` in the background: three chunk runs of two files."""
    return subprocess.Popen(
        [
            CLI,
            "submit",
            "import",
            "--items-json",
            str(items),
            "--option",
            f"target_table={table}",
            "--option",
            "skip_identical=false",
            "--chunk-size",
            "2",
            *extra,
            "--wait",
            "--json",
        ],
        env={**env.environ(), "COLUMNS": "200"},
        cwd=env.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_mid_batch(env: Env, proc: subprocess.Popen, timeout_s: float = 120) -> str:
    """Wait until some items succeeded and others are running; returns the batch id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if env.warehouse.exists():
            try:
                rows = env.sql(
                    "select batch_id, count(*) filter (where status = 'succeeded'), "
                    "count(*) filter (where status = 'running') from batch_items group by 1"
                )
            except Exception:  # noqa: BLE001 - the schema is still being created
                rows = []
            if rows and rows[0][1] >= 1 and rows[0][2] >= 1:
                return rows[0][0]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the batch never got mid-way: {proc.communicate()}")


def statuses(env: Env, batch_id: str) -> dict[str, int]:
    return dict(
        env.sql(
            "select status, count(*) from batch_items where batch_id = ? group by 1", [batch_id]
        )
    )


@pytest.fixture
def killed(env: Env, big: Path) -> Iterator[str]:
    """A batch whose `submit --wait` process was killed with SIGKILL mid-chunk."""
    proc = start_submit(env, big, "t")
    batch_id = wait_mid_batch(env, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert statuses(env, batch_id).get("running", 0) >= 1
    yield batch_id


def test_status_shows_and_resume_runs_the_items_of_a_killed_worker(env: Env, killed: str) -> None:
    p = cli(env, "status", killed)
    assert p.returncode == 0, p.stderr
    assert "worker" in p.stdout and "gone" in p.stdout, p.stdout
    assert f"resume {killed}" in p.stdout, p.stdout
    p = cli(env, "status", killed, "--json")
    orphaned = json.loads(p.stdout)["orphaned"]
    assert sum(o["items"] for o in orphaned) == statuses(env, killed)["running"]

    p = cli(env, "retry", killed)
    assert p.returncode == 2 and f"resume {killed}" in p.stderr, p.stderr

    p = cli(env, "resume", killed, "--wait", "--json")
    assert p.returncode == 0, p.stderr
    batch = json.loads(p.stdout)
    assert batch["status"] == "completed" and batch["succeeded_items"] == FILES
    # Every file imported exactly once: what the dead worker had not committed ran again,
    # what it had committed did not.
    assert env.sql("select count(*) from t") == [(FILES * ROWS,)]


def test_cancel_of_a_killed_worker_batch_returns_in_seconds(env: Env, killed: str) -> None:
    started = time.monotonic()
    p = cli(env, "cancel", killed)
    elapsed = time.monotonic() - started
    assert p.returncode == 0, p.stdout + p.stderr
    assert elapsed < 20, f"cancel took {elapsed:.0f}s"
    counts = statuses(env, killed)
    assert "running" not in counts and "pending" not in counts and counts["cancelled"] >= 1
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=RunsFilter(tags={"batch/id": killed}))
        assert DagsterRunStatus.STARTED not in {r.status for r in runs}


# SIGTERM with both files of a chunk in flight at once (item_concurrency 2).
@pytest.mark.parametrize(
    ("sig", "code", "extra"),
    [(signal.SIGINT, 130, ()), (signal.SIGTERM, 143, ("--item-concurrency", "2"))],
)
def test_ctrl_c_or_sigterm_pauses_the_batch_and_resume_continues_it(
    env: Env, big: Path, sig: signal.Signals, code: int, extra: tuple[str, ...]
) -> None:
    proc = start_submit(env, big, "t", *extra)
    batch_id = wait_mid_batch(env, proc)
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{sig.name} did not stop submit --wait: {err[-2000:]}") from None
    assert proc.returncode == code, err[-2000:]
    assert json.loads(out)["status"] == "paused"
    counts = statuses(env, batch_id)
    assert "running" not in counts and counts["pending"] >= 1, counts
    assert counts.get("cancelled", 0) == 0 and counts.get("failed", 0) == 0, counts
    assert env.sql(
        "select count(*) from batch_events where batch_id = ? and event = 'batch_interrupted'",
        [batch_id],
    ) == [(1,)]
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=RunsFilter(tags={"batch/id": batch_id}))
    # No run is left live, and the interrupted one does not count as a crash of its chunk.
    ended = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    assert {r.status for r in runs} <= ended
    assert all("batch/handed_over" in r.tags for r in runs if r.status.value == "FAILURE")

    p = cli(env, "resume", batch_id, "--wait", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "completed"
    assert env.sql("select count(*) from t") == [(FILES * ROWS,)]
