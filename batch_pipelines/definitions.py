"""The Dagster code location: assembles what the other modules define."""

from dagster import Definitions

from batch_pipelines.jobs import OPERATION_ASSETS, OPERATION_JOBS, submit_batch_job
from batch_pipelines.resources import WarehouseResource
from batch_pipelines.sensors import batch_dispatcher, inbox_sensor

defs = Definitions(
    assets=list(OPERATION_ASSETS.values()),
    jobs=[*OPERATION_JOBS.values(), submit_batch_job],
    sensors=[inbox_sensor, batch_dispatcher],
    resources={"warehouse": WarehouseResource()},
)
