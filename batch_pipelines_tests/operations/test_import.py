"""The import operation on real files: every format, rejects with reasons, skip of identical
files, bad files failing only their own item and leaving the table as it was, and re-runs
replacing an item's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipelines.core.errors import TransientItemError, ValidationItemError
from batch_pipelines.core.files import (
    detect_format,
    file_state,
    looks_binary,
    unchanged_while_read,
)
from batch_pipelines_tests.helpers import run_batch


def test_detect_format(samples: Path, tmp_path: Path) -> None:
    assert detect_format(samples / "penguins_2007.csv") == "csv"
    assert detect_format(samples / "penguins_2011.parquet") == "parquet"
    for name, body, fmt in [
        ("a.dat", b"PAR1....", "parquet"),
        ("b.dat", b'[{"a": 1}]', "json"),
        ("c.dat", b'{"a": 1}\n{"a": 2}\n', "ndjson"),
        ("d.dat", b"a\tb\n1\t2\n", "tsv"),
        ("e.dat", b"a,b\n1,2\n", "csv"),
    ]:
        (tmp_path / name).write_bytes(body)
        assert detect_format(tmp_path / name) == fmt
    (tmp_path / "f.dat").write_bytes(bytes(range(256)))
    with pytest.raises(ValidationItemError, match="binary"):
        detect_format(tmp_path / "f.dat")
    assert looks_binary(b"\x00abc") and not looks_binary("héllo, wörld".encode())


def test_every_format_loads_into_one_table(samples: Path, env, instance) -> None:  # noqa: ANN001
    batch = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "penguins"},
            "settings": {"chunk_size": 10},
            "items_from": {"glob": "data/samples/penguins_*"},
        },
        instance,
    )
    assert batch["status"] == "completed", batch
    files = env.sql(
        "select format, rows, rejected_rows, columns, status, length(sha256) "
        "from import_files order by path"
    )
    assert files == [
        ("csv", 110, 0, 9, "imported", 64),
        ("tsv", 114, 0, 9, "imported", 64),
        ("json", 120, 0, 9, "imported", 64),
        ("ndjson", 90, 0, 9, "imported", 64),
        ("parquet", 100, 0, 9, "imported", 64),
        ("csv", 58, 2, 9, "imported", 64),
    ]
    assert env.sql(
        "select count(*), count(distinct _item_id), count(distinct year) from penguins"
    ) == [(592, 6, 6)]
    rejects = env.sql("select line, column_name, error from import_rejects order by line")
    assert [r[0] for r in rejects] == [6, 6, 18]
    assert "TOO MANY COLUMNS" in rejects[0][2]
    assert rejects[2][1] == "bill_length_mm" and "not-a-number" in rejects[2][2]
    q = env.sql("select quality_score from batch_items where item_id like '%messy%'")[0][0]
    assert q == pytest.approx(58 / 60)
    ms = env.sql("select min(duration_ms) from batch_items")[0][0]
    assert ms > 0


def test_bad_files_fail_only_their_item_and_leave_the_table(
    samples: Path,
    env,
    instance,  # noqa: ANN001
) -> None:
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "penguins"},
            "items": [{"path": "data/samples/penguins_2007.csv"}],
        },
        instance,
    )
    before = env.sql("select count(*) from penguins")[0][0]
    batch = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "penguins"},
            "settings": {"max_retries": 0},
            "items_from": {"glob": "data/samples/bad/*"},
        },
        instance,
    )
    assert batch["status"] == "failed"
    errors = dict(
        env.sql(
            "select regexp_extract(item_id, '[^/]+$'), error from batch_items where batch_id = ?",
            [batch["batch_id"]],
        )
    )
    assert "is empty" in errors["empty.csv"]
    assert "binary content" in errors["garbage.bin"]
    assert "cannot parse truncated.json as json" in errors["truncated.json"]
    assert "delimiter mismatch" in errors["wrong_delimiter.tsv"]
    assert env.sql("select count(*) from penguins")[0][0] == before
    assert set(
        env.sql(
            "select distinct error_category from batch_items where batch_id = ?",
            [batch["batch_id"]],
        )
    ) == {("validation",)}


def test_identical_file_is_skipped_and_rerun_replaces(samples: Path, env, instance) -> None:  # noqa: ANN001
    m = {
        "operation": "import",
        "options": {"target_table": "p"},
        "items": [{"id": "y2007", "path": "data/samples/penguins_2007.csv"}],
    }
    first = run_batch(m, instance)
    second = run_batch(m, instance)
    assert second["status"] == "completed" and second["skipped_items"] == 1
    assert env.sql("select count(*) from p")[0][0] == 110
    reason = env.sql(
        "select result->>'skipped_because' from batch_items where batch_id = ?",
        [second["batch_id"]],
    )[0][0]
    assert first["batch_id"] in reason
    # Re-running the first batch's item (as `dagster asset materialize --partition` does)
    # replaces its rows: same count, one more attempt.
    from batch_pipelines.definitions import defs

    key = env.sql("select partition_key from batch_items where batch_id = ?", [first["batch_id"]])[
        0
    ][0]
    result = defs.resolve_job_def("import_job").execute_in_process(
        instance=instance, partition_key=key
    )
    assert result.success
    assert env.sql("select count(*) from p")[0][0] == 110
    assert env.sql("select attempts, status from batch_items where partition_key = ?", [key]) == [
        (2, "succeeded")
    ]


def test_modes_replace_upsert_and_per_item_tables(samples: Path, env, instance) -> None:  # noqa: ANN001
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "t", "mode": "replace"},
            "items": [{"path": "data/samples/penguins_2007.csv"}],
        },
        instance,
    )
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "t", "mode": "replace", "skip_identical": False},
            "items": [{"path": "data/samples/penguins_2011.parquet"}],
        },
        instance,
    )
    assert env.sql("select count(*), min(year) from t") == [(100, 2011)]
    up = env.data / "samples" / "update.csv"
    up.write_text(
        "id,species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,"
        "body_mass_g,sex,year\n2011000,Gentoo,Biscoe,1.0,1.0,1,1,male,2011\n"
        "9999999,Gentoo,Biscoe,2.0,2.0,2,2,female,2011\n"
    )
    b = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "t", "mode": "upsert", "key_columns": ["id"]},
            "items": [{"path": "data/samples/update.csv"}],
        },
        instance,
    )
    assert b["status"] == "completed", b
    assert env.sql("select count(*) from t") == [(101,)]
    assert env.sql("select bill_length_mm from t where id = 2011000") == [(1.0,)]
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "raw_{item_id}"},
            "items": [
                {"id": "y2007", "path": "data/samples/penguins_2007.csv"},
                {"id": "y2008", "path": "data/samples/penguins_2008.tsv"},
            ],
        },
        instance,
    )
    assert env.sql("select count(*) from raw_y2007") == [(110,)]
    assert env.sql("select count(*) from raw_y2008") == [(114,)]


def test_schema_mismatch_fails_the_item_with_the_reason(samples: Path, env, instance) -> None:  # noqa: ANN001
    other = env.data / "samples" / "other.csv"
    other.write_text("colour,size\nred,1\n")
    run_batch(
        {
            "operation": "import",
            "options": {"target_table": "t"},
            "items": [{"path": "data/samples/penguins_2007.csv"}],
        },
        instance,
    )
    b = run_batch(
        {
            "operation": "import",
            "options": {"target_table": "t"},
            "items": [{"path": "data/samples/other.csv"}],
        },
        instance,
    )
    assert b["status"] == "failed"
    error = env.sql("select error from batch_items where batch_id = ?", [b["batch_id"]])[0][0]
    assert "does not fit table t" in error
    assert env.sql("select count(*) from t") == [(110,)]


def test_a_file_that_changes_while_it_is_read_is_read_again_not_remembered(
    env,  # noqa: ANN001
    instance,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sha256 that skips identical files must be the one of the rows loaded: a file cut
    short between its hash and its load must not make the whole file "already imported"."""
    from batch_pipelines.operations.import_ import handler

    data = env.data / "big.csv"
    whole = "id,value\n" + "".join(f"{i},{i * 7}\n" for i in range(5000))
    data.write_text(whole)
    real_sha256 = handler.sha256_file
    cuts: list[int] = []

    def hash_then_cut(path: Path, ctx=None) -> str:  # noqa: ANN001
        digest = real_sha256(path, ctx)
        if not cuts:  # the writer truncates the file right after the hash, once
            path.write_text(whole[: len(whole) // 10].rsplit("\n", 1)[0] + "\n")
            cuts.append(1)
        return digest

    monkeypatch.setattr(handler, "sha256_file", hash_then_cut)
    manifest = {
        "operation": "import",
        "options": {"target_table": "t"},
        "items": [{"path": "data/big.csv"}],
        "settings": {"max_retries": 2, "retry_base_delay_s": 0},
    }
    first = run_batch(manifest, instance)
    cut_rows = env.sql("select count(*) from t")[0][0]
    data.write_text(whole)
    again = run_batch(manifest, instance)

    assert again["skipped_items"] == 0, env.sql(
        "select result->>'skipped_because' from batch_items where batch_id = ?",
        [again["batch_id"]],
    )
    assert env.sql("select count(*) from t where _batch_id = ?", [again["batch_id"]]) == [(5000,)]
    assert first["status"] == "completed", first
    attempts = env.sql(
        "select attempt, outcome, error_category, error from item_attempts "
        "where batch_id = ? order by attempt",
        [first["batch_id"]],
    )
    assert [a[:3] for a in attempts] == [(1, "failed", "transient"), (2, "succeeded", None)]
    assert "big.csv changed while it was being read" in attempts[0][3], attempts
    assert (
        cut_rows == env.sql("select count(*) from t where _batch_id = ?", [first["batch_id"]])[0][0]
    )


def test_a_parse_error_from_a_file_cut_while_read_is_transient(tmp_path: Path) -> None:
    data = tmp_path / "x.csv"
    data.write_text("a\n1\n2\n")
    unchanged = file_state(data)
    with (
        pytest.raises(ValidationItemError, match="really bad"),
        unchanged_while_read(data, unchanged),
    ):
        raise ValidationItemError("really bad")
    with (
        pytest.raises(TransientItemError, match=r"x.csv changed .* \(6 -> 2 bytes\)"),
        unchanged_while_read(data, unchanged),
    ):
        data.write_text("a\n")
        raise ValidationItemError("cannot parse x.csv as csv")
    before = file_state(data)
    (tmp_path / "new.csv").write_text("b\n")
    (tmp_path / "new.csv").replace(data)
    with (
        pytest.raises(TransientItemError, match="replaced by another file"),
        unchanged_while_read(data, before),
    ):
        pass


def test_a_file_with_its_own_lineage_columns_is_refused_unless_lineage_is_off(env) -> None:  # noqa: ANN001
    """The _batch_id/_item_id an import adds say which item wrote a row (a re-run deletes by
    them): a file's own columns of those names must not take their place."""
    from batch_pipelines_tests.helpers import cli

    (env.data / "own.csv").write_text(
        "id,_Batch_Id,_item_id\n1,import-20250101-000000-aaaaaa,victim\n2,x,y\n"
    )
    p = cli(
        env, "submit", "import", "--items", "data/own.csv", "--option", "target_table=t", "--wait"
    )
    assert p.returncode == 1, p.stdout + p.stderr
    ((category, error),) = env.sql(
        "select error_category, error from batch_items where status = 'failed'"
    )
    assert category == "validation"
    assert error == (
        "own.csv has columns _Batch_Id, _item_id, the lineage columns import adds to every "
        "row; rename them in the file, or import with lineage_columns: false to keep them "
        "as in the file"
    )
    tables = [r[0] for r in env.sql("select table_name from duckdb_tables()")]
    assert "t" not in tables

    p = cli(
        env,
        "submit",
        "import",
        "--items",
        "data/own.csv",
        "--option",
        "target_table=t",
        "--option",
        "lineage_columns=false",
        "--wait",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert env.sql("select * from t order by id") == [
        (1, "import-20250101-000000-aaaaaa", "victim"),
        (2, "x", "y"),
    ]
