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
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from batch_pipelines.core.contract import (
    CheckOutcome,
    CommitContext,
    ItemCheck,
    ItemContext,
    ItemResult,
    OperationSpec,
)
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.sql import (
    quote_column,
    quote_ident,
    quote_literal,
    validate_column_name,
    validate_table_name,
)
from batch_pipelines.core.sqlcheck import ensure_predicate
from batch_pipelines.operations.import_.handler import detect_format
from batch_pipelines.operations.relations import describe_table

Scalar = str | int | float | bool
_TYPE_NAME = re.compile(
    r"^[A-Za-z][A-Za-z0-9_]*( [A-Za-z][A-Za-z0-9_]*)*(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\d*\])*$"
)

ColumnName = Annotated[str, AfterValidator(validate_column_name)]


class _Rule(BaseModel, extra="forbid"):
    name: str | None = Field(
        None, min_length=1, max_length=200, description="Defaults to type(column)"
    )
    weight: float = Field(1.0, gt=0, le=1000, description="Weight in the quality score")
    severity: Literal["error", "warn"] = Field(
        "error", description="Severity of the asset check when this rule fails"
    )

    def column_list(self) -> list[str]:
        return []

    def label(self) -> str:
        cols = self.column_list()
        return self.name or (f"{self.type}({', '.join(cols)})" if cols else self.type)  # type: ignore[attr-defined]


class NotNullRule(_Rule):
    """No NULL in the column."""

    type: Literal["not_null"]
    column: ColumnName

    def column_list(self) -> list[str]:
        return [self.column]


