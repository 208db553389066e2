"""``submit``, ``status``, ``list``, ``items``: put a batch in and look at batches.

The read verbs go through the ledger only. ``submit`` imports the submission module inside
the command, because registering partitions loads Dagster; ``status`` asks Dagster for
current runs only while the ledger says the batch can have some.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from batch_pipelines.app.instance import active_runs, daemon_running, get_instance
from batch_pipelines.app.queries import (
    get_items,
    get_provenance,
    list_batches,
    may_have_active_runs,
)
from batch_pipelines.cli.templates import manifest_from_template
from batch_pipelines.cli.utils import (
    EXIT_FAILED,
    EXIT_OK,
    BadInput,
    OperationChoice,
    console,
    fail_manifest,
    fail_refused,
    finish,
    get_batch_or_exit,
    operation_names,
    options_from_args,
    orphan_lines,
    parse_date,
    print_batch,
    print_json,
    run_here,
    status_style,
    watch,
)
from batch_pipelines.core import ledger
from batch_pipelines.core.errors import ConfigError
from batch_pipelines.core.manifest import PRIORITIES, ManifestError, read_manifest_file


def items_from_args(
    items: str | None, items_csv: str | None, items_json: str | None, inline: tuple[str, ...]
) -> dict[str, Any]:
    """The manifest's ``items`` or ``items_from`` from submit's item flags."""
    given = [x for x in (items, items_csv, items_json) if x] + list(inline)
    if not given:
        raise BadInput("give the items: --items FILE|GLOB, --items-csv, --items-json or --item")
    if items and sum(1 for x in (items_csv, items_json) if x) + len(inline):
        raise BadInput("--items cannot be combined with --items-csv, --items-json or --item")
    if items:
        if any(ch in items for ch in "*?["):
            return {"items_from": {"glob": items}}
        return {"items": [{"path": items}]}
    if items_csv:
        return {"items_from": {"csv": items_csv}}
    out: list[Any] = []
    if items_json:
        path = Path(items_json)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BadInput(f"--items-json: cannot read {items_json}: {exc}") from None
        try:
            if path.suffix.lower() in (".ndjson", ".jsonl"):
                out += [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                data = json.loads(text)
                out += data["items"] if isinstance(data, dict) and "items" in data else data
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(
                f"--items-json: {items_json} is not a JSON list of items: {exc}"
            ) from None
    for raw in inline:
        try:
            value = json.loads(raw)
        except ValueError:
            value = {"path": raw} if not raw.lstrip().startswith("{") else None
        if value is None:
            raise BadInput(f"--item {raw!r}: not valid JSON")
        out.append(value)
    return {"items": out}


def _manifest_from_args(
    manifest_or_operation: str,
    item_args: tuple[str | None, str | None, str | None, tuple[str, ...]],
    as_json: bool,
) -> dict[str, Any]:
    path = Path(manifest_or_operation)
    if manifest_or_operation in operation_names() and not path.is_file():
        return {"operation": manifest_or_operation, **items_from_args(*item_args)}
    if path.is_file():
        if any(item_args):
            raise BadInput("items come from the manifest file; drop --items/--item*")
        try:
            return read_manifest_file(path)
        except ManifestError as exc:
            fail_manifest(exc, as_json)
    raise BadInput(
        f"{manifest_or_operation!r} is neither a manifest file nor an operation "
        f"({', '.join(operation_names())})"
    )


@click.command()
@click.argument("manifest_or_operation", required=False)
@click.option(
    "--template",
    "template_name",
    metavar="NAME",
    help="Submit the manifest saved as template NAME (see `batch-pipelines template`).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="With --template: set a dotted key of its manifest, e.g. options.model=x (repeat).",
)
@click.option("--items", help="A file or a glob of files: one item per file ({path: ...}).")
@click.option("--items-csv", help="A CSV file with one item per row (header = item fields).")
@click.option("--items-json", help="A JSON list (or NDJSON) of item objects.")
@click.option("--item", "inline", multiple=True, help="One item as JSON (repeatable).")
@click.option("--name", help="Batch name.")
@click.option("--priority", type=click.Choice(list(PRIORITIES)), help="Batch priority.")
@click.option("--option", "options", multiple=True, help="Operation option key=value (repeat).")
@click.option("--max-retries", type=int, help="Retries per item for retryable errors.")
@click.option("--item-timeout", type=float, help="Per-item timeout in seconds.")
@click.option("--chunk-size", type=int, help="Items per Dagster run.")
@click.option(
    "--item-concurrency", type=int, help="Items of a chunk run in flight at once (1-256)."
)
@click.option("--max-failure-ratio", type=float, help="Error budget: stop the batch beyond it.")
@click.option("--stop-on-error", is_flag=True, help="Stop the batch at the first failed item.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until the batch finishes (runs it in-process when no Dagster daemon is running).",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Run the batch in this process even if a daemon is running (implies --wait).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit(
    manifest_or_operation: str | None,
    template_name: str | None,
    sets: tuple[str, ...],
    items: str | None,
    items_csv: str | None,
    items_json: str | None,
    inline: tuple[str, ...],
    name: str | None,
    priority: str | None,
    options: tuple[str, ...],
    max_retries: int | None,
    item_timeout: float | None,
    chunk_size: int | None,
    item_concurrency: int | None,
    max_failure_ratio: float | None,
    stop_on_error: bool,
    wait: bool,
    in_process: bool,
    as_json: bool,
) -> None:
    """Submit a batch: a MANIFEST file (JSON or YAML), an OPERATION with --items, or a saved
    template with --template NAME [--set key=value ...].

    \b
    Examples:
      batch-pipelines submit data/samples/manifests/import_penguins.yaml --wait
      batch-pipelines submit import --items 'data/samples/*.csv' \\
          --option target_table=penguins --priority high --wait
      batch-pipelines submit --template nightly-penguins --set settings.chunk_size=5
    """
    from batch_pipelines.app.submit import RateLimitError, submit_batch

    item_args = (items, items_csv, items_json, inline)
    if template_name:
        manifest = manifest_from_template(
            template_name, sets, manifest_or_operation, item_args, as_json
        )
    elif sets:
        raise BadInput("--set applies to --template NAME; use --option for an operation's options")
    elif manifest_or_operation is None:
        raise BadInput("give a MANIFEST file, an OPERATION with --items, or --template NAME")
    else:
        manifest = _manifest_from_args(manifest_or_operation, item_args, as_json)
    if name:
        manifest["name"] = name
    if priority:
        manifest["priority"] = priority
    opts = manifest.setdefault("options", {})
    if not isinstance(opts, dict):
        fail_manifest(ManifestError([("options", "must be a mapping")]), as_json)
    options_from_args(options, opts)
    settings = manifest.setdefault("settings", {})
    if not isinstance(settings, dict):
        fail_manifest(ManifestError([("settings", "must be a mapping")]), as_json)
    for key, value in (
        ("max_retries", max_retries),
        ("item_timeout_s", item_timeout),
        ("chunk_size", chunk_size),
        ("item_concurrency", item_concurrency),
        ("max_failure_ratio", max_failure_ratio),
    ):
        if value is not None:
            settings[key] = value
    if stop_on_error:
        settings["continue_on_error"] = False

    instance = get_instance()
    try:
        batch_id = submit_batch(manifest, instance=instance, source="cli", template=template_name)
    except ManifestError as exc:
        fail_manifest(exc, as_json)
    except RateLimitError as exc:
        fail_refused(exc, as_json)
    if not (wait or in_process):
        batch = get_batch_or_exit(batch_id)
        if as_json:
            print_json(batch)
        else:
            console.print(
                f"submitted [bold]{batch_id}[/] ({batch['total_items']} items, "
                f"{batch['chunk_count']} chunk runs, priority {batch['priority']})"
            )
            if not daemon_running(instance):
                console.print(
                    "[yellow]no Dagster daemon is running: start `make run` to "
                    "launch it, or submit with --wait to run it here[/]"
                )
        return
    daemon = None if in_process else daemon_running(instance)
    if not daemon:
        if not as_json:
            why = "" if daemon is None else f" ({daemon.reason})"
            console.print(f"submitted [bold]{batch_id}[/]; running it in this process{why}")
        batch = run_here(batch_id, instance, quiet=as_json)
    else:
        if not as_json:
            console.print(f"submitted [bold]{batch_id}[/]; the Dagster daemon is running it")
        batch = watch(batch_id, quiet=as_json, instance=instance)
    finish(batch, as_json)


@click.command()
@click.argument("batch_id")
@click.option("--watch", "follow", is_flag=True, help="Follow progress until the batch finishes.")
@click.option("--json", "as_json", is_flag=True)
def status(batch_id: str, follow: bool, as_json: bool) -> None:
    """Show a batch: status, progress bar, counts and its current Dagster runs."""
    batch = get_batch_or_exit(batch_id)
    if follow:
        batch = watch(batch_id, quiet=as_json)
    runs = active_runs(batch_id) if may_have_active_runs(batch) else []
    orphans = _orphans(batch_id)
    gone = {o.run_id for o in orphans}
    for r in runs:
        if r["run_id"] in gone:
            r["status"] += " (worker gone)"
    if as_json:
        print_json({**batch, "runs": runs, "orphaned": [o.to_dict() for o in orphans]})
    else:
        print_batch(batch, runs)
        for line in orphan_lines(batch_id, orphans):
            console.print(f"[yellow]{line}[/]", highlight=False)
    if follow:
        sys.exit(EXIT_OK if batch["status"] == "completed" else EXIT_FAILED)


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    return parse_date(value, param.opts[0])


def _orphans(batch_id: str) -> list:
    """The batch's items left running by a run that is over or whose worker is gone; asks
    Dagster only when the ledger has running items."""
    if not get_items(batch_id, status=["running"], limit=1):
        return []
    from batch_pipelines.app.recovery import find_orphans

    try:
        return find_orphans(get_instance(), batch_id)
    except Exception:  # noqa: BLE001 - no readable instance: the ledger alone answers
        return []


@click.command("list")
@click.option(
    "--status",
    multiple=True,
    type=click.Choice(list(ledger.BATCH_STATUSES)),
    help="Filter (repeatable).",
)
@click.option("--operation", multiple=True, type=OperationChoice())
@click.option("--created-after", callback=_date, help="YYYY-MM-DD or ISO timestamp (UTC).")
@click.option("--created-before", callback=_date, help="YYYY-MM-DD or ISO timestamp (UTC).")
@click.option("--limit", type=int, default=50, show_default=True, help="1 to 100.")
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool, **filters: Any) -> None:  # noqa: ANN401
    """List batches, newest first."""
    after, before = filters["created_after"], filters["created_before"]
    if after and before and after >= before:
        raise BadInput("--created-after must be earlier than --created-before")
    try:
        batches = list_batches(**filters)
    except ConfigError:
        raise
    except ValueError as exc:
        raise BadInput(f"--limit/--offset: {exc}") from None
    if as_json:
        print_json(batches)
        return
    table = Table()
    for col in (
        "batch_id",
        "operation",
        "name",
        "status",
        "priority",
        "progress",
        "ok",
        "failed",
        "created (UTC)",
    ):
        table.add_column(col)
    for b in batches:
        table.add_row(
            b["batch_id"],
            b["operation"],
            b["name"][:40],
            f"[{status_style(b['status'])}]{b['status']}[/]",
            b["priority"],
            f"{b['processed_items']}/{b['total_items']}",
            str(b["succeeded_items"]),
            str(b["failed_items"]),
            f"{b['created_at']:%Y-%m-%d %H:%M}",
        )
    console.print(table)
    if not batches:
        console.print("no batches match")


@click.command()
@click.argument("batch_id")
@click.option("--status", "statuses", multiple=True, type=click.Choice(list(ledger.ITEM_STATUSES)))
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@click.option(
    "--provenance",
    is_flag=True,
    help="Where each result came from: code and library versions, options and input hashes, "
    "backend and model, run and attempt (the item_provenance view).",
)
@click.option("--json", "as_json", is_flag=True)
def items(
    batch_id: str,
    statuses: tuple[str, ...],
    limit: int,
    offset: int,
    provenance: bool,
    as_json: bool,
) -> None:
    """List a batch's items with status, attempts, duration and error."""
    if limit < 1 or offset < 0:
        raise BadInput("--limit must be at least 1 and --offset at least 0")
    get_batch_or_exit(batch_id)
    if provenance:
        _print_provenance(
            get_provenance(batch_id, status=statuses, limit=limit, offset=offset), as_json
        )
        return
    rows = get_items(batch_id, status=statuses, limit=limit, offset=offset)
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("item_id", "status", "attempts", "ms", "quality", "category", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["item_id"],
            f"[{status_style(r['status'])}]{r['status']}[/]",
            str(r["attempts"]),
            "" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}",
            "" if r["quality_score"] is None else f"{r['quality_score']:.2f}",
            r["error_category"] or "",
            r["error"] or "",
        )
    console.print(table)


def _print_provenance(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    table = Table()
    columns = ("item_id", "status", "attempt", "input", "input sha256", "options", "code", "run")
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["item_id"],
            f"[{status_style(r['status'])}]{r['status']}[/]",
            str(r["attempt"]),
            "" if r["input_key"] == r["item_id"] else r["input_key"] or "",
            (r["input_sha256"] or "")[:16],
            (r["options_hash"] or "")[:12],
            r["code_version"] or "",
            (r["run_id"] or "")[:8],
        )
    console.print(table)
    backends = {(r["backend"], r["model"]) for r in rows if r["backend"] or r["model"]}
    versions = {(r["dagster_version"], r["duckdb_version"]) for r in rows if r["dagster_version"]}
    for backend, model in sorted(backends, key=str):
        console.print(f"backend {backend}, model {model}")
    for dagster, duck in sorted(versions, key=str):
        console.print(f"dagster {dagster}, duckdb {duck}")
