"""Running one item to its final outcome: the execution settings of a batch, retries with
exponential backoff and jitter (only for retryable error categories), the per-item timeout
(enforced by a :class:`~batch_pipelines.core.supervisor.Supervisor`), and the attempts
recorded along the way (:class:`ItemRun`). Nothing here touches the warehouse; the chunk
loop in :mod:`batch_pipelines.core.runner` commits what an item's run returns."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
from pydantic import BaseModel, Field

from batch_pipelines.core import config
from batch_pipelines.core.contract import (
    CommitContext,
    CommitFn,
    ItemContext,
    ItemResult,
    OperationSpec,
    RowsCommit,
)
from batch_pipelines.core.errors import (
    CANCELLED,
    Classified,
    ValidationItemError,
    classify,
)
from batch_pipelines.core.gates import CanarySettings, QualityGateSettings
from batch_pipelines.core.ledger import Attempt, ItemOutcome, ItemStatus, utcnow
from batch_pipelines.core.supervisor import AttemptAbandoned, InFlight, Supervisor
from batch_pipelines.core.targets import refused_target

log = logging.getLogger("batch_pipelines.core.runner")


MAX_ITEM_CONCURRENCY = 256


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
        description=(
            "Items per Dagster run; unset: auto_chunk_size(items, item_concurrency), fixed "
            "at submit"
        ),
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
    rollback_on_failure: bool = Field(
        False,
        description=(
            "When the batch ends failed (stopped on its first error, over its error budget, "
            "cancelled with --rollback, every item failed), undo its writes as `rollback` does"
        ),
    )
    item_concurrency: int | None = Field(
        None,
        ge=1,
        le=MAX_ITEM_CONCURRENCY,
        description=(
            "Items of a chunk run in flight at once (threads); unset: the operation's default "
            "(1 for CPU-bound work, 16 for annotate, whose items wait on HTTP)"
        ),
    )

    canary: CanarySettings | None = Field(
        None, description="Run a few items spread across the batch first, check them, then the rest"
    )
    quality_gate: QualityGateSettings | None = Field(
        None, description="Re-run items that succeed with a low quality score, other options"
    )

    def concurrency_for(
        self, spec: OperationSpec, resources: Mapping[str, Any] | None = None
    ) -> int:
        """Items in flight at once for ``spec``: this setting, else the operation's default
        (for the run's ``resources``, when the operation's default depends on them)."""
        if self.item_concurrency:
            return self.item_concurrency
        if resources is not None and spec.concurrency_for_resources is not None:
            return spec.concurrency_for_resources(resources) or spec.item_concurrency
        return spec.item_concurrency


# Unset chunk_size: each chunk run costs 2-3 s to launch (a new worker process, several more
# on a busy machine) whatever its size, so 100 items per run caps a batch of light items at
# ~35 items/s, and 1,000 left a 10,000-item batch waiting on worker starts for half its time.
# A batch is cut into AUTO_CHUNK_RUNS chunks, one per slot of the duckdb_writer pool (its
# default limit in dagster.yaml is 2), so every slot pays the launch once: four chunks (two
# waves, the second launched only when the first ended) took 10,000 light items to the ledger
# at 523 items/s, two chunks at 861 items/s (docs/benchmarks.md, bench/fanout.py). Chunks are
# AUTO_CHUNK_MIN to AUTO_CHUNK_MAX items; chunk_time_slice_s keeps a big chunk of slow items
# from holding a run slot for long, and pause, cancel and retries work per item inside a run.
# Items in flight (item_concurrency > 1: the items wait on I/O) change the sum: a chunk of c
# items with k in flight lasts about c / k item latencies, and each run also pays a ramp (the
# shared HTTP limits finding the server's capacity) and a tail (its last items in flight) of
# about one latency each. So a chunk holds at least AUTO_CHUNK_PER_WORKER items per item in
# flight: 1,000 items at 64 in flight are one run, not runs of 16 items per worker that
# each pay the launch, the ramp and the tail (bench/slow_items.py).
AUTO_CHUNK_MIN = 100
AUTO_CHUNK_MAX = 5000
AUTO_CHUNK_RUNS = 2
AUTO_CHUNK_PER_WORKER = 32


def auto_chunk_size(n_items: int, item_concurrency: int = 1) -> int:
    """The chunk size of a batch of ``n_items`` whose manifest does not set one, with
    ``item_concurrency`` items of a chunk in flight at once."""
    size = max(AUTO_CHUNK_MIN, -(-n_items // AUTO_CHUNK_RUNS))
    if item_concurrency > 1:
        size = max(size, min(item_concurrency * AUTO_CHUNK_PER_WORKER, n_items))
    return min(AUTO_CHUNK_MAX, size)


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


def _attempt(
    attempt_no: int,
    started_at: datetime,
    started: float,
    status: str,
    c: Classified | None = None,
) -> Attempt:
    """The attempt that began at ``started_at`` (``started`` on the monotonic clock) and ends
    now; ``c`` is its error."""
    error = (c.message, c.category, c.severity, c.traceback) if c else (None, None, None, None)
    elapsed_ms = (time.monotonic() - started) * 1000
    return Attempt(attempt_no, started_at, utcnow(), elapsed_ms, status, *error)


@dataclass
class WorkItem:
    batch_id: str
    item_id: str
    partition_key: str
    payload: dict[str, Any]
    previous_attempts: int = 0


@dataclass
class PendingCommit:
    """An item's outcome and the handler's result, waiting for the runner to commit them."""

    outcome: ItemOutcome
    result: ItemResult | None


def _score_after(commit: CommitFn, result: ItemResult, outcome: ItemOutcome) -> CommitFn:
    """The commit, then the result's quality score again: a commit that reads the item's data
    (import's direct load) knows the score only then, and sets ``result.quality_score``."""

    def run(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> str | None:
        status = commit(con, cc)
        outcome.quality_score = result.quality_score
        return status

    return run


def _refused_target(
    spec: OperationSpec, options: BaseModel, work: WorkItem
) -> ValidationItemError | None:
    # Checked at submit too; this catches a batch recorded under older rules, or an old
    # partition materialized by hand.
    for target in spec.item_targets:
        problem = refused_target(target, options, work.item_id, work.payload)
        if problem is not None:
            return ValidationItemError(f"{target.field}: {problem}")
    return None


class ItemRun:
    """One item's attempts, to its final outcome, without touching the warehouse. An item
    whose attempt was abandoned goes on (its retries) in another thread: :meth:`abandon`,
    then :meth:`to_end` there."""

    def __init__(
        self,
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
    ) -> None:
        self.spec, self.work, self.options, self.settings = spec, work, options, settings
        self.run_id, self.paths, self.resources = run_id, paths, resources or {}
        self.batch_stop, self.sleep, self.rng = batch_stop, sleep, rng
        self.outcome = ItemOutcome(
            batch_id=work.batch_id, item_id=work.item_id, status=ItemStatus.FAILED
        )
        self.outcome.started_at = utcnow()
        self.item: Any = None
        self.attempt_no = work.previous_attempts
        self.tries = 0  # attempts made by this run
        self.delay = 0.0  # before the next attempt

    def _refusal(self) -> PendingCommit | None:
        """Validate the payload (it was at submit; a re-run may still differ)."""
        try:
            self.item = self.spec.item_model.model_validate(self.work.payload)
        except Exception as exc:
            refusal: Exception | None = ValueError(f"item payload: {exc}")
        else:
            refusal = _refused_target(self.spec, self.options, self.work)
        if refusal is None:
            return None
        c = classify(refusal)
        now = utcnow()
        attempt = Attempt(
            self.attempt_no + 1, now, now, 0.0, ItemStatus.FAILED,
            c.message, c.category, c.severity, c.traceback,
        )  # fmt: skip
        self.outcome.attempts.append(attempt)
        self.outcome.error, self.outcome.error_category = c.message, c.category
        self.outcome.severity, self.outcome.finished_at = c.severity, now
        return PendingCommit(self.outcome, None)

    def to_end(self, supervisor: Supervisor | None = None) -> PendingCommit:
        """Run the attempts left. Under a ``supervisor`` the deadline and a stopped batch end
        an attempt whatever its handler does; without one, only through ``ctx.check()``."""
        if self.item is None and (refused := self._refusal()) is not None:
            return refused
        while True:
            if self.delay:
                delay, self.delay = self.delay, 0.0
                if self.batch_stop is not None and self.sleep is time.sleep:
                    self.batch_stop.wait(delay)  # wake early if the batch is cancelled
                else:
                    self.sleep(delay)
            self.attempt_no += 1
            self.tries += 1
            ctx = ItemContext(
                batch_id=self.work.batch_id,
                item_id=self.work.item_id,
                partition_key=self.work.partition_key,
                item=self.item,
                options=self.options,
                attempt=self.attempt_no,
                run_id=self.run_id,
                paths=self.paths,
                resources=self.resources,
                **({"batch_stop": self.batch_stop} if self.batch_stop is not None else {}),
            )
            started = time.monotonic()
            if self.settings.item_timeout_s:
                ctx.deadline = started + self.settings.item_timeout_s
                ctx.timeout_s = self.settings.item_timeout_s
            started_at = utcnow()
            try:
                result = self._call(ctx, started, started_at, supervisor)
            except Exception as exc:
                if (final := self._failed(exc, started_at, started)) is not None:
                    return final
                continue
            return self._succeeded(result, started_at, started)

    def _call(
        self, ctx: ItemContext, started: float, started_at: datetime, sv: Supervisor | None
    ) -> ItemResult:
        if sv is None:
            result = self.spec.handler(ctx)
        else:
            a = InFlight(self, ctx, started, started_at)
            sv.begin(a)
            error: Exception | None = None
            try:
                result = self.spec.handler(ctx)
            except Exception as exc:
                error = exc
            finally:
                with a.lock:
                    abandoned, a.state = a.state == "abandoned", "over"
                sv.end(a)
                if abandoned:  # whatever the handler did at last, the item is not ours
                    raise AttemptAbandoned(self.work.item_id)
            if a.stop_error is not None:
                raise a.stop_error
            if error is not None:
                raise error
        if not isinstance(result, ItemResult):
            raise TypeError(
                f"{self.spec.name} handler returned {type(result).__name__}, not ItemResult"
            )
        return result

    def abandon(self, a: InFlight) -> PendingCommit | None:
        """Settle the item whose attempt ``a`` was abandoned: its final outcome, or None when
        it is to be retried (call :meth:`to_end` again, in another thread)."""
        assert a.stop_error is not None
        return self._failed(a.stop_error, a.started_at, a.started)

    def _failed(self, exc: Exception, started_at: datetime, started: float) -> PendingCommit | None:
        c = classify(exc)
        outcome = self.outcome
        outcome.record(_attempt(self.attempt_no, started_at, started, ItemStatus.FAILED, c))
        if c.category == CANCELLED:
            outcome.status = ItemStatus.CANCELLED
            outcome.attempts[-1].outcome = ItemStatus.CANCELLED
            return PendingCommit(outcome, None)
        stopping = self.batch_stop is not None and self.batch_stop.is_set()
        if not c.retryable or self.tries > self.settings.max_retries or stopping:
            return PendingCommit(outcome, None)
        self.delay = backoff_delay(self.settings, self.tries, self.rng)
        log.info(
            "item %s attempt %d failed (%s), retrying in %.2fs",
            self.work.item_id, self.attempt_no, c.category, self.delay,
        )  # fmt: skip
        return None

    def _succeeded(self, result: ItemResult, started_at: datetime, started: float) -> PendingCommit:
        outcome = self.outcome
        outcome.record(_attempt(self.attempt_no, started_at, started, result.status))
        outcome.result = result.metrics
        outcome.quality_score = result.quality_score
        if isinstance(result.commit, RowsCommit):
            # Keep the rows visible to the runner (written in bulk); wrap the commit after them.
            if result.commit.then is not None:
                result.commit.then = _score_after(result.commit.then, result, outcome)
        elif result.commit is not None:
            result.commit = _score_after(result.commit, result, outcome)
        return PendingCommit(outcome, result)


def run_item(
    spec: OperationSpec,
    work: WorkItem,
    options: BaseModel,
    settings: ExecutionSettings,
    **kw: Any,
) -> PendingCommit:
    """Run one item to its final outcome (all attempts) in this thread, without touching the
    warehouse and without a supervisor (the timeout holds through ``ctx.check()``);
    :func:`~batch_pipelines.core.runner.run_chunk` supervises its items."""
    return ItemRun(spec, work, options, settings, **kw).to_end()
