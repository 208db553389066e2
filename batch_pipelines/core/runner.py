"""The chunk runner shared by all operations.

It runs the items of a chunk one after the other (each through
:func:`~batch_pipelines.core.execution.run_item`: retries, timeout, attempts), with
continue-on-error or stop-on-first-error, and keeps the ledger true as it goes. Results are
buffered and flushed to the warehouse in one short locked write per flush (by default every
2 s and at the end of the chunk): each item's commit (its detail rows and data) and ledger
rows in one transaction, so a failed commit never leaves half an item behind, and then the
batch's counts and status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
from pydantic import BaseModel

from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.contract import CommitContext, OperationSpec
from batch_pipelines.core.errors import CANCELLED, classify, is_interrupt
from batch_pipelines.core.execution import (
    AUTO_CHUNK_MAX,
    AUTO_CHUNK_MIN,
    AUTO_CHUNK_RUNS,
    ExecutionSettings,
    PendingCommit,
    WorkItem,
    auto_chunk_size,
    backoff_delay,
    run_item,
)
from batch_pipelines.core.ledger import BatchStatus, ItemOutcome, ItemStatus
from batch_pipelines.core.redact import redact

__all__ = [
    "AUTO_CHUNK_MAX",
    "AUTO_CHUNK_MIN",
    "AUTO_CHUNK_RUNS",
    "ChunkSummary",
    "ExecutionSettings",
    "WorkItem",
    "auto_chunk_size",
    "backoff_delay",
    "flush",
    "run_chunk",
    "run_item",
]

log = logging.getLogger("batch_pipelines.core.runner")

_STOPPED = (BatchStatus.CANCELLED, BatchStatus.FAILED)


@dataclass
class ChunkSummary:
    outcomes: list[ItemOutcome] = field(default_factory=list)
    batch_status: BatchStatus | None = None
    stopped: str | None = None
    handed_over: list[str] = field(default_factory=list)  # back to pending: time slice over

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def _commit_one(con: duckdb.DuckDBPyConnection, pending: PendingCommit, run_id: str | None) -> None:
    outcome = pending.outcome
    result = pending.result
    con.execute("begin")
    try:
        if result is not None and result.commit is not None:
            override = result.commit(con, CommitContext(outcome.batch_id, outcome.item_id, run_id))
            if override == ItemStatus.SKIPPED:
                outcome.status = ItemStatus.SKIPPED
                outcome.attempts[-1].outcome = ItemStatus.SKIPPED
        ledger.record_outcome(con, outcome, run_id)
        con.execute("commit")
    except Exception as exc:
        con.execute("rollback")
        if is_interrupt(exc):
            raise KeyboardInterrupt from exc
        c = classify(exc)
        outcome.status = ItemStatus.FAILED
        outcome.error = f"commit failed: {c.message}"
        outcome.error_category, outcome.severity = c.category, c.severity
        outcome.result = None
        outcome.quality_score = None
        if outcome.attempts:
            last = outcome.attempts[-1]
            last.outcome, last.error = ItemStatus.FAILED, outcome.error
            last.error_category, last.severity = c.category, c.severity
        con.execute("begin")
        ledger.record_outcome(con, outcome, run_id)
        con.execute("commit")


def _commit_together(
    con: duckdb.DuckDBPyConnection, pending: Sequence[PendingCommit], run_id: str | None
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
                if result.commit(con, cc) == ItemStatus.SKIPPED:
                    outcome.status = ItemStatus.SKIPPED
                    outcome.attempts[-1].outcome = ItemStatus.SKIPPED
        ledger.record_outcomes(con, [p.outcome for p in pending], run_id)
        con.execute("commit")
        return True
    except Exception as exc:  # noqa: BLE001 - retried item by item, where it is classified
        con.execute("rollback")
        if is_interrupt(exc):
            raise KeyboardInterrupt from exc
        for p, (status, last) in zip(pending, before, strict=True):
            p.outcome.status = status
            if p.outcome.attempts:
                p.outcome.attempts[-1].outcome = last
        log.info(
            "grouped commit of %d items failed (%s); committing one by one",
            len(pending),
            redact(str(exc)),
        )
        return False


def flush(
    pending: Sequence[PendingCommit],
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
                states[batch_id] = (status, ledger.is_paused(con, batch_id))
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
                    status = ledger.batch_status(con, self.batch_id)
            except Exception:  # noqa: BLE001 - a busy warehouse just delays the next look
                continue
            if status in _STOPPED:
                self.trip(f"batch is {status}")
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
    on_progress: Callable[[ItemOutcome], None] | None = None,
    on_flushed: Callable[[list[ItemOutcome]], None] | None = None,
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

    buffer: list[PendingCommit] = []
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
            if status in _STOPPED:
                watcher.trip(f"batch is {status}")

        for index, work in enumerate(work_items):
            if watcher.stop.is_set():
                now = ledger.utcnow()
                for w in work_items[index:]:
                    o = ItemOutcome(
                        batch_id=w.batch_id,
                        item_id=w.item_id,
                        status=ItemStatus.CANCELLED,
                        error=f"not run: {watcher.reason}",
                        error_category=CANCELLED,
                        severity="info",
                        finished_at=now,
                    )
                    buffer.append(PendingCommit(o, None))
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
            if pending.outcome.status == ItemStatus.CANCELLED and pending.outcome.error:
                pending.outcome.error = f"{pending.outcome.error} ({watcher.reason})"
            buffer.append(pending)
            summary.outcomes.append(pending.outcome)
            if on_progress:
                on_progress(pending.outcome)
            if pending.outcome.status == ItemStatus.FAILED and not settings.continue_on_error:
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
