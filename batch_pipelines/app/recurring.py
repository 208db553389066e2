"""Recurring batches: which scheduled templates are due, and submitting them once per tick.

The ``recurring_templates`` sensor calls :func:`run_due` on every evaluation with its cursor
(the last tick handled per template). A template is due when the latest tick of its cron at
or before now, in its time zone, is newer than the cursor's and not older than when its
schedule started (saved or resumed; with ``catch_up`` the latest tick counts even so). Each
tick is submitted with the idempotency key ``template:<name>:<tick>``, so an evaluation that
submitted but died before its cursor was stored does not submit again. A tick that finds the
template's previous batch still going is skipped, and says so in ``batch_events``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batch_pipelines.app.submit import RateLimitError
from batch_pipelines.app.templates import submit_template
from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.errors import WarehouseError
from batch_pipelines.core.manifest import ManifestError
from batch_pipelines.core.templates import (
    Template,
    TemplateNotFound,
    as_utc,
    latest_tick,
    read_templates,
    tick_key,
)

ACTOR = "schedule:recurring_templates"


@dataclass(frozen=True)
class Due:
    template: Template
    tick: datetime  # aware, in the template's time zone

    @property
    def key(self) -> str:
        return tick_key(self.template.name, self.tick)


def load_cursor(raw: str | None) -> dict[str, str]:
    """The sensor's cursor: template name -> the last tick handled (ISO, UTC)."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def due_ticks(
    templates: list[Template],
    cursor: dict[str, str],
    now: datetime,
    log: Callable[[str], Any] = lambda _m: None,
) -> list[Due]:
    """The templates due at ``now`` (UTC), each with its latest tick."""
    due = []
    for t in templates:
        if not t.schedule or t.paused:
            continue
        try:
            tick = latest_tick(t.schedule, t.timezone, now)
        except (ValueError, KeyError) as exc:
            # Checked at save; a machine without that zone must not stop the other templates.
            log(f"template {t.name}: cannot compute its schedule's ticks: {exc}")
            continue
        at = as_utc(tick)
        if not t.catch_up and at < t.active_since:
            continue
        last = cursor.get(t.name)
        if last and at <= datetime.fromisoformat(last):
            continue
        due.append(Due(t, tick))
    return due


@dataclass
class Outcome:
    cursor: dict[str, str]
    submitted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        parts = [f"submitted {len(self.submitted)} {self.submitted}"]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} {self.skipped}")
        if self.failed:
            parts.append(f"failed {len(self.failed)} {self.failed}")
        return "; ".join(parts)


def run_due(
    instance,  # noqa: ANN001 - a DagsterInstance
    cursor: dict[str, str],
    now: datetime | None = None,
    log: Callable[[str], Any] = lambda _m: None,
) -> Outcome:
    """Submit every due template once for its tick (or skip it, saying why); returns the new
    cursor and what happened."""
    now = now or ledger.utcnow()
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        templates = read_templates(con)
    names = {t.name for t in templates}
    out = Outcome({k: v for k, v in cursor.items() if k in names})
    for due in due_ticks(templates, out.cursor, now, log):
        name, when = due.template.name, due.tick.isoformat()
        try:
            message = _handle(due, instance, paths)
        except WarehouseError as exc:  # busy: the tick stays due for the next evaluation
            log(f"template {name} tick {when}: warehouse busy, trying again: {exc}")
            continue
        out.cursor[name] = as_utc(due.tick).isoformat()
        kind, text = message
        getattr(out, kind).append(text)
        log(text)
    return out


def _handle(due: Due, instance, paths: config.Paths) -> tuple[str, str]:  # noqa: ANN001
    name, when = due.template.name, due.tick.isoformat()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        done = ledger.batch_for_idempotency_key(con, due.key)
        going = None if done else ledger.unfinished_batch_of_template(con, name)
    if done:
        return "submitted", f"{name} @ {when} -> {done} (already submitted)"
    if going:
        reason = f"the previous batch of {name}, {going}, is still going"
        _event(paths, going, "template_tick_skipped", due, {"reason": reason})
        return "skipped", f"{name} @ {when}: skipped, {reason}"
    try:
        batch_id = submit_template(
            name, instance=instance, source="schedule", actor=ACTOR, idempotency_key=due.key
        )
    except (ManifestError, RateLimitError, TemplateNotFound) as exc:
        # Not retried every evaluation: the next tick tries again, and the event says why.
        _event(paths, None, "template_tick_failed", due, {"error": str(exc)})
        return "failed", f"{name} @ {when}: {exc}"
    return "submitted", f"{name} @ {when} -> {batch_id}"


def _event(
    paths: config.Paths, batch_id: str | None, event: str, due: Due, detail: dict[str, Any]
) -> None:
    with warehouse.connect(paths.warehouse) as con:
        lake.transaction(
            con,
            lambda: ledger.add_event(
                con,
                batch_id,
                event,
                actor=ACTOR,
                detail={"template": due.template.name, "tick": due.tick.isoformat(), **detail},
            ),
        )
