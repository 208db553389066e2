"""The item runner: retries only what is retryable, with exponential backoff and jitter,
enforces the per-item timeout, stops on the first error when asked, enforces the error
budget, and re-running an item replaces its ledger rows instead of duplicating them."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import pytest

from batch_pipelines.core.contract import ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import TransientItemError, ValidationItemError
from batch_pipelines.core.runner import ExecutionSettings, WorkItem, backoff_delay, run_chunk
from batch_pipelines_tests.helpers import Item, Opts, cli, make_batch

CALLS: dict[str, int] = {}
LOCK = threading.Lock()


def handler(ctx: ItemContext) -> ItemResult:
    with LOCK:
        CALLS[ctx.item_id] = CALLS.get(ctx.item_id, 0) + 1
        n = CALLS[ctx.item_id]
    b = ctx.item.behaviour
    if b == "flaky" and n < 3:
        raise TransientItemError(f"flaky attempt {n}")
    if b == "transient":
        raise TransientItemError("always busy")
    if b == "invalid":
        raise ValidationItemError("bad input")
    if b == "boom":
        raise RuntimeError("unexpected")
    if b == "slow":
        deadline = time.monotonic() + ctx.item.sleep
        while time.monotonic() < deadline:
            ctx.check()
            time.sleep(0.01)
    return ItemResult(metrics={"n": n}, quality_score=0.5)


SPEC = OperationSpec("testop", "test", Opts, Item, handler)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


def test_backoff_is_exponential_with_bounded_jitter() -> None:
    s = ExecutionSettings(
        retry_base_delay_s=1, retry_backoff_factor=2, retry_jitter=0.2, retry_max_delay_s=10
    )
    rng = random.Random(1)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        for _ in range(50):
            d = backoff_delay(s, attempt, rng)
            assert base * 0.8 - 1e-9 <= d <= base * 1.2 + 1e-9
    assert backoff_delay(ExecutionSettings(retry_jitter=0, retry_base_delay_s=0.5), 3) == 2.0


def test_retries_only_retryable_errors(env) -> None:  # noqa: ANN001
    s = ExecutionSettings(max_retries=3, retry_base_delay_s=0.1, retry_jitter=0)
    batch_id, work = make_batch(
        [
            {"id": "ok"},
            {"id": "flaky", "behaviour": "flaky"},
            {"id": "invalid", "behaviour": "invalid"},
            {"id": "boom", "behaviour": "boom"},
            {"id": "transient", "behaviour": "transient"},
        ],
        s,
    )
    sleeps: list[float] = []
    summary = run_chunk(SPEC, work, Opts(), s, run_id="r1", sleep=sleeps.append)
    assert CALLS == {"ok": 1, "flaky": 3, "invalid": 1, "boom": 1, "transient": 4}
    # flaky: two retries (0.1, 0.2); transient: three (0.1, 0.2, 0.4)
    assert sorted(sleeps) == sorted([0.1, 0.2, 0.1, 0.2, 0.4])
    rows = dict(
        env.sql(
            "select item_id, status || ':' || attempts || ':' || "
            "coalesce(error_category, '') from batch_items"
        )
    )
    assert rows == {
        "ok": "succeeded:1:",
        "flaky": "succeeded:3:",
        "invalid": "failed:1:validation",
        "boom": "failed:1:internal",
        "transient": "failed:4:transient",
    }
    attempts = env.sql(
        "select item_id, attempt, outcome, error_category from item_attempts "
        "where item_id = 'flaky' order by attempt"
    )
    assert attempts == [
        ("flaky", 1, "failed", "transient"),
        ("flaky", 2, "failed", "transient"),
        ("flaky", 3, "succeeded", None),
    ]
    batch = env.sql(
        "select status, processed_items, succeeded_items, failed_items, progress "
        "from batches where batch_id = ?",
        [batch_id],
    )[0]
    assert batch == ("completed_with_errors", 5, 2, 3, 1.0)
    assert summary.count("failed") == 3
    # Only the unexpected error keeps its stack trace, down to the handler's raise.
    traces = dict(env.sql("select item_id, traceback from item_attempts where attempt = 1"))
    assert "RuntimeError: unexpected" in traces.pop("boom")
    assert set(traces.values()) == {None}
    # `report` shows each error group's severity.
    p = cli(env, "report", batch_id)
    assert p.returncode == 0, p.stderr
    assert "severity" in p.stdout
    lines = {line.split()[1]: line for line in p.stdout.splitlines() if "│" in line}
    assert "critical" in lines["internal"] and "warning" in lines["transient"]
    groups = json.loads(cli(env, "report", batch_id, "--json").stdout)["errors"]
    assert {(g["error_category"], g["severity"]) for g in groups} == {
        ("internal", "critical"),
        ("transient", "warning"),
        ("validation", "error"),
    }


def test_timeout_fails_the_item_and_the_run_goes_on(env) -> None:  # noqa: ANN001
    s = ExecutionSettings(max_retries=0, item_timeout_s=0.3)
    _, work = make_batch([{"id": "slow", "behaviour": "slow", "sleep": 5}, {"id": "ok"}], s)
    t0 = time.monotonic()
    run_chunk(SPEC, work, Opts(), s, run_id="r")
    assert time.monotonic() - t0 < 4
    rows = dict(
        env.sql("select item_id, status || ':' || coalesce(error_category, '') from batch_items")
    )
    assert rows == {"slow": "failed:timeout", "ok": "succeeded:"}


def test_timeout_of_a_handler_that_ignores_check(env) -> None:  # noqa: ANN001
    """The stuck attempt is abandoned with its thread: the next items run at once on another
    (attempt threads are reused, and must not queue the next item behind a stuck one)."""

    def stuck(ctx: ItemContext) -> ItemResult:
        if ctx.item_id == "a":
            time.sleep(8)
        return ItemResult()

    spec = OperationSpec("testop", "t", Opts, Item, stuck)
    s = ExecutionSettings(max_retries=0, item_timeout_s=0.2)
    _, work = make_batch([{"id": "a"}, {"id": "b"}, {"id": "c"}], s)
    t0 = time.monotonic()
    run_chunk(spec, work, Opts(), s, run_id="r")
    assert time.monotonic() - t0 < 6  # a: its timeout, 2 s of grace; b and c: at once
    rows = env.sql("select item_id, status, error_category from batch_items order by 1")
    assert rows == [("a", "failed", "timeout"), ("b", "succeeded", None), ("c", "succeeded", None)]


def test_an_abandoned_attempt_is_retried_on_another_thread(env) -> None:  # noqa: ANN001
    """Handlers run in the runner's own threads (no handoff per item), so an attempt that
    ignores its timeout takes its thread with it: the item's retry runs on a new thread, and
    the stuck attempt's late return (here while the chunk still waits on that retry) is
    never taken as the item's outcome."""
    threads: dict[int, str] = {}

    def stuck_once(ctx: ItemContext) -> ItemResult:
        threads[ctx.attempt] = threading.current_thread().name
        if ctx.attempt == 1:
            time.sleep(2.6)  # ignores its 0.2 s timeout; returns while the retry waits
        return ItemResult(metrics={"attempt": ctx.attempt})

    spec = OperationSpec("testop", "t", Opts, Item, stuck_once)
    s = ExecutionSettings(max_retries=1, item_timeout_s=0.2, retry_base_delay_s=1.0, retry_jitter=0)
    _, work = make_batch([{"id": "a"}], s)
    summary = run_chunk(spec, work, Opts(), s, run_id="r")
    assert [(o.item_id, o.status) for o in summary.outcomes] == [("a", "succeeded")]
    assert threads[1] != threads[2]
    assert env.sql("select status, attempts, result->>'attempt' from batch_items") == [
        ("succeeded", 2, "2")
    ]
    assert env.sql("select attempt, outcome, error_category from item_attempts order by 1") == [
        (1, "failed", "timeout"),
        (2, "succeeded", None),
    ]


