"""Where the project reaches into Dagster's private API: the only module that imports
``dagster._…``, so a Dagster upgrade has one place to check.

What it patches or borrows, all about how Dagster stores runs and events:

- :class:`BatchingSqliteStorage`: Dagster's embedded SQLite storage, writing a batch of asset
  events in one transaction (below).
- :func:`buffer_materialization_batch`: hands the materializations of one flush to the
  storage as one batch of events.
- :func:`serialize_batch`: the JSON of such a batch, packing what its events share once.
- ``AUTO_RETRY_RUN_ID_TAG``, ``RETRY_NUMBER_TAG``, ``WILL_RETRY_TAG``: the run tags through
  which Dagster's run retry daemon records its retries (no public equivalent).
- :func:`delete_dynamic_partitions`: deletes many dynamic partition keys with one SQL
  statement per chunk, where the public API makes one storage call per key.

Every item of a batch costs Dagster two asset events: a ``ASSET_MATERIALIZATION_PLANNED`` when
its chunk run is created (the daemon writes one per partition, which is what lets the UI show a
partition as in progress or failed) and an ``ASSET_MATERIALIZATION`` when it succeeds. Dagster
already hands such events to the storage in batches (``EventLogStorage.store_event_batch``)
when ``DAGSTER_EVENT_BATCH_SIZE`` is set, but the stock ``SqliteEventLogStorage`` then stores
them one by one: per event it opens the run's database and the cross-run index database,
commits and closes both, which costs 10-40 ms per event on a small machine and made Dagster's
bookkeeping most of the per-item cost of a fan-out.

:class:`BatchingSqliteEventLogStorage` stores such a batch in one transaction per database,
like ``dagster-postgres`` does: the same rows in the same tables (every event in the run's
database and in the index, the indexed tags of every event, the asset's latest-event entry
from the last event of the batch), so every partition keeps its own status and metadata in
the UI. Other events, and batches that mix runs or event types, go through the stock path.

Enable it with ``batch_pipelines/deploy/dagster.sqlite.yaml`` (what ``make run`` uses) and
``DAGSTER_EVENT_BATCH_SIZE`` in the environment of the daemon and the run workers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import dagster._check as check
import sqlalchemy as db
from dagster import AssetMaterialization, DagsterEvent, OpExecutionContext
from dagster._core.events import (
    AssetMaterializationPlannedData,
    DagsterEventBatchMetadata,
    DagsterEventType,
    StepMaterializationData,
    generate_event_batch_id,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import DynamicPartitionsTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, RETRY_NUMBER_TAG, WILL_RETRY_TAG
from dagster._serdes import ConfigurableClassData, pack_value, serialize_value
from dagster._utils import mkdir_p

__all__ = [
    "AUTO_RETRY_RUN_ID_TAG",
    "RETRY_NUMBER_TAG",
    "WILL_RETRY_TAG",
    "BatchingSqliteEventLogStorage",
    "BatchingSqliteStorage",
    "buffer_materialization_batch",
    "delete_dynamic_partitions",
    "serialize_batch",
]

PARTITION_DELETE_CHUNK = 500
BATCHED_EVENT_TYPES = frozenset(
    {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_OBSERVATION,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    }
)


def batchable(events: Sequence[EventLogEntry]) -> bool:
    """True for two or more asset events of one run, of the types written in one go."""
    if len(events) < 2:
        return False
    run_id = events[0].run_id
    for event in events:
        if event.run_id != run_id or not event.is_dagster_event:
            return False
        dagster_event = event.get_dagster_event()
        if dagster_event.event_type not in BATCHED_EVENT_TYPES or not dagster_event.asset_key:
            return False
    return True


def _envelope(event: EventLogEntry) -> EventLogEntry:
    """The event without what differs between the events of one batch."""
    dagster_event = event.get_dagster_event()
    return event._replace(
        timestamp=0.0, dagster_event=dagster_event._replace(event_specific_data=None)
    )


def _scalar_field(packed: Any) -> str | None:
    """The one field of a packed metadata value (``text`` or ``value``) if it is a scalar."""
    fields = [k for k in packed if k != "__class__"] if isinstance(packed, dict) else []
    if len(fields) != 1 or not isinstance(packed[fields[0]], str | int | float | bool):
        return None
    return fields[0]


def _same_tag_shape(tags: Mapping[str, str] | None, template: Mapping[str, str] | None) -> bool:
    """Both empty, or both string to string (such as a data version per event)."""
    if not tags or not template:
        return tags == template
    return all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())


class _Template:
    """The packed event data of one event of a batch, into which another event of the same
    shape (same asset, same metadata labels of the same scalar types) puts its own partition
    and metadata values: what ``pack_value`` would give, without walking the whole tree."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.packed = pack_value(data)
        self.fields: list[str | None] = []
        if isinstance(data, StepMaterializationData):
            entries = self.packed["materialization"]["metadata_entries"]
            self.fields = [_scalar_field(e["entry_data"]) for e in entries]

    def pack(self, data: Any) -> dict[str, Any] | None:
        """``pack_value(data)``, or None where ``data`` is not of this template's shape."""
        if type(data) is not type(self.data):
            return None
        if isinstance(data, AssetMaterializationPlannedData):
            if data.asset_key != self.data.asset_key or data.partitions_subset is not None:
                return None
            return {**self.packed, "partition": data.partition}
        if not isinstance(data, StepMaterializationData) or data.asset_lineage:
            return None
        m, t = data.materialization, self.data.materialization
        if (
            m.asset_key != t.asset_key
            or m.description != t.description
            or not _same_tag_shape(m.tags, t.tags)
            or list(m.metadata) != list(t.metadata)
        ):
            return None
        template = self.packed["materialization"]
        entries = []
        for value, field, entry, old in zip(
            m.metadata.values(),
            self.fields,
            template["metadata_entries"],
            t.metadata.values(),
            strict=True,
        ):
            raw = getattr(value, field, None) if field else None
            if type(value) is not type(old) or not isinstance(raw, str | int | float | bool):
                return None
            data_class = entry["entry_data"]["__class__"]
            entries.append({**entry, "entry_data": {"__class__": data_class, field: raw}})
        materialization = {**template, "metadata_entries": entries, "partition": m.partition}
        if m.tags:
            materialization["tags"] = dict(m.tags)
        return {**self.packed, "materialization": materialization}


