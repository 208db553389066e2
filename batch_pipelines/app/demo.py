"""``make demo`` / ``batch-pipelines demo``: batches over the bundled samples, one after
the other: through the Dagster daemon when one serves this DAGSTER_HOME (its dispatcher
launches the chunk runs, so they show in the UI like any other batch's), else in this
process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console

from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.instance import daemon_running, get_instance
from batch_pipelines.app.queries import get_batch
from batch_pipelines.app.samples import write_samples
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import config, ledger

if TYPE_CHECKING:
    from dagster import Definitions


def demo_manifests() -> list[dict[str, Any]]:
    """The demo batches, in the order they run."""
    return [
        {
            "operation": "import",
            "name": "demo: import penguin samples",
            "options": {"target_table": "demo_penguins", "mode": "append"},
            "settings": {"chunk_size": 10, "max_retries": 1},
            "items_from": {"glob": "data/samples/penguins_*"},
        },
        {
            "operation": "validate",
            "name": "demo: validate penguins (table and a sample file)",
            "options": {
                "rules": [
                    {"type": "row_count", "min": 50},
                    {"type": "not_null", "column": "species"},
                    {"type": "unique", "columns": ["id"]},
                    {
                        "type": "accepted_values",
                        "column": "species",
                        "values": ["Adelie", "Chinstrap", "Gentoo"],
                    },
                ]
            },
            "items": [
                {
                    "id": "demo_penguins",
                    "table": "demo_penguins",
                    "rules": [
                        {"type": "regex", "column": "sex", "pattern": "^(male|female)$"},
                        {
                            "type": "range",
                            "column": "body_mass_g",
                            "min": 2500,
                            "max": 6000,
                            "severity": "warn",
                        },
                        {"type": "sql_predicate", "predicate": "bill_length_mm > bill_depth_mm"},
                    ],
                },
                {
                    "id": "penguins_2009_file",
                    "path": "data/samples/penguins_2009.json",
                    "rules": [{"type": "column_types", "columns": {"id": "BIGINT"}}],
                },
            ],
        },
        {
            "operation": "transform",
            "name": "demo: clean, deduplicate and summarise penguins",
            "items": [
                {
                    "source": "demo_penguins",
                    "target": "demo_penguins_clean",
                    "transform": "normalize_columns",
                    "transform_options": {"casts": {"year": "integer"}},
                },
                {
                    "source": "demo_penguins",
                    "target": "demo_penguins_latest",
                    "transform": "dedupe_latest",
                    "transform_options": {"key_columns": ["species", "island"], "order_by": "id"},
                },
                {
                    "source": "demo_penguins",
                    "target": "demo_species_stats",
                    "sql": "select species, island, count(*) as penguins, "
                    "round(avg(body_mass_g)) as avg_body_mass_g from source group by all "
                    "order by all",
                },
            ],
        },
        {
            "operation": "annotate",
            "name": "demo: annotate sample texts in seven languages",
            "options": {"max_keywords": 5, "summary_max_chars": 200},
            "items_from": {"glob": "data/samples/texts/*"},
        },
        {
            "operation": "export",
            "name": "demo: export cleaned penguins and species stats",
            "items": [
                {"id": "penguins_clean", "table": "demo_penguins_clean", "format": "parquet"},
                {"id": "species_stats", "table": "demo_species_stats", "format": "csv"},
                {
                    "id": "heavy_gentoos",
                    "query": "select id, island, body_mass_g from demo_penguins_clean "
                    "where species = 'Gentoo' and body_mass_g > 5500 order by id",
                    "format": "ndjson",
                },
            ],
        },
        {
            "operation": "report",
            "name": "demo: reports on the import batch, the clean table and all imports",
            "items_from": {
                "sql": "select 'batch' as kind, batch_id, null as \"table\", null as operation "
                "from (select batch_id from batches where operation = 'import' "
                "order by created_at desc limit 1) "
                "union all select 'table_profile', null, 'demo_penguins_clean', null "
                "union all select 'operation_window', null, null, 'import'"
            },
        },
        {
            "operation": "cleanup",
            "name": "demo: cleanup dry run (lists what would go)",
            "options": {"dry_run": True},
            "items": [
                {"kind": "old_batches", "older_than_days": 30},
                {"kind": "old_files", "root": "exports", "older_than_days": 30},
                {"kind": "old_files", "root": "reports", "older_than_days": 30},
                {"kind": "orphan_files", "root": "exports"},
                {"kind": "temp_tables"},
                {"kind": "staging", "older_than_days": 1},
            ],
        },
    ]


DAEMON_CHECK_S = 5.0


class DaemonGoneError(RuntimeError):
    """The daemon running the demo's batches stopped."""


def run_demo(
    defs: Definitions, quiet: bool = False, in_process: bool = False
) -> list[dict[str, Any]]:
    """Submit the demo batches and run each to its end, through the daemon if one runs
    (unless ``in_process``), else here with the jobs of ``defs``; returns their final ledger
    rows. Raises :class:`DaemonGoneError` if the daemon stops in the middle."""
    console = Console(stderr=True, quiet=quiet)
    paths = config.get_paths()
    if not any(paths.samples.glob("penguins_*")):
        write_samples(paths.samples)
    instance = get_instance()
    daemon = None if in_process else daemon_running(instance)
    if daemon:
        console.print("the Dagster daemon runs the demo batches: follow them in the UI")
    results = []
    for manifest in demo_manifests():
        batch_id = submit_batch(manifest, instance=instance, source="demo")
        if daemon:
            batch = wait_for_daemon(batch_id, instance)
        else:
            batch = run_batch_in_process(batch_id, instance, defs)
        results.append(batch)
        console.print(
            f"{batch['operation']:<10} {batch_id}  {batch['status']:<22} "
            f"{batch['succeeded_items']} ok, {batch['failed_items']} failed, "
            f"{batch['skipped_items']} skipped of {batch['total_items']}"
        )
    return results


def wait_for_daemon(batch_id: str, instance: Any, poll_s: float = 0.5) -> dict[str, Any]:  # noqa: ANN401
    """The batch once it ends, run by the daemon; :class:`DaemonGoneError` if it stops."""
    checked = time.monotonic()
    while True:
        batch = get_batch(batch_id)
        if batch is None or batch["status"] in (
            *ledger.TERMINAL_BATCH_STATUSES,
            *ledger.HALTED_BATCH_STATUSES,
        ):
            return batch
        if time.monotonic() - checked >= DAEMON_CHECK_S:
            checked = time.monotonic()
            daemon = daemon_running(instance)
            if not daemon:
                raise DaemonGoneError(
                    f"the Dagster daemon stopped while it ran {batch_id}: {daemon.reason}"
                )
        time.sleep(poll_s)
