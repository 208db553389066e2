"""The ``batch-pipelines`` command line.

Exit codes: 0 ok, 1 the operation failed (a batch that ended with failures, a batch not
found), 2 bad input (an invalid manifest, option or argument). ``--json`` prints
machine-readable output on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batch_pipelines.core import ledger
from batch_pipelines.core.manifest import PRIORITIES, ManifestError
from batch_pipelines.operations import OPERATION_NAMES

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str, indent=2))


def _fail_manifest(exc: ManifestError, as_json: bool) -> None:
    if as_json:
        _print_json(exc.to_dict())
    else:
        err_console.print("[bold red]invalid manifest[/]")
        for field, message in exc.problems:
            err_console.print(f"  [yellow]{field or 'manifest'}[/]: {message}")
    sys.exit(EXIT_BAD_INPUT)


def _parse_option(raw: str) -> tuple[list[str], Any]:
    if "=" not in raw:
        raise BadInput(f"--option {raw!r}: expected key=value")
    key, value = raw.split("=", 1)
    if not key.strip():
        raise BadInput(f"--option {raw!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _set_nested(target: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def _items_from_args(
    items: str | None, items_csv: str | None, items_json: str | None, inline: tuple[str, ...]
) -> dict[str, Any]:
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


def _status_style(status: str) -> str:
    return {
        "completed": "green",
        "completed_with_errors": "yellow",
        "failed": "red",
        "cancelled": "magenta",
        "running": "cyan",
        "paused": "blue",
        "succeeded": "green",
        "skipped": "dim",
    }.get(status, "white")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batch_pipelines")
def main() -> None:
    """Bulk operations as Dagster asset jobs, with a per-item ledger in DuckDB."""
    import warnings

    # Dagster's beta/deprecation notices are for the code's authors, not CLI users.
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", category=UserWarning)


@main.command()
@click.argument("manifest_or_operation")
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
    manifest_or_operation: str,
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
    max_failure_ratio: float | None,
    stop_on_error: bool,
    wait: bool,
    in_process: bool,
    as_json: bool,
) -> None:
    """Submit a batch: a MANIFEST file (JSON or YAML), or an OPERATION with --items.

    \b
    Examples:
      batch-pipelines submit data/inbox/examples/import_penguins.yaml --wait
      batch-pipelines submit import --items 'data/samples/*.csv' \\
          --option target_table=penguins --priority high --wait
    """
    from batch_pipelines.app.instance import daemon_running, get_instance
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.core.manifest import read_manifest_file

    path = Path(manifest_or_operation)
    if manifest_or_operation in OPERATION_NAMES and not path.is_file():
        manifest: dict[str, Any] = {"operation": manifest_or_operation}
        manifest.update(_items_from_args(items, items_csv, items_json, inline))
    elif path.is_file():
        if items or items_csv or items_json or inline:
            raise BadInput("items come from the manifest file; drop --items/--item*")
        try:
            manifest = read_manifest_file(path)
        except ManifestError as exc:
            _fail_manifest(exc, as_json)
    else:
        raise BadInput(
            f"{manifest_or_operation!r} is neither a manifest file nor an operation "
            f"({', '.join(OPERATION_NAMES)})"
        )
    if name:
        manifest["name"] = name
    if priority:
        manifest["priority"] = priority
    opts = manifest.setdefault("options", {})
    if not isinstance(opts, dict):
        _fail_manifest(ManifestError([("options", "must be a mapping")]), as_json)
    for raw in options:
        parts, value = _parse_option(raw)
        _set_nested(opts, parts, value)
    settings = manifest.setdefault("settings", {})
    if not isinstance(settings, dict):
        _fail_manifest(ManifestError([("settings", "must be a mapping")]), as_json)
    for key, value in (
        ("max_retries", max_retries),
        ("item_timeout_s", item_timeout),
        ("chunk_size", chunk_size),
        ("max_failure_ratio", max_failure_ratio),
    ):
        if value is not None:
            settings[key] = value
    if stop_on_error:
        settings["continue_on_error"] = False

    instance = get_instance()
    try:
        batch_id = submit_batch(manifest, instance=instance, source="cli")
    except ManifestError as exc:
        _fail_manifest(exc, as_json)
    if not (wait or in_process):
        batch = _get_batch_or_exit(batch_id)
        if as_json:
            _print_json(batch)
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
    if in_process or not daemon_running(instance):
        if not as_json:
            console.print(f"submitted [bold]{batch_id}[/]; running it in this process")
        batch = _run_here(batch_id, instance, quiet=as_json)
    else:
        if not as_json:
            console.print(f"submitted [bold]{batch_id}[/]; the Dagster daemon is running it")
        batch = _watch(batch_id, quiet=as_json)
    _finish(batch, as_json)


def _get_batch_or_exit(batch_id: str) -> dict[str, Any]:
    from batch_pipelines.app.queries import get_batch

    batch = get_batch(batch_id)
    if batch is None:
        err_console.print(f"[red]no batch {batch_id!r}[/]")
        sys.exit(EXIT_FAILED)
    return batch


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _counts(batch: dict[str, Any]) -> str:
    return (
        f"ok {batch['succeeded_items']}  failed {batch['failed_items']}  "
        f"skipped {batch['skipped_items']}  cancelled {batch['cancelled_items']}  "
        f"[{_status_style(batch['status'])}]{batch['status']}[/]"
    )


def _run_here(batch_id: str, instance, quiet: bool) -> dict[str, Any]:  # noqa: ANN001
    from batch_pipelines.app.inprocess import ChunkRunError, run_batch_in_process

    try:
        return _run_here_inner(batch_id, instance, quiet, run_batch_in_process)
    except ChunkRunError as exc:
        err_console.print(f"[red]{exc}[/]")
        sys.exit(EXIT_FAILED)


def _run_here_inner(batch_id: str, instance, quiet: bool, run) -> dict[str, Any]:  # noqa: ANN001
    batch = _get_batch_or_exit(batch_id)
    if quiet:
        return run(batch_id, instance, log_level="CRITICAL")
    with _progress() as progress:
        task = progress.add_task(batch_id, total=batch["total_items"], counts=_counts(batch))

        def update(b: dict[str, Any]) -> None:
            progress.update(task, completed=b["processed_items"], counts=_counts(b))

        batch = run(batch_id, instance, on_chunk_done=update, log_level="CRITICAL")
        update(batch)
    return batch


def _watch(batch_id: str, quiet: bool, timeout_s: float | None = None) -> dict[str, Any]:
    start = time.monotonic()
    batch = _get_batch_or_exit(batch_id)
    if quiet:
        while batch["status"] not in ledger.TERMINAL_BATCH_STATUSES:
            if timeout_s and time.monotonic() - start > timeout_s:
                break
            time.sleep(1)
            batch = _get_batch_or_exit(batch_id)
        return batch
    with _progress() as progress:
        task = progress.add_task(batch_id, total=batch["total_items"], counts=_counts(batch))
        while True:
            progress.update(task, completed=batch["processed_items"], counts=_counts(batch))
            if batch["status"] in ledger.TERMINAL_BATCH_STATUSES:
                break
            if timeout_s and time.monotonic() - start > timeout_s:
                break
            time.sleep(1)
            batch = _get_batch_or_exit(batch_id)
    return batch


def _finish(batch: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(batch)
    else:
        _print_batch(batch)
    sys.exit(EXIT_OK if batch["status"] == "completed" else EXIT_FAILED)


def _print_batch(batch: dict[str, Any], runs: list[dict[str, Any]] | None = None) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    style = _status_style(batch["status"])
    rows = [
        ("batch", batch["batch_id"]),
        ("name", batch["name"]),
        ("operation", batch["operation"]),
        (
            "status",
            f"[{style}]{batch['status']}[/]"
            + (" (paused)" if batch.get("paused") and batch["status"] != "paused" else ""),
        ),
        ("priority", batch["priority"]),
        (
            "progress",
            f"{batch['processed_items']}/{batch['total_items']} ({batch['progress']:.0%})",
        ),
        (
            "items",
            f"succeeded {batch['succeeded_items']}, failed {batch['failed_items']}, "
            f"skipped {batch['skipped_items']}, cancelled {batch['cancelled_items']}",
        ),
        (
            "submitted",
            f"{batch['created_at']:%Y-%m-%d %H:%M:%S} UTC by {batch['submitted_by']} "
            f"via {batch['source']}",
        ),
    ]
    if batch.get("started_at"):
        rows.append(("started", f"{batch['started_at']:%Y-%m-%d %H:%M:%S} UTC"))
    if batch.get("completed_at"):
        rows.append(("completed", f"{batch['completed_at']:%Y-%m-%d %H:%M:%S} UTC"))
    if batch.get("parent_batch_id"):
        rows.append(("parent", batch["parent_batch_id"]))
    if batch.get("error"):
        rows.append(("error", f"[red]{batch['error']}[/]"))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    total = max(batch["total_items"], 1)
    width = 40
    done = int(width * batch["processed_items"] / total)
    console.print(f"[{style}]{'█' * done}[/]{'░' * (width - done)} {batch['progress']:.0%}")
    if runs:
        rt = Table(title="current runs")
        for col in ("run_id", "chunk", "status"):
            rt.add_column(col)
        for r in runs:
            rt.add_row(r["run_id"], str(r["chunk"]), r["status"])
        console.print(rt)


def _active_runs(batch_id: str) -> list[dict[str, Any]]:
    from dagster import DagsterRunStatus, RunsFilter

    from batch_pipelines.app.instance import get_instance

    try:
        instance = get_instance()
        runs = instance.get_runs(
            filters=RunsFilter(
                tags={"batch/id": batch_id},
                statuses=[
                    DagsterRunStatus.QUEUED,
                    DagsterRunStatus.NOT_STARTED,
                    DagsterRunStatus.STARTING,
                    DagsterRunStatus.STARTED,
                    DagsterRunStatus.CANCELING,
                ],
            )
        )
    except Exception:  # noqa: BLE001 - status still works without a Dagster instance
        return []
    return [
        {"run_id": r.run_id, "chunk": r.tags.get("batch/chunk"), "status": r.status.value}
        for r in runs
    ]


@main.command()
@click.argument("batch_id")
@click.option("--watch", is_flag=True, help="Follow progress until the batch finishes.")
@click.option("--json", "as_json", is_flag=True)
def status(batch_id: str, watch: bool, as_json: bool) -> None:
    """Show a batch: status, progress bar, counts and its current Dagster runs."""
    batch = _get_batch_or_exit(batch_id)
    if watch:
        batch = _watch(batch_id, quiet=as_json)
    runs = _active_runs(batch_id)
    if as_json:
        _print_json({**batch, "runs": runs})
    else:
        _print_batch(batch, runs)
    if watch:
        sys.exit(EXIT_OK if batch["status"] == "completed" else EXIT_FAILED)


def _parse_date(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: {value!r} is not a date (YYYY-MM-DD or ISO timestamp)") from None


@main.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(list(ledger.BATCH_STATUSES)),
    help="Filter (repeatable).",
)
@click.option("--operation", "operations", multiple=True, type=click.Choice(list(OPERATION_NAMES)))
@click.option("--created-after", help="YYYY-MM-DD or ISO timestamp (UTC).")
@click.option("--created-before", help="YYYY-MM-DD or ISO timestamp (UTC).")
@click.option("--limit", type=int, default=50, show_default=True, help="1 to 100.")
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(
    statuses: tuple[str, ...],
    operations: tuple[str, ...],
    created_after: str | None,
    created_before: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List batches, newest first."""
    from batch_pipelines.app.queries import list_batches

    after = _parse_date(created_after, "--created-after")
    before = _parse_date(created_before, "--created-before")
    if after and before and after >= before:
        raise BadInput("--created-after must be earlier than --created-before")
    try:
        batches = list_batches(
            status=statuses,
            operation=operations,
            created_after=after,
            created_before=before,
            limit=limit,
            offset=offset,
        )
    except ValueError as exc:
        raise BadInput(f"--limit/--offset: {exc}") from None
    if as_json:
        _print_json(batches)
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
            f"[{_status_style(b['status'])}]{b['status']}[/]",
            b["priority"],
            f"{b['processed_items']}/{b['total_items']}",
            str(b["succeeded_items"]),
            str(b["failed_items"]),
            f"{b['created_at']:%Y-%m-%d %H:%M}",
        )
    console.print(table)
    if not batches:
        console.print("no batches match")


