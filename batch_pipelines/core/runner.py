"""The item runner shared by all operations.

For each item of a chunk it calls the operation's handler with per-item retry (exponential
backoff with jitter, only for retryable error categories), a per-item timeout, and
continue-on-error or stop-on-first-error. Results are buffered and flushed to the warehouse
in one short locked write per flush (by default every 2 s and at the end of the chunk): each
item's commit (its detail rows and data) and ledger rows in one transaction, so a failed
commit never leaves half an item behind, and then the batch's counts and status.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
from pydantic import BaseModel, Field

from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import (
    CANCELLED,
    ItemCancelledError,
    ItemTimeoutError,
    classify,
)

log = logging.getLogger("batch_pipelines.core.runner")


class ExecutionSettings(BaseModel, extra="forbid"):
    """A batch's execution settings (manifest ``settings:``)."""

    max_retries: int = Field(2, ge=0, le=20, description="Retries per item for retryable errors")
    retry_base_delay_s: float = Field(0.5, ge=0, le=3600)
    retry_backoff_factor: float = Field(2.0, ge=1, le=10)
    retry_jitter: float = Field(0.2, ge=0, le=1, description="± share of the delay randomised")
    retry_max_delay_s: float = Field(60.0, ge=0, le=3600)
    item_timeout_s: float | None = Field(300.0, gt=0, le=86400)
    continue_on_error: bool = True
    max_failure_ratio: float | None = Field(None, ge=0, le=1)
    chunk_size: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="Items per Dagster run; unset: auto_chunk_size(items), fixed at submit",
    )
    max_concurrency: int | None = Field(None, ge=1, le=100, description="Chunk runs at once")
    chunk_time_slice_s: float | None = Field(
        300.0,
        gt=0,
        le=86400,
        description=(
            "A chunk run launched by the dispatcher hands the items it has not started to a "
            "new run of its chunk after this long, so a big chunk of slow items does not hold "
            "a run slot (priorities, pause) for long; None: run the whole chunk"
        ),
    )
    flush_interval_s: float = Field(2.0, ge=0, le=600)


# Unset chunk_size: each chunk run costs 2-3 s to launch (a new worker process) whatever its
# size, so 100 items per run caps a batch of light items at ~35 items/s. A batch is cut into
# AUTO_CHUNK_RUNS chunks (two run slots busy twice), of AUTO_CHUNK_MIN to AUTO_CHUNK_MAX
# items; chunk_time_slice_s keeps a big chunk of slow items from holding a run slot for long.
# Measured in docs/benchmarks.md (bench/fanout.py).
AUTO_CHUNK_MIN = 100
AUTO_CHUNK_MAX = 1000
AUTO_CHUNK_RUNS = 4


