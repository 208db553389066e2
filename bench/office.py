"""Benchmark of the xlsx import and export: time and peak memory against the workbook's size.

Writes one workbook per size (``--xlsx-rows``, default 200,000, and a tenth of it) with one
sheet of 9 columns (integers, doubles, strings, timestamps, booleans), then, each step in its
own Python process so that its peak RSS (``ru_maxrss``) is its own:

- **import**: a one-item ``import`` batch of the workbook run by ``run_batch_in_process``
  (what ``batch-pipelines submit --wait`` does);
- **export**: a one-item ``export`` batch of the imported table to xlsx.

If the import streams, the peak RSS above the process's base stays about the same for both
sizes, while the file grows tenfold.

    python -m bench.office --rows 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.dataplane import run_step

REPO = Path(__file__).resolve().parent.parent
TABLE = "bench_xlsx"


def generate_xlsx(path: Path, rows: int) -> dict[str, Any]:
    import openpyxl

    start = time.perf_counter()
    rng = random.Random(rows)
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("orders")
    sheet.append(
        ["id", "customer_id", "region", "product", "amount", "quantity", "ordered", "returned"]
        + ["ref"]
    )
    day = dt.datetime(2020, 1, 1)
    regions = ["north", "south", "east", "west"]
    for i in range(rows):
        sheet.append(
            [
                i,
                i % 1000,
                regions[i % 4],
                f"product-{i % 5000}",
                round(rng.random() * 1000, 2),
                i % 17 + 1,
                day + dt.timedelta(days=i % 1500),
                i % 3 == 0,
                f"{rng.getrandbits(48):012x}",
            ]
        )
    workbook.save(path)
    return {"rows": rows, "bytes": path.stat().st_size, "seconds": time.perf_counter() - start}


def _rss_now_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _batch(manifest: dict[str, Any]) -> tuple[float, dict[str, Any], float]:
    from dagster import DagsterInstance

    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.queries import get_items
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.definitions import defs

    instance = DagsterInstance.get()
    base = _rss_now_mb()
    start = time.perf_counter()
    batch_id = submit_batch({**manifest, "settings": {"max_retries": 0}}, instance=instance)
    batch = run_batch_in_process(batch_id, instance, defs)
    seconds = time.perf_counter() - start
    item = get_items(batch_id)[0]
    if batch["status"] != "completed":
        raise RuntimeError(f"batch {batch_id} is {batch['status']}: {item['error']}")
    return seconds, item, base


def step_import(path: str) -> dict[str, Any]:
    seconds, item, base = _batch(
        {
            "operation": "import",
            "options": {"target_table": TABLE, "mode": "replace", "skip_identical": False},
            "items": [{"id": "book", "path": path}],
        }
    )
    return {"seconds": seconds, "rows": item["result"]["rows"], "base_mb": base}


def step_export() -> dict[str, Any]:
    seconds, item, base = _batch(
        {"operation": "export", "options": {"format": "xlsx"}, "items": [{"table": TABLE}]}
    )
    return {
        "seconds": seconds,
        "rows": item["result"]["rows"],
        "bytes": item["result"]["bytes"],
        "base_mb": base,
    }


STEPS = {"import": step_import, "export": step_export}
MODULE = "bench.office"


def run(rows: int = 200_000) -> list[dict[str, Any]]:
    out = []
    for n in (max(1, rows // 10), rows):
        with tempfile.TemporaryDirectory(prefix="bench-office-") as tmp:
            root = Path(tmp)
            data = root / "data"
            data.mkdir()
            home = root / "dagster_home"
            home.mkdir()
            (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
            book = data / "orders.xlsx"
            generated = generate_xlsx(book, n)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("BATCH_PIPELINES_") and k != "DAGSTER_HOME"
            }
            env.update(
                BATCH_PIPELINES_DATA=str(data),
                BATCH_PIPELINES_WAREHOUSE=str(data / "warehouse.duckdb"),
                DAGSTER_HOME=str(home),
                PYTHONPATH=str(REPO),
            )
            out.append(
                {
                    "file": generated,
                    "import": run_step("import", env, MODULE, path=str(book)),
                    "export": run_step("export", env, MODULE),
                }
            )
    return out


NOTES = """
| figure | what it measures |
| --- | --- |
| import | a one-item `import` batch of the workbook (one sheet, 9 columns) run with `run_batch_in_process` in a fresh process (`submit --wait`'s path): openpyxl's read-only reader in batches of 10,000 rows into Parquet parts, DuckDB's union of them into the staged file, the commit. |
| export | a one-item `export` batch of the imported table with `format: xlsx`: DuckDB `COPY` to a staging Parquet file under the read lock, then openpyxl's write-only workbook from it in Arrow batches of 10,000 rows. |
| base / peak RSS | the step's process after its imports (Dagster and the project hold ~200 MiB before any work) and at its peak (`ru_maxrss`); peak − base is what the work added. |

Reproduce: `python bench/run.py office --xlsx-rows 200000`.
"""


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| rows | file MiB | step | seconds | rows/s | base RSS MiB | peak RSS MiB | "
        "peak − base MiB | load |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        size = r["file"]["bytes"] / 2**20
        for step in ("import", "export"):
            s = r[step]
            lines.append(
                f"| {r['file']['rows']:,} | {size:.1f} | {step} | {s['seconds']:.1f} | "
                f"{s['rows'] / s['seconds']:,.0f} | {s['base_mb']:.0f} | {s['peak_mb']:.0f} | "
                f"{s['peak_mb'] - s['base_mb']:.0f} | {s['load']:.1f} |"
            )
    return "\n".join(lines) + "\n" + NOTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--step", choices=sorted(STEPS))
    parser.add_argument("kwargs", nargs="?", default="{}")
    args = parser.parse_args()
    if args.step:
        result = STEPS[args.step](**json.loads(args.kwargs))
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    print(markdown(run(args.rows)))


if __name__ == "__main__":
    main()
