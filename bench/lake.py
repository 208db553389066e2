"""Benchmark of the warehouse on DuckLake: 4 batches at once in 4 processes, on the single
DuckDB file (one writer at a time behind its file lock), on a lake whose catalog is a real
PostgreSQL (started here, as the tests start it; no lock, conflicting commits retried), and on
a lake whose catalog is a SQLite file (one machine; write-ahead-log mode).

Each process submits an ``annotate`` batch of ``items`` short texts (the built-in heuristic
backend: no network, so the figures are the ledger's and the warehouse's) and runs it with
``run_batch_in_process`` (what ``batch-pipelines submit --wait`` does). Reported: wall time
from the first start to the last end, items per second over all four batches, and the commit
conflicts the lake retried (summed over the processes).

    python -m bench.lake --items 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BATCHES = 4


def manifest(n: int, b: int, chunk_size: int) -> dict[str, Any]:
    return {
        "operation": "annotate",
        "name": f"bench lake {b}",
        "settings": {"chunk_size": chunk_size},
        "items": [
            {"id": f"t{i:06d}", "text": f"The bank raised rates ({b}/{i})."} for i in range(n)
        ],
    }


def child(n: int, b: int, chunk_size: int) -> dict[str, Any]:
    """In one of the bench's processes: submit and run one batch here."""
    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.instance import get_instance
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.core import lake
    from batch_pipelines.definitions import defs

    instance = get_instance()  # under the instance-init lock, as the CLI does
    start = time.perf_counter()
    batch_id = submit_batch(manifest(n, b, chunk_size), instance=instance)
    batch = run_batch_in_process(batch_id, instance, defs)
    return {
        "seconds": time.perf_counter() - start,
        "status": batch["status"],
        "succeeded": batch["succeeded_items"],
        "retries": lake.COUNTER.retries,
    }


def _round(env: Any, n: int, chunk_size: int) -> dict[str, Any]:  # noqa: ANN401 - an Env
    from batch_pipelines.app.devserver import env_in_process
    from batch_pipelines.core import warehouse

    with env_in_process(env):
        warehouse.forget_migrations()
        with warehouse.connect():  # the schema first, as a deployment would have it
            pass
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.lake",
                "--child",
                str(b),
                "--items",
                str(n),
                "--chunk-size",
                str(chunk_size),
            ],
            env=env.environ(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for b in range(BATCHES)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"a bench process failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    with env_in_process(env):
        rows = warehouse_rows()
    return {
        "wall_s": wall,
        "items": BATCHES * n,
        "items_per_s": BATCHES * n / wall,
        "succeeded": sum(r["succeeded"] for r in results),
        "retries": sum(r["retries"] for r in results),
        "statuses": sorted({r["status"] for r in results}),
        "ledger_rows": rows,
    }


def warehouse_rows() -> int:
    from batch_pipelines.core import warehouse

    with warehouse.connect(read_only=True) as con:
        return con.execute(
            "select count(*) from batch_items where status = 'succeeded'"
        ).fetchone()[0]


def run(n: int, chunk_size: int) -> dict[str, Any]:
    from batch_pipelines.app.devpostgres import postgres_server
    from batch_pipelines.app.devserver import make_env

    out: dict[str, Any] = {"items_per_batch": n, "chunk_size": chunk_size}
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp:
        file_env = make_env(Path(tmp) / "file")
        out["file"] = _round(file_env, n, chunk_size)
        with postgres_server() as pg:
            pg.create_database("lake")
            lake_env = make_env(Path(tmp) / "lake")
            lake_env.lake = f"ducklake:postgres:{pg.conninfo('lake')}"
            out["lake"] = _round(lake_env, n, chunk_size)
        sqlite_env = make_env(Path(tmp) / "sqlite")
        sqlite_env.lake = f"ducklake:sqlite:{sqlite_env.data / 'catalog.sqlite'}"
        out["sqlite"] = _round(sqlite_env, n, chunk_size)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| warehouse | batches × items | wall (s) | items/s | commit retries | all succeeded |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, label in (("file", "single DuckDB file (file lock)"),
                        ("lake", "DuckLake, catalog on PostgreSQL (no lock)"),
                        ("sqlite", "DuckLake, catalog in a SQLite file (write-ahead log)")):  # fmt: skip
        if name not in result:  # sections written before the SQLite row
            continue
        r = result[name]
        ok = r["succeeded"] == r["items"] == r["ledger_rows"]
        lines.append(
            f"| {label} | {BATCHES} × {result['items_per_batch']} | {r['wall_s']:.1f} | "
            f"{r['items_per_s']:.1f} | {r['retries']} | {'yes' if ok else 'NO'} |"
        )
    file_rate = result["file"]["items_per_s"]
    lines.append("")
    lines.append(
        f"Lake / file throughput: {result['lake']['items_per_s'] / file_rate:.2f}× (PostgreSQL "
        f"catalog), {result['sqlite']['items_per_s'] / file_rate:.2f}× (SQLite catalog)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--child", type=int, default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.items, args.child, args.chunk_size)))
        return
    result = run(args.items, args.chunk_size)
    print(markdown(result))


if __name__ == "__main__":
    main()
