"""The export operation and the read-only SQL check it relies on: every format written
atomically with the right rows, bytes and sha256; a query that writes, reads files or is not
one SELECT refused on the parse tree; a missing table or a clashing file name failing only
its own item; re-runs replacing their row; and the CLI end to end."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from batch_pipelines.core import warehouse
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.sqlcheck import ensure_predicate, ensure_read_only_select
from batch_pipelines.operations.export import handler as export_op
from batch_pipelines.operations.export import models as export_models
from batch_pipelines_tests.helpers import (
    cli,
    commit_item,
    handler_batch_id,
    item_context,
    run_batch,
)

# A write inside a CTE: DuckDB 1.5's parser refuses it, DuckDB 2 parses it and the check
# finds the DELETE node.
DML_IN_CTE = re.compile("contains DELETE|A CTE needs a SELECT")

BATCH = handler_batch_id("export")


def load_penguins(env, table: str = "penguins") -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            f"create or replace table {table} as select * from "
            f"read_csv('{env.data}/samples/penguins_2007.csv')"
        )


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("delete from penguins", "found a DELETE statement"),
        ("copy penguins to '/tmp/x.csv'", "found a COPY statement"),
        ("attach '/tmp/x.db' as x", "found a ATTACH statement"),
        ("create table x as select * from penguins", "found a CREATE statement"),
        ("select 1; select 2", "one statement, found 2"),
        ("select * from read_csv('/etc/passwd')", "table function(s): read_csv"),
        ("select * from penguins, glob('/etc/*')", "table function(s): glob"),
        ("select (select count(*) from read_text('/etc/passwd'))", "read_text"),
        ("select * from '/etc/passwd.csv'", "not files or URLs"),
        ('from "data/samples/penguins_2007.csv"', "not files or URLs"),
        ("summarize '/tmp/x.csv'", "not files or URLs"),
        ("with d as (delete from penguins returning *) select * from d", DML_IN_CTE),
        (
            "select * from penguins where id in (with u as (update penguins set id = 1 "
            "returning id) select id from u)",
            re.compile("contains UPDATE|A CTE needs a SELECT"),
        ),
        # One statement to DuckDB 2, several (the PIVOT's own) to DuckDB 1.5: refused either way.
        (
            "select * from (pivot penguins on species using count(*))",
            re.compile("found a MULTI|one statement, found"),
        ),
        ("", "non-empty"),
        ("selec 1", "does not parse"),
    ],
)
def test_read_only_select_refuses(query: str, problem: str | re.Pattern) -> None:
    with pytest.raises(
        ValueError, match=problem if isinstance(problem, re.Pattern) else re.escape(problem)
    ):
        ensure_read_only_select(query)


@pytest.mark.parametrize(
    "query",
    [
        "select * from penguins",
        "with a as (select 1 as x) select * from a union all select 2",
        "select * from range(3)",
        "values (1), (2)",
        "from penguins select species",
        "select 1; -- a comment after the terminator",
    ],
)
def test_read_only_select_accepts_and_returns_wrappable_text(query: str) -> None:
    text = ensure_read_only_select(query)
    con = duckdb.connect()
    con.execute("create table penguins (id int, species varchar)")
    con.execute(f"select count(*) from (\n{text})").fetchone()


def test_predicate_must_be_one_expression() -> None:
    assert ensure_predicate("a > 1 -- note") == "a > 1 -- note\n"
    for bad, problem in [
        ("1) union select (2", "not one SQL expression|does not parse"),
        ("delete from t", "not one SQL expression|does not parse"),
        ("a > 1; drop table t", "not one SQL expression|does not parse"),
        ("a > (select count(*) from read_csv('/etc/passwd'))", "read_csv"),
    ]:
        with pytest.raises(ValueError, match=problem):
            ensure_predicate(bad)


def test_models_name_the_field() -> None:
    with pytest.raises(ValidationError, match="exactly one of table or query"):
        export_models.ExportItem.model_validate({"table": "a", "query": "select 1"})
    with pytest.raises(ValidationError, match="exactly one of table or query"):
        export_models.ExportItem.model_validate({"id": "x"})
    with pytest.raises(ValidationError, match="not a valid table name"):
        export_models.ExportItem.model_validate({"table": "a; drop table b"})
    with pytest.raises(ValidationError, match="unknown placeholder"):
        export_models.ExportOptions.model_validate({"filename": "{path}.csv"})
    with pytest.raises(ValidationError, match="a file name, not a path"):
        export_models.ExportOptions.model_validate({"filename": "../x"})
    with pytest.raises(ValidationError, match="does not apply to csv"):
        export_models.ExportOptions.model_validate({"format": "csv", "compression": "snappy"})


@pytest.mark.parametrize(
    ("options", "name", "read"),
    [
        ({}, "i1.parquet", "read_parquet"),
        ({"format": "parquet", "compression": "zstd"}, "i1.parquet", "read_parquet"),
        ({"format": "csv"}, "i1.csv", "read_csv"),
        ({"format": "csv", "compression": "gzip"}, "i1.csv.gz", "read_csv"),
        ({"format": "json"}, "i1.json", "read_json"),
        ({"format": "ndjson"}, "i1.ndjson", "read_json"),
        (
            {"format": "csv", "filename": "{table}-{format}-{item_id}"},
            "penguins-csv-i1.csv",
            "read_csv",
        ),
    ],
)
def test_export_formats(samples: Path, env, options: dict, name: str, read: str) -> None:  # noqa: ANN001
    load_penguins(env)
    ctx = item_context(env, "export", {"table": "penguins"}, options)
    result = export_op.handle_export(ctx)
    final = env.data / "exports" / BATCH / name
    assert not final.exists(), "the file appears only with its commit"
    commit_item(env, ctx, result)
    assert final.is_file()
    assert [p.name for p in final.parent.iterdir()] == [name], "no temporary file left"
    con = duckdb.connect()
    assert con.execute(f"select count(*) from {read}('{final}')").fetchone() == (110,)
    row = env.sql("select rows, bytes, sha256, format, path, source_kind, columns from exports")
    assert row == [
        (
            110,
            final.stat().st_size,
            hashlib.sha256(final.read_bytes()).hexdigest(),
            options.get("format", "parquet"),
            str(final),
            "table",
            9,
        )
    ]
    if options.get("format") == "json":
        assert isinstance(json.loads(final.read_text()), list)
    if options.get("format") == "ndjson":
        assert len(final.read_text().splitlines()) == 110
    if options.get("compression") == "gzip":
        assert gzip.decompress(final.read_bytes()).startswith(b"id,species")


def test_query_export_and_rerun_replaces(samples: Path, env) -> None:  # noqa: ANN001
    load_penguins(env)
    item = {"query": "select species, count(*) as n from penguins group by all order by 1;"}
    for _ in range(2):
        ctx = item_context(env, "export", item, {"format": "csv"})
        result = export_op.handle_export(ctx)
        assert result.metrics["rows"] == 3 and result.metrics["columns"] == 2
        commit_item(env, ctx, result)
    assert env.sql("select count(*), min(rows), min(source_kind) from exports") == [(1, 3, "query")]
    text = (env.data / "exports" / BATCH / "i1.csv").read_text().splitlines()
    assert text[0] == "species,n" and len(text) == 4


def test_bad_queries_and_missing_table_fail_in_handler(samples: Path, env) -> None:  # noqa: ANN001
    load_penguins(env)
    for item, problem in [
        ({"table": "pengiuns"}, r"table 'pengiuns' does not exist in the warehouse \(did you mean"),
        ({"query": "delete from penguins"}, "query: query must be a read-only SELECT"),
        ({"query": "select * from nope"}, "query: Catalog Error"),
        ({"query": "select * from read_csv('/etc/passwd')"}, "may not call table function"),
    ]:
        with pytest.raises(ValidationItemError, match=problem):
            export_op.handle_export(item_context(env, "export", item))
    assert env.sql("select count(*) from penguins") == [(110,)]
    assert not any((env.data / "exports" / BATCH).iterdir())


def test_batch_bad_items_fail_alone_and_partitions_materialize(
    samples: Path, env, instance
) -> None:  # noqa: ANN001
    from dagster import AssetKey

    load_penguins(env)
    batch = run_batch(
        {
            "operation": "export",
            "options": {"format": "parquet"},
            "settings": {"chunk_size": 3, "max_retries": 0},
            "items": [
                {"id": "all", "table": "penguins"},
                {"id": "missing", "table": "no_such_table"},
                {
                    "id": "write",
                    "query": "with d as (delete from penguins returning *) select * from d",
                },
                {"id": "copy", "query": "copy penguins to '/tmp/stolen.csv'"},
                {"id": "file", "query": "select * from read_csv('/etc/passwd')"},
                {
                    "id": "by_species",
                    "query": "select species, count(*) n from penguins group by 1",
                },
                {"id": "clash", "table": "penguins", "filename": "all"},
            ],
        },
        instance,
    )
    assert batch["status"] == "completed_with_errors"
    items = dict(env.sql("select item_id, coalesce(error, status) from batch_items"))
    assert items["all"] == "succeeded" and items["by_species"] == "succeeded"
    assert "table 'no_such_table' does not exist" in items["missing"]
    assert DML_IN_CTE.search(items["write"])
    assert "found a COPY statement" in items["copy"]
    assert "table function(s): read_csv" in items["file"]
    assert "already used by item 'all'" in items["clash"]
    assert env.sql("select count(*) from penguins") == [(110,)]
    assert not Path("/tmp/stolen.csv").exists()
    folder = env.data / "exports" / batch["batch_id"]
    assert sorted(p.name for p in folder.iterdir()) == ["all.parquet", "by_species.parquet"]
    assert env.sql("select item_id, rows from exports order by 1") == [
        ("all", 110),
        ("by_species", 3),
    ]
    keys = dict(env.sql("select item_id, partition_key from batch_items"))
    materialized = instance.get_materialized_partitions(AssetKey("export_items"))
    assert {keys["all"], keys["by_species"]} <= materialized
    assert keys["missing"] not in materialized


@pytest.mark.e2e
def test_cli_exports_a_table(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "penguins"},
            "items_from": {"glob": "data/samples/penguins_20*.*"},
        },
        instance,
    )
    assert batch["succeeded_items"] >= 5
    rows = env.sql("select count(*) from penguins")[0][0]
    manifest = env.root / "export.yaml"
    manifest.write_text(
        "operation: export\n"
        "options: {format: csv}\n"
        "items:\n"
        "  - {id: penguins, table: penguins}\n"
        "  - {id: gentoo, query: \"select * from penguins where species = 'Gentoo'\", "
        "format: parquet}\n"
    )
    p = cli(env, "submit", str(manifest), "--wait", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["status"] == "completed" and out["succeeded_items"] == 2
    exported = dict(env.sql("select item_id, rows from exports"))
    gentoo = env.sql("select count(*) from penguins where species = 'Gentoo'")[0][0]
    assert exported == {"penguins": rows, "gentoo": gentoo}
    path = env.sql("select path from exports where item_id = 'penguins'")[0][0]
    assert duckdb.sql(f"select count(*) from read_csv('{path}')").fetchall() == [(rows,)]
