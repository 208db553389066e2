"""Benchmark of the per-item fan-out: items per second through the real launch path.

Starts a real ``dagster dev`` (web server + daemon + code server, SQLite storage) on a
temporary DAGSTER_HOME and data root, submits batches of a light operation with
``submit_batch()`` in this process, and reads what happened back from the ledger and from
Dagster's run storage:

- **first item running**: submit → the first chunk run marks its items ``running``;
- **all items in the ledger**: submit → the batch is terminal (``batches.completed_at``);
- **report materialized**: submit → the ``analytics_reports_job`` run that the
  ``analytics_on_batch_finished`` sensor requests for the batch has succeeded.

The light operation is ``annotate`` of short inline texts with the local backend (about
0.3 ms of handler work and 1-2 ms for its DuckDB commit per item). The same item work is also
timed in a plain Python loop in one process (handler call plus its DuckDB commit, no Dagster),
so that the per-item overhead of the fan-out is ``e2e time / items - loop time / items``. The baseline is the naive launch:
one run per item (``chunk_size: 1``) on a few items.

    python -m bench.fanout --items 1000 10000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.partitions_ui import time_graphql, time_report_cli

REPO = Path(__file__).resolve().parent.parent
TEXTS = (
    "Storm winds broke the sea ice near the colony; the penguins moved inland.",
    "The central bank raised interest rates and the stock market fell sharply.",
    "Der Spieler schoss in der letzten Minute ein Tor und das Stadion jubelte.",
    "A new vaccine trial reported fewer hospital visits among elderly patients.",
    "Le train de nuit vers Rome part de la gare à vingt-deux heures.",
)
TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")


def manifest(n: int, chunk_size: int | None = None, name: str | None = None) -> dict[str, Any]:
    """A batch of ``n`` short inline texts to annotate (1-3 ms of work per item)."""
    settings: dict[str, Any] = {"max_retries": 0}
    if chunk_size:
        settings["chunk_size"] = chunk_size
    return {
        "operation": "annotate",
        "name": name or f"bench fan-out of {n} items",
        "settings": settings,
        "items": [{"id": f"t{i:06d}", "text": f"{TEXTS[i % len(TEXTS)]} ({i})"} for i in range(n)],
    }


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _utc(ts: float | datetime | None) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return ts.replace(tzinfo=None)
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------- plain loop


def plain_loop(n: int) -> dict[str, float]:
    """The same item work without Dagster: the annotate handler and its commit, in a loop
    in this process (one DuckDB transaction per item, like the runner)."""
    from batch_pipelines.core import config, warehouse
    from batch_pipelines.core.contract import CommitContext, ItemContext
    from batch_pipelines.operations.annotate import SPEC

    paths = config.get_paths()
    options = SPEC.options_model()
    items = [SPEC.item_model.model_validate(i) for i in manifest(n)["items"]]
    with warehouse.connect(paths.warehouse):
        pass  # migrate outside the timing
    start = time.perf_counter()
    results = []
    for i, item in enumerate(items):
        ctx = ItemContext("bench-loop", item.id, f"k{i}", item, options, 1, None, paths)
        results.append(SPEC.handler(ctx))
    handler_s = time.perf_counter() - start
    with warehouse.connect(paths.warehouse) as con:
        for item, result in zip(items, results, strict=True):
            con.execute("begin")
            result.commit(con, CommitContext("bench-loop", item.id, None))
            con.execute("commit")
    total_s = time.perf_counter() - start
    return {
        "items": n,
        "handler_ms": handler_s * 1000 / n,
        "loop_ms": total_s * 1000 / n,
        "items_per_s": n / total_s,
    }


# ------------------------------------------------------------------------------ the daemon


@dataclass
class BatchFigures:
    batch_id: str
    label: str
    items: int
    chunk_size: int
    status: str
    submit_s: float
    first_running_s: float | None
    ledger_s: float | None
    report_s: float | None
    runs: int
    mean_launch_s: float | None  # run created -> run started
    mean_run_s: float | None  # run started -> run ended
    load_start: float
    load_end: float
    in_run_ms: float | None = None  # per item, first item started -> last finished, per run
    handler_ms: float | None = None  # mean duration_ms of the items (handler, retries)
    graphql: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def items_per_s(self) -> float | None:
        return self.items / self.report_s if self.report_s else None

    @property
    def ms_per_item(self) -> float | None:
        return self.report_s * 1000 / self.items if self.report_s else None

    @property
    def ledger_items_per_s(self) -> float | None:
        return self.items / self.ledger_s if self.ledger_s else None


@contextlib.contextmanager
def dagster_dev_env(
    root: Path, dagster_yaml: dict | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[Any]:
    """A temporary data root and DAGSTER_HOME with ``dagster dev`` running on them; this
    process points at the same paths for the block."""
    from batch_pipelines.app.devserver import (
        dagster_dev,
        env_in_process,
        make_env,
        patched_environ,
    )

    with (
        patched_environ(extra_env or {}),
        env_in_process(make_env(root)) as env,
        dagster_dev(env, dagster_yaml=dagster_yaml, timeout_s=240) as server,
    ):
        yield env, server


def _wait(predicate: Any, timeout_s: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval)


def run_through_daemon(
    instance: Any, n: int, chunk_size: int | None, label: str, timeout_s: float
) -> BatchFigures:
    """Submit a batch of ``n`` items and wait until its report run has succeeded."""
    from dagster import DagsterRunStatus, RunsFilter

    from batch_pipelines.app.queries import get_batch
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.core import warehouse

    m = manifest(n, chunk_size, name=f"bench {label}")
    load_start = load()
    t0 = time.time()
    batch_id = submit_batch(m, instance=instance, source="bench")
    submit_s = time.time() - t0
    start = _utc(t0)

    def finished() -> dict | None:
        b = get_batch(batch_id)
        return b if b and b["status"] in TERMINAL else None

    batch = _wait(finished, timeout_s, f"batch {batch_id} to finish")

    def report_run() -> Any:
        records = instance.get_run_records(
            filters=RunsFilter(tags={"analytics/batch_id": batch_id})
        )
        for r in records:
            if r.dagster_run.status == DagsterRunStatus.SUCCESS:
                return r
            if r.dagster_run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                raise RuntimeError(
                    f"report run {r.dagster_run.run_id} ended {r.dagster_run.status}"
                )
        return None

    report = _wait(report_run, max(120.0, timeout_s / 4), f"report run of {batch_id}")
    with warehouse.connect(read_only=True) as con:
        first_running = con.execute(
            "select min(started_at) from batch_items where batch_id = ?", [batch_id]
        ).fetchone()[0]
        first_by_run = dict(
            con.execute(
                "select run_id, min(epoch(started_at)) from batch_items "
                "where batch_id = ? group by run_id",
                [batch_id],
            ).fetchall()
        )
        handler_ms = con.execute(
            "select avg(duration_ms) from batch_items where batch_id = ?", [batch_id]
        ).fetchone()[0]
    runs = list(instance.get_run_records(filters=RunsFilter(tags={"batch/id": batch_id})))
    launches = [r.start_time - r.create_timestamp.timestamp() for r in runs if r.start_time]
    durations = [r.end_time - r.start_time for r in runs if r.start_time and r.end_time]
    # Inside the runs: each run's first item started -> the run ended (its last flush and
    # materializations included, the worker's start not).
    in_run_s = sum(
        r.end_time - first_by_run[r.dagster_run.run_id]
        for r in runs
        if r.end_time and first_by_run.get(r.dagster_run.run_id)
    )

    def since(ts: datetime | None) -> float | None:
        return (ts - start).total_seconds() if ts else None

    return BatchFigures(
        batch_id=batch_id,
        label=label,
        items=n,
        chunk_size=int(batch["settings"]["chunk_size"]),
        status=batch["status"],
        submit_s=submit_s,
        first_running_s=since(first_running),
        ledger_s=since(batch["completed_at"]),
        report_s=since(_utc(report.end_time)),
        runs=len(runs),
        mean_launch_s=sum(launches) / len(launches) if launches else None,
        mean_run_s=sum(durations) / len(durations) if durations else None,
        load_start=load_start,
        load_end=load(),
        in_run_ms=in_run_s * 1000 / n if in_run_s else None,
        handler_ms=handler_ms,
    )


STORAGE_YAML = REPO / "batch_pipelines" / "deploy" / "dagster.sqlite.yaml"
EVENT_BATCH_SIZE = "1000"  # what `make run` exports


def make_run_settings(storage: str = "batched") -> tuple[dict, dict[str, str]]:
    """dagster.yaml overrides and environment of ``make run``: the batching SQLite storage
    (``deploy/dagster.sqlite.yaml``) and ``DAGSTER_EVENT_BATCH_SIZE``; ``storage="stock"``
    gives Dagster's own SQLite storage without event batching (the state before issue 7)."""
    if storage == "stock":
        return {}, {"DAGSTER_EVENT_BATCH_SIZE": "0"}
    if storage != "batched":
        raise ValueError(f"storage must be batched or stock, not {storage!r}")
    return yaml.safe_load(STORAGE_YAML.read_text()), {"DAGSTER_EVENT_BATCH_SIZE": EVENT_BATCH_SIZE}


