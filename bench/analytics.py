"""Benchmark of the analytics relations: report queries over many item rows.

Generates a ledger of ``--rows`` item rows (``--batches`` batches of equal size, mixed
operations, statuses, durations, errors and quality scores) inside DuckDB with ``range()`` and
``random()`` in a temporary warehouse, then times every analytics query: per-batch ones with
a ``where batch_id = ?`` filter (a different batch each repeat) and global ones over all rows.
Each figure is the median of ``--repeat`` runs on an open connection.

    python -m bench.analytics --rows 1000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PER_BATCH_TARGET_MS = 100.0
GLOBAL_TARGET_MS = 1000.0

# (name, SQL, per_batch): per-batch queries take the batch id as their only parameter.
QUERIES: list[tuple[str, str, bool]] = [
    ("batch_metrics (one batch)", "select * from batch_metrics where batch_id = ?", True),
    (
        "error_distribution (one batch)",
        "select * from error_distribution where batch_id = ? order by count desc",
        True,
    ),
    (
        "quality_distribution (one batch)",
        "select * from quality_distribution where batch_id = ? order by bucket",
        True,
    ),
    (
        "batch_timeline (one batch)",
        "select * from batch_timeline where batch_id = ? order by minute",
        True,
    ),
    ("batch_metrics (all batches)", "select * from batch_metrics", False),
    (
        "error_distribution (all batches)",
        "select * from error_distribution order by batch_id, count desc",
        False,
    ),
    ("quality_distribution (all batches)", "select * from quality_distribution", False),
    ("batch_timeline (all batches)", "select * from batch_timeline", False),
    ("operation_stats", "select * from operation_stats", False),
    (
        "top errors (all batches)",
        "select error_category, fingerprint, sum(count) as n from error_distribution "
        "group by all order by n desc limit 20",
        False,
    ),
]

_OPERATIONS = "['annotate', 'import', 'export', 'transform', 'report', 'validate', 'cleanup']"

# Error templates with the variable parts (numbers, paths, ids, quoted names) the fingerprint
# must strip; {n} is replaced by a per-item number in SQL.
_ERRORS = [
    ("validation", "could not parse line ' || (i % 997) || ' of /data/inbox/file_' || i || '.csv"),
    ("transient", "HTTP 503 from annotator (request id ' || md5(i::varchar) || ')"),
    ("timeout", "item exceeded item_timeout_s=' || (i % 60) || '.5 after ' || (i % 7) || ' tries"),
    ("validation", "column ''col_' || (i % 13) || ''' not found in table ''t_' || b || '''"),
    ("permanent", "permission denied: /srv/exports/' || b || '/part-' || i || '.parquet"),
    ("not_found", "no such file: data/samples/batch_' || b || '/item_' || i || '.json"),
]


def generate(con: Any, rows: int, batches: int) -> dict[str, int]:
    """Fill an empty, migrated warehouse with ``rows`` items over ``batches`` batches."""
    per_batch = max(rows // batches, 1)
    error_cases = " ".join(f"when {k} then '{msg}'" for k, (_, msg) in enumerate(_ERRORS))
    category_cases = " ".join(f"when {k} then '{cat}'" for k, (cat, _) in enumerate(_ERRORS))
    con.execute("begin")
    con.execute(
        f"""
        insert into batches (batch_id, operation, name, status, priority, total_items,
            created_at, started_at, completed_at)
        select
            {_OPERATIONS}[1 + b % 7] || '-' || strftime(ts, '%Y%m%d-%H%M%S') || '-'
                || substr(md5(b::varchar), 1, 6),
            {_OPERATIONS}[1 + b % 7],
            'bench batch ' || b,
            case when b % 20 = 19 then 'running' else 'completed_with_errors' end,
            'normal',
            {per_batch},
            ts,
            ts + interval 1 second,
            case when b % 20 = 19 then null else ts + interval 6 minute end
        from (select b, timestamp '2026-01-01' + to_minutes(b * 7) as ts
              from range({batches}) t(b))
        """
    )
    con.execute(
        f"""
        insert into batch_items (batch_id, item_id, seq, chunk_no, partition_key, status,
            attempts, duration_ms, quality_score, error, error_category, started_at,
            finished_at)
        with base as (
            select b, i, r, r2,
                {_OPERATIONS}[1 + b % 7] || '-' || strftime(ts, '%Y%m%d-%H%M%S') || '-'
                    || substr(md5(b::varchar), 1, 6) as batch_id,
                ts,
                case
                    when b % 20 = 19 and i > {per_batch} * 0.6 then 'pending'
                    when b % 20 = 19 and i > {per_batch} * 0.55 then 'running'
                    when r < 0.82 then 'succeeded'
                    when r < 0.92 then 'failed'
                    when r < 0.97 then 'skipped'
                    else 'cancelled'
                end as status,
                (5 + 400 * r2 * r2 + case when r2 > 0.98 then 4000 * r else 0 end) as ms
            from (select b, i, random() as r, random() as r2,
                         timestamp '2026-01-01' + to_minutes(b * 7) as ts
                  from range({batches}) t(b), range({per_batch}) u(i))
        )
        select batch_id, 'item-' || i, i, i // 100,
            batch_id || '~item-' || i || '~' || substr(md5(i::varchar), 1, 8),
            status,
            case when status in ('pending', 'cancelled') then 0
                 when r2 < 0.1 then 2 else 1 end,
            case when status in ('succeeded', 'failed', 'skipped') then ms end,
            case when status = 'succeeded' and r2 >= 0.05 then least(r * 1.2, 1.0) end,
            case when status = 'failed' then case (i % {len(_ERRORS)}) {error_cases} end
                 when status = 'cancelled' then 'batch cancelled by bench'
            end,
            case when status = 'failed' then case (i % {len(_ERRORS)}) {category_cases} end
                 when status = 'cancelled' then 'cancelled'
            end,
            case when status not in ('pending', 'cancelled')
                 then ts + to_milliseconds((i * 250)::bigint) end,
            case when status in ('succeeded', 'failed', 'skipped')
                 then ts + to_milliseconds((i * 250 + ms)::bigint) end
        from base
        """
    )
    con.execute("commit")
    con.execute("checkpoint")
    n_items = con.execute("select count(*) from batch_items").fetchone()[0]
    n_batches = con.execute("select count(*) from batches").fetchone()[0]
    return {"items": int(n_items), "batches": int(n_batches)}


@dataclass
class Timing:
    name: str
    per_batch: bool
    median_ms: float
    min_ms: float
    max_ms: float
    rows: int | None  # None: not a single query

    @property
    def target_ms(self) -> float:
        return PER_BATCH_TARGET_MS if self.per_batch else GLOBAL_TARGET_MS

    @property
    def ok(self) -> bool:
        return self.median_ms <= self.target_ms


def _time(fn: Callable[[], int], repeat: int) -> tuple[list[float], int]:
    fn()  # warm-up: loads the table's blocks and binds the views once
    times, n = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        n = fn()
        times.append((time.perf_counter() - start) * 1000)
    return times, n


def time_queries(con: Any, repeat: int = 5) -> list[Timing]:
    ids = [r[0] for r in con.execute("select batch_id from batches order by random()").fetchall()]
    results = []
    for name, sql, per_batch in QUERIES:
        pick = iter(ids * (repeat + 1))

        def run(sql: str = sql, per_batch: bool = per_batch, pick: Any = pick) -> int:
            params = [next(pick)] if per_batch else []
            return len(con.execute(sql, params).fetchall())

        times, n = _time(run, repeat)
        results.append(Timing(name, per_batch, statistics.median(times), min(times), max(times), n))
    return results


def time_api(repeat: int = 5) -> list[Timing]:
    """End to end through the Python API: open the warehouse (lock + connect), query, close."""
    from batch_pipelines.core import analytics, warehouse

    with warehouse.connect(read_only=True) as con:
        ids = [r[0] for r in con.execute("select batch_id from batches").fetchall()]
    pick = iter(ids * (repeat + 1))
    out = []
    times, _ = _time(lambda: len(analytics.get_batch_metrics(next(pick))), repeat)
    out.append(
        Timing(
            "get_batch_metrics() API", True, statistics.median(times), min(times), max(times), None
        )
    )
    times, _ = _time(lambda: len(analytics.get_stats()), repeat)
    out.append(
        Timing("get_stats() API", False, statistics.median(times), min(times), max(times), None)
    )
    return out


def run(rows: int = 1_000_000, batches: int = 1000, repeat: int = 5) -> dict[str, Any]:
    """Generate the ledger in a temporary warehouse and time every query."""
    import os

    from batch_pipelines.core import warehouse

    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp:
        path = Path(tmp) / "warehouse.duckdb"
        saved = {
            k: os.environ.get(k) for k in ("BATCH_PIPELINES_WAREHOUSE", "BATCH_PIPELINES_DATA")
        }
        os.environ["BATCH_PIPELINES_WAREHOUSE"] = str(path)
        os.environ["BATCH_PIPELINES_DATA"] = tmp
        try:
            start = time.perf_counter()
            with warehouse.connect(path) as con:
                counts = generate(con, rows, batches)
            generate_s = time.perf_counter() - start
            with warehouse.connect(path, read_only=True) as con:
                timings = time_queries(con, repeat)
            timings += time_api(repeat)
            size_mb = path.stat().st_size / 1e6
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            warehouse.forget_migrations()
    return {
        "rows": counts["items"],
        "batches": counts["batches"],
        "repeat": repeat,
        "generate_s": generate_s,
        "warehouse_mb": size_mb,
        "timings": timings,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['rows']:,} item rows in {result['batches']:,} batches "
        f"(generated in {result['generate_s']:.1f} s, warehouse {result['warehouse_mb']:.0f} MB); "
        f"median of {result['repeat']} runs.",
        "",
        "| query | scope | median ms | min ms | max ms | rows | target ms | ok |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in result["timings"]:
        lines.append(
            f"| {t.name} | {'one batch' if t.per_batch else 'global'} | {t.median_ms:.1f} | "
            f"{t.min_ms:.1f} | {t.max_ms:.1f} | {'-' if t.rows is None else f'{t.rows:,}'} | "
            f"{t.target_ms:.0f} | "
            f"{'yes' if t.ok else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="item rows to generate")
    parser.add_argument("--batches", type=int, default=1000, help="batches to spread them over")
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (median)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batches < 1 or args.repeat < 1:
        parser.error("--rows, --batches and --repeat must be at least 1")
    print(markdown(run(args.rows, args.batches, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
