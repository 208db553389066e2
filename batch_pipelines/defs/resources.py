"""Dagster resources: ``warehouse`` (the paths every run uses) and ``annotator`` (picks the
annotate operation's backend when a run starts)."""

from __future__ import annotations

import os
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from batch_pipelines.core import config
from batch_pipelines.core.errors import ItemError
from batch_pipelines.operations.annotate.backends.base import Annotator
from batch_pipelines.operations.annotate.backends.local import LocalAnnotator
from batch_pipelines.operations.annotate.backends.openai import OpenAICompatibleAnnotator


class WarehouseResource(ConfigurableResource):
    """The DuckDB warehouse and data root used by operation runs.

    Both paths default to the environment (``BATCH_PIPELINES_WAREHOUSE``,
    ``BATCH_PIPELINES_DATA``) read when a run starts, never at import time.
    """

    data_root: str | None = None
    warehouse_path: str | None = None

    def paths(self) -> config.Paths:
        return config.get_paths(self.data_root, self.warehouse_path)


ENV_BACKEND = "BATCH_PIPELINES_ANNOTATOR"
BACKENDS = ("local", "openai")


class AnnotatorResource(ConfigurableResource, Annotator):
    """The ``annotator`` resource: ``backend`` (``local`` | ``openai``) picks the backend;
    unset, ``BATCH_PIPELINES_ANNOTATOR`` decides at run time (default ``local``). The other
    fields configure the openai backend (unset ones come from the environment)."""

    backend: str | None = Field(
        None, description="local | openai (default: $BATCH_PIPELINES_ANNOTATOR or local)"
    )
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    request_timeout_s: float = 30.0
    max_in_flight: int | None = Field(
        None, description="default: $BATCH_PIPELINES_LLM_MAX_IN_FLIGHT (16)"
    )
    requests_per_minute: float | None = Field(
        None, description="default: $BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE (600)"
    )
    burst: int | None = None
    max_retries: int = 4

    def backend_name(self) -> str:
        name = (self.backend or os.environ.get(ENV_BACKEND) or "local").strip().lower()
        if name not in BACKENDS:
            raise ItemError(
                f"annotator backend {name!r} is not one of {', '.join(BACKENDS)} "
                f"(resource field backend or {ENV_BACKEND})",
                category="permanent",
            )
        return name

    def delegate(self) -> Annotator:
        if self.backend_name() == "local":
            return LocalAnnotator()
        return OpenAICompatibleAnnotator(
            base_url=self.base_url,
            model=self.model,
            api_key=self.api_key,
            request_timeout_s=self.request_timeout_s,
            max_in_flight=self.max_in_flight,
            requests_per_minute=self.requests_per_minute,
            burst=self.burst,
            max_retries=self.max_retries,
        )

    def annotate(self, text: str, options: Any = None) -> dict[str, Any]:
        return self.delegate().annotate(text, options)

    def waits_on_io(self) -> bool:
        return self.backend_name() != "local"
