"""The ``recurring_templates`` sensor: submits the templates that carry a cron ``schedule``.

One sensor for every template rather than one Dagster schedule per template: a schedule is
part of the code location, so each ``template save`` would need a reload of the code before
the daemon saw it, and a template saved from the CLI or the Python API would not run until
someone reloaded. The sensor reads the ``templates`` table on each evaluation instead (a
short read-only connection) and keeps the last tick it handled per template in its cursor.
"""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from batch_pipelines.app.recurring import load_cursor, run_due
from batch_pipelines.core.errors import WarehouseError

INTERVAL_S = 30


@sensor(
    name="recurring_templates",
    minimum_interval_seconds=INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Submits each template that has a cron schedule (`batch-pipelines template save NAME "
        "MANIFEST` with `schedule:` and `timezone:`) once per tick, unless the template is "
        "paused (`template pause NAME`). A tick that finds the template's previous batch still "
        "going is skipped and recorded in batch_events (template_tick_skipped). The "
        "batch_dispatcher sensor then launches the batch's chunk runs."
    ),
)
def recurring_templates(context: SensorEvaluationContext) -> SensorResult:
    cursor = load_cursor(context.cursor)
    try:
        outcome = run_due(context.instance, cursor, log=context.log.info)
    except WarehouseError as exc:
        return SensorResult(skip_reason=SkipReason(f"warehouse busy, trying again: {exc}"))
    import json

    if not (outcome.submitted or outcome.skipped or outcome.failed):
        reason = "no scheduled template is due"
    else:
        reason = outcome.summary
    return SensorResult(
        skip_reason=SkipReason(reason), cursor=json.dumps(outcome.cursor, sort_keys=True)
    )
