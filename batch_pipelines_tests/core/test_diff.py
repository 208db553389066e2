"""``diff`` compares two batches of one operation: items only in one, results changed field by
field, quality and duration deltas, error categories that appeared or vanished; through the
Python API, the CLI (tables, ``--json``, exit 2 on bad input) and the ``batch_diff_report``
asset (``batch_diffs`` rows and Markdown). ``batches.template`` is set with a plain SQL
UPDATE here: ``submit --template`` fills it elsewhere."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from dagster import materialize

from batch_pipelines import DiffError, diff_batches
from batch_pipelines.cli.main import main
from batch_pipelines.core import warehouse
from batch_pipelines.defs.analytics_assets import batch_diff_report
from batch_pipelines.defs.resources import WarehouseResource
from batch_pipelines_tests.helpers import cli, run_batch

TOP_KEYS = {
    "operation", "a", "b", "items", "changed_fields", "changed", "only_in_a", "only_in_b",
    "quality", "duration_ms", "error_categories", "limit",
}  # fmt: skip


def _annotate(items: list[dict[str, Any]], instance: Any) -> str:  # noqa: ANN401
    manifest = {"operation": "annotate", "settings": {"max_retries": 0}, "items": items}
    return run_batch(manifest, instance)["batch_id"]


@pytest.fixture
def two_runs(env, instance) -> tuple[str, str]:  # noqa: ANN001
    """Two real annotate batches of template ``nightly``: one item the same, one with a new
    text, one gone, one new, one that succeeded and now fails."""
    (env.data / "empty.txt").write_text("")  # exists at submit, fails when read: no text
    same = {"id": "same", "text": "The cat sat on the mat and looked at the garden."}
    a = _annotate(
        [
            same,
            {"id": "changed", "text": "Stock markets rallied as investors cheered bank profits."},
            {"id": "gone", "text": "An item of the first run only."},
            {"id": "flaky", "text": "This one works the first time."},
        ],
        instance,
    )
    b = _annotate(
        [
            same,
            {"id": "changed", "text": "The football team won the championship final at home."},
            {"id": "new", "text": "An item of the second run only."},
            {"id": "flaky", "path": "data/empty.txt"},
        ],
        instance,
    )
    with warehouse.connect() as con:
        con.execute("update batches set template = 'nightly' where batch_id in (?, ?)", [a, b])
    return a, b


def test_diff_of_two_annotate_runs_api_cli_and_asset(two_runs, instance) -> None:  # noqa: ANN001
    a, b = two_runs
    d = diff_batches(a, b)
    assert set(d) == TOP_KEYS
    assert d["operation"] == "annotate"
    assert d["items"] == {
        "a": 4, "b": 4, "only_in_a": 1, "only_in_b": 1, "in_both": 3, "changed": 2,
        "unchanged": 1,
    }  # fmt: skip
    assert [o["item_id"] for o in d["only_in_a"]] == ["gone"]
    assert [o["item_id"] for o in d["only_in_b"]] == ["new"]
    changed = {
        c["item_id"]: {f["field"]: (f["a"], f["b"]) for f in c["fields"]} for c in d["changed"]
    }
    assert set(changed) == {"changed", "flaky"}
    assert "text_sha256" in changed["changed"] and "status" not in changed["changed"]
    assert changed["flaky"]["status"] == ("succeeded", "failed")
    category = changed["flaky"]["error_category"][1]
    assert changed["flaky"]["error_category"][0] is None and category
    # The failed item has no annotation: only its ledger fields are compared.
    assert set(changed["flaky"]) == {"status", "error_category", "quality_score"}
    assert {f["field"]: f["items"] for f in d["changed_fields"]}["status"] == 1
    assert d["error_categories"] == [
        {"error_category": category, "a": 0, "b": 1, "delta": 1, "change": "appeared"}
    ]
    assert d["duration_ms"]["a"]["p50"] is not None
    assert d["quality"]["delta"]["p50"] == pytest.approx(
        d["quality"]["b"]["p50"] - d["quality"]["a"]["p50"], abs=1e-3
    )
    # Reversed, what appeared has vanished.
    assert diff_batches(b, a)["error_categories"][0]["change"] == "vanished"

    runner = CliRunner()
    out = runner.invoke(main, ["diff", a, b, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["items"] == d["items"]
    out = runner.invoke(main, ["diff", a, b], terminal_width=200)
    assert out.exit_code == 0, out.output
    for text in ("changed fields", "text_sha256", "flaky", "only in A", "gone", "appeared"):
        assert text in out.output

    resources = {"warehouse": WarehouseResource()}
    computed = []
    for _ in range(2):  # the second run finds the pair's diff up to date: no new row
        result = materialize([batch_diff_report], instance=instance, resources=resources)
        assert result.success
        with warehouse.connect(read_only=True) as con:
            computed += con.execute("select computed_at from batch_diffs").fetchall()
    assert len(computed) == 2 and computed[0] == computed[1]
    (meta,) = [m.metadata for m in result.asset_materializations_for_node("batch_diff_report")]
    assert meta["dagster/row_count"].value == 1
    assert "Template `nightly`" in meta["preview"].value and "text_sha256" in meta["preview"].value
    with warehouse.connect(read_only=True) as con:
        rows = con.execute(
            "select template, batch_a, batch_b, only_in_a, changed, errors_appeared, "
            "diff->>'operation' from batch_diffs"
        ).fetchall()
    assert rows == [("nightly", a, b, 1, 2, 1, "annotate")]

    # The launchpad's config: two given batches, recorded without a template.
    config = {"ops": {"batch_diff_report": {"config": {"batch_a": b, "batch_b": a}}}}
    result = materialize(
        [batch_diff_report], instance=instance, resources=resources, run_config=config
    )
    assert result.success
    with warehouse.connect(read_only=True) as con:
        assert con.execute(
            "select count(*) from batch_diffs where template is null and batch_a = ?", [b]
        ).fetchone() == (1,)


def _hand_made(con, batch_id: str, operation: str, n: int, flip: int) -> None:  # noqa: ANN001
    """A finished batch of ``n`` items straight in the ledger; its items below ``flip`` get
    other figures (slower, lower quality, a failed rule, another file)."""
    con.execute(
        "insert into batches (batch_id, operation, name, status, priority, total_items, "
        "created_at) values (?, ?, 't', 'completed', 'normal', ?, now())",
        [batch_id, operation, n],
    )
    changed = f"(i < {int(flip)})::int"
    con.execute(
        "insert into batch_items (batch_id, item_id, seq, chunk_no, partition_key, status, "
        "duration_ms, quality_score) select ?, 'item' || i, i, 0, ? || i, 'succeeded', "
        f"10 + i % 7 + 5 * ({changed}), 0.9 - 0.5 * ({changed}) from range(?) t(i)",
        [batch_id, batch_id, n],
    )
    if operation == "validate":
        con.execute(
            "insert into validation_results (batch_id, item_id, rule_index, rule_name, "
            "rule_type, source, passed, severity, failing_rows, total_rows, weight, checked_at) "
            f"select ?, 'item' || i, 0, 'not_null_id', 'not_null', 's', ({changed}) = 0, "
            f"'error', 3 * ({changed}), 10, 1, now() from range(?) t(i)",
            [batch_id, n],
        )
    else:
        con.execute(
            "insert into import_files (batch_id, item_id, path, target_table, mode, status, "
            "rows, sha256) select ?, 'item' || i, 'p', 't', 'append', 'imported', "
            f"100 + ({changed}), 'sha' || ({changed}) from range(?) t(i)",
            [batch_id, n],
        )


@pytest.mark.parametrize(
    ("operation", "field"), [("validate", "rule not_null_id"), ("import", "sha256")]
)
def test_diff_is_set_wise_over_many_items(env, operation: str, field: str) -> None:  # noqa: ANN001
    a, b = f"{operation}-a", f"{operation}-b"
    with warehouse.connect() as con:
        _hand_made(con, a, operation, 5_000, 0)
        _hand_made(con, b, operation, 5_000, 1_234)
    d = diff_batches(a, b, limit=3)
    assert d["items"]["changed"] == 1_234 and d["items"]["unchanged"] == 5_000 - 1_234
    assert len(d["changed"]) == 3 and d["limit"] == 3
    fields = {f["field"]: f["items"] for f in d["changed_fields"]}
    assert fields[field] == 1_234 and fields["quality_score"] == 1_234
    (first,) = [f for f in d["changed"][0]["fields"] if f["field"] == field]
    if operation == "validate":
        assert (first["a"], first["b"]) == ("passed", "failed (3 rows)")
    else:
        assert fields["rows"] == 1_234 and (first["a"], first["b"]) == ("sha0", "sha1")
    # The same percentiles from the formulas of _hand_made, in numpy.
    i = np.arange(5_000)
    dur_a, dur_b = 10 + i % 7, 10 + i % 7 + 5 * (i < 1_234)
    q_b = 0.9 - 0.5 * (i < 1_234)
    for stat, pct in (("p50", 50), ("p95", 95)):
        expected = np.percentile(dur_b, pct) - np.percentile(dur_a, pct)
        assert d["duration_ms"]["delta"][stat] == pytest.approx(expected)
        assert d["quality"]["b"][stat] == pytest.approx(np.percentile(q_b, pct))
    assert d["quality"]["delta"]["mean"] == pytest.approx(q_b.mean() - 0.9, abs=1e-4)


def test_bad_input_is_refused(env) -> None:  # noqa: ANN001
    with warehouse.connect() as con:
        _hand_made(con, "validate-a", "validate", 3, 0)
        _hand_made(con, "import-b", "import", 3, 0)
    with pytest.raises(DiffError, match="different operations"):
        diff_batches("validate-a", "import-b")
    out = CliRunner().invoke(main, ["diff", "validate-a", "import-b", "--json"])
    assert out.exit_code == 2
    assert "validate" in json.loads(out.output)["error"]
    # The real entry point: unknown ids, both named, exit 2.
    p = cli(env, "diff", "nope-1", "validate-a")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "'nope-1' is not in the ledger (argument A)" in p.stderr
    assert "Traceback" not in p.stderr
