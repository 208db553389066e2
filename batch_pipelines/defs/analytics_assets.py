"""Report assets: the analytics views rendered for the Dagster UI.

Five unpartitioned assets in the ``analytics`` group, downstream of the seven operation assets
(``<operation>_items``). Each reads one view of migration ``0009_analytics`` and returns a
``MaterializeResult`` with ``dagster/row_count``, a Markdown preview and, where a picture says
more (durations, quality, timeline), a small PNG chart embedded in the Markdown as a data
URI. The report text and chart are also written under ``data/reports/analytics/``.

A report run focuses on one batch: the ``batch_id`` of its config (set by the
``analytics_on_batch_*`` sensors for the batch that just finished), else the batch that
finished last. The views themselves always cover every batch: query them for anything else.
"""

import base64
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
    in_process_executor,
)
from pydantic import Field

from batch_pipelines.core import analytics
from batch_pipelines.core.warehouse import connect as connect_warehouse
from batch_pipelines.defs.resources import WarehouseResource
from batch_pipelines.operations import OPERATION_NAMES

GROUP = "analytics"
OPERATION_ASSET_KEYS = [AssetKey(f"{name}_items") for name in OPERATION_NAMES]
PREVIEW_ROWS = 20
_MINUTE_WIDTH = 0.8 / 1440  # bar width in days on a date axis
REPORT_DIR = Path("reports") / "analytics"  # under the data root


class ReportConfig(Config):
    """Which batch the report's preview and chart focus on."""

    batch_id: str | None = Field(
        default=None,
        description="Batch to focus on; empty = the batch that finished most recently.",
    )


# ---------------------------------------------------------------------------- formatting


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return ""
    if kind == "pct":
        return f"{value:.1f}%"
    if kind == "rate":
        return f"{100 * value:.1f}%"
    if kind == "ms":
        return f"{value:,.1f}"
    if kind == "time":
        return f"{value:%Y-%m-%d %H:%M}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``; ``columns`` are (key, header, format kind)."""
    if not rows:
        return "_no rows_"
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "| "
        + " | ".join("---:" if k in ("int", "pct", "rate", "ms") else "---" for _, _, k in columns)
        + " |",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(key), kind) for key, _, kind in columns) + " |")
    return "\n".join(lines)


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


