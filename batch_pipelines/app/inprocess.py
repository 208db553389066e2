"""Run a batch in this process (``batch-pipelines submit --wait`` without a daemon, ``make
demo``, tests): every chunk with pending items runs as a Dagster run of ``<operation>_job``
over its range of partition keys, one after another, recorded in the instance like any run
but bypassing the run queue (no priorities, no run-level limits or retries).

This process is the runs' worker, and their tags say so (see :mod:`.recovery`): if it dies,
the dispatcher's reaper or the CLI's ``resume`` and ``cancel`` end its runs and take back the
items they left ``running``. A run that ends leaving items ``running`` (its commit failed,
e.g. on a full disk) has them put back to ``pending`` here. SIGINT (Ctrl-C) and SIGTERM stop
the batch: the chunk in flight is interrupted (an item writes nothing before its commit, which
is one transaction), its unfinished items go back to ``pending``, the batch is paused and
:class:`BatchInterrupted` raised; ``resume`` continues it.

The caller hands in the code location's ``Definitions`` (``batch_pipelines.definitions.defs``)
that holds the jobs: the application layer does not import the Dagster definitions, which
are built on top of it.
"""

from __future__ import annotations

import signal
import socket
import threading
import uuid
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import duckdb

from batch_pipelines.app.dispatch import HANDED_OVER_TAG, chunk_states, chunk_tags
from batch_pipelines.app.gate import apply_quality_gate
from batch_pipelines.app.recovery import IN_PROCESS, LAUNCHED_BY_TAG, LIVE_RUN_STATUSES, worker_tags
from batch_pipelines.app.runmetrics import CORRELATION_TAG
from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.ledger import recovery
from batch_pipelines.core.outbox import WebhookSender

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions, JobDefinition


class ChunkRunError(RuntimeError):
    """A chunk run ended without running its items (the error is outside the items)."""


class BatchInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the batch: its unfinished items are pending again and it is
    paused (``resume`` continues it)."""

    def __init__(self, batch_id: str, signum: int, requeued: int, status: str) -> None:
        self.batch_id = batch_id
        self.signum = signum
        self.requeued = requeued
        self.status = status
        super().__init__(
            f"batch {batch_id} stopped by {signal.Signals(signum).name}: {requeued} item(s) "
            f"back to pending, batch {status}"
        )

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 130 for SIGINT, 143 for
        SIGTERM."""
        return 128 + self.signum


