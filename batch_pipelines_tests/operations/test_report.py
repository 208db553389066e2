"""The report operation: batch summaries, table profiles and operation windows.

Guards against: figures that disagree with the warehouse (counts, quantiles, histograms);
HTML that needs anything beyond itself (external images, scripts, stylesheets); half-written
or leftover temporary files; re-runs that duplicate ``reports`` rows; a bad request (missing
table, unknown batch, wrong fields for its kind) failing more than its own item.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from batch_pipelines.core import warehouse
from batch_pipelines.core.errors import NOT_FOUND, ItemError, ValidationItemError
from batch_pipelines.operations.report.handler import handle_report
from batch_pipelines.operations.report.models import ReportItem
from batch_pipelines_tests.helpers import (
    cli,
    handler_batch_id,
    import_penguins,
    item_context,
    run_batch,
    run_item,
)

REPORT_BATCH = handler_batch_id("report")
# The five clean sample files.
CLEAN_FILES = {
    "settings": {"max_retries": 0},
    "items_from": {"glob": "data/samples/penguins_20??.*"},
}


def run_report(env, payload: dict, **options) -> dict:  # noqa: ANN001, ANN003
    return run_item(env, "report", item_context(env, "report", payload, options)).metrics


def assert_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|link|iframe)\b", html, re.IGNORECASE)
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_item_model() -> None:
    assert ReportItem(kind="batch", batch_id="b").id == "batch:b"
    assert ReportItem(kind="table_profile", table="main.t").subject == "main.t"
    w = ReportItem(kind="operation_window", operation="import", since="2026-01-01T00:00:00+02:00")
    assert w.since.isoformat() == "2025-12-31T22:00:00" and w.id.startswith("operation_window:")
    with pytest.raises(ValueError, match="needs batch_id"):
        ReportItem(kind="batch")
    with pytest.raises(ValueError, match="does not take table"):
        ReportItem(kind="batch", batch_id="b", table="t")
    with pytest.raises(ValueError, match="not a valid table name"):
        ReportItem(kind="table_profile", table="t; drop table batches")
    with pytest.raises(ValueError, match="operation 'nope' is not one of"):
        ReportItem(kind="operation_window", operation="nope")
    with pytest.raises(ValueError, match="since must be earlier than until"):
        ReportItem(
            kind="operation_window", operation="import", since="2026-02-01", until="2026-01-01"
        )
    with pytest.raises(ValueError):
        ReportItem(kind="chart")


def test_batch_report(env, samples: Path, instance) -> None:  # noqa: ANN001
    batch_id = import_penguins(instance, **CLEAN_FILES)
    metrics = run_report(env, {"kind": "batch", "batch_id": batch_id})
    html = Path(metrics["html_path"]).read_text()
    assert_self_contained(html)
    assert batch_id in html and "duration p95 (ms)" in html
    md = Path(metrics["markdown_path"]).read_text()
    assert md.startswith(f"# Batch {batch_id}") and "| succeeded | 5 |" in md
    with open(metrics["csv_path"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"succeeded"}
    folder = Path(metrics["html_path"]).parent
    assert folder == env.data / "reports" / REPORT_BATCH
    assert not list(folder.glob(".*.tmp"))
    (row,) = env.sql("select kind, subject, bytes, charts, rows, summary->>'$.status' from reports")
    size = sum(Path(metrics[k]).stat().st_size for k in ("html_path", "markdown_path", "csv_path"))
    assert row == ("batch", batch_id, size, metrics["charts"], 5, "completed")
    p50, p95 = env.sql(
        "select quantile_cont(duration_ms, 0.5), quantile_cont(duration_ms, 0.95) "
        "from batch_items where batch_id = ?",
        [batch_id],
    )[0]
    summary = json.loads(env.sql("select summary from reports")[0][0])
    assert summary["duration_ms"]["p50"] == pytest.approx(p50, abs=1e-3)
    assert summary["duration_ms"]["p95"] == pytest.approx(p95, abs=1e-3)
    run_report(env, {"kind": "batch", "batch_id": batch_id})  # a re-run replaces
    assert env.sql("select count(*) from reports") == [(1,)]


def test_table_profile(env, samples: Path, instance) -> None:  # noqa: ANN001
    import_penguins(instance, **CLEAN_FILES)
    with warehouse.connect(env.warehouse) as con:
        con.execute("update penguins set sex = null where id % 10 = 0")
    metrics = run_report(env, {"kind": "table_profile", "table": "penguins"}, histogram_bins=10)
    assert_self_contained(Path(metrics["html_path"]).read_text())
    with open(metrics["csv_path"], newline="") as fh:
        profile = {r["column"]: r for r in csv.DictReader(fh)}
    total, nulls, mass = env.sql(
        "select count(*), count(*) - count(sex), "
        "quantile_cont(body_mass_g, [0.05, 0.25, 0.5, 0.75, 0.95]) from penguins"
    )[0]
    assert int(profile["sex"]["nulls"]) == nulls > 0
    assert int(profile["id"]["non_null"]) == total == 534
    assert [float(profile["body_mass_g"][f"p{q}"]) for q in (5, 25, 50, 75, 95)] == (
        pytest.approx(mass, abs=1e-3)
    )
    assert profile["species"]["min"] == "" and profile["species"]["distinct_approx"] == "3"
    md = Path(metrics["markdown_path"]).read_text()
    assert "## Numeric distributions" in md and "## Top values of species" in md
    # one nulls chart plus a histogram per numeric column (id, 4 measurements, year)
    assert metrics["charts"] == 7


def test_operation_window(env, samples: Path, instance) -> None:  # noqa: ANN001
    import_penguins(instance, **CLEAN_FILES)
    import_penguins(instance, "penguins2", **CLEAN_FILES)
    metrics = run_report(env, {"kind": "operation_window", "operation": "import"})
    with open(metrics["csv_path"], newline="") as fh:
        batches = list(csv.DictReader(fh))
    assert len(batches) == 2 and all(b["status"] == "completed" for b in batches)
    summary = json.loads(env.sql("select summary from reports")[0][0])
    assert summary["by_status"] == {"completed": 2} and summary["processed"] == 10
    empty = run_report(
        env,
        {"id": "future", "kind": "operation_window", "operation": "import", "since": "2999-01-01"},
    )
    assert empty["rows"] == 0 and Path(empty["html_path"]).exists()


def test_bad_requests_fail_with_clear_errors(env) -> None:  # noqa: ANN001
    with pytest.raises(ValidationItemError, match="table 'nope' does not exist"):
        handle_report(item_context(env, "report", {"kind": "table_profile", "table": "nope"}))
    with pytest.raises(ItemError, match="batch 'import-x' not found") as info:
        handle_report(item_context(env, "report", {"kind": "batch", "batch_id": "import-x"}))
    assert info.value.category == NOT_FOUND
    assert not (env.data / "reports" / REPORT_BATCH).exists() or not list(
        (env.data / "reports" / REPORT_BATCH).iterdir()
    )


def test_asset_batch_with_a_bad_item(env, samples: Path, instance) -> None:  # noqa: ANN001
    import_id = import_penguins(instance, **CLEAN_FILES)
    batch = run_batch(
        {
            "operation": "report",
            "settings": {"chunk_size": 2, "max_retries": 0},
            "items": [
                {"kind": "batch", "batch_id": import_id},
                {"kind": "table_profile", "table": "penguins"},
                {"kind": "table_profile", "table": "missing_table"},
                {"kind": "operation_window", "operation": "import"},
            ],
        },
        instance,
    )
    batch_id = batch["batch_id"]
    assert (batch["succeeded_items"], batch["failed_items"]) == (3, 1)
    assert env.sql("select item_id, error from batch_items where status = 'failed'") == [
        ("table_profile:missing_table", "table 'missing_table' does not exist in the warehouse")
    ]
    rows = env.sql("select kind, html_path from reports where batch_id = ? order by 1", [batch_id])
    assert [r[0] for r in rows] == ["batch", "operation_window", "table_profile"]
    folder = env.data / "reports" / batch_id
    assert all(Path(r[1]).parent == folder and Path(r[1]).exists() for r in rows)
    assert sorted(p.suffix for p in folder.iterdir()) == [".csv"] * 3 + [".html"] * 3 + [".md"] * 3


@pytest.mark.e2e
def test_cli_reports_on_the_samples(env, samples: Path, instance) -> None:  # noqa: ANN001
    import_id = import_penguins(instance, **CLEAN_FILES)
    instance.dispose()
    manifest = env.root / "report.yaml"
    manifest.write_text(
        "operation: report\n"
        "name: penguin reports\n"
        "items:\n"
        f"  - {{kind: batch, batch_id: {import_id}}}\n"
        "  - {kind: table_profile, table: penguins}\n"
        "  - {kind: operation_window, operation: import, since: '2000-01-01'}\n"
    )
    proc = cli(env, "submit", str(manifest), "--wait", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch = json.loads(proc.stdout)
    assert batch["status"] == "completed" and batch["succeeded_items"] == 3
    rows = env.sql("select kind, charts > 0, bytes > 0, html_path from reports order by kind")
    assert [r[:3] for r in rows] == [
        ("batch", True, True),
        ("operation_window", True, True),
        ("table_profile", True, True),
    ]
    for r in rows:
        assert_self_contained(Path(r[3]).read_text())
