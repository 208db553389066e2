"""Benchmark of the chunk runner itself: time per item inside a run against the handler's own.

Light items (``annotate`` of short inline texts with the local backend, ~0.3 ms of handler
work) on a temporary data root, in this process, no daemon:

- **handler alone**: the annotate handler called in a loop (no commit, no ledger);
- **run_chunk**: the core chunk runner over the same items of a batch submitted to the
  ledger (handler, per-item retries/timeout machinery, ledger rows, the operation's commits,
  flushes), one chunk;
- **run_batch_in_process**: the same batch through a real Dagster chunk run in this process
  (``submit --wait``) on ``make run``'s instance storage: the runner plus one materialization
  per item and the run's events.

The ratio ``ms/item in the run / handler ms/item`` is the engine's overhead factor.

    python bench/run.py engine --engine-items 1000 --engine-dagster-items 200
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.fanout import manifest

REPO = Path(__file__).resolve().parent.parent
STORAGE_YAML = REPO / "batch_pipelines" / "deploy" / "dagster.sqlite.yaml"


@contextlib.contextmanager
def _fresh_env() -> Iterator[Any]:
    from batch_pipelines.app.devserver import env_in_process, make_env
    from batch_pipelines.core import warehouse

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        env = make_env(Path(tmp))
        with env_in_process(env):
            warehouse.forget_migrations()
            try:
                yield env
            finally:
                warehouse.forget_migrations()


def handler_alone(n: int) -> float:
    """ms per item of the annotate handler called in a loop."""
    from batch_pipelines.core import config
    from batch_pipelines.core.contract import ItemContext
    from batch_pipelines.operations.annotate import SPEC

    with _fresh_env():
        paths = config.get_paths()
        options = SPEC.options_model()
        items = [SPEC.item_model.model_validate(i) for i in manifest(n)["items"]]
        start = time.perf_counter()
        for i, item in enumerate(items):
            SPEC.handler(ItemContext("bench", item.id, f"k{i}", item, options, 1, None, paths))
        return (time.perf_counter() - start) * 1000 / n


def _submit(n: int, settings: dict[str, Any]) -> tuple[str, Any]:
    from dagster import DagsterInstance

    from batch_pipelines.app.submit import submit_batch

    m = manifest(n)
    m["settings"] = {**m["settings"], "chunk_size": n, **settings}
    instance = DagsterInstance.get()
    return submit_batch(m, instance=instance), instance


def in_run_chunk(n: int, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """ms per item of ``run_chunk`` over one chunk of ``n`` items."""
    from batch_pipelines.core import config, ledger, warehouse
    from batch_pipelines.core.execution import ExecutionSettings, WorkItem
    from batch_pipelines.core.runner import run_chunk
    from batch_pipelines.operations.annotate import SPEC

    with _fresh_env():
        batch_id, instance = _submit(n, settings or {})
        instance.dispose()
        paths = config.get_paths()
        with warehouse.connect(paths.warehouse, read_only=True) as con:
            batch = ledger.get_batch(con, batch_id)
            rows = con.execute(
                "select item_id, partition_key, payload::varchar from batch_items "
                "where batch_id = ? order by seq",
                [batch_id],
            ).fetchall()
        s = ExecutionSettings.model_validate(batch["settings"])
        work = [WorkItem(batch_id, i, k, json.loads(p)) for i, k, p in rows]
        options = SPEC.options_model.model_validate(batch["options"])
        start = time.perf_counter()
        summary = run_chunk(SPEC, work, options, s, run_id="bench", paths=paths)
        elapsed = time.perf_counter() - start
        assert summary.count("succeeded") == n, summary.batch_status
        return {"ms_per_item": elapsed * 1000 / n, "seconds": elapsed}


def in_process_batch(n: int, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """ms per item of a one-chunk batch run in this process through Dagster, on the instance
    storage of ``make run`` (the batching SQLite storage, DAGSTER_EVENT_BATCH_SIZE=1000)."""
    import yaml

    from batch_pipelines.app.devserver import patched_environ, write_dagster_yaml
    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.definitions import defs

    storage = yaml.safe_load(STORAGE_YAML.read_text())
    with _fresh_env() as env, patched_environ({"DAGSTER_EVENT_BATCH_SIZE": "1000"}):
        write_dagster_yaml(env.dagster_home, storage)
        batch_id, instance = _submit(n, settings or {})
        try:
            start = time.perf_counter()
            batch = run_batch_in_process(batch_id, instance, defs)
            elapsed = time.perf_counter() - start
        finally:
            instance.dispose()
        assert batch["succeeded_items"] == n, batch["status"]
        return {"ms_per_item": elapsed * 1000 / n, "seconds": elapsed}


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of ``runs`` (the least disturbed by the rest of the machine), with the
    ms/item of every run."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["each_ms"] = [r["ms_per_item"] for r in runs]
    return best


def run(n: int, dagster_items: int = 200, repeat: int = 3) -> dict[str, Any]:
    """Every figure of the section, each the best of ``repeat`` runs (since 2026-12-06
    17:15; before, one run each); ``dagster_items`` 0 skips the Dagster run (one run)."""
    handler_alone(min(n, 200))  # warm-up: imports, regexes, the taxonomy
    # The runner's too (since 2026-12-06 14:00): its first chunk in a process paid its imports
    # and DuckDB's first connection, which the handler's figure never included.
    in_run_chunk(min(n, 200))
    rows: list[tuple[str, int, dict[str, Any]]] = []
    handler = [handler_alone(n) for _ in range(repeat)]
    for label, settings in (
        # Since 2026-12-06 14:00 annotate's default on the local backend is 1 (it was 16).
        ("`run_chunk`, annotate's default (local backend: 1 in flight)", {}),
        ("`run_chunk`, item_concurrency 16", {"item_concurrency": 16}),
    ):
        rows.append((label, n, _best([in_run_chunk(n, settings) for _ in range(repeat)])))
    if dagster_items:
        rows.append(
            (
                "`run_batch_in_process` (one Dagster chunk run)",
                dagster_items,
                _best([in_process_batch(dagster_items)]),
            )
        )
    return {"items": n, "handler_ms": min(handler), "handler_each_ms": handler, "rows": rows}


def _each(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def markdown(result: dict[str, Any]) -> str:
    h = result["handler_ms"]
    lines = [
        "| where | items | seconds | ms/item | × handler | ms/item of each run |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| annotate handler alone | {result['items']:,} | "
        f"{h * result['items'] / 1000:.2f} | {h:.3f} | 1.0 | "
        f"{_each(result.get('handler_each_ms', [h]))} |",
    ]
    for label, n, r in result["rows"]:
        lines.append(
            f"| {label} | {n:,} | {r['seconds']:.2f} | "
            f"{r['ms_per_item']:.3f} | {r['ms_per_item'] / h:.1f} | "
            f"{_each(r.get('each_ms', [r['ms_per_item']]))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--dagster-items", type=int, default=200)
    args = parser.parse_args()
    print(markdown(run(args.items, args.dagster_items)))
