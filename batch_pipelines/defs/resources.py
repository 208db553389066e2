"""Dagster resources."""

from __future__ import annotations

from dagster import ConfigurableResource

from batch_pipelines.core import config


class WarehouseResource(ConfigurableResource):
    """The DuckDB warehouse and data root used by operation runs.

    Both paths default to the environment (``BATCH_PIPELINES_WAREHOUSE``,
    ``BATCH_PIPELINES_DATA``) read when a run starts, never at import time.
    """

    data_root: str | None = None
    warehouse_path: str | None = None

    def paths(self) -> config.Paths:
        return config.get_paths(self.data_root, self.warehouse_path)
