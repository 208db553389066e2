"""Batch manifests: parsing and validation with pydantic.

``load_manifest`` turns a file, a YAML/JSON string or a dict into a :class:`Manifest`;
``ManifestError`` carries every problem as ``field: message`` so the CLI, the inbox sensor
and the launchpad job can all say exactly what is wrong.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batch_pipelines.core import config
from batch_pipelines.core.contract import resolve_under_roots
from batch_pipelines.core.errors import ItemError, QueryTimeoutError
from batch_pipelines.core.execution import ExecutionSettings
from batch_pipelines.core.globs import GlobError, glob_under_roots
from batch_pipelines.core.keys import natural_key

PRIORITIES = {"low": -10, "normal": 0, "high": 10, "critical": 20}
MAX_DEPTH = 64  # no real manifest nests deeper; deeper ones would exhaust recursion later
Priority = Literal["low", "normal", "high", "critical"]


class ManifestError(ValueError):
    """A manifest that cannot be accepted; ``problems`` is a list of (field, message);
    ``kind`` says why in a few words (a subclass refuses a valid manifest for another
    reason)."""

    kind: ClassVar[str] = "invalid manifest"

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.kind,
            "problems": [{"field": f, "message": m} for f, m in self.problems],
        }


class QueueFullError(ManifestError):
    """A valid batch refused whole: the queue holds too many unfinished items."""

    kind: ClassVar[str] = "queue is full"


class ItemsFrom(BaseModel):
    """Where items come from when they are not listed inline (exactly one source)."""

    model_config = ConfigDict(extra="forbid")

    glob: str | None = Field(None, description="Files matching a glob under the data roots")
    csv: str | None = Field(None, description="A CSV file with one item per row (header = fields)")
    sql: str | None = Field(None, description="A SELECT on the warehouse, one item per row")

    @model_validator(mode="after")
    def _exactly_one(self) -> ItemsFrom:
        given = [k for k in ("glob", "csv", "sql") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of glob, csv or sql")
        return self


class Manifest(BaseModel):
    """A batch: one operation over a set of items."""

    model_config = ConfigDict(extra="forbid")

    operation: str
    name: str | None = Field(None, max_length=200)
    priority: Priority = "normal"
    options: dict[str, Any] = Field(default_factory=dict)
    settings: ExecutionSettings = Field(default_factory=ExecutionSettings)
    items: list[dict[str, Any]] | None = None
    items_from: ItemsFrom | None = None
    submitted_by: str | None = Field(None, max_length=200)
    correlation_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Ties the batch's runs, events, webhooks and logs to the caller's request "
        "(generated when absent)",
    )

    @field_validator("items", mode="before")
    @classmethod
    def _items_are_objects(cls, value: Any) -> Any:
        # A bare string item is shorthand for {path: ...}.
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Manifest:
        if (self.items is None) == (self.items_from is None):
            raise ValueError("give either items or items_from (exactly one)")
        return self


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_from_validation(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        loc = _loc(tuple(p for p in err["loc"] if p not in ("function-after",)))
        field = f"{prefix}{'.' if prefix and loc and not loc.startswith('[') else ''}{loc}"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "field required"
        problems.append((field or prefix or "manifest", msg.removeprefix("Value error, ")))
    return problems


def _mapping(data: Any, problem: str) -> dict[str, Any]:  # noqa: ANN401
    if not isinstance(data, dict):
        raise ManifestError([("", problem)])
    return data


def _too_deep(source: str) -> ManifestError:
    return ManifestError([("", f"{source} is nested too deeply (more than {MAX_DEPTH} levels)")])


def _check_depth(data: dict[str, Any], source: str) -> dict[str, Any]:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(source)
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return data


def parse_text(text: str, source: str = "manifest") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError([("", f"{source} is not valid YAML or JSON: {exc}")]) from exc
    except RecursionError:
        raise _too_deep(source) from None
    return _check_depth(
        _mapping(data, f"{source} must be a mapping with an 'operation' field"), source
    )


def read_manifest_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([("", f"cannot read {path}: {exc}")]) from exc
    if path.suffix.lower() != ".json":
        return parse_text(text, path.name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError([("", f"{path.name} is not valid JSON: {exc}")]) from exc
    except RecursionError:
        raise _too_deep(path.name) from None
    return _check_depth(_mapping(data, f"{path.name} must be a JSON object"), path.name)


def load_manifest(source: Mapping[str, Any] | str | Path) -> Manifest:
    """Parse and validate the shape of a manifest (options and items are checked against the
    operation later, by :func:`batch_pipelines.app.submit.prepare_batch`)."""
    if isinstance(source, Path):
        data = read_manifest_file(source)
    elif isinstance(source, str):
        data = parse_text(source)
    else:
        data = dict(source)
        _check_depth(data, "manifest")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(problems_from_validation(exc)) from exc


def resolve_items(manifest: Manifest, paths: config.Paths | None = None) -> list[dict[str, Any]]:
    """The manifest's items as payload dicts: inline, or from a glob, a CSV file or SQL."""
    paths = paths or config.get_paths()
    if manifest.items is not None:
        return [dict(i) for i in manifest.items]
    src = manifest.items_from
    assert src is not None
    # One more than the limit is enough for prepare_batch to refuse the batch: reading
    # further would only spend memory on a batch that is refused anyway.
    enough = config.max_items() + 1
    try:
        if src.glob:
            try:
                matches = glob_under_roots(
                    src.glob,
                    paths.allowed_roots,
                    base_dir=paths.data.parent,
                    max_visits=config.glob_max_files(),
                    max_matches=enough - 1,
                    visits_hint=" or raise BATCH_PIPELINES_GLOB_MAX_FILES",
                )
            except GlobError as exc:
                raise ManifestError([("items_from.glob", str(exc))]) from None
            if not matches:
                raise ManifestError([("items_from.glob", f"no file matches {src.glob!r}")])
            return glob_items(matches, paths)
        if src.csv:
            path = resolve_under_roots(src.csv, paths, field_name="items_from.csv")
            with path.open(newline="", encoding="utf-8") as fh:
                return [dict(row) for row in itertools.islice(csv.DictReader(fh), enough)]
        if src.sql:
            return _items_from_sql(src.sql, paths)
    except ItemError as exc:
        raise ManifestError([("items_from", str(exc))]) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError([("items_from.csv", str(exc))]) from exc
    raise AssertionError("unreachable")


