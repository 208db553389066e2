"""The chunk runner shared by all operations.

It runs the items of a chunk, up to ``item_concurrency`` at once on a thread pool (each
through :func:`~batch_pipelines.core.execution.run_item`: retries, timeout, attempts), with
continue-on-error or stop-on-first-error and the error budget, and keeps the ledger true as
it goes. Everything else happens in the calling thread: starting items, reading their
outcomes, and the flushes (:mod:`batch_pipelines.core.commits`: by default every 2 s and at
the end of the chunk, the items of a flush written in bulk, one transaction per item only to
isolate a commit that fails), then the batch's counts and status.

Stopping: a cancelled batch (or one stopped by another chunk) ends the items in flight
within about a second; when this chunk stops the batch itself (its first error with
``continue_on_error`` false, or the error budget exceeded, checked after every item) no new
item starts and the items in flight finish. Either way the items not started are recorded
cancelled. A time slice that runs out leaves the items not started ``pending``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.commits import BatchState, flush
from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.core.errors import CANCELLED
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
# How long an interrupted chunk waits for its items in flight to leave their handlers (they
# are told to stop; a thread killed inside DuckDB at interpreter exit aborts the process).
_DRAIN_ON_INTERRUPT_S = 10.0


@dataclass
class ChunkSummary:
    outcomes: list[ItemOutcome] = field(default_factory=list)
    batch_status: BatchStatus | None = None
    stopped: str | None = None
    handed_over: list[str] = field(default_factory=list)  # back to pending: time slice over

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


class _BatchWatcher:
    """Polls the batch's status in the background while a chunk runs, so a cancel (or a
    batch stopped by another chunk's failures) stops this chunk within about a second, even
    in the middle of a long item.

    ``stop`` ends the items in flight (it is their ``ctx.batch_stop``); ``halt`` only keeps
    new items from starting: :meth:`drain` sets it alone, when this chunk stopped the batch
    and lets its items in flight finish."""

    def __init__(self, batch_id: str, paths: config.Paths, interval_s: float):
        self.batch_id = batch_id
        self.paths = paths
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.halt = threading.Event()
        self.draining = False
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
        self.halt.set()
        self.stop.set()

    def drain(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.draining = True
        self.halt.set()

    def seen(self, status: str) -> None:
        """React to the batch's status: cancelled stops everything; failed too, unless this
        chunk failed it (then its items in flight finish)."""
        if status == BatchStatus.CANCELLED or (status == BatchStatus.FAILED and not self.draining):
            self.trip(f"batch is {status}")

    def _loop(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                with warehouse.connect(self.paths.warehouse, read_only=True, timeout_s=5) as con:
                    status = ledger.batch_status(con, self.batch_id)
            except Exception:  # noqa: BLE001 - a busy warehouse just delays the next look
                continue
            if status in _STOPPED:
                self.seen(status)
            if self.stop.is_set():
                return


class _InlineExecutor:
    """One item at a time in the calling thread (``item_concurrency`` 1): the item runs in
    ``submit``, so an interrupt reaches it exactly as in a plain loop."""

    def submit(self, fn: Callable[..., PendingCommit], /, *args: Any, **kwargs: Any) -> cf.Future:  # noqa: ANN401
        future: cf.Future = cf.Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class _Chunk:
    """What one run of a chunk keeps between items: the buffer, the flushes, the budget."""

    def __init__(
        self,
        spec: OperationSpec,
        settings: ExecutionSettings,
        batch_id: str,
        run_id: str | None,
        paths: config.Paths,
        watcher: _BatchWatcher,
        summary: ChunkSummary,
        on_progress: Callable[[ItemOutcome], None] | None,
        on_flushed: Callable[[list[ItemOutcome]], None] | None,
    ):
        self.spec, self.settings, self.batch_id = spec, settings, batch_id
        self.run_id, self.paths, self.watcher, self.summary = run_id, paths, watcher, summary
        self.on_progress, self.on_flushed = on_progress, on_flushed
        self.buffer: list[PendingCommit] = []
        self.last_flush = time.monotonic()
        self.failed = 0  # the batch's failed items at the last flush
        self.total = 0
        self.buffered_failed = 0

    def flush(self) -> None:
        state: BatchState = flush(
            self.buffer, {self.batch_id}, self.run_id, self.paths,
            group_commits=self.spec.group_commits,
        )[self.batch_id]  # fmt: skip
        if self.on_flushed:
            self.on_flushed([p.outcome for p in self.buffer])
        self.buffer, self.buffered_failed = [], 0
        self.last_flush = time.monotonic()
        self.failed, self.total = state.failed, state.total
        self.summary.batch_status = BatchStatus(state.status)
        if state.status in _STOPPED:
            self.watcher.seen(state.status)

    def flush_due(self) -> bool:
        return bool(self.buffer) and (
            time.monotonic() - self.last_flush >= self.settings.flush_interval_s
        )

    def _over_budget(self) -> bool:
        # The rule of ledger.states, on the last flush's count plus the failures since.
        ratio = self.settings.max_failure_ratio
        failed = self.failed + self.buffered_failed
        return ratio is not None and self.total > 0 and failed / self.total > ratio

    def finish(self, pending: PendingCommit) -> None:
        """Take a finished item: buffer it, and flush or stop as the settings say."""
        outcome = pending.outcome
        if outcome.status == ItemStatus.CANCELLED and outcome.error:
            outcome.error = f"{outcome.error} ({self.watcher.reason})"
        self.buffer.append(pending)
        self.summary.outcomes.append(outcome)
        if self.on_progress:
            self.on_progress(outcome)
        if outcome.status == ItemStatus.FAILED:
            self.buffered_failed += 1
            if not self.settings.continue_on_error:
                self.watcher.drain("stopped on first error")
                self.flush()
                return
            if not self.watcher.draining and self._over_budget():
                self.watcher.drain("error budget exceeded")
                self.flush()
                return
        if (pending.result is not None and pending.result.flush_now) or self.flush_due():
            self.flush()

    def not_run(self, rest: Sequence[WorkItem]) -> None:
        now = ledger.utcnow()
        for w in rest:
            o = ItemOutcome(
                batch_id=w.batch_id,
                item_id=w.item_id,
                status=ItemStatus.CANCELLED,
                error=f"not run: {self.watcher.reason}",
                error_category=CANCELLED,
                severity="info",
                finished_at=now,
            )
            self.buffer.append(PendingCommit(o, None))
            self.summary.outcomes.append(o)


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

    Up to ``settings.concurrency_for(spec)`` items are in flight at once; ``on_progress``
    and ``on_flushed`` are called in the calling thread. With ``time_slice_s``, items not
    started once that much time has passed go back to ``pending`` (``summary.handed_over``)
    for the next run of the chunk."""
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
        failed_total = ledger.failed_of_total(con, batch_id)

    concurrency = settings.concurrency_for(spec)
    started = time.monotonic()
    with _BatchWatcher(batch_id, paths, watch_interval_s) as watcher:
        chunk = _Chunk(
            spec, settings, batch_id, run_id, paths, watcher, summary, on_progress, on_flushed
        )
        chunk.failed, chunk.total = failed_total
        pool: Any = (
            cf.ThreadPoolExecutor(concurrency, thread_name_prefix=f"items-{spec.name}")
            if concurrency > 1
            else _InlineExecutor()
        )
        in_flight: dict[cf.Future, int] = {}
        index = 0
        try:
            while True:
                while index < len(work_items) and len(in_flight) < concurrency:
                    if watcher.halt.is_set():
                        break
                    if (
                        time_slice_s is not None
                        and index
                        and (time.monotonic() - started >= time_slice_s)
                    ):
                        summary.handed_over = [w.item_id for w in work_items[index:]]
                        index = len(work_items)
                        break
                    future = pool.submit(
                        run_item, spec, work_items[index], options, settings,
                        run_id=run_id, paths=paths, resources=resources,
                        batch_stop=watcher.stop, sleep=sleep,
                    )  # fmt: skip
                    in_flight[future] = index
                    index += 1
                if not in_flight:
                    break
                wait_s = None
                if chunk.buffer:
                    elapsed = time.monotonic() - chunk.last_flush
                    wait_s = max(0.0, settings.flush_interval_s - elapsed)
                done, _ = cf.wait(in_flight, timeout=wait_s, return_when=cf.FIRST_COMPLETED)
                for future in sorted(done, key=in_flight.__getitem__):
                    del in_flight[future]
                    chunk.finish(future.result())
                if chunk.flush_due():
                    chunk.flush()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or a flush that cannot write: tell the items in
            # flight to stop and give them a moment to leave their handlers; what they did is
            # not committed (their items are still `running`: recovery puts them back).
            watcher.trip("interrupted")
            pool.shutdown(wait=False, cancel_futures=True)
            cf.wait(in_flight, timeout=_DRAIN_ON_INTERRUPT_S)
            raise
        pool.shutdown(wait=True)
        if index < len(work_items):
            chunk.not_run(work_items[index:])
        if chunk.buffer:
            chunk.flush()
    if summary.handed_over:
        with warehouse.connect(paths.warehouse) as con:
            con.execute("begin")
            ledger.release_items(con, batch_id, summary.handed_over, run_id)
            summary.batch_status = ledger.refresh_batch(con, batch_id)
            con.execute("commit")
    summary.stopped = watcher.reason
    return summary
