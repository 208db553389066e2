"""validate: check a warehouse table or a data file against data quality rules.

Each rule (not_null, unique, range, regex, accepted_values, row_count, column_types,
sql_predicate) runs as one DuckDB query on the table (read-only connection) or on the file
(read with read_csv/read_parquet/read_json in a local DuckDB). Per-rule results, with the
failing row count and a sample of failing rows, go to ``validation_results``; the item's
quality score is the weighted share of rules that passed. A failing rule is a finding, not
an error: the item succeeds (unless ``fail_item_on_rule_failure``). A rule that cannot run
(an invalid regex, a predicate that is not an expression, a missing column) fails its item
with a validation error. The shared factory also reports each item as the partition-aware
asset check ``rules_passed`` on ``validate_items``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from batch_pipelines.core.contract import CheckOutcome, ItemContext, ItemResult
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.files import detect_format
from batch_pipelines.core.sql import quote_ident, quote_literal
from batch_pipelines.operations.relations import describe_table
from batch_pipelines.operations.validate import tables
from batch_pipelines.operations.validate.models import BaseRule, ValidateItem, ValidateOptions
from batch_pipelines.operations.validate.rules import evaluate, prepare


def _reader(path: Path, fmt: str) -> str:
    src = quote_literal(str(path))
    if fmt == "csv":
        return f"read_csv({src}, auto_detect = true)"
    if fmt == "tsv":
        return f"read_csv({src}, auto_detect = true, delim = '\\t')"
    if fmt == "parquet":
        return f"read_parquet({src})"
    if fmt == "json":
        return f"read_json({src}, format = 'auto')"
    if fmt == "ndjson":
        return f"read_json({src}, format = 'newline_delimited')"
    if fmt == "xlsx":
        raise ValidationItemError(
            f"{path.name} is an xlsx workbook, which validate does not read: import it, then "
            "validate the table"
        )
    raise ValidationItemError(f"format: unsupported format {fmt!r}")


@contextlib.contextmanager
def _open_source(
    ctx: ItemContext, item: ValidateItem
) -> Iterator[tuple[duckdb.DuckDBPyConnection, str, list[tuple[str, str]], str]]:
    """A connection, the relation to query, its columns and a label for the source."""
    if item.table is not None:
        with ctx.read_warehouse() as con:
            columns = describe_table(con, item.table, "table")
            yield con, quote_ident(item.table), columns, item.table
        return
    assert item.path is not None
    path = ctx.resolve_path(item.path, field_name="path")
    if not path.is_file():
        raise ValidationItemError(f"path: {item.path!r} is not a regular file")
    if path.stat().st_size == 0:
        raise ValidationItemError(f"path: {path.name} is empty (0 bytes)")
    fmt = detect_format(path, item.format or "auto")
    with ctx.local_duckdb() as con:
        try:
            con.execute(f"create temp view _bp_source as select * from {_reader(path, fmt)}")
            columns = [(r[0], r[1]) for r in con.execute("describe _bp_source").fetchall()]
        except duckdb.Error as exc:
            raise ValidationItemError(
                f"cannot read {path.name} as {fmt}: {str(exc).splitlines()[0]}"
            ) from exc
        yield con, "_bp_source", columns, str(path)


def handle_validate(ctx: ItemContext) -> ItemResult:
    options: ValidateOptions = ctx.options
    item: ValidateItem = ctx.item
    rules: list[BaseRule] = [*options.rules, *item.rules]
    if not rules:
        raise ValidationItemError(
            "rules: this item has no rules; give rules in the item or in options.rules"
        )
    predicates = prepare(rules)
    with _open_source(ctx, item) as (con, rel, columns, source):
        total, results = evaluate(con, rel, columns, rules, predicates, options.sample_size, ctx)
    # Rule names label asset-check metadata: make repeated ones distinct.
    seen: dict[str, int] = {}
    for r in results:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"
    weight = sum(r.weight for r in results)
    score = sum(r.weight for r in results if r.passed) / weight
    failed = [r for r in results if not r.passed]
    if failed and options.fail_item_on_rule_failure:
        raise ValidationItemError(
            f"{len(failed)} of {len(results)} rule(s) failed: "
            + "; ".join(f"{r.name}: {r.detail}" for r in failed)
        )
    metrics = {
        "source": source,
        "total_rows": total,
        "rules": len(results),
        "rules_passed": len(results) - len(failed),
        "rules_failed": len(failed),
        "failed_rules": ", ".join(r.name for r in failed)[:400],
        "rule_results": [r.summary() for r in results],
    }

    rows = {tables.VALIDATION_RESULTS: tables.result_rows(source, results)}
    return ItemResult(metrics=metrics, quality_score=score, rows=rows)


def rules_check(metrics: dict[str, Any]) -> CheckOutcome | None:
    """The ``rules_passed`` asset check of one validated item, from its metrics."""
    summaries = metrics.get("rule_results")
    if not isinstance(summaries, list):
        return None
    failed = [s for s in summaries if not s.get("passed")]
    severity = "error" if any(s.get("severity") == "error" for s in failed) else "warn"
    total = len(summaries)
    return CheckOutcome(
        passed=not failed,
        severity=severity,
        description=(
            f"all {total} rule(s) passed"
            if not failed
            else f"{len(failed)} of {total} rule(s) failed: "
            + ", ".join(str(s.get("rule")) for s in failed)
        )[:1000],
        metadata={
            "source": str(metrics.get("source", "")),
            "total_rows": int(metrics.get("total_rows") or 0),
            "rules_passed": total - len(failed),
            "rules_failed": len(failed),
            "rules": summaries,
        },
    )
