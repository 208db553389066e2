"""The Dagster code location: assembles what the other modules define."""

from dagster import Definitions

from batch_pipelines.defs.analytics_assets import ANALYTICS_ASSETS, analytics_reports_job
from batch_pipelines.defs.analytics_refresh import ANALYTICS_SCHEDULES, ANALYTICS_SENSORS
from batch_pipelines.defs.jobs import (
    OPERATION_ASSETS,
    OPERATION_JOBS,
    batch_control_job,
    submit_batch_job,
)
from batch_pipelines.defs.recurring import recurring_templates
from batch_pipelines.defs.resources import AnnotatorResource, WarehouseResource
from batch_pipelines.defs.schedules import nightly_cleanup
from batch_pipelines.defs.sensors import (
    batch_dispatcher,
    inbox_sensor,
    run_failure_recorder,
    webhook_sender,
)

defs = Definitions(
    assets=[*OPERATION_ASSETS.values(), *ANALYTICS_ASSETS],
    jobs=[*OPERATION_JOBS.values(), submit_batch_job, batch_control_job, analytics_reports_job],
    sensors=[
        inbox_sensor,
        batch_dispatcher,
        run_failure_recorder,
        webhook_sender,
        recurring_templates,
        *ANALYTICS_SENSORS,
    ],
    schedules=[*ANALYTICS_SCHEDULES, nightly_cleanup],
    resources={"warehouse": WarehouseResource(), "annotator": AnnotatorResource()},
)
