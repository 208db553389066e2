"""Targets named from the item id, such as one table per item (``raw_{item_id}``).

Item ids are free text but table names are not: the id is reduced to a slug first, so
``a.b`` and ``a-b`` (or two emoji) give the same name, and DuckDB does not tell ``Raw`` from
``raw``. Two items of a batch writing to one target would overwrite each other, so an
operation declares each such target as an :class:`ItemTarget` and :func:`colliding_targets`
refuses the batch at submit time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batch_pipelines.core.keys import slugify

ITEM_ID = "{item_id}"


def item_table_name(template: str, item_id: str) -> str:
    """The table ``template`` names for one item: ``{item_id}`` becomes its id's slug."""
    return template.replace(ITEM_ID, slugify(item_id).replace(".", "_").replace("-", "_"))


@dataclass(frozen=True)
class ItemTarget:
    """Where an item writes, when templated from its id: ``template`` gives the template in
    force for an item (from the validated options and the item's payload) and ``render``
    fills it in exactly as the handler does."""

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
