"""batch_pipelines: bulk operations as Dagster asset jobs with a DuckDB ledger.

The Python API::

    from batch_pipelines import submit_batch, get_batch, cancel_batch, retry_batch
"""

from batch_pipelines.app.control import (
    ControlError,
    cancel_batch,
    pause_batch,
    resume_batch,
    retry_batch,
)
from batch_pipelines.app.queries import get_batch, get_items, list_batches
from batch_pipelines.app.submit import prepare_batch, submit_batch
from batch_pipelines.core.analytics import get_batch_metrics, get_stats
from batch_pipelines.core.manifest import Manifest, ManifestError, load_manifest

__all__ = [
    "ControlError",
    "Manifest",
    "ManifestError",
    "cancel_batch",
    "get_batch",
    "get_batch_metrics",
    "get_items",
    "get_stats",
    "list_batches",
    "load_manifest",
    "pause_batch",
    "prepare_batch",
    "resume_batch",
    "retry_batch",
    "submit_batch",
]