def test_stop_on_first_error(env) -> None:  # noqa: ANN001
    s = ExecutionSettings(max_retries=0, continue_on_error=False)
    batch_id, work = make_batch(
        [{"id": "a"}, {"id": "b", "behaviour": "invalid"}, {"id": "c"}, {"id": "d"}], s
    )
    summary = run_chunk(SPEC, work, Opts(), s, run_id="r")
    assert "c" not in CALLS and "d" not in CALLS
    rows = dict(env.sql("select item_id, status from batch_items"))
    assert rows == {"a": "succeeded", "b": "failed", "c": "cancelled", "d": "cancelled"}
    status, error = env.sql("select status, error from batches")[0]
    assert status == "failed" and "stopped on first error" in error and "item b" in error
    assert summary.stopped


def test_error_budget_stops_the_batch(env) -> None:  # noqa: ANN001
    s = ExecutionSettings(max_retries=0, max_failure_ratio=0.2, flush_interval_s=0)
    items = [{"id": f"i{n}", "behaviour": "invalid" if n in (1, 2, 3) else "ok"} for n in range(10)]
    _, work = make_batch(items, s)
    run_chunk(SPEC, work, Opts(), s, run_id="r")
    status, error = env.sql("select status, error from batches")[0]
    assert status == "failed"
    assert "error budget exceeded: 3 of 10 items failed" in error
    counts = dict(env.sql("select status, count(*) from batch_items group by 1"))
    assert counts["failed"] == 3 and counts["cancelled"] == 6


