"""Batch ids and Dagster partition keys.

Partition keys are permanent once registered, so they are built here and nowhere else.
A key is ``<batch_id>~<slug of item_id>~<8 hex of sha1(item_id)>``: readable in the UI,
unique per (batch, item) even when two item ids slug to the same text, at most
``MAX_KEY_LENGTH`` characters, and made only of ``[A-Za-z0-9_.~-]`` with no ``..`` (Dagster
forbids ``...``, ``,``, ``[``, ``]`` and control characters).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

MAX_KEY_LENGTH = 120
_SLUG_LENGTH = 60
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_DOTS = re.compile(r"\.{2,}")
_DIGITS = re.compile(r"(\d+)")
_BATCH_ID = re.compile(r"^[a-z]{2,10}-\d{8}-\d{6}-[0-9a-f]{6}$")


def new_batch_id(operation: str, now: datetime | None = None) -> str:
    """A sortable, unique batch id such as ``import-20261126-031500-a1b2c3``."""
    now = now or datetime.now(UTC)
    return f"{operation}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def is_batch_id(value: str) -> bool:
    return bool(_BATCH_ID.match(value))


def slugify(text: str, max_length: int = _SLUG_LENGTH) -> str:
    slug = _UNSAFE.sub("_", text)
    slug = _DOTS.sub(".", slug).strip("._-")
    return slug[:max_length].rstrip("._-") or "item"


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders the numbers in ``text`` by value: ``ok_2`` before ``ok_10``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(text) if part
    )


def partition_key(batch_id: str, item_id: str) -> str:
    """The Dagster partition key of one item of one batch."""
    if not is_batch_id(batch_id):
        raise ValueError(f"not a batch id: {batch_id!r}")
    if not item_id:
        raise ValueError("item_id must not be empty")
    digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8]
    key = f"{batch_id}~{slugify(item_id)}~{digest}"
    assert len(key) <= MAX_KEY_LENGTH
    return key


def partitions_def_name(operation: str) -> str:
    """The name of an operation's DynamicPartitionsDefinition (and of its asset)."""
    return f"{operation}_items"


def batch_id_of(key: str) -> str:
    """The batch id a partition key belongs to."""
    return key.split("~", 1)[0]


def derived_item_id(payload: dict) -> str:
    """An item id for a manifest item without one: its path or name, else a content hash."""
    for field_name in ("id", "item_id"):
        if payload.get(field_name):
            return str(payload[field_name])
    for field_name in ("path", "table", "name", "target"):
        if payload.get(field_name):
            return str(payload[field_name])
    import json

    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"item-{hashlib.sha1(blob).hexdigest()[:12]}"
