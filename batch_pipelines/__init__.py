"""batch_pipelines: bulk operations as Dagster asset jobs with a DuckDB ledger.

The Python API::

    from batch_pipelines import submit_batch, get_batch, cancel_batch, retry_batch

The names load on first use, so ``import batch_pipelines`` (and with it every submodule,
the CLI included) loads neither Dagster nor pandas until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch_pipelines.app.control import (
        ControlError,
        cancel_batch,
        pause_batch,
        resume_batch,
        retry_batch,
    )
    from batch_pipelines.app.lifecycle import delete_batch, rollback_batch
    from batch_pipelines.app.queries import get_batch, get_items, list_batches
    from batch_pipelines.app.queue import change_priority, hold_all, release_all
    from batch_pipelines.app.submit import RateLimitError, prepare_batch, submit_batch
    from batch_pipelines.core.analytics import get_batch_metrics, get_stats
    from batch_pipelines.core.diff import DiffError, diff_batches
    from batch_pipelines.core.manifest import Manifest, ManifestError, load_manifest

_HOMES = {
    "ControlError": "batch_pipelines.app.control",
    "cancel_batch": "batch_pipelines.app.control",
    "pause_batch": "batch_pipelines.app.control",
    "resume_batch": "batch_pipelines.app.control",
    "retry_batch": "batch_pipelines.app.control",
    "delete_batch": "batch_pipelines.app.lifecycle",
    "rollback_batch": "batch_pipelines.app.lifecycle",
    "change_priority": "batch_pipelines.app.queue",
    "hold_all": "batch_pipelines.app.queue",
    "release_all": "batch_pipelines.app.queue",
    "get_batch": "batch_pipelines.app.queries",
    "get_items": "batch_pipelines.app.queries",
    "list_batches": "batch_pipelines.app.queries",
    "RateLimitError": "batch_pipelines.app.submit",
    "prepare_batch": "batch_pipelines.app.submit",
    "submit_batch": "batch_pipelines.app.submit",
    "get_batch_metrics": "batch_pipelines.core.analytics",
    "get_stats": "batch_pipelines.core.analytics",
    "DiffError": "batch_pipelines.core.diff",
    "diff_batches": "batch_pipelines.core.diff",
    "Manifest": "batch_pipelines.core.manifest",
    "ManifestError": "batch_pipelines.core.manifest",
    "load_manifest": "batch_pipelines.core.manifest",
}

__all__ = [
    "ControlError",
    "DiffError",
    "Manifest",
    "ManifestError",
    "RateLimitError",
    "cancel_batch",
    "change_priority",
    "delete_batch",
    "diff_batches",
    "get_batch",
    "get_batch_metrics",
    "get_items",
    "get_stats",
    "hold_all",
    "list_batches",
    "load_manifest",
    "pause_batch",
    "prepare_batch",
    "release_all",
    "resume_batch",
    "retry_batch",
    "rollback_batch",
    "submit_batch",
]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whichever public object is named
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
