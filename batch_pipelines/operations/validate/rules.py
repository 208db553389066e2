"""Running validation rules: each rule is one DuckDB query on the source relation."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import math
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb

from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import ValidationItemError
from batch_pipelines.core.sql import quote_column
from batch_pipelines.core.sqlcheck import ensure_predicate
from batch_pipelines.operations.validate.models import (
    AcceptedValuesRule,
    BaseRule,
    ColumnTypesRule,
    NotNullRule,
    RangeRule,
    RegexRule,
    RowCountRule,
    SqlPredicateRule,
    UniqueRule,
)


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


def prepare(rules: list[BaseRule]) -> dict[int, str]:
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


def evaluate(
    con: duckdb.DuckDBPyConnection,
    rel: str,
    columns: list[tuple[str, str]],
    rules: list[BaseRule],
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
    rule: BaseRule,
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
