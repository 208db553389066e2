"""One DynamicPartitionsDefinition per operation, declared here once."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

from batch_pipelines.operations import OPERATION_NAMES

PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    name: DynamicPartitionsDefinition(name=f"{name}_items") for name in OPERATION_NAMES
}

# add_dynamic_partitions makes one storage call per chunk of keys; SQLite and Postgres both
# take 5,000 keys per call comfortably.
REGISTER_CHUNK = 5000


def register_keys(instance, operation: str, keys: list[str]) -> None:  # noqa: ANN001
    """Register a batch's keys in insertion order, in chunks of ``REGISTER_CHUNK``."""
    name = PARTITIONS[operation].name
    for start in range(0, len(keys), REGISTER_CHUNK):
        instance.add_dynamic_partitions(name, keys[start : start + REGISTER_CHUNK])


def unregister_keys(instance, operation: str, keys: list[str]) -> int:  # noqa: ANN001
    """Remove registered keys of an operation; returns how many existed."""
    name = PARTITIONS[operation].name
    existing = set(instance.get_dynamic_partitions(name))
    doomed = [k for k in keys if k in existing]
    for key in doomed:
        instance.delete_dynamic_partition(name, key)
    return len(doomed)
