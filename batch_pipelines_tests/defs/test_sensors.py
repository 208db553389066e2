"""The inbox sensor (registers manifests, moves files, explains rejections, never registers
a file twice) and the dispatcher (one run request per chunk over its key range, priority
order, pause, per-batch concurrency, no double launch)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dagster import RunRequest, SensorResult, SkipReason, build_sensor_context

from batch_pipelines.app.dispatch import (
    RANGE_END,
    RANGE_START,
    ChunkState,
    RunState,
    plan_launches,
)
from batch_pipelines.app.inbox import InboxFile, pick_manifests
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.defs.sensors import batch_dispatcher, inbox_sensor


def write_old(path: Path, text: str) -> None:
    path.write_text(text)
    old = time.time() - 10
    os.utime(path, (old, old))


def test_pick_manifests_is_pure_and_ordered() -> None:
    now = 1000.0
    files = [
        InboxFile(Path("b.yaml"), 10, 1),
        InboxFile(Path("a.json"), 5, 1),
        InboxFile(Path(".hidden.yaml"), 1, 1),
        InboxFile(Path("notes.txt"), 1, 1),
        InboxFile(Path("fresh.yml"), 999.8, 1),
        InboxFile(Path("c.YML"), 7, 1),
    ]
    assert [f.path.name for f in pick_manifests(files, now)] == ["a.json", "c.YML", "b.yaml"]
    assert len(pick_manifests(files, now, limit=1)) == 1


def test_inbox_sensor_registers_and_rejects(samples: Path, env, instance) -> None:  # noqa: ANN001
    inbox = env.data / "inbox"
    write_old(
        inbox / "good.yaml",
        "operation: import\nname: from inbox\n"
        "options: {target_table: t}\nitems:\n  - data/samples/penguins_2007.csv\n",
    )
    write_old(
        inbox / "bad.json",
        json.dumps({"operation": "import", "options": {}, "items": [{"path": "/etc/passwd"}]}),
    )
    write_old(inbox / "broken.yaml", "operation: [unclosed")
    (inbox / "README.txt").write_text("not a manifest")
    context = build_sensor_context(instance=instance)
    result = inbox_sensor(context)
    assert isinstance(result, SkipReason)
    assert "registered 1 batch" in result.skip_message
    processed = list((inbox / "processed").iterdir())
    assert len(processed) == 1 and processed[0].name.endswith("__good.yaml")
    batch_id = processed[0].name.split("__")[0]
    assert env.sql("select name, source, status from batches") == [
        ("from inbox", "inbox", "queued")
    ]
    assert env.sql("select batch_id from batches")[0][0] == batch_id
    rejected = sorted(p.name for p in (inbox / "rejected").iterdir())
    assert rejected == ["bad.json", "bad.json.error.json", "broken.yaml", "broken.yaml.error.json"]
    err = json.loads((inbox / "rejected" / "bad.json.error.json").read_text())
    assert {p["field"] for p in err["problems"]} == {"options.target_table", "items[0].path"}
    err = json.loads((inbox / "rejected" / "broken.yaml.error.json").read_text())
    assert "not valid YAML" in err["problems"][0]["message"]
    assert (inbox / "README.txt").exists()
    # Nothing left to do on the next tick.
    assert (
        "no manifest waiting" in inbox_sensor(build_sensor_context(instance=instance)).skip_message
    )


def test_inbox_is_idempotent_after_a_crash(samples: Path, env, instance) -> None:  # noqa: ANN001
    """A tick that registered a batch but died before moving the file must not register it
    again on the next tick."""
    from batch_pipelines.app import inbox as inbox_mod

    path = env.data / "inbox" / "m.yaml"
    write_old(
        path,
        "operation: import\noptions: {target_table: t}\n"
        "items:\n  - data/samples/penguins_2007.csv\n",
    )
    f = inbox_mod.list_inbox(env.data / "inbox")[0]
    key = inbox_mod.idempotency_key(f, path.read_bytes())
    first = submit_batch(path, instance=instance, source="inbox", idempotency_key=key)
    inbox_sensor(build_sensor_context(instance=instance))
    assert env.sql("select count(*) from batches") == [(1,)]
    assert (env.data / "inbox" / "processed" / f"{first}__m.yaml").exists()


def chunk(
    batch: str,
    n: int,
    priority: str = "normal",
    pending: int = 5,
    max_concurrency: int | None = None,
) -> ChunkState:
    return ChunkState(
        batch,
        "import",
        priority,
        n,
        f"{batch}~k{n}a",
        f"{batch}~k{n}z",
        pending,
        max_concurrency,
        60.0,
        5,
    )


def test_plan_launches_priority_concurrency_and_no_double_launch() -> None:
    chunks = [
        chunk("b-low", 0, "low"),
        chunk("b-low", 1, "low"),
        chunk("b-crit", 0, "critical"),
        chunk("b-crit", 1, "critical"),
        chunk("b-lim", 0, max_concurrency=1),
        chunk("b-lim", 1, max_concurrency=1),
        chunk("b-done", 0, pending=0),
    ]
    runs = [RunState("b-low", 0, "STARTED")]
    launches = plan_launches(chunks, runs)
    assert [(x.batch_id, x.chunk_no) for x in launches] == [
        ("b-crit", 0),
        ("b-crit", 1),
        ("b-lim", 0),
        ("b-low", 1),
    ]
    crit = launches[0]
    assert crit.tags["dagster/priority"] == "20" and crit.tags["batch/priority"] == "critical"
    assert crit.tags[RANGE_START] == "b-crit~k0a" and crit.tags[RANGE_END] == "b-crit~k0z"
    assert crit.run_key == "b-crit:0:0" and crit.job_name == "import_job"
    assert int(crit.tags["dagster/max_runtime"]) >= 60 * 5
    # A chunk whose run failed before touching its items is relaunched with a new key, but
    # only up to three times; retries made by Dagster do not count as launches.
    failed = [RunState("b-low", 1, "FAILURE"), RunState("b-low", 1, "FAILURE", is_retry=True)]
    again = plan_launches([chunk("b-low", 1, "low")], failed)
    assert [x.run_key for x in again] == ["b-low:1:1"]
    gave_up = [RunState("b-low", 1, "FAILURE")] * 3
    assert plan_launches([chunk("b-low", 1, "low")], gave_up) == []
    assert len(plan_launches(chunks, [], max_launches=2)) == 2


def test_dispatcher_sensor_against_the_ledger(samples: Path, env, instance) -> None:  # noqa: ANN001
    empty = batch_dispatcher(build_sensor_context(instance=instance))
    assert isinstance(empty, SkipReason)
    low = submit_batch(
        {
            "operation": "import",
            "priority": "low",
            "options": {"target_table": "t"},
            "settings": {"chunk_size": 2},
            "items_from": {"glob": "data/samples/penguins_*"},
        },
        instance=instance,
    )
    high = submit_batch(
        {
            "operation": "import",
            "priority": "high",
            "options": {"target_table": "u"},
            "settings": {"chunk_size": 10},
            "items_from": {"glob": "data/samples/penguins_*"},
        },
        instance=instance,
    )
    paused = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "v"},
            "items_from": {"glob": "data/samples/penguins_*"},
        },
        instance=instance,
    )
    with warehouse.connect() as con:
        con.execute("update batches set paused = true where batch_id = ?", [paused])
    result = batch_dispatcher(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    requests: list[RunRequest] = result.run_requests
    assert [(r.tags["batch/id"], r.tags["batch/chunk"]) for r in requests] == [
        (high, "0"),
        (low, "0"),
        (low, "1"),
        (low, "2"),
    ]
    keys = [
        k
        for (k,) in env.sql(
            "select partition_key from batch_items where batch_id = ? order by seq", [low]
        )
    ]
    assert requests[1].tags[RANGE_START] == keys[0] and requests[1].tags[RANGE_END] == keys[1]
    assert requests[3].tags[RANGE_START] == keys[4] and requests[3].tags[RANGE_END] == keys[5]
    assert all(r.job_name == "import_job" for r in requests)
    assert len({r.run_key for r in requests}) == 4
    # The worker's console stays at INFO: at DEBUG it printed one line per item's event.
    assert all(
        r.run_config["loggers"]["console"]["config"]["log_level"] == "INFO" for r in requests
    )
    with warehouse.connect() as con:
        ledger.set_batch_status(con, low, "cancelled")
    result = batch_dispatcher(build_sensor_context(instance=instance))
    assert [r.tags["batch/id"] for r in result.run_requests] == [high]
