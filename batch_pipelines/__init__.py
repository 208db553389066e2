"""batch_pipelines: bulk operations as Dagster asset jobs with a DuckDB ledger.

The Python API::

    from batch_pipelines import submit_batch, get_batch, cancel_batch, retry_batch
    from batch_pipelines import save_template, submit_template, list_templates

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
    from batch_pipelines.app.templates import (
        TemplateError,
        TemplateNotFound,
        delete_template,
        get_template,
        list_templates,
        pause_template,
        resume_template,
        save_template,
        submit_template,
    )
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
    "TemplateError": "batch_pipelines.app.templates",
    "TemplateNotFound": "batch_pipelines.app.templates",
    "delete_template": "batch_pipelines.app.templates",
    "get_template": "batch_pipelines.app.templates",
    "list_templates": "batch_pipelines.app.templates",
    "pause_template": "batch_pipelines.app.templates",
    "resume_template": "batch_pipelines.app.templates",
    "save_template": "batch_pipelines.app.templates",
    "submit_template": "batch_pipelines.app.templates",
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
    "TemplateError",
    "TemplateNotFound",
    "cancel_batch",
    "change_priority",
    "delete_batch",
    "delete_template",
    "diff_batches",
    "get_batch",
    "get_batch_metrics",
    "get_items",
    "get_stats",
    "get_template",
    "hold_all",
    "list_batches",
    "list_templates",
    "load_manifest",
    "pause_batch",
    "pause_template",
    "prepare_batch",
    "release_all",
    "resume_batch",
    "resume_template",
    "retry_batch",
    "rollback_batch",
    "save_template",
    "submit_batch",
    "submit_template",
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
