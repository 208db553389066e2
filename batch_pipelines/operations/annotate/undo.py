"""Undoing an annotate batch: its rows of ``annotations``."""

from __future__ import annotations

import duckdb

from batch_pipelines.core.contract import UndoContext
from batch_pipelines.operations.annotate.tables import ANNOTATIONS


def undo_annotate(con: duckdb.DuckDBPyConnection, ctx: UndoContext) -> dict[str, int]:
    return {ANNOTATIONS: ctx.delete_rows(con, ANNOTATIONS)}
