"""Bad manifests are rejected before anything is registered, with an error naming the field:
guards against half-registered batches and vague errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batch_pipelines.app.submit import prepare_batch, submit_batch
from batch_pipelines.core.manifest import ManifestError, load_manifest


def fields(exc: ManifestError) -> list[str]:
    return [f for f, _ in exc.problems]


def good(**over):  # noqa: ANN003, ANN201
    m = {
        "operation": "import",
        "options": {"target_table": "t"},
        "items": [{"path": "data/samples/penguins_2007.csv"}],
    }
    m.update(over)
    return m


def test_a_good_manifest_prepares(samples: Path) -> None:
    p = prepare_batch(good(settings={"chunk_size": 1}, priority="high"))
    assert p.manifest.priority == "high"
    assert p.items[0]["item_id"] == "data/samples/penguins_2007.csv"
    assert p.items[0]["chunk_no"] == 0
    assert p.keys[0].startswith(p.batch_id + "~")


@pytest.mark.parametrize(
    ("manifest", "field", "text"),
    [
        (good(operation="imprt"), "operation", "unknown operation 'imprt'"),
        ({"items": [{"path": "x"}]}, "operation", "field required"),
        (good(options={}), "options.target_table", "field required"),
        (good(options={"target_table": "t", "mode": "merge"}), "options.mode", "append"),
        (good(options={"target_table": "drop table x"}), "options.target_table", "not a valid"),
        (good(options={"target_table": "t", "colour": 1}), "options.colour", "unknown field"),
        (good(settings={"max_retries": "many"}), "settings.max_retries", "integer"),
        (good(settings={"chunk_size": 0}), "settings.chunk_size", "greater than"),
        (good(priority="urgent"), "priority", "low"),
        (good(correlation_id="has spaces"), "correlation_id", "should match pattern"),
        (good(correlation_id="x" * 129), "correlation_id", "at most 128"),
        (good(items=[{"path": "data/samples/nope.csv"}]), "items[0].path", "does not exist"),
        (good(items=[{"path": "/etc/passwd"}]), "items[0].path", "outside the allowed roots"),
        (good(items=[{"path": "data/../../../etc/passwd"}]), "items[0].path", "outside"),
        (
            good(items=[{"path": "data/samples/penguins_2007.csv", "tab": 1}]),
            "items[0].tab",
            "unknown field",
        ),
        (good(items=[]), "items", "no items"),
        (good(items_from={"glob": "data/samples/*.csv"}), "manifest", "exactly one"),
        (good(items=None, items_from={"glob": "data/none/*.csv"}), "items_from.glob", "no file"),
        (good(items=None, items_from={"glob": "x", "csv": "y"}), "items_from", "exactly one"),
        (
            good(
                items=[
                    {"id": "a", "path": "data/samples/penguins_2007.csv"},
                    {"id": "a", "path": "data/samples/penguins_2008.tsv"},
                ]
            ),
            "items[1].id",
            "duplicate item id",
        ),
        (
            good(items=None, items_from={"sql": "delete from batches"}),
            "items_from.sql",
            "read-only SELECT",
        ),
    ],
)
def test_rejections_name_the_field(samples: Path, manifest: dict, field: str, text: str) -> None:
    with pytest.raises(ManifestError) as info:
        prepare_batch(manifest)
    assert field in fields(info.value), info.value.problems
    assert text in str(info.value)


def test_symlink_out_of_the_roots_is_refused(samples: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    os.symlink(outside, samples / "sneaky.csv")
    with pytest.raises(ManifestError, match="outside the allowed roots"):
        prepare_batch(good(items=[{"path": "data/samples/sneaky.csv"}]))


def test_extra_allowed_roots(samples: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    other = tmp_path / "landing"
    other.mkdir()
    (other / "x.csv").write_text("a\n1\n")
    with pytest.raises(ManifestError):
        prepare_batch(good(items=[{"path": str(other / "x.csv")}]))
    monkeypatch.setenv("BATCH_PIPELINES_ALLOWED_ROOTS", str(other))
    assert prepare_batch(good(items=[{"path": str(other / "x.csv")}])).items


def test_too_many_items(samples: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BATCH_PIPELINES_MAX_ITEMS", "3")
    with pytest.raises(ManifestError, match="more than the maximum of 3"):
        prepare_batch(good(items=None, items_from={"glob": "data/samples/penguins_*"}))


def test_every_problem_is_reported_at_once(samples: Path) -> None:
    with pytest.raises(ManifestError) as info:
        prepare_batch(
            good(options={"target_table": "a-b", "mode": "x"}, items=[{"path": "/etc/passwd"}])
        )
    assert fields(info.value) == ["options.target_table", "options.mode", "items[0].path"]


def test_items_from_csv_and_sql(samples: Path, env) -> None:  # noqa: ANN001
    listing = env.data / "list.csv"
    listing.write_text(
        "id,path\nx,data/samples/penguins_2007.csv\ny,data/samples/penguins_2008.tsv\n"
    )
    p = prepare_batch(good(items=None, items_from={"csv": "data/list.csv"}))
    assert [i["item_id"] for i in p.items] == ["x", "y"]
    p = prepare_batch(
        good(
            items=None,
            items_from={"sql": "select 'data/samples/penguins_2007.csv' as path, 'q' as id"},
        )
    )
    assert p.items[0]["payload"] == {"id": "q", "path": "data/samples/penguins_2007.csv"}


def test_yaml_and_json_files(samples: Path, env) -> None:  # noqa: ANN001
    y = env.data / "m.yaml"
    y.write_text(
        "operation: import\noptions: {target_table: t}\n"
        "items:\n  - data/samples/penguins_2007.csv\n"
    )
    assert load_manifest(y).items == [{"path": "data/samples/penguins_2007.csv"}]
    j = env.data / "m.json"
    j.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(j)
    with pytest.raises(ManifestError, match="mapping"):
        load_manifest("- a\n- b\n")


def test_rejected_submit_registers_nothing(samples: Path, env, instance) -> None:  # noqa: ANN001
    with pytest.raises(ManifestError):
        submit_batch(
            good(items=[{"path": "data/samples/penguins_2007.csv"}, {"path": "/etc/passwd"}]),
            instance=instance,
        )
    assert instance.get_dynamic_partitions("import_items") == []
    if env.warehouse.exists():
        assert env.sql("select count(*) from batches")[0][0] == 0
        assert env.sql("select count(*) from batch_items")[0][0] == 0
