"""The validate operation: every rule type passing and failing with the right failing-row
counts and samples, the weighted quality score, files as well as tables, bad rules (invalid
regex, a statement as predicate, a missing column, a path outside the roots) failing only
their own item, fail_item_on_rule_failure, re-runs replacing results, the partitioned
`rules_passed` asset check per item, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from batch_pipelines.core import warehouse
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.operations.validate import handler as validate_op
from batch_pipelines_tests.helpers import cli, item_context, run_batch, run_item


def make_people(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            """
            create or replace table people as select * from (values
                (1, 'ann@example.org', 34, 'nl', 'Ann Lee'),
                (2, 'bob@example', 17, 'de', 'Bob'),
                (3, null, 250, 'xx', 'Cy'),
                (3, 'dee@example.org', 41, 'nl', null),
                (5, 'eve@example.org', null, 'fr', 'Eve')
            ) t(id, email, age, country, "Full Name")
            """
        )


def handle_and_commit(env, item: dict, options: dict | None = None):  # noqa: ANN001, ANN201
    return run_item(env, "validate", item_context(env, "validate", item, options, item_id="i1"))


RULES = [
    {"type": "not_null", "column": "email"},
    {"type": "not_null", "column": "id", "name": "id present"},
    {"type": "unique", "columns": "id", "weight": 2},
    {"type": "range", "column": "age", "min": 18, "max": 120, "severity": "warn"},
    {"type": "regex", "column": "email", "pattern": r"^[^@]+@[^@]+\.[a-z]+$"},
    {"type": "accepted_values", "column": "country", "values": ["nl", "de", "fr"]},
    {"type": "row_count", "min": 1, "max": 10},
    {"type": "column_types", "columns": {"id": "int", "age": "integer", "email": "text"}},
    {"type": "column_types", "columns": {"id": "bigint", "missing": "varchar"}, "name": "types2"},
    {"type": "sql_predicate", "predicate": 'length("Full Name") > 2'},
    {"type": "not_null", "column": "Full Name"},
]


def test_every_rule_type_on_a_table(env) -> None:  # noqa: ANN001
    make_people(env)
    result = handle_and_commit(env, {"table": "people", "rules": RULES}, {"sample_size": 2})
    rows = env.sql(
        "select rule_index, rule_name, rule_type, column_name, passed, failing_rows, total_rows, "
        "weight, severity, json_array_length(sample), detail "
        "from validation_results order by rule_index"
    )
    got = {r[1]: r for r in rows}
    assert got["not_null(email)"][4:6] == (False, 1)
    assert got["id present"][4:6] == (True, 0)
    assert got["unique(id)"][4:8] == (False, 2, 5, 2.0)
    assert got["unique(id)"][10] == "1 duplicated key(s) over 2 rows"
    assert got["range(age)"][4:6] == (False, 2) and got["range(age)"][8] == "warn"
    assert got["regex(email)"][4:6] == (False, 1)
    assert got["accepted_values(country)"][4:6] == (False, 1)
    assert got["row_count"][4] is True and got["row_count"][5] is None
    assert got["column_types"][4] is True
    assert got["types2"][4] is False and "id: INTEGER, expected BIGINT" in got["types2"][10]
    assert "missing: missing" in got["types2"][10]
    assert got["sql_predicate"][4:6] == (False, 1), "NULL names are not counted"
    assert got["not_null(Full Name)"][4:6] == (False, 1)
    assert all(r[6] == 5 for r in rows)
    assert max(r[9] for r in rows) == 2, "sample_size caps the sample"
    sample = json.loads(
        env.sql("select sample from validation_results where rule_name = 'unique(id)'")[0][0]
    )
    assert sample == [{"id": 3, "occurrences": 2}]
    sample = json.loads(
        env.sql("select sample from validation_results where rule_name = 'regex(email)'")[0][0]
    )
    assert sample[0]["email"] == "bob@example"
    # weights: 12 in total (unique counts 2); passed: id present, row_count, column_types = 3
    assert result.quality_score == pytest.approx(3 / 12)
    assert result.metrics["rules"] == 11 and result.metrics["rules_failed"] == 8
    check = validate_op.rules_check(result.metrics)
    assert check is not None and not check.passed and check.severity == "error"
    assert check.metadata["rules_failed"] == 8 and len(check.metadata["rules"]) == 11

    # Re-running replaces the item's rows.
    handle_and_commit(env, {"table": "people", "rules": RULES[:2]})
    assert env.sql("select count(*) from validation_results") == [(2,)]


def test_only_warn_failures_give_a_warn_check(env) -> None:  # noqa: ANN001
    make_people(env)
    result = handle_and_commit(
        env,
        {
            "table": "people",
            "rules": [{"type": "range", "column": "age", "max": 100, "severity": "warn"}],
        },
        {"rules": [{"type": "row_count", "min": 5}]},
    )
    check = validate_op.rules_check(result.metrics)
    assert check is not None and not check.passed and check.severity == "warn"
    assert result.quality_score == pytest.approx(0.5)


def test_file_sources(samples: Path, env) -> None:  # noqa: ANN001
    rules = [
        {"type": "unique", "columns": ["id"]},
        {"type": "accepted_values", "column": "species", "values": ["Adelie", "Gentoo"]},
        {"type": "column_types", "columns": {"year": "bigint"}},
    ]
    for path, rows in [
        ("data/samples/penguins_2007.csv", 110),
        ("data/samples/penguins_2008.tsv", 114),
        ("data/samples/penguins_2009.json", 120),
        ("data/samples/penguins_2010.ndjson", 90),
        ("data/samples/penguins_2011.parquet", 100),
    ]:
        result = validate_op.handle_validate(
            item_context(env, "validate", {"path": path, "rules": rules})
        )
        assert result.metrics["total_rows"] == rows, path
        summaries = {s["rule"]: s for s in result.metrics["rule_results"]}
        assert summaries["unique(id)"]["passed"] and summaries["column_types"]["passed"]
        assert not summaries["accepted_values(species)"]["passed"]  # Chinstrap


def test_bad_rules_and_sources_fail_the_item(samples: Path, env, tmp_path: Path) -> None:  # noqa: ANN001
    make_people(env)
    outside = tmp_path.parent / "outside.csv"
    outside.write_text("a\n1\n")
    cases = [
        (
            {"type": "regex", "column": "email", "pattern": "(unclosed"},
            r"invalid regex '\(unclosed'",
        ),
        ({"type": "regex", "column": "email", "pattern": "(?=x)"}, "not supported by DuckDB"),
        # DuckDB 1.5 refuses these in its parser; later versions parse them, and the check says
        # they are not one expression.
        (
            {"type": "sql_predicate", "predicate": "1; drop table people"},
            "not one SQL expression|does not parse",
        ),
        (
            {"type": "sql_predicate", "predicate": "delete from people"},
            "not one SQL expression|does not parse",
        ),
        (
            {
                "type": "sql_predicate",
                "predicate": "(select count(*) from read_csv('/etc/passwd')) > 0",
            },
            "may not call table function",
        ),
        ({"type": "sql_predicate", "predicate": "nope > 1"}, "cannot run on this data"),
        ({"type": "not_null", "column": "nope"}, r"column\(s\) \['nope'\] not found"),
        ({"type": "column_types", "columns": {"id": "notatype"}}, "unknown DuckDB type"),
        ({"type": "range", "column": "email", "min": 1}, "cannot run on this data"),
    ]
    for rule, problem in cases:
        with pytest.raises(ValidationItemError, match=problem):
            validate_op.handle_validate(
                item_context(env, "validate", {"table": "people", "rules": [rule]})
            )
    for item, problem in [
        ({"table": "peple", "rules": RULES[:1]}, "table 'peple' does not exist"),
        ({"path": str(outside), "rules": RULES[:1]}, "outside the allowed roots"),
        ({"path": "data/samples/../../../outside.csv", "rules": RULES[:1]}, "outside the allowed"),
        ({"path": "data/samples/bad/empty.csv", "rules": RULES[:1]}, "empty"),
        ({"path": "data/samples/bad/truncated.json", "rules": RULES[:1]}, "cannot read"),
        ({"table": "people"}, "this item has no rules"),
    ]:
        with pytest.raises(ValidationItemError, match=problem):
            validate_op.handle_validate(item_context(env, "validate", item))
    assert env.sql("select count(*) from people") == [(5,)]


def test_models_name_the_field() -> None:
    with pytest.raises(ValidationError, match="exactly one of table or path"):
        validate_op.ValidateItem.model_validate({"rules": []})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        validate_op.ValidateItem.model_validate({"table": "t", "rules": [{"type": "nope"}]})
    with pytest.raises(ValidationError, match="give min, max or both"):
        validate_op.ValidateItem.model_validate(
            {"table": "t", "rules": [{"type": "range", "column": "a"}]}
        )
    with pytest.raises(ValidationError, match="min \\(5\\) is greater than max \\(1\\)"):
        validate_op.ValidateOptions.model_validate(
            {"rules": [{"type": "row_count", "min": 5, "max": 1}]}
        )
    with pytest.raises(ValidationError, match="not a DuckDB type name"):
        validate_op.ValidateOptions.model_validate(
            {"rules": [{"type": "column_types", "columns": {"a": "int); drop table x; --"}}]}
        )


def test_batch_checks_per_partition_and_fail_on_rule_failure(env, instance) -> None:  # noqa: ANN001
    from dagster import AssetCheckKey, AssetKey

    make_people(env)
    batch = run_batch(
        {
            "operation": "validate",
            "options": {"rules": [{"type": "row_count", "min": 1}]},
            "settings": {"max_retries": 0, "chunk_size": 2},
            "items": [
                {"id": "clean", "table": "people", "rules": [{"type": "not_null", "column": "id"}]},
                {"id": "dirty", "table": "people", "rules": RULES},
                {
                    "id": "bad_regex",
                    "table": "people",
                    "rules": [{"type": "regex", "column": "email", "pattern": "[a-"}],
                },
                {"id": "missing", "table": "nobody", "rules": []},
            ],
        },
        instance,
    )
    assert batch["status"] == "completed_with_errors"
    items = {
        r[0]: r[1:]
        for r in env.sql("select item_id, status, quality_score, error from batch_items")
    }
    assert items["clean"][:2] == ("succeeded", 1.0)
    assert items["dirty"][0] == "succeeded" and items["dirty"][1] < 0.5
    assert items["bad_regex"][0] == "failed" and "invalid regex '[a-'" in items["bad_regex"][2]
    assert (
        items["missing"][0] == "failed" and "table 'nobody' does not exist" in items["missing"][2]
    )
    assert env.sql("select count(distinct item_id) from validation_results") == [(2,)]

    keys = dict(env.sql("select item_id, partition_key from batch_items"))
    records = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("validate_items"), "rules_passed"), limit=20
    )
    status = {r.partition: r.status.value for r in records}
    assert status[keys["clean"]] == "SUCCEEDED"
    assert status[keys["dirty"]] == "FAILED"
    assert status.get(keys["bad_regex"]) != "SUCCEEDED"
    evaluation = next(
        r.event.asset_check_evaluation for r in records if r.partition == keys["dirty"]
    )
    assert evaluation.metadata["rules_failed"].value == 8
    assert len(evaluation.metadata["rules"].value) == 12

    strict = run_batch(
        {
            "operation": "validate",
            "options": {"fail_item_on_rule_failure": True},
            "settings": {"max_retries": 0},
            "items": [{"id": "dirty", "table": "people", "rules": RULES[:3]}],
        },
        instance,
    )
    assert strict["status"] == "failed"
    error = env.sql("select error from batch_items where batch_id = ?", [strict["batch_id"]])[0][0]
    assert error.startswith("2 of 3 rule(s) failed: not_null(email): 1 of 5 rows are NULL")


@pytest.mark.e2e
def test_cli_validates_imported_penguins(samples: Path, env, instance) -> None:  # noqa: ANN001
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "penguins"},
            "items_from": {"glob": "data/samples/penguins_20*.*"},
        },
        instance,
    )
    manifest = env.root / "validate.yaml"
    manifest.write_text(
        "operation: validate\n"
        "options:\n"
        "  rules:\n"
        "    - {type: not_null, column: species}\n"
        "    - {type: unique, columns: [id]}\n"
        "items:\n"
        "  - id: penguins\n"
        "    table: penguins\n"
        "    rules:\n"
        "      - {type: range, column: body_mass_g, min: 2500, max: 5000, weight: 2}\n"
        "      - {type: regex, column: sex, pattern: '^(male|female)$'}\n"
        "  - {id: sample_file, path: data/samples/penguins_2011.parquet}\n"
    )
    p = cli(env, "submit", str(manifest), "--wait", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["status"] == "completed"
    scores = dict(env.sql("select item_id, quality_score from batch_items"))
    assert scores["sample_file"] == 1.0
    assert scores["penguins"] == pytest.approx(3 / 5), "range (weight 2) fails: Gentoos > 5000 g"
    assert env.sql(
        "select count(*), count(*) filter (where not passed) from validation_results"
    ) == [(6, 1)]
