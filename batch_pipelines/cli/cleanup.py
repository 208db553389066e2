"""``cleanup``: submit a cleanup batch and run it (dry run by default).

The submission module is imported inside the command: registering partitions loads Dagster,
which ``--help`` should not pay for.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from batch_pipelines.app.instance import daemon_running, get_instance
from batch_pipelines.app.queries import get_cleanup_log, get_items
from batch_pipelines.cli.utils import (
    EXIT_FAILED,
    EXIT_OK,
    console,
    fail_manifest,
    fail_refused,
    print_batch,
    print_json,
    run_here,
    watch,
)
from batch_pipelines.core.manifest import ManifestError

DEFAULT_KINDS = ("old_batches", "old_files", "temp_tables", "staging")
ALL_KINDS = ("old_batches", "old_files", "orphan_files", "temp_tables", "staging")


def cleanup_items(older_than_days: float, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The cleanup targets for ``--older-than-days N`` and the chosen kinds."""
    items: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "old_batches":
            items.append({"kind": kind, "older_than_days": older_than_days})
        elif kind == "old_files":
            for root in ("exports", "reports"):
                items.append({"kind": kind, "root": root, "older_than_days": older_than_days})
        elif kind == "orphan_files":
            for root in ("exports", "reports"):
                items.append({"kind": kind, "root": root})
        elif kind == "temp_tables":
            items.append({"kind": kind})
        elif kind == "staging":
            items.append({"kind": kind, "older_than_days": older_than_days})
    return items


@click.command("cleanup")
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0),
    required=True,
    help="Batches finished, and files last modified, more than N days ago.",
)
@click.option(
    "--dry-run/--no-dry-run",
    default=True,
    show_default=True,
    help="List what would be deleted (default), or delete it.",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(ALL_KINDS),
    help=f"Targets (repeatable; default: {', '.join(DEFAULT_KINDS)}).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cleanup(older_than_days: float, dry_run: bool, kinds: tuple[str, ...], as_json: bool) -> None:
    """Delete old batches (ledger rows, partitions, files), old files under the data root's
    exports/ and reports/ folders, leftover temporary tables and stale staging folders.

    Dry run by default: prints what would go. --no-dry-run deletes, and records every
    deletion in the cleanup_log table. Runs in this process unless a Dagster daemon runs.
    """
    from batch_pipelines.app.submit import RateLimitError, submit_batch

    manifest = {
        "operation": "cleanup",
        "name": f"cleanup older than {older_than_days:g} days" + (" (dry run)" if dry_run else ""),
        "priority": "low",
        "options": {"dry_run": dry_run},
        "settings": {"max_retries": 1, "chunk_size": 100},
        "items": cleanup_items(older_than_days, kinds or DEFAULT_KINDS),
    }
    instance = get_instance()
    try:
        batch_id = submit_batch(manifest, instance=instance, source="cli")
    except ManifestError as exc:
        fail_manifest(exc, as_json)
    except RateLimitError as exc:
        fail_refused(exc, as_json)
    if daemon_running(instance):
        if not as_json:
            console.print(f"submitted [bold]{batch_id}[/]; the Dagster daemon is running it")
        batch = watch(batch_id, quiet=as_json, instance=instance)
    else:
        if not as_json:
            console.print(f"submitted [bold]{batch_id}[/]; running it in this process")
        batch = run_here(batch_id, instance, quiet=as_json)
    objects = get_cleanup_log(batch_id)
    failed = get_items(batch_id, status=["failed"])
    code = EXIT_OK if batch["status"] == "completed" else EXIT_FAILED
    if as_json:
        print_json({"batch": batch, "dry_run": dry_run, "objects": objects})
        sys.exit(code)
    print_batch(batch)
    _print_summary(objects, dry_run)
    for item in failed:
        console.print(f"[red]{item['item_id']}[/]: {item['error']}")
    sys.exit(code)


def _print_summary(objects: list[dict[str, Any]], dry_run: bool) -> None:
    verb = "would delete" if dry_run else "deleted"
    if not objects:
        console.print(f"nothing to clean up ({verb} 0 objects)")
        return
    totals: dict[tuple[str, str], list[int]] = {}
    for o in objects:
        t = totals.setdefault((o["target_kind"], o["object_type"]), [0, 0, 0])
        t[0] += 1
        t[1] += o["rows"] or 0
        t[2] += o["bytes"] or 0
    table = Table(title=f"cleanup: {verb}")
    for col in ("target", "object type", "objects", "rows", "bytes"):
        table.add_column(col)
    for (kind, otype), (n, rows, size) in sorted(totals.items()):
        table.add_row(kind, otype, str(n), str(rows), str(size))
    console.print(table)
    for o in objects[:20]:
        console.print(f"  {verb} {o['object_type']} {o['object']}")
    if len(objects) > 20:
        console.print(f"  ... and {len(objects) - 20} more (see cleanup_log)")
    if dry_run:
        console.print("dry run: nothing was deleted; add --no-dry-run to delete")
