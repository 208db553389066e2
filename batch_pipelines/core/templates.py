"""Templates: manifests saved under a name, some with a cron schedule; the ``templates`` table.

This module validates what is not a manifest (the name, the cron, the time zone), computes a
schedule's ticks and reads and writes the table. Validating the manifest itself, submitting
and the recurring submissions are in :mod:`batch_pipelines.app.templates`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
from pydantic import BaseModel

from batch_pipelines.core.ledger.models import to_json, utcnow
from batch_pipelines.core.manifest import ManifestError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# The keys a template file may carry beside the manifest's own.
SCHEDULE_FIELDS = ("schedule", "timezone", "catch_up")
DEFAULT_TIMEZONE = "UTC"
# Dagster's schedule names for the usual shorthands, which cron also reads.
_ALIASES = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}


class TemplateError(ManifestError):
    """A template that cannot be saved: a bad name, cron or time zone (problems name each)."""

    kind = "invalid template"


class TemplateNotFound(LookupError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"no template named {name!r}")


class Template(BaseModel):
    """A row of ``templates``."""

    name: str
    manifest: dict[str, Any]
    operation: str
    schedule: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    catch_up: bool = False
    paused: bool = False
    active_since: datetime
    created_at: datetime
    updated_at: datetime
    saved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def check_name(name: str) -> list[tuple[str, str]]:
    if isinstance(name, str) and NAME.match(name):
        return []
    return [
        (
            "name",
            f"{name!r} is not a template name: 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    ]


def check_schedule(schedule: Any, timezone: Any) -> list[tuple[str, str]]:  # noqa: ANN401
    """Problems with a cron (five fields, minute precision, as Dagster's schedules take) and
    an IANA time zone."""
    from croniter import croniter

    problems = []
    if schedule is not None:
        text = schedule.strip() if isinstance(schedule, str) else None
        fields = text.split() if text else []
        ok = text is not None and (
            text in _ALIASES or (len(fields) == 5 and croniter.is_valid(text))
        )
        if not ok:
            problems.append(
                (
                    "schedule",
                    f"{schedule!r} is not a cron schedule: five fields (minute hour "
                    "day-of-month month day-of-week), e.g. '0 6 * * 1-5', or @hourly, "
                    "@daily, @weekly, @monthly",
                )
            )
    if timezone is not None:
        try:
            if not isinstance(timezone, str) or not timezone.strip():
                raise ZoneInfoNotFoundError(timezone)
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(
                ("timezone", f"{timezone!r} is not a time zone (an IANA name: UTC, Europe/Paris)")
            )
    return problems


def latest_tick(schedule: str, timezone: str, now: datetime) -> datetime:
    """The latest tick of ``schedule`` at or before ``now`` (UTC, naive or aware), as an aware
    time in ``timezone``; the cron reads wall-clock time there, so ``0 6 * * *`` stays at 6:00
    across daylight saving time changes."""
    from croniter import croniter

    aware = now if now.tzinfo else now.replace(tzinfo=UTC)
    local = aware.astimezone(ZoneInfo(timezone))
    # get_prev is strictly before its start: a microsecond later makes ``now`` itself count.
    return croniter(schedule, local + timedelta(microseconds=1)).get_prev(datetime)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of a template's tick: its wall-clock minute where it is scheduled,
    so the hour that repeats when clocks go back submits once, not twice."""
    return f"template:{name}:{tick:%Y-%m-%dT%H:%M}"


def as_utc(value: datetime) -> datetime:
    """Naive UTC, as the warehouse stores times."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


_COLUMNS = (
    "name, manifest, operation, schedule, timezone, catch_up, paused, active_since, "
    "created_at, updated_at, saved_by"
)


def _row(values: tuple) -> Template:
    import json

    data = dict(zip([c.strip() for c in _COLUMNS.split(",")], values, strict=True))
    data["manifest"] = json.loads(data["manifest"])
    return Template.model_validate(data)


def put_template(con: duckdb.DuckDBPyConnection, template: Template) -> None:
    """Insert or replace ``template`` (a delete and an insert in the caller's transaction)."""
    con.execute("delete from templates where name = ?", [template.name])
    con.execute(
        f"insert into templates ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            template.name,
            to_json(template.manifest),
            template.operation,
            template.schedule,
            template.timezone,
            template.catch_up,
            template.paused,
            template.active_since,
            template.created_at,
            template.updated_at,
            template.saved_by,
        ],
    )


def read_template(con: duckdb.DuckDBPyConnection, name: str) -> Template | None:
    row = con.execute(f"select {_COLUMNS} from templates where name = ?", [name]).fetchone()
    return _row(row) if row else None


def read_templates(con: duckdb.DuckDBPyConnection) -> list[Template]:
    rows = con.execute(f"select {_COLUMNS} from templates order by name").fetchall()
    return [_row(r) for r in rows]


def remove_template(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = con.execute("select count(*) from templates where name = ?", [name]).fetchone()
    con.execute("delete from templates where name = ?", [name])
    return bool(found and found[0])


def set_paused(con: duckdb.DuckDBPyConnection, name: str, paused: bool) -> Template:
    """Pause or resume a template's schedule; resuming starts it again from now (the ticks
    missed while paused are not submitted, but with ``catch_up`` the latest one is)."""
    template = read_template(con, name)
    if template is None:
        raise TemplateNotFound(name)
    if template.paused == paused:
        return template
    now = utcnow()
    update: dict[str, Any] = {"paused": paused, "updated_at": now}
    if not paused:
        update["active_since"] = now
    changed = template.model_copy(update=update)
    put_template(con, changed)
    return changed
