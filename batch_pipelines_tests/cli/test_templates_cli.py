"""``batch-pipelines template ...`` and ``submit --template NAME --set key=value``, in-process:
a bad manifest, name, cron or zone exits 2 naming the field with nothing saved; a bad --set
exits 2 naming the key; a missing template exits 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from batch_pipelines.app.queries import get_batch
from batch_pipelines.cli.main import main

TEMPLATE = {
    "operation": "import",
    "options": {"target_table": "penguins"},
    "items": ["data/samples/penguins_2007.csv"],
    "schedule": "30 6 * * 1-5",
    "timezone": "Europe/Paris",
}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), terminal_width=200)


@pytest.fixture
def here(samples: Path, env, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: ANN001
    monkeypatch.chdir(env.root)
    return env.root


def _write(root: Path, name: str, data: dict) -> str:
    (root / name).write_text(yaml.safe_dump(data))
    return name


def test_save_list_show_pause_resume_delete(here: Path) -> None:
    path = _write(here, "t.yaml", TEMPLATE)
    saved = run("template", "save", "penguins", path)
    assert saved.exit_code == 0, saved.output
    assert "30 6 * * 1-5" in saved.output and "Europe/Paris" in saved.output
    listed = run("template", "list")
    assert "penguins" in listed.output and "Europe/Paris" in listed.output
    shown = json.loads(run("template", "show", "penguins", "--json").output)
    assert shown["manifest"]["options"] == {"target_table": "penguins"} and shown["next_tick"]
    assert "schedule is paused" in run("template", "pause", "penguins").output
    assert "(paused)" in run("template", "list").output
    paused = json.loads(run("template", "show", "penguins", "--json").output)
    assert paused["paused"] and paused["next_tick"] is None
    assert run("template", "resume", "penguins").exit_code == 0
    assert json.loads(run("template", "list", "--json").output)[0]["paused"] is False
    assert run("template", "delete", "penguins").exit_code == 0
    for verb in ("show", "delete", "pause", "resume"):
        missing = run("template", verb, "penguins")
        assert missing.exit_code == 1 and "no template named 'penguins'" in missing.output
    assert "no templates" in run("template", "list").output


def test_bad_template_exits_2_naming_the_field_and_saves_nothing(here: Path) -> None:
    for data, args, field in (
        ({**TEMPLATE, "options": {}}, (), "options.target_table"),
        ({**TEMPLATE, "schedule": "0 6 * *"}, (), "schedule"),
        (TEMPLATE, ("--timezone", "Nowhere/Land"), "timezone"),
        ({**TEMPLATE, "colour": "blue"}, (), "colour"),
    ):
        result = run("template", "save", "t", _write(here, "bad.yaml", data), "--json", *args)
        assert result.exit_code == 2, result.output
        assert field in [p["field"] for p in json.loads(result.output)["problems"]]
    result = run("template", "save", "bad name!", _write(here, "ok.yaml", TEMPLATE))
    assert result.exit_code == 2 and "not a template name" in result.output
    assert json.loads(run("template", "list", "--json").output) == []


def test_submit_from_a_template_with_overrides(here: Path) -> None:
    plain = {k: v for k, v in TEMPLATE.items() if k not in ("schedule", "timezone")}
    assert run("template", "save", "p", _write(here, "p.yaml", plain)).exit_code == 0
    result = run(
        "submit",
        "--template",
        "p",
        "--set",
        "options.mode=replace",
        "--set",
        "settings.chunk_size=5",
        "--priority",
        "high",
        "--json",
    )
    assert result.exit_code == 0, result.output
    batch = get_batch(json.loads(result.output)["batch_id"])
    assert batch["template"] == "p" and batch["priority"] == "high"
    assert batch["options"]["mode"] == "replace" and batch["settings"]["chunk_size"] == 5

    for sets, field in (
        (("--set", "settings.chunk_size=many"), "settings.chunk_size"),
        (("--set", "options.target_table.x=1"), "options.target_table.x"),
        (("--set", "nonsense"), "--set"),
    ):
        bad = run("submit", "--template", "p", "--json", *sets)
        assert bad.exit_code == 2, bad.output
        assert [p["field"] for p in json.loads(bad.output)["problems"]] == [field]
    missing = run("submit", "--template", "nope")
    assert missing.exit_code == 1 and "no template named 'nope'" in missing.output
    both = run("submit", "p.yaml", "--template", "p")
    assert both.exit_code == 2 and "--template takes its manifest" in both.output
    assert run("submit", "p.yaml", "--set", "a=1").exit_code == 2
    assert run("submit").exit_code == 2
