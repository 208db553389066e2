"""The project as users meet it: a real ``dagster dev`` (web server + daemon) on loopback with a
temporary DAGSTER_HOME and warehouse, batches submitted through the inbox and the CLI, run by
the daemon through the run queue, checked in DuckDB and in Dagster, and the web UI driven in
a real (Debian) Chromium.

Guards against what unit tests cannot see: a code location that fails to load under
``dagster dev``, a job or sensor missing from it, sensors that are not running by default, a
batch that the daemon never launches or that stays queued, results that land in DuckDB but
not as partition materializations (or the reverse), and a UI that does not show them.

One ``dagster dev`` serves the whole module; every operation registered in
``batch_pipelines.operations.REGISTRY`` at test time gets one batch (rows of ``CASES`` for
operations not registered yet are left out, not failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch_pipelines.app.devserver import DevServer, Env, dagster_dev, env_in_process, make_env
from batch_pipelines.app.queries import get_batch
from batch_pipelines.operations import OPERATION_NAMES, REGISTRY
from batch_pipelines_tests.conftest import CLI, SAMPLES

pytestmark = pytest.mark.e2e

FINISHED = ("completed", "completed_with_errors", "failed", "cancelled")
BATCHES_TIMEOUT_S = 150

# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One batch of an operation: how it is submitted, and what it must leave behind."""

    operation: str
    entry: str  # "inbox" (a manifest file dropped into data/inbox/) or "cli" (batch-pipelines)
    after_import: bool  # reads the table the import batch writes
    manifest: Callable[[Env, dict[str, str]], dict[str, Any]]
    check: Callable[[Env, str], None]


def _settings() -> dict[str, Any]:
    return {"max_retries": 1, "item_timeout_s": 60, "chunk_size": 10}


def _import_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "import",
        "name": "e2e import",
        "priority": "high",
        "options": {"target_table": "penguins", "mode": "append"},
        "settings": _settings(),
        "items": [
            {"id": "penguins_2007", "path": "data/samples/penguins_2007.csv"},
            {"id": "penguins_2008", "path": "data/samples/penguins_2008.tsv"},
        ],
    }


def _import_check(env: Env, batch_id: str) -> None:
    (n, items) = env.sql(
        "select count(*), count(distinct _item_id) from penguins where _batch_id = ?", [batch_id]
    )[0]
    assert n > 200 and items == 2
    assert env.sql("select count(*) from import_files where batch_id = ?", [batch_id]) == [(2,)]


def _validate_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "validate",
        "name": "e2e validate files",
        "options": {
            "rules": [
                {"type": "not_null", "column": "species"},
                {"type": "row_count", "min": 1},
                {
                    "type": "accepted_values",
                    "column": "species",
                    "values": ["Adelie", "Chinstrap", "Gentoo"],
                },
            ]
        },
        "settings": _settings(),
        "items": [
            {"id": "p2007", "path": "data/samples/penguins_2007.csv"},
            {"id": "p2008", "path": "data/samples/penguins_2008.tsv"},
        ],
    }


def _validate_check(env: Env, batch_id: str) -> None:
    rows = env.sql(
        "select item_id, count(*), bool_and(passed) from validation_results "
        "where batch_id = ? group by item_id order by item_id",
        [batch_id],
    )
    assert rows == [("p2007", 3, True), ("p2008", 3, True)]


def _annotate_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "annotate",
        "name": "e2e annotate",
        "settings": _settings(),
        "items": [
            {"id": "en_markets", "path": "data/samples/texts/en_markets.txt"},
            {
                "id": "inline_match",
                "text": "The home team won the football match after a late goal. The coach "
                "praised the players and the fans celebrated the victory in the stadium.",
            },
        ],
    }


def _annotate_check(env: Env, batch_id: str) -> None:
    rows = env.sql(
        "select item_id, language, category from annotations where batch_id = ? order by item_id",
        [batch_id],
    )
    assert [r[0] for r in rows] == ["en_markets", "inline_match"]
    assert all(r[1] == "en" for r in rows), rows
    assert dict((r[0], r[2]) for r in rows)["inline_match"] == "sports", rows


def _cleanup_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "cleanup",
        "name": "e2e cleanup dry run",
        "options": {"dry_run": True},
        "settings": _settings(),
        "items": [
            {"id": "old_exports", "kind": "old_files", "root": "exports", "older_than_days": 7}
        ],
    }


