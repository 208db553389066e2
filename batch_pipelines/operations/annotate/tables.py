"""The annotate operation's detail table: one row per annotated item in ``annotations``."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from batch_pipelines.core import ledger
from batch_pipelines.core.contract import CommitContext

ANNOTATIONS = "annotations"
DETAIL_TABLES = (ANNOTATIONS,)


def replace_annotation(
    con: duckdb.DuckDBPyConnection,
    cc: CommitContext,
    loaded: dict[str, Any],
    result: dict[str, Any],
    keywords: list[str],
    confidence: float,
    text_sha256: str,
) -> None:
    """Replace the item's row: what an earlier run of the same item wrote goes first."""
    con.execute(
        "delete from annotations where batch_id = ? and item_id = ?",
        [cc.batch_id, cc.item_id],
    )
    con.execute(
        "insert into annotations (batch_id, item_id, source, source_ref, language, "
        "language_confidence, keywords, category, category_scores, summary, confidence, "
        "backend, model, text_chars, text_sha256, annotated_at) "
        "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            cc.batch_id,
            cc.item_id,
            loaded["source"],
            loaded["source_ref"],
            result.get("language"),
            result.get("language_confidence"),
            json.dumps(keywords, ensure_ascii=False),
            result.get("category"),
            json.dumps(result.get("category_scores") or {}, ensure_ascii=False),
            result.get("summary"),
            confidence,
            result.get("backend"),
            result.get("model"),
            loaded["chars"],
            text_sha256,
            ledger.utcnow(),
        ],
    )
