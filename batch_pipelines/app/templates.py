"""Templates: save a manifest under a name, submit it again with overrides, pause its schedule.

Every entry point (the CLI's ``template`` verbs and ``submit --template``, the Python API, the
``submit_batch`` launchpad job, the ``recurring_templates`` sensor) goes through here. A
template is validated as a manifest when it is saved, so a bad one is refused then rather
than at its first scheduled run; items that come from ``items_from`` are resolved at each
submission (a daily glob matches the day's files).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from batch_pipelines.core import config, lake, ledger, warehouse
from batch_pipelines.core.manifest import (
    ManifestError,
    load_manifest,
    parse_text,
    problems_from_validation,
    read_manifest_file,
)
from batch_pipelines.core.templates import (
    DEFAULT_TIMEZONE,
    SCHEDULE_FIELDS,
    Template,
    TemplateError,
    TemplateNotFound,
    check_name,
    check_schedule,
    put_template,
    read_template,
    read_templates,
    remove_template,
    set_paused,
)
from batch_pipelines.operations import get_operation


def whoami() -> str:
    # app.submit loads Dagster (partitions); the read verbs of templates must not.
    from batch_pipelines.app.submit import whoami as _whoami

    return _whoami()


__all__ = [
    "TemplateError",
    "TemplateNotFound",
    "apply_overrides",
    "check_template",
    "delete_template",
    "get_template",
    "list_templates",
    "pause_template",
    "resume_template",
    "save_template",
    "submit_template",
    "template_manifest",
]


def _as_data(source: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(source, Path):
        return read_manifest_file(source)
    if isinstance(source, str):
        return parse_text(source, "template")
    return dict(source)


def check_manifest(manifest: Mapping[str, Any], paths: config.Paths | None = None) -> None:
    """Validate a template's manifest as far as it can be before it is submitted: its shape,
    operation and options, and inline items completely; raises ManifestError naming each bad
    field. ``items_from`` is resolved when the template is submitted."""
    m = load_manifest(manifest)
    if m.items is not None:
        from batch_pipelines.app.submit import prepare_batch

        prepare_batch(m, paths)
        return
    try:
        spec = get_operation(m.operation)
    except KeyError as exc:
        raise ManifestError([("operation", str(exc.args[0]))]) from None
    try:
        spec.options_model.model_validate(m.options)
    except ValidationError as exc:
        raise ManifestError(problems_from_validation(exc, "options")) from None
    if m.items_from is not None and m.items_from.sql:
        from batch_pipelines.core.sqlcheck import ensure_read_only_select

        try:
            ensure_read_only_select(m.items_from.sql)
        except ValueError as exc:
            raise ManifestError([("items_from.sql", str(exc))]) from None


def check_template(
    name: str,
    manifest: Mapping[str, Any] | str | Path,
    *,
    schedule: str | None = None,
    timezone: str | None = None,
    catch_up: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate a template without saving it; returns (its manifest, its schedule fields).
    Raises TemplateError (a bad name, cron or zone) or ManifestError (a bad manifest) naming
    each field."""
    data = _as_data(manifest)
    given = {k: data.pop(k) for k in SCHEDULE_FIELDS if k in data}
    for key, value in (("schedule", schedule), ("timezone", timezone), ("catch_up", catch_up)):
        if value is not None:
            given[key] = value
    problems = check_name(name) + check_schedule(given.get("schedule"), given.get("timezone"))
    if not isinstance(given.get("catch_up", False), bool):
        problems.append(("catch_up", "must be true or false"))
    try:
        check_manifest(data)
    except ManifestError as exc:
        if problems:
            raise TemplateError(problems + exc.problems) from None
        raise
    if problems:
        raise TemplateError(problems)
    return data, given


