"""The chunk runner shared by all operations.

It runs the items of a chunk, up to ``item_concurrency`` at once on worker threads (each
an :class:`~batch_pipelines.core.execution.ItemRun`: retries, timeout, attempts), with
continue-on-error or stop-on-first-error and the error budget, and keeps the ledger true as
it goes. A worker takes the next item itself as soon as its item ends, and counts the item's
failure against the budget there, so items stay in flight while the calling thread is busy.
A supervisor thread watches the attempts' deadlines (an attempt that ignores its timeout
is abandoned with its thread, and another thread takes over). Everything else happens in the
calling thread: taking the outcomes, and the flushes
(:mod:`batch_pipelines.core.commits`: by default every 2 s and at the end of the chunk, the
items of a flush written in bulk, one transaction per item only to isolate a commit that
fails), then the batch's counts and status.

Stopping: a cancelled batch (or one stopped by another chunk) ends the items in flight
within about a second; when this chunk stops the batch itself (its first error with
``continue_on_error`` false, or the error budget exceeded, checked after every item) no new
item starts and the items in flight finish. Either way the items not started are recorded
cancelled. A time slice that runs out leaves the items not started ``pending``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
from pydantic import BaseModel

from batch_pipelines.core import config, heap, ledger, warehouse
from batch_pipelines.core.commits import BatchState, flush
from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.core.errors import CANCELLED
from batch_pipelines.core.execution import (
    AUTO_CHUNK_MAX,
    AUTO_CHUNK_MIN,
    AUTO_CHUNK_PER_WORKER,
    AUTO_CHUNK_RUNS,
    ExecutionSettings,
    ItemRun,
    PendingCommit,
    WorkItem,
    auto_chunk_size,
    backoff_delay,
    run_item,
)
from batch_pipelines.core.ledger import BatchStatus, ItemOutcome, ItemStatus
from batch_pipelines.core.supervisor import AttemptAbandoned, InFlight, Supervisor

__all__ = [
    "AUTO_CHUNK_MAX",
    "AUTO_CHUNK_MIN",
    "AUTO_CHUNK_PER_WORKER",
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
        # Under ``lock``: the worker threads count their failures and check the budget the
        # moment an item ends, even while the calling thread is busy with a flush.
        self.lock = threading.Lock()
        self.failed = 0  # the batch's failed items at the last flush
        self.total = 0
        self.unflushed_failed = 0  # failed items ended since (buffered or not yet taken)

    def flush(self) -> None:
        buffer, self.buffer = self.buffer, []
        flushed_failed = sum(1 for p in buffer if p.outcome.status == ItemStatus.FAILED)
        state: BatchState = flush(
            buffer, {self.batch_id}, self.run_id, self.paths,
            group_commits=self.spec.group_commits,
        )[self.batch_id]  # fmt: skip
        with self.lock:
            self.failed, self.total = state.failed, state.total
            self.unflushed_failed -= flushed_failed
        if self.on_flushed:
            self.on_flushed([p.outcome for p in buffer])
        self.last_flush = time.monotonic()
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
        failed = self.failed + self.unflushed_failed
        return ratio is not None and self.total > 0 and failed / self.total > ratio

    def started(self, failed_total: tuple[int, int]) -> None:
        """The batch's counts, read when the chunk's items were marked running."""
        with self.lock:
            self.failed, self.total = failed_total

    def ended(self, pending: PendingCommit) -> bool:
        """Called where the item ran, the moment it ends: count a failure and stop new items
        from starting when it stops the batch. True when the batch stops here."""
        if pending.outcome.status != ItemStatus.FAILED:
            return False
        with self.lock:
            self.unflushed_failed += 1
            if not self.settings.continue_on_error:
                self.watcher.drain("stopped on first error")
                return True
            if not self.watcher.draining and self._over_budget():
                self.watcher.drain("error budget exceeded")
                return True
        return False

    def finish(self, pending: PendingCommit, stops: bool) -> None:
        """Take a finished item in the calling thread: buffer it, and flush as the settings
        say (at once when it stopped the batch)."""
        outcome = pending.outcome
        if outcome.status == ItemStatus.CANCELLED and outcome.error:
            outcome.error = f"{outcome.error} ({self.watcher.reason})"
        self.buffer.append(pending)
        self.summary.outcomes.append(outcome)
        if self.on_progress:
            self.on_progress(outcome)
        if stops or (pending.result is not None and pending.result.flush_now) or self.flush_due():
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


class _Items:
    """The chunk's items not started yet, handed out one at a time to whoever runs them:
    none once the chunk is halted, and the rest handed over once the time slice is used."""

    def __init__(
        self,
        work_items: Sequence[WorkItem],
        watcher: _BatchWatcher,
        time_slice_s: float | None,
        summary: ChunkSummary,
    ):
        self.work_items, self.watcher = work_items, watcher
        self.time_slice_s, self.summary = time_slice_s, summary
        self.started = time.monotonic()
        self.index = 0
        self._lock = threading.Lock()

    def next(self) -> WorkItem | None:
        with self._lock:
            if self.index >= len(self.work_items) or self.watcher.halt.is_set():
                return None
            if (
                self.time_slice_s is not None
                and self.index
                and time.monotonic() - self.started >= self.time_slice_s
            ):
                self.summary.handed_over = [w.item_id for w in self.work_items[self.index :]]
                self.index = len(self.work_items)
                return None
            w = self.work_items[self.index]
            self.index += 1
            return w


_DONE = object()  # a worker's last word on the results queue


def _run_pulled(
    chunk: _Chunk,
    items: _Items,
    start_item: Callable[[WorkItem], ItemRun],
    concurrency: int,
    flush_interval_s: float,
    start: Callable[[], None] | None,
) -> None:
    """``concurrency`` worker threads each take the next item as soon as theirs ends and run
    its handler themselves, so items stay in flight while the calling thread flushes; the
    calling thread first runs ``start`` if given (the ledger write that marks the items
    running, overlapping the first items), then takes their results from a queue, in the
    order they end. A :class:`~batch_pipelines.core.supervisor.Supervisor` watches their
    attempts; a thread whose attempt is abandoned is replaced, and its item settled or
    retried on the new one."""
    results: queue.SimpleQueue[Any] = queue.SimpleQueue()
    # An abandoned attempt comes to this thread as an InFlight on the results queue.
    supervisor = Supervisor(chunk.watcher.stop, on_abandoned=results.put)

    def work(first: ItemRun | None) -> None:
        try:
            run = first
            while run is not None or (w := items.next()) is not None:
                pending = (run or start_item(w)).to_end(supervisor)
                run = None
                results.put((pending, chunk.ended(pending)))
        except AttemptAbandoned:
            return  # its item is settled elsewhere, and it was counted off when abandoned
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            chunk.watcher.trip("interrupted")
            results.put(exc)
        results.put(_DONE)

    # Daemon threads: an abandoned one may never return. The others are joined below, so
    # none is left inside DuckDB at interpreter exit (that aborts the process).
    threads: list[threading.Thread] = []

    def spawn(first: ItemRun | None = None) -> None:
        name = f"items-{chunk.spec.name}-{len(threads)}"
        threads.append(threading.Thread(target=work, args=(first,), name=name, daemon=True))
        threads[-1].start()

    live, lost = concurrency, set()
    with supervisor:
        for _ in range(concurrency):
            spawn()
        try:
            if start is not None:
                start()
            while live:
                wait_s = None
                if chunk.buffer:
                    wait_s = max(0.0, flush_interval_s - (time.monotonic() - chunk.last_flush))
                try:
                    got = results.get(timeout=wait_s)
                except queue.Empty:
                    got = None
                if got is _DONE:
                    live -= 1
                elif isinstance(got, BaseException):
                    raise got
                elif isinstance(got, InFlight):  # abandoned: settle or retry, on a new thread
                    lost.add(got.thread)
                    if (pending := got.run.abandon(got)) is not None:
                        chunk.finish(pending, chunk.ended(pending))
                    spawn(None if pending is not None else got.run)
                elif got is not None:
                    chunk.finish(*got)
                if chunk.flush_due():
                    chunk.flush()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or a flush that cannot write: tell the items in
            # flight to stop and give them a moment to leave their handlers; what they did is
            # not committed (their items are still `running`: recovery puts them back).
            chunk.watcher.trip("interrupted")
            supervisor.watch()
            deadline = time.monotonic() + _DRAIN_ON_INTERRUPT_S
            for t in threads:
                if t not in lost:
                    t.join(max(0.0, deadline - time.monotonic()))
            raise
        for t in threads:
            if t not in lost:
                t.join()


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

    Up to ``settings.concurrency_for(spec, resources)`` items are in flight at once; ``on_progress``
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

    def start(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        ledger.mark_running(con, batch_id, [w.item_id for w in work_items], run_id)
        return ledger.failed_of_total(con, batch_id)

    concurrency = min(settings.concurrency_for(spec, resources or {}), len(work_items))
    with heap.frozen(), _BatchWatcher(batch_id, paths, watch_interval_s) as watcher:
        chunk = _Chunk(
            spec, settings, batch_id, run_id, paths, watcher, summary, on_progress, on_flushed
        )
        items = _Items(work_items, watcher, time_slice_s, summary)

        def start_item(w: WorkItem) -> ItemRun:
            return ItemRun(
                spec, w, options, settings, run_id=run_id, paths=paths, resources=resources,
                batch_stop=watcher.stop, sleep=sleep,
            )  # fmt: skip

        def started() -> None:
            chunk.started(warehouse.write(start, paths.warehouse))

        # The write that marks the items running overlaps the first items, unless the batch
        # has an error budget, which needs the batch's counts before the first item ends.
        overlap = settings.max_failure_ratio is None
        if not overlap:
            started()
        _run_pulled(
            chunk, items, start_item, concurrency, settings.flush_interval_s,
            started if overlap else None,
        )  # fmt: skip
        if items.index < len(work_items):
            chunk.not_run(work_items[items.index :])
        if chunk.buffer:
            chunk.flush()
    if summary.handed_over:

        def release(con: duckdb.DuckDBPyConnection) -> str:
            ledger.release_items(con, batch_id, summary.handed_over, run_id)
            return ledger.refresh_batch(con, batch_id)

        summary.batch_status = warehouse.write(release, paths.warehouse)
    summary.stopped = watcher.reason
    return summary
