"""``sql``: read-only SQL on the warehouse, taking turns with running batches."""

from __future__ import annotations

import csv
import json
import sys

import click
import duckdb
from rich.table import Table

from batch_pipelines.cli.utils import EXIT_BAD_INPUT, console, err_console
from batch_pipelines.core import config, warehouse
from batch_pipelines.core.sqlcheck import refuse_side_effects


@click.command()
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--limit",
    type=int,
    default=1000,
    show_default=True,
    help="Most rows printed (the query itself is not changed).",
)
def sql(query: str, fmt: str, limit: int) -> None:
    """Run a read-only SQL QUERY on the warehouse and print the result.

    The warehouse is opened read-only under the project's lock, so this works while batches
    run (a plain `duckdb` shell would be refused by DuckDB's single-writer lock). Nothing
    outside the warehouse is reachable: no COPY, ATTACH, INSTALL or LOAD, no file reads; a
    query is stopped after BATCH_PIPELINES_QUERY_TIMEOUT_S seconds (default 300).

    \b
    Example:
      batch-pipelines sql "select status, count(*) from batch_items group by 1"
    """
    if limit < 1:
        err_console.print("[red]--limit must be at least 1[/]")
        sys.exit(EXIT_BAD_INPUT)
    try:
        refuse_side_effects(query)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/]")
        sys.exit(EXIT_BAD_INPUT)
    try:
        with warehouse.connect(
            read_only=True, sandbox=True, query_timeout_s=config.query_timeout_s()
        ) as con:
            rel = con.execute(query)
            if rel.description is None:
                names, rows = [], []
            else:
                names = [d[0] for d in rel.description]
                rows = rel.fetchmany(limit)
    except duckdb.Error as exc:
        err_console.print(f"[red]{str(exc).splitlines()[0]}[/]")
        sys.exit(EXIT_BAD_INPUT)
    if fmt == "json":
        click.echo(
            json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str, indent=2)
        )
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    else:
        table = Table()
        for n in names:
            table.add_column(n, overflow="fold")
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        console.print(table)
        console.print(f"{len(rows)} row(s)")