# ------------------------------------------------------------------------------ plumbing


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _result(
    context: AssetExecutionContext,
    resource: WarehouseResource,
    row_count: int,
    markdown: str,
    chart: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> MaterializeResult:
    name = context.asset_key.to_user_string()
    out_dir = resource.paths().data / REPORT_DIR
    metadata: dict[str, Any] = {"dagster/row_count": row_count}
    body = markdown
    if chart is not None:
        png = out_dir / f"{name}.png"
        _write_atomic(png, chart)
        metadata["chart_path"] = MetadataValue.path(str(png))
        # The UI renders Markdown metadata, images included, so the chart shows inline.
        encoded = base64.b64encode(chart).decode()
        body = f"![{name}](data:image/png;base64,{encoded})\n\n{markdown}"
    report = out_dir / f"{name}.md"
    _write_atomic(report, (markdown + "\n").encode())
    metadata["preview"] = MetadataValue.md(body)
    metadata["report_path"] = MetadataValue.path(str(report))
    metadata.update(extra or {})
    return MaterializeResult(metadata=metadata)


def _open(resource: WarehouseResource):  # noqa: ANN202
    return connect_warehouse(resource.paths().warehouse, read_only=True)


def _focus(con: Any, config: ReportConfig) -> str | None:
    if config.batch_id:
        if con.execute("select 1 from batches where batch_id = ?", [config.batch_id]).fetchone():
            return config.batch_id
        return None
    return analytics.latest_finished_batch(con)


def _focus_note(config: ReportConfig, focus: str | None) -> str:
    if focus:
        return f"Focus batch: `{focus}`"
    if config.batch_id:
        return f"Batch `{config.batch_id}` is not in the ledger."
    return "No batch has finished yet."


def _report_asset(name: str, description: str) -> Callable:
    return asset(
        name=name,
        group_name=GROUP,
        deps=OPERATION_ASSET_KEYS,
        kinds={"duckdb", "python"},
        description=description,
        tags={"batch/analytics": "report"},
    )


# -------------------------------------------------------------------------------- assets

_BATCH_COLUMNS = [
    ("batch_id", "batch", ""),
    ("operation", "operation", ""),
    ("status", "status", ""),
    ("total", "items", "int"),
    ("failed", "failed", "int"),
    ("success_rate", "success", "rate"),
    ("p50_duration_ms", "p50 ms", "ms"),
    ("p95_duration_ms", "p95 ms", "ms"),
    ("throughput_per_min", "items/min", "ms"),
    ("mean_quality", "quality", ""),
]


@_report_asset(
    "batch_metrics_report",
    "Per-batch figures (SQL view `batch_metrics`): counts by status, success rate, "
    "p50/p95/p99/avg item duration, throughput, wall time and mean quality. The preview "
    "shows the focus batch with its duration histogram, then the latest batches.",
)
def batch_metrics_report(
    context: AssetExecutionContext, config: ReportConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = con.execute("select count(*) from batch_metrics").fetchone()[0]
        focus = _focus(con, config)
        metrics = analytics.batch_metrics(con, focus) if focus else None
        durations = analytics.item_durations(con, focus) if focus else []
        recent = analytics.query_rows(
            con,
            "select * from batch_metrics order by created_at desc, batch_id desc limit ?",
            [PREVIEW_ROWS],
        )
    parts = [
        f"**{total:,} batches** (SQL: `select * from batch_metrics`)",
        _focus_note(config, focus),
    ]
    extra: dict[str, Any] = {}
    chart = None
    if metrics:
        parts.append(
            md_table(
                [metrics],
                [
                    ("status", "status", ""),
                    ("total", "items", "int"),
                    ("succeeded", "ok", "int"),
                    ("failed", "failed", "int"),
                    ("skipped", "skipped", "int"),
                    ("cancelled", "cancelled", "int"),
                    ("success_rate", "success", "rate"),
                    ("p50_duration_ms", "p50 ms", "ms"),
                    ("p95_duration_ms", "p95 ms", "ms"),
                    ("p99_duration_ms", "p99 ms", "ms"),
                    ("throughput_per_min", "items/min", "ms"),
                    ("mean_quality", "quality", ""),
                ],
            )
        )
        extra = {"focus_batch_id": focus}
        for key in ("success_rate", "p95_duration_ms", "throughput_per_min"):
            if metrics[key] is not None:
                extra[f"focus_{key}"] = MetadataValue.float(float(metrics[key]))
        if durations:
            chart = duration_histogram(durations, metrics)
    parts.append(f"Latest {min(PREVIEW_ROWS, total)} batches:")
    parts.append(md_table(recent, _BATCH_COLUMNS))
    return _result(context, warehouse, int(total), "\n\n".join(parts), chart, extra)


@_report_asset(
    "error_report",
    "What failed and why (SQL view `error_distribution`): failed items grouped by error "
    "category and normalised message fingerprint, with counts and share of the batch's "
    "failures, for the focus batch and across all batches.",
)
def error_report(
    context: AssetExecutionContext, config: ReportConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = con.execute("select count(*) from error_distribution").fetchone()[0]
        focus = _focus(con, config)
        rows = (
            analytics.query_rows(
                con,
                "select * from error_distribution where batch_id = ? "
                "order by count desc, fingerprint limit ?",
                [focus, PREVIEW_ROWS],
            )
            if focus
            else []
        )
        top = analytics.query_rows(
            con,
            "select error_category, fingerprint, sum(count)::bigint as count, "
            "count(distinct batch_id) as batches from error_distribution "
            "group by all order by count desc, fingerprint limit ?",
            [PREVIEW_ROWS],
        )
    columns = [
        ("error_category", "category", ""),
        ("fingerprint", "fingerprint", ""),
        ("count", "items", "int"),
        ("percentage", "% of failed", "pct"),
    ]
    parts = [
        f"**{total:,} (batch, error) groups** (SQL: `select * from error_distribution`)",
        _focus_note(config, focus),
    ]
    if focus:
        parts.append(md_table(rows, columns) if rows else "_no failed items_")
    parts.append("Most frequent errors across all batches:")
    parts.append(
        md_table(
            top,
            [
                ("error_category", "category", ""),
                ("fingerprint", "fingerprint", ""),
                ("count", "items", "int"),
                ("batches", "batches", "int"),
            ],
        )
    )
    extra = {"focus_batch_id": focus} if focus else {}
    return _result(context, warehouse, int(total), "\n\n".join(parts), None, extra)


@_report_asset(
    "quality_report",
    "Quality score histogram (SQL view `quality_distribution`): five buckets 0-0.2 ... "
    "0.8-1.0 per batch with count and percentage of scored items (NULL scores ignored).",
)
def quality_report(
    context: AssetExecutionContext, config: ReportConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = con.execute("select count(*) from quality_distribution").fetchone()[0]
        focus = _focus(con, config)
        buckets = (
            analytics.query_rows(
                con,
                "select * from quality_distribution where batch_id = ? order by bucket",
                [focus],
            )
            if focus
            else []
        )
        overall = analytics.query_rows(
            con,
            "select label, sum(count)::bigint as count, "
            "100.0 * sum(count) / nullif(sum(sum(count)) over (), 0) as percentage "
            "from quality_distribution group by bucket, label order by bucket",
        )
    columns = [("label", "score", ""), ("count", "items", "int"), ("percentage", "%", "pct")]
    parts = [
        f"**{total:,} rows** (SQL: `select * from quality_distribution`)",
        _focus_note(config, focus),
    ]
    chart = None
    if buckets:
        parts.append(md_table(buckets, columns))
        if any(b["count"] for b in buckets):
            chart = quality_histogram(buckets, focus)
        else:
            parts.append("_no scored items in this batch_")
    parts.append("All batches:")
    parts.append(md_table(overall, columns))
    extra = {"focus_batch_id": focus} if focus else {}
    return _result(context, warehouse, int(total), "\n\n".join(parts), chart, extra)


@_report_asset(
    "timeline_report",
    "Items finished per minute with the running success rate (SQL view `batch_timeline`), "
    "charted for the focus batch.",
)
def timeline_report(
    context: AssetExecutionContext, config: ReportConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = con.execute("select count(*) from batch_timeline").fetchone()[0]
        focus = _focus(con, config)
        timeline = analytics.batch_metrics(con, focus)["timeline"] if focus else []
    parts = [
        f"**{total:,} (batch, minute) rows** (SQL: `select * from batch_timeline`)",
        _focus_note(config, focus),
    ]
    chart = None
    if timeline:
        chart = timeline_chart(timeline, focus)
        shown = timeline[-PREVIEW_ROWS:]
        if len(timeline) > len(shown):
            parts.append(f"Last {len(shown)} of {len(timeline)} minutes:")
        parts.append(
            md_table(
                shown,
                [
                    ("minute", "minute (UTC)", "time"),
                    ("finished", "finished", "int"),
                    ("succeeded", "ok", "int"),
                    ("failed", "failed", "int"),
                    ("cumulative_finished", "cumulative", "int"),
                    ("running_success_rate", "running success", "rate"),
                ],
            )
        )
    elif focus:
        parts.append("_no finished items_")
    extra = {"focus_batch_id": focus} if focus else {}
    return _result(context, warehouse, int(total), "\n\n".join(parts), chart, extra)


@_report_asset(
    "operation_stats_report",
    "Per operation (SQL view `operation_stats`): batches by status, completion rate, items "
    "by status, item success rate, total and average duration, mean quality.",
)
def operation_stats_report(
    context: AssetExecutionContext, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        rows = analytics.query_rows(con, "select * from operation_stats order by operation")
    table = md_table(
        rows,
        [
            ("operation", "operation", ""),
            ("batches", "batches", "int"),
            ("batches_running", "running", "int"),
            ("batches_completed", "completed", "int"),
            ("batches_completed_with_errors", "with errors", "int"),
            ("batches_failed", "failed", "int"),
            ("batches_cancelled", "cancelled", "int"),
            ("completion_rate", "completion", "rate"),
            ("items_total", "items", "int"),
            ("item_success_rate", "item success", "rate"),
            ("avg_duration_ms", "avg ms", "ms"),
            ("mean_quality", "quality", ""),
        ],
    )
    markdown = f"**{len(rows)} operations** (SQL: `select * from operation_stats`)\n\n{table}"
    return _result(context, warehouse, len(rows), markdown)


REPORT_ASSETS: list[AssetsDefinition] = [
    batch_metrics_report,
    error_report,
    quality_report,
    timeline_report,
    operation_stats_report,
]
# The assets that take ReportConfig (operation_stats_report covers all batches only).
FOCUSED_REPORTS = [
    a.key.to_user_string()
    for a in (batch_metrics_report, error_report, quality_report, timeline_report)
]

analytics_reports_job = define_asset_job(
    name="analytics_reports_job",
    selection=REPORT_ASSETS,
    # Five short steps: one process runs them in ~2 s; a process per step took ~9 s.
    executor_def=in_process_executor,
    description=(
        "Refresh the analytics report assets (batch metrics, errors, quality, timeline, "
        "operation stats). Launched when a batch finishes and on a schedule."
    ),
    tags={"batch/analytics": "report"},
)


def report_run_config(batch_id: str | None) -> dict[str, Any]:
    """Run config of ``analytics_reports_job`` focusing its reports on ``batch_id``."""
    if batch_id is None:
        return {}
    return {"ops": {name: {"config": {"batch_id": batch_id}} for name in FOCUSED_REPORTS}}
