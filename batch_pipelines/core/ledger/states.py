"""The batch state machine, pure: which status changes are allowed, and what status a batch
has given its item counts, settings and flags. No SQL here; :mod:`.store` reads the counts,
asks :func:`refresh` and writes the answer.

A batch is ``pending`` while it is being recorded, ``queued`` once its partitions exist,
``running`` once an item started, and finishes ``completed``, ``completed_with_errors``,
``failed`` or ``cancelled``; a finished batch whose writes were undone becomes
``rolled_back``, after which nothing changes it. ``paused`` is a flag the status shows once no item is running.
A batch with a canary becomes ``canary_failed`` when its canary items are out of their limits:
nothing else of it runs until ``resume`` releases the rest (back to ``running``).
A finished batch whose items are re-run (e.g. from the Dagster UI) is recomputed, unless it
was *stopped*: cancelled, stopped on its first error or over its error budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from batch_pipelines.core.gates import (
    CANARY_FAILED,
    CANARY_PASSED,
    CANARY_RUNNING,
    CanaryProbe,
    CanarySettings,
    canary_verdict,
)
from batch_pipelines.core.ledger.models import TERMINAL_BATCH_STATUSES, BatchStatus, ItemStatus

_S = BatchStatus
_FINISHED = frozenset(BatchStatus(s) for s in TERMINAL_BATCH_STATUSES)
# A recomputed batch can reach any finished status from an open one: a refresh may find its
# last items done (by this run, another chunk's run or the reaper).
_RERUN = frozenset({_S.RUNNING, _S.PAUSED, _S.COMPLETED, _S.COMPLETED_WITH_ERRORS, _S.FAILED})
TRANSITIONS: Mapping[BatchStatus, frozenset[BatchStatus]] = {
    _S.PENDING: frozenset({_S.QUEUED, _S.RUNNING, _S.PAUSED, *_FINISHED}),
    _S.QUEUED: frozenset({_S.RUNNING, _S.PAUSED, _S.CANARY_FAILED, *_FINISHED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.CANARY_FAILED, *_FINISHED}),
    _S.PAUSED: frozenset({_S.QUEUED, _S.RUNNING, _S.CANARY_FAILED, *_FINISHED}),
    # Resume releases the rest anyway (running); cancel stops it. Not finished: its other
    # items are still pending.
    _S.CANARY_FAILED: frozenset({_S.RUNNING, _S.CANCELLED}),
    # Re-running items of a finished batch that was not stopped recomputes it.
    _S.COMPLETED: _RERUN,
    _S.COMPLETED_WITH_ERRORS: _RERUN,
    _S.FAILED: _RERUN,
    _S.CANCELLED: frozenset(),
    _S.ROLLED_BACK: frozenset(),
}


class TransitionError(ValueError):
    """A status change the state machine does not allow."""


def is_final(status: str, *, stopped: bool) -> bool:
    """Whether nothing changes this batch's status any more (cancelled, rolled back or
    stopped)."""
    return stopped or status in (_S.CANCELLED, _S.ROLLED_BACK)


def is_finished(status: str) -> bool:
    return status in _FINISHED


def can_transition(current: str, new: str, *, stopped: bool = False) -> bool:
    """Whether a batch may go from ``current`` to ``new`` (staying put is always allowed)."""
    if current == new:
        return True
    if new == _S.ROLLED_BACK:
        # Any finished batch may be rolled back, stopped or not; an open one never.
        return is_finished(current) and current != _S.ROLLED_BACK
    if is_final(current, stopped=stopped):
        return False
    return BatchStatus(new) in TRANSITIONS[BatchStatus(current)]


def check_transition(current: str, new: str, *, stopped: bool = False) -> None:
    if not can_transition(current, new, stopped=stopped):
        why = " (stopped)" if stopped and current != _S.CANCELLED else ""
        raise TransitionError(f"a {current}{why} batch cannot become {new}")


def resumed_status(current: str, processed_items: int) -> BatchStatus:
    """The status of a batch whose pause is lifted: a paused batch goes back to running if it
    has processed items, to queued if not; any other status stays."""
    if current != _S.PAUSED:
        return BatchStatus(current)
    return _S.RUNNING if processed_items > 0 else _S.QUEUED


@dataclass(frozen=True)
class ItemCounts:
    """How many of a batch's items are in each status."""

    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int]) -> ItemCounts:
        return cls(**{s.value: int(counts.get(s.value, 0)) for s in ItemStatus})

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.skipped + self.cancelled


