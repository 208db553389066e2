"""Partition keys are permanent: guards against keys Dagster rejects, collisions between
items whose ids slug alike, and keys that change between releases."""

from __future__ import annotations

import re

import pytest
from dagster import DynamicPartitionsDefinition

from batch_pipelines.core.keys import (
    MAX_KEY_LENGTH,
    batch_id_of,
    derived_item_id,
    is_batch_id,
    new_batch_id,
    partition_key,
    slugify,
)

BATCH = "import-20261126-031500-a1b2c3"
NASTY = [
    "a,b",
    "[x]",
    "a...b",
    "tab\there",
    "new\nline",
    "ünïcödé/ファイル.csv",
    "../../etc/passwd",
    "x" * 500,
    " ",
    "a b",
    "a_b",
    "💥",
]


def test_batch_ids_are_unique_and_recognised() -> None:
    ids = {new_batch_id("import") for _ in range(200)}
    assert len(ids) == 200
    assert all(is_batch_id(i) for i in ids)
    assert not is_batch_id("import-2026-x")


@pytest.mark.parametrize("item_id", NASTY)
def test_keys_are_valid_for_dagster(item_id: str) -> None:
    key = partition_key(BATCH, item_id)
    assert len(key) <= MAX_KEY_LENGTH
    assert re.fullmatch(r"[A-Za-z0-9_.~-]+", key)
    assert "..." not in key and ".." not in key
    assert batch_id_of(key) == BATCH
    # Dagster's own validation accepts it.
    DynamicPartitionsDefinition(name="t").build_add_request([key])


def test_keys_are_unique_per_item_even_when_slugs_collide() -> None:
    keys = [partition_key(BATCH, i) for i in NASTY]
    assert len(set(keys)) == len(keys)
    assert slugify("a b") == slugify("a_b")
    assert partition_key(BATCH, "a b") != partition_key(BATCH, "a_b")


def test_keys_are_stable_and_unique_per_batch() -> None:
    # A change here renames every registered partition: it must be deliberate.
    assert partition_key(BATCH, "penguins_2007") == f"{BATCH}~penguins_2007~1ab691f9"
    other = "import-20261126-031500-ffffff"
    assert partition_key(BATCH, "x") != partition_key(other, "x")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not a batch id"):
        partition_key("nope", "x")
    with pytest.raises(ValueError, match="empty"):
        partition_key(BATCH, "")


def test_derived_item_ids() -> None:
    assert derived_item_id({"id": "x", "path": "p"}) == "x"
    assert derived_item_id({"path": "data/a.csv"}) == "data/a.csv"
    a = derived_item_id({"text": "hello"})
    assert a == derived_item_id({"text": "hello"}) != derived_item_id({"text": "bye"})