class _StopSignals:
    """Catches SIGINT and SIGTERM while a batch runs here (in the main thread only).

    While a run executes, Dagster installs its own handlers: inside the step it turns the
    signal into an interrupt (which the operation asset turns into a failed run rather than a
    step retry), elsewhere it only notes the signal and forgets it when the run ends. So every
    signal is also read back from a wakeup fd, which the interpreter writes whichever handler
    runs, and checked after each run. Between runs the handler raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopping = False
        self._active = False

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._old = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        self._active = True
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    def received(self) -> int | None:
        """The first SIGINT or SIGTERM received so far, if any."""
        if self._active and self.signum is None:
            try:
                data = self._read.recv(1024)
            except (BlockingIOError, InterruptedError):
                data = b""
            self.signum = next((b for b in data if b in self.SIGNALS), None)
        return self.signum

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        for s, handler in self._old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(self._old_fd)
        self._read.close()
        self._write.close()


def _chunk_job(defs: Definitions, operation: str, gated: bool) -> JobDefinition:
    """The operation's job with only the checks its chunk runs evaluate (as the dispatcher's
    run requests select them). Dagster is loaded by then; the CLI's read verbs import this
    module without it."""
    from dagster import AssetKey

    from batch_pipelines.app.partitions import chunk_check_keys

    job = defs.resolve_job_def(f"{operation}_job")
    return job.get_subset(
        asset_selection={AssetKey(f"{operation}_items")},
        asset_check_selection=set(chunk_check_keys(operation, gated)),
    )


def run_batch_in_process(
    batch_id: str,
    instance: DagsterInstance,
    defs: Definitions,
    on_chunk_done: Callable[[dict], None] | None = None,
    log_level: str = "WARNING",
) -> dict:
    """Execute the batch's pending chunks here with the jobs of ``defs``, then the child
    batches its quality gate sends back (``settings.quality_gate``); returns the batch's
    final ledger row. A batch whose canary fails returns ``canary_failed``.

    Item failures are in the ledger; Dagster's console log is kept at ``log_level``. Raises
    ``ChunkRunError`` when a run fails before running its items (they are pending again), and
    :class:`BatchInterrupted` on SIGINT or SIGTERM."""
    from dagster import DagsterExecutionInterruptedError

    started: list[str] = []
    # Lifecycle webhooks go out while the batch runs, from a thread off the items' path.
    with WebhookSender(), _StopSignals() as stop:
        current = batch_id
        try:
            batch = _run_chunks(batch_id, instance, defs, stop, started, on_chunk_done, log_level)
            # The quality gate sends low scorers back as a child batch: run it here too.
            gated = apply_quality_gate(batch_id, instance=instance)
            while gated is not None and gated.child_batch_id:
                current = gated.child_batch_id
                # on_chunk_done follows the batch asked for, not its children.
                _run_chunks(current, instance, defs, stop, started, None, log_level)
                gated = apply_quality_gate(current, instance=instance)
            if current != batch_id:
                with warehouse.connect(config.get_paths().warehouse, read_only=True) as con:
                    batch = ledger.get_batch(con, batch_id)
            return batch
        except (KeyboardInterrupt, DagsterExecutionInterruptedError):
            stop.stopping = True
            signum = stop.received() or signal.SIGINT
            raise _stopped(instance, current, signum, started) from None


def _run_chunks(
    batch_id: str,
    instance: DagsterInstance,
    defs: Definitions,
    stop: _StopSignals,
    started: list[str],
    on_chunk_done: Callable[[dict], None] | None,
    log_level: str,
) -> dict:
    paths = config.get_paths()
    while True:
        with warehouse.connect(paths.warehouse, read_only=True) as con:
            batch = ledger.get_batch(con, batch_id)
            if batch is None:
                raise KeyError(f"no batch {batch_id}")
            rows = [r for r in ledger.launchable_chunks(con) if r["batch_id"] == batch_id]
        if not rows:
            return batch
        chunk = chunk_states(rows)[0]
        job = _chunk_job(defs, chunk.operation, chunk.gated)
        tags = chunk_tags(
            chunk.batch_id,
            chunk.operation,
            chunk.priority,
            chunk.chunk_no,
            chunk.first_key,
            chunk.last_key,
            canary=chunk.canary,
        )
        run_id = str(uuid.uuid4())
        tags[LAUNCHED_BY_TAG] = IN_PROCESS
        tags.update(worker_tags(run_id))
        if batch.get("correlation_id"):
            tags[CORRELATION_TAG] = batch["correlation_id"]
        started.append(run_id)
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            tags=tags,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
        if stop.received():
            raise KeyboardInterrupt
        with warehouse.connect(paths.warehouse, read_only=True) as con:
            after = {c["chunk_no"]: c for c in ledger.chunk_plan(con, batch_id)}[chunk.chunk_no]
            batch = ledger.get_batch(con, batch_id)
        requeued = 0
        if after["unfinished"] > after["pending"]:
            # Read again only then: each look at the warehouse opens it (~50 ms).
            requeued = _requeue(paths, batch_id, result.run_id)
            with warehouse.connect(paths.warehouse, read_only=True) as con:
                plan = ledger.chunk_plan(con, batch_id)
                after = {c["chunk_no"]: c for c in plan}[chunk.chunk_no]
                batch = ledger.get_batch(con, batch_id)
        if after["pending"]:
            # The run ended without finishing its items (it failed before starting them, or
            # could not commit them): stop rather than loop forever.
            raise ChunkRunError(
                f"run {result.run_id} of chunk {chunk.chunk_no} ended with "
                f"{after['pending']} item(s) not run"
                + (f" ({requeued} put back to pending)" if requeued else "")
                + f": {'; '.join(_step_errors(result)) or 'no error'}"
            )
        if on_chunk_done:
            on_chunk_done(batch)


def _step_errors(result: Any) -> list[str]:  # noqa: ANN401 - ExecuteInProcessResult
    """The root cause of each step failure ("Exceeded max_retries" says little)."""
    errors = []
    for e in result.all_events:
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error:
            error = e.event_specific_data.error
            while error.cause is not None:
                error = error.cause
            errors.append(str(error.message).strip())
    return errors


def _requeue(paths: config.Paths, batch_id: str, run_id: str) -> int:
    """Put the items a run that has ended left ``running`` back to ``pending``."""

    def requeue(con: duckdb.DuckDBPyConnection) -> int:
        n = recovery.requeue_run_items(
            con, batch_id, run_id, actor=IN_PROCESS, reason=f"run {run_id} ended before them"
        )
        ledger.refresh_batch(con, batch_id)
        return n

    return warehouse.write(requeue, paths.warehouse)


def _stopped(
    instance: DagsterInstance,
    batch_id: str,
    signum: int,
    run_ids: list[str],
) -> BatchInterrupted:
    """End the runs this call started that have not ended, put the items they left
    ``running`` back to ``pending`` and pause the batch."""
    name = signal.Signals(signum).name
    runs = [r for r in (instance.get_run_by_id(i) for i in run_ids) if r is not None]
    for run in runs:
        if run.status.value in LIVE_RUN_STATUSES:
            instance.report_run_canceled(run, message=f"stopped by {name}")
    status, requeued = warehouse.write(
        lambda con: recovery.pause_interrupted(
            con, batch_id, run_ids, signal_name=name, actor=IN_PROCESS
        )
    )
    if runs:
        # The run in flight handed its unfinished items back: its failure is no crash, and
        # must not count against the chunk's launches (see dispatch.RunState).
        instance.add_run_tags(runs[-1].run_id, {HANDED_OVER_TAG: str(requeued)})
    return BatchInterrupted(batch_id, signum, requeued, status)
