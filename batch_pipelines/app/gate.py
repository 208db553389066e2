"""The quality gate of a finished batch (``settings.quality_gate``): the items that succeeded
with a quality score under ``min_score`` are re-run as a linked child batch (as ``retry``
does, ``parent_batch_id``) with ``requeue_options`` over the batch's options: a second
opinion. The child carries the gate too, one round further, up to ``max_rounds``.

The dispatcher sensor applies it to every finished batch on each tick; ``submit --wait``
applies it here and runs the child in this process too. Each batch is gated once
(:func:`ledger.claim_gate`), whoever gets there first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batch_pipelines.app.control import ControlError, submit_child_batch
from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.gates import QualityGateSettings
from batch_pipelines.core.ledger import ItemStatus


@dataclass(frozen=True)
class GateResult:
    batch_id: str
    status: str  # passed | requeued | max_rounds | error
    below: int = 0
    child_batch_id: str | None = None
    message: str = ""


def apply_quality_gate(batch_id: str, *, instance=None) -> GateResult | None:  # noqa: ANN001
    """Gate one finished batch; None when it has no gate, is not finished or was gated."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:
        batch = ledger.load_batch(con, batch_id)
        raw = (batch.settings or {}).get("quality_gate") if batch else None
        if (
            batch is None
            or not raw
            or batch.status
            not in (
                ledger.BatchStatus.COMPLETED,
                ledger.BatchStatus.COMPLETED_WITH_ERRORS,
            )
        ):
            return None
        # On a lake two claims at once conflict: the one retried sees the batch claimed.
        claimed = lake.transaction(con, lambda: ledger.claim_gate(con, batch_id))
        if not claimed:
            return None
        gate = QualityGateSettings.model_validate(raw)
        below = [
            r
            for r in ledger.load_items(con, batch_id, status=[ItemStatus.SUCCEEDED])
            if r.quality_score is not None and r.quality_score < gate.min_score
        ]
    round_no = int(batch.gate_round or 0)
    detail: dict[str, Any] = {
        "min_score": gate.min_score,
        "below": len(below),
        "round": round_no,
        "max_rounds": gate.max_rounds,
    }
    if not below:
        return _finish(batch_id, "passed", detail, f"every scored item reached {gate.min_score:g}")
    if round_no >= gate.max_rounds:
        return _finish(
            batch_id,
            "max_rounds",
            detail,
            f"{len(below)} item(s) under {gate.min_score:g}; no round left "
            f"(max_rounds {gate.max_rounds})",
        )
    try:
        child = submit_child_batch(
            batch,
            below,
            name=f"quality gate {round_no + 1} of {batch.name}",
            options=gate.requeue_options,
            instance=instance,
            actor="quality_gate",
            source="quality_gate",
            gate_round=round_no + 1,
        )
    except ControlError as exc:
        return _finish(batch_id, "error", {**detail, "error": str(exc)}, str(exc))
    detail["child_batch_id"] = child
    return _finish(
        batch_id,
        "requeued",
        detail,
        f"{len(below)} item(s) under {gate.min_score:g} sent back as {child}",
        child,
    )


def _finish(
    batch_id: str,
    status: str,
    detail: dict[str, Any],
    message: str,
    child: str | None = None,
) -> GateResult:
    with warehouse.connect(config.get_paths().warehouse) as con:
        lake.transaction(
            con,
            lambda: ledger.set_gate_status(
                con, batch_id, status, detail={**detail, "message": message}
            ),
        )
    return GateResult(batch_id, status, int(detail["below"]), child, message)


def apply_due_gates(instance=None, limit: int = 20) -> list[GateResult]:  # noqa: ANN001
    """Gate the finished batches no gate has looked at yet (the dispatcher, every tick)."""
    with warehouse.connect(config.get_paths().warehouse, read_only=True) as con:
        due = ledger.gates_due(con)[:limit]
    results = [apply_quality_gate(b, instance=instance) for b in due]
    return [r for r in results if r is not None]


def gate_summary(batch_id: str) -> dict[str, Any] | None:
    """What the gate of a batch did: items sent back, how many passed after, per round."""
    with warehouse.connect(config.get_paths().warehouse, read_only=True) as con:
        return ledger.gate_summary(con, batch_id)
