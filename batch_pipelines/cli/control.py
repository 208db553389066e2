"""CLI verbs that control a batch: cancel, pause, resume, retry."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

import click

from batch_pipelines.core.errors import RETRYABLE_CATEGORIES


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001
        return "cli:unknown"


def _run_control(fn, as_json: bool, quiet: bool = False, **kwargs: Any) -> Any:  # noqa: ANN001, ANN401
    from batch_pipelines.app.control import ControlError
    from batch_pipelines.app.queries import get_batch
    from batch_pipelines.cli.main import EXIT_BAD_INPUT, EXIT_FAILED, console, err_console

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
        if getattr(result, "still_active_runs", None):
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
@click.option("--json", "as_json", is_flag=True)
def cancel(batch_id: str, wait_s: float, as_json: bool) -> None:
    """Cancel a batch: dequeue its queued runs, terminate running ones; unfinished items
    become cancelled, finished ones keep their results."""
    from batch_pipelines.app.control import cancel_batch

    result = _run_control(cancel_batch, as_json, batch_id=batch_id, actor=_actor(), wait_s=wait_s)
    sys.exit(0 if not result.still_active_runs else 1)


@click.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
def pause(batch_id: str, as_json: bool) -> None:
    """Pause a batch: launch no new chunk; running chunks finish (drain)."""
    from batch_pipelines.app.control import pause_batch

    _run_control(pause_batch, as_json, batch_id=batch_id, actor=_actor())


@click.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
def resume(batch_id: str, as_json: bool) -> None:
    """Resume a paused batch: its unfinished items run, nothing runs twice."""
    from batch_pipelines.app.control import resume_batch

    _run_control(resume_batch, as_json, batch_id=batch_id, actor=_actor())


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
@click.option("--priority", type=click.Choice(["low", "normal", "high", "critical"]))
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
    from batch_pipelines.app.control import retry_batch
    from batch_pipelines.app.instance import daemon_running, get_instance
    from batch_pipelines.cli.main import _finish, _parse_option, _run_here, _set_nested, _watch

    cats = [c.strip() for raw in categories for c in raw.split(",") if c.strip()]
    ids = [i.strip() for i in (item_ids or "").split(",") if i.strip()]
    overrides: dict[str, Any] = {}
    for raw in options:
        parts, value = _parse_option(raw)
        _set_nested(overrides, parts, value)
    instance = get_instance()
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
        actor=_actor(),
        source="cli",
    )
    if wait:
        new_id = result.new_batch_id
        if daemon_running(instance):
            batch = _watch(new_id, quiet=as_json)
        else:
            batch = _run_here(new_id, instance, quiet=as_json)
        _finish(batch, as_json)