def test_rerun_replaces_and_never_duplicates(env) -> None:  # noqa: ANN001
    s = ExecutionSettings(max_retries=0)
    _, work = make_batch([{"id": "a", "behaviour": "invalid"}, {"id": "b"}], s)
    run_chunk(SPEC, work, Opts(), s, run_id="r1")
    work2 = [
        WorkItem(w.batch_id, w.item_id, w.partition_key, {"id": w.item_id}, previous_attempts=1)
        for w in work
    ]
    run_chunk(SPEC, work2, Opts(), s, run_id="r2")
    rows = env.sql("select item_id, status, attempts, run_id from batch_items order by 1")
    assert rows == [("a", "succeeded", 2, "r2"), ("b", "succeeded", 2, "r2")]
    assert env.sql("select count(*), count(distinct (item_id, attempt)) from item_attempts") == [
        (4, 4)
    ]
    assert env.sql("select status, failed_items, succeeded_items from batches") == [
        ("completed", 0, 2)
    ]


def test_bad_handler_return_and_bad_quality(env) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="quality_score"):
        ItemResult(quality_score=1.5)

    def wrong(ctx: ItemContext) -> Any:
        return {"not": "an ItemResult"}

    spec = OperationSpec("testop", "t", Opts, Item, wrong)
    s = ExecutionSettings(max_retries=0)
    _, work = make_batch([{"id": "a"}], s)
    run_chunk(spec, work, Opts(), s, run_id="r")
    assert env.sql("select status, error from batch_items")[0][1].startswith(
        "TypeError: testop handler returned dict"
    )


def test_the_heap_alive_before_a_chunk_is_frozen_while_it_runs(env) -> None:  # noqa: ANN001
    """Full collections during a chunk walk only what the chunk allocated (in a run worker
    the heap held before it is ~200,000 objects, 50-130 ms per full pause); the collector
    gets it all back when the chunk ends, also when chunks overlap in one process."""
    import gc

    from batch_pipelines.core import heap

    seen: list[int] = []

    def counting(ctx: ItemContext) -> ItemResult:
        seen.append(gc.get_freeze_count())
        return ItemResult(metrics={"n": 1})

    s = ExecutionSettings(max_retries=0)
    _, work = make_batch([{"id": "a"}, {"id": "b"}], s)
    assert gc.get_freeze_count() == 0
    run_chunk(OperationSpec("testop", "test", Opts, Item, counting), work, Opts(), s, run_id="r")
    assert len(seen) == 2 and min(seen) > 1000
    assert gc.get_freeze_count() == 0
    with heap.frozen():
        assert gc.get_freeze_count() > 1000
        with heap.frozen():
            pass
        # The inner chunk's end leaves it frozen (less what other threads freed meanwhile).
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0
