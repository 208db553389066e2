"""Figures as people read them: the one formatter behind the analytics previews (Markdown)
and the CLI's tables, so a success rate or a duration reads the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_KINDS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{v:.1f}%",
    "rate": lambda v: f"{100 * v:.1f}%",
    "number": lambda v: f"{v:,.1f}",
    "ms": lambda v: f"{v:,.1f} ms",
    "s": lambda v: f"{v:,.1f} s",
    "minute": lambda v: f"{v:%Y-%m-%d %H:%M}",
    "time": lambda v: f"{v:%Y-%m-%d %H:%M:%S}",
}
# Kinds whose values line up on the right in a table.
NUMERIC_KINDS = frozenset({"int", *_KINDS} - {"minute", "time"})


def format_value(value: Any, kind: str = "", missing: str = "") -> str:  # noqa: ANN401
    """``value`` as text; ``kind`` says what it is.

    ``pct`` a percentage (0-100); ``rate`` a share (0-1) shown as a percentage; ``number`` one
    decimal; ``ms``/``s`` one decimal and the unit; ``minute``/``time`` a timestamp to the
    minute/second; anything else: ints with thousands separators, floats to three decimals,
    the rest as ``str``. None is ``missing``.
    """
    if value is None:
        return missing
    if kind in _KINDS:
        return _KINDS[kind](value)
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