def serialize_batch(events: Sequence[EventLogEntry]) -> list[str]:
    """``serialize_value`` of each event of a batch of asset events of one step: the same
    JSON, but the parts every event shares are packed once, so a materialization with a dozen
    metadata entries costs a fraction of a millisecond instead of about one.

    Events of another shape are serialized by ``serialize_value``; so is one event of the batch
    to compare with, and if they differ (a Dagster version that packs these events otherwise)
    the whole batch is."""
    if len(events) < 2:
        return [serialize_value(e) for e in events]
    envelope = _envelope(events[0])
    packed_envelope = pack_value(envelope)
    template = _Template(events[0].get_dagster_event().event_specific_data)
    out: list[str] = []
    checked: int | None = None
    for i, event in enumerate(events):
        data = event.get_dagster_event().event_specific_data
        packed = template.pack(data) if _envelope(event) == envelope else None
        if packed is None:
            out.append(serialize_value(event))
            continue
        entry = {
            **packed_envelope,
            "dagster_event": {**packed_envelope["dagster_event"], "event_specific_data": packed},
            "timestamp": event.timestamp,
        }
        out.append(json.dumps(entry, sort_keys=True))
        checked = i
    if checked is not None and out[checked] != serialize_value(events[checked]):
        return [serialize_value(e) for e in events]
    return out


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage whose ``store_event_batch`` writes one transaction per
    database for a batch of asset events (see the module docstring)."""

    _has_asset_key_index_cols_cache: bool | None = None

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchingSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _has_asset_key_index_cols_on_connection(self, conn: Any) -> bool:
        # The stock storage reflects the table's columns on every asset event; the schema
        # does not change under a running process.
        if self._has_asset_key_index_cols_cache is None:
            self._has_asset_key_index_cols_cache = super()._has_asset_key_index_cols_on_connection(
                conn
            )
        return self._has_asset_key_index_cols_cache

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        check.sequence_param(events, "events", of_type=EventLogEntry)
        if not batchable(events):
            super().store_event_batch(events)
            return
        rows = self._batch_rows(events)
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        # Mirror into the index database, as store_event does for asset events, with the
        # storage ids the tags and the asset entry refer to.
        with self.index_transaction() as conn:
            result = conn.execute(
                SqlEventLogStorageTable.insert().returning(
                    SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
                ),
                rows,
            )
            event_ids = [int(row[0]) for row in result.fetchall()]
            self._store_asset_event_tags(conn, events, event_ids)
            # The asset's entry keeps its latest event of each kind, so only the last one of
            # each (asset, type) is written (as dagster-postgres does for a batch).
            latest: dict[tuple[Any, Any], tuple[EventLogEntry, int]] = {}
            for event, event_id in zip(events, event_ids, strict=True):
                dagster_event = event.get_dagster_event()
                latest[(dagster_event.asset_key, dagster_event.event_type)] = (event, event_id)
            for event, event_id in sorted(latest.values(), key=lambda pair: pair[1]):
                self._store_asset_event(conn, event, event_id)

    def _batch_rows(self, events: Sequence[EventLogEntry]) -> list[dict[str, Any]]:
        """``_event_to_row`` for each event, with the ``event`` column serialized by
        :func:`serialize_batch` (the same JSON, made faster)."""
        rows = []
        for event, text in zip(events, serialize_batch(events), strict=True):
            row = self._event_to_row_without_event(event)
            row["event"] = text
            rows.append(row)
        return rows

    def _event_to_row_without_event(self, event: EventLogEntry) -> dict[str, Any]:
        dagster_event = event.get_dagster_event()
        return {
            "run_id": event.run_id,
            "dagster_event_type": dagster_event.event_type_value,
            "timestamp": self._event_insert_timestamp(event),
            "step_key": dagster_event.step_key,
            "asset_key": dagster_event.asset_key.to_string() if dagster_event.asset_key else None,
            "partition": dagster_event.partition or None,
        }


class BatchingSqliteStorage(DagsterSqliteStorage):
    """``DagsterSqliteStorage`` (same files under ``base_dir``) with
    :class:`BatchingSqliteEventLogStorage` as its event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self.base_dir = check.str_param(base_dir, "base_dir")
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = BatchingSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = check.opt_inst_param(inst_data, "inst_data", ConfigurableClassData)
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchingSqliteStorage:
        base_dir = check.str_param(config_value["base_dir"], "base_dir")
        mkdir_p(base_dir)
        return cls(base_dir, inst_data=inst_data)


