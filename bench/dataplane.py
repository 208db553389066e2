"""Benchmark of the data plane: import and export against DuckDB alone, and the peak
memory of an import of a file larger than the DuckDB memory it is allowed.

Generates one CSV of ``--rows`` rows (default 5,000,000: about 390 MB), then, each step in
its own Python process so that its peak RSS (``ru_maxrss``) is its own:

- **DuckDB read_csv**: ``create table t as select * from read_csv(file)`` into a fresh
  database file: what DuckDB alone takes to load the file;
- **the import's SELECT**: DuckDB alone again, running the SELECT of the import's direct
  load (``read_csv`` with ``store_rejects``, the two lineage columns): the same table without
  the project;
- **import handler + commit**: the same item's data path alone (the import handler, then
  its commit in one warehouse transaction), without Dagster or the ledger;
  these three steps run ``--rounds`` times (default 3) in turn, each figure the median
  round;
- **import**: a one-item ``import`` batch run by ``run_batch_in_process`` (what
  ``batch-pipelines submit --wait`` does: a Dagster run, the handler's sha256 and sniff,
  the commit reading the file into the warehouse table, the ledger), timed from submit to
  the batch's end; once with the default ``BATCH_PIPELINES_DUCKDB_MEMORY`` and once with a
  limit (default 100MB) far below the file's size;
- **DuckDB COPY**: ``copy (select * from t) to file (format parquet | csv)`` of the imported
  table, on the warehouse file;
- **export**: one-item ``export`` batches of the same table to Parquet and to CSV.

    python -m bench.dataplane --rows 5000000 --memory-limit 100MB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TABLE = "bench_rows"


def generate_csv(path: Path, rows: int) -> dict[str, Any]:
    """A CSV of ``rows`` rows of mixed types (ints, doubles, strings, dates, booleans)."""
    import duckdb

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute("set enable_progress_bar = false")
    con.execute(
        f"""
        copy (
            select i as id,
                   i % 1000 as customer_id,
                   ['north', 'south', 'east', 'west'][1 + i % 4] as region,
                   'product-' || (i % 5000) as product,
                   round(random() * 1000, 2) as amount,
                   (i % 17) + 1 as quantity,
                   date '2020-01-01' + (i % 1500)::integer as order_date,
                   i % 3 = 0 as returned,
                   md5(i::varchar)[1:12] as ref
            from range({int(rows)}) t(i)
        ) to '{path}' (header, delimiter ',')
        """
    )
    con.close()
    return {"rows": rows, "bytes": path.stat().st_size, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------- steps (in a subprocess)


def _rss_now_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_duckdb_import(csv: str, db: str, lineage: bool = False) -> dict[str, Any]:
    """DuckDB alone; with ``lineage``, the SELECT of the import's direct load (its
    ``read_csv`` with ``store_rejects``, and the two lineage columns) instead of the plain
    one, with the lineage values of ``step_import_plain``."""
    import duckdb

    select = f"select * from read_csv('{csv}')"
    if lineage:
        from batch_pipelines.operations.import_ import SPEC
        from batch_pipelines.operations.import_.load import file_source, load_select

        options = SPEC.options_model(target_table=TABLE, mode="replace")
        select = load_select(file_source(Path(csv), "csv", options), options, "bench-plain", "big")
    base = _rss_now_mb()
    start = time.perf_counter()
    con = duckdb.connect(db)
    con.execute(f"create table {TABLE} as {select}")
    rows = con.execute(f"select count(*) from {TABLE}").fetchone()[0]
    con.close()
    return {"seconds": time.perf_counter() - start, "rows": rows, "base_mb": base}


def _instance() -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.get()


def step_import(csv: str) -> dict[str, Any]:
    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.queries import get_items
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.core import warehouse
    from batch_pipelines.definitions import defs

    instance = _instance()
    base = _rss_now_mb()
    start = time.perf_counter()
    batch_id = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": TABLE, "mode": "replace", "skip_identical": False},
            "settings": {"max_retries": 0},
            "items": [{"id": "big", "path": csv}],
        },
        instance=instance,
    )
    batch = run_batch_in_process(batch_id, instance, defs)
    seconds = time.perf_counter() - start
    item = get_items(batch_id)[0]
    if batch["status"] != "completed":
        raise RuntimeError(f"import batch {batch_id} is {batch['status']}: {item['error']}")
    with warehouse.connect(read_only=True) as con:
        rows = con.execute(f"select count(*) from {TABLE}").fetchone()[0]
    return {
        "seconds": seconds,
        "handler_seconds": (item["duration_ms"] or 0) / 1000,
        "rows": rows,
        "base_mb": base,
        "memory_limit": os.environ.get("BATCH_PIPELINES_DUCKDB_MEMORY", "1GB (default)"),
    }


def step_import_plain(csv: str, load: str = "auto") -> dict[str, Any]:
    """The import's data path without Dagster or the ledger: the handler (sha256, sniff or
    staging) and its commit in one warehouse transaction, as the runner calls them."""
    from batch_pipelines.core import config, warehouse
    from batch_pipelines.core.contract import CommitContext, ItemContext
    from batch_pipelines.operations.import_ import SPEC

    paths = config.get_paths()
    options = SPEC.options_model(
        target_table=TABLE, mode="replace", skip_identical=False, load=load
    )
    item = SPEC.item_model(id="big", path=csv)
    with warehouse.connect(paths.warehouse):
        pass  # migrate outside the timing
    base = _rss_now_mb()
    start = time.perf_counter()
    ctx = ItemContext("bench-plain", "big", "big", item, options, 1, None, paths)
    result = SPEC.handler(ctx)
    handler_s = time.perf_counter() - start
    with warehouse.connect(paths.warehouse) as con:
        con.execute("begin")
        result.commit(con, CommitContext("bench-plain", "big", None))
        con.execute("commit")
        rows = con.execute(f"select count(*) from {TABLE}").fetchone()[0]
    if result.cleanup:
        result.cleanup()
    return {
        "seconds": time.perf_counter() - start,
        "handler_seconds": handler_s,
        "rows": rows,
        "base_mb": base,
        "path": result.metrics.get("load", "staged"),
    }


def step_duckdb_copy(db: str, out: str, fmt: str) -> dict[str, Any]:
    import duckdb

    base = _rss_now_mb()
    start = time.perf_counter()
    con = duckdb.connect(db, read_only=True)
    options = "format parquet, compression snappy" if fmt == "parquet" else "format csv, header"
    con.execute(f"copy (select * from {TABLE}) to '{out}' ({options})")
    rows = con.execute(f"select count(*) from {TABLE}").fetchone()[0]
    con.close()
    return {"seconds": time.perf_counter() - start, "rows": rows, "base_mb": base}


def step_export(fmt: str) -> dict[str, Any]:
    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.queries import get_items
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.definitions import defs

    instance = _instance()
    base = _rss_now_mb()
    start = time.perf_counter()
    batch_id = submit_batch(
        {
            "operation": "export",
            "options": {"format": fmt},
            "settings": {"max_retries": 0},
            "items": [{"id": f"rows_{fmt}", "table": TABLE}],
        },
        instance=instance,
    )
    batch = run_batch_in_process(batch_id, instance, defs)
    seconds = time.perf_counter() - start
    item = get_items(batch_id)[0]
    if batch["status"] != "completed":
        raise RuntimeError(f"export batch {batch_id} is {batch['status']}: {item['error']}")
    return {
        "seconds": seconds,
        "handler_seconds": (item["duration_ms"] or 0) / 1000,
        "rows": item["result"]["rows"],
        "bytes": item["result"]["bytes"],
        "base_mb": base,
    }


STEPS = {
    "duckdb_import": step_duckdb_import,
    "import": step_import,
    "import_plain": step_import_plain,
    "duckdb_copy": step_duckdb_copy,
    "export": step_export,
}


def run_step(
    name: str, env: dict[str, str], module: str = "bench.dataplane", **kwargs: Any
) -> dict[str, Any]:
    """Run one step of ``module`` (its ``--step NAME JSON`` entry) in a fresh Python process:
    its result plus the load average when it started."""
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-m", module, "--step", name, json.dumps(kwargs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"step {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


# ------------------------------------------------------------------------------ the bench


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time (the lower middle one of an even count), with every run's
    seconds."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["each_seconds"] = [r["seconds"] for r in runs]
    return median


def run(rows: int = 5_000_000, memory_limit: str = "100MB", rounds: int = 3) -> dict[str, Any]:
    """Every step once, except the three that compare an import with DuckDB alone (DuckDB's
    ``read_csv``, DuckDB with the import's SELECT, the import's data path): ``rounds`` times
    each, one after the other in turn, each figure the median run (this machine's spread
    between rounds is larger than the differences measured)."""
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        root = Path(tmp)
        data = root / "data"
        (data / "inbox").mkdir(parents=True)
        home = root / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        csv = data / "rows.csv"
        generated = generate_csv(csv, rows)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("BATCH_PIPELINES_") and k != "DAGSTER_HOME"
        }
        env.update(
            {
                "BATCH_PIPELINES_DATA": str(data),
                "BATCH_PIPELINES_WAREHOUSE": str(data / "warehouse.duckdb"),
                "DAGSTER_HOME": str(home),
                "PYTHONPATH": str(REPO),
            }
        )
        out: dict[str, Any] = {"file": generated, "memory_limit": memory_limit}
        compared: dict[str, list[dict[str, Any]]] = {}
        for i in range(max(1, rounds)):
            for key, lineage in (("duckdb_import", False), ("duckdb_import_lineage", True)):
                db = root / f"duckdb_only_{i}_{key}.duckdb"
                compared.setdefault(key, []).append(
                    run_step("duckdb_import", env, csv=str(csv), db=str(db), lineage=lineage)
                )
                db.unlink()
            for load in ("staged", "auto") if i == 0 else ("auto",):
                warehouse = data / f"warehouse_{load}_{i}.duckdb"
                compared.setdefault(f"import_plain_{load}", []).append(
                    run_step(
                        "import_plain",
                        {**env, "BATCH_PIPELINES_WAREHOUSE": str(warehouse)},
                        csv=str(csv),
                        load=load,
                    )
                )
                warehouse.unlink()
        out.update({key: _median_run(runs) for key, runs in compared.items()})
        out["import"] = run_step("import", env, csv=str(csv))
        limited_env = {
            **env,
            "BATCH_PIPELINES_DUCKDB_MEMORY": memory_limit,
            "BATCH_PIPELINES_WAREHOUSE": str(data / "warehouse_limited.duckdb"),
        }
        out["import_limited"] = run_step("import", limited_env, csv=str(csv))
        for fmt in ("parquet", "csv"):
            out[f"duckdb_copy_{fmt}"] = run_step(
                "duckdb_copy",
                env,
                db=str(data / "warehouse.duckdb"),
                out=str(root / f"duckdb_copy.{fmt}"),
                fmt=fmt,
            )
            out[f"export_{fmt}"] = run_step("export", env, fmt=fmt)
    return out


def _rate(r: dict[str, Any]) -> float:
    return r["rows"] / r["seconds"]


def markdown(result: dict[str, Any]) -> str:
    f = result["file"]
    lines = [
        f"One CSV of {f['rows']:,} rows, {f['bytes'] / 2**20:,.0f} MiB (9 columns: integers, "
        "doubles, strings, dates, booleans). Each line is one fresh Python process; peak RSS is "
        "its `ru_maxrss`, base RSS what it held after its imports, before the work.",
        "",
        "| step | seconds | rows/s | vs DuckDB alone | base RSS MiB | peak RSS MiB | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, r: dict[str, Any], ref: dict[str, Any] | None) -> str:
        ratio = f"{_rate(r) / _rate(ref):.2f}×" if ref else "1.00×"
        return (
            f"| {label} | {r['seconds']:.1f} | {_rate(r):,.0f} | {ratio} | {r['base_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['load']:.1f} |"
        )

    ref_import = result["duckdb_import"]
    lines.append(row("DuckDB `create table as select * from read_csv(...)`", ref_import, None))
    if "duckdb_import_lineage" in result:
        lines.append(
            row(
                "DuckDB alone, the import's SELECT (`store_rejects`, two lineage columns)",
                result["duckdb_import_lineage"],
                ref_import,
            )
        )
    for load in ("staged", "auto"):
        plain = result[f"import_plain_{load}"]
        lines.append(
            row(
                f"import handler + commit, no Dagster, `load: {load}` ({plain['path']} load; "
                f"handler {plain['handler_seconds']:.1f} s)",
                plain,
                ref_import,
            )
        )
    imp = result["import"]
    lines.append(
        row(
            f"import batch (handler {imp['handler_seconds']:.1f} s), DuckDB memory "
            f"{imp['memory_limit']}",
            imp,
            ref_import,
        )
    )
    lim = result["import_limited"]
    lines.append(
        row(
            f"import batch (handler {lim['handler_seconds']:.1f} s), DuckDB memory "
            f"**{lim['memory_limit']}**",
            lim,
            ref_import,
        )
    )
    each = {
        label: result[key].get("each_seconds", [])
        for label, key in (
            ("DuckDB alone", "duckdb_import"),
            ("the import's SELECT", "duckdb_import_lineage"),
            ("import handler + commit (`auto`)", "import_plain_auto"),
        )
        if key in result
    }
    rounds = max((len(v) for v in each.values()), default=0)
    if rounds > 1:
        alone, ours = each["DuckDB alone"], each["import handler + commit (`auto`)"]
        ratios = [a / b for a, b in zip(alone, ours, strict=True)]
        lines.insert(
            0,
            f"The first, second and fourth rows are the median of {rounds} rounds, run in turn "
            "(seconds of each round: "
            + "; ".join(f"{k} {', '.join(f'{s:.2f}' for s in v)}" for k, v in each.items())
            + "; the import's ratio to DuckDB alone round by round: "
            + ", ".join(f"{r:.2f}×" for r in ratios)
            + ").\n",
        )
    for fmt in ("parquet", "csv"):
        ref = result[f"duckdb_copy_{fmt}"]
        exp = result[f"export_{fmt}"]
        lines.append(row(f"DuckDB `COPY ... (format {fmt})`", ref, None))
        lines.append(
            row(
                f"export batch to {fmt} (handler {exp['handler_seconds']:.1f} s, "
                f"{exp['bytes'] / 2**20:,.0f} MiB)",
                exp,
                ref,
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--memory-limit", default="100MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("step_args", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        result = STEPS[args.step](**json.loads(args.step_args or "{}"))
        result["peak_mb"] = _peak_mb()
        print(json.dumps(result, default=str))
        return 0
    print(markdown(run(args.rows, args.memory_limit, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
