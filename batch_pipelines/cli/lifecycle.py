"""``delete``, ``rollback``, ``priority``: a batch's later life."""

from __future__ import annotations

import sys

import click

from batch_pipelines.cli.control import _run_control
from batch_pipelines.cli.utils import EXIT_BAD_INPUT, actor, err_console
from batch_pipelines.core.manifest import PRIORITIES


@click.command()
@click.argument("batch_id")
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep what the batch wrote (imported rows, result rows, files); delete only its record.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
def delete(batch_id: str, keep_data: bool, yes: bool, as_json: bool) -> None:
    """Delete a finished batch: its items, attempts, events and Dagster item partitions, and
    what it wrote (as `rollback` undoes it) unless --keep-data. One `batch_deleted` event
    with the counts stays as the audit record."""
    from batch_pipelines.app.instance import get_instance
    from batch_pipelines.app.lifecycle import delete_batch

    if not yes:
        what = "its record" if keep_data else "its record and everything it wrote"
        if not sys.stdin.isatty():
            err_console.print(f"[red]deleting {batch_id} removes {what}: pass --yes to confirm[/]")
            sys.exit(EXIT_BAD_INPUT)
        click.confirm(f"Delete {batch_id} and {what}?", abort=True)
    _run_control(
        delete_batch,
        as_json,
        batch_id=batch_id,
        keep_data=keep_data,
        instance=get_instance(),
        actor=actor(),
    )


@click.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
def rollback(batch_id: str, as_json: bool) -> None:
    """Undo a finished batch's writes and mark it rolled_back: tables it replaced, upserted or
    created are as before it, rows it appended, files it wrote and its result rows go. Safe
    to run again (a rollback stopped halfway completes)."""
    from batch_pipelines.app.lifecycle import rollback_batch

    _run_control(rollback_batch, as_json, batch_id=batch_id, actor=actor())


@click.command()
@click.argument("batch_id")
@click.argument("level", type=click.Choice(list(PRIORITIES)))
@click.option("--json", "as_json", is_flag=True)
def priority(batch_id: str, level: str, as_json: bool) -> None:
    """Change the priority of a queued, running or paused batch: its chunks not yet launched
    and its runs still in Dagster's queue take the new level."""
    from batch_pipelines.app.instance import get_instance
    from batch_pipelines.app.queue import change_priority

    _run_control(
        change_priority,
        as_json,
        batch_id=batch_id,
        priority=level,
        instance=get_instance(),
        actor=actor(),
    )
