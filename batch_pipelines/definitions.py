"""The Dagster code location: assembles what the other modules define."""

from dagster import Definitions

from batch_pipelines.housekeeping import nightly_cleanup
from batch_pipelines.jobs import (
    OPERATION_ASSETS,
    OPERATION_JOBS,
    batch_control_job,
    submit_batch_job,
)
from batch_pipelines.operations.annotators import AnnotatorResource
from batch_pipelines.report_assets import REPORT_ASSETS, analytics_reports_job
from batch_pipelines.report_sensors import REPORT_SCHEDULES, REPORT_SENSORS
from batch_pipelines.resources import WarehouseResource
from batch_pipelines.sensors import batch_dispatcher, inbox_sensor, run_failure_recorder

defs = Definitions(
    assets=[*OPERATION_ASSETS.values(), *REPORT_ASSETS],
    jobs=[*OPERATION_JOBS.values(), submit_batch_job, batch_control_job, analytics_reports_job],
    sensors=[inbox_sensor, batch_dispatcher, run_failure_recorder, *REPORT_SENSORS],
    schedules=[*REPORT_SCHEDULES, nightly_cleanup],
    resources={"warehouse": WarehouseResource(), "annotator": AnnotatorResource()},
)
