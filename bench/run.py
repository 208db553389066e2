"""``make bench``: run the project's benchmarks and append the results to docs/benchmarks.md.

    python bench/run.py                      # every section (same as `all`)
    python bench/run.py analytics --rows 1000000
    python bench/run.py all --no-write       # print only

Each section is a :class:`Section`: a name, the options it adds to its sub-command (and to
``all``; prefix option names with the section when they could clash) and a function that runs
it and returns Markdown. To add a benchmark, write ``bench/<name>.py`` and register a
``Section`` in :data:`SECTIONS`. Results go to ``docs/benchmarks.md``, newest last, each with
the date, the machine and the versions it ran with.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"

_HEADER = """# Benchmarks

Measured by `make bench` (`python bench/run.py`), never asserted in tests. Each run
appends a section below with its date, machine and versions; compare runs on the same machine
only. Newest last.
"""


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], str]  # returns Markdown


# ------------------------------------------------------------------------------ analytics


def _analytics_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("analytics")
    group.add_argument("--rows", type=int, default=1_000_000, help="item rows (analytics)")
    group.add_argument("--batches", type=int, default=1000, help="batches (analytics)")
    group.add_argument("--repeat", type=int, default=5, help="runs per query, median")


_ANALYTICS_NOTES = """
| figure | what it measures |
| --- | --- |
| `<view> (one batch)` | `select * from <view> where batch_id = ?` for a different random batch each run: what `batch-pipelines report`, the report assets and a SQL user pay for one batch; the filter is pushed through the view's `group by batch_id` down to the `batch_items` scan. |
| `<view> (all batches)` | the whole view over every item row (`error_distribution` normalises every failed item's message with `regexp_replace`). |
| `operation_stats` | the per-operation roll-up over all batches and items. |
| `top errors (all batches)` | the 20 most frequent (category, fingerprint) pairs across batches, as `batch-pipelines stats` shows them. |
| `get_batch_metrics() API` / `get_stats() API` | the Python API end to end: open the warehouse under its lock, run every query of `report ID` / `stats`, close. |
| target | 100 ms for one batch, 1 s for a global query (issue 4). Times are the median of `repeat` runs on an open read-only connection after one warm-up run; min and max show the spread. |
"""


def _run_analytics(args: argparse.Namespace) -> str:
    from bench import analytics

    if args.rows < 1 or args.batches < 1 or args.repeat < 1:
        raise SystemExit("--rows, --batches and --repeat must be at least 1")
    result = analytics.run(args.rows, args.batches, args.repeat)
    return (
        f"### Analytics queries over {result['rows']:,} item rows\n\n"
        f"{analytics.markdown(result)}\n{_ANALYTICS_NOTES}"
    )


# -------------------------------------------------------------------------------- fan-out


def _fanout_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fanout")
    group.add_argument(
        "--items", type=int, nargs="+", default=[1000, 10000], help="batch sizes (fanout)"
    )
    group.add_argument(
        "--naive-items", type=int, default=10, help="items of the one-run-per-item baseline"
    )
    group.add_argument(
        "--chunk-size", type=int, default=None, help="items per run (default: automatic)"
    )
    group.add_argument(
        "--storage",
        choices=("batched", "stock"),
        default="batched",
        help="batched: as `make run`; stock: Dagster's SQLite storage, no event batching",
    )
    group.add_argument("--loop-items", type=int, default=2000, help="items of the plain loop")
    group.add_argument(
        "--pool-limit", type=int, default=None, help="duckdb_writer pool limit (default: 2)"
    )
    group.add_argument(
        "--graphql",
        action="store_true",
        help="after each batch, time the UI's Partitions tab query of annotate_items (fanout)",
    )


_FANOUT_NOTES = """
| figure | what it measures |
| --- | --- |
| batch | `annotate` of short inline texts (local backend, ~0.3 ms of handler work per item), submitted with `submit_batch()` to a real `dagster dev` (daemon, run queue, code server; SQLite storage) on a temporary DAGSTER_HOME and warehouse. "naive" is one run per item (`chunk_size: 1`), on a `dagster dev` of its own (the analytics sensors take one finished run per 10 s tick, so its runs would delay the next batch's report). |
| chunk size, runs | items per chunk run (automatic unless `--chunk-size`) and how many chunk runs the batch took. |
| first item running | submit → the first chunk run marks its items `running` (dispatcher tick, run creation, queue, worker start). |
| all items in ledger | submit → the batch is terminal in the ledger (`batches.completed_at`). |
| ledger items/s, × naive (ledger) | items / (submit → all items in ledger), and the naive batch's seconds per item in the ledger over this batch's: the light-items target (600 items/s, 2,000×). |
| in-run ms/item, handler ms/item | inside the chunk runs: for each run, its first item started → the run ended, summed over the runs, per item (the item loop, flushes, ledger writes and Dagster events, without the worker's start); and the items' mean `duration_ms` (the handler's own time). |
| report materialized | submit → the `analytics_reports_job` run the `analytics_on_batch_finished` sensor requests for the batch has succeeded (it reads the ledger every 5 s). This is the end-to-end time. |
| items/s, ms/item | items / end-to-end time, and its inverse. |
| overhead ms/item | ms/item minus the plain loop's ms/item: what the fan-out (Dagster runs, events, ledger) adds per item. |
| × naive | ms/item of the naive launch / ms/item of this batch. |
| mean launch s, mean run s | per chunk run: created → started (queue wait + worker start), started → ended. |
| load | `os.getloadavg()[0]` when the batch was submitted and when it was done: the machine is shared, compare runs at similar load. |
| plain loop | the same items through the annotate handler and its DuckDB commit in one process, no Dagster. |
| GraphQL (`--graphql`) | after the batch, against the same web server: the query of the asset's Partitions tab (`partitionKeysByDimension` and `assetPartitionStatuses`: every key of `annotate_items` and its status), twice (the second load reads Dagster's cached partition status), the `partitionStats` counts of the asset's overview, and `batch-pipelines report ID` in a new process. |

Reproduce: `make bench BENCH_ARGS="fanout"` or `python bench/run.py fanout --items 1000 10000`
(`--chunk-size N` to fix the chunk size, `--pool-limit N` for the `duckdb_writer` pool,
`--storage stock` for Dagster's stock SQLite storage without event batching, `--naive-items 0`
to skip the baseline, `--graphql` for the UI's partition queries; the scale point is
`python bench/run.py fanout --items 100000 --graphql`).
"""


def _run_fanout(args: argparse.Namespace) -> str:
    from bench import fanout

    if min(args.items) < 1 or args.naive_items < 0 or args.loop_items < 1:
        raise SystemExit("--items and --loop-items must be at least 1, --naive-items at least 0")
    result = fanout.run(
        args.items,
        naive_items=args.naive_items,
        chunk_size=args.chunk_size,
        loop_items=args.loop_items,
        storage=args.storage,
        dagster_yaml=(
            {"concurrency": {"pools": {"default_limit": args.pool_limit}}}
            if args.pool_limit
            else None
        ),
        graphql=args.graphql,
    )
    sizes = " and ".join(f"{n:,}" for n in sorted(args.items))
    return f"### Fan-out: {sizes} items end to end\n\n{fanout.markdown(result)}\n{_FANOUT_NOTES}"


# ------------------------------------------------------------------------------ data plane


def _dataplane_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataplane")
    group.add_argument(
        "--csv-rows", type=int, default=5_000_000, help="rows of the generated CSV (dataplane)"
    )
    group.add_argument(
        "--memory-limit",
        default="100MB",
        help="BATCH_PIPELINES_DUCKDB_MEMORY of the limited import (dataplane)",
    )
    group.add_argument(
        "--import-rounds",
        type=int,
        default=3,
        help="rounds of the import-vs-DuckDB steps, each figure their median (dataplane)",
    )


_DATAPLANE_NOTES = """
| figure | what it measures |
| --- | --- |
| DuckDB `read_csv` | DuckDB alone loading the file into a table of a fresh database file (its defaults: all cores, 80% of RAM). |
| the import's SELECT | DuckDB alone running the SELECT of the import's direct load (`read_csv` with `store_rejects`, plus the `_batch_id` and `_item_id` lineage columns) into a fresh database file: the same table without the project, the floor of the import's ratio. |
| import handler + commit | the import's data path alone, in one process without Dagster or the ledger: the handler (sha256 of the file, DuckDB sniffing its columns) and its commit, which reads the file straight into the warehouse table in one transaction (direct load). "handler" is the part outside the writer lock. |
| import batch | a one-item `import` batch run in-process (`run_batch_in_process`, as `submit --wait`): the same data path plus the ledger and one Dagster run (a few seconds whatever the file's size: see the fan-out section). Seconds from submit to the batch's end; "handler" is the item's own time (without the commit). |
| DuckDB memory 100MB | the same import with `BATCH_PIPELINES_DUCKDB_MEMORY` far below the file's size: peak RSS shows whether it streamed. |
| DuckDB `COPY`, export batch | the imported table to Parquet (snappy) or CSV: DuckDB alone vs a one-item `export` batch (COPY from a read-only connection to a temporary file, sha256, rename). |
| base / peak RSS | the step's process after its imports (Dagster and the project hold ~200 MiB before any work) and at its peak (`ru_maxrss`). |

Reproduce: `make bench BENCH_ARGS="dataplane"` or
`python bench/run.py dataplane --csv-rows 5000000 --memory-limit 100MB --import-rounds 3`.
"""


def _run_dataplane(args: argparse.Namespace) -> str:
    from bench import dataplane

    if args.csv_rows < 1:
        raise SystemExit("--csv-rows must be at least 1")
    result = dataplane.run(args.csv_rows, args.memory_limit, args.import_rounds)
    return (
        f"### Data plane: {args.csv_rows:,}-row CSV\n\n"
        f"{dataplane.markdown(result)}\n{_DATAPLANE_NOTES}"
    )


# ------------------------------------------------------------------------------ slow items


def _slow_items_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("slow_items")
    group.add_argument("--slow-items", type=int, default=1000, help="annotate items (slow_items)")
    group.add_argument("--latency-ms", type=float, default=250.0, help="server latency per answer")
    group.add_argument(
        "--overload-above", type=int, default=32, help="the server answers 429 above this many"
    )
    group.add_argument("--retry-after", default="1", help="the 429's Retry-After (seconds)")
    group.add_argument(
        "--retry-after-ms", default="250", help="the 429's retry-after-ms ('' to send none)"
    )
    group.add_argument("--item-concurrency", type=int, default=64, help="settings.item_concurrency")
    group.add_argument("--max-in-flight", type=int, default=64, help="LLM_MAX_IN_FLIGHT")
    group.add_argument(
        "--slow-chunk-size", type=int, default=0, help="items per chunk run (0: automatic)"
    )
    group.add_argument(
        "--requests-per-minute", type=int, default=60000, help="LLM_REQUESTS_PER_MINUTE"
    )


_SLOW_ITEMS_NOTES = """
| figure | what it measures |
| --- | --- |
| server | a local OpenAI-compatible server (`bench/slow_items.py`, its own process, HTTP/1.1) that answers `/v1/chat/completions` after `latency`, and answers 429 at once (with `Retry-After` and `retry-after-ms`) to a request arriving while `overload_above` are being served. Ideal items/s = `overload_above / latency`. |
| run | an `annotate` batch (`BATCH_PIPELINES_ANNOTATOR=openai`) submitted and run with `run_batch_in_process` in a fresh process (what `submit --wait` does; no daemon), with `settings.item_concurrency` and the endpoint limits `BATCH_PIPELINES_LLM_MAX_IN_FLIGHT` / `_REQUESTS_PER_MINUTE`. The Dagster instance uses `make run`'s storage (`deploy/dagster.sqlite.yaml`, `DAGSTER_EVENT_BATCH_SIZE=1000`; runs before 2026-12-06 09:00 used Dagster's stock SQLite storage, one transaction per event). Seconds from submit to the batch's end (the Dagster runs, the ledger and the commits included; the warehouse exists before, as in a deployment: runs before 2026-12-06 11:00 also counted its creation, about 1 s). On an engine without `item_concurrency` the items go through `run_item` (handler, retries, annotator) on a thread pool instead, without Dagster or commits: marked "threads over run_item". |
| chunk size | items per chunk run (automatic: a quarter of the batch, since 2026-12-06 13:30 half of it (one chunk per `duckdb_writer` slot); since 2026-12-06 11:00 at least 32 items per item in flight, up to the whole batch); `submit --wait` runs the chunks one after the other, each a Dagster run of its own. |
| 429 %, final cap | requests the server answered 429 over all it received; the adaptive in-flight cap at the end (`core/limits.py`). |
| where the seconds went | submit → the server's first request (submit, the first run's start: its planned events, the first items' start), first request → last answer against the ideal `items / (overload_above / latency)`, last answer → the batch's end (the last flush, the runs' ends); one monotonic clock for both processes. |

Reproduce: `python bench/run.py slow_items` (`--latency-ms 200 --overload-above 1000
--item-concurrency 1 --max-in-flight 0 --requests-per-minute 0 --slow-items 30` for the
one-request-at-a-time figure; `--slow-chunk-size N` to fix the chunk size).
"""


def _run_slow_items(args: argparse.Namespace) -> str:
    from bench import slow_items

    if args.slow_items < 1:
        raise SystemExit("--slow-items must be at least 1")
    result = slow_items.run(
        args.slow_items,
        args.latency_ms,
        args.overload_above,
        args.retry_after,
        args.retry_after_ms,
        args.item_concurrency if args.item_concurrency > 1 else None,
        args.max_in_flight or None,
        args.requests_per_minute or None,
        chunk_size=args.slow_chunk_size or None,
    )
    return (
        f"### Slow items: {args.slow_items:,} annotate items over HTTP\n\n"
        f"{slow_items.markdown(result)}\n{_SLOW_ITEMS_NOTES}"
    )


# --------------------------------------------------------------------------------- engine


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--engine-items", type=int, default=1000, help="items of a chunk (engine)")
    group.add_argument(
        "--engine-dagster-items",
        type=int,
        default=200,
        help="items of the in-process Dagster run (engine; 0 skips it)",
    )
    group.add_argument(
        "--engine-repeat",
        type=int,
        default=3,
        help="runs of each chunk figure and of the handler; the best is reported (engine)",
    )


_ENGINE_NOTES = """
| figure | what it measures |
| --- | --- |
| annotate handler alone | the `annotate` handler (local backend) on short inline texts, called in a loop: the item's own work. |
| `run_chunk` | the core chunk runner (`core/runner.py`) over one chunk of those items of a submitted batch, in this process: each item on one of the run's item threads, which calls its handler itself (attempts, retries; its timeout watched by a supervisor thread), the flushes (detail rows and ledger rows in bulk), the batch refresh. No Dagster. |
| `run_batch_in_process` | the same batch run by `submit --wait`'s path: one Dagster chunk run in this process, adding one materialization per item and the run's events, on `make run`'s instance storage (the batching SQLite storage, `DAGSTER_EVENT_BATCH_SIZE=1000`). |
| × handler | ms/item / the handler's ms/item: the engine's overhead factor (target: ≤ 2 for `run_chunk`). |
| best of N | since 2026-12-06 17:15 the handler and each `run_chunk` row are the fastest of `--engine-repeat` runs (default 3; each run a fresh batch), and "ms/item of each run" lists them all; the Dagster row is one run. Before, every figure was one run. |

Reproduce: `python bench/run.py engine --engine-items 1000 --engine-dagster-items 200`.
"""


def _run_engine(args: argparse.Namespace) -> str:
    from bench import engine

    if args.engine_items < 1 or args.engine_dagster_items < 0 or args.engine_repeat < 1:
        raise SystemExit(
            "--engine-items and --engine-repeat must be at least 1, "
            "--engine-dagster-items at least 0"
        )
    result = engine.run(args.engine_items, args.engine_dagster_items, args.engine_repeat)
    return (
        f"### Engine: time per item inside a chunk run ({args.engine_items:,} items)\n\n"
        f"{engine.markdown(result)}\n{_ENGINE_NOTES}"
    )


# --------------------------------------------------------------------------------- office


def _office_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("office")
    group.add_argument("--xlsx-rows", type=int, default=200_000, help="workbook rows (office)")


def _run_office(args: argparse.Namespace) -> str:
    from bench import office

    if args.xlsx_rows < 10:
        raise SystemExit("--xlsx-rows must be at least 10")
    result = office.run(args.xlsx_rows)
    return (
        f"### Office: xlsx import and export, {args.xlsx_rows:,} rows\n\n{office.markdown(result)}"
    )


# ----------------------------------------------------------------------------------- lake


def _lake_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lake")
    group.add_argument("--lake-items", type=int, default=200, help="items per batch (lake)")
    group.add_argument("--lake-chunk-size", type=int, default=50, help="chunk size (lake)")


_LAKE_NOTES = """
| figure | what it measures |
| --- | --- |
| wall (s) | 4 processes started at once, each submitting an `annotate` batch (built-in backend, no network) and running it with `run_batch_in_process`; from the first start to the last end. |
| items/s | all items of the 4 batches / wall. |
| commit retries | transactions the lake ran again after a commit conflict (`core/lake.py`), summed over the 4 processes; the file takes its lock instead and never conflicts. |
| all succeeded | every item succeeded and the ledger holds each exactly once. |

The PostgreSQL catalog is a local server started for the run (fsync off); the SQLite catalog
is a file beside the data (write-ahead-log mode, synced at every commit). The data files are
a local folder: with a remote catalog or object storage each statement costs a network round
trip more. Reproduce: `python bench/run.py lake --lake-items 200`.
"""


def _run_lake(args: argparse.Namespace) -> str:
    from bench import lake

    if args.lake_items < 1 or args.lake_chunk_size < 1:
        raise SystemExit("--lake-items and --lake-chunk-size must be at least 1")
    result = lake.run(args.lake_items, args.lake_chunk_size)
    return (
        f"### Lake: 4 concurrent batches, single file against DuckLake (PostgreSQL, SQLite)\n\n"
        f"{lake.markdown(result)}\n{_LAKE_NOTES}"
    )


SECTIONS: dict[str, Section] = {
    s.name: s
    for s in (
        Section(
            "analytics",
            "analytics views over generated ledger rows",
            _analytics_arguments,
            _run_analytics,
        ),
        Section(
            "fanout",
            "end-to-end items/s of the per-item fan-out through dagster dev",
            _fanout_arguments,
            _run_fanout,
        ),
        Section(
            "engine",
            "time per item inside a chunk run against the handler's own",
            _engine_arguments,
            _run_engine,
        ),
        Section(
            "dataplane",
            "import and export rows/s against DuckDB, peak memory of a big import",
            _dataplane_arguments,
            _run_dataplane,
        ),
        Section(
            "office",
            "xlsx import and export: seconds and peak memory against the workbook's size",
            _office_arguments,
            _run_office,
        ),
        Section(
            "slow_items",
            "annotate over HTTP against a local server with a capacity: items/s, 429s, cap",
            _slow_items_arguments,
            _run_slow_items,
        ),
        Section(
            "lake",
            "4 concurrent batches on the single file and on DuckLake (PostgreSQL catalog)",
            _lake_arguments,
            _run_lake,
        ),
    )
}


# -------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return None


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_markdown() -> str:
    ram = _ram_gb()
    return (
        f"- machine: {os.cpu_count()} cores, "
        f"{f'{ram:.1f} GiB RAM' if ram else 'RAM unknown'}, {_cpu_model()}; "
        f"{platform.system()} {platform.release()}; load average {_load()} at start\n"
        f"- versions: Python {platform.python_version()}, Dagster {_version('dagster')}, "
        f"DuckDB {_version('duckdb')}, pandas {_version('pandas')}"
    )


# ------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Run benchmarks and append them to docs/benchmarks.md."
    )
    sub = parser.add_subparsers(dest="section")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-write", action="store_true", help="print, do not append")
        p.add_argument("--output", type=Path, default=BENCHMARKS_MD, help="Markdown file")

    for section in SECTIONS.values():
        p = sub.add_parser(section.name, help=section.help)
        section.add_arguments(p)
        common(p)
    every = sub.add_parser("all", help="every section")
    for section in SECTIONS.values():
        section.add_arguments(every)
    common(every)
    return parser


def main(argv: list[str] | None = None) -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["all", *argv]
    args = build_parser().parse_args(argv)
    names = list(SECTIONS) if args.section == "all" else [args.section]
    started = datetime.now(UTC)
    parts = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        parts.append(SECTIONS[name].run(args))
    command = "python bench/run.py " + " ".join(argv)
    entry = (
        f"## {started:%Y-%m-%d %H:%M} UTC: {', '.join(names)}\n\n"
        f"{machine_markdown()}\n- command: `{command.strip()}`\n\n" + "\n\n".join(parts)
    )
    print(entry)
    if not args.no_write:
        out: Path = args.output
        text = out.read_text() if out.exists() else _HEADER
        out.write_text(text.rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n")
        print(f"appended to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
