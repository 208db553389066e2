"""report: a self-contained HTML report, a Markdown summary and a CSV per report request.

An item asks for one of three reports:

- ``{kind: batch, batch_id}``: a batch from the ledger: counts by status, durations (p50,
  p95, p99), errors by category and message, quality histogram; CSV = its items.
- ``{kind: table_profile, table}``: a warehouse table: row count, nulls and distinct values
  per column, numeric distributions (min, max, mean, quantiles, histograms), top values of
  text columns; CSV = the column profile.
- ``{kind: operation_window, operation, since?, until?}``: the batches of an operation in a
  time window (UTC): counts by status, items, durations and throughput; CSV = the batches.

Figures are computed with DuckDB SQL on a read-only warehouse connection held only while
querying; charts are PNGs drawn with matplotlib (Agg backend) and embedded as data URIs, so
the HTML needs nothing else. Files go to ``data/reports/<batch_id>/`` under temporary names
and are renamed into place by the commit, which also replaces the item's row in ``reports``.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import duckdb

from batch_pipelines.core import ledger
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult
from batch_pipelines.core.keys import slugify
from batch_pipelines.operations.report import tables
from batch_pipelines.operations.report.charts import render_chart
from batch_pipelines.operations.report.models import Report, ReportItem, ReportOptions
from batch_pipelines.operations.report.queries import (
    batch_report,
    operation_window_report,
    table_profile_report,
)
from batch_pipelines.operations.report.render import render_csv, render_html, render_markdown


def _write_temp(folder: Path, name: str, text: str) -> Path:
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def build_report(ctx: ItemContext, item: ReportItem, options: ReportOptions) -> Report:
    with ctx.read_warehouse() as con:
        try:
            if item.kind == "batch":
                return batch_report(con, str(item.batch_id), options)
            if item.kind == "table_profile":
                return table_profile_report(con, str(item.table), options)
            return operation_window_report(con, item, options)
        except duckdb.InterruptException:
            ctx.check()
            raise


def handle_report(ctx: ItemContext) -> ItemResult:
    options: ReportOptions = ctx.options
    item: ReportItem = ctx.item
    report = build_report(ctx, item, options)
    if item.title:
        report.title = item.title
    for chart in report.charts:
        ctx.check()
        chart.png = render_chart(chart)
    generated = ledger.utcnow()
    folder = ctx.paths.reports / ctx.batch_id
    folder.mkdir(parents=True, exist_ok=True)
    stem = slugify(ctx.item_id)
    final = {ext: folder / f"{stem}.{ext}" for ext in ("html", "md", "csv")}
    temps: dict[str, Path] = {}
    try:
        temps["csv"] = _write_temp(folder, final["csv"].name, render_csv(report.main))
        temps["html"] = _write_temp(
            folder, final["html"].name, render_html(report, options, generated, final["csv"].name)
        )
        temps["md"] = _write_temp(
            folder,
            final["md"].name,
            render_markdown(report, options, generated, final["html"].name, final["csv"].name),
        )
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    size = sum(p.stat().st_size for p in temps.values())
    rows = len(report.main.rows) if report.main else 0
    metrics = {
        "kind": item.kind,
        "subject": item.subject,
        "html_path": str(final["html"]),
        "markdown_path": str(final["md"]),
        "csv_path": str(final["csv"]),
        "bytes": size,
        "charts": len(report.charts),
        "rows": rows,
    }

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        cc.replace_row(
            con,
            tables.REPORTS,
            kind=item.kind,
            subject=item.subject,
            html_path=str(final["html"]),
            markdown_path=str(final["md"]),
            csv_path=str(final["csv"]),
            bytes=size,
            charts=len(report.charts),
            rows=rows,
            summary=json.dumps(report.summary, default=str),
            created_at=generated,
        )
        for ext, tmp in temps.items():
            os.replace(tmp, final[ext])

    def cleanup() -> None:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    return ItemResult(metrics=metrics, commit=commit, cleanup=cleanup)