def _cleanup_check(env: Env, batch_id: str) -> None:
    rows = env.sql(
        "select object, dry_run from cleanup_log where batch_id = ? and item_id = 'old_exports'",
        [batch_id],
    )
    assert any(obj.endswith("stale.csv") and dry for obj, dry in rows), rows
    assert (env.data / "exports" / "old_e2e" / "stale.csv").exists()  # a dry run deletes nothing


def _export_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "export",
        "name": "e2e export",
        "options": {"format": "parquet"},
        "settings": _settings(),
        "items": [
            {"id": "penguins_parquet", "table": "penguins"},
            {
                "id": "adelie_csv",
                "query": "select * from penguins where species = 'Adelie'",
                "format": "csv",
            },
        ],
    }


def _export_check(env: Env, batch_id: str) -> None:
    assert env.sql("select count(*) from exports where batch_id = ?", [batch_id]) == [(2,)]
    files = sorted(p.name for p in (env.data / "exports" / batch_id).iterdir())
    assert any(f.endswith(".parquet") for f in files) and any(f.endswith(".csv") for f in files)


def _transform_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "transform",
        "name": "e2e transform",
        "settings": _settings(),
        "items": [
            {
                "id": "by_species",
                "source": "penguins",
                "target": "penguins_by_species",
                "sql": "select species, count(*) as n from source group by species",
            }
        ],
    }


def _transform_check(env: Env, batch_id: str) -> None:
    by_species = dict(env.sql("select species, n from penguins_by_species"))
    assert set(by_species) == {"Adelie", "Chinstrap", "Gentoo"}
    assert sum(by_species.values()) == env.sql("select count(*) from penguins")[0][0]
    assert env.sql("select count(*) from transforms where batch_id = ?", [batch_id]) == [(1,)]


def _report_manifest(env: Env, done: dict[str, str]) -> dict[str, Any]:
    return {
        "operation": "report",
        "name": "e2e report",
        "settings": _settings(),
        "items": [
            {"id": "import_batch", "kind": "batch", "batch_id": done["import"]},
            {"id": "penguins_profile", "kind": "table_profile", "table": "penguins"},
        ],
    }


def _report_check(env: Env, batch_id: str) -> None:
    rows = env.sql(
        "select item_id, html_path from reports where batch_id = ? order by item_id", [batch_id]
    )
    assert [r[0] for r in rows] == ["import_batch", "penguins_profile"]
    for _, html in rows:
        assert Path(html).is_file() and "<img" in Path(html).read_text()


CASES: dict[str, Case] = {
    c.operation: c
    for c in (
        Case("import", "inbox", False, _import_manifest, _import_check),
        Case("validate", "inbox", False, _validate_manifest, _validate_check),
        Case("annotate", "cli", False, _annotate_manifest, _annotate_check),
        Case("cleanup", "cli", False, _cleanup_manifest, _cleanup_check),
        Case("export", "cli", True, _export_manifest, _export_check),
        Case("transform", "inbox", True, _transform_manifest, _transform_check),
        Case("report", "cli", True, _report_manifest, _report_check),
    )
}


def test_cases_cover_every_operation() -> None:
    assert set(CASES) == set(OPERATION_NAMES)
    assert set(REGISTRY) <= set(CASES)


def _registered_cases() -> list[Case]:
    return [c for name, c in CASES.items() if name in REGISTRY]


# ------------------------------------------------------------------------ the fixtures


@pytest.fixture(scope="module")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with env_in_process(make_env(tmp_path_factory.mktemp("e2e"))) as env:
        shutil.copytree(SAMPLES, env.data / "samples")
        stale = env.data / "exports" / "old_e2e" / "stale.csv"
        stale.parent.mkdir(parents=True)
        stale.write_text("a,b\n1,2\n")
        month_ago = time.time() - 30 * 86400
        os.utime(stale, (month_ago, month_ago))
        yield env


@pytest.fixture(scope="module")
def dev(dev_env: Env) -> Iterator[DevServer]:
    with dagster_dev(dev_env) as server:
        yield server


