"""The one figure formatter."""

from __future__ import annotations

from datetime import datetime

import pytest

from batch_pipelines.core.fmt import fmt_value, round_figure

WHEN = datetime(2026, 1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (None, "", "-"),
        (0.6667, "rate", "66.7%"),
        (12.345, "pct", "12.3%"),
        (1234.56, "ms", "1,234.6 ms"),
        (61.0, "s", "61.0 s"),
        (WHEN, "time", "2026-01-02 03:04:05"),
        (1234.5, "", "1,234.500"),
        (1234567, "", "1,234,567"),
        ("text", "", "text"),
    ],
)
def test_fmt_value(value: object, kind: str, text: str) -> None:
    assert fmt_value(value, kind) == text  # type: ignore[arg-type]


def test_fmt_value_options() -> None:
    assert fmt_value(None, missing="") == ""
    assert fmt_value(1234.56, "ms", units=False) == "1,234.6"
    assert fmt_value(WHEN, "time", time_format="%Y-%m-%d %H:%M") == "2026-01-02 03:04"


def test_round_figure() -> None:
    assert round_figure(1.23456) == 1.235
    assert round_figure(1.23456, 1) == 1.2
    assert round_figure(float("nan")) is None
    assert round_figure(7) == 7 and round_figure("x") == "x" and round_figure(None) is None
