"""The ledger's writes and reads on a real (in-memory) warehouse: guards against a failed batch
whose fate hangs on its error message, a status change the state machine forbids, a pause
that loses the batch's place, typed rows drifting from the dicts the API has always returned,
and migration 0010 flagging existing batches differently from the rule it replaces."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from batch_pipelines.core import ledger, schema
from batch_pipelines.core.ledger import BatchStatus, ItemStatus, TransitionError


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    schema.migrate(c)
    return c


def add_batch(
    con: duckdb.DuckDBPyConnection,
    batch_id: str = "b1",
    n: int = 3,
    status: str = "queued",
    **batch: Any,  # noqa: ANN401
) -> list[str]:
    ids = [f"i{k}" for k in range(n)]
    ledger.insert_batch(
        con,
        {
            "batch_id": batch_id,
            "operation": "import",
            "name": "t",
            "status": status,
            "priority": "normal",
            "total_items": n,
            "options": {"o": 1},
            "settings": batch.pop("settings", {}),
            "created_at": ledger.utcnow(),
            **batch,
        },
        [
            {
                "item_id": i,
                "seq": k,
                "chunk_no": 0,
                "partition_key": f"{batch_id}~{i}",
                "payload": {"id": i},
            }
            for k, i in enumerate(ids)
        ],
    )
    return ids


def finish(con: duckdb.DuckDBPyConnection, batch_id: str, **status_of: str) -> None:
    for item_id, status in status_of.items():
        con.execute(
            "update batch_items set status = ?, error = ? where batch_id = ? and item_id = ?",
            [status, "boom" if status == "failed" else None, batch_id, item_id],
        )


def row(con: duckdb.DuckDBPyConnection, batch_id: str = "b1") -> tuple:
    return con.execute(
        "select status, stopped, error, completed_at is not null from batches where batch_id = ?",
        [batch_id],
    ).fetchone()


def test_all_failed_is_recomputed_when_items_are_rerun(con) -> None:  # noqa: ANN001
    add_batch(con)
    finish(con, "b1", i0="failed", i1="failed", i2="cancelled")
    assert ledger.refresh_batch(con, "b1") == BatchStatus.FAILED
    assert row(con) == ("failed", False, "all 3 items failed or were cancelled", True)
    finish(con, "b1", i0="succeeded", i1="succeeded", i2="succeeded")
    assert ledger.refresh_batch(con, "b1") == BatchStatus.COMPLETED
    assert row(con) == ("completed", False, None, True)


def test_a_stopped_batch_stays_failed(con) -> None:  # noqa: ANN001
    add_batch(con, settings={"continue_on_error": False})
    finish(con, "b1", i0="succeeded", i1="failed")
    assert ledger.refresh_batch(con, "b1") == BatchStatus.FAILED
    status, stopped, error, completed = row(con)
    assert (status, stopped, completed) == ("failed", True, True)
    assert error == "stopped on first error (continue_on_error is false): item i1: boom"
    assert ledger.count_items(con, "b1", ItemStatus.CANCELLED) == 1
    finish(con, "b1", i1="succeeded", i2="succeeded")
    assert ledger.refresh_batch(con, "b1") == BatchStatus.FAILED
    assert row(con)[:3] == ("failed", True, error)
    events = con.execute(
        "select event from batch_events where event != 'batch_progress' order by event_id"
    ).fetchall()
    assert events == [("batch_failed",)]
    # The items its stop cancelled are no progress.
    marks = con.execute("select count(*) from batch_events where event = 'batch_progress'")
    assert marks.fetchone() == (0,)


def test_cancel_stops_the_batch_and_the_state_machine_guards_set_status(con) -> None:  # noqa: ANN001
    add_batch(con, status="pending")
    ledger.set_batch_status(con, "b1", BatchStatus.QUEUED)
    assert con.execute("select queued_at is not null from batches").fetchone() == (True,)
    ledger.set_batch_status(con, "b1", "cancelled", error="cancelled by me")
    assert row(con) == ("cancelled", True, "cancelled by me", True)
    with pytest.raises(TransitionError):
        ledger.set_batch_status(con, "b1", "queued")
    with pytest.raises(KeyError):
        ledger.set_batch_status(con, "nope", "queued")


def test_pause_and_resume(con) -> None:  # noqa: ANN001
    ids = add_batch(con)
    assert ledger.set_paused(con, "b1", True) == BatchStatus.QUEUED
    assert ledger.is_paused(con, "b1")
    assert ledger.refresh_batch(con, "b1") == BatchStatus.PAUSED
    assert ledger.launchable_chunks(con) == []
    assert ledger.set_paused(con, "b1", False) == BatchStatus.QUEUED
    assert not ledger.is_paused(con, "b1")
    ledger.mark_running(con, "b1", ids[:1], "r1")
    assert ledger.batch_status(con, "b1") == BatchStatus.RUNNING
    finish(con, "b1", i0="succeeded")
    ledger.set_paused(con, "b1", True)
    assert ledger.refresh_batch(con, "b1") == BatchStatus.PAUSED
    assert ledger.set_paused(con, "b1", False) == BatchStatus.RUNNING  # it processed items


def test_public_reads_are_the_dicts_of_the_typed_rows(con) -> None:  # noqa: ANN001
    add_batch(con)
    batch = ledger.load_batch(con, "b1")
    assert isinstance(batch, ledger.Batch) and batch.status is BatchStatus.QUEUED
    as_dict = ledger.get_batch(con, "b1")
    assert as_dict == batch.to_dict()
    assert type(as_dict["status"]) is str and as_dict["options"] == {"o": 1}
    assert list(as_dict)[:4] == ["batch_id", "operation", "name", "status"]
    assert ledger.list_batches(con) == [as_dict]
    items = ledger.get_items(con, "b1", status=["pending"])
    assert [i["item_id"] for i in items] == ["i0", "i1", "i2"]
    assert items[0]["payload"] == {"id": "i0"} and items[0]["result"] is None
    assert items == [i.to_dict() for i in ledger.load_items(con, "b1")]
    assert ledger.get_batch(con, "nope") is None and ledger.batch_status(con, "nope") is None


def test_batch_filter_is_checked_once_and_reads_its_iterables_again(con) -> None:  # noqa: ANN001
    add_batch(con, "b1")
    add_batch(con, "b2", status="failed")
    where = ledger.BatchFilter(status=(s for s in ["failed", "queued"]), operation=iter(["import"]))
    assert where.status == ("failed", "queued") and where.operation == ("import",)
    assert {b["batch_id"] for b in ledger.list_batches(con, where)} == {"b1", "b2"}
    assert len(ledger.list_batches(con, where)) == 2
    only_failed = ledger.BatchFilter(status=["failed"], limit=1)
    assert [b["batch_id"] for b in ledger.list_batches(con, only_failed)] == ["b2"]
    for bad, message in (
        ({"limit": 0}, "limit must be between 1 and 100"),
        ({"limit": 101}, "limit must be between 1 and 100"),
        ({"offset": -1}, "offset must be 0 or more"),
        ({"status": ["done"]}, "status 'done' is not one of"),
    ):
        with pytest.raises(ValueError, match=message):
            ledger.BatchFilter(**bad)


def test_submit_rollback_and_cleanup_deletes(con) -> None:  # noqa: ANN001
    add_batch(con, "b1")
    add_batch(con, "b2")
    add_batch(con, "b3")
    ledger.add_event(con, "b2", "x")
    ledger.delete_batch(con, "b1")
    assert ledger.known_batch_ids(con) == {"b2", "b3"}
    finish(con, "b2", i0="succeeded", i1="succeeded", i2="succeeded")
    ledger.refresh_batch(con, "b2")
    assert ledger.finished_among(con, ["b2", "b3"]) == ["b2"]
    assert ledger.statuses_of(con, ["b2", "b3", "b9"]) == {"b2": "completed", "b3": "queued"}
    # x, batch_progress at 25/50/75% and batch_completed
    assert ledger.row_counts(con, ["b2"]) == {("batch_events", "b2"): 5, ("batch_items", "b2"): 3}
    assert ledger.delete_finished_batches(con, ["b2", "b3"]) == ["b2"]
    assert ledger.known_batch_ids(con) == {"b3"}
    assert con.execute("select count(*) from batch_events where batch_id = 'b2'").fetchone() == (0,)
    assert ledger.count_active(con, ["import"]) == 1
    assert ledger.count_active(con, ["import"], exclude="b3") == 0


def test_migration_0010_flags_existing_batches_as_the_prefix_rule_did() -> None:
    c = duckdb.connect()
    for migration_id, statements in schema.all_migrations():
        if migration_id >= "0010":
            break
        for statement in statements:
            c.execute(statement)
    rows = [
        ("all", "failed", "all 3 items failed or were cancelled", False),
        ("budget", "failed", "error budget exceeded: 3 of 10 items failed", True),
        ("noerror", "failed", None, True),
        ("cancelled", "cancelled", "cancelled by me", True),
        ("done", "completed", None, False),
        ("running", "running", None, False),
    ]
    for batch_id, status, error, _ in rows:
        c.execute(
            "insert into batches (batch_id, operation, name, status, priority, total_items, "
            "created_at, error) values (?, 'import', 't', ?, 'normal', 3, now(), ?)",
            [batch_id, status, error],
        )
    c.execute("create table schema_migrations (id varchar primary key, applied_at timestamp)")
    for migration_id, _ in schema.all_migrations():
        if migration_id < "0010":
            c.execute("insert into schema_migrations (id) values (?)", [migration_id])
    # Later migrations follow it; this one is the first to run here.
    assert schema.migrate(c)[:1] == ["0010_batch_stopped"]
    got = dict(c.execute("select batch_id, stopped from batches").fetchall())
    assert got == {r[0]: r[3] for r in rows}
