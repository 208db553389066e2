"""How the analytics assets show their rows in the Dagster UI: Markdown tables and small PNG
charts (embedded in the Markdown previews and written next to them under ``reports/analytics``).

Pure functions of rows already read from the analytics views: no Dagster, no warehouse.
"""

import io
from collections.abc import Callable, Sequence
from typing import Any

from batch_pipelines.core.fmt import NUMERIC_KINDS, Column, fmt_value

_MINUTE_WIDTH = 0.8 / 1440  # bar width in days on a date axis


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table of ``rows``; ``columns`` are (key, header, kind of
    :func:`~batch_pipelines.core.fmt.fmt_value`). Headers carry the units; times are shown
    to the minute."""
    if not rows:
        return "_no rows_"
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "| " + " | ".join("---:" if k in NUMERIC_KINDS else "---" for _, _, k in columns) + " |",
    ]
    for r in rows:
        cells = (_cell(r.get(key), kind) for key, _, kind in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, kind: str) -> str:  # noqa: ANN401
    text = fmt_value(value, kind, missing="", units=False, time_format="%Y-%m-%d %H:%M")
    return text.replace("|", "\\|").replace("\n", " ")


def _png(draw: Callable[[Any], None]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=80)
    try:
        draw(ax)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def duration_histogram(durations: Sequence[float], metrics: dict[str, Any]) -> bytes:
    def draw(ax: Any) -> None:
        ax.hist(durations, bins=min(40, max(5, len(durations) // 5)), color="#4f7cac")
        for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            value = metrics.get(f"{key}_duration_ms")
            if value is not None:
                ax.axvline(value, color="#c0392b", linestyle=style, label=f"{key} {value:,.0f} ms")
        ax.set_xlabel("item duration (ms)")
        ax.set_ylabel("items")
        ax.set_title(f"durations: {metrics['batch_id']}", fontsize=9)
        ax.legend(fontsize=7)

    return _png(draw)


def quality_histogram(buckets: Sequence[dict[str, Any]], batch_id: str) -> bytes:
    def draw(ax: Any) -> None:
        ax.bar([b["label"] for b in buckets], [b["count"] for b in buckets], color="#5b9a68")
        ax.set_xlabel("quality score")
        ax.set_ylabel("items")
        ax.set_title(f"quality: {batch_id}", fontsize=9)

    return _png(draw)


def timeline_chart(timeline: Sequence[dict[str, Any]], batch_id: str) -> bytes:
    def draw(ax: Any) -> None:
        minutes = [t["minute"] for t in timeline]
        ax.bar(
            minutes,
            [t["succeeded"] for t in timeline],
            width=_MINUTE_WIDTH,
            align="edge",
            color="#5b9a68",
            label="succeeded",
        )
        ax.bar(
            minutes,
            [t["failed"] for t in timeline],
            bottom=[t["succeeded"] for t in timeline],
            width=_MINUTE_WIDTH,
            align="edge",
            color="#c0392b",
            label="failed",
        )
        ax.set_ylabel("items per minute")
        ax.set_title(f"timeline: {batch_id}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        rate = ax.twinx()
        rate.plot(
            minutes, [t["running_success_rate"] for t in timeline], color="#333333", marker="."
        )
        rate.set_ylim(0, 1.05)
        rate.set_ylabel("running success rate")
        ax.legend(fontsize=7, loc="lower left")

    return _png(draw)


def slots_chart(slots: Sequence[dict[str, Any]], batch_id: str) -> bytes:
    """The run slots a batch's chunk runs used over time (from ``run_metrics``)."""

    def draw(ax: Any) -> None:
        ax.step([p["at"] for p in slots], [p["runs"] for p in slots], where="post", color="#4f7cac")
        ax.set_ylabel("chunk runs executing")
        ax.set_ylim(0, max(p["runs"] for p in slots) + 1)
        ax.set_title(f"run slots used: {batch_id}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)

    return _png(draw)


def diff_markdown(diff: dict[str, Any], title: str) -> str:
    """One batch diff (``core.diff.batch_diff``) as Markdown: counts, changed fields, the
    first changed items, quality and duration deltas, error categories."""
    a, b, n = diff["a"], diff["b"], diff["items"]
    parts = [
        f"### {title}",
        f"A `{a['batch_id']}` ({a['status']}) → B `{b['batch_id']}` ({b['status']}), "
        f"{diff['operation']}",
        md_table(
            [n],
            [(k, k.replace("_", " "), "int") for k in
             ("only_in_a", "only_in_b", "in_both", "changed", "unchanged")],
        ),
    ]  # fmt: skip
    if diff["changed_fields"]:
        parts.append(
            md_table(
                diff["changed_fields"], [("field", "changed field", ""), ("items", "items", "int")]
            )
        )
        rows = [{"item_id": i["item_id"], **f} for i in diff["changed"][:10] for f in i["fields"]]
        parts.append(
            md_table(
                rows,
                [("item_id", "item", ""), ("field", "field", ""), ("a", "A", ""), ("b", "B", "")],
            )
        )
    figures = [
        {
            "figure": f"{label} {stat}",
            "a": s["a"][stat],
            "b": s["b"][stat],
            "delta": s["delta"][stat],
        }
        for label, s in (("quality", diff["quality"]), ("duration ms", diff["duration_ms"]))
        for stat in ("p50", "p95")
    ]
    parts.append(
        md_table(
            figures,
            [("figure", "figure", ""), ("a", "A", ""), ("b", "B", ""), ("delta", "B - A", "")],
        )
    )
    if diff["error_categories"]:
        columns: list[Column] = [
            ("error_category", "error category", ""),
            ("a", "A", "int"),
            ("b", "B", "int"),
            ("change", "change", ""),
        ]
        parts.append(md_table(diff["error_categories"], columns))
    return "\n\n".join(parts)
