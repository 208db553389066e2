"""export to xlsx: values stay values (no formulas), what Excel cannot hold is adapted, a
table past a sheet's rows goes on in further sheets, and the workbook imports back; the
CLI (in-process) writes one."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from batch_pipelines.cli.main import main
from batch_pipelines.core import warehouse
from batch_pipelines.operations.export import models as export_models
from batch_pipelines.operations.export import xlsx as export_xlsx
from batch_pipelines_tests.helpers import item_context, run_item


def _rows(path: Path) -> dict[str, list[tuple]]:
    workbook = openpyxl.load_workbook(path, read_only=True)
    try:
        return {ws.title: list(ws.iter_rows(values_only=True)) for ws in workbook.worksheets}
    finally:
        workbook.close()


def test_values_are_written_as_values_and_adapted(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            "create table odd as select * from (values "
            "(1, '=HYPERLINK(\"http://x\")', '#N/A', 'nan'::double, "
            " timestamptz '2026-01-02 03:04:05+02', [1, 2], 'a' || chr(7) || 'b', "
            " repeat('x', 40000), 1.25::decimal(9, 2), date '2026-03-04'), "
            "(2, null, 'ok', 2.5, null, null, null, null, null, null)"
            ") t(id, formula, err, f, ts, list, ctrl, long, dec, d)"
        )
        con.execute(
            "create table texts as select uuid '00000000-0000-0000-0000-000000000001' as u, "
            "interval 1 day as i, (2::hugeint ** 100)::hugeint as h"
        )
    ctx = item_context(env, "export", {"table": "odd"}, {"format": "xlsx"})
    result = run_item(env, "export", ctx)
    assert result.metrics["rows"] == 2 and result.metrics["sheets"] == "odd"
    assert result.metrics["truncated_cells"] == 1
    path = Path(result.metrics["path"])
    assert path.name == "i1.xlsx" and path.exists()
    sheets = _rows(path)
    header, first, second = sheets["odd"]
    assert header == ("id", "formula", "err", "f", "ts", "list", "ctrl", "long", "dec", "d")
    assert first[:4] == (1, '=HYPERLINK("http://x")', "#N/A", None)
    assert str(first[4]) == "2026-01-02 01:04:05"  # UTC, without the zone
    assert first[5:7] == ("[1, 2]", "ab") and len(first[7]) == 32767
    assert first[8] == 1.25 and str(first[9]).startswith("2026-03-04")
    assert second[:4] == (2, None, "ok", 2.5)
    workbook = openpyxl.load_workbook(path)
    assert workbook["odd"]["B2"].data_type == "s" and workbook["odd"]["C2"].data_type == "s"
    assert env.sql("select format, rows, columns from exports") == [("xlsx", 2, 10)]
    # types Excel has no cell for are written as their text
    ctx = item_context(env, "export", {"table": "texts"}, {"format": "xlsx"}, item_id="t")
    (_, row) = _rows(Path(run_item(env, "export", ctx).metrics["path"]))["texts"]
    assert row == ("00000000-0000-0000-0000-000000000001", "1 day", str(2**100))


def test_past_a_sheets_rows_the_next_sheet_and_the_round_trip(
    env,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(export_xlsx, "MAX_SHEET_ROWS", 4)
    with warehouse.connect(env.warehouse) as con:
        con.execute("create table n as select range as id, 'r' || range as label from range(10)")
    result = run_item(
        env,
        "export",
        item_context(env, "export", {"query": "select * from n order by id"}, {"format": "xlsx"}),
    )
    sheets = _rows(Path(result.metrics["path"]))
    assert list(sheets) == ["i1", "i1_2", "i1_3"] == result.metrics["sheets"].split(", ")
    assert [len(rows) for rows in sheets.values()] == [5, 5, 3]  # the header in each
    assert all(rows[0] == ("id", "label") for rows in sheets.values())
    # every sheet imported back: every row once
    ctx = item_context(env, "import", {"path": result.metrics["path"]}, {"target_table": "back"})
    run_item(env, "import", ctx)
    assert env.sql("select count(*), count(distinct id), count(distinct _sheet) from back") == [
        (10, 10, 3)
    ]
    assert export_xlsx.sheet_title("a/b:c" * 10, 12) == ("a_b_c" * 10)[:28] + "_12"


def test_compression_does_not_apply_and_the_cli_writes_one(samples: Path, env) -> None:  # noqa: ANN001
    with pytest.raises(ValidationError, match="does not apply to xlsx"):
        export_models.ExportOptions(format="xlsx", compression="gzip")
    with warehouse.connect(env.warehouse) as con:
        con.execute(
            f"create table penguins as select * from read_csv('{env.data}/samples/penguins_2007.csv')"
        )
    out = CliRunner().invoke(
        main,
        [
            "submit",
            "export",
            "--item",
            '{"table": "penguins"}',
            "--option",
            "format=xlsx",
            "--in-process",
        ],
        terminal_width=200,
    )
    assert out.exit_code == 0, out.output
    path = Path(env.sql("select path from exports")[0][0])
    assert path.suffix == ".xlsx" and len(_rows(path)["penguins"]) == 111