DAEMON_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }
"""


def _daemons_healthy(server: DevServer) -> bool:
    statuses = server.graphql(DAEMON_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
    by_type = {s["daemonType"]: s["healthy"] for s in statuses}
    return bool(by_type.get("SENSOR") and by_type.get("QUEUED_RUN_COORDINATOR"))


def _submit_inbox(env: Env, case: Case, manifest: dict[str, Any]) -> str:
    name = f"e2e_{case.operation}.yaml"
    tmp = env.data / "inbox" / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
    os.replace(tmp, env.data / "inbox" / name)
    return name


def _inbox_batch_id(env: Env, name: str) -> str | None:
    rejected = env.data / "inbox" / "rejected" / f"{name}.error.json"
    if rejected.exists():
        raise AssertionError(f"inbox rejected {name}: {rejected.read_text()}")
    processed = env.data / "inbox" / "processed"
    for p in processed.glob(f"*__{name}") if processed.is_dir() else ():
        return p.name.split("__", 1)[0]
    return None


def _submit_cli(env: Env, case: Case, manifest: dict[str, Any]) -> str:
    path = env.root / f"e2e_{case.operation}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    p = subprocess.run(
        [CLI, "submit", path.name],
        env={**env.environ(), "COLUMNS": "200"},
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, f"{case.operation}: {p.stdout}\n{p.stderr}"
    # Without --wait the CLI only registers the batch: the daemon's dispatcher runs it.
    assert "no Dagster daemon is running" not in p.stdout, p.stdout
    m = re.search(r"submitted (\S+)", p.stdout)
    assert m, p.stdout
    return m.group(1)


@dataclass
class Ran:
    batches: dict[str, str]  # operation -> batch_id
    seconds: float


@pytest.fixture(scope="module")
def ran(dev: DevServer, dev_env: Env) -> Ran:
    """One batch of every registered operation, submitted through the inbox and the CLI
    while ``dagster dev`` runs, waited for until all are finished."""
    env = dev_env
    started = time.monotonic()
    dev.wait_for(lambda: _daemons_healthy(dev), 90, "the sensor and run-queue daemons")
    batches: dict[str, str] = {}
    inbox_pending: dict[str, str] = {}

    def submit(case: Case) -> None:
        manifest = case.manifest(env, batches)
        if case.entry == "inbox":
            inbox_pending[case.operation] = _submit_inbox(env, case, manifest)
        else:
            batches[case.operation] = _submit_cli(env, case, manifest)

    def collect_inbox() -> bool:
        for op, name in list(inbox_pending.items()):
            batch_id = _inbox_batch_id(env, name)
            if batch_id:
                batches[op] = batch_id
                del inbox_pending[op]
        return not inbox_pending

    def finished(op: str) -> bool:
        return op in batches and (get_batch(batches[op]) or {}).get("status") in FINISHED

    cases = _registered_cases()
    for case in (c for c in cases if not c.after_import):
        submit(case)
    dev.wait_for(collect_inbox, 60, f"the inbox sensor to take {sorted(inbox_pending)}")
    if any(c.after_import for c in cases):
        assert "import" in REGISTRY
        dev.wait_for(
            lambda: finished("import"), BATCHES_TIMEOUT_S, f"import batch {batches['import']}"
        )
        for case in (c for c in cases if c.after_import):
            submit(case)
        dev.wait_for(collect_inbox, 60, f"the inbox sensor to take {sorted(inbox_pending)}")

    def all_finished() -> bool:
        return all(finished(c.operation) for c in cases)

    def progress() -> str:
        return ", ".join(
            f"{op}={(get_batch(b) or {}).get('status')}" for op, b in sorted(batches.items())
        )

    def runs_done() -> bool:
        # The ledger says "finished" when the last item is recorded; the chunk run itself
        # ends a moment later.
        return all(
            run["status"] in RUN_DONE
            for batch_id in batches.values()
            for run in _runs(dev, batch_id)
        )

    try:
        dev.wait_for(all_finished, BATCHES_TIMEOUT_S, "every batch to finish", interval=2)
        dev.wait_for(runs_done, 60, "the chunk runs to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nbatches: {progress()}") from None
    return Ran(batches, time.monotonic() - started)


# --------------------------------------------------------------------------- the tests


def test_code_location_has_every_job_sensor_and_schedule(dev: DevServer) -> None:
    from batch_pipelines.definitions import defs

    repo = dev.location()
    jobs = {j["name"] for j in repo["jobs"]}
    expected_jobs = {f"{op}_job" for op in REGISTRY} | {"submit_batch"}
    assert expected_jobs <= jobs, expected_jobs - jobs
    assert {j.name for j in defs.jobs or []} <= jobs

    sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    assert sensors["inbox_sensor"] == "RUNNING"
    assert sensors["batch_dispatcher"] == "RUNNING"
    for s in defs.sensors or []:
        want = "RUNNING" if s.default_status.value == "RUNNING" else "STOPPED"
        assert sensors.get(s.name) == want, (s.name, sensors)

    schedules = {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    for s in defs.schedules or []:
        want = "RUNNING" if s.default_status.value == "RUNNING" else "STOPPED"
        assert schedules.get(s.name) == want, (s.name, schedules)


RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status jobName tags { key value } } }
    ... on PythonError { message }
  }
}
"""

