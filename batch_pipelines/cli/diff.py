"""``diff BATCH_A BATCH_B``: what changed between two batches of the same operation."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from batch_pipelines.cli.utils import EXIT_BAD_INPUT, console, err_console, print_json
from batch_pipelines.core.diff import DEFAULT_LIMIT, DiffError, diff_batches
from batch_pipelines.core.fmt import fmt_value


def _table(title: str, headers: list[str], rows: list[list[str]], numeric: int = 0) -> Table:
    """A table whose last ``numeric`` columns are right-aligned figures."""
    table = Table(title=title, title_justify="left")
    for n, header in enumerate(headers):
        right = n >= len(headers) - numeric
        table.add_column(header, justify="right" if right else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _signed(value: float | None, kind: str = "") -> str:
    if value is None:
        return "-"
    text = fmt_value(abs(value), kind)  # type: ignore[arg-type]
    return f"+{text}" if value > 0 else f"-{text}" if value < 0 else text


def _batch_line(side: str, b: dict[str, Any]) -> str:
    template = f", template {b['template']}" if b["template"] else ""
    return (
        f"[bold]{side}[/] {b['batch_id']}  {b['status']}, {b['items']:,} items, "
        f"created {fmt_value(b['created_at'], 'time')}{template}"
    )


def _print_diff(d: dict[str, Any]) -> None:
    console.print(f"[bold]diff[/] of two {d['operation']} batches", highlight=False)
    console.print(_batch_line("A", d["a"]), highlight=False)
    console.print(_batch_line("B", d["b"]), highlight=False)
    n = d["items"]
    console.print(
        _table(
            "items (matched by item_id)",
            ["only in A", "only in B", "in both", "changed", "unchanged"],
            [[f"{n[k]:,}" for k in ("only_in_a", "only_in_b", "in_both", "changed", "unchanged")]],
            numeric=5,
        )
    )
    if d["changed_fields"]:
        rows = [[f["field"], f"{f['items']:,}"] for f in d["changed_fields"]]
        console.print(_table("changed fields", ["field", "items"], rows, numeric=1))
        rows = [
            [item["item_id"] if i == 0 else "", f["field"], _cell(f["a"]), _cell(f["b"])]
            for item in d["changed"]
            for i, f in enumerate(item["fields"])
        ]
        console.print(
            _table(_shown("changed items", d, n["changed"]), ["item", "field", "A", "B"], rows)
        )
    for side in ("a", "b"):
        only = d[f"only_in_{side}"]
        if only:
            rows = [[o["item_id"], o["status"], o["error_category"] or ""] for o in only]
            title = _shown(f"only in {side.upper()}", d, n[f"only_in_{side}"])
            console.print(_table(title, ["item", "status", "error category"], rows))
    console.print(_deltas(d))
    if d["error_categories"]:
        rows = [
            [e["error_category"], f"{e['a']:,}", f"{e['b']:,}", _signed(e["delta"]), e["change"]]
            for e in d["error_categories"]
        ]
        headers = ["error category", "A", "B", "delta", "change"]
        console.print(_table("failed items by error category", headers, rows))
    else:
        console.print("[dim]no failed items in either batch[/]")


def _cell(value: str | None) -> str:
    return "[dim]∅[/]" if value is None else value


def _shown(title: str, d: dict[str, Any], total: int) -> str:
    return f"{title}: first {d['limit']:,} of {total:,}" if total > d["limit"] else title


def _deltas(d: dict[str, Any]) -> Table:
    rows = []
    for label, key, kind in (("quality", "quality", ""), ("duration ms", "duration_ms", "ms")):
        for stat in ("p50", "p95"):
            s = d[key]
            rows.append(
                [
                    f"{label} {stat}",
                    fmt_value(s["a"][stat], kind, units=False),  # type: ignore[arg-type]
                    fmt_value(s["b"][stat], kind, units=False),  # type: ignore[arg-type]
                    _signed(s["delta"][stat]),
                ]
            )
    return _table("quality and duration (B - A)", ["figure", "A", "B", "delta"], rows, numeric=3)


@click.command("diff")
@click.argument("batch_a")
@click.argument("batch_b")
@click.option(
    "--limit",
    type=click.IntRange(0, 100_000),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Items listed per list (changed, only in A, only in B); the counts cover all.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/diff.md).")
def diff(batch_a: str, batch_b: str, limit: int, as_json: bool) -> None:
    """Compare batch BATCH_B with BATCH_A (same operation): items only in one, items whose
    result changed (field by field), quality and duration p50/p95 deltas, error categories
    that appeared or vanished. Exit 2 for an unknown id or batches of different operations."""
    try:
        result = diff_batches(batch_a, batch_b, limit=limit)
    except DiffError as exc:
        if as_json:
            print_json({"error": str(exc)})
        else:
            err_console.print(f"[bold red]{exc}[/]", highlight=False)
        raise SystemExit(EXIT_BAD_INPUT) from None
    if as_json:
        print_json(result)
    else:
        _print_diff(result)