class UniqueRule(_Rule):
    """No two rows share the column(s); rows with a NULL key are not compared."""

    type: Literal["unique"]
    columns: list[ColumnName] = Field(min_length=1)

    @field_validator("columns", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def column_list(self) -> list[str]:
        return list(self.columns)


class RangeRule(_Rule):
    """Values within [min, max] (either bound optional; NULLs are not checked)."""

    type: Literal["range"]
    column: ColumnName
    min: float | int | str | None = None
    max: float | int | str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        numbers = (int, float)
        if isinstance(self.min, numbers) and isinstance(self.max, numbers) and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def column_list(self) -> list[str]:
        return [self.column]


class RegexRule(_Rule):
    """Values (as text) match the pattern (a search: anchor it with ^ and $ for a full match;
    NULLs are not checked)."""

    type: Literal["regex"]
    column: ColumnName
    pattern: str = Field(min_length=1)

    def column_list(self) -> list[str]:
        return [self.column]


class AcceptedValuesRule(_Rule):
    """Values are among the listed ones (NULLs are not checked)."""

    type: Literal["accepted_values"]
    column: ColumnName
    values: list[Scalar] = Field(min_length=1, max_length=10000)

    def column_list(self) -> list[str]:
        return [self.column]


class RowCountRule(_Rule):
    """The number of rows is within [min, max]."""

    type: Literal["row_count"]
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCountRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ColumnTypesRule(_Rule):
    """The columns exist with these DuckDB types (``{body_mass_g: BIGINT}``)."""

    type: Literal["column_types"]
    columns: dict[ColumnName, str] = Field(min_length=1)

    @field_validator("columns")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        for column, type_name in value.items():
            if not _TYPE_NAME.match(type_name.strip()):
                raise ValueError(f"{column}: {type_name!r} is not a DuckDB type name")
        return {k: v.strip() for k, v in value.items()}

    def label(self) -> str:
        return self.name or "column_types"


class SqlPredicateRule(_Rule):
    """A boolean SQL expression that must hold for every row (rows where it is NULL are not
    counted, as in a SQL CHECK constraint)."""

    type: Literal["sql_predicate"]
    predicate: str = Field(min_length=1, max_length=10000)

    def label(self) -> str:
        return self.name or "sql_predicate"


Rule = Annotated[
    NotNullRule
    | UniqueRule
    | RangeRule
    | RegexRule
    | AcceptedValuesRule
    | RowCountRule
    | ColumnTypesRule
    | SqlPredicateRule,
    Field(discriminator="type"),
]
FileFormat = Literal["auto", "csv", "tsv", "json", "ndjson", "parquet"]


class ValidateOptions(BaseModel, extra="forbid"):
    """Options of a validate batch."""

    rules: list[Rule] = Field(
        default_factory=list, description="Rules applied to every item, before its own rules"
    )
    sample_size: int = Field(5, ge=0, le=100, description="Failing rows kept per rule")
    fail_item_on_rule_failure: bool = Field(
        False,
        description="false: rule failures are findings and the item succeeds with its quality "
        "score; true: an item with a failed rule fails",
    )


class ValidateItem(BaseModel, extra="forbid"):
    """One table or file to validate (exactly one of the two) and its rules."""

    id: str | None = None
    table: str | None = Field(None, description="A warehouse table or view")
    path: str | None = Field(None, description="A CSV, TSV, JSON, NDJSON or Parquet file")
    format: FileFormat | None = Field(None, description="File format (default: from extension)")
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return None if value is None else validate_table_name(value, "table")

    @model_validator(mode="after")
    def _exactly_one(self) -> ValidateItem:
        if (self.table is None) == (self.path is None):
            raise ValueError("give exactly one of table or path")
        if self.format is not None and self.path is None:
            raise ValueError("format applies to a path only")
        return self


@dataclass
class RuleResult:
    index: int
    name: str
    type: str
    column: str | None
    passed: bool
    severity: str
    weight: float
    failing_rows: int | None = None
    total_rows: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "type": self.type,
            "passed": self.passed,
            "failing_rows": self.failing_rows,
            "severity": self.severity,
            "weight": self.weight,
            "detail": self.detail,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [{n: _jsonable(v) for n, v in zip(names, row, strict=True)} for row in cursor.fetchall()]


def _canonical_type(con: duckdb.DuckDBPyConnection, type_name: str) -> str:
    return con.execute(f"select typeof(cast(null as {type_name}))").fetchone()[0]


def _prepare(rules: list[_Rule]) -> dict[int, str]:
    """Check what the models cannot (patterns, predicates, type names) before touching data;
    returns the checked predicates by rule index. Raises one error naming every bad rule."""
    problems: list[str] = []
    predicates: dict[int, str] = {}
    with contextlib.closing(duckdb.connect(":memory:")) as con:
        for i, rule in enumerate(rules):
            where = f"rules[{i}] {rule.label()}"
            if isinstance(rule, RegexRule):
                try:
                    re.compile(rule.pattern)
                except re.error as exc:
                    problems.append(f"{where}: invalid regex {rule.pattern!r}: {exc}")
                    continue
                try:
                    con.execute("select regexp_matches('', ?)", [rule.pattern]).fetchone()
                except duckdb.Error as exc:
                    problems.append(
                        f"{where}: regex {rule.pattern!r} is not supported by DuckDB (RE2 "
                        f"syntax: no look-around or backreferences): {str(exc).splitlines()[0]}"
                    )
            elif isinstance(rule, SqlPredicateRule):
                try:
                    predicates[i] = ensure_predicate(rule.predicate)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
            elif isinstance(rule, ColumnTypesRule):
                for column, type_name in rule.columns.items():
                    try:
                        _canonical_type(con, type_name)
                    except duckdb.Error:
                        problems.append(f"{where}: {column}: unknown DuckDB type {type_name!r}")
    if problems:
        raise ValidationItemError("; ".join(problems))
    return predicates


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


def _evaluate(
    con: duckdb.DuckDBPyConnection,
    rel: str,
    columns: list[tuple[str, str]],
    rules: list[_Rule],
    predicates: dict[int, str],
    sample_size: int,
    ctx: ItemContext,
) -> tuple[int, list[RuleResult]]:
    types = {name.lower(): (name, typ) for name, typ in columns}
    missing = [
        f"rules[{i}] {rule.label()}: column(s) {[c for c in rule.column_list() if c.lower() not in types]}"
        for i, rule in enumerate(rules)
        if any(c.lower() not in types for c in rule.column_list())
    ]
    if missing:
        raise ValidationItemError(
            f"{'; '.join(missing)} not found; columns are {[c for c, _ in columns]}"
        )
    total = con.execute(f"select count(*) from {rel}").fetchone()[0]
    results = []
    for i, rule in enumerate(rules):
        ctx.check()
        result = RuleResult(
            index=i,
            name=rule.label(),
            type=rule.type,  # type: ignore[attr-defined]
            column=", ".join(rule.column_list()) or None,
            passed=True,
            severity=rule.severity,
            weight=rule.weight,
            total_rows=total,
        )
        try:
            _run_rule(con, rel, rule, predicates.get(i), types, total, sample_size, result)
        except duckdb.InterruptException:
            ctx.check()
            raise
        except duckdb.Error as exc:
            raise ValidationItemError(
                f"rules[{i}] {rule.label()} cannot run on this data: {str(exc).splitlines()[0]}"
            ) from exc
        results.append(result)
    return total, results


def _failing(
    con: duckdb.DuckDBPyConnection,
    rel: str,
    condition: str,
    params: list[Any],
    sample_size: int,
    result: RuleResult,
) -> None:
    result.failing_rows = con.execute(
        f"select count(*) from {rel} where {condition}", params
    ).fetchone()[0]
    result.passed = result.failing_rows == 0
    if result.failing_rows and sample_size:
        result.sample = _rows(
            con.execute(f"select * from {rel} where {condition} limit {int(sample_size)}", params)
        )


def _run_rule(
    con: duckdb.DuckDBPyConnection,
    rel: str,
    rule: _Rule,
    predicate: str | None,
    types: dict[str, tuple[str, str]],
    total: int,
    sample_size: int,
    result: RuleResult,
) -> None:
    if isinstance(rule, NotNullRule):
        _failing(con, rel, f"{quote_column(rule.column)} is null", [], sample_size, result)
        result.detail = f"{result.failing_rows} of {total} rows are NULL"
    elif isinstance(rule, UniqueRule):
        keys = ", ".join(quote_column(c) for c in rule.columns)
        not_null = " and ".join(f"{quote_column(c)} is not null" for c in rule.columns)
        dupes = (
            f"select {keys}, count(*) as occurrences from {rel} where {not_null} "
            f"group by {keys} having count(*) > 1"
        )
        failing, groups = con.execute(
            f"select coalesce(sum(occurrences), 0), count(*) from ({dupes})"
        ).fetchone()
        result.failing_rows = int(failing)
        result.passed = failing == 0
        result.detail = f"{groups} duplicated key(s) over {failing} rows"
        if failing and sample_size:
            result.sample = _rows(
                con.execute(f"{dupes} order by occurrences desc limit {int(sample_size)}")
            )
    elif isinstance(rule, RangeRule):
        column = quote_column(rule.column)
        parts, params = [], []
        if rule.min is not None:
            parts.append(f"{column} < ?")
            params.append(rule.min)
        if rule.max is not None:
            parts.append(f"{column} > ?")
            params.append(rule.max)
        _failing(con, rel, f"({' or '.join(parts)})", params, sample_size, result)
        result.detail = f"{result.failing_rows} of {total} rows outside [{rule.min}, {rule.max}]"
    elif isinstance(rule, RegexRule):
        column = quote_column(rule.column)
        _failing(
            con,
            rel,
            f"{column} is not null and not regexp_matches({column}::varchar, ?)",
            [rule.pattern],
            sample_size,
            result,
        )
        result.detail = f"{result.failing_rows} of {total} rows do not match {rule.pattern!r}"
    elif isinstance(rule, AcceptedValuesRule):
        column = quote_column(rule.column)
        _, column_type = types[rule.column.lower()]
        values: list[Any] = list(rule.values)
        if column_type.upper().startswith("VARCHAR"):
            values = [str(v) for v in values]
        placeholders = ", ".join("?" for _ in values)
        _failing(
            con,
            rel,
            f"{column} is not null and {column} not in ({placeholders})",
            values,
            sample_size,
            result,
        )
        result.detail = f"{result.failing_rows} of {total} rows have other values"
    elif isinstance(rule, RowCountRule):
        low = rule.min if rule.min is not None else 0
        high = rule.max if rule.max is not None else math.inf
        result.passed = low <= total <= high
        result.detail = f"{total} rows, expected [{rule.min}, {rule.max}]"
    elif isinstance(rule, ColumnTypesRule):
        mismatches = []
        for column, expected in rule.columns.items():
            want = _canonical_type(con, expected)
            found = types.get(column.lower())
            if found is None:
                mismatches.append({"column": column, "expected": want, "actual": None})
            elif found[1].upper() != want.upper():
                mismatches.append({"column": column, "expected": want, "actual": found[1]})
        result.passed = not mismatches
        result.sample = mismatches[:sample_size] if sample_size else []
        result.detail = (
            "; ".join(
                f"{m['column']}: missing"
                if m["actual"] is None
                else f"{m['column']}: {m['actual']}, expected {m['expected']}"
                for m in mismatches
            )
            or f"{len(rule.columns)} column(s) as expected"
        )
    elif isinstance(rule, SqlPredicateRule):
        assert predicate is not None
        _failing(con, rel, f"not (\n{predicate})", [], sample_size, result)
        result.detail = f"{result.failing_rows} of {total} rows violate the predicate"
    else:  # pragma: no cover - the Rule union is closed
        raise ValidationItemError(f"unknown rule type {type(rule).__name__}")


def handle_validate(ctx: ItemContext) -> ItemResult:
    options: ValidateOptions = ctx.options
    item: ValidateItem = ctx.item
    rules: list[_Rule] = [*options.rules, *item.rules]
    if not rules:
        raise ValidationItemError(
            "rules: this item has no rules; give rules in the item or in options.rules"
        )
    predicates = _prepare(rules)
    with _open_source(ctx, item) as (con, rel, columns, source):
        total, results = _evaluate(con, rel, columns, rules, predicates, options.sample_size, ctx)
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

    def commit(con: duckdb.DuckDBPyConnection, cc: CommitContext) -> None:
        con.execute(
            "delete from validation_results where batch_id = ? and item_id = ?",
            [cc.batch_id, cc.item_id],
        )
        con.executemany(
            "insert into validation_results values "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
            [
                [
                    cc.batch_id,
                    cc.item_id,
                    r.index,
                    r.name,
                    r.type,
                    r.column,
                    source,
                    r.passed,
                    r.severity,
                    r.failing_rows,
                    r.total_rows,
                    r.weight,
                    json.dumps(r.sample),
                    r.detail,
                ]
                for r in results
            ],
        )

    return ItemResult(metrics=metrics, quality_score=score, commit=commit)


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
    detail_tables=("validation_results",),
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
    group_commits=True,  # the commit only writes `validation_results`
)
