"""``cancel``, ``pause``, ``resume``, ``retry``: the controls on a batch (``pause --all`` /
``resume --all``: on every batch)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from batch_pipelines.app.control import (
    ControlError,
    ControlResult,
    cancel_batch,
    pause_batch,
    resume_batch,
    retry_batch,
)
from batch_pipelines.app.instance import daemon_running, get_instance
from batch_pipelines.app.queries import get_batch
from batch_pipelines.cli.utils import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    actor,
    console,
    err_console,
    finish,
    options_from_args,
    orphan_lines,
    run_here,
    watch,
)
from batch_pipelines.core.errors import RETRYABLE_CATEGORIES
from batch_pipelines.core.manifest import PRIORITIES


def _run_control(
    fn: Callable[..., ControlResult], as_json: bool, quiet: bool = False, **kwargs: Any
) -> ControlResult:
    batch_id = kwargs["batch_id"]
    try:
        exists = get_batch(batch_id) is not None
        if not exists:
            raise ControlError(f"no batch {batch_id!r}")
        result = fn(**kwargs)
    except ControlError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc)}))
        else:
            err_console.print(f"[red]{exc}[/]")
        sys.exit(EXIT_FAILED if "no batch" in str(exc) else EXIT_BAD_INPUT)
    if quiet:
        return result
    if as_json:
        click.echo(json.dumps(result.to_dict(), default=str, indent=2))
    else:
        console.print(result.message)
        if result.still_active_runs:
            err_console.print(f"[yellow]runs still active: {result.still_active_runs}[/]")
    return result


@click.command()
@click.argument("batch_id")
@click.option(
    "--wait-s",
    type=float,
    default=30,
    show_default=True,
    help="How long to wait for terminated runs to end.",
)
@click.option(
    "--rollback",
    is_flag=True,
    help="Also undo what the batch wrote so far (as `rollback`); it ends rolled_back.",
)
@click.option("--json", "as_json", is_flag=True)
def cancel(batch_id: str, wait_s: float, rollback: bool, as_json: bool) -> None:
    """Cancel a batch: dequeue its queued runs, terminate running ones; unfinished items
    become cancelled, finished ones keep their results (unless --rollback)."""
    result = _run_control(
        cancel_batch, as_json, batch_id=batch_id, actor=actor(), wait_s=wait_s, rollback=rollback
    )
    sys.exit(EXIT_FAILED if result.still_active_runs else EXIT_OK)


def _batch_or_all(batch_id: str | None, all_: bool) -> None:
    if bool(batch_id) == all_:
        raise click.UsageError("give a BATCH_ID or --all (not both)")


def _run_queue_control(fn: Callable[..., ControlResult], as_json: bool, **kwargs: Any) -> None:
    try:
        result = fn(**kwargs)
    except ControlError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc)}))
        else:
            err_console.print(f"[red]{exc}[/]")
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(result.to_dict(), default=str, indent=2))
    else:
        console.print(result.message)


@click.command()
@click.argument("batch_id", required=False)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Hold the whole instance: pause every batch; batches submitted meanwhile wait too.",
)
@click.option("--json", "as_json", is_flag=True)
def pause(batch_id: str | None, all_: bool, as_json: bool) -> None:
    """Pause a batch: launch no new chunk; running chunks finish (drain). With --all, hold
    every batch until `resume --all`."""
    _batch_or_all(batch_id, all_)
    if all_:
        from batch_pipelines.app.queue import hold_all

        _run_queue_control(hold_all, as_json, instance=get_instance(), actor=actor())
        return
    _run_control(pause_batch, as_json, batch_id=batch_id, actor=actor())


@click.command()
@click.argument("batch_id", required=False)
@click.option(
    "--all", "all_", is_flag=True, help="Release the hold of `pause --all`: its batches resume."
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until the batch finishes (runs it in-process when no Dagster daemon is running).",
)
@click.option("--json", "as_json", is_flag=True)
def resume(batch_id: str | None, all_: bool, wait: bool, as_json: bool) -> None:
    """Resume a paused batch, one whose worker died (kill -9, a crash), or one whose canary
    failed (canary_failed: the rest is released anyway): its unfinished items run, nothing
    runs twice. With --all, release the hold of `pause --all`."""
    _batch_or_all(batch_id, all_)
    if all_:
        if wait:
            raise click.UsageError("--wait applies to one batch, not --all")
        from batch_pipelines.app.queue import release_all

        _run_queue_control(release_all, as_json, actor=actor())
        return
    instance = get_instance()
    here = wait and not daemon_running(instance)
    _run_control(
        resume_batch,
        as_json,
        quiet=as_json and wait,
        batch_id=batch_id,
        actor=actor(),
        instance=instance,
        here=here,
    )
    if wait:
        if not here:
            batch = watch(batch_id, quiet=as_json, instance=instance)
        else:
            batch = run_here(batch_id, instance, quiet=as_json)
        finish(batch, as_json)
    from batch_pipelines.app.queue import hold_state

    if not as_json and hold_state() is not None:
        console.print(
            "[yellow]the instance is held (`pause --all`): nothing launches until `resume --all`[/]"
        )
    if not as_json and not daemon_running(instance):
        console.print(
            "[yellow]no Dagster daemon is running: start `make run` to launch it, or "
            "resume with --wait to run it here[/]"
        )


@click.command()
@click.argument("batch_id")
@click.option(
    "--category",
    "categories",
    multiple=True,
    help="Only failed items of these error categories (repeat or comma-separate), "
    f"e.g. {','.join(sorted(RETRYABLE_CATEGORIES))}.",
)
@click.option("--items", "item_ids", help="Only these item ids (comma-separated).")
@click.option("--option", "options", multiple=True, help="Override an option key=value.")
@click.option("--priority", type=click.Choice(list(PRIORITIES)))
@click.option("--wait", is_flag=True, help="Wait for the new batch (in-process without daemon).")
@click.option("--json", "as_json", is_flag=True)
def retry(
    batch_id: str,
    categories: tuple[str, ...],
    item_ids: str | None,
    options: tuple[str, ...],
    priority: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Retry only the failed items of a batch, as a new batch linked to it."""
    cats = [c.strip() for raw in categories for c in raw.split(",") if c.strip()]
    ids = [i.strip() for i in (item_ids or "").split(",") if i.strip()]
    overrides = options_from_args(options, {})
    instance = get_instance()
    if get_batch(batch_id) is not None:
        from batch_pipelines.app.recovery import find_orphans

        for line in orphan_lines(batch_id, find_orphans(instance, batch_id)):
            err_console.print(f"[yellow]{line}[/]", highlight=False)
    result = _run_control(
        retry_batch,
        as_json,
        quiet=as_json and wait,
        batch_id=batch_id,
        categories=cats,
        item_ids=ids,
        options=overrides,
        priority=priority,
        instance=instance,
        actor=actor(),
        source="cli",
    )
    if wait:
        new_id = result.new_batch_id
        if daemon_running(instance):
            batch = watch(new_id, quiet=as_json, instance=instance)
        else:
            batch = run_here(new_id, instance, quiet=as_json)
        finish(batch, as_json)
