"""A report rendered as a self-contained HTML page (charts embedded as data URIs), a
Markdown summary and a CSV of its main table."""

from __future__ import annotations

import base64
import csv
import html
import io
from datetime import datetime
from typing import Any

from batch_pipelines.core.fmt import TIME_FORMAT
from batch_pipelines.operations.report.models import Report, ReportOptions, Table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, datetime):
        return value.strftime(TIME_FORMAT)
    return str(value)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem;color:#222;
max-width:1100px}h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.85rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.facts td:first-child{font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts img{border:1px solid #eee;max-width:100%}
.note{color:#666;font-size:.8rem}footer{color:#888;font-size:.75rem;margin-top:2rem}
"""


def _html_table(t: Table, limit: int) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in t.rows[:limit]
    )
    more = (
        f'<p class="note">{len(t.rows) - limit} more rows in the CSV.</p>'
        if len(t.rows) > limit
        else ""
    )
    return f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>{more}"


def render_html(report: Report, options: ReportOptions, generated: datetime, csv_name: str) -> str:
    facts = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_cell(v))}</td></tr>"
        for k, v in report.facts
    )
    charts = "".join(
        f'<figure><img alt="{html.escape(c.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(c.png).decode()}"/></figure>'
        for c in report.charts
        if c.png
    )
    tables = "".join(_html_table(t, options.max_table_rows) for t in report.tables)
    main = _html_table(report.main, options.max_table_rows) if report.main else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{html.escape(report.title)}</h1><p class="sub">{html.escape(report.subtitle)}</p>'
        f'<table class="facts">{facts}</table>'
        + (f'<h2>Charts</h2><div class="charts">{charts}</div>' if charts else "")
        + tables
        + main
        + f"<footer>Generated {generated:%Y-%m-%d %H:%M:%S} UTC by batch_pipelines. "
        f"Data: {html.escape(csv_name)}.</footer></body></html>\n"
    )


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table, limit: int) -> str:
    lines = [f"## {t.title}", "", "| " + " | ".join(t.columns) + " |"]
    lines.append("|" + "---|" * len(t.columns))
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t.rows[:limit]]
    if len(t.rows) > limit:
        lines.append(f"\n_{len(t.rows) - limit} more rows in the CSV._")
    return "\n".join(lines) + "\n"


def render_markdown(
    report: Report, options: ReportOptions, generated: datetime, html_name: str, csv_name: str
) -> str:
    parts = [f"# {report.title}", "", f"_{report.subtitle}_", "", "| | |", "|---|---|"]
    parts += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in report.facts]
    parts += ["", *(_md_table(t, options.max_table_rows) for t in report.tables)]
    parts.append(
        f"Charts: {len(report.charts)} in [{html_name}]({html_name}); data: [{csv_name}]({csv_name}). "
        f"Generated {generated:%Y-%m-%d %H:%M:%S} UTC."
    )
    return "\n".join(parts) + "\n"


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(
            [
                "" if v is None else (v.isoformat(sep=" ") if isinstance(v, datetime) else v)
                for v in row
            ]
        )
    return buf.getvalue()