@main.command()
@click.argument("batch_id")
@click.option("--status", "statuses", multiple=True, type=click.Choice(list(ledger.ITEM_STATUSES)))
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def items(batch_id: str, statuses: tuple[str, ...], limit: int, offset: int, as_json: bool) -> None:
    """List a batch's items with status, attempts, duration and error."""
    from batch_pipelines.app.queries import get_items

    if limit < 1 or offset < 0:
        raise BadInput("--limit must be at least 1 and --offset at least 0")
    _get_batch_or_exit(batch_id)
    rows = get_items(batch_id, status=statuses, limit=limit, offset=offset)
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for col in ("item_id", "status", "attempts", "ms", "quality", "category", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["item_id"],
            f"[{_status_style(r['status'])}]{r['status']}[/]",
            str(r["attempts"]),
            "" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}",
            "" if r["quality_score"] is None else f"{r['quality_score']:.2f}",
            r["error_category"] or "",
            r["error"] or "",
        )
    console.print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def demo(as_json: bool) -> None:
    """Run a demo batch over the bundled sample files in this process and print a summary."""
    from batch_pipelines.app.demo import run_demo

    results = run_demo(quiet=as_json)
    if as_json:
        _print_json(results)
    sys.exit(
        EXIT_OK
        if all(r["status"] in ("completed", "completed_with_errors") for r in results)
        else EXIT_FAILED
    )


from batch_pipelines.cli.analytics import report, stats  # noqa: E402

main.add_command(report)
main.add_command(stats)


from batch_pipelines.cli.control import cancel, pause, resume, retry  # noqa: E402

for _command in (cancel, pause, resume, retry):
    main.add_command(_command)

from batch_pipelines.cli.cleanup import cleanup  # noqa: E402

main.add_command(cleanup)

from batch_pipelines.cli.sql import sql  # noqa: E402

main.add_command(sql)

if __name__ == "__main__":
    main()
