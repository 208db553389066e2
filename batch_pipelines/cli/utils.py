"""What the command modules share: consoles, exit codes, JSON output, option parsing, status
colours, a batch's summary and following a batch's progress.

Exit codes: 0 ok, 1 the operation failed (a batch that ended with failures, a batch not
found), 2 bad input (an invalid manifest, option or argument) or a submission refused
(``rate limit: ...``): nothing was registered.

The operation registry is imported inside ``operation_names``: it loads every operation's
models and handler (about 0.1 s), which most verbs never need. ``run_here`` imports the Dagster
definitions inside it, as only running a batch here needs them.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batch_pipelines.app.inprocess import BatchInterrupted, ChunkRunError, run_batch_in_process
from batch_pipelines.app.queries import get_batch
from batch_pipelines.core import ledger
from batch_pipelines.core.manifest import ManifestError

if TYPE_CHECKING:
    from dagster import DagsterInstance

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

STATUS_STYLES = {
    "completed": "green",
    "completed_with_errors": "yellow",
    "failed": "red",
    "cancelled": "magenta",
    "rolled_back": "magenta",
    "running": "cyan",
    "paused": "blue",
    "canary_failed": "red",
    "succeeded": "green",
    "skipped": "dim",
}


class BadInput(click.ClickException):
    """A bad option or argument: printed as a usage error, exit code 2."""

    exit_code = EXIT_BAD_INPUT


class OperationChoice(click.Choice):
    """The registered operations, looked up only when a value or this option's help needs
    them, not when a command merely has the option."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return operation_names()

    @choices.setter
    def choices(self, _value: Any) -> None:  # noqa: ANN401 - click's constructor sets it
        pass


def operation_names() -> tuple[str, ...]:
    """The names of the registered operations."""
    from batch_pipelines.operations import OPERATION_NAMES

    return OPERATION_NAMES


def status_style(status: str) -> str:
    """The rich colour of a batch or item status."""
    return STATUS_STYLES.get(status, "white")


def print_json(data: Any) -> None:  # noqa: ANN401 - anything JSON-able, datetimes as text
    click.echo(json.dumps(data, default=str, indent=2))


def fail_manifest(exc: ManifestError, as_json: bool) -> NoReturn:
    """Print a rejected manifest's problems, one line per field, and exit 2."""
    if as_json:
        print_json(exc.to_dict())
    else:
        err_console.print(f"[bold red]{exc.kind}[/]")
        for field, message in exc.problems:
            err_console.print(f"  [yellow]{field or 'manifest'}[/]: {message}")
    sys.exit(EXIT_BAD_INPUT)


def fail_refused(exc: Exception, as_json: bool) -> NoReturn:
    """Print why a valid submission was refused (``rate limit: ...``) and exit 2: nothing was
    registered, and the same command succeeds once the cause is gone."""
    if as_json:
        to_dict = getattr(exc, "to_dict", None)
        print_json(to_dict() if to_dict else {"error": str(exc)})
    else:
        err_console.print(f"[bold red]{exc}[/]", highlight=False)
    sys.exit(EXIT_BAD_INPUT)


def parse_option(raw: str) -> tuple[list[str], Any]:
    """``a.b=value`` as (["a", "b"], value), the value read as YAML (``3`` is a number)."""
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


def set_nested(target: dict[str, Any], parts: list[str], value: Any) -> None:  # noqa: ANN401
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def options_from_args(raw_options: tuple[str, ...], into: dict[str, Any]) -> dict[str, Any]:
    """Apply every ``--option key=value`` to ``into``; returns it."""
    for raw in raw_options:
        parts, value = parse_option(raw)
        set_nested(into, parts, value)
    return into


def parse_date(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: {value!r} is not a date (YYYY-MM-DD or ISO timestamp)") from None


def actor() -> str:
    """Who acts, for the audit events: ``cli:<user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "cli:unknown"


def get_batch_or_exit(batch_id: str) -> dict[str, Any]:
    batch = get_batch(batch_id)
    if batch is None:
        from batch_pipelines.app.queries import deleted_record

        gone = deleted_record(batch_id)
        why = f" (deleted {gone['at']:%Y-%m-%d %H:%M:%S} UTC by {gone['actor']})" if gone else ""
        err_console.print(f"[red]no batch {batch_id!r}{why}[/]")
        sys.exit(EXIT_FAILED)
    return batch


def print_batch(batch: dict[str, Any], runs: list[dict[str, Any]] | None = None) -> None:
    """A batch's summary: fields, a progress bar and, if given, its current runs."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    style = status_style(batch["status"])
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
    if batch.get("canary_status"):
        rows.append(("canary", batch["canary_status"]))
    if batch.get("gate_status") or batch.get("gate_round"):
        rows.append(
            (
                "quality gate",
                f"{batch.get('gate_status') or 'waiting'} (round {batch.get('gate_round') or 0})",
            )
        )
    if batch.get("canary_status") == "failed" and batch["status"] == "canary_failed":
        rows.append(("next", f"`batch-pipelines resume {batch['batch_id']}` releases the rest"))
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
        f"[{status_style(batch['status'])}]{batch['status']}[/]"
    )


