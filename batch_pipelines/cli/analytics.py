"""``report ID`` and ``stats``: the analytics views (SQL over the ledger) in a terminal."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.table import Table

from batch_pipelines.cli.utils import EXIT_FAILED, console, err_console, print_json, status_style
from batch_pipelines.core.analytics import BatchNotFoundError, get_batch_metrics, get_stats
from batch_pipelines.core.fmt import fmt_value

BAR_WIDTH = 24
TIMELINE_ROWS = 15


def _bar(share: float | None) -> str:
    n = round(BAR_WIDTH * (share or 0.0))
    return "█" * n + "░" * (BAR_WIDTH - n)


def _kv_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def _print_report(m: dict[str, Any]) -> None:
    style = status_style(m["status"])
    console.print(
        _kv_table(
            f"report {m['batch_id']}",
            [
                ("name", m["name"]),
                ("operation", m["operation"]),
                ("status", f"[{style}]{m['status']}[/]"),
                (
                    "items",
                    f"{m['total']:,} total: succeeded {m['succeeded']:,}, failed {m['failed']:,}, "
                    f"skipped {m['skipped']:,}, cancelled {m['cancelled']:,}, "
                    f"pending {m['pending']:,}, running {m['running']:,}",
                ),
                ("success rate", f"{fmt_value(m['success_rate'], 'rate')} (succeeded / finished)"),
                ("attempts", f"{m['attempts']:,} ({m['retried_items']:,} items retried)"),
                ("wall time", fmt_value(m["wall_time_s"], "s")),
                ("throughput", f"{fmt_value(m['throughput_per_min'])} items/min"),
                (
                    "mean quality",
                    f"{fmt_value(m['mean_quality'])} ({m['scored_items']:,} scored items)",
                ),
                ("first started", fmt_value(m["first_started_at"], "time") + " UTC"),
                ("last finished", fmt_value(m["last_finished_at"], "time") + " UTC"),
            ],
        )
    )
    durations = Table(title="item duration (finished items)", title_justify="left")
    for col in ("p50", "p95", "p99", "avg", "total"):
        durations.add_column(col, justify="right")
    durations.add_row(
        *(
            fmt_value(m[k], "ms")
            for k in (
                "p50_duration_ms",
                "p95_duration_ms",
                "p99_duration_ms",
                "avg_duration_ms",
                "total_duration_ms",
            )
        )
    )
    console.print(durations)
    if m["errors"]:
        errors = Table(title="errors (failed items)", title_justify="left")
        errors.add_column("category")
        errors.add_column("fingerprint", overflow="fold")
        errors.add_column("items", justify="right")
        errors.add_column("%", justify="right")
        errors.add_column("example item", overflow="fold")
        for e in m["errors"]:
            errors.add_row(
                e["error_category"],
                e["fingerprint"],
                f"{e['count']:,}",
                fmt_value(e["percentage"], "pct"),
                e["example_item_id"],
            )
        console.print(errors)
    else:
        console.print("[dim]no failed items[/]")
    quality = Table(title="quality score distribution", title_justify="left")
    quality.add_column("score")
    quality.add_column("items", justify="right")
    quality.add_column("%", justify="right")
    quality.add_column("")
    for q in m["quality"]:
        share = None if q["percentage"] is None else q["percentage"] / 100
        quality.add_row(
            q["label"], f"{q['count']:,}", fmt_value(q["percentage"], "pct"), _bar(share)
        )
    console.print(quality)
    if m["timeline"]:
        shown = m["timeline"][-TIMELINE_ROWS:]
        title = "timeline (items finished per minute, UTC)"
        if len(shown) < len(m["timeline"]):
            title += f": last {len(shown)} of {len(m['timeline'])} minutes"
        timeline = Table(title=title, title_justify="left")
        for col in ("minute", "finished", "ok", "failed", "cumulative", "running success"):
            timeline.add_column(col, justify="left" if col == "minute" else "right")
        for t in shown:
            timeline.add_row(
                f"{t['minute']:%Y-%m-%d %H:%M}",
                f"{t['finished']:,}",
                f"{t['succeeded']:,}",
                f"{t['failed']:,}",
                f"{t['cumulative_finished']:,}",
                fmt_value(t["running_success_rate"], "rate"),
            )
        console.print(timeline)


@click.command("report")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(batch_id: str, as_json: bool) -> None:
    """Analytics of one batch: counts, success rate, duration percentiles, throughput, error
    and quality distributions, timeline (the SQL views batch_metrics, error_distribution,
    quality_distribution, batch_timeline)."""
    try:
        metrics = get_batch_metrics(batch_id)
    except BatchNotFoundError as exc:
        err_console.print(f"[red]{exc}[/] (see `batch-pipelines list`)")
        sys.exit(EXIT_FAILED)
    if as_json:
        print_json(metrics)
    else:
        _print_report(metrics)


def _print_stats(s: dict[str, Any]) -> None:
    items = s["items"]
    d = s["durations"]
    console.print(
        _kv_table(
            "all batches",
            [
                ("batches", f"{s['batches']:,}"),
                (
                    "by status",
                    ", ".join(
                        f"[{status_style(k)}]{k}[/] {v:,}"
                        for k, v in s["batches_by_status"].items()
                        if v
                    )
                    or "-",
                ),
                (
                    "completion rate",
                    f"{fmt_value(s['completion_rate'], 'rate')} of finished batches",
                ),
                (
                    "items",
                    f"{items['total']:,} total: succeeded {items['succeeded']:,}, failed "
                    f"{items['failed']:,}, skipped {items['skipped']:,}, cancelled "
                    f"{items['cancelled']:,}, pending {items['pending']:,}, running "
                    f"{items['running']:,}",
                ),
                ("item success rate", fmt_value(s["item_success_rate"], "rate")),
                (
                    "item duration",
                    f"p50 {fmt_value(d['p50_ms'], 'ms')}, p95 {fmt_value(d['p95_ms'], 'ms')}, "
                    f"p99 {fmt_value(d['p99_ms'], 'ms')}, avg {fmt_value(d['avg_ms'], 'ms')}",
                ),
                ("mean quality", fmt_value(s["mean_quality"])),
            ],
        )
    )
    ops = Table(title="by operation", title_justify="left")
    columns = [
        ("operation", "operation", ""),
        ("batches", "batches", ""),
        ("batches_running", "running", ""),
        ("batches_completed", "completed", ""),
        ("batches_completed_with_errors", "with errors", ""),
        ("batches_failed", "failed", ""),
        ("batches_cancelled", "cancelled", ""),
        ("completion_rate", "completion", "rate"),
        ("items_total", "items", ""),
        ("item_success_rate", "item success", "rate"),
        ("avg_duration_ms", "avg", "ms"),
        ("mean_quality", "quality", ""),
    ]
    for _, header, _ in columns:
        ops.add_column(header, justify="left" if header == "operation" else "right")
    for row in s["by_operation"]:
        ops.add_row(*(fmt_value(row[key], kind) for key, _, kind in columns))
    console.print(ops)
    if not s["by_operation"]:
        console.print("[dim]no batches yet[/]")
    if s["top_errors"]:
        errors = Table(title="most frequent errors", title_justify="left")
        errors.add_column("category")
        errors.add_column("fingerprint", overflow="fold")
        errors.add_column("items", justify="right")
        errors.add_column("batches", justify="right")
        for e in s["top_errors"]:
            errors.add_row(
                e["error_category"], e["fingerprint"], f"{e['count']:,}", f"{e['batches']:,}"
            )
        console.print(errors)


@click.command("stats")
@click.option("--top-errors", type=click.IntRange(0, 100), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(top_errors: int, as_json: bool) -> None:
    """Global figures over all batches: batches by status, completion rate, items by status,
    duration percentiles, per-operation stats (view operation_stats), most frequent errors."""
    figures = get_stats(top_errors=top_errors)
    if as_json:
        print_json(figures)
    else:
        _print_stats(figures)