def glob_items(matches: list[Path], paths: config.Paths) -> list[dict[str, Any]]:
    """One item per matched file: its id is the file's path relative to the data root (or to
    the allowed root it lies in), so ids and the tables named after them do not depend on
    where the project lives; the path stays absolute. Natural order: ``ok_2`` before
    ``ok_10``, which is the order of the batch's items and chunks."""
    roots = sorted(paths.allowed_roots, key=lambda r: (r != paths.data, -len(r.parts)))
    items = []
    for match in matches:
        root = next((r for r in roots if match.is_relative_to(r)), None)
        item_id = match.relative_to(root).as_posix() if root else str(match)
        items.append({"id": item_id, "path": str(match)})
    return sorted(items, key=lambda i: natural_key(i["id"]))


def _items_from_sql(query: str, paths: config.Paths) -> list[dict[str, Any]]:
    import duckdb

    from batch_pipelines.core import warehouse
    from batch_pipelines.core.sqlcheck import ensure_read_only_select

    try:
        ensure_read_only_select(query)
    except ValueError as exc:
        raise ManifestError([("items_from.sql", str(exc))]) from exc
    try:
        with warehouse.connect(
            paths.warehouse, read_only=True, query_timeout_s=config.query_timeout_s()
        ) as con:
            rel = con.execute(query)
            names = [d[0] for d in rel.description]
            rows = rel.fetchmany(config.max_items() + 1)
    except QueryTimeoutError as exc:
        raise ManifestError([("items_from.sql", str(exc))]) from exc
    except duckdb.Error as exc:
        raise ManifestError([("items_from.sql", str(exc).splitlines()[0])]) from exc
    return [
        {
            k: (v if isinstance(v, str | int | float | bool) or v is None else str(v))
            for k, v in zip(names, row, strict=True)
        }
        for row in rows
    ]