def run_here(batch_id: str, instance: DagsterInstance, quiet: bool) -> dict[str, Any]:
    """Run the batch in this process, with a progress bar on stderr unless ``quiet``;
    returns its final ledger row. A chunk run that fails outside its items exits 1; Ctrl-C
    (SIGINT) or SIGTERM pauses the batch with its unfinished items pending and exits 130
    (SIGTERM: 143), after printing the batch (as JSON unless ``quiet`` is False)."""
    from batch_pipelines.definitions import defs

    batch = get_batch_or_exit(batch_id)
    try:
        if quiet:
            return run_batch_in_process(batch_id, instance, defs, log_level="CRITICAL")
        with _progress() as progress:
            task = progress.add_task(batch_id, total=batch["total_items"], counts=_counts(batch))

            def update(b: dict[str, Any]) -> None:
                progress.update(task, completed=b["processed_items"], counts=_counts(b))

            batch = run_batch_in_process(
                batch_id, instance, defs, on_chunk_done=update, log_level="CRITICAL"
            )
            update(batch)
        return batch
    except ChunkRunError as exc:
        err_console.print(f"[red]{exc}[/]")
        err_console.print(
            f"[yellow]fix the cause, then `batch-pipelines resume {batch_id} --wait`[/]"
        )
        sys.exit(EXIT_FAILED)
    except BatchInterrupted as exc:
        err_console.print(
            f"[yellow]{exc}; `batch-pipelines resume {batch_id} --wait` continues it[/]"
        )
        batch = get_batch_or_exit(batch_id)
        if quiet:
            print_json(batch)
        else:
            print_batch(batch)
        # Not sys.exit: the handler of the interrupted item may still be inside DuckDB in a
        # daemon thread, and a thread killed there by the interpreter's shutdown aborts the
        # process. Everything is committed; nothing is left for the shutdown to do.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)


def orphan_lines(batch_id: str, orphans: list[Any]) -> list[str]:
    """What to say about items left ``running`` by a run that is over or whose worker is gone
    (``recovery.Orphan``s), and how to recover them."""
    if not orphans:
        return []
    n = sum(o.items for o in orphans)
    lines = [f"{n} item(s) are marked running but nothing is running them:"]
    lines += [f"  chunk {o.chunk}: {o.items} item(s): {o.reason}" for o in orphans]
    lines.append(
        f"`batch-pipelines resume {batch_id} --wait` runs them again; "
        f"`batch-pipelines cancel {batch_id}` cancels them"
    )
    return lines


DAEMON_CHECK_S = 5.0


def watch(
    batch_id: str,
    quiet: bool,
    timeout_s: float | None = None,
    instance: DagsterInstance | None = None,
) -> dict[str, Any]:
    """Poll the ledger until the batch ends (or ``timeout_s``), with a progress bar on stderr
    unless ``quiet``; returns its last ledger row. Given the ``instance`` whose daemon runs
    the batch, exits 1 with what to do as soon as that daemon is seen gone."""
    start = time.monotonic()
    checked = start
    batch = get_batch_or_exit(batch_id)

    def check_daemon() -> None:
        nonlocal checked
        if instance is None or time.monotonic() - checked < DAEMON_CHECK_S:
            return
        checked = time.monotonic()
        from batch_pipelines.app.instance import daemon_running

        daemon = daemon_running(instance)
        if not daemon:
            daemon_gone(batch_id, daemon.reason)

    with contextlib.ExitStack() as stack:
        progress = None if quiet else stack.enter_context(_progress())
        task = None
        if progress is not None:
            task = progress.add_task(batch_id, total=batch["total_items"], counts=_counts(batch))
        while True:
            if progress is not None:
                progress.update(task, completed=batch["processed_items"], counts=_counts(batch))
            if batch["status"] in (*ledger.TERMINAL_BATCH_STATUSES, *ledger.HALTED_BATCH_STATUSES):
                break
            if timeout_s and time.monotonic() - start > timeout_s:
                break
            check_daemon()
            time.sleep(1)
            batch = get_batch_or_exit(batch_id)
    return batch


def daemon_gone(batch_id: str, reason: str) -> NoReturn:
    """Say that the daemon running the batch is gone, what to do, and exit 1."""
    err_console.print(f"[red]the Dagster daemon is not running: {reason}[/]", highlight=False)
    err_console.print(
        f"[yellow]the batch stays queued: start `make run` again and it goes on "
        f"(`batch-pipelines status {batch_id} --watch` follows it), or run what is left here: "
        f"`batch-pipelines pause {batch_id}`, then `batch-pipelines resume {batch_id} --wait`[/]",
        highlight=False,
    )
    sys.exit(EXIT_FAILED)


def finish(batch: dict[str, Any], as_json: bool) -> NoReturn:
    """Print the batch's final state and exit 0 if it completed, else 1."""
    if as_json:
        print_json(batch)
    else:
        print_batch(batch)
    sys.exit(EXIT_OK if batch["status"] == "completed" else EXIT_FAILED)
