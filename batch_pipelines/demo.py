"""``make demo`` / ``batch-pipelines demo``: batches over the bundled samples, in-process."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from batch_pipelines import config
from batch_pipelines.instance import get_instance
from batch_pipelines.local import run_batch_in_process
from batch_pipelines.samples import write_samples
from batch_pipelines.service import submit_batch


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
    ]


def run_demo(quiet: bool = False) -> list[dict[str, Any]]:
    console = Console(stderr=True, quiet=quiet)
    paths = config.get_paths()
    if not any(paths.samples.glob("penguins_*")):
        write_samples(paths.samples)
    instance = get_instance()
    results = []
    for manifest in demo_manifests():
        batch_id = submit_batch(manifest, instance=instance, source="demo")
        batch = run_batch_in_process(batch_id, instance)
        results.append(batch)
        console.print(
            f"{batch['operation']:<10} {batch_id}  {batch['status']:<22} "
            f"{batch['succeeded_items']} ok, {batch['failed_items']} failed, "
            f"{batch['skipped_items']} skipped of {batch['total_items']}"
        )
    return results
