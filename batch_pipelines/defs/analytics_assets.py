"""Analytics assets: the analytics views rendered for the Dagster UI.

Six unpartitioned assets in the ``analytics`` group, downstream of the seven operation assets
(``<operation>_items``). Five read one view of migration ``0009_analytics``;
``batch_diff_report`` compares the latest two finished batches of each template
(:mod:`batch_pipelines.core.diff`) and keeps the diffs in ``batch_diffs``. Each returns a
``MaterializeResult`` with ``dagster/row_count``, a Markdown preview and, where a picture says
more (durations, quality, timeline), a small PNG chart embedded in the Markdown as a data
URI. The Markdown and chart are also written under ``data/reports/analytics/``.

A run of ``analytics_reports_job`` focuses on one batch: the ``batch_id`` of its config (set by
the ``analytics_on_batch_finished`` sensor for the batch that just finished), else the batch that
finished last. The views themselves always cover every batch: query them for anything else.
The rows come from :mod:`batch_pipelines.core.analytics`; the tables and charts from
:mod:`batch_pipelines.defs.analytics_render`.
"""

import base64
import json
import os
from collections.abc import Callable
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

from batch_pipelines.core import analytics, costs, diff, ledger
from batch_pipelines.core.warehouse import connect as connect_warehouse
from batch_pipelines.defs.analytics_render import (
    diff_markdown,
    duration_histogram,
    md_table,
    quality_histogram,
    slots_chart,
    timeline_chart,
)
from batch_pipelines.defs.resources import WarehouseResource
from batch_pipelines.operations import OPERATION_NAMES

GROUP = "analytics"
OPERATION_ASSET_KEYS = [AssetKey(f"{name}_items") for name in OPERATION_NAMES]
PREVIEW_ROWS = 20
OUTPUT_DIR = Path("reports") / "analytics"  # under the data root


class FocusConfig(Config):
    """Which batch an analytics asset's preview and chart focus on."""

    batch_id: str | None = Field(
        default=None,
        description="Batch to focus on; empty = the batch that finished most recently.",
    )


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
    parts: list[str],
    chart: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> MaterializeResult:
    name = context.asset_key.to_user_string()
    out_dir = resource.paths().data / OUTPUT_DIR
    markdown = "\n\n".join(parts)
    metadata: dict[str, Any] = {"dagster/row_count": row_count}
    body = markdown
    if chart is not None:
        png = out_dir / f"{name}.png"
        _write_atomic(png, chart)
        metadata["chart_path"] = MetadataValue.path(str(png))
        # The UI renders Markdown metadata, images included, so the chart shows inline.
        encoded = base64.b64encode(chart).decode()
        body = f"![{name}](data:image/png;base64,{encoded})\n\n{markdown}"
    md_path = out_dir / f"{name}.md"
    _write_atomic(md_path, (markdown + "\n").encode())
    metadata["preview"] = MetadataValue.md(body)
    metadata["report_path"] = MetadataValue.path(str(md_path))
    metadata.update(extra or {})
    return MaterializeResult(metadata=metadata)


def _open(resource: WarehouseResource):  # noqa: ANN202
    return connect_warehouse(resource.paths().warehouse, read_only=True)


def _focus(con: Any, config: FocusConfig) -> str | None:
    if config.batch_id:
        if con.execute("select 1 from batches where batch_id = ?", [config.batch_id]).fetchone():
            return config.batch_id
        return None
    return analytics.latest_finished_batch(con)


def _header(view: str, total: int, what: str, config: FocusConfig, focus: str | None) -> list[str]:
    """The preview's first lines: the view's size and the focus batch."""
    if focus:
        note = f"Focus batch: `{focus}`"
    elif config.batch_id:
        note = f"Batch `{config.batch_id}` is not in the ledger."
    else:
        note = "No batch has finished yet."
    return [f"**{total:,} {what}** (SQL: `select * from {view}`)", note]


def _focus_extra(focus: str | None) -> dict[str, Any]:
    return {"focus_batch_id": focus} if focus else {}


def _analytics_asset(name: str, description: str) -> Callable:
    return asset(
        name=name,
        group_name=GROUP,
        deps=OPERATION_ASSET_KEYS,
        kinds={"duckdb", "python"},
        description=description,
        tags={"batch/analytics": "report"},
    )


# -------------------------------------------------------------------------------- assets