def save_template(
    name: str,
    manifest: Mapping[str, Any] | str | Path,
    *,
    schedule: str | None = None,
    timezone: str | None = None,
    catch_up: bool | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Save (or replace) template ``name``: a manifest (a file, YAML/JSON text or a dict) that
    may carry ``schedule`` (cron), ``timezone`` and ``catch_up``; the arguments override
    those. Raises TemplateError (a bad name, cron or zone) or ManifestError (a bad manifest)
    naming each field; nothing is saved then. A replaced template keeps its pause state, and
    its schedule starts again from now."""
    data, given = check_template(
        name, manifest, schedule=schedule, timezone=timezone, catch_up=catch_up
    )
    actor = actor or whoami()
    paths = config.get_paths()
    now = ledger.utcnow()
    with warehouse.connect(paths.warehouse) as con:

        def save() -> Template:
            old = read_template(con, name)
            template = Template(
                name=name,
                manifest=data,
                operation=data["operation"],
                schedule=(given.get("schedule") or "").strip() or None,
                timezone=given.get("timezone") or DEFAULT_TIMEZONE,
                catch_up=bool(given.get("catch_up", False)),
                paused=old.paused if old else False,
                active_since=now,
                created_at=old.created_at if old else now,
                updated_at=now,
                saved_by=actor,
            )
            put_template(con, template)
            _audit(con, "template_saved", template, actor, replaced=old is not None)
            return template

        template = lake.transaction(con, save)
    return template.to_dict()


def _audit(con: Any, event: str, t: Template, actor: str, **detail: Any) -> None:  # noqa: ANN401
    ledger.add_event(
        con,
        None,
        event,
        actor=actor,
        detail={"template": t.name, "schedule": t.schedule, "timezone": t.timezone, **detail},
    )


def get_template(name: str) -> dict[str, Any]:
    """A template as a dict (its manifest, schedule, pause state, next tick, latest batch);
    raises TemplateNotFound."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        template = read_template(con, name)
        latest = ledger.latest_batch_per_template(con) if template else {}
    if template is None:
        raise TemplateNotFound(name)
    return _described(template, latest, ledger.utcnow())


def list_templates() -> list[dict[str, Any]]:
    """Every template, by name, as :func:`get_template` describes it."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        templates = read_templates(con)
        latest = ledger.latest_batch_per_template(con) if templates else {}
    now = ledger.utcnow()
    return [_described(t, latest, now) for t in templates]


def _described(t: Template, latest: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    out = t.to_dict()
    out["next_tick"] = None
    if t.schedule and not t.paused:
        from zoneinfo import ZoneInfo

        from croniter import croniter

        local = now.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(t.timezone))
        out["next_tick"] = croniter(t.schedule, local).get_next(dt.datetime).isoformat()
    last = latest.get(t.name)
    out["last_batch"] = {**last, "created_at": last["created_at"].isoformat()} if last else None
    return out


def delete_template(name: str, *, actor: str | None = None) -> None:
    """Delete a template (its batches keep its name); raises TemplateNotFound."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:

        def delete() -> None:
            template = read_template(con, name)
            if template is None or not remove_template(con, name):
                raise TemplateNotFound(name)
            _audit(con, "template_deleted", template, actor or whoami())

        lake.transaction(con, delete)


def _pause(name: str, paused: bool, actor: str | None) -> dict[str, Any]:
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse) as con:

        def pause() -> Template:
            before = read_template(con, name)
            template = set_paused(con, name, paused)
            if before is not None and before.paused != paused:
                event = "template_paused" if paused else "template_resumed"
                _audit(con, event, template, actor or whoami())
            return template

        template = lake.transaction(con, pause)
    return template.to_dict()


def pause_template(name: str, *, actor: str | None = None) -> dict[str, Any]:
    """Stop a template's schedule (``submit --template`` still works); raises
    TemplateNotFound."""
    return _pause(name, True, actor)


def resume_template(name: str, *, actor: str | None = None) -> dict[str, Any]:
    """Start a template's schedule again from now; raises TemplateNotFound."""
    return _pause(name, False, actor)


def _scalar(raw: str) -> Any:  # noqa: ANN401
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, dt.date | dt.datetime):
        return raw.strip()  # a date is text in a manifest
    return value


def parse_sets(raw: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings as {dotted key: YAML scalar}; raises ManifestError naming a bad
    one."""
    out: dict[str, Any] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ManifestError([("--set", f"{item!r}: expected key=value, e.g. options.model=x")])
        out[key.strip()] = _scalar(value)
    return out


def apply_overrides(manifest: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with each dotted key set (``options.model``,
    ``settings.chunk_size``); values must be scalars. Raises ManifestError naming a bad key."""
    import copy

    out = copy.deepcopy(dict(manifest))
    problems = []
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(p.strip() for p in parts):
            problems.append((key, "not a dotted key (e.g. options.model)"))
            continue
        if parts[0] in SCHEDULE_FIELDS:
            problems.append((key, "the schedule is the template's; save the template to change it"))
            continue
        if isinstance(value, dict | list):
            problems.append((key, "values are scalars (text, numbers, true/false, null)"))
            continue
        target: Any = out
        for depth, part in enumerate(parts[:-1]):
            nxt = target.setdefault(part, {}) if isinstance(target, dict) else None
            if not isinstance(nxt, dict):
                where = ".".join(parts[: depth + 1])
                problems.append(
                    (key, f"{where} is not a mapping, so it has no field {parts[-1]!r}")
                )
                break
            target = nxt
        else:
            target[parts[-1]] = value
    if problems:
        raise ManifestError(problems)
    return out


def template_manifest(
    name: str, overrides: Mapping[str, Any] | Iterable[str] | None = None
) -> dict[str, Any]:
    """Template ``name``'s manifest with ``overrides`` ({dotted key: value} or ``key=value``
    strings) applied. Raises TemplateNotFound, or ManifestError naming a bad override."""
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        template = read_template(con, name)
    if template is None:
        raise TemplateNotFound(name)
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_sets(overrides)
    return apply_overrides(template.manifest, overrides or {})


def submit_template(
    name: str,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    *,
    instance=None,  # noqa: ANN001 - a DagsterInstance; defaults to DagsterInstance.get()
    source: str = "python",
    actor: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Submit a batch from template ``name``, with ``overrides`` ({dotted key: value} or
    ``key=value`` strings) applied; the batch records the template's name. Raises
    TemplateNotFound, or ManifestError naming a bad override or field."""
    from batch_pipelines.app.submit import submit_batch

    return submit_batch(
        template_manifest(name, overrides),
        instance=instance,
        source=source,
        actor=actor,
        idempotency_key=idempotency_key,
        template=name,
    )
