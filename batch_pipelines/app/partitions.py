"""One DynamicPartitionsDefinition per operation, declared here once, and the only way keys
are registered and deleted."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from dagster import AssetCheckKey, AssetKey, DynamicPartitionsDefinition

from batch_pipelines.app import dagster_storage
from batch_pipelines.core.contract import PartitionDeleter
from batch_pipelines.core.gates import GATE_CHECK_NAME
from batch_pipelines.core.keys import partitions_def_name
from batch_pipelines.operations import OPERATION_NAMES, get_operation

log = logging.getLogger("batch_pipelines.partitions")

PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    name: DynamicPartitionsDefinition(name=partitions_def_name(name)) for name in OPERATION_NAMES
}

# add_dynamic_partitions makes one storage call per chunk of keys; SQLite and Postgres both
# take 5,000 keys per call comfortably.
REGISTER_CHUNK = 5000


def register_keys(instance, operation: str, keys: list[str]) -> None:  # noqa: ANN001
    """Register a batch's keys in insertion order, in chunks of ``REGISTER_CHUNK``."""
    name = PARTITIONS[operation].name
    for start in range(0, len(keys), REGISTER_CHUNK):
        instance.add_dynamic_partitions(name, keys[start : start + REGISTER_CHUNK])


def delete_keys_per_key(instance, operation: str, keys: Sequence[str]) -> int:  # noqa: ANN001
    """The public API: one storage call per key."""
    name = partitions_def_name(operation)
    unique = list(dict.fromkeys(keys))
    for key in unique:
        instance.delete_dynamic_partition(name, key)
    return len(unique)


def delete_keys(instance, operation: str, keys: Sequence[str]) -> str:  # noqa: ANN001
    """Delete keys of an operation in bulk (one SQL statement per 500 keys), falling back to
    one public API call per key; returns the path used: ``sql``, ``per_key`` or ``none``."""
    if not keys:
        return "none"
    try:
        dagster_storage.delete_dynamic_partitions(instance, partitions_def_name(operation), keys)
        return "sql"
    except Exception as exc:  # noqa: BLE001 - any storage problem: use the public API
        log.warning("bulk partition delete failed (%s); deleting key by key", exc)
        delete_keys_per_key(instance, operation, keys)
        return "per_key"


def partition_deleter(instance) -> PartitionDeleter:  # noqa: ANN001
    """:func:`delete_keys` bound to an instance: the ``delete_partitions`` host resource."""
    return functools.partial(delete_keys, instance)


def unregister_keys(instance, operation: str, keys: list[str]) -> int:  # noqa: ANN001
    """Remove registered keys of an operation; returns how many existed."""
    existing = set(instance.get_dynamic_partitions(PARTITIONS[operation].name))
    doomed = [k for k in keys if k in existing]
    delete_keys(instance, operation, doomed)
    return len(doomed)


def chunk_check_keys(operation: str, gated: bool) -> list[AssetCheckKey]:
    """The asset checks a chunk run evaluates: the operation's own, and the quality gate's
    only for a batch that has one. Each selected partitioned check costs a planned-check row
    per partition when Dagster creates the run (~1.6 ms an item), so the others leave it out."""
    spec = get_operation(operation)
    asset_key = AssetKey(f"{spec.name}_items")
    names = [c.name for c in spec.asset_checks]
    if gated and spec.scores_quality:
        names.append(GATE_CHECK_NAME)
    return [AssetCheckKey(asset_key, name) for name in names]
