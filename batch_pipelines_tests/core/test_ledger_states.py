"""The batch state machine, without a warehouse: guards against a status derived from item
counts that the transition table forbids, a stopped or cancelled batch changing status, a
batch that failed because all its items failed not being recomputed when they are re-run,
and a stop (first error, error budget) that does not cancel the pending items."""

from __future__ import annotations

import itertools

import pytest

from batch_pipelines.core.ledger import BatchStatus, ItemStatus
from batch_pipelines.core.ledger.states import (
    TRANSITIONS,
    ItemCounts,
    TransitionError,
    can_transition,
    check_transition,
    refresh,
    resumed_status,
)

S = BatchStatus


def no_failure() -> tuple[str, str | None]:
    raise AssertionError("first_failure is only asked when the batch stops on its first error")


def derive(current: str, counts: ItemCounts, total: int | None = None, **kw):  # noqa: ANN003, ANN201
    total = sum(vars(counts).values()) if total is None else total
    return refresh(
        current,
        counts,
        total=total,
        paused=kw.pop("paused", False),
        stopped=kw.pop("stopped", False),
        settings=kw.pop("settings", {}),
        first_failure=kw.pop("first_failure", no_failure),
    )


def test_counts_from_a_group_by() -> None:
    c = ItemCounts.from_mapping({"succeeded": 3, "failed": 1, "running": 2, "other": 9})
    assert c == ItemCounts(succeeded=3, failed=1, running=2)
    assert c.processed == 4
    assert set(vars(c)) == {s.value for s in ItemStatus}


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (ItemCounts(succeeded=3), S.COMPLETED),
        (ItemCounts(succeeded=2, skipped=1), S.COMPLETED),
        (ItemCounts(succeeded=2, failed=1), S.COMPLETED_WITH_ERRORS),
        (ItemCounts(skipped=2, cancelled=1), S.COMPLETED_WITH_ERRORS),
        (ItemCounts(failed=2, cancelled=1), S.FAILED),
        (ItemCounts(succeeded=1, pending=2), S.RUNNING),
        (ItemCounts(running=1, pending=2), S.RUNNING),
        (ItemCounts(pending=3), S.QUEUED),
    ],
)
def test_status_from_counts(counts: ItemCounts, expected: BatchStatus) -> None:
    r = derive(S.QUEUED, counts)
    assert r.status == expected
    assert r.finished == (expected in (S.COMPLETED, S.COMPLETED_WITH_ERRORS, S.FAILED))
    assert not r.stopped and not r.cancel_pending
    if expected == S.FAILED:
        assert r.error == "all 3 items failed or were cancelled" and not r.clear_error
    else:
        assert r.error is None
        assert r.clear_error == (expected != S.QUEUED)


def test_empty_batch_completes() -> None:
    assert derive(S.QUEUED, ItemCounts(), total=0).status == S.COMPLETED


def test_paused_shows_once_nothing_runs() -> None:
    assert derive(S.RUNNING, ItemCounts(running=1, pending=2), paused=True).status == S.RUNNING
    assert derive(S.RUNNING, ItemCounts(succeeded=1, pending=2), paused=True).status == S.PAUSED
    # Finishing wins over pausing.
    assert derive(S.RUNNING, ItemCounts(succeeded=3), paused=True).status == S.COMPLETED


def test_stop_on_first_error_cancels_pending_items() -> None:
    r = derive(
        S.RUNNING,
        ItemCounts(succeeded=1, failed=1, pending=2),
        settings={"continue_on_error": False},
        first_failure=lambda: ("b", "bad input"),
    )
    assert r.status == S.FAILED and r.stopped and r.cancel_pending and r.finished
    assert r.error == "stopped on first error (continue_on_error is false): item b: bad input"
    assert r.counts == ItemCounts(succeeded=1, failed=1, cancelled=2)


