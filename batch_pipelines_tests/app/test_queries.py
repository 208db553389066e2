"""Ledger reads that need no Dagster."""

from __future__ import annotations

from datetime import datetime

import pytest

from batch_pipelines.app.queries import may_have_active_runs

DONE_AT = datetime(2026, 1, 1, 12, 0, 0)


@pytest.mark.parametrize(
    ("status", "completed_at", "expected"),
    [
        ("queued", None, True),
        ("running", None, True),
        ("paused", None, True),
        # stopped by the error budget while chunks still run: completed_at waits for them
        ("failed", None, True),
        ("completed", DONE_AT, False),
        ("completed_with_errors", DONE_AT, False),
        ("cancelled", DONE_AT, False),
    ],
)
def test_may_have_active_runs(status: str, completed_at: datetime | None, expected: bool) -> None:
    assert may_have_active_runs({"status": status, "completed_at": completed_at}) is expected
