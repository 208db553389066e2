"""The direct load of import: the file read straight into the target table in the item's
commit, with its lineage, its rejects, re-runs that replace, failures that leave the table as
it was, and a file larger than the DuckDB memory limit."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from batch_pipelines_tests.helpers import run_batch


def _import(path: str, instance, **options) -> dict:  # noqa: ANN001, ANN003
    return run_batch(
        {
            "operation": "import",
            "options": {"target_table": "sales", **options},
            "settings": {"max_retries": 0},
            "items": [{"id": Path(path).stem, "path": path}],
        },
        instance,
    )


def test_direct_load_rows_lineage_and_rerun_replaces(env, instance) -> None:  # noqa: ANN001
    (env.data / "a.csv").write_text("id,amount\n1,1.5\n2,2.5\n3,3.5\n")
    first = _import("data/a.csv", instance)
    assert first["status"] == "completed", first
    assert env.sql("select id, amount, _batch_id, _item_id from sales order by id") == [
        (1, 1.5, first["batch_id"], "a"),
        (2, 2.5, first["batch_id"], "a"),
        (3, 3.5, first["batch_id"], "a"),
    ]
    ((load, rows, quality),) = env.sql(
        "select result->>'load', (result->>'rows')::int, quality_score from batch_items"
    )
    assert (load, rows, quality) == ("direct", 3, 1.0)
    assert env.sql("select rows, rejected_rows, columns, status from import_files") == [
        (3, 0, 2, "imported")
    ]

    # Re-running the item (as `dagster asset materialize --partition` does) replaces its rows.
    from batch_pipelines.definitions import defs

    (key,) = env.sql("select partition_key from batch_items")[0]
    result = defs.resolve_job_def("import_job").execute_in_process(
        instance=instance, partition_key=key
    )
    assert result.success
    assert env.sql("select count(*), count(distinct _batch_id) from sales") == [(3, 1)]
    assert env.sql("select attempts, status from batch_items") == [(2, "succeeded")]


def test_a_value_that_does_not_fit_the_table_is_a_reject_with_line_and_reason(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
) -> None:
    (env.data / "a.csv").write_text("id,amount\n1,1.5\n2,2.5\n")
    assert _import("data/a.csv", instance)["status"] == "completed"
    # "abc" parses as text on its own, but the table's amount is a DOUBLE.
    (env.data / "b.csv").write_text("id,amount\n10,1\n11,abc\n12,3\n13,4\n")
    second = _import("data/b.csv", instance)
    assert second["status"] == "completed", second
    assert env.sql("select id from sales where _item_id = 'b' order by id") == [(10,), (12,), (13,)]
    ((line, column, error, raw),) = env.sql(
        "select line, column_name, error, raw from import_rejects"
    )
    assert (line, column, raw) == (3, "amount", "11,abc")
    assert "abc" in error and "DOUBLE" in error
    assert env.sql(
        "select (result->>'rejected_rows')::int, quality_score from batch_items where batch_id = ?",
        [second["batch_id"]],
    ) == [(1, pytest.approx(3 / 4))]
    assert env.sql("select typeof(amount) from sales limit 1") == [("DOUBLE",)]


def test_a_direct_load_that_fails_in_its_commit_leaves_the_table(env, instance) -> None:  # noqa: ANN001
    (env.data / "a.csv").write_text("id,amount\n1,1.5\n2,2.5\n")
    assert _import("data/a.csv", instance)["status"] == "completed"
    (env.data / "b.csv").write_text("id,amount\n10,x\n11,y\n12,3\n")
    failed = _import("data/b.csv", instance, max_reject_ratio=0.5)
    assert failed["status"] == "failed"
    ((category, error),) = env.sql(
        "select error_category, error from batch_items where batch_id = ?", [failed["batch_id"]]
    )
    assert category == "validation"
    assert "2 of 3 rows rejected (67%), more than max_reject_ratio 50%" in error
    assert env.sql("select count(*) from sales") == [(2,)]
    assert env.sql(
        "select count(*) from import_files where batch_id = ?", [failed["batch_id"]]
    ) == [(0,)]
    assert env.sql("select count(*) from import_rejects") == [(0,)]


def test_a_file_changed_during_the_commit_read_fails_and_loads_nothing(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sha256 recorded must be the one of the rows loaded: a file appended to while the
    commit reads it loads nothing."""
    from batch_pipelines.operations.import_ import handler

    data = env.data / "a.csv"
    data.write_text("id,amount\n1,1.5\n2,2.5\n")
    real = handler.load_direct

    def load_then_append(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loaded = real(*args, **kwargs)
        with data.open("a") as fh:
            fh.write("3,3.5\n")
        return loaded

    monkeypatch.setattr(handler, "load_direct", load_then_append)
    batch = _import("data/a.csv", instance)
    assert batch["status"] == "failed"
    ((category, error),) = env.sql("select error_category, error from batch_items")
    assert category == "transient" and "a.csv changed while it was being read" in error
    tables = [r[0] for r in env.sql("select table_name from duckdb_tables()")]
    assert "sales" not in tables
    assert env.sql("select count(*) from import_files") == [(0,)]


def test_a_file_larger_than_the_duckdb_memory_limit_imports(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct load streams the file into the table: a CSV larger than the memory DuckDB
    may use (which it enforces: it fails rather than exceed it) still imports."""
    data = env.data / "big.csv"
    duckdb.connect().execute(
        "copy (select i as id, md5(i::varchar) as a, md5((i + 1)::varchar) as b, "
        f"i * 0.5 as amount from range(1400000) t(i)) to '{data}' (header)"
    )
    limit_mb = 100  # DuckDB's CSV reader alone takes ~30 MiB a thread
    assert data.stat().st_size > limit_mb * 2**20
    monkeypatch.setenv("BATCH_PIPELINES_DUCKDB_MEMORY", f"{limit_mb}MB")
    batch = _import("data/big.csv", instance)
    assert batch["status"] == "completed", env.sql("select error from batch_items")
    assert env.sql("select count(*), max(id) from sales") == [(1400000, 1399999)]
    assert env.sql("select result->>'load' from batch_items") == [("direct",)]


def test_an_ndjson_file_with_invalid_lines_is_staged_and_reports_them(env, instance) -> None:  # noqa: ANN001
    (env.data / "a.ndjson").write_text('{"id": 1, "v": "a"}\n{"id": 2\n\n{"id": 3, "v": "c"}\n')
    batch = _import("data/a.ndjson", instance)
    assert batch["status"] == "completed", batch
    # The invalid line is a reject only: no row of NULLs stands in for it in the table.
    assert env.sql("select id, v from sales order by id") == [(1, "a"), (3, "c")]
    assert env.sql(
        "select result->>'load', (result->>'rows')::int, (result->>'rejected_rows')::int, "
        "quality_score from batch_items"
    ) == [("staged", 2, 1, pytest.approx(2 / 3))]
    assert env.sql("select rows, rejected_rows from import_files") == [(2, 1)]
    ((line, raw),) = env.sql("select line, raw from import_rejects")
    assert (line, raw) == (2, '{"id": 2')

    # Appending to the table (parsed with its types) and upserting take the same path.
    (env.data / "b.ndjson").write_text('[1, 2]\n{"id": 4, "v": "d"}\nnope\n')
    assert _import("data/b.ndjson", instance)["status"] == "completed"
    (env.data / "c.ndjson").write_text('{"id": 3, "v": "C"}\n{"id": 5,\n')
    assert _import("data/c.ndjson", instance, mode="upsert", key_columns=["id"])["status"] == (
        "completed"
    )
    assert env.sql("select id, v from sales order by id") == [(1, "a"), (3, "C"), (4, "d")]
    assert sorted(env.sql("select line, raw from import_rejects")) == [
        (1, "[1, 2]"),
        (2, '{"id": 2'),
        (2, '{"id": 5,'),
        (3, "nope"),
    ]


def test_an_ndjson_file_of_only_invalid_lines_fails_and_writes_nothing(env, instance) -> None:  # noqa: ANN001
    (env.data / "a.ndjson").write_text("nope\n{oops\n")
    batch = _import("data/a.ndjson", instance)
    assert batch["status"] == "failed"
    ((category, error),) = env.sql("select error_category, error from batch_items")
    assert category == "validation" and "all 2 rows were rejected" in error
    tables = [r[0] for r in env.sql("select table_name from duckdb_tables()")]
    assert "sales" not in tables


def test_a_json_array_with_an_invalid_element_fails_and_writes_nothing(env, instance) -> None:  # noqa: ANN001
    (env.data / "a.json").write_text('[{"id": 1}, {"id": 2]')
    (env.data / "good.json").write_text('[{"id": 1}, {"id": 2}]')
    assert _import("data/good.json", instance)["status"] == "completed"
    for load in ("auto", "staged"):
        batch = _import("data/a.json", instance, load=load)
        assert batch["status"] == "failed", load
        (error,) = env.sql("select error from batch_items where batch_id = ?", [batch["batch_id"]])[
            0
        ]
        assert "cannot parse a.json as json" in error
    assert env.sql("select id from sales order by id") == [(1,), (2,)]