@dataclass(frozen=True)
class Refresh:
    """What :func:`refresh` decided for a batch.

    ``counts`` are those after ``cancel_pending`` (the store cancels the pending items of a
    batch that stops). ``error`` is the batch's new error message; None keeps the old one,
    ``clear_error`` removes it. ``finished`` stamps ``completed_at``.
    """

    status: BatchStatus
    counts: ItemCounts
    error: str | None = None
    clear_error: bool = False
    stopped: bool = False
    cancel_pending: bool = False
    finished: bool = False
    # The batch's new canary_status (None: unchanged) and what its check measured.
    canary_status: str | None = None
    detail: dict[str, Any] | None = None


def refresh(
    current: str,
    counts: ItemCounts,
    *,
    total: int,
    paused: bool,
    stopped: bool,
    settings: Mapping[str, Any],
    first_failure: Callable[[], tuple[str, str | None]],
    canary_status: str | None = None,
    canary: Callable[[], CanaryProbe] | None = None,
) -> Refresh:
    """A batch's status from its item counts.

    The error budget (``max_failure_ratio``) and stop-on-first-error (``continue_on_error``
    false) stop the batch: it becomes ``failed`` and stopped, its pending items cancelled.
    ``first_failure`` returns (item_id, error) of the batch's earliest failed item; it is only
    called to word the stop-on-first-error message.

    While the canary runs (``canary_status`` running), ``canary`` returns its items as they
    are; once they are all done, out of the limits of ``settings.canary`` the batch becomes
    ``canary_failed`` (its pending items stay pending: ``resume`` releases them), within them
    the canary has passed and the batch goes on.
    """
    status = BatchStatus(current)
    if is_final(status, stopped=stopped):
        return Refresh(status, counts, finished=status in _FINISHED and counts.running == 0)
    if status == _S.CANARY_FAILED:
        # Frozen until a person resumes (or cancels) it: nothing of it runs meanwhile.
        return Refresh(status, counts)
    reason = _stop_reason(counts, total, settings, first_failure)
    if reason is not None:
        counts = replace(counts, cancelled=counts.cancelled + counts.pending, pending=0)
        return Refresh(
            _S.FAILED,
            counts,
            error=reason,
            stopped=True,
            cancel_pending=True,
            finished=counts.running == 0,
        )
    new_canary, detail = None, None
    if canary_status == CANARY_RUNNING and canary is not None and settings.get("canary"):
        probe = canary()
        if probe.done:
            verdict = canary_verdict(CanarySettings.model_validate(settings["canary"]), probe)
            detail = verdict.detail
            if not verdict.passed:
                return Refresh(
                    _S.CANARY_FAILED,
                    counts,
                    error=verdict.reason,
                    canary_status=CANARY_FAILED,
                    detail=detail,
                )
            new_canary = CANARY_PASSED
    new, error = _from_counts(status, counts, total, paused)
    clear = new in (_S.COMPLETED, _S.COMPLETED_WITH_ERRORS, _S.RUNNING)
    return Refresh(
        new,
        counts,
        error=None if clear else error,
        clear_error=clear,
        finished=new in _FINISHED and counts.running == 0,
        canary_status=new_canary,
        detail=detail,
    )


def _stop_reason(
    counts: ItemCounts,
    total: int,
    settings: Mapping[str, Any],
    first_failure: Callable[[], tuple[str, str | None]],
) -> str | None:
    if counts.failed and not settings.get("continue_on_error", True):
        item_id, error = first_failure()
        return f"stopped on first error (continue_on_error is false): item {item_id}: {error}"
    ratio = settings.get("max_failure_ratio")
    if ratio is not None and total and counts.failed / total > ratio:
        return (
            f"error budget exceeded: {counts.failed} of {total} items failed "
            f"(max_failure_ratio {ratio})"
        )
    return None


def _from_counts(
    status: BatchStatus, counts: ItemCounts, total: int, paused: bool
) -> tuple[BatchStatus, str | None]:
    if total and counts.processed >= total:
        if counts.failed == 0 and counts.cancelled == 0:
            return _S.COMPLETED, None
        if counts.succeeded + counts.skipped == 0:
            return _S.FAILED, f"all {total} items failed or were cancelled"
        return _S.COMPLETED_WITH_ERRORS, None
    if total == 0:
        return _S.COMPLETED, None
    if paused and counts.running == 0:
        return _S.PAUSED, None
    if counts.running or counts.processed:
        return _S.RUNNING, None
    return status, None
