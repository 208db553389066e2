"""Canary batches and quality gates: their settings and the pure decisions behind them.

A canary runs a few items spread across the batch before the rest (see
:func:`canary_positions`); once they are all done, :func:`canary_verdict` says whether the
rest may run. A quality gate sends the items that succeeded with a low quality score back as a
linked child batch with other options (a "second opinion"), up to ``max_rounds`` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

# canary_status of a batch (batches.canary_status); None: the batch has no canary.
CANARY_RUNNING = "running"  # its canary items run; the rest waits
CANARY_PASSED = "passed"  # within the limits: the rest was released
CANARY_FAILED = "failed"  # out of them: the batch is canary_failed, the rest never started
CANARY_RELEASED = "released"  # failed, then a person resumed it anyway
CANARY_TAG = "batch/canary"
# The partitioned asset check that shows, per item, whether the quality gate sent it back.
GATE_CHECK_NAME = "quality_gate"


class CanarySettings(BaseModel, extra="forbid"):
    """``settings.canary``: run ``items`` items first and check them before the rest."""

    items: int = Field(..., ge=1, le=10000, description="Canary items, spread across the batch")
    max_failure_ratio: float | None = Field(
        None, ge=0, le=1, description="The canary fails when more of its items failed"
    )
    min_mean_quality: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The canary fails when its succeeded items' mean quality score is lower",
    )


class QualityGateSettings(BaseModel, extra="forbid"):
    """``settings.quality_gate``: re-run low-scoring items with other options."""

    min_score: float = Field(..., ge=0, le=1, description="Items that succeed below it go back")
    requeue_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the child batch, over the batch's own (validated at submit)",
    )
    max_rounds: int = Field(1, ge=1, le=5, description="How many child batches at most")


def canary_positions(total: int, n: int) -> list[int]:
    """``n`` positions (0-based seqs) evenly spread over ``total`` items, first one included:
    a canary sees the start, the middle and the end of the item list, not only its head."""
    n = max(0, min(n, total))
    return sorted({(k * total) // n for k in range(n)}) if n else []


def chunk_numbers(total: int, canary: set[int], chunk_size: int) -> list[int]:
    """Each item's chunk: the canary items (in item order) fill the first chunks, the others
    follow in item order, ``chunk_size`` per chunk. Partition keys are registered in
    (chunk, seq) order so each chunk stays one contiguous key range."""
    n_canary = len(canary)
    canary_chunks = -(-n_canary // chunk_size) if n_canary else 0
    out, k_canary, k_rest = [], 0, 0
    for seq in range(total):
        if seq in canary:
            out.append(k_canary // chunk_size)
            k_canary += 1
        else:
            out.append(canary_chunks + k_rest // chunk_size)
            k_rest += 1
    return out


@dataclass(frozen=True)
class CanaryProbe:
    """The canary items of a batch as they are now."""

    total: int
    processed: int
    failed: int
    mean_quality: float | None  # of the succeeded items with a score

    @property
    def done(self) -> bool:
        return self.total > 0 and self.processed >= self.total


@dataclass(frozen=True)
class CanaryVerdict:
    passed: bool
    reason: str
    detail: dict[str, Any]


def canary_verdict(settings: CanarySettings, probe: CanaryProbe) -> CanaryVerdict:
    """Whether the finished canary is within its limits, with what was measured."""
    ratio = probe.failed / probe.total if probe.total else 0.0
    detail: dict[str, Any] = {
        "canary_items": probe.total,
        "failed": probe.failed,
        "failure_ratio": round(ratio, 4),
        "max_failure_ratio": settings.max_failure_ratio,
        "mean_quality": None if probe.mean_quality is None else round(probe.mean_quality, 4),
        "min_mean_quality": settings.min_mean_quality,
    }
    why = []
    if settings.max_failure_ratio is not None and ratio > settings.max_failure_ratio:
        why.append(
            f"failure ratio {ratio:.2f} ({probe.failed} of {probe.total}) is over "
            f"max_failure_ratio {settings.max_failure_ratio:g}"
        )
    if settings.min_mean_quality is not None:
        if probe.mean_quality is None:
            why.append(
                f"no canary item succeeded with a quality score (min_mean_quality "
                f"{settings.min_mean_quality:g})"
            )
        elif probe.mean_quality < settings.min_mean_quality:
            why.append(
                f"mean quality {probe.mean_quality:.3f} is under min_mean_quality "
                f"{settings.min_mean_quality:g}"
            )
    detail["reasons"] = why
    if why:
        return CanaryVerdict(False, "canary failed: " + "; ".join(why), detail)
    return CanaryVerdict(True, "canary passed", detail)
