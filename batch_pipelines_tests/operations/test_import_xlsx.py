"""xlsx workbooks through import: every sheet or one, the _sheet lineage column, rejects
with sheet and cell, the modes, sha256 skips, and workbooks that cannot be read failing
their own item with a message that says why."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import openpyxl
import pytest

from batch_pipelines.core import warehouse
from batch_pipelines.core.contract import CommitContext, ItemResult
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.files import OLE2_MAGIC, check_xlsx, detect_format
from batch_pipelines.operations import get_operation
from batch_pipelines_tests.helpers import cli, item_context, run_item

XLSX = "data/samples/excel/penguins_islands.xlsx"


def _workbook(path: Path, sheets: dict[str, list[list]]) -> Path:
    workbook = openpyxl.Workbook(write_only=True)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


def test_every_sheet_into_one_table_with_rejects_and_skip(samples: Path, env) -> None:  # noqa: ANN001
    ctx = item_context(env, "import", {"path": XLSX}, {"target_table": "islands"})
    result = run_item(env, "import", ctx)
    assert result.metrics["sheets"] == "Biscoe, Dream" and result.metrics["format"] == "xlsx"
    assert result.quality_score == pytest.approx(
        result.metrics["rows"] / (result.metrics["rows"] + 1)
    )
    by_sheet = dict(env.sql("select _sheet, count(*) from islands group by all"))
    assert set(by_sheet) == {"Biscoe", "Dream"}
    row = env.sql("select format, rows, rejected_rows, columns, status from import_files")[0]
    assert row == ("xlsx", sum(by_sheet.values()), 1, 6, "imported")
    assert env.sql("select line, column_name, error from import_rejects") == [
        (5, "body_mass_g", "Dream!E5: the cell holds the Excel error #DIV/0!")
    ]
    types = dict(
        env.sql(
            "select column_name, data_type from information_schema.columns "
            "where table_name = 'islands'"
        )
    )
    assert types["id"] == "BIGINT" and types["bill_length_mm"] == "DOUBLE"
    assert types["species"] == "VARCHAR" and "_batch_id" in types
    # The same workbook again, by another item, into the same table: skipped unread.
    ctx = item_context(env, "import", {"path": XLSX}, {"target_table": "islands"}, item_id="i2")
    result = get_operation("import").handler(ctx)
    with warehouse.connect(env.warehouse) as con:
        status = result.commit(con, CommitContext(ctx.batch_id, ctx.item_id, None))
    assert status == "skipped" and "identical file" in result.metrics["skipped_because"]


def test_one_sheet_unknown_sheet_and_modes(samples: Path, env) -> None:  # noqa: ANN001
    def load(options: dict, item: dict) -> ItemResult:
        ctx = item_context(
            env,
            "import",
            {"path": XLSX, **item},
            {"target_table": "dream", "skip_identical": False, **options},
            item_id=item.pop("id", "w"),
        )
        return run_item(env, "import", ctx)

    load({"sheet": "Dream"}, {})
    n = env.sql("select count(*) from dream")[0][0]
    assert env.sql("select distinct _sheet from dream") == [("Dream",)]
    load({"sheet": "dream"}, {})  # a re-run of the item replaces its own rows
    assert env.sql("select count(*) from dream")[0][0] == n
    load({"mode": "upsert", "key_columns": ["id"]}, {"sheet": "Biscoe", "id": "b"})
    assert env.sql("select count(distinct _sheet) from dream")[0][0] == 2
    load({"mode": "replace"}, {"sheet": "Biscoe"})
    assert env.sql("select distinct _sheet from dream") == [("Biscoe",)]
    with pytest.raises(ValidationItemError) as failed:
        load({"sheet": "Gentoo"}, {})
    assert str(failed.value) == (
        "sheet: penguins_islands.xlsx has no sheet 'Gentoo'; its sheets: 'Biscoe', 'Dream'"
    )
    assert failed.value.category == "validation"


def test_types_of_an_existing_table_reject_what_does_not_fit(env, tmp_path: Path) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.execute("create table t (id bigint, mass double, seen timestamp)")
    path = _workbook(
        env.data / "t.xlsx",
        {
            "a": [
                ["id", "mass", "seen"],
                [1, 3.5, dt.datetime(2026, 1, 2)],
                [],
                [2, "heavy", None],
                [3.0, "4", "2026-01-03"],
                [4, 1, None, None, "extra"],
            ],
        },
    )
    ctx = item_context(env, "import", {"path": str(path)}, {"target_table": "t"})
    result = run_item(env, "import", ctx)
    assert result.metrics["rows"] == 2 and result.metrics["rejected_rows"] == 2
    assert env.sql("select id, mass, _sheet from t order by id") == [(1, 3.5, "a"), (3, 4.0, "a")]
    rejects = env.sql("select line, column_name, error from import_rejects order by line")
    assert (
        rejects[0][:2] == (4, "mass")
        and "'heavy' does not fit column mass (DOUBLE)" in (rejects[0][2])
    )
    assert rejects[1][0] == 6 and "a!E6: a value beyond the header's 3 columns" in rejects[1][2]


def test_lineage_off_header_off_and_own_sheet_column(env) -> None:  # noqa: ANN001
    path = _workbook(env.data / "h.xlsx", {"s": [[1, "x"], [2, "y"]]})
    ctx = item_context(
        env,
        "import",
        {"path": str(path)},
        {"target_table": "h", "header": False, "lineage_columns": False},
    )
    run_item(env, "import", ctx)
    assert env.sql("select * from h order by 1") == [(1, "x"), (2, "y")]
    empty = _workbook(env.data / "e.xlsx", {"s": [["a", "b", "c"], [1, None, None]], "t": [["b"]]})
    run_item(
        env, "import", item_context(env, "import", {"path": str(empty)}, {"target_table": "e"})
    )
    assert env.sql(
        "select column_name, data_type from information_schema.columns "
        "where table_name = 'e' and column_name in ('a', 'b', 'c') order by 1"
    ) == [("a", "BIGINT"), ("b", "VARCHAR"), ("c", "VARCHAR")]
    own = _workbook(env.data / "own.xlsx", {"s": [["_sheet", "v"], ["x", 1]]})
    with pytest.raises(ValidationItemError, match="_sheet, a lineage column"):
        run_item(
            env, "import", item_context(env, "import", {"path": str(own)}, {"target_table": "o"})
        )


def test_workbooks_that_cannot_be_read_say_why(env, tmp_path: Path) -> None:  # noqa: ANN001
    good = _workbook(tmp_path / "g.bin", {"s": [["a"], [1]]})
    assert detect_format(good) == "xlsx"  # by content: a zip with xl/workbook.xml
    cases = {
        "legacy.xls": (OLE2_MAGIC + b"\x00" * 600, "legacy Excel 97-2003"),
        "locked.xlsx": (
            OLE2_MAGIC + b"\x00" * 100 + "EncryptionInfo".encode("utf-16-le"),
            "encrypted \\(password-protected\\)",
        ),
        "cut.xlsx": (good.read_bytes()[:300], "corrupt xlsx"),
        "text.xlsx": (b"a,b\n1,2\n", "not a zip archive"),
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("hello.txt", "hi")
    cases["other.xlsx"] = (archive.getvalue(), "without xl/workbook.xml")
    for name, (body, message) in cases.items():
        (env.data / name).write_bytes(body)
        with pytest.raises(ValidationItemError, match=message):
            check_xlsx(env.data / name)
    with pytest.raises(ValidationItemError, match="legacy Excel"):
        detect_format(env.data / "legacy.xls")
    ctx = item_context(env, "import", {"path": str(env.data / "cut.xlsx")}, {"target_table": "x"})
    with pytest.raises(ValidationItemError, match="corrupt xlsx"):
        run_item(env, "import", ctx)
    ctx = item_context(
        env,
        "import",
        {"path": str(env.data / "cut.xlsx"), "sheet": "s", "format": "csv"},
        {"target_table": "x"},
    )
    with pytest.raises(ValidationItemError, match="sheet: cut.xlsx is csv"):
        run_item(env, "import", ctx)


def test_cli_subprocess_imports_a_workbook(samples: Path, env) -> None:  # noqa: ANN001
    p = cli(
        env,
        "submit",
        "import",
        "--items",
        XLSX,
        "--option",
        "target_table=islands",
        "--option",
        "sheet=Dream",
        "--wait",
        "--in-process",
        "--json",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert env.sql("select count(*) > 0, min(_sheet), max(_sheet) from islands") == [
        (True, "Dream", "Dream")
    ]
    assert env.sql("select rejected_rows, format from import_files") == [(1, "xlsx")]