def auto_chunk_size(n_items: int) -> int:
    """The chunk size of a batch of ``n_items`` whose manifest does not set one."""
    return max(AUTO_CHUNK_MIN, min(AUTO_CHUNK_MAX, -(-n_items // AUTO_CHUNK_RUNS)))


def backoff_delay(
    settings: ExecutionSettings, attempt: int, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1 = first retry)."""
    rng = rng or random
    delay = settings.retry_base_delay_s * settings.retry_backoff_factor ** (attempt - 1)
    delay = min(delay, settings.retry_max_delay_s)
    if settings.retry_jitter:
        delay *= 1 + rng.uniform(-settings.retry_jitter, settings.retry_jitter)
    return max(0.0, delay)


@dataclass
class WorkItem:
    batch_id: str
    item_id: str
    partition_key: str
    payload: dict[str, Any]
    previous_attempts: int = 0


@dataclass
class _Pending:
    outcome: ledger.ItemOutcome
    result: ItemResult | None


@dataclass
class ChunkSummary:
    outcomes: list[ledger.ItemOutcome] = field(default_factory=list)
    batch_status: str | None = None
    stopped: str | None = None
    handed_over: list[str] = field(default_factory=list)  # back to pending: time slice over

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def _call_with_timeout(fn: Callable[[], ItemResult], ctx: ItemContext) -> ItemResult:
    """Run the handler in a worker thread, so that a timeout or a cancelled batch can end the
    attempt: the context's events are set (``ctx.check()`` raises) and its DuckDB
    connections are interrupted; a handler that ignores both is abandoned, and its commit
    is never run."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"item-{ctx.item_id}", daemon=True)
    worker.start()
    while worker.is_alive():
        wait = 0.5
        if ctx.deadline is not None:
            wait = min(wait, max(0.0, ctx.deadline - time.monotonic()))
        worker.join(wait)
        if not worker.is_alive():
            break
        timed_out = ctx.deadline is not None and time.monotonic() >= ctx.deadline
        if timed_out or ctx.batch_stop.is_set():
            ctx.cancel_event.set()
            ctx.interrupt()
            worker.join(2.0)
            if timed_out:
                raise ItemTimeoutError(f"item exceeded item_timeout_s ({ctx.timeout_s:g}s)")
            raise ItemCancelledError("batch cancelled or stopped while the item ran")
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_item(
    spec: OperationSpec,
    work: WorkItem,
    options: BaseModel,
    settings: ExecutionSettings,
    *,
    run_id: str | None,
    paths: config.Paths,
    resources: dict[str, Any] | None = None,
    batch_stop: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> _Pending:
    """Run one item to its final outcome (all attempts), without touching the warehouse."""
    outcome = ledger.ItemOutcome(batch_id=work.batch_id, item_id=work.item_id, status="failed")
    outcome.started_at = ledger.utcnow()
    try:
        item = spec.item_model.model_validate(work.payload)
    except Exception as exc:  # payload was validated at submit; a re-run may still differ
        c = classify(ValueError(f"item payload: {exc}"))
        now = ledger.utcnow()
        outcome.attempts.append(
            ledger.Attempt(
                work.previous_attempts + 1,
                now,
                now,
                0.0,
                "failed",
                c.message,
                c.category,
                c.severity,
            )
        )
        outcome.error, outcome.error_category, outcome.severity = c.message, c.category, c.severity
        outcome.finished_at = now
        return _Pending(outcome, None)

    attempt_no = work.previous_attempts
    for retry in range(settings.max_retries + 1):
        attempt_no += 1
        ctx = ItemContext(
            batch_id=work.batch_id,
            item_id=work.item_id,
            partition_key=work.partition_key,
            item=item,
            options=options,
            attempt=attempt_no,
            run_id=run_id,
            paths=paths,
            resources=resources or {},
        )
        if batch_stop is not None:
            ctx.batch_stop = batch_stop
        started = time.monotonic()
        if settings.item_timeout_s:
            ctx.deadline = started + settings.item_timeout_s
            ctx.timeout_s = settings.item_timeout_s
        started_at = ledger.utcnow()
        try:
            result = _call_with_timeout(lambda ctx=ctx: spec.handler(ctx), ctx)
            if not isinstance(result, ItemResult):
                raise TypeError(
                    f"{spec.name} handler returned {type(result).__name__}, not ItemResult"
                )
        except Exception as exc:
            c = classify(exc)
            finished_at = ledger.utcnow()
            outcome.attempts.append(
                ledger.Attempt(
                    attempt_no,
                    started_at,
                    finished_at,
                    (time.monotonic() - started) * 1000,
                    "failed",
                    c.message,
                    c.category,
                    c.severity,
                )
            )
            outcome.error, outcome.error_category, outcome.severity = (
                c.message,
                c.category,
                c.severity,
            )
            outcome.finished_at = finished_at
            stopping = batch_stop is not None and batch_stop.is_set()
            if c.category == CANCELLED:
                outcome.status = "cancelled"
                outcome.attempts[-1].outcome = "cancelled"
                return _Pending(outcome, None)
            if not c.retryable or retry == settings.max_retries or stopping:
                return _Pending(outcome, None)
            delay = backoff_delay(settings, retry + 1, rng)
            log.info(
                "item %s attempt %d failed (%s), retrying in %.2fs",
                work.item_id,
                attempt_no,
                c.category,
                delay,
            )
            if batch_stop is not None:
                # Wake early if the batch is cancelled while waiting to retry.
                if sleep is time.sleep:
                    batch_stop.wait(delay)
                else:
                    sleep(delay)
            else:
                sleep(delay)
            continue
        finished_at = ledger.utcnow()
        outcome.attempts.append(
            ledger.Attempt(
                attempt_no,
                started_at,
                finished_at,
                (time.monotonic() - started) * 1000,
                result.status,
            )
        )
        outcome.status = result.status
        outcome.result = result.metrics
        outcome.quality_score = result.quality_score
        outcome.error = outcome.error_category = outcome.severity = None
        outcome.finished_at = finished_at
        return _Pending(outcome, result)
    raise AssertionError("unreachable")


def _commit_one(con: duckdb.DuckDBPyConnection, pending: _Pending, run_id: str | None) -> None:
    outcome = pending.outcome
    result = pending.result
    con.execute("begin")
    try:
        if result is not None and result.commit is not None:
            override = result.commit(con, CommitContext(outcome.batch_id, outcome.item_id, run_id))
            if override == "skipped":
                outcome.status = "skipped"
                outcome.attempts[-1].outcome = "skipped"
        ledger.record_outcome(con, outcome, run_id)
        con.execute("commit")
    except Exception as exc:
        con.execute("rollback")
        c = classify(exc)
        outcome.status = "failed"
        outcome.error = f"commit failed: {c.message}"
        outcome.error_category, outcome.severity = c.category, c.severity
        outcome.result = None
        outcome.quality_score = None
        if outcome.attempts:
            last = outcome.attempts[-1]
            last.outcome, last.error = "failed", outcome.error
            last.error_category, last.severity = c.category, c.severity
        con.execute("begin")
        ledger.record_outcome(con, outcome, run_id)
        con.execute("commit")


def _commit_together(
    con: duckdb.DuckDBPyConnection, pending: Sequence[_Pending], run_id: str | None
) -> bool:
    """Commit every item and its ledger rows in one transaction (one WAL write instead of one
    per item). If any commit fails, nothing is written and False is returned, so the caller
    commits them one by one and only the failing item fails."""
    before = [
        (p.outcome.status, p.outcome.attempts[-1].outcome if p.outcome.attempts else None)
        for p in pending
    ]
    con.execute("begin")
    try:
        for p in pending:
            outcome, result = p.outcome, p.result
            if result is not None and result.commit is not None:
                cc = CommitContext(outcome.batch_id, outcome.item_id, run_id)
                if result.commit(con, cc) == "skipped":
                    outcome.status = "skipped"
                    outcome.attempts[-1].outcome = "skipped"
        ledger.record_outcomes(con, [p.outcome for p in pending], run_id)
        con.execute("commit")
        return True
    except Exception as exc:  # noqa: BLE001 - retried item by item, where it is classified
        con.execute("rollback")
        for p, (status, last) in zip(pending, before, strict=True):
            p.outcome.status = status
            if p.outcome.attempts:
                p.outcome.attempts[-1].outcome = last
        log.info("grouped commit of %d items failed (%s); committing one by one", len(pending), exc)
        return False


def flush(
    pending: Sequence[_Pending],
    batch_ids: set[str],
    run_id: str | None,
    paths: config.Paths,
    *,
    group_commits: bool = False,
) -> dict[str, tuple[str, bool]]:
    """Commit buffered items and refresh their batches; returns {batch_id: (status, paused)}.

    Each item is committed in its own transaction, or, with ``group_commits`` (see
    ``OperationSpec.group_commits``), all of them in one unless one fails."""
    states: dict[str, tuple[str, bool]] = {}
    try:
        with warehouse.connect(paths.warehouse) as con:
            if not (group_commits and len(pending) > 1 and _commit_together(con, pending, run_id)):
                for p in pending:
                    _commit_one(con, p, run_id)
            for batch_id in sorted(batch_ids):
                con.execute("begin")
                status = ledger.refresh_batch(con, batch_id)
                con.execute("commit")
                paused = con.execute(
                    "select paused from batches where batch_id = ?", [batch_id]
                ).fetchone()[0]
                states[batch_id] = (status, bool(paused))
    finally:
        for p in pending:
            if p.result is not None and p.result.cleanup is not None:
                try:
                    p.result.cleanup()
                except Exception:  # noqa: BLE001 - cleanup is best effort
                    log.warning("cleanup of item %s failed", p.outcome.item_id, exc_info=True)
    return states


class _BatchWatcher:
    """Polls the batch's status in the background while a chunk runs, so a cancel (or a
    batch stopped by another chunk's failures) stops this chunk within about a second, even
    in the middle of a long item."""

    def __init__(self, batch_id: str, paths: config.Paths, interval_s: float):
        self.batch_id = batch_id
        self.paths = paths
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{batch_id}", daemon=True)

    def __enter__(self) -> _BatchWatcher:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def trip(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()

    def _loop(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                with warehouse.connect(self.paths.warehouse, read_only=True, timeout_s=5) as con:
                    row = con.execute(
                        "select status from batches where batch_id = ?", [self.batch_id]
                    ).fetchone()
            except Exception:  # noqa: BLE001 - a busy warehouse just delays the next look
                continue
            if row and row[0] in ("cancelled", "failed"):
                self.trip(f"batch is {row[0]}")
                return


def run_chunk(
    spec: OperationSpec,
    work_items: Sequence[WorkItem],
    options: BaseModel,
    settings: ExecutionSettings,
    *,
    run_id: str | None,
    paths: config.Paths | None = None,
    resources: dict[str, Any] | None = None,
    on_progress: Callable[[ledger.ItemOutcome], None] | None = None,
    on_flushed: Callable[[list[ledger.ItemOutcome]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    watch_interval_s: float = 1.0,
    time_slice_s: float | None = None,
) -> ChunkSummary:
    """Run a chunk of items (all of one batch) and keep the ledger true as it goes.

    With ``time_slice_s``, items not started once that much time has passed go back to
    ``pending`` (``summary.handed_over``) for the next run of the chunk."""
    paths = paths or config.get_paths()
    summary = ChunkSummary()
    if not work_items:
        return summary
    batch_id = work_items[0].batch_id
    if any(w.batch_id != batch_id for w in work_items):
        raise ValueError("a chunk holds items of one batch only")
    with warehouse.connect(paths.warehouse) as con:
        con.execute("begin")
        ledger.mark_running(con, batch_id, [w.item_id for w in work_items], run_id)
        con.execute("commit")

    buffer: list[_Pending] = []
    started = last_flush = time.monotonic()
    with _BatchWatcher(batch_id, paths, watch_interval_s) as watcher:

        def do_flush() -> None:
            nonlocal buffer, last_flush
            states = flush(buffer, {batch_id}, run_id, paths, group_commits=spec.group_commits)
            if on_flushed:
                on_flushed([p.outcome for p in buffer])
            buffer = []
            last_flush = time.monotonic()
            status, _paused = states[batch_id]
            summary.batch_status = status
            if status in ("failed", "cancelled"):
                watcher.trip(f"batch is {status}")

        for index, work in enumerate(work_items):
            if watcher.stop.is_set():
                now = ledger.utcnow()
                for w in work_items[index:]:
                    o = ledger.ItemOutcome(
                        batch_id=w.batch_id,
                        item_id=w.item_id,
                        status="cancelled",
                        error=f"not run: {watcher.reason}",
                        error_category=CANCELLED,
                        severity="info",
                        finished_at=now,
                    )
                    buffer.append(_Pending(o, None))
                    summary.outcomes.append(o)
                break
            if time_slice_s is not None and index and time.monotonic() - started >= time_slice_s:
                summary.handed_over = [w.item_id for w in work_items[index:]]
                break
            pending = run_item(
                spec,
                work,
                options,
                settings,
                run_id=run_id,
                paths=paths,
                resources=resources,
                batch_stop=watcher.stop,
                sleep=sleep,
            )
            if pending.outcome.status == "cancelled" and pending.outcome.error:
                pending.outcome.error = f"{pending.outcome.error} ({watcher.reason})"
            buffer.append(pending)
            summary.outcomes.append(pending.outcome)
            if on_progress:
                on_progress(pending.outcome)
            if pending.outcome.status == "failed" and not settings.continue_on_error:
                do_flush()
                watcher.trip("stopped on first error")
                continue
            flush_now = pending.result is not None and pending.result.flush_now
            if flush_now or time.monotonic() - last_flush >= settings.flush_interval_s:
                do_flush()
        if buffer:
            do_flush()
    if summary.handed_over:
        with warehouse.connect(paths.warehouse) as con:
            con.execute("begin")
            ledger.release_items(con, batch_id, summary.handed_over, run_id)
            summary.batch_status = ledger.refresh_batch(con, batch_id)
            con.execute("commit")
    summary.stopped = watcher.reason
    return summary