def buffer_materialization_batch(
    op_context: OpExecutionContext, materializations: Sequence[AssetMaterialization]
) -> bool:
    """Queue ``materializations`` as the events ``context.log_event`` would make, marked as one
    batch so the instance stores them with one ``store_event_batch`` call.

    Returns False, having queued nothing, if the context's internals are not what this
    expects; the caller then logs them one by one.
    """
    step_context = getattr(op_context, "_step_execution_context", None)
    buffer = getattr(op_context, "_events", None)
    if step_context is None or not isinstance(buffer, list):
        return False
    batch_id = generate_event_batch_id()
    last = len(materializations) - 1
    for i, m in enumerate(materializations):
        buffer.append(
            DagsterEvent.asset_materialization(
                step_context, m, DagsterEventBatchMetadata(batch_id, i == last)
            )
        )
    return True


def delete_dynamic_partitions(instance: Any, partitions_def_name: str, keys: Sequence[str]) -> int:
    """Delete dynamic partition keys with one SQL ``DELETE ... WHERE partition IN (...)`` per
    chunk through the instance's event log storage (what ``delete_dynamic_partition`` does
    for one key); returns the rows deleted. Raises ``NotImplementedError`` for storages that
    are not SQL, so the caller can fall back to the public API."""
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        raise NotImplementedError(f"{type(storage).__name__} is not a SQL event log storage")
    deleted = 0
    unique = list(dict.fromkeys(keys))
    with storage.index_connection() as conn:
        for start in range(0, len(unique), PARTITION_DELETE_CHUNK):
            chunk = unique[start : start + PARTITION_DELETE_CHUNK]
            result = conn.execute(
                DynamicPartitionsTable.delete().where(
                    db.and_(
                        DynamicPartitionsTable.c.partitions_def_name == partitions_def_name,
                        DynamicPartitionsTable.c.partition.in_(chunk),
                    )
                )
            )
            deleted += max(0, result.rowcount or 0)
    return deleted
