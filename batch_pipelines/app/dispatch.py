"""Which chunk runs to launch next, decided by a pure function.

Launch mechanism: the ``batch_dispatcher`` sensor emits one ``RunRequest`` per chunk with the
tags ``dagster/asset_partition_range_start``/``_end`` over the chunk's consecutive partition
keys. Sensor run requests go through the run queue, so ``dagster/priority``, the per-operation
tag limits, pools and run retries of ``dagster.yaml`` apply; one run covers ``chunk_size``
items, which costs tens of milliseconds per item instead of seconds per run. Backfills were
the alternative, but a backfill's chunking is fixed per asset (its backfill policy) while
chunk size, pause, cancel and per-batch concurrency are per batch; the sensor decides those
from the ledger and Dagster's run storage on every tick. Deterministic run keys
(``<batch>:<chunk>:<launch>``) make a repeated tick launch nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batch_pipelines.core.gates import CANARY_TAG
from batch_pipelines.core.manifest import PRIORITIES

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
# RETRY_PENDING: a failed run that Dagster's run retry daemon is about to re-launch.
ACTIVE_RUN_STATUSES = frozenset(
    {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING", "RETRY_PENDING"}
)
MAX_LAUNCHES_PER_CHUNK = 3
# How long a failed run tagged ``dagster/will_retry=true`` holds its chunk while Dagster's run
# retry daemon has not launched its retry (it does so within seconds when it runs at all).
RETRY_LAUNCH_GRACE_S = 120.0


def planning_status(
    status: str,
    *,
    will_retry: bool,
    retry_launched: bool,
    in_process: bool,
    failed_s_ago: float,
    grace_s: float | None = None,
) -> str:
    """The status the planners see for a run: ``RETRY_PENDING`` for a failed run whose
    automatic retry may still come, else Dagster's status.

    A retry never comes for a run executed in a process (``submit --wait``: it has no code
    location to re-launch from), nor once ``grace_s`` (default ``RETRY_LAUNCH_GRACE_S``) has
    passed without one (the retry daemon is not running, or gave up): such a run is a plain
    failure, so its chunk is planned again instead of waiting forever."""
    grace_s = RETRY_LAUNCH_GRACE_S if grace_s is None else grace_s
    if (
        status == "FAILURE"
        and will_retry
        and not retry_launched
        and not in_process
        and failed_s_ago < grace_s
    ):
        return "RETRY_PENDING"
    return status


# Aging raises a waiting chunk one level per interval, up to this level (never to critical).
AGING_CEILING = "high"
_LEVELS = sorted(PRIORITIES, key=PRIORITIES.__getitem__)


def aged_priority(priority: str, waited_s: float, aging_s: float | None) -> str:
    """The priority of a chunk that has waited ``waited_s``: one level higher per ``aging_s``
    waited, up to ``AGING_CEILING``; a priority at or above it stays (None: no aging)."""
    ceiling = _LEVELS.index(AGING_CEILING)
    level = _LEVELS.index(priority)
    if not aging_s or waited_s < aging_s or level >= ceiling:
        return priority
    return _LEVELS[min(level + int(waited_s // aging_s), ceiling)]


@dataclass(frozen=True)
class QueuedRun:
    """A chunk run waiting in Dagster's run queue, with the ``dagster/priority`` it has."""

    run_id: str
    batch_id: str
    tag_priority: int
    queued_s: float  # how long it has been in the queue


