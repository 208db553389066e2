"""batch_pipelines: bulk operations as Dagster asset jobs with a DuckDB ledger."""

from batch_pipelines.analytics import get_batch_metrics, get_stats
from batch_pipelines.manifest import Manifest, ManifestError, load_manifest
from batch_pipelines.service import get_batch, get_items, list_batches, prepare_batch, submit_batch

__all__ = [
    "Manifest",
    "ManifestError",
    "get_batch",
    "get_batch_metrics",
    "get_items",
    "get_stats",
    "list_batches",
    "load_manifest",
    "prepare_batch",
    "submit_batch",
]
