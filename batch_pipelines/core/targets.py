"""The tables an operation writes (or replaces), as it declares them, and the rules they obey.

An operation declares each table it writes as an :class:`ItemTarget`; submit checks the
declarations of every item, and the runner checks them again before an item runs (a batch
recorded by an older version, an old partition materialized by hand):

- :func:`refused_targets`: never a table batch_pipelines owns (the ledger, the schema version
  table, the operations' detail tables, the analytics views: everything the migrations
  create), in any schema and any case, nor a name cleanup drops as temporary.
- :func:`colliding_targets`: item ids are free text but table names are not: the id is
  reduced to a slug first, so ``a.b`` and ``a-b`` (or two emoji) give the same name, and
  DuckDB does not tell ``Raw`` from ``raw``. Two items of a batch writing to one target
  would overwrite each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batch_pipelines.core.keys import slugify
from batch_pipelines.core.ledger.models import TABLES as LEDGER_TABLES
from batch_pipelines.core.ledger.snapshots import SCHEMA as SNAPSHOT_SCHEMA
from batch_pipelines.core.schema import SCHEMA_TABLE, owned_relations

ITEM_ID = "{item_id}"
# What cleanup's temp_tables target drops: ``<table>__tmp_<suffix>`` tables (transform builds
# its result under such a name before swapping it in) and every table in these schemas.
TEMP_TABLE_MARK = "__tmp_"
TEMP_TABLE_SCHEMAS = ("staging",)


def item_table_name(template: str, item_id: str) -> str:
    """The table ``template`` names for one item: ``{item_id}`` becomes its id's slug."""
    return template.replace(ITEM_ID, slugify(item_id).replace(".", "_").replace("-", "_"))


@dataclass(frozen=True)
class ItemTarget:
    """A table an item writes: ``template`` gives the name (or ``{item_id}`` template) in
    force for an item, from the validated options and the item's payload (None: the item
    writes none), and ``render`` fills it in exactly as the handler does. ``field`` is the
    manifest field that names it: ``options.<name>``, or an item field's name."""

    field: str
    template: Callable[[Any, Mapping[str, Any]], str | None]
    render: Callable[[str, str], str] = item_table_name
    case_sensitive: bool = False


def colliding_targets(
    targets: Iterable[ItemTarget], options: Any, items: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """A (field, message) problem for each item whose templated target another item of the
    batch already writes to; ``items`` are ``{"item_id", "payload"}`` mappings."""
    items = list(items)
    problems: list[tuple[str, str]] = []
    for target in targets:
        first: dict[str, str] = {}
        for item in items:
            template = target.template(options, item["payload"])
            if not template or ITEM_ID not in template:
                continue
            item_id = item["item_id"]
            name = target.render(template, item_id)
            other = first.setdefault(name if target.case_sensitive else name.casefold(), item_id)
            if other != item_id:
                problems.append(
                    (
                        target.field,
                        f"items {other!r} and {item_id!r} would both write to {name!r}: "
                        f"{ITEM_ID} keeps only letters, digits and underscores of the id"
                        + ("" if target.case_sensitive else " and ignores case")
                        + "; give them ids that differ there",
                    )
                )
    return problems


def owner_of(name: str) -> str | None:
    """What ``name`` (``table``, ``schema.table`` or ``catalog.schema.table``) is part of when
    batch_pipelines owns it, else None. Only the table part is compared, in any case: which
    qualifiers reach (or shadow) the owned table depends on the warehouse's file name
    (``main.batches``, ``temp.batches``, ``<warehouse>.batches``), so none is trusted."""
    table = name.rsplit(".", 1)[-1].lower()
    kind = owned_relations().get(table)
    if kind is None:
        return None
    if table in LEDGER_TABLES:
        return "the ledger"
    if table == SCHEMA_TABLE:
        return "the schema version table"
    if kind == "table":
        return "an operation's detail table"
    if kind == "view":
        return "an analytics view"
    return f"a {kind} of the warehouse schema"


def is_temp_table_name(name: str) -> bool:
    """Whether cleanup's temp_tables target would take ``name`` for a leftover."""
    parts = name.lower().split(".")
    return TEMP_TABLE_MARK in parts[-1] or (len(parts) > 1 and parts[-2] in TEMP_TABLE_SCHEMAS)


def target_refusal(name: str) -> str | None:
    """Why no operation may write ``name`` (a sentence after the quoted name), else None."""
    owner = owner_of(name)
    if owner is not None:
        return f"is a table batch_pipelines owns ({owner}); choose another name"
    parts = name.lower().split(".")
    if len(parts) > 1 and parts[-2] == SNAPSHOT_SCHEMA:
        return (
            f"is in the {SNAPSHOT_SCHEMA} schema, where rollback keeps its snapshots; "
            "choose another name"
        )
    if is_temp_table_name(name):
        schemas = ", ".join(TEMP_TABLE_SCHEMAS)
        return (
            f"is a name cleanup treats as temporary (its temp_tables target drops "
            f"*{TEMP_TABLE_MARK}* tables and the {schemas} schema); choose another name"
        )
    return None


def refused_target(
    target: ItemTarget, options: Any, item_id: str, payload: Mapping[str, Any]
) -> str | None:
    """The problem with the table ``target`` names for one item, else None."""
    template = target.template(options, payload)
    if not template:
        return None
    name = target.render(template, item_id)
    refusal = target_refusal(name)
    if refusal is None:
        return None
    via = f" ({template!r} for item {item_id!r})" if name != template else ""
    return f"{name!r} {refusal}{via}"


def refused_targets(
    targets: Iterable[ItemTarget],
    options: Any,
    items: Iterable[Mapping[str, Any]],
    where: str = "items",
) -> list[tuple[str, str]]:
    """A (field, message) problem for each table a batch would write that no operation may:
    see :func:`target_refusal`. ``items`` are ``{"item_id", "payload"}`` mappings in manifest
    order; an item field is reported as ``<where>[<n>].<field>``."""
    items = list(items)
    problems: list[tuple[str, str]] = []
    for target in targets:
        for seq, item in enumerate(items):
            message = refused_target(target, options, item["item_id"], item["payload"])
            if message is None:
                continue
            field = (
                target.field
                if target.field.startswith("options.")
                else f"{where}[{seq}].{target.field}"
            )
            if (field, message) not in problems:
                problems.append((field, message))
    return problems
