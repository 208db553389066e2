"""``metrics`` (OpenMetrics text for Prometheus) and ``webhooks`` (deliver the lifecycle
webhooks now, list delivery attempts)."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from batch_pipelines.cli.utils import EXIT_BAD_INPUT, EXIT_FAILED, console, err_console, print_json
from batch_pipelines.core import outbox, warehouse, webhooks
from batch_pipelines.core.metrics import get_metrics


@click.command("metrics")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["openmetrics", "prometheus"]),
    default="openmetrics",
    show_default=True,
    help="prometheus: the classic text format, for node-exporter's textfile collector.",
)
def metrics(fmt: str) -> None:
    """Print the ledger's figures in the OpenMetrics text format: items by status and
    operation, queue depth, in-flight runs, item duration histogram, HTTP 429s, webhook
    failures. Point a scrape job or a node-exporter textfile collector at it."""
    sys.stdout.write(get_metrics(openmetrics=fmt == "openmetrics"))


@click.group("webhooks")
def webhooks_group() -> None:
    """Lifecycle webhooks (BATCH_PIPELINES_WEBHOOK_URL, BATCH_PIPELINES_WEBHOOK_SECRET)."""


@webhooks_group.command("deliver")
@click.option("--json", "as_json", is_flag=True)
def deliver(as_json: bool) -> None:
    """Send the lifecycle events not sent yet (what the webhook_sender sensor does every few
    seconds under the daemon); exit 1 if an attempt failed."""
    try:
        targets = webhooks.endpoints()
    except webhooks.WebhookConfigError as exc:
        err_console.print(f"[red]{exc}[/]")
        sys.exit(EXIT_BAD_INPUT)
    if not targets:
        err_console.print(f"[red]{webhooks.WEBHOOK_ENV} is not set[/]")
        sys.exit(EXIT_BAD_INPUT)
    total = outbox.PassResult()
    while True:
        r = outbox.deliver(targets=targets)
        total.enqueued += r.enqueued
        total.delivered += r.delivered
        total.failed_attempts += r.failed_attempts
        total.due_later = r.due_later
        if not r.delivered or r.failed_attempts:
            break
    summary = {
        "enqueued": total.enqueued,
        "delivered": total.delivered,
        "failed_attempts": total.failed_attempts,
        "waiting": total.due_later,
    }
    if as_json:
        print_json(summary)
    else:
        console.print(", ".join(f"{k} {v}" for k, v in summary.items()))
    if total.failed_attempts:
        sys.exit(EXIT_FAILED)


@webhooks_group.command("list")
@click.option("--batch", "batch_id", help="Only the deliveries of this batch.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_deliveries(batch_id: str | None, limit: int, as_json: bool) -> None:
    """Delivery attempts, newest first (the webhook_deliveries table)."""
    with warehouse.connect(read_only=True) as con:
        rel = con.execute(
            'select delivery_id, "at", event, batch_id, endpoint, attempt, status_code, '
            "delivered, error from webhook_deliveries where ? is null or batch_id = ? "
            "order by delivery_id desc limit ?",
            [batch_id, batch_id, limit],
        )
        names = [d[0] for d in rel.description]
        rows = [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("at", "event", "batch", "endpoint", "attempt", "status", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            f"{r['at']:%Y-%m-%d %H:%M:%S}",
            r["event"],
            r["batch_id"] or "",
            r["endpoint"],
            str(r["attempt"]),
            "delivered" if r["delivered"] else str(r["status_code"] or "failed"),
            r["error"] or "",
        )
    console.print(table)
