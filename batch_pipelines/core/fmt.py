"""Figures as text, one way for every view: the CLI's tables, the analytics Markdown, reports.

``fmt_value(value, kind)`` renders a number, share, duration or timestamp; ``round_figure``
rounds a float for output that keeps numbers as numbers (JSON, CSV).
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any, Literal

Kind = Literal["", "int", "rate", "pct", "ms", "s", "time"]
NUMERIC_KINDS: tuple[Kind, ...] = ("int", "rate", "pct", "ms", "s")
Column = tuple[str, str, Kind]
"""A column of a table of rows: (key in the row, header, kind of :func:`fmt_value`)."""

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def fmt_value(
    value: Any,  # noqa: ANN401 - any figure a view shows
    kind: Kind = "",
    *,
    missing: str = "-",
    units: bool = True,
    time_format: str = TIME_FORMAT,
) -> str:
    """``value`` as text.

    ``kind``: ``rate`` a share 0..1 shown as a percentage, ``pct`` a percentage already,
    ``ms``/``s`` a duration (with its unit unless ``units`` is false), ``time`` a timestamp in
    ``time_format``; otherwise floats get 3 decimals and ints thousands separators.
    ``None`` becomes ``missing``.
    """
    if value is None:
        return missing
    if kind == "rate":
        return f"{100 * value:.1f}%"
    if kind == "pct":
        return f"{value:.1f}%"
    if kind in ("ms", "s"):
        return f"{value:,.1f} {kind}" if units else f"{value:,.1f}"
    if kind == "time" and isinstance(value, date):
        return f"{value:{time_format}}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def round_figure(value: Any, digits: int = 3) -> Any:  # noqa: ANN401 - numbers and the rest
    """A float rounded to ``digits`` (NaN becomes None); any other value unchanged."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, digits)
    return value
