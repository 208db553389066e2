"""Undoing a validate batch: its rows of ``validation_results``."""

from __future__ import annotations

import duckdb

from batch_pipelines.core.contract import UndoContext
from batch_pipelines.operations.validate.tables import VALIDATION_RESULTS


def undo_validate(con: duckdb.DuckDBPyConnection, ctx: UndoContext) -> dict[str, int]:
    return {VALIDATION_RESULTS: ctx.delete_rows(con, VALIDATION_RESULTS)}
