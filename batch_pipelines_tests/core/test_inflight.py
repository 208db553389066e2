"""Items in flight within a chunk run, and commits in bulk: ``item_concurrency`` items really
overlap (and never more), the error budget and stop-on-first-error let the items in flight
finish and start no new one, cancel ends the items in flight, pause hands the items not
started back, and a flush commits its items' detail rows set-wise, falling back to one
transaction per item so one bad commit fails only its item."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from dagster import DagsterInstance

from batch_pipelines.app import control
from batch_pipelines.core import commits, runner, warehouse
from batch_pipelines.core.contract import ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.runner import ExecutionSettings, run_chunk
from batch_pipelines_tests.helpers import Item, Opts, make_batch


class Tracker:
    """Counts the items in the handler at once, and which items ever started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0
        self.started: list[str] = []

    def __enter__(self) -> Tracker:
        with self.lock:
            self.now += 1
            self.max = max(self.max, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1

    def start(self, item_id: str) -> None:
        with self.lock:
            self.started.append(item_id)


def spec_of(handler: Callable[[ItemContext], ItemResult], **kw: object) -> OperationSpec:
    return OperationSpec("testop", "t", Opts, Item, handler, **kw)


def statuses(env) -> dict[str, str]:  # noqa: ANN001
    return dict(env.sql("select item_id, status from batch_items"))


def test_items_overlap_up_to_item_concurrency(env) -> None:  # noqa: ANN001
    tracker = Tracker()
    # Eight items must be in the handler at once to get past the barrier: with fewer in
    # flight it breaks (after 20 s) and the items fail.
    barrier = threading.Barrier(8, timeout=20)

    def handler(ctx: ItemContext) -> ItemResult:
        with tracker:
            barrier.wait()
        return ItemResult(metrics={"ok": True})

    s = ExecutionSettings(max_retries=0, item_concurrency=8)
    _, work = make_batch([{"id": f"i{n:02d}"} for n in range(24)], s)
    summary = run_chunk(spec_of(handler), work, Opts(), s, run_id="r")
    assert summary.count("succeeded") == 24
    assert tracker.max == 8
    assert set(statuses(env).values()) == {"succeeded"}
    assert env.sql("select status, succeeded_items from batches") == [("completed", 24)]


def test_operation_default_and_one_at_a_time(env) -> None:  # noqa: ANN001
    tracker = Tracker()

    def handler(ctx: ItemContext) -> ItemResult:
        with tracker:
            time.sleep(0.01)
        return ItemResult()

    s = ExecutionSettings(max_retries=0)
    _, work = make_batch([{"id": f"i{n}"} for n in range(6)], s)
    run_chunk(spec_of(handler), work, Opts(), s, run_id="r")
    assert tracker.max == 1  # the operation's default, 1
    assert s.concurrency_for(spec_of(handler, item_concurrency=16)) == 16
    assert ExecutionSettings(item_concurrency=3).concurrency_for(spec_of(handler)) == 3


def test_annotate_default_follows_its_backend() -> None:
    """Annotate keeps 16 items in flight over HTTP, one at a time on the local backend (pure
    Python under the GIL); the manifest's setting wins either way."""
    from batch_pipelines.defs.resources import AnnotatorResource
    from batch_pipelines.operations.annotate import SPEC

    s = ExecutionSettings()
    assert s.concurrency_for(SPEC) == 16  # at submit: no resources
    assert s.concurrency_for(SPEC, {"annotator": AnnotatorResource(backend="openai")}) == 16
    assert s.concurrency_for(SPEC, {"annotator": AnnotatorResource(backend="local")}) == 1
    assert s.concurrency_for(SPEC, {}) == 1  # the handler's fallback: the local backend
    wide = ExecutionSettings(item_concurrency=8)
    assert wide.concurrency_for(SPEC, {"annotator": AnnotatorResource(backend="local")}) == 8


def test_items_keep_starting_while_the_calling_thread_flushes(env) -> None:  # noqa: ANN001
    # The first flush (i00 asks for it) blocks in on_flushed until four more items have
    # started: a runner that starts items only between flushes never gets there, and the
    # wait runs out.
    tracker = Tracker()
    more_started = threading.Event()
    seen_in_flush: list[bool] = []

    def handler(ctx: ItemContext) -> ItemResult:
        tracker.start(ctx.item_id)
        if len(tracker.started) >= 6:
            more_started.set()
        time.sleep(0.01)
        return ItemResult(flush_now=ctx.item_id == "i00")

    def on_flushed(outcomes) -> None:  # noqa: ANN001
        if not seen_in_flush:
            seen_in_flush.append(more_started.wait(20))

    s = ExecutionSettings(max_retries=0, item_concurrency=2, flush_interval_s=600)
    _, work = make_batch([{"id": f"i{n:02d}"} for n in range(10)], s)
    summary = run_chunk(spec_of(handler), work, Opts(), s, run_id="r", on_flushed=on_flushed)
    assert seen_in_flush == [True]
    assert summary.count("succeeded") == 10
    assert set(statuses(env).values()) == {"succeeded"}


def gated_run(env, settings: ExecutionSettings) -> tuple[Tracker, dict[str, str]]:  # noqa: ANN001
    """12 items, four in flight: i00 and i01 fail at once, every other item waits until both
    failures reached the runner, then keeps checking in for a while (a runner that stopped
    it would make it cancelled)."""
    tracker = Tracker()
    release = threading.Event()
    failures: list[str] = []

    def handler(ctx: ItemContext) -> ItemResult:
        tracker.start(ctx.item_id)
        if ctx.item_id in ("i00", "i01"):
            raise ValidationItemError("bad input")
        while not release.wait(0.01):
            ctx.check()
        for _ in range(20):
            time.sleep(0.02)
            ctx.check()
        return ItemResult()

    def on_progress(outcome) -> None:  # noqa: ANN001
        if outcome.status == "failed":
            failures.append(outcome.item_id)
            if len(failures) == 2:
                release.set()

    _, work = make_batch([{"id": f"i{n:02d}"} for n in range(12)], settings)
    run_chunk(
        spec_of(handler),
        work,
        Opts(),
        settings,
        run_id="r",
        on_progress=on_progress,
        watch_interval_s=0.05,
    )
    return tracker, statuses(env)


def test_error_budget_is_checked_after_every_item_and_in_flight_items_finish(env) -> None:  # noqa: ANN001
    # 2 of 12 failed is over 10%. The flush interval is long: only the check after each item
    # can see it.
    s = ExecutionSettings(
        max_retries=0, item_concurrency=4, max_failure_ratio=0.1, flush_interval_s=600
    )
    tracker, rows = gated_run(env, s)
    started = set(tracker.started)
    assert {"i00", "i01"} <= started and len(started) <= 6
    for item_id, status in rows.items():
        if item_id in ("i00", "i01"):
            assert status == "failed"
        elif item_id in started:
            assert status == "succeeded", item_id  # in flight: finished, not cut short
        else:
            assert status == "cancelled", item_id  # never started
    assert list(rows.values()).count("cancelled") >= 6
    status, error = env.sql("select status, error from batches")[0]
    assert status == "failed" and "error budget exceeded: 2 of 12 items failed" in error
    errors = {e for (e,) in env.sql("select error from batch_items where status = 'cancelled'")}
    assert errors == {"not run: error budget exceeded"}


def test_stop_on_first_error_with_items_in_flight(env) -> None:  # noqa: ANN001
    s = ExecutionSettings(max_retries=0, item_concurrency=4, continue_on_error=False)
    tracker, rows = gated_run(env, s)
    started = set(tracker.started)
    assert len(started) <= 6
    assert {i for i, st in rows.items() if st == "succeeded"} == started - {"i00", "i01"}
    assert {i for i, st in rows.items() if st == "cancelled"} == set(rows) - started
    assert rows["i00"] == "failed"
    status, error = env.sql("select status, error from batches")[0]
    assert status == "failed" and "stopped on first error" in error


def test_cancel_ends_the_items_in_flight(env) -> None:  # noqa: ANN001
    tracker = Tracker()
    four_in = threading.Event()

    def slow(ctx: ItemContext) -> ItemResult:
        with tracker:
            if tracker.now == 4:
                four_in.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ctx.check()
                time.sleep(0.02)
        return ItemResult()

    s = ExecutionSettings(max_retries=3, item_timeout_s=60, item_concurrency=4)
    batch_id, work = make_batch([{"id": f"i{n}"} for n in range(10)], s)
    worker = threading.Thread(
        target=run_chunk, args=(spec_of(slow), work, Opts(), s), kwargs={"run_id": "r"}
    )
    worker.start()
    assert four_in.wait(20)
    control.cancel_batch(batch_id, instance=DagsterInstance.get(), actor="test")
    worker.join(20)
    assert not worker.is_alive()
    assert set(statuses(env).values()) == {"cancelled"}
    assert env.sql("select status, cancelled_items from batches") == [("cancelled", 10)]
    assert env.sql("select count(*) from item_attempts where outcome = 'cancelled'") == [(4,)]


def test_pause_mid_chunk_hands_unstarted_items_back_and_resume_runs_the_rest(env) -> None:  # noqa: ANN001
    calls: dict[str, int] = {}
    lock = threading.Lock()
    gate = threading.Event()
    two_in = threading.Event()

    def gated(ctx: ItemContext) -> ItemResult:
        with lock:
            calls[ctx.item_id] = calls.get(ctx.item_id, 0) + 1
            if len(calls) == 2:
                two_in.set()
        while not gate.wait(0.01):
            ctx.check()
        return ItemResult()

    s = ExecutionSettings(max_retries=0, item_concurrency=2)
    batch_id, work = make_batch([{"id": f"i{n}"} for n in range(6)], s)
    out: dict = {}
    worker = threading.Thread(
        target=lambda: out.update(
            summary=run_chunk(spec_of(gated), work, Opts(), s, run_id="r1", time_slice_s=0.2)
        )
    )
    worker.start()
    assert two_in.wait(20)
    control.pause_batch(batch_id, instance=DagsterInstance.get(), actor="test")
    time.sleep(0.3)  # past the time slice: no further item may start in this run
    gate.set()
    worker.join(20)
    summary = out["summary"]
    assert sorted(calls) == ["i0", "i1"]  # the two in flight finished, nothing else started
    assert sorted(summary.handed_over) == ["i2", "i3", "i4", "i5"]
    assert statuses(env) == {
        "i0": "succeeded",
        "i1": "succeeded",
        **{f"i{n}": "pending" for n in range(2, 6)},
    }
    assert env.sql("select status, paused from batches") == [("paused", True)]
    control.resume_batch(batch_id, actor="test")
    rest = [w for w in work if w.item_id in summary.handed_over]
    run_chunk(spec_of(gated), rest, Opts(), s, run_id="r2")
    assert calls == {f"i{n}": 1 for n in range(6)}
    assert env.sql("select status from batches") == [("completed",)]
    assert env.sql("select max(attempts) from batch_items") == [(1,)]


# ------------------------------------------------------------------------- commits in bulk


@pytest.fixture
def detail(env) -> str:  # noqa: ANN001
    with warehouse.connect() as con:
        con.execute(
            "create table t_detail (batch_id varchar not null, item_id varchar not null, "
            "n integer, v integer not null, note varchar, primary key (batch_id, item_id, n))"
        )
    return "t_detail"


def rows_handler(ctx: ItemContext) -> ItemResult:
    v = None if ctx.item.behaviour == "bad" else len(ctx.item_id)
    return ItemResult(
        metrics={"v": v},
        rows={"t_detail": [{"n": 1, "v": v, "note": None}, {"n": 2, "v": 7, "note": "x"}]},
    )


def test_a_flush_writes_detail_rows_set_wise_and_reruns_replace(
    env,  # noqa: ANN001
    detail: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = commits.replace_rows_together

    def spy(con, table, rows_by_item) -> None:  # noqa: ANN001
        calls.append(len(rows_by_item))
        real(con, table, rows_by_item)

    monkeypatch.setattr(commits, "replace_rows_together", spy)
    spec = spec_of(rows_handler, group_commits=True, item_concurrency=4)
    s = ExecutionSettings(max_retries=0, flush_interval_s=600)
    _, work = make_batch([{"id": f"item{n}"} for n in range(20)], s)
    run_chunk(spec, work, Opts(), s, run_id="r1")
    assert calls == [20]  # one statement set for the whole flush
    run_chunk(spec, work, Opts(), s, run_id="r2")
    assert env.sql("select count(*), count(distinct (item_id, n)) from t_detail") == [(40, 40)]
    assert env.sql("select distinct run_id, status from batch_items") == [("r2", "succeeded")]


def test_a_flush_refreshes_its_batch_in_the_transaction_of_its_items(
    env,  # noqa: ANN001
    detail: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One commit per flush: the batch's counts never lag its items' rows, and a flush costs
    one transaction, not two; a flush with an item that fails its commit still refreshes."""
    in_flush = threading.local()
    transactions: list[str] = []
    real_flush, real_transaction = runner.flush, commits.lake.transaction

    def flush(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        in_flush.on = True
        try:
            return real_flush(*a, **kw)
        finally:
            in_flush.on = False

    def transaction(con, work):  # noqa: ANN001, ANN202
        if getattr(in_flush, "on", False):
            transactions.append(getattr(work, "__name__", "?"))
        return real_transaction(con, work)

    monkeypatch.setattr(runner, "flush", flush)
    monkeypatch.setattr(commits.lake, "transaction", transaction)
    spec = spec_of(rows_handler, group_commits=True, item_concurrency=4)
    s = ExecutionSettings(max_retries=0, flush_interval_s=600)
    _, work = make_batch([{"id": f"item{n}"} for n in range(20)], s)
    run_chunk(spec, work, Opts(), s, run_id="r1")
    assert transactions == ["attempt"]  # the items' rows and the refresh, together
    assert env.sql("select status, succeeded_items, processed_items from batches") == [
        ("completed", 20, 20)
    ]

    transactions.clear()
    items = [{"id": f"item{n}", "behaviour": "bad" if n == 3 else "ok"} for n in range(8)]
    _, work = make_batch(items, s)
    run_chunk(spec, work, Opts(), s, run_id="r2")
    # The bulk attempt rolled back, then one transaction per item, then the refresh.
    assert transactions[0] == "attempt" and transactions[-1] == "refresh"
    assert env.sql(
        "select succeeded_items, failed_items from batches order by created_at desc limit 1"
    ) == [(7, 1)]


def test_a_bad_commit_fails_only_its_item(env, detail: str) -> None:  # noqa: ANN001
    spec = spec_of(rows_handler, group_commits=True, item_concurrency=4)
    s = ExecutionSettings(max_retries=0, flush_interval_s=600)
    items = [{"id": f"item{n}", "behaviour": "bad" if n == 3 else "ok"} for n in range(8)]
    _, work = make_batch(items, s)
    summary = run_chunk(spec, work, Opts(), s, run_id="r")
    rows = statuses(env)
    assert rows.pop("item3") == "failed" and set(rows.values()) == {"succeeded"}
    (error,) = env.sql("select error from batch_items where status = 'failed'")[0]
    assert error.startswith("commit failed") and "NOT NULL" in error
    assert env.sql("select count(*) from t_detail where item_id = 'item3'") == [(0,)]
    assert env.sql("select count(distinct item_id), count(*) from t_detail") == [(7, 14)]
    assert summary.count("failed") == 1
    assert env.sql("select outcome from item_attempts where item_id = 'item3'") == [("failed",)]


def test_timeouts_and_retries_hold_per_item_in_flight(env) -> None:  # noqa: ANN001
    from batch_pipelines_tests.core.test_runner import CALLS, SPEC

    CALLS.clear()
    s = ExecutionSettings(
        max_retries=3, retry_base_delay_s=0.01, retry_jitter=0, item_timeout_s=0.5,
        item_concurrency=4,
    )  # fmt: skip
    items = [
        {"id": "slow", "behaviour": "slow", "sleep": 30},
        {"id": "flaky", "behaviour": "flaky"},
        {"id": "invalid", "behaviour": "invalid"},
        *({"id": f"ok{n}"} for n in range(5)),
    ]
    _, work = make_batch(items, s)
    run_chunk(SPEC, work, Opts(), s, run_id="r")
    rows = dict(
        env.sql(
            "select item_id, status || ':' || attempts || ':' || coalesce(error_category, '') "
            "from batch_items"
        )
    )
    # The slow item times out on each of its 4 attempts while the others run beside it.
    assert rows.pop("slow") == "failed:4:timeout"
    assert rows.pop("flaky") == "succeeded:3:"
    assert rows.pop("invalid") == "failed:1:validation"
    assert set(rows.values()) == {"succeeded:1:"}
    assert CALLS["flaky"] == 3 and CALLS["invalid"] == 1


def test_a_timeout_interrupts_the_item_while_the_calling_thread_waits_to_flush(env) -> None:  # noqa: ANN001
    """The attempts are watched from a thread of their own: while the calling thread waits
    for the warehouse to flush (another writer holds it for 3 s), an item's DuckDB query past
    its timeout is interrupted on time, not when the flush gets through."""
    holding, release = threading.Event(), threading.Event()

    def hold_the_warehouse() -> None:
        with warehouse.connect():
            holding.set()
            release.wait(3)

    def handler(ctx: ItemContext) -> ItemResult:
        if ctx.item_id == "a":  # takes the warehouse away, then asks for a flush at once
            threading.Thread(target=hold_the_warehouse, daemon=True).start()
            holding.wait(10)
            return ItemResult(flush_now=True)
        holding.wait(10)
        with ctx.local_duckdb() as con:  # only an interrupt ends this query
            con.execute("select count(*) from range(100000000000) t(i) where i % 7 = 3").fetchall()
        return ItemResult()

    s = ExecutionSettings(max_retries=0, item_timeout_s=0.5, item_concurrency=2)
    _, work = make_batch([{"id": "a"}, {"id": "b"}], s)
    try:
        run_chunk(spec_of(handler), work, Opts(), s, run_id="r")
    finally:
        release.set()
    rows = env.sql(
        "select item_id, outcome, error_category, duration_ms from item_attempts order by 1"
    )
    assert [r[:3] for r in rows] == [("a", "succeeded", None), ("b", "failed", "timeout")]
    assert rows[1][3] < 2000, rows  # interrupted at its timeout, not after the 3 s flush wait


def test_items_start_while_the_write_that_marks_them_running_waits(env) -> None:  # noqa: ANN001
    """The chunk's first ledger write (its items `running`) overlaps the first items: with
    the warehouse held by another writer for 1.5 s, the items run meanwhile, and the ledger
    ends as it would have (every item once, succeeded)."""
    s = ExecutionSettings(max_retries=0)
    _, work = make_batch([{"id": f"i{n}"} for n in range(5)], s)
    holding, first_ran = threading.Event(), []

    def hold_the_warehouse() -> None:
        with warehouse.connect():
            holding.set()
            time.sleep(1.5)

    def handler(ctx: ItemContext) -> ItemResult:
        first_ran.append(time.monotonic())
        return ItemResult(metrics={"ok": True})

    threading.Thread(target=hold_the_warehouse, daemon=True).start()
    holding.wait(10)
    t0 = time.monotonic()
    summary = run_chunk(spec_of(handler), work, Opts(), s, run_id="r")
    assert min(first_ran) - t0 < 1.0  # not after the writer let go
    assert summary.count("succeeded") == 5
    assert env.sql("select status, count(*) from batch_items group by 1") == [("succeeded", 5)]
    assert env.sql("select status, succeeded_items from batches") == [("completed", 5)]