def test_error_budget() -> None:
    under = derive(
        S.RUNNING, ItemCounts(succeeded=8, failed=2), settings={"max_failure_ratio": 0.2}
    )
    assert under.status == S.COMPLETED_WITH_ERRORS and not under.stopped
    over = derive(
        S.RUNNING,
        ItemCounts(succeeded=5, failed=3, running=1, pending=1),
        settings={"max_failure_ratio": 0.2},
    )
    assert over.status == S.FAILED and over.stopped
    assert over.error == "error budget exceeded: 3 of 10 items failed (max_failure_ratio 0.2)"
    assert over.counts.cancelled == 1 and over.counts.pending == 0
    assert not over.finished  # an item still runs: completed_at waits for it


@pytest.mark.parametrize("current", [S.FAILED, S.CANCELLED, S.COMPLETED])
def test_a_stopped_batch_keeps_its_status(current: BatchStatus) -> None:
    r = derive(current, ItemCounts(succeeded=3), stopped=True)
    assert r.status == current and r.error is None and not r.clear_error
    assert r.counts == ItemCounts(succeeded=3) and r.finished


def test_a_cancelled_batch_keeps_its_status_even_unflagged() -> None:
    assert derive(S.CANCELLED, ItemCounts(succeeded=3)).status == S.CANCELLED


def test_rerun_items_of_a_finished_batch_recompute_it() -> None:
    # "failed" because every item failed is not a stop: re-running them recomputes it.
    r = derive(S.FAILED, ItemCounts(succeeded=2, failed=1))
    assert r.status == S.COMPLETED_WITH_ERRORS and r.clear_error
    assert derive(S.FAILED, ItemCounts(succeeded=3)).status == S.COMPLETED
    assert derive(S.COMPLETED_WITH_ERRORS, ItemCounts(succeeded=3)).status == S.COMPLETED
    assert derive(S.COMPLETED, ItemCounts(succeeded=2, running=1)).status == S.RUNNING


def test_every_derived_status_is_an_allowed_transition() -> None:
    grid = itertools.product(BatchStatus, range(3), range(2), range(3), range(2), range(2))
    for current, pending, running, succeeded, failed, cancelled in grid:
        counts = ItemCounts(
            pending=pending,
            running=running,
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
        )
        for paused, stopped, settings in itertools.product(
            (False, True), (False, True), ({}, {"continue_on_error": False})
        ):
            r = derive(
                current,
                counts,
                paused=paused,
                stopped=stopped,
                settings=settings,
                first_failure=lambda: ("x", "e"),
            )
            assert can_transition(current, r.status, stopped=stopped), (current, counts, r)


def test_transition_table() -> None:
    assert can_transition(S.PENDING, S.QUEUED)
    assert can_transition(S.QUEUED, S.CANCELLED)
    assert can_transition(S.PAUSED, S.QUEUED)
    assert can_transition(S.FAILED, S.RUNNING)  # its items are re-run
    assert not can_transition(S.FAILED, S.RUNNING, stopped=True)
    assert not can_transition(S.RUNNING, S.QUEUED)
    assert not can_transition(S.COMPLETED, S.CANCELLED)
    assert TRANSITIONS[S.CANCELLED] == frozenset()
    assert all(can_transition(s, s, stopped=True) for s in BatchStatus)
    with pytest.raises(TransitionError, match="a cancelled batch cannot become queued"):
        check_transition("cancelled", "queued")
    with pytest.raises(TransitionError, match=r"a failed \(stopped\) batch cannot become running"):
        check_transition("failed", "running", stopped=True)


def test_resumed_status() -> None:
    assert resumed_status(S.PAUSED, 0) == S.QUEUED
    assert resumed_status(S.PAUSED, 4) == S.RUNNING
    assert resumed_status(S.RUNNING, 4) == S.RUNNING  # still draining when resumed


def test_statuses_are_the_stored_strings() -> None:
    assert S.COMPLETED_WITH_ERRORS == "completed_with_errors"
    assert f"batch_{S.PAUSED}" == "batch_paused"
    assert [s.value for s in ItemStatus] == [
        "pending",
        "running",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
    ]
