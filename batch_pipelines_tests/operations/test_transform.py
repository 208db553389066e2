"""The transform operation and its registered transforms: SQL over the bound `source`,
chunked Python transforms that stream (several chunks, one consistent schema), dedupe_latest,
the atomic swap of the target (no half table, no leftover temp table), append re-runs that
replace their own rows, bad items failing alone with a clear error, and the CLI end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from batch_pipelines.core import warehouse
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.operations.transform import functions as transforms
from batch_pipelines.operations.transform import handler as transform_op
from batch_pipelines.operations.transform import models as transform_models
from batch_pipelines.operations.transform.functions import (
    NormalizeColumnsOptions,
    normalize_columns,
    normalized_names,
    register_transform,
    snake_case,
)
from batch_pipelines_tests.helpers import cli, handler_batch_id, item_context, run_batch, run_item

BATCH = handler_batch_id("transform")


def sql(env, statement: str) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute(statement)


def make_events(env) -> None:  # noqa: ANN001
    sql(
        env,
        """
        create or replace table events as
        select i as id, i % 7 as customer, 'v' || i as payload, i * 10 as version,
               case when i % 5 = 0 then '  ' else '  text ' || i || '  ' end as "Free Text",
               (i % 3)::varchar as "countOK"
        from range(1, 501) t(i)
        """,
    )


def handle_and_commit(env, item: dict, options: dict | None = None, item_id: str = "i1") -> dict:  # noqa: ANN001
    ctx = item_context(env, "transform", item, options, item_id=item_id)
    return run_item(env, "transform", ctx).metrics


def tables(env) -> set[str]:  # noqa: ANN001
    return {r[0] for r in env.sql("select table_name from duckdb_tables()")}


def test_snake_case_names() -> None:
    assert snake_case("Bill Length (mm)") == "bill_length_mm"
    assert snake_case("bodyMassG") == "body_mass_g"
    assert snake_case("HTTPStatusCode") == "http_status_code"
    assert snake_case("_batch_id") == "_batch_id"
    assert snake_case("2020 Sales") == "_2020_sales"
    assert snake_case("???") == "column"
    assert normalized_names(["A b", "a_b", "aB"]) == ["a_b", "a_b_2", "a_b_3"]


def test_normalize_columns_chunk() -> None:
    chunk = pa.RecordBatch.from_pydict(
        {"Species Name": [" Adelie ", "", None], "Year": ["2007", " 2008", None]}
    ).to_pandas(types_mapper=pd.ArrowDtype)
    out = normalize_columns(chunk, NormalizeColumnsOptions(casts={"year": "integer"}))
    assert list(out.columns) == ["species_name", "year"]
    assert out["species_name"].tolist() == ["Adelie", pd.NA, pd.NA]
    assert out["year"].tolist() == [2007, 2008, pd.NA]
    assert out["year"].dtype == pd.ArrowDtype(pa.int32())
    with pytest.raises(ValueError, match="cannot cast column 'species_name' to integer"):
        normalize_columns(chunk, NormalizeColumnsOptions(casts={"species_name": "integer"}))
    with pytest.raises(ValueError, match=r"casts: column\(s\) \['nope'\] not found"):
        normalize_columns(chunk, NormalizeColumnsOptions(casts={"nope": "date"}))


def test_models_name_the_field() -> None:
    with pytest.raises(ValidationError, match="exactly one of sql or transform"):
        transform_models.TransformItem.model_validate({"source": "a", "target": "b"})
    with pytest.raises(ValidationError, match="exactly one of sql or transform"):
        transform_models.TransformItem.model_validate(
            {"source": "a", "target": "b", "sql": "select 1", "transform": "dedupe_latest"}
        )
    with pytest.raises(ValidationError, match="target 'b c' is not a valid table name"):
        transform_models.TransformItem.model_validate({"source": "a", "target": "b c", "sql": "x"})
    with pytest.raises(ValidationError, match="apply to a registered transform only"):
        transform_models.TransformItem.model_validate(
            {"source": "a", "target": "b", "sql": "select 1", "transform_options": {"x": 1}}
        )


def test_sql_transform_reads_source_and_swaps_atomically(env) -> None:  # noqa: ANN001
    make_events(env)
    sql(env, "create table per_customer (old_column int)")
    metrics = handle_and_commit(
        env,
        {
            "source": "events",
            "target": "per_customer",
            "sql": "select customer, count(*) as n, max(version) as latest from source "
            "group by customer order by customer;",
        },
    )
    assert metrics["rows_in"] == 500 and metrics["rows_out"] == 7 and metrics["kind"] == "sql"
    assert env.sql("select count(*), sum(n) from per_customer") == [(7, 500)]
    assert [r[0] for r in env.sql("describe per_customer")] == ["customer", "n", "latest"]
    assert not [t for t in tables(env) if "__tmp_" in t]
    assert env.sql("select kind, rows_in, rows_out, mode from transforms") == [
        ("sql", 500, 7, "replace")
    ]
    assert not any((env.data / "staging" / BATCH).iterdir()), "staging cleaned up"


def test_chunked_python_transform_streams_with_one_schema(env) -> None:  # noqa: ANN001
    make_events(env)
    metrics = handle_and_commit(
        env,
        {
            "source": "events",
            "target": "events_clean",
            "transform": "normalize_columns",
            "transform_options": {"casts": {"count_ok": "integer"}},
        },
        {"chunk_rows": 100},
    )
    assert metrics["rows_in"] == metrics["rows_out"] == 500 and metrics["kind"] == "python"
    assert dict((r[0], r[1]) for r in env.sql("describe events_clean")) == {
        "id": "BIGINT",
        "customer": "BIGINT",
        "payload": "VARCHAR",
        "version": "BIGINT",
        "free_text": "VARCHAR",
        "count_ok": "INTEGER",
    }
    assert env.sql(
        "select count(*) filter (where free_text is null), min(free_text) from events_clean"
    ) == [(100, "text 1")]
    options = env.sql("select transform_options from transforms")[0][0]
    assert json.loads(options)["casts"] == {"count_ok": "integer"}


def test_custom_arrow_transform_and_chunk_count(env) -> None:  # noqa: ANN001
    make_events(env)
    seen: list[int] = []

    @register_transform("test_double_version", batch_format="arrow")
    def double_version(batch: pa.RecordBatch, options) -> pa.Table:  # noqa: ANN001
        seen.append(batch.num_rows)
        table = pa.Table.from_batches([batch]).select(["id", "version"])
        return table.set_column(1, "version", pa.compute.multiply(table["version"], 2))

    try:
        handle_and_commit(
            env,
            {"source": "events", "target": "doubled", "transform": "test_double_version"},
            {"chunk_rows": 128},
        )
    finally:
        transforms.TRANSFORMS.pop("test_double_version")
    assert len(seen) >= 4 and sum(seen) == 500 and max(seen) <= 128
    assert env.sql("select sum(version) from doubled") == [(2 * 10 * 500 * 501 // 2,)]


def test_dedupe_latest_and_empty_source(env) -> None:  # noqa: ANN001
    make_events(env)
    handle_and_commit(
        env,
        {
            "source": "events",
            "target": "latest",
            "transform": "dedupe_latest",
            "transform_options": {"key_columns": "customer", "order_by": ["version"]},
        },
    )
    assert env.sql("select customer, id from latest order by customer") == [
        (c, max(i for i in range(1, 501) if i % 7 == c)) for c in range(7)
    ]
    sql(env, "create table empty_events as select * from events limit 0")
    metrics = handle_and_commit(
        env,
        {"source": "empty_events", "target": "empty_clean", "transform": "normalize_columns"},
    )
    assert metrics["rows_out"] == 0
    assert "free_text" in [r[0] for r in env.sql("describe empty_clean")]


def test_append_rerun_replaces_its_own_rows(env) -> None:  # noqa: ANN001
    make_events(env)
    item = {"source": "events", "target": "log", "sql": "select id, customer from source"}
    for _ in range(2):
        handle_and_commit(env, item, {"mode": "append"}, item_id="a")
    handle_and_commit(env, item, {"mode": "append"}, item_id="b")
    assert env.sql("select _item_id, count(*) from log group by 1 order by 1") == [
        ("a", 500),
        ("b", 500),
    ]
    assert env.sql("select count(*) from transforms") == [(2,)]


def test_bad_items_fail_in_handler(env) -> None:  # noqa: ANN001
    make_events(env)
    sql(env, "create view events_view as select * from events")
    for item, problem in [
        (
            {"source": "evnts", "target": "x", "sql": "select * from source"},
            "source: table 'evnts'",
        ),
        ({"source": "events", "target": "x", "sql": "delete from events"}, "sql: query must be"),
        (
            {"source": "events", "target": "x", "sql": "select * from read_csv('/etc/passwd')"},
            "sql: query may not call table function",
        ),
        ({"source": "events", "target": "x", "sql": "select nope from source"}, "sql: Binder"),
        ({"source": "events", "target": "x", "transform": "nope"}, "unknown transform 'nope'"),
        (
            {"source": "events", "target": "x", "transform": "dedupe_latest"},
            "transform_options.key_columns: Field required",
        ),
        (
            {
                "source": "events",
                "target": "x",
                "transform": "dedupe_latest",
                "transform_options": {"key_columns": ["nope"], "order_by": "id"},
            },
            r"key_columns: column\(s\) \['nope'\] not in the source",
        ),
        (
            {
                "source": "events",
                "target": "x",
                "transform": "normalize_columns",
                "transform_options": {"casts": {"payload": "integer"}},
            },
            "cannot cast column 'payload' to integer",
        ),
    ]:
        with pytest.raises(ValidationItemError, match=problem):
            transform_op.handle_transform(item_context(env, "transform", item))
    assert "x" not in tables(env)
    with pytest.raises(ValidationItemError, match="is a view, not a table"):
        handle_and_commit(
            env, {"source": "events", "target": "events_view", "sql": "select 1 as a"}
        )


def test_batch_bad_items_fail_alone(env, instance) -> None:  # noqa: ANN001
    from dagster import AssetKey

    make_events(env)
    batch = run_batch(
        {
            "operation": "transform",
            "settings": {"max_retries": 0},
            "items": [
                {"source": "events", "target": "t_ok", "sql": "select * from source where id < 10"},
                {"source": "missing", "target": "t_missing", "sql": "select * from source"},
                {
                    "source": "events",
                    "target": "t_write",
                    "sql": "with d as (delete from events returning *) select * from d",
                },
                {"source": "events", "target": "t_clean", "transform": "normalize_columns"},
            ],
        },
        instance,
    )
    assert batch["status"] == "completed_with_errors"
    items = dict(env.sql("select item_id, coalesce(error, status) from batch_items"))
    assert items["t_ok"] == "succeeded" and items["t_clean"] == "succeeded"
    assert "table 'missing' does not exist" in items["t_missing"]
    assert re.search("contains DELETE|A CTE needs a SELECT", items["t_write"])
    assert env.sql("select count(*) from events") == [(500,)]
    assert {"t_ok", "t_clean"} <= tables(env) and "t_write" not in tables(env)
    keys = dict(env.sql("select item_id, partition_key from batch_items"))
    materialized = instance.get_materialized_partitions(AssetKey("transform_items"))
    assert {keys["t_ok"], keys["t_clean"]} <= materialized and keys["t_write"] not in materialized


@pytest.mark.e2e
def test_cli_transforms_imported_penguins(samples: Path, env, instance) -> None:  # noqa: ANN001
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "penguins"},
            "items_from": {"glob": "data/samples/penguins_20*.*"},
        },
        instance,
    )
    rows = env.sql("select count(*) from penguins")[0][0]
    manifest = env.root / "transform.json"
    manifest.write_text(
        json.dumps(
            {
                "operation": "transform",
                "items": [
                    {
                        "source": "penguins",
                        "target": "species_stats",
                        "sql": "select species, count(*) as n from source group by all",
                    },
                    {
                        "source": "penguins",
                        "target": "latest_per_island",
                        "transform": "dedupe_latest",
                        "transform_options": {"key_columns": ["island"], "order_by": "id"},
                    },
                ],
            }
        )
    )
    p = cli(env, "submit", str(manifest), "--wait", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["status"] == "completed"
    assert env.sql("select sum(n), count(*) from species_stats") == [(rows, 3)]
    assert env.sql("select count(*) from latest_per_island") == [(3,)]
    assert env.sql("select kind, rows_in from transforms order by kind") == [
        ("python", rows),
        ("sql", rows),
    ]
