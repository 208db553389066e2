"""The ledger's vocabulary: statuses, the rows of ``batches`` and ``batch_items``, and what a
run reports about an item (its outcome and attempts).

Statuses are ``StrEnum`` members whose values are the strings stored in the warehouse, so they
compare equal to those strings and serialise to them in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self

TABLES = ("batches", "batch_items", "item_attempts", "batch_events")


class BatchStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A finished batch whose writes were undone (``rollback``): nothing changes it any more.
    ROLLED_BACK = "rolled_back"
    # Its canary items were out of the limits of settings.canary: the rest never started,
    # until a person resumes it (which releases the rest anyway).
    CANARY_FAILED = "canary_failed"


class ItemStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


def _values(*statuses: StrEnum) -> tuple[str, ...]:
    return tuple(s.value for s in statuses)


# Plain strings (the values), as option choices and messages want them.
TERMINAL_ITEM_STATUSES = _values(
    ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.SKIPPED, ItemStatus.CANCELLED
)
ITEM_STATUSES = _values(*ItemStatus)
TERMINAL_BATCH_STATUSES = _values(
    BatchStatus.COMPLETED,
    BatchStatus.COMPLETED_WITH_ERRORS,
    BatchStatus.FAILED,
    BatchStatus.CANCELLED,
    BatchStatus.ROLLED_BACK,
)
BATCH_STATUSES = _values(*BatchStatus)
# Not finished, yet nothing of it runs until a person acts (``resume`` or ``cancel``): what
# waiting for a batch stops at too.
HALTED_BATCH_STATUSES = _values(BatchStatus.CANARY_FAILED)
ACTIVE_BATCH_STATUSES = _values(BatchStatus.QUEUED, BatchStatus.RUNNING, BatchStatus.PAUSED)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


def from_json(text: str | None, empty: Any = None) -> Any:
    return json.loads(text) if text else empty


@dataclass
class Attempt:
    attempt: int
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    outcome: str  # an ItemStatus other than pending/running
    error: str | None = None
    error_category: str | None = None
    severity: str | None = None
    traceback: str | None = None


@dataclass
class ItemOutcome:
    """What happened to one item in one run: its final status and every attempt."""

    batch_id: str
    item_id: str
    status: str  # an ItemStatus
    attempts: list[Attempt] = field(default_factory=list)
    result: dict[str, Any] | None = None
    quality_score: float | None = None
    error: str | None = None
    error_category: str | None = None
    severity: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_ms(self) -> float | None:
        if not self.attempts:
            return None
        return sum(a.duration_ms for a in self.attempts)

    def record(self, attempt: Attempt) -> None:
        """Add ``attempt`` as the latest: its outcome, error and end become the item's."""
        self.attempts.append(attempt)
        self.status = attempt.outcome
        self.error = attempt.error
        self.error_category = attempt.error_category
        self.severity = attempt.severity
        self.finished_at = attempt.finished_at


class _Row:
    """A ledger row as a dataclass with its ``status`` as an enum; the public reads give the
    same row as a dict with the status as a plain string."""

    status_type: ClassVar[type[StrEnum]]

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Self:
        """From the dict the public reads (:func:`~.reads.get_batch`, ``get_items``) return."""
        return cls(**{**row, "status": cls.status_type(row["status"])})

    def to_dict(self) -> dict[str, Any]:
        """The row as the public reads return it (the status as a plain string)."""
        row = dict(self.__dict__)
        row["status"] = str(row["status"])
        return row


@dataclass
class Batch(_Row):
    """A row of ``batches``: what was submitted, its counts, progress and status.

    ``stopped`` is set when the batch was stopped (cancelled, stopped on its first error, over
    its error budget): its status then no longer follows its items. A batch that failed
    because every item failed is not stopped, and re-running its items recomputes it.
    """

    batch_id: str
    operation: str
    name: str
    status: BatchStatus
    priority: str
    total_items: int
    processed_items: int
    succeeded_items: int
    failed_items: int
    skipped_items: int
    cancelled_items: int
    progress: float
    options: dict[str, Any]
    settings: dict[str, Any]
    submitted_by: str | None
    source: str | None
    parent_batch_id: str | None
    chunk_count: int
    paused: bool
    stopped: bool
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime | None
    error: str | None
    correlation_id: str | None = None
    template: str | None = None
    canary_chunks: int | None = None
    canary_status: str | None = None
    gate_round: int | None = None
    gate_status: str | None = None

    status_type: ClassVar[type[StrEnum]] = BatchStatus


@dataclass
class Item(_Row):
    """A row of ``batch_items``: one item of a batch, its payload and its latest outcome."""

    batch_id: str
    item_id: str
    seq: int
    chunk_no: int
    partition_key: str
    payload: dict[str, Any] | None
    status: ItemStatus
    attempts: int
    duration_ms: float | None
    quality_score: float | None
    result: dict[str, Any] | None
    error: str | None
    error_category: str | None
    severity: str | None
    started_at: datetime | None
    finished_at: datetime | None
    run_id: str | None

    status_type: ClassVar[type[StrEnum]] = ItemStatus


@dataclass(frozen=True)
class BatchFilter:
    """Which batches a listing returns, newest first: any of ``status``, any of
    ``operation``, created in [``created_after``, ``created_before``), a page of ``limit``
    (1 to 100) rows from ``offset``. A bad value raises ValueError when the filter is made."""

    status: Iterable[str] = ()
    operation: Iterable[str] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = 50
    offset: int = 0

    LIMIT_MAX: ClassVar[int] = 100

    def __post_init__(self) -> None:
        # Frozen, and iterables become tuples so the filter can be read more than once.
        object.__setattr__(self, "status", tuple(self.status or ()))
        object.__setattr__(self, "operation", tuple(self.operation or ()))
        if not 1 <= self.limit <= self.LIMIT_MAX:
            raise ValueError(f"limit must be between 1 and {self.LIMIT_MAX}, got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"offset must be 0 or more, got {self.offset}")
        for s in self.status:
            if s not in BATCH_STATUSES:
                raise ValueError(f"status {s!r} is not one of {', '.join(BATCH_STATUSES)}")


def column_list(model: type[Batch] | type[Item]) -> str:
    """The select list of a model's table, JSON columns read as text."""
    json_columns = {"options", "settings", "payload", "result"}
    return ", ".join(
        f"{f.name}::varchar as {f.name}" if f.name in json_columns else f.name
        for f in fields(model)
    )
