"""Several batches running at once in separate processes share one DuckDB warehouse: none may
fail on DuckDB's single-writer lock, and no ledger or data row may be lost or duplicated.
Also checks that concurrent submissions register each batch's keys contiguously (chunk runs
select key ranges)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

from batch_pipelines.core import warehouse
from batch_pipelines_tests.conftest import CLI

pytestmark = pytest.mark.e2e

N_BATCHES = 4
FILES_PER_BATCH = 6


def test_four_batches_in_four_processes(samples: Path, any_env) -> None:  # noqa: ANN001
    """On the single file, and on a lake with its catalog on PostgreSQL: no lock at all there,
    conflicting commits retried, and the same rows exactly once."""
    _four_batches(samples, any_env)


def test_four_batches_in_four_processes_on_a_sqlite_catalog(
    samples: Path,
    env,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lake of one machine: its catalog in a SQLite file, four writers at once."""
    env.lake = f"ducklake:sqlite:{env.data / 'catalog.sqlite'}"
    monkeypatch.setenv("BATCH_PIPELINES_WAREHOUSE", env.lake)
    warehouse.forget_migrations()
    with warehouse.connect():  # the schema, once, before the processes start
        pass
    _four_batches(samples, env)


# Holds the SQLite catalog's write lock (as a committing writer does) until told on stdin, or
# at most CAP seconds; says which.
_HOLDER = """
import select, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("begin exclusive")
print("holding", flush=True)
told = select.select([sys.stdin], [], [], float(sys.argv[2]))[0]
con.execute("commit")
print("released when told" if told else "released at the cap", flush=True)
"""


def test_the_cli_reads_a_sqlite_catalog_while_a_writer_holds_it(
    env,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (CI): in SQLite's rollback-journal mode a committing writer locks every
    reader out, so four busy writers kept a fifth process's ATTACH failing until its retries
    ran out. In write-ahead-log mode a reader never waits for a writer."""
    catalog = env.data / "catalog.sqlite"
    env.lake = f"ducklake:sqlite:{catalog}"
    monkeypatch.setenv("BATCH_PIPELINES_WAREHOUSE", env.lake)
    warehouse.forget_migrations()
    with warehouse.connect():  # the schema, and the catalog's mode, on the first open
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(catalog), "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        cli = subprocess.run(
            [CLI, "list", "--json"],
            env=env.environ(),
            cwd=env.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        with contextlib.suppress(BrokenPipeError):  # gone already if it released at the cap
            holder.stdin.write("done\n")
            holder.stdin.flush()
        released = holder.stdout.readline().strip()
    finally:
        holder.kill() if holder.poll() is None else None
        holder.wait()
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads(cli.stdout) == []
    assert released == "released when told"  # the CLI did not wait for the writer


def _four_batches(samples: Path, env) -> None:  # noqa: ANN001
    # Every statement on a lake is a round trip to its catalog: fewer files keep it cheap.
    files = sorted(samples.glob("penguins_*"))[: 2 if env.lake else FILES_PER_BATCH]
    n_items = N_BATCHES * len(files)
    for b in range(N_BATCHES):
        folder = samples / f"set{b}"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
    environ = {**env.environ(), "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [
                CLI,
                "submit",
                "import",
                "--items",
                f"data/samples/set{b}/penguins_*",
                "--option",
                "target_table=shared",
                "--option",
                "skip_identical=false",
                "--chunk-size",
                "2" if env.lake else "1",
                "--name",
                f"concurrent {b}",
                "--in-process",
                "--json",
            ],
            env=environ,
            cwd=env.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in range(N_BATCHES)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, (out[-3000:], err[-3000:])
        assert "lock" not in err.lower(), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert json.loads(out)["status"] == "completed"
    assert env.sql("select count(*), count(distinct batch_id) from batches") == [
        (N_BATCHES, N_BATCHES)
    ]
    assert env.sql("select status, count(*) from batch_items group by 1") == [
        ("succeeded", n_items)
    ]
    assert env.sql("select sum(succeeded_items), sum(processed_items) from batches") == [
        (n_items, n_items)
    ]
    # Every attempt recorded once; every data row loaded once.
    assert env.sql(
        "select count(*), count(distinct (batch_id, item_id, attempt)) from item_attempts"
    ) == [(n_items, n_items)]
    assert env.sql("select count(*) from import_files where status = 'imported'") == [(n_items,)]
    per_batch = env.sql("select distinct sum(rows) from import_files group by batch_id")
    assert len(per_batch) == 1, per_batch  # each batch loaded the same files once
    if len(files) == FILES_PER_BATCH:
        assert per_batch == [(592,)]
    rows = N_BATCHES * per_batch[0][0]
    assert env.sql("select count(*) from shared") == [(rows,)]
    assert env.sql(
        "select count(*) from (select distinct _batch_id, _item_id, id from shared)"
    ) == [(rows,)]
    # Keys of each batch are registered contiguously, in item order.
    instance = DagsterInstance.get()
    try:
        keys = instance.get_dynamic_partitions("import_items")
    finally:
        instance.dispose()
    by_batch: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_batch.setdefault(k.split("~")[0], []).append(i)
    for positions in by_batch.values():
        assert positions == list(range(positions[0], positions[0] + len(files)))