PARTITION_STATS_QUERY = """
query Stats($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      groupName
      partitionStats { numMaterialized numFailed numPartitions }
    }
  }
}
"""


RUN_DONE = ("SUCCESS", "FAILURE", "CANCELED")


def _runs(dev: DevServer, batch_id: str) -> list[dict[str, Any]]:
    data = dev.graphql(RUNS_QUERY, {"filter": {"tags": [{"key": "batch/id", "value": batch_id}]}})
    return data["runsOrError"]["results"]


def test_one_batch_of_every_operation_through_inbox_cli_and_daemon(
    dev: DevServer, dev_env: Env, ran: Ran
) -> None:
    from dagster import AssetKey, DagsterInstance

    env = dev_env
    assert set(ran.batches) == set(REGISTRY), ran.batches
    print(f"\n{len(ran.batches)} batches finished {ran.seconds:.0f}s after the daemon was up")

    instance = DagsterInstance.get()
    try:
        for op, batch_id in sorted(ran.batches.items()):
            case = CASES[op]
            batch = get_batch(batch_id)
            assert batch is not None
            if batch["status"] != "completed":
                failed = env.sql(
                    "select item_id, error_category, error from batch_items "
                    "where batch_id = ? and status <> 'succeeded'",
                    [batch_id],
                )
                raise AssertionError(f"{op}: {batch}\nitems not succeeded: {failed}")
            assert batch["source"] == case.entry
            assert batch["failed_items"] == 0
            assert batch["succeeded_items"] + batch["skipped_items"] == batch["total_items"]

            items = env.sql(
                "select partition_key, status from batch_items where batch_id = ?", [batch_id]
            )
            succeeded = {k for k, s in items if s == "succeeded"}
            assert succeeded, (op, items)

            # The operation's own rows in DuckDB, and rows in its (main) detail table.
            case.check(env, batch_id)
            tables = REGISTRY[op].detail_tables
            if tables:
                n = env.sql(f'select count(*) from "{tables[0]}" where batch_id = ?', [batch_id])
                assert n[0][0] >= 1, (op, tables[0])

            # One partition per item registered, each succeeded one materialized.
            asset = f"{op}_items"
            keys = set(instance.get_dynamic_partitions(asset))
            assert {k for k, _ in items} <= keys
            assert succeeded <= instance.get_materialized_partitions(AssetKey(asset))
            node = dev.graphql(PARTITION_STATS_QUERY, {"key": {"path": [asset]}})
            stats = node["assetNodeOrError"]["partitionStats"]
            assert stats["numMaterialized"] >= len(succeeded), (op, stats)
            assert stats["numPartitions"] >= len(items) and stats["numFailed"] == 0

            # Chunk runs were launched by the dispatcher sensor through the daemon's queue.
            # A crashed worker's run is re-executed (run_retries): each chunk needs one success.
            runs = [(r, {t["key"]: t["value"] for t in r["tags"]}) for r in _runs(dev, batch_id)]
            summary = [
                (r["status"], t.get("batch/chunk"), t.get("dagster/parent_run_id")) for r, t in runs
            ]
            assert runs, op
            chunks = {t.get("batch/chunk") for _, t in runs}
            ok = {t.get("batch/chunk") for r, t in runs if r["status"] == "SUCCESS"}
            assert ok == chunks, (op, summary)
            for run, tags in runs:
                assert run["jobName"] == f"{op}_job"
                launched = tags.get("dagster/sensor_name") == "batch_dispatcher"
                assert launched or tags.get("dagster/parent_run_id"), (op, tags)
            # Each chunk run that succeeded recorded what it cost (queued by the dispatcher, so
            # with a queue wait) and is tagged with the batch's correlation id.
            costs = env.sql(
                "select run_id, queue_wait_s, cpu_user_s + cpu_system_s, peak_rss_mb "
                "from run_metrics where batch_id = ?",
                [batch_id],
            )
            done = {r["runId"] for r, _ in runs if r["status"] == "SUCCESS"}
            assert done <= {c[0] for c in costs}, (op, costs)
            assert all(c[1] is not None and c[1] >= 0 and c[3] > 0 for c in costs), (op, costs)
            (correlation,) = env.sql(
                "select correlation_id from batches where batch_id = ?", [batch_id]
            )[0]
            assert {t.get("batch/correlation_id") for r, t in runs if r["runId"] in done} == {
                correlation
            }, op
    finally:
        instance.dispose()


