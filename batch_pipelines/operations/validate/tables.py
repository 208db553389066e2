"""The validate operation's detail table: one row per rule and item in
``validation_results``."""

from __future__ import annotations

import json
from collections.abc import Sequence

import duckdb

from batch_pipelines.core.contract import CommitContext
from batch_pipelines.operations.validate.rules import RuleResult

VALIDATION_RESULTS = "validation_results"
DETAIL_TABLES = (VALIDATION_RESULTS,)


def replace_results(
    con: duckdb.DuckDBPyConnection, cc: CommitContext, source: str, results: Sequence[RuleResult]
) -> None:
    con.execute(
        "delete from validation_results where batch_id = ? and item_id = ?",
        [cc.batch_id, cc.item_id],
    )
    con.executemany(
        "insert into validation_results values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
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
