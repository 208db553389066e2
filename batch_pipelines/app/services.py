"""What the application lends every operation through ``ItemContext.resources``, besides the
Dagster resources the operation declares (the keys are in :mod:`batch_pipelines.core.contract`).
"""

from __future__ import annotations

from typing import Any

from batch_pipelines.app.partitions import partition_deleter
from batch_pipelines.core.contract import DELETE_PARTITIONS, DETAIL_TABLES
from batch_pipelines.operations import DETAIL_TABLES as REGISTERED_DETAIL_TABLES


def host_resources(instance: Any = None) -> dict[str, Any]:
    """The registry's detail tables and, given a Dagster instance, the partition deleter
    bound to it."""
    resources: dict[str, Any] = {DETAIL_TABLES: REGISTERED_DETAIL_TABLES}
    if instance is not None:
        resources[DELETE_PARTITIONS] = partition_deleter(instance)
    return resources