# ------------------------------------------------------------------------ the web UI

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPORT_GROUPS = ("analytics", "reports")

ASSET_NODES_QUERY = "{ assetNodes { assetKey { path } groupName } }"
LATEST_METADATA_QUERY = """
query Latest($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        metadataEntries { label __typename ... on MarkdownMetadataEntry { mdStr } }
      }
    }
  }
}
"""


def _report_with_chart(dev: DevServer) -> tuple[str, str] | None:
    """(asset name, metadata label) of a report asset whose latest materialization has a
    Markdown entry with an embedded PNG chart, if one exists yet."""
    nodes = dev.graphql(ASSET_NODES_QUERY)["assetNodes"]
    for node in nodes:
        if node["groupName"] not in REPORT_GROUPS:
            continue
        data = dev.graphql(LATEST_METADATA_QUERY, {"key": {"path": node["assetKey"]["path"]}})
        for mat in data["assetOrError"].get("assetMaterializations") or []:
            for entry in mat["metadataEntries"]:
                if "data:image/png" in (entry.get("mdStr") or ""):
                    return "/".join(node["assetKey"]["path"]), entry["label"]
    return None


def _has_report_assets(dev: DevServer) -> bool:
    return any(
        n["groupName"] in REPORT_GROUPS for n in dev.graphql(ASSET_NODES_QUERY)["assetNodes"]
    )


def test_web_ui_shows_assets_partitions_and_report_chart(
    dev: DevServer, dev_env: Env, ran: Ran, tmp_path: Path
) -> None:
    from dagster import DagsterInstance
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian chromium is missing: run `make browser-deps` (as root)"
    shots = tmp_path / "screenshots"
    shots.mkdir()

    report = None
    if _has_report_assets(dev):
        # The analytics sensors refresh the report assets once the batches have finished.
        report = dev.wait_for(
            lambda: _report_with_chart(dev), 120, "a report asset with a chart", interval=3
        )
    instance = DagsterInstance.get()
    try:
        keys = instance.get_dynamic_partitions("import_items")
    finally:
        instance.dispose()
    key = next(k for k in keys if "~penguins_2007~" in k)

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1600},
        )
        try:
            page = browser.new_page()
            # Generous: the UI renders slowly on a loaded 2-core CI machine.
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            # The UI greets a new browser with a "Join the Dagster community" dialog.
            skip = page.get_by_role("button", name="Skip")
            page.add_locator_handler(skip, lambda loc: loc.click())

            def shot(name: str) -> None:
                # The dialog may appear (or the locator handler may dismiss it) at any moment:
                # never wait for a button that may already be gone.
                if skip.is_visible():
                    with contextlib.suppress(PlaywrightTimeoutError):
                        skip.click(timeout=3_000)
                page.screenshot(path=str(shots / f"{name}.png"))

            # 1. The asset graph of the operations group: one node per operation asset,
            #    each with its partitions filled.
            page.goto(f"{dev.url}/locations/batch_pipelines/asset-groups/operations")
            for op in REGISTRY:
                expect(page.get_by_text(f"{op}_items", exact=True).first).to_be_visible()
            expect(page.get_by_text("100% filled")).to_have_count(len(REGISTRY))
            shot("1_asset_graph")

            # 2. The partitioned import asset: its per-item partitions, and one item's
            #    materialization metadata.
            page.goto(f"{dev.url}/assets/import_items?view=partitions")
            expect(page.get_by_text("Materialized (2)")).to_be_visible()
            expect(page.get_by_text("Failed (0)")).to_be_visible()
            shot("2_import_items_partitions")
            page.goto(
                f"{dev.url}/assets/import_items?view=partitions&partition={urllib.parse.quote(key)}"
            )
            expect(page.get_by_text("sha256", exact=True).first).to_be_visible()
            expect(page.get_by_text("penguins_2007", exact=True).first).to_be_visible()
            expect(page.get_by_text("target_table", exact=True).first).to_be_visible()
            expect(page.get_by_text("110", exact=True).first).to_be_visible()  # rows of the file
            shot("3_import_item_metadata")

            # 3. A report asset's metadata with its chart (rendered from Markdown).
            if report is not None:
                asset, label = report
                page.goto(f"{dev.url}/assets/{asset}")
                expect(page.get_by_text(label, exact=True).first).to_be_visible()
                page.get_by_text("[Show Markdown]").first.click()
                chart = page.locator("img[src^='data:image/png']").first
                expect(chart).to_be_visible()
                width, height = chart.evaluate("e => [e.naturalWidth, e.naturalHeight]")
                assert width > 100 and height > 100
                text = page.locator("body").inner_text()
                assert any(batch_id in text for batch_id in ran.batches.values()), text[-2000:]
                shot("4_report_chart")
        finally:
            browser.close()
    print(f"\nscreenshots: {shots}")