@_analytics_asset(
    "batch_metrics_report",
    "Per-batch figures (SQL view `batch_metrics`): counts by status, success rate, "
    "p50/p95/p99/avg item duration, throughput, wall time and mean quality. The preview "
    "shows the focus batch with its duration histogram, then the latest batches.",
)
def batch_metrics_report(
    context: AssetExecutionContext, config: FocusConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = analytics.view_rows(con, "batch_metrics")
        focus = _focus(con, config)
        metrics = analytics.batch_metrics(con, focus) if focus else None
        durations = analytics.item_durations(con, focus) if focus else []
        recent = analytics.latest_batches(con, PREVIEW_ROWS)
    parts = _header("batch_metrics", total, "batches", config, focus)
    extra = _focus_extra(focus)
    chart = None
    if metrics:
        parts.append(md_table([metrics], analytics.FOCUS_BATCH_COLUMNS))
        for key in ("success_rate", "p95_duration_ms", "throughput_per_min"):
            if metrics[key] is not None:
                extra[f"focus_{key}"] = MetadataValue.float(float(metrics[key]))
        if durations:
            chart = duration_histogram(durations, metrics)
        parts += _resources_part(metrics["resources"], focus, extra)
    parts.append(f"Latest {min(PREVIEW_ROWS, total)} batches:")
    parts.append(md_table(recent, analytics.BATCH_COLUMNS))
    return _result(context, warehouse, total, parts, chart, extra)


GATE_COLUMNS = [
    ("round", "round", "int"),
    ("batch_id", "child batch", ""),
    ("status", "status", ""),
    ("sent_back", "sent back", "int"),
    ("passed_after", "passed after", "int"),
    ("still_below", "still under", "int"),
]


def _resources_part(resources: dict[str, Any], batch_id: str, extra: dict[str, Any]) -> list[str]:
    """The Resources part of the focus batch: what its chunk runs cost, with the run slots
    they used over time as an inline chart."""
    if not resources["runs"]:
        return ["**Resources**: no chunk run recorded in `run_metrics` for this batch."]
    for key in ("peak_rss_mb", "cpu_s_per_item", "queue_wait_p95_s"):
        if resources[key] is not None:
            extra[f"focus_{key}"] = MetadataValue.float(float(resources[key]))
    parts = [
        f"**Resources** (SQL: `select * from run_metrics where batch_id = '{batch_id}'`)",
        md_table([resources], costs.RESOURCE_COLUMNS),
    ]
    if resources["slots"]:
        encoded = base64.b64encode(slots_chart(resources["slots"], batch_id)).decode()
        parts.append(f"![run slots](data:image/png;base64,{encoded})")
    return parts


@_analytics_asset(
    "error_report",
    "What failed and why (SQL view `error_distribution`): failed items grouped by error "
    "category, severity and normalised message fingerprint, with counts and share of the "
    "batch's failures, for the focus batch and across all batches.",
)
def error_report(
    context: AssetExecutionContext, config: FocusConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = analytics.view_rows(con, "error_distribution")
        focus = _focus(con, config)
        rows = analytics.batch_errors(con, focus, PREVIEW_ROWS) if focus else []
        top = analytics.most_frequent_errors(con, PREVIEW_ROWS)
    parts = _header("error_distribution", total, "(batch, error) groups", config, focus)
    if focus:
        parts.append(md_table(rows, analytics.BATCH_ERROR_COLUMNS) if rows else "_no failed items_")
    parts.append("Most frequent errors across all batches:")
    parts.append(md_table(top, analytics.TOP_ERROR_COLUMNS))
    return _result(context, warehouse, total, parts, None, _focus_extra(focus))


@_analytics_asset(
    "quality_report",
    "Quality score histogram (SQL view `quality_distribution`): five buckets 0-0.2 ... "
    "0.8-1.0 per batch with count and percentage of scored items (NULL scores ignored).",
)
def quality_report(
    context: AssetExecutionContext, config: FocusConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = analytics.view_rows(con, "quality_distribution")
        focus = _focus(con, config)
        buckets = analytics.quality_buckets(con, focus) if focus else []
        overall = analytics.overall_quality(con)
        gate = ledger.gate_summary(con, focus) if focus else None
    parts = _header("quality_distribution", total, "rows", config, focus)
    if gate:
        parts.append(
            f"**Quality gate** of {gate['batch_id']} (min_score {gate['min_score']:g}, "
            f"{gate['status'] or 'waiting'}): {gate['sent_back']} item(s) sent back, "
            f"{gate['passed_after']} passed after."
        )
        if gate["rounds"]:
            parts.append(md_table(gate["rounds"], GATE_COLUMNS))
    chart = None
    if buckets:
        parts.append(md_table(buckets, analytics.QUALITY_COLUMNS))
        if any(b["count"] for b in buckets):
            chart = quality_histogram(buckets, focus)
        else:
            parts.append("_no scored items in this batch_")
    parts.append("All batches:")
    parts.append(md_table(overall, analytics.QUALITY_COLUMNS))
    return _result(context, warehouse, total, parts, chart, _focus_extra(focus))


@_analytics_asset(
    "timeline_report",
    "Items finished per minute with the running success rate (SQL view `batch_timeline`), "
    "charted for the focus batch.",
)
def timeline_report(
    context: AssetExecutionContext, config: FocusConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        total = analytics.view_rows(con, "batch_timeline")
        focus = _focus(con, config)
        timeline = analytics.batch_timeline(con, focus) if focus else []
    parts = _header("batch_timeline", total, "(batch, minute) rows", config, focus)
    chart = None
    if timeline:
        chart = timeline_chart(timeline, focus)
        shown = timeline[-PREVIEW_ROWS:]
        if len(timeline) > len(shown):
            parts.append(f"Last {len(shown)} of {len(timeline)} minutes:")
        parts.append(md_table(shown, analytics.TIMELINE_COLUMNS))
    elif focus:
        parts.append("_no finished items_")
    return _result(context, warehouse, total, parts, chart, _focus_extra(focus))


@_analytics_asset(
    "operation_stats_report",
    "Per operation (SQL view `operation_stats`): batches by status, completion rate, items "
    "by status, item success rate, total and average duration, mean quality.",
)
def operation_stats_report(
    context: AssetExecutionContext, warehouse: WarehouseResource
) -> MaterializeResult:
    with _open(warehouse) as con:
        rows = analytics.operation_stats(con)
    parts = [
        f"**{len(rows)} operations** (SQL: `select * from operation_stats`)",
        md_table(rows, analytics.OPERATION_COLUMNS),
    ]
    return _result(context, warehouse, len(rows), parts)


class DiffConfig(Config):
    """Which batches ``batch_diff_report`` compares."""

    batch_a: str | None = Field(
        default=None, description="Older batch; empty = the latest two of each template."
    )
    batch_b: str | None = Field(default=None, description="Newer batch (give both or neither).")


@_analytics_asset(
    "batch_diff_report",
    "What changed between the latest two finished batches of each template (or the two "
    "batches of the config): items only in one, changed results per field, quality and "
    "duration deltas, error categories that appeared or vanished. Kept in `batch_diffs`.",
)
def batch_diff_report(
    context: AssetExecutionContext, config: DiffConfig, warehouse: WarehouseResource
) -> MaterializeResult:
    if bool(config.batch_a) != bool(config.batch_b):
        raise diff.DiffError("config: give both batch_a and batch_b, or neither")
    notes: list[str] = []
    diffs: list[tuple[str | None, dict[str, Any]]] = []
    fresh: list[tuple[str | None, dict[str, Any]]] = []
    with _open(warehouse) as con:
        if config.batch_a and config.batch_b:
            pairs = [{"template": None, "a": config.batch_a, "b": config.batch_b}]
        else:
            pairs = diff.latest_template_pairs(con)
        for pair in pairs:
            if pair.get("same_operation") is False:
                notes.append(f"Template `{pair['template']}`: its latest two batches are of "
                             "different operations; not compared.")  # fmt: skip
                continue
            if pair.get("stored"):  # already computed since both batches finished
                diffs.append((pair["template"], json.loads(pair["stored"])))
            else:
                fresh.append((pair["template"], diff.batch_diff(con, pair["a"], pair["b"])))
    if fresh:
        # The one write of the analytics assets, in one short exclusive connection.
        with connect_warehouse(warehouse.paths().warehouse) as con:
            for template, d in fresh:
                diff.record_diff(con, d, template)
    diffs = sorted([*diffs, *fresh], key=lambda td: td[0] or "")
    context.log.info(f"{len(fresh)} diffs computed, {len(diffs) - len(fresh)} up to date")
    parts = [f"**{len(diffs)} diffs** (SQL: `select * from batch_diffs`)", *notes]
    if not pairs:
        parts.append("No template has two finished batches yet.")
    for template, d in diffs:
        title = f"Template `{template}`" if template else "Batches of the config"
        parts.append(diff_markdown(d, title))
    extra = {"pairs": MetadataValue.json([{"template": t, "a": d["a"]["batch_id"],
                                           "b": d["b"]["batch_id"]} for t, d in diffs])}  # fmt: skip
    return _result(context, warehouse, len(diffs), parts, None, extra)


ANALYTICS_ASSETS: list[AssetsDefinition] = [
    batch_metrics_report,
    error_report,
    quality_report,
    timeline_report,
    operation_stats_report,
    batch_diff_report,
]
# The assets that take FocusConfig (operation_stats_report covers all batches only).
FOCUSED_ASSETS = [
    a.key.to_user_string()
    for a in (batch_metrics_report, error_report, quality_report, timeline_report)
]

analytics_reports_job = define_asset_job(
    name="analytics_reports_job",
    selection=ANALYTICS_ASSETS,
    # Five short steps: one process runs them in ~2 s; a process per step took ~9 s.
    executor_def=in_process_executor,
    description=(
        "Refresh the analytics assets (batch metrics, errors, quality, timeline, operation "
        "stats, batch diffs). Launched when a batch finishes and on a schedule."
    ),
    tags={"batch/analytics": "report"},
)


def analytics_run_config(batch_id: str | None) -> dict[str, Any]:
    """Run config of ``analytics_reports_job`` focusing its assets on ``batch_id``."""
    if batch_id is None:
        return {}
    return {"ops": {name: {"config": {"batch_id": batch_id}} for name in FOCUSED_ASSETS}}
