"""The ledger's vocabulary: statuses, the rows of ``batches`` and ``batch_items``, and what a
run reports about an item (its outcome and attempts).

Statuses are ``StrEnum`` members whose values are the strings stored in the warehouse, so they
compare equal to those strings and serialise to them in JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

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
)
BATCH_STATUSES = _values(*BatchStatus)
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


@dataclass
class Batch:
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

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Batch:
        """From the dict :func:`~.reads.get_batch` returns."""
        return cls(**{**row, "status": BatchStatus(row["status"])})

    def to_dict(self) -> dict[str, Any]:
        """The row as the public reads return it (statuses as plain strings)."""
        row = dict(self.__dict__)
        row["status"] = str(self.status)
        return row


@dataclass
class Item:
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

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Item:
        """From a dict :func:`~.reads.get_items` returns."""
        return cls(**{**row, "status": ItemStatus(row["status"])})

    def to_dict(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        row["status"] = str(self.status)
        return row


def column_list(model: type[Batch] | type[Item]) -> str:
    """The select list of a model's table, JSON columns read as text."""
    json_columns = {"options", "settings", "payload", "result"}
    return ", ".join(
        f"{f.name}::varchar as {f.name}" if f.name in json_columns else f.name
        for f in fields(model)
    )