ANALYTICS_RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { status tags { key value } } }
  }
}
"""


def _analytics_done(dev: DevServer, batch_ids: list[str]) -> list[str]:
    """The batches of ``batch_ids`` that have no succeeded report run focused on them yet."""
    data = dev.graphql(ANALYTICS_RUNS_QUERY, {"filter": {"pipelineName": "analytics_reports_job"}})
    done = {
        t["value"]
        for r in data["runsOrError"]["results"]
        if r["status"] == "SUCCESS"
        for t in r["tags"]
        if t["key"] == "analytics/batch_id"
    }
    return [b for b in batch_ids if b not in done]


def test_demo_runs_through_the_daemon_and_reports_follow_every_batch(
    dev: DevServer, dev_env: Env, ran: Ran
) -> None:
    env = {**dev_env.environ(), "COLUMNS": "200"}
    p = subprocess.run(
        [CLI, "submit", "import", "--items", "data/samples/penguins_2007.csv"]
        + ["--option", "target_table=in_process_t", "--in-process", "--json"],
        env=env,
        cwd=dev_env.root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    in_process = json.loads(p.stdout)["batch_id"]
    p = subprocess.run(
        [CLI, "demo", "--json"],
        env=env,
        cwd=dev_env.root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    demo = [b["batch_id"] for b in json.loads(p.stdout)]
    assert len(demo) == 7
    for batch_id in demo:
        runs = _runs(dev, batch_id)
        assert runs, batch_id
        for run in runs:
            tags = {t["key"]: t["value"] for t in run["tags"]}
            assert tags.get("dagster/sensor_name") == "batch_dispatcher", (batch_id, tags)
    # Every finished batch gets its report run, however it ran: the daemon's (the module's
    # batches, the demo's) or in-process (the CLI's --in-process), without the 15-minute
    # schedule.
    everything = [*ran.batches.values(), *demo, in_process]
    dev.wait_for(
        lambda: not _analytics_done(dev, everything),
        300,
        "a succeeded report run for every batch",
        interval=3,
    )


SENSOR_TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { status ticks(limit: 20) { status skipReason } } }
  }
}
"""


def test_scheduled_template_is_submitted_by_the_daemon(dev: DevServer, dev_env: Env) -> None:
    """A template saved with a daily schedule and catch_up: the recurring_templates sensor of
    the running daemon submits today's tick at once (no wait for a cron tick), the batch
    records its template and runs, and the sensor's tick in the UI names the batch."""
    env = dev_env
    dev.wait_for(lambda: _daemons_healthy(dev), 90, "the sensor and run-queue daemons")
    template = {
        "operation": "validate",
        "options": {"rules": [{"type": "row_count", "min": 1}]},
        "settings": _settings(),
        "items": [{"id": "p2007", "path": "data/samples/penguins_2007.csv"}],
        "schedule": "0 0 * * *",
        "timezone": "Europe/Paris",
        "catch_up": True,
    }
    (env.root / "daily.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    p = subprocess.run(
        [CLI, "template", "save", "daily-check", "daily.yaml"],
        env={**env.environ(), "COLUMNS": "200"},
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr

    def submitted() -> list[tuple]:
        return env.sql(
            "select batch_id, source, idempotency_key from batches where template = ?",
            ["daily-check"],
        )

    [(batch_id, source, key)] = dev.wait_for(submitted, 60, "the scheduled template's batch")
    assert source == "schedule" and key.startswith("template:daily-check:")
    assert key.endswith("T00:00")  # midnight in Paris, the template's zone
    dev.wait_for(lambda: (get_batch(batch_id) or {}).get("status") == "completed", 60, "its batch")
    selector = {**dev.repository_selector(), "sensorName": "recurring_templates"}
    state = dev.graphql(SENSOR_TICKS_QUERY, {"selector": selector})["sensorOrError"]
    assert state["sensorState"]["status"] == "RUNNING"
    reasons = [t["skipReason"] or "" for t in state["sensorState"]["ticks"]]
    assert any(batch_id in r for r in reasons), reasons
