"""The validate operation: tables and data files checked against data quality rules."""

from batch_pipelines.core.contract import ItemCheck, OperationSpec
from batch_pipelines.operations.validate.handler import handle_validate, rules_check
from batch_pipelines.operations.validate.models import ValidateItem, ValidateOptions
from batch_pipelines.operations.validate.tables import DETAIL_TABLES
from batch_pipelines.operations.validate.undo import undo_validate

SPEC = OperationSpec(
    name="validate",
    description=(
        "Validate warehouse tables or data files against rules (not_null, unique, range, regex, "
        "accepted_values, row_count, column_types, sql_predicate), one partition per table or "
        "file. Quality score = weighted share of rules passed; per-rule results and failing "
        "samples: validation_results; per partition: the rules_passed asset check."
    ),
    options_model=ValidateOptions,
    item_model=ValidateItem,
    handler=handle_validate,
    detail_tables=DETAIL_TABLES,
    asset_checks=(
        ItemCheck(
            name="rules_passed",
            description=(
                "Every validation rule of the item passed. One result per item partition; its "
                "metadata lists each rule with its failing row count. Fails with severity "
                "WARN when only rules of severity warn failed."
            ),
            evaluate=rules_check,
        ),
    ),
    group_commits=True,  # its rows only go to `validation_results`
    undo=undo_validate,
    scores_quality=True,
)

__all__ = ["SPEC"]
