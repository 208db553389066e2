"""The validate operation's detail table: one row per rule and item in
``validation_results``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from batch_pipelines.core.ledger import utcnow
from batch_pipelines.operations.validate.rules import RuleResult

VALIDATION_RESULTS = "validation_results"
DETAIL_TABLES = (VALIDATION_RESULTS,)


def result_rows(source: str, results: Sequence[RuleResult]) -> list[dict[str, Any]]:
    """An item's rows of ``validation_results`` (``ItemResult.rows``: they replace the
    item's earlier rows)."""
    checked_at = utcnow()
    return [
        {
            "rule_index": r.index,
            "rule_name": r.name,
            "rule_type": r.type,
            "column_name": r.column,
            "source": source,
            "passed": r.passed,
            "severity": r.severity,
            "failing_rows": r.failing_rows,
            "total_rows": r.total_rows,
            "weight": float(r.weight),
            "sample": json.dumps(r.sample),
            "detail": r.detail,
            "checked_at": checked_at,
        }
        for r in results
    ]
