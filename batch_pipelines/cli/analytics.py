"""``report ID`` and ``stats``: the analytics views (SQL over the ledger) in a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
from rich.table import Table

from batch_pipelines.cli.utils import EXIT_FAILED, console, err_console, print_json, status_style
from batch_pipelines.core.analytics import (
    BATCH_ERROR_COLUMNS,
    DURATION_COLUMNS,
    OPERATION_COLUMNS,
    QUALITY_COLUMNS,
    TIMELINE_COLUMNS,
    TOP_ERROR_COLUMNS,
    BatchNotFoundError,
    get_batch_metrics,
    get_stats,
)
from batch_pipelines.core.fmt import NUMERIC_KINDS, Column, fmt_value

BAR_WIDTH = 24
TIMELINE_ROWS = 15
MINUTE = "%Y-%m-%d %H:%M"


def _bar(percentage: float | None) -> str:
    n = round(BAR_WIDTH * (percentage or 0.0) / 100)
    return "█" * n + "░" * (BAR_WIDTH - n)


def _rows_table(title: str, columns: Sequence[Column], rows: Iterable[Mapping[str, Any]]) -> Table:
    """A table of analytics rows; the headers carry the units, numbers are right-aligned."""
    table = Table(title=title, title_justify="left")
    for _, header, kind in columns:
        numeric = kind in NUMERIC_KINDS
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        cells = (
            fmt_value(row[key], kind, units=False, time_format=MINUTE) for key, _, kind in columns
        )
        table.add_row(*cells)
    return table


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
    console.print(_rows_table("item duration (finished items)", DURATION_COLUMNS, [m]))
    if m["errors"]:
        columns = [*BATCH_ERROR_COLUMNS, ("example_item_id", "example item", "")]
        console.print(_rows_table("errors (failed items)", columns, m["errors"]))
    else:
        console.print("[dim]no failed items[/]")
    quality = [{**q, "bar": _bar(q["percentage"])} for q in m["quality"]]
    columns = [*QUALITY_COLUMNS, ("bar", "", "")]
    console.print(_rows_table("quality score distribution", columns, quality))
    if m.get("quality_gate"):
        console.print(gate_line(m["quality_gate"]), highlight=False)
    _print_resources(m.get("resources"))
    _print_provenance(m.get("provenance"))
    if m["timeline"]:
        shown = m["timeline"][-TIMELINE_ROWS:]
        title = "timeline (items finished per minute)"
        if len(shown) < len(m["timeline"]):
            title += f": last {len(shown)} of {len(m['timeline'])} minutes"
        console.print(_rows_table(title, TIMELINE_COLUMNS, shown))


def gate_line(g: dict[str, Any]) -> str:
    """The quality gate in one line: sent back, passed after, per round."""
    rounds = ", ".join(
        f"round {r['round']} {r['batch_id']} ({r['status']}): {r['sent_back']} sent back, "
        f"{r['passed_after']} passed, {r['still_below']} still under"
        for r in g["rounds"]
    )
    return (
        f"quality gate (min_score {g['min_score']:g}, of {g['batch_id']}): {g['status'] or 'waiting'}"
        f"; {g['sent_back']} item(s) sent back, {g['passed_after']} passed after"
        + (f"; {rounds}" if rounds else "")
    )


def _print_resources(r: dict[str, Any] | None) -> None:
    """The Resources part: what the batch's chunk runs cost (run_metrics)."""
    if not r or not r["runs"]:
        console.print("[dim]resources: no chunk run recorded (see run_metrics)[/]")
        return
    console.print(
        _kv_table(
            "resources (run_metrics)",
            [
                ("chunk runs", f"{r['runs']:,} ({r['items'] or 0:,} items)"),
                ("peak memory", f"{fmt_value(r['peak_rss_mb'])} MB"),
                (
                    "cpu",
                    f"{fmt_value(r['cpu_user_s'])} s user + {fmt_value(r['cpu_system_s'])} s "
                    f"system, {fmt_value(r['cpu_s_per_item'])} s per item",
                ),
                (
                    "queue wait",
                    f"p50 {fmt_value(r['queue_wait_p50_s'], 's')}, "
                    f"p95 {fmt_value(r['queue_wait_p95_s'], 's')}",
                ),
                ("read / written", f"{r['read_bytes'] or 0:,} / {r['write_bytes'] or 0:,} bytes"),
            ],
        )
    )
    slots = r["slots"]
    if slots:
        top = max(p["runs"] for p in slots) or 1
        step = max(1, len(slots) // TIMELINE_ROWS)
        lines = [
            f"{fmt_value(p['at'], 'time', time_format='%H:%M:%S')}  "
            f"{'█' * round(BAR_WIDTH * p['runs'] / top):<{BAR_WIDTH}} {p['runs']}"
            for p in slots[::step]
        ]
        console.print(f"run slots used over time (max {r['max_slots']})")
        console.print("\n".join(lines), highlight=False)


def _print_provenance(p: dict[str, Any] | None) -> None:
    if not p:
        return
    versions = "; ".join(
        f"{v['code_version']} (dagster {v['dagster_version']}, duckdb {v['duckdb_version']}, "
        f"{v['runs']} runs)"
        for v in p["versions"]
    )
    console.print(
        _kv_table(
            "provenance",
            [
                ("correlation id", p["correlation_id"] or "-"),
                ("options hash", p["options_hash"] or "-"),
                ("code", versions or "-"),
                ("formats", ", ".join(f"{k} {v}" for k, v in p["formats"].items()) or "-"),
                ("most runs at once", str(p["max_parallel_runs"])),
            ],
        )
    )


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
    now = s.get("now")
    if now:
        slots = (
            f"{now['running_runs']} of {now['run_slots']} "
            f"({fmt_value(now['run_slot_utilisation'], 'rate')})"
            if now["run_slots"]
            else f"{now['running_runs']} (limit unknown)"
        )
        console.print(
            _kv_table(
                "now",
                [
                    (
                        "queue depth",
                        f"{now['queued_items']:,} items in {now['queued_chunks']:,} chunks",
                    ),
                    ("run slots in use", slots),
                ],
            )
        )
    console.print(_rows_table("by operation", OPERATION_COLUMNS, s["by_operation"]))
    if not s["by_operation"]:
        console.print("[dim]no batches yet[/]")
    if s["top_errors"]:
        console.print(_rows_table("most frequent errors", TOP_ERROR_COLUMNS, s["top_errors"]))


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
