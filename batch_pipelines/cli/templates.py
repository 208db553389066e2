"""``template save|list|show|delete|pause|resume``: manifests kept under a name, some on a
cron schedule the daemon follows; ``submit --template NAME --set key=value`` submits one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml
from rich.table import Table

from batch_pipelines.app import templates
from batch_pipelines.cli.utils import (
    EXIT_FAILED,
    BadInput,
    actor,
    console,
    err_console,
    fail_manifest,
    print_json,
)
from batch_pipelines.core.manifest import ManifestError


def not_found(exc: templates.TemplateNotFound, as_json: bool) -> NoReturn:
    if as_json:
        print_json({"error": "template not found", "template": exc.name})
    else:
        err_console.print(f"[red]{exc}[/] (see `batch-pipelines template list`)")
    sys.exit(EXIT_FAILED)


def manifest_from_template(
    name: str,
    sets: tuple[str, ...],
    manifest_or_operation: str | None,
    item_args: tuple[str | None, str | None, str | None, tuple[str, ...]],
    as_json: bool,
) -> dict[str, Any]:
    """``submit --template``'s manifest: the template's, with ``--set`` applied."""
    if manifest_or_operation or any(item_args):
        raise BadInput("--template takes its manifest and items from the template; use --set")
    try:
        return templates.template_manifest(name, sets)
    except templates.TemplateNotFound as exc:
        not_found(exc, as_json)
    except ManifestError as exc:
        fail_manifest(exc, as_json)


@click.group("template")
def template_group() -> None:
    """Templates: a manifest saved under a name, submitted with `submit --template NAME`, and
    on its `schedule:` (cron, in `timezone:`) by the daemon."""


@template_group.command("save")
@click.argument("name")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--schedule", help="A cron schedule, e.g. '0 6 * * 1-5' (overrides the file's).")
@click.option("--timezone", help="The schedule's time zone, e.g. Europe/Paris (default UTC).")
@click.option(
    "--catch-up/--no-catch-up",
    default=None,
    help="Submit the latest tick that passed before the schedule started, at once.",
)
@click.option("--json", "as_json", is_flag=True)
def save(
    name: str,
    manifest: Path,
    schedule: str | None,
    timezone: str | None,
    catch_up: bool | None,
    as_json: bool,
) -> None:
    """Save MANIFEST (a manifest file, which may also carry `schedule`, `timezone` and
    `catch_up`) as template NAME, replacing one of that name. It is validated as a manifest
    now: a bad one exits 2 naming each field, and nothing is saved.

    \b
    Example:
      batch-pipelines template save nightly-penguins docs/examples/nightly_penguins.yaml
    """
    try:
        saved = templates.save_template(
            name,
            manifest,
            schedule=schedule,
            timezone=timezone,
            catch_up=catch_up,
            actor=actor(),
        )
    except ManifestError as exc:
        fail_manifest(exc, as_json)
    if as_json:
        print_json(saved)
        return
    when = (
        f"on schedule '{saved['schedule']}' ({saved['timezone']})"
        if saved["schedule"]
        else "without a schedule"
    )
    console.print(f"saved template [bold]{name}[/] ({saved['operation']}) {when}")


def _schedule(t: dict[str, Any]) -> str:
    if not t["schedule"]:
        return "-"
    return f"{t['schedule']} {t['timezone']}" + (" (paused)" if t["paused"] else "")


@template_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Every template: its operation, schedule, next tick and latest batch."""
    rows = templates.list_templates()
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no templates (save one: batch-pipelines template save NAME MANIFEST)")
        return
    table = Table()
    for col in ("name", "operation", "schedule", "next tick", "latest batch"):
        table.add_column(col, overflow="fold")
    for t in rows:
        last = t["last_batch"]
        table.add_row(
            t["name"],
            t["operation"],
            _schedule(t),
            (t["next_tick"] or "-")[:16].replace("T", " "),
            f"{last['batch_id']} {last['status']}" if last else "-",
        )
    console.print(table)


@template_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def show(name: str, as_json: bool) -> None:
    """A template: its schedule, pause state, next tick, latest batch and manifest."""
    try:
        t = templates.get_template(name)
    except templates.TemplateNotFound as exc:
        not_found(exc, as_json)
    if as_json:
        print_json(t)
        return
    last = t["last_batch"]
    console.print(f"[bold]{t['name']}[/] ({t['operation']})", highlight=False)
    console.print(f"  schedule:     {_schedule(t)}", highlight=False)
    if t["schedule"]:
        console.print(f"  catch up:     {'yes' if t['catch_up'] else 'no'}", highlight=False)
        console.print(f"  next tick:    {t['next_tick'] or '- (paused)'}", highlight=False)
    latest = f"{last['batch_id']} {last['status']}" if last else "-"
    console.print(f"  latest batch: {latest}", highlight=False)
    console.print(f"  saved:        {t['updated_at']} by {t['saved_by']}", highlight=False)
    console.print(yaml.safe_dump(t["manifest"], sort_keys=False).rstrip(), highlight=False)


@template_group.command("delete")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def delete(name: str, as_json: bool) -> None:
    """Delete template NAME (and with it its schedule); its batches are kept."""
    try:
        templates.delete_template(name, actor=actor())
    except templates.TemplateNotFound as exc:
        not_found(exc, as_json)
    if as_json:
        print_json({"deleted": name})
    else:
        console.print(f"deleted template [bold]{name}[/]")


def _pause_or_resume(name: str, paused: bool, as_json: bool) -> None:
    act = templates.pause_template if paused else templates.resume_template
    try:
        t = act(name, actor=actor())
    except templates.TemplateNotFound as exc:
        not_found(exc, as_json)
    if as_json:
        print_json(t)
    elif not t["schedule"]:
        console.print(f"template [bold]{name}[/] has no schedule; it is now {_state(paused)}")
    else:
        console.print(f"template [bold]{name}[/]'s schedule is {_state(paused)}")


def _state(paused: bool) -> str:
    return "paused" if paused else "running (from now on)"


@template_group.command("pause")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def pause(name: str, as_json: bool) -> None:
    """Stop submitting NAME on its schedule (`submit --template NAME` still works)."""
    _pause_or_resume(name, True, as_json)


@template_group.command("resume")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def resume(name: str, as_json: bool) -> None:
    """Submit NAME on its schedule again, from the next tick (or, with catch_up, the latest
    one missed)."""
    _pause_or_resume(name, False, as_json)