def plan_run_priorities(
    queued: Iterable[QueuedRun],
    batch_priority: Mapping[str, str],
    aging_s: float | None,
    batch_waiting: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """``{run_id: dagster/priority}`` for queued runs whose priority tag is not the one their
    batch gives them now: its priority (re-prioritised since the run was queued), aged by how
    long the chunk has waited (since its batch was queued, as :func:`plan_launches` ages it,
    or since the run was queued if longer). Dagster's run queue reads the tag each time it
    dequeues."""
    out = {}
    waiting = batch_waiting or {}
    for run in queued:
        base = batch_priority.get(run.batch_id)
        if base is None:
            continue
        waited = max(run.queued_s, waiting.get(run.batch_id, 0.0))
        want = PRIORITIES[aged_priority(base, waited, aging_s)]
        if want != run.tag_priority:
            out[run.run_id] = want
    return out


@dataclass(frozen=True)
class ChunkState:
    batch_id: str
    operation: str
    priority: str
    chunk_no: int
    first_key: str
    last_key: str
    pending: int
    max_concurrency: int | None = None
    item_timeout_s: float | None = None
    chunk_items: int = 0
    waiting_s: float = 0.0  # since its batch was queued
    canary: bool = False  # one of the batch's canary chunks (settings.canary)
    gated: bool = False  # its batch has settings.quality_gate


# Items a run left pending for the next run of its chunk: its time slice ended, or Ctrl-C /
# SIGTERM stopped `submit --wait`.
HANDED_OVER_TAG = "batch/handed_over"


@dataclass(frozen=True)
class RunState:
    batch_id: str
    chunk_no: int
    status: str  # DagsterRunStatus name
    is_retry: bool = False
    # The run used its time slice and left items for the next run: it made progress, so its
    # failure (some item failed) does not count against the chunk's launches.
    handed_over: bool = False

    @property
    def failed_without_progress(self) -> bool:
        return not self.is_retry and self.status == "FAILURE" and not self.handed_over


@dataclass(frozen=True)
class ReapDecision:
    """Items left ``running`` by a run that has ended: run them again, or give up."""

    batch_id: str
    chunk_no: int
    run_id: str
    action: str  # "requeue" | "fail"
    reason: str


def plan_reaping(
    running: Iterable[tuple[str, int, str]],
    run_status: Mapping[str, str | None],
    runs: Iterable[RunState],
) -> list[ReapDecision]:
    """For (batch, chunk, run_id) groups of items still ``running`` in the ledger, decide what
    to do when their run is over (crashed, killed or cancelled) and no other run of the
    chunk is active: put them back to ``pending`` so the chunk is launched again, or fail
    them once the chunk has failed ``MAX_LAUNCHES_PER_CHUNK`` times. A run missing from
    Dagster's storage (deleted, or an in-process run of a process that died) counts as over."""
    active_chunks = {(r.batch_id, r.chunk_no) for r in runs if r.status in ACTIVE_RUN_STATUSES}
    failures: dict[tuple[str, int], int] = {}
    for r in runs:
        if r.failed_without_progress:
            failures[(r.batch_id, r.chunk_no)] = failures.get((r.batch_id, r.chunk_no), 0) + 1
    out = []
    for batch_id, chunk_no, run_id in running:
        status = run_status.get(run_id)
        if status in ACTIVE_RUN_STATUSES or (batch_id, chunk_no) in active_chunks:
            continue
        reason = f"run {run_id} is {status.lower() if status else 'gone'}"
        if failures.get((batch_id, chunk_no), 0) >= MAX_LAUNCHES_PER_CHUNK:
            out.append(
                ReapDecision(
                    batch_id,
                    chunk_no,
                    run_id,
                    "fail",
                    f"{reason}; chunk failed {MAX_LAUNCHES_PER_CHUNK} times",
                )
            )
        else:
            out.append(ReapDecision(batch_id, chunk_no, run_id, "requeue", reason))
    return out


@dataclass(frozen=True)
class Launch:
    batch_id: str
    chunk_no: int
    job_name: str
    run_key: str
    tags: dict[str, str]
    operation: str = ""
    gated: bool = False  # the run evaluates the quality-gate check


def chunk_tags(
    batch_id: str,
    operation: str,
    priority: str,
    chunk_no: int,
    first_key: str,
    last_key: str,
    run_priority: str | None = None,
    canary: bool = False,
) -> dict[str, str]:
    """A chunk run's tags; ``run_priority`` (the batch's priority, aged) orders the queue;
    a canary chunk is tagged ``batch/canary=true`` so the UI shows it apart."""
    tags = {
        RANGE_START: first_key,
        RANGE_END: last_key,
        "dagster/priority": str(PRIORITIES[run_priority or priority]),
        "batch/id": batch_id,
        "batch/operation": operation,
        "batch/chunk": str(chunk_no),
        "batch/priority": priority,
    }
    if canary:
        tags[CANARY_TAG] = "true"
    return tags


def plan_launches(
    chunks: Sequence[ChunkState],
    runs: Iterable[RunState],
    *,
    max_launches: int = 200,
    aging_s: float | None = None,
) -> list[Launch]:
    """Chunks with pending items and no active run, in priority order (each batch's priority
    aged by how long the chunk has waited, see :func:`aged_priority`), within each batch's
    ``max_concurrency``. A chunk whose runs failed ``MAX_LAUNCHES_PER_CHUNK`` times without
    finishing its items is not launched again (runs cancelled by a pause do not count)."""
    active: dict[str, int] = {}
    chunk_active: set[tuple[str, int]] = set()
    launches_so_far: dict[tuple[str, int], int] = {}
    failures: dict[tuple[str, int], int] = {}
    for r in runs:
        key = (r.batch_id, r.chunk_no)
        if r.status in ACTIVE_RUN_STATUSES:
            active[r.batch_id] = active.get(r.batch_id, 0) + 1
            chunk_active.add(key)
        if not r.is_retry:
            launches_so_far[key] = launches_so_far.get(key, 0) + 1
            if r.failed_without_progress:
                failures[key] = failures.get(key, 0) + 1
    aged = {
        (c.batch_id, c.chunk_no): aged_priority(c.priority, c.waiting_s, aging_s) for c in chunks
    }
    ordered = sorted(
        chunks, key=lambda c: (-PRIORITIES[aged[(c.batch_id, c.chunk_no)]], c.batch_id, c.chunk_no)
    )
    out: list[Launch] = []
    for c in ordered:
        if len(out) >= max_launches:
            break
        if c.pending <= 0 or (c.batch_id, c.chunk_no) in chunk_active:
            continue
        if c.max_concurrency is not None and active.get(c.batch_id, 0) >= c.max_concurrency:
            continue
        n = launches_so_far.get((c.batch_id, c.chunk_no), 0)
        if failures.get((c.batch_id, c.chunk_no), 0) >= MAX_LAUNCHES_PER_CHUNK:
            continue
        tags = chunk_tags(
            c.batch_id,
            c.operation,
            c.priority,
            c.chunk_no,
            c.first_key,
            c.last_key,
            aged[(c.batch_id, c.chunk_no)],
            canary=c.canary,
        )
        if c.item_timeout_s and c.chunk_items:
            # A run-level guard: every item at its timeout plus generous slack.
            tags["dagster/max_runtime"] = str(int(c.item_timeout_s * c.chunk_items * 1.5 + 300))
        out.append(
            Launch(
                batch_id=c.batch_id,
                chunk_no=c.chunk_no,
                job_name=f"{c.operation}_job",
                run_key=f"{c.batch_id}:{c.chunk_no}:{n}",
                tags=tags,
                operation=c.operation,
                gated=c.gated,
            )
        )
        active[c.batch_id] = active.get(c.batch_id, 0) + 1
    return out


def chunk_states(
    rows: Iterable[Mapping[str, Any]], now: datetime | None = None
) -> list[ChunkState]:
    """Build ChunkStates from ``ledger.launchable_chunks`` rows (``now``: naive UTC, as the
    ledger's timestamps, to tell how long each chunk has waited)."""

    def waited(row: Mapping[str, Any]) -> float:
        queued_at = row.get("queued_at")
        if now is None or queued_at is None:
            return 0.0
        return max(0.0, (now - queued_at).total_seconds())

    return [
        ChunkState(
            batch_id=r["batch_id"],
            operation=r["operation"],
            priority=r["priority"],
            chunk_no=int(r["chunk_no"]),
            first_key=r["first_key"],
            last_key=r["last_key"],
            pending=int(r["pending"]),
            max_concurrency=r.get("max_concurrency"),
            item_timeout_s=r.get("item_timeout_s"),
            chunk_items=int(r.get("items") or 0),
            waiting_s=waited(r),
            canary=bool(r.get("canary")),
            gated=bool(r.get("gated")),
        )
        for r in rows
    ]
