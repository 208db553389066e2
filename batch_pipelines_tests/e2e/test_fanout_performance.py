"""The fast paths of the fan-out (issue 7) give exactly what the slow paths gave.

Guards against: the batching SQLite event storage dropping or changing an event, a partition's
status or the asset's latest materialization; Dagster-batched materializations losing a
partition or its metadata; a grouped ledger commit writing other rows than item-by-item
commits, or letting one failing commit fail (or lose) the other items of its flush; the
automatic chunk size overriding an explicit one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetPartitionStatus,
    DagsterInstance,
    MetadataValue,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.events import (
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._serdes import serialize_value

from batch_pipelines.app.dagster_storage import BatchingSqliteEventLogStorage, serialize_batch
from batch_pipelines.app.dispatch import (
    HANDED_OVER_TAG,
    MAX_LAUNCHES_PER_CHUNK,
    ChunkState,
    RunState,
    plan_launches,
)
from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.partitions import PARTITIONS
from batch_pipelines.app.submit import prepare_batch, submit_batch
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult, OperationSpec
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.keys import new_batch_id
from batch_pipelines.core.runner import (
    AUTO_CHUNK_MAX,
    AUTO_CHUNK_PER_WORKER,
    ExecutionSettings,
    auto_chunk_size,
    run_chunk,
)
from batch_pipelines.definitions import defs
from batch_pipelines_tests.conftest import REPO
from batch_pipelines_tests.helpers import Item, Opts, insert_queued_batch, make_batch

STORAGE_YAML = REPO / "batch_pipelines" / "deploy" / "dagster.sqlite.yaml"

# ------------------------------------------------------------------ grouped ledger commits


def _handler(ctx: ItemContext) -> ItemResult:
    b = ctx.item.behaviour
    if b == "invalid":
        raise ValidationItemError("bad input")

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> str | None:
        if b == "commit_fails":
            con.execute("select * from no_such_table")
        con.execute(
            "create table if not exists perf_detail (batch_id varchar, item_id varchar, v int)"
        )
        con.execute(
            "delete from perf_detail where batch_id = ? and item_id = ?", [cc.batch_id, cc.item_id]
        )
        con.execute("insert into perf_detail values (?, ?, 1)", [cc.batch_id, cc.item_id])
        return "skipped" if b == "skip" else None

    return ItemResult(metrics={"b": b}, quality_score=0.5, commit=commit)


def _spec(group: bool) -> OperationSpec:
    return OperationSpec("testop", "test", Opts, Item, _handler, group_commits=group)


ITEMS = [
    {"id": "a"},
    {"id": "b", "behaviour": "skip"},
    {"id": "c", "behaviour": "invalid"},
    {"id": "d"},
]


def _ledger_rows(batch_id: str) -> dict[str, list[tuple]]:
    with warehouse.connect(read_only=True) as con:
        return {
            "items": con.execute(
                "select item_id, status, attempts, quality_score, result::varchar, error, "
                "error_category, severity, run_id, finished_at is not null, "
                "started_at is not null, duration_ms is not null from batch_items "
                "where batch_id = ? order by item_id",
                [batch_id],
            ).fetchall(),
            "attempts": con.execute(
                "select item_id, attempt, outcome, error, error_category, severity, run_id, "
                "duration_ms is not null from item_attempts where batch_id = ? order by all",
                [batch_id],
            ).fetchall(),
            "events": con.execute(
                "select event, item_id, actor, detail::varchar from batch_events "
                "where batch_id = ? and event = 'item_failed' order by all",
                [batch_id],
            ).fetchall(),
            "detail": con.execute(
                "select item_id, count(*) from perf_detail where batch_id = ? group by all "
                "order by all",
                [batch_id],
            ).fetchall(),
            "batch": con.execute(
                "select status, processed_items, succeeded_items, failed_items, skipped_items "
                "from batches where batch_id = ?",
                [batch_id],
            ).fetchall(),
        }


@pytest.mark.parametrize("items", [ITEMS, [*ITEMS, {"id": "e", "behaviour": "commit_fails"}]])
def test_grouped_commit_writes_what_item_by_item_commits_write(env, items) -> None:  # noqa: ANN001
    settings = ExecutionSettings(max_retries=0, flush_interval_s=600)
    results = {}
    for group in (False, True):
        batch_id, work = make_batch(items, settings)
        summary = run_chunk(_spec(group), work, Opts(), settings, run_id="r1", sleep=lambda s: None)
        results[group] = (summary, _ledger_rows(batch_id))
    (one_by_one, rows_single), (grouped, rows_grouped) = results[False], results[True]
    assert rows_grouped == rows_single
    assert [(o.item_id, o.status) for o in grouped.outcomes] == [
        (o.item_id, o.status) for o in one_by_one.outcomes
    ]
    statuses = {r[0]: r[1] for r in rows_grouped["items"]}
    assert statuses["a"] == statuses["d"] == "succeeded"
    assert statuses["b"] == "skipped" and statuses["c"] == "failed"
    if "e" in statuses:
        # One commit failing fails its own item only; the others are written once.
        assert statuses["e"] == "failed"
        error = next(r[5] for r in rows_grouped["items"] if r[0] == "e")
        assert error.startswith("commit failed")
    assert rows_grouped["detail"] == [("a", 1), ("b", 1), ("d", 1)]


def test_record_outcomes_writes_what_record_outcome_writes(env) -> None:  # noqa: ANN001
    now = ledger.utcnow()
    outcomes = [
        ledger.ItemOutcome(
            "B",
            "ok",
            "succeeded",
            [ledger.Attempt(1, now, now, 1.5, "failed", "x", "transient", "warning")]
            + [ledger.Attempt(2, now, now, 2.5, "succeeded")],
            result={"rows": 3, "nested": {"a": [1, 2]}},
            quality_score=0.75,
            started_at=now,
            finished_at=now,
        ),
        ledger.ItemOutcome(
            "B", "bad", "failed", [ledger.Attempt(1, now, now, 1.0, "failed", "boom", "perm")]
        ),
        ledger.ItemOutcome("B", "never", "cancelled", error="not run", error_category="cancelled"),
    ]
    tables = {}
    for how in ("one", "many"):
        batch_id = new_batch_id("import")
        for o in outcomes:
            o.batch_id = batch_id
        with warehouse.connect() as con:
            con.execute("begin")
            insert_queued_batch(con, batch_id, [{"id": o.item_id} for o in outcomes])
            if how == "one":
                for o in outcomes:
                    ledger.record_outcome(con, o, "run-1")
            else:
                ledger.record_outcomes(con, outcomes, "run-1")
            con.execute("commit")
            tables[how] = [
                con.execute(
                    "select * exclude (batch_id, partition_key) from batch_items "
                    "where batch_id = ? order by item_id",
                    [batch_id],
                ).fetchall(),
                con.execute(
                    "select * exclude (batch_id) from item_attempts where batch_id = ? "
                    "order by all",
                    [batch_id],
                ).fetchall(),
                con.execute(
                    "select event, item_id, actor, detail::varchar from batch_events "
                    "where batch_id = ? order by all",
                    [batch_id],
                ).fetchall(),
            ]
    assert tables["many"] == tables["one"]
    assert len(tables["one"][1]) == 3 and len(tables["one"][2]) == 1


# ------------------------------------------------------------------------ auto chunk size


def test_auto_chunk_size_grows_with_the_batch_and_an_explicit_one_wins(env) -> None:  # noqa: ANN001
    assert auto_chunk_size(1) == auto_chunk_size(200) == 100
    assert auto_chunk_size(400) == 200
    # One chunk per slot of the duckdb_writer pool (2 by default), so no slot launches twice.
    assert auto_chunk_size(1000) == 500
    assert auto_chunk_size(10_000) == 5000
    assert auto_chunk_size(20_000) == auto_chunk_size(100_000) == AUTO_CHUNK_MAX == 5000
    items = [{"id": f"t{i}", "text": "hello world"} for i in range(2500)]
    auto = prepare_batch({"operation": "annotate", "items": items})
    assert auto.manifest.settings.chunk_size == 1250
    assert {i["chunk_no"] for i in auto.items} == {0, 1}
    fixed = prepare_batch(
        {"operation": "annotate", "settings": {"chunk_size": 100}, "items": items}
    )
    assert fixed.manifest.settings.chunk_size == 100
    assert max(i["chunk_no"] for i in fixed.items) == 24


def test_auto_chunk_size_keeps_items_in_flight_busy(env) -> None:  # noqa: ANN001
    # Items in flight: at least AUTO_CHUNK_PER_WORKER items per item in flight, so a batch of
    # slow items is not cut into runs that each pay a launch, a ramp and a tail.
    assert auto_chunk_size(1000, 64) == 1000
    assert auto_chunk_size(4000, 64) == 64 * AUTO_CHUNK_PER_WORKER  # not 1,000
    assert auto_chunk_size(1000, 1) == auto_chunk_size(1000) == 500
    assert auto_chunk_size(100_000, 256) == AUTO_CHUNK_MAX
    items = [{"id": f"t{i}", "text": "hello world"} for i in range(1000)]
    wide = prepare_batch(
        {"operation": "annotate", "settings": {"item_concurrency": 64}, "items": items}
    )
    assert wide.manifest.settings.chunk_size == 1000
    assert {i["chunk_no"] for i in wide.items} == {0}
    # annotate's default (16 in flight): two chunks of 512, not two of 500.
    default = prepare_batch({"operation": "annotate", "items": items})
    assert default.manifest.settings.chunk_size == 16 * AUTO_CHUNK_PER_WORKER
    assert {i["chunk_no"] for i in default.items} == {0, 1}
    # A CPU-bound operation (one item at a time) keeps the plain rule.
    one = prepare_batch(
        {"operation": "annotate", "settings": {"item_concurrency": 1}, "items": items}
    )
    assert one.manifest.settings.chunk_size == 500


# ----------------------------------------------------------------- batching event storage


def _materialization(i: int, run_id: str, planned: bool = False) -> EventLogEntry:
    key = AssetKey("perf_items")
    if planned:
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
            job_name="j",
            event_specific_data=AssetMaterializationPlannedData(key, partition=f"p{i}"),
        )
    else:
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name="j",
            event_specific_data=StepMaterializationData(
                AssetMaterialization(
                    key, partition=f"p{i}", metadata={"i": i}, tags={DATA_VERSION_TAG: f"v{i}"}
                )
            ),
        )
    return EventLogEntry(
        error_info=None,
        level=10,
        user_message="",
        run_id=run_id,
        timestamp=time.time() + i * 1e-3,
        dagster_event=event,
        step_key="s",
        job_name="j",
    )


def _snapshot(storage: SqliteEventLogStorage, run_id: str) -> dict[str, Any]:
    key = AssetKey("perf_items")
    records = storage.get_records_for_run(run_id).records
    entry = storage.get_asset_records([key])[0].asset_entry
    return {
        "run": [
            (r.event_log_entry.dagster_event_type, r.event_log_entry.dagster_event.partition)
            for r in records
        ],
        "materialized": sorted(storage.get_materialized_partitions(key)),
        "latest": entry.last_materialization.dagster_event.partition,
        "last_run_id": entry.last_run_id,
        "planned_not_done": sorted(
            storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                key
            )
        ),
    }


def test_store_event_batch_stores_what_store_event_stores(tmp_path: Path) -> None:
    stock = SqliteEventLogStorage(str(tmp_path / "stock"))
    batched = BatchingSqliteEventLogStorage(str(tmp_path / "batched"))
    planned = [_materialization(i, "run-a", planned=True) for i in range(6)]
    done = [_materialization(i, "run-a") for i in range(4)]  # p4, p5 never materialize
    for event in planned + done:
        stock.store_event(event)
    batched.store_event_batch(planned)
    batched.store_event_batch(done)
    assert _snapshot(batched, "run-a") == _snapshot(stock, "run-a")
    snap = _snapshot(batched, "run-a")
    assert snap["materialized"] == ["p0", "p1", "p2", "p3"] and snap["latest"] == "p3"
    assert snap["planned_not_done"] == ["p4", "p5"]
    # Indexed tags of every event of the batch, not only the last.
    tags = batched.get_event_tags_for_asset(AssetKey("perf_items"))
    assert sorted(t[DATA_VERSION_TAG] for t in tags) == ["v0", "v1", "v2", "v3"]
    # Anything else (here: one event, and a batch over two runs) takes the stock path.
    batched.store_event_batch([_materialization(9, "run-b")])
    batched.store_event_batch([_materialization(10, "run-c"), _materialization(11, "run-d")])
    assert {"p9", "p10", "p11"} <= batched.get_materialized_partitions(AssetKey("perf_items"))


def _with_metadata(event: EventLogEntry, metadata: dict[str, Any], **kw: Any) -> EventLogEntry:
    data = event.dagster_event.event_specific_data
    m = data.materialization
    materialization = AssetMaterialization(
        kw.get("asset_key", m.asset_key),
        partition=m.partition,
        metadata=metadata,
        tags=kw.get("tags", m.tags),
        description=kw.get("description"),
    )
    return event._replace(
        dagster_event=event.dagster_event._replace(
            event_specific_data=StepMaterializationData(materialization)
        )
    )


def test_serialize_batch_gives_what_serialize_value_gives(monkeypatch) -> None:  # noqa: ANN001
    scalars = {"batch_id": "b1", "n": 3, "score": 0.25, "ok": True, "model": "local"}
    done = [_with_metadata(_materialization(i, "r"), {**scalars, "n": i}) for i in range(6)]
    odd = [
        _with_metadata(_materialization(6, "r"), {**scalars, "score": float("nan")}),
        _with_metadata(_materialization(7, "r"), {**scalars, "n": "three"}),  # other type
        _with_metadata(_materialization(8, "r"), {"only": 1}),  # other labels
        _with_metadata(_materialization(9, "r"), {**scalars, "j": MetadataValue.json({"a": 1})}),
        _with_metadata(_materialization(10, "r"), scalars, asset_key=AssetKey("other")),
        _with_metadata(_materialization(11, "r"), scalars, description="d", tags={"t": "1"}),
        _with_metadata(_materialization(12, "r"), {**scalars, "text": 'quote " and \\ é'}),
    ]
    stepped = done[0]._replace(step_key="other_step")
    planned = [_materialization(i, "r", planned=True) for i in range(5)]
    for batch in (done, done + odd, [*done, stepped], odd, planned, planned[:1]):
        assert serialize_batch(batch) == [serialize_value(e) for e in batch]
    # The events of the usual shape do not go through serialize_value (but one, the check).
    slow: list[EventLogEntry] = []

    def counted(value: Any) -> str:
        slow.append(value)
        return serialize_value(value)

    monkeypatch.setattr("batch_pipelines.app.dagster_storage.serialize_value", counted)
    assert serialize_batch(done) == [serialize_value(e) for e in done]
    assert serialize_batch(planned) == [serialize_value(e) for e in planned]
    assert len(slow) == 2


@pytest.fixture
def batching_instance(env, monkeypatch):  # noqa: ANN001, ANN201
    text = (REPO / "dagster.yaml").read_text() + "\n" + STORAGE_YAML.read_text()
    (env.dagster_home / "dagster.yaml").write_text(text)
    assert yaml.safe_load(text)["storage"]["custom"]["class"] == "BatchingSqliteStorage"
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    inst = DagsterInstance.get()
    assert isinstance(inst.event_log_storage, BatchingSqliteEventLogStorage)
    yield inst
    inst.dispose()


def test_batched_fan_out_keeps_every_partition_status_and_metadata(
    env,  # noqa: ANN001
    batching_instance,  # noqa: ANN001
    monkeypatch,  # noqa: ANN001
) -> None:
    instance = batching_instance
    batches: list[tuple[str, int]] = []
    original = BatchingSqliteEventLogStorage.store_event_batch

    def spy(self, events):  # noqa: ANN001, ANN202
        batches.append((events[0].dagster_event_type.value, len(events)))
        return original(self, events)

    monkeypatch.setattr(BatchingSqliteEventLogStorage, "store_event_batch", spy)
    items = [{"id": f"t{i}", "text": f"The bank raised interest rates ({i})."} for i in range(24)]
    # A row of a table that does not exist fails its item at run time.
    items[7] = {"id": "t7", "table": "nope", "id_column": "id", "id_value": 1, "text_column": "b"}
    batch_id = submit_batch(
        {"operation": "annotate", "settings": {"chunk_size": 10, "max_retries": 0}, "items": items},
        instance=instance,
    )
    batch = run_batch_in_process(batch_id, instance, defs)
    assert batch["status"] == "completed_with_errors" and batch["succeeded_items"] == 23
    keys = dict(env.sql("select item_id, partition_key from batch_items"))
    key = AssetKey("annotate_items")
    status = instance.get_status_by_partition(key, list(keys.values()), PARTITIONS["annotate"])
    assert status.pop(keys["t7"]) == AssetPartitionStatus.FAILED
    assert set(status.values()) == {AssetPartitionStatus.MATERIALIZED}
    records = instance.fetch_materializations(key, limit=100).records
    assert len(records) == 23
    by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert len(by_partition) == 23  # one materialization per item partition, none twice
    assert by_partition[keys["t3"]]["item_id"].value == "t3"
    assert by_partition[keys["t3"]]["category"].value == "finance"
    assert by_partition[keys["t3"]]["batch_id"].value == batch_id
    # Planned events per chunk run, and each chunk's materializations, in one batch each.
    assert ("ASSET_MATERIALIZATION_PLANNED", 10) in batches
    assert ("ASSET_MATERIALIZATION", 10) in batches and ("ASSET_MATERIALIZATION", 9) in batches


# ---------------------------------------------------------------------------- time slices


def test_time_slice_hands_unstarted_items_to_the_next_run(env, instance) -> None:  # noqa: ANN001
    from batch_pipelines.app.dispatch import chunk_states, chunk_tags
    from batch_pipelines.definitions import defs

    items = [{"id": f"t{i}", "text": f"Storm winds near the colony ({i})."} for i in range(3)]
    batch_id = submit_batch(
        {
            "operation": "annotate",
            "settings": {"chunk_size": 3, "chunk_time_slice_s": 1e-6},
            "items": items,
        },
        instance=instance,
    )
    job = defs.resolve_job_def("annotate_job")
    runs = 0
    while True:
        with warehouse.connect(read_only=True) as con:
            rows = [r for r in ledger.launchable_chunks(con) if r["batch_id"] == batch_id]
        if not rows:
            break
        c = chunk_states(rows)[0]
        # Tagged like the dispatcher's runs: the time slice applies.
        tags = chunk_tags(c.batch_id, c.operation, c.priority, c.chunk_no, c.first_key, c.last_key)
        assert job.execute_in_process(instance=instance, tags=tags).success
        runs += 1
        pending = env.sql(
            "select count(*) from batch_items where batch_id = ? and status = 'pending' "
            "and run_id is null",
            [batch_id],
        )[0][0]
        assert pending == 3 - runs  # one item per run; the rest handed over untouched
        assert runs <= 3
    assert runs == 3
    assert env.sql("select distinct status, attempts from batch_items") == [("succeeded", 1)]
    assert env.sql("select status from batches") == [("completed",)]
    # Each run covered what was left of the chunk: one materialization per item.
    records = instance.fetch_materializations(AssetKey("annotate_items"), limit=10).records
    assert len(records) == 3
    tagged = sorted(r.tags.get(HANDED_OVER_TAG, "-") for r in instance.get_runs())
    assert tagged == ["-", "1", "2"]


def test_failed_runs_that_handed_items_over_do_not_stop_their_chunk() -> None:
    chunk = ChunkState("b", "annotate", "normal", 0, "b~k0", "b~k9", pending=5)
    sliced = [RunState("b", 0, "FAILURE", handed_over=True) for _ in range(MAX_LAUNCHES_PER_CHUNK)]
    stuck = [RunState("b", 0, "FAILURE") for _ in range(MAX_LAUNCHES_PER_CHUNK)]
    (launch,) = plan_launches([chunk], sliced)
    assert launch.run_key == f"b:0:{MAX_LAUNCHES_PER_CHUNK}"
    assert plan_launches([chunk], stuck) == []


def test_time_slice_is_off_in_process(env, instance) -> None:  # noqa: ANN001
    batch_id = submit_batch(
        {
            "operation": "annotate",
            "settings": {"chunk_size": 5, "chunk_time_slice_s": 1e-6},
            "items": [{"id": f"t{i}", "text": "Interest rates rose."} for i in range(5)],
        },
        instance=instance,
    )
    assert run_batch_in_process(batch_id, instance, defs)["status"] == "completed"
    assert len(instance.get_runs()) == 1