def run(
    sizes: Sequence[int] = (1000, 10000),
    *,
    naive_items: int = 10,
    chunk_size: int | None = None,
    loop_items: int = 2000,
    storage: str = "batched",
    dagster_yaml: dict | None = None,
    extra_env: dict[str, str] | None = None,
    graphql: bool = False,
) -> dict[str, Any]:
    """Every fan-out figure: the naive batch on one ``dagster dev``, then the sizes ascending
    on another."""
    from dagster import DagsterInstance

    from batch_pipelines.app.devserver import deep_merge

    base_yaml, base_env = make_run_settings(storage)
    dagster_yaml = deep_merge(base_yaml, dagster_yaml or {})
    extra_env = {**base_env, **(extra_env or {})}
    results: list[BatchFigures] = []
    startup_s = 0.0
    # The naive batch gets a `dagster dev` of its own: the analytics sensors look at one
    # finished run per tick (10 s), so its ten runs would delay the report of a batch after it.
    phases = [("naive", [naive_items])] if naive_items else []
    phases.append(("sizes", sorted(sizes)))
    loop: dict[str, float] = {}
    for phase, ns in phases:
        with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
            started = time.monotonic()
            with dagster_dev_env(Path(tmp), dagster_yaml, extra_env) as (_env, server):
                startup_s = max(startup_s, time.monotonic() - started)
                if phase == "sizes":  # next to the batches it is compared with
                    loop = plain_loop(loop_items)
                    loop["load"] = load()
                instance = DagsterInstance.get()
                try:
                    for n in ns:
                        if phase == "naive":
                            fig = run_through_daemon(
                                instance, n, 1, "naive: one run per item", 60 * n
                            )
                        else:
                            fig = run_through_daemon(
                                instance, n, chunk_size, f"{n:,} items", max(600.0, n * 0.5)
                            )
                            if graphql:
                                fig.graphql = time_graphql(server)
                                fig.graphql["report_cli_s"] = time_report_cli(fig.batch_id)
                        results.append(fig)
                finally:
                    instance.dispose()
    return {
        "loop": loop,
        "batches": results,
        "startup_s": startup_s,
        "chunk_size": chunk_size,
        "storage": storage,
        "dagster_yaml": {k: v for k, v in dagster_yaml.items() if k != "storage"},
        "extra_env": extra_env,
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    loop = result["loop"]
    loop_ms = loop["loop_ms"]
    naive = next((b for b in result["batches"] if b.chunk_size == 1), None)
    lines = [
        "| batch | chunk size | runs | status | submit s | first item running s | "
        "all items in ledger s | ledger items/s | × naive (ledger) | in-run ms/item | "
        "handler ms/item | report materialized s | items/s | ms/item | "
        "overhead ms/item | × naive | mean launch s | mean run s | load (start → end) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def times(b: BatchFigures, per_item: Any) -> str:
        if not naive or b is naive or not per_item(b) or not per_item(naive):
            return "-"
        return f"{per_item(naive) / per_item(b):,.0f}×"

    for b in result["batches"]:
        overhead = b.ms_per_item - loop_ms if b.ms_per_item else None
        lines.append(
            f"| {b.label} | {b.chunk_size} | {b.runs} | {b.status} | {_f(b.submit_s, 2)} | "
            f"{_f(b.first_running_s)} | {_f(b.ledger_s)} | {_f(b.ledger_items_per_s)} | "
            f"{times(b, lambda x: x.ledger_s / x.items if x.ledger_s else None)} | "
            f"{_f(b.in_run_ms, 2)} | {_f(b.handler_ms, 2)} | {_f(b.report_s)} | "
            f"{_f(b.items_per_s)} | {_f(b.ms_per_item)} | {_f(overhead)} | "
            f"{times(b, lambda x: x.ms_per_item)} | {_f(b.mean_launch_s)} | "
            f"{_f(b.mean_run_s)} | {b.load_start:.1f} → {b.load_end:.1f} |"
        )
    graphql = [b for b in result["batches"] if b.graphql]
    if graphql:
        lines += [
            "",
            "| after batch | partition keys | materialized | Partitions tab query s | "
            "again s | partition stats query s | `batch-pipelines report` s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in graphql:
            g = b.graphql
            lines.append(
                f"| {b.label} | {g['partition_keys']:,.0f} | {g['materialized']:,.0f} | "
                f"{g['partitions_s']:.2f} | {g['partitions_again_s']:.2f} | {g['stats_s']:.2f} | "
                f"{g['report_cli_s']:.2f} |"
            )
    lines += [
        "",
        f"Plain Python loop, same item work ({loop['items']:,} items, handler + its DuckDB "
        f"commit, one process): {loop_ms:.2f} ms/item ({loop['handler_ms']:.2f} ms of it "
        f"in the handler), {loop['items_per_s']:,.0f} items/s (load {loop['load']:.1f}). "
        f"`dagster dev` took "
        f"{result['startup_s']:.0f} s to start (not counted).",
    ]
    knobs = [
        "Dagster storage: "
        + (
            "`BatchingSqliteStorage` (`deploy/dagster.sqlite.yaml`, as `make run`)"
            if result["storage"] == "batched"
            else "Dagster's stock SQLite storage"
        )
    ]
    if result["chunk_size"]:
        knobs.append(f"chunk_size {result['chunk_size']}")
    if result["dagster_yaml"]:
        knobs.append(f"dagster.yaml overrides `{json.dumps(result['dagster_yaml'])}`")
    for k, v in result["extra_env"].items():
        knobs.append(f"`{k}={v}`")
    if knobs:
        lines.append(f"Settings: {', '.join(knobs)}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--naive-items", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--loop-items", type=int, default=2000)
    parser.add_argument("--storage", choices=("batched", "stock"), default="batched")
    parser.add_argument("--event-batch-size", type=int, default=None)
    parser.add_argument("--dagster-yaml", type=json.loads, default=None, help="JSON overrides")
    parser.add_argument("--graphql", action="store_true", help="time the Partitions tab query")
    args = parser.parse_args(argv)
    env = {}
    if args.event_batch_size is not None:
        env["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
    result = run(
        args.items,
        naive_items=args.naive_items,
        chunk_size=args.chunk_size,
        loop_items=args.loop_items,
        storage=args.storage,
        dagster_yaml=args.dagster_yaml,
        extra_env=env,
        graphql=args.graphql,
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
