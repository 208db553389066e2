"""What changed between two batches of the same operation, computed set-wise in DuckDB.

Items are matched by ``item_id``. An item's result is a set of named fields in long form
(``field``, ``value`` as text): ``status``, ``error_category`` and ``quality_score`` for every
operation, then per operation the fields of its detail table (falling back to the ledger's
``result``): the annotation's language, category, keywords, summary, backend, model and text
hash (its confidence is the quality score); each validation rule's outcome (``rule <name>``) and the rows checked; the row
counts and sha256 of an import or export; the rows in and out of a transform (which records no
hash). Two items differ where a field's values differ (``is distinct from``), one full join
for the whole batch: no per-item Python.

:func:`batch_diff` returns a dict of stable keys (documented in ``docs/diff.md``);
:func:`record_diff` keeps one in ``batch_diffs`` (migration ``0017_batch_diffs``).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from batch_pipelines.core import ledger, warehouse
from batch_pipelines.core.fmt import round_figure

DEFAULT_LIMIT = 50
# Batches that ran to their end: what "the latest two finished batches" of a template means.
FINISHED_BATCH_STATUSES = ("completed", "completed_with_errors", "failed")
_FINISHED_ITEMS = "status in ('succeeded', 'failed', 'skipped')"
_SHOWN_CHARS = 200  # a changed value (a summary...) is compared whole, shown cut


class DiffError(ValueError):
    """The two batches cannot be compared: an unknown id, or different operations."""


def _text(expr: str) -> str:
    return f"({expr})::varchar"


def _from_result(column: str, key: str | None = None) -> str:
    """A detail table's column, else the same figure from the ledger's ``result``."""
    return f"coalesce({_text('d.' + column)}, i.result ->> '{key or column}')"


# Per operation: its detail table (one row per item) and its fields as SQL over ``d`` (the
# detail row) and ``i`` (the ledger row). An annotation's confidence is its quality_score.
_DETAIL: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "annotate": (
        "annotations",
        [
            ("language", _from_result("language")),
            ("category", _from_result("category")),
            ("keywords", "coalesce(d.keywords::varchar, i.result ->> 'keywords')"),
            ("summary", _text("d.summary")),
            ("backend", _from_result("backend")),
            ("model", _from_result("model")),
            ("text_sha256", _text("d.text_sha256")),
        ],
    ),
    "import": (
        "import_files",
        [
            ("rows", _from_result("rows")),
            ("rejected_rows", _from_result("rejected_rows")),
            ("columns", _from_result("columns")),
            ("sha256", _from_result("sha256")),
        ],
    ),
    "export": (
        "exports",
        [
            ("rows", _from_result("rows")),
            ("columns", _from_result("columns")),
            ("sha256", _from_result("sha256")),
        ],
    ),
    "transform": (
        "transforms",
        [
            ("rows_in", _from_result("rows_in")),
            ("rows_out", _from_result("rows_out")),
            ("columns", _from_result("columns")),
        ],
    ),
}
# Rounded: a score that moved in the 5th digit is the same answer.
_LEDGER_FIELDS = [
    ("status", "i.status"),
    ("error_category", "i.error_category"),
    ("quality_score", _text("round(i.quality_score, 4)")),
]
# Items whose result fields are compared: a failed item has none, its status says enough.
_WITH_RESULT = "('succeeded', 'skipped')"


def _fields_sql(operation: str) -> str:
    """``(batch_id, item_id, field, value, ledger)`` of the items of batches ``$a`` and ``$b``
    (``ledger``: a field of every item, not of its result)."""
    table, detail = _DETAIL.get(operation, (None, []))
    if operation == "validate":
        detail = [("total_rows", "i.result ->> 'total_rows'")]
    fields = _LEDGER_FIELDS + detail
    names = ", ".join(f"'{name}'" for name, _ in fields)
    values = ", ".join(expr for _, expr in fields)
    ledger_flags = ", ".join(
        "true" if n < len(_LEDGER_FIELDS) else "false" for n in range(len(fields))
    )
    join = (
        f"left join {table} d on d.batch_id = i.batch_id and d.item_id = i.item_id" if table else ""
    )
    sql = f"""
        select i.batch_id, i.item_id, unnest([{names}]) as field, unnest([{values}]) as value,
            unnest([{ledger_flags}]) as ledger
        from batch_items i {join}
        where i.batch_id in ($a, $b)
    """
    if operation == "validate":
        sql += """
        union all
        select batch_id, item_id, 'rule ' || rule_name,
            case when passed then 'passed'
                else 'failed (' || coalesce(failing_rows::varchar, '?') || ' rows)' end,
            false
        from validation_results
        where batch_id in ($a, $b)
        """
    return sql


def _changes_cte(operation: str) -> str:
    """``changes(item_id, field, a, b)``: the fields that differ, of items in both batches;
    result fields only where both have a result."""
    return f"""
    with fields as materialized ({_fields_sql(operation)}),
    shared as (
        select item_id from batch_items where batch_id = $a
        intersect
        select item_id from batch_items where batch_id = $b
    ),
    with_result as (
        select item_id from batch_items where batch_id = $a and status in {_WITH_RESULT}
        intersect
        select item_id from batch_items where batch_id = $b and status in {_WITH_RESULT}
    ),
    fa as (select item_id, field, value, ledger from fields
           where batch_id = $a and item_id in (select item_id from shared)),
    fb as (select item_id, field, value, ledger from fields
           where batch_id = $b and item_id in (select item_id from shared)),
    changes as materialized (
        select item_id, field, fa.value as a, fb.value as b
        from fa full join fb using (item_id, field)
        where fa.value is distinct from fb.value
          and (coalesce(fa.ledger, fb.ledger) or item_id in (select item_id from with_result))
    )
    """


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[dict]:
    # DuckDB refuses a named parameter the statement does not use.
    rel = con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})
    names = [d[0] for d in rel.description]
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def _batches(con: duckdb.DuckDBPyConnection, a: str, b: str) -> dict[str, dict[str, Any]]:
    rows = _rows(
        con,
        "select batch_id, name, operation, status, template, total_items as items, "
        "created_at, completed_at from batches where batch_id in ($a, $b)",
        {"a": a, "b": b},
    )
    found = {r["batch_id"]: r for r in rows}
    missing = [x for x in dict.fromkeys((a, b)) if x not in found]
    if missing:
        raise DiffError(
            "; ".join(
                f"batch {m!r} is not in the ledger (argument {'A' if m == a else 'B'})"
                for m in missing
            )
        )
    if found[a]["operation"] != found[b]["operation"]:
        raise DiffError(
            f"batches of different operations cannot be compared: {a!r} is "
            f"{found[a]['operation']}, {b!r} is {found[b]['operation']}"
        )
    return found


def _item_counts(con: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> dict[str, int]:
    (row,) = _rows(
        con,
        """
        with ia as (select item_id from batch_items where batch_id = $a),
             ib as (select item_id from batch_items where batch_id = $b)
        select
            count(ia.item_id)::bigint as a,
            count(ib.item_id)::bigint as b,
            count(*) filter (where ib.item_id is null)::bigint as only_in_a,
            count(*) filter (where ia.item_id is null)::bigint as only_in_b,
            count(*) filter (where ia.item_id is not null and ib.item_id is not null)::bigint
                as in_both
        from ia full join ib on ia.item_id = ib.item_id
        """,
        p,
    )
    return {k: int(v) for k, v in row.items()}


def _only_in(con: duckdb.DuckDBPyConnection, p: dict[str, Any], side: str) -> list[dict]:
    here, there = ("$a", "$b") if side == "a" else ("$b", "$a")
    return _rows(
        con,
        f"""
        select item_id, status, error_category from batch_items
        where batch_id = {here}
          and item_id not in (select item_id from batch_items where batch_id = {there})
        order by item_id limit $limit
        """,
        p,
    )


def _changed(con: duckdb.DuckDBPyConnection, operation: str, p: dict[str, Any]) -> dict:
    """The changed items counted, per field and listed, from one evaluation of the changes."""
    (row,) = _rows(
        con,
        f"""{_changes_cte(operation)}
        , per_field as (
            select field, count(*)::bigint as items from changes group by field
        ),
        first_items as (
            select item_id,
                list({{'field': field, 'a': left(a, {_SHOWN_CHARS}), 'b': left(b, {_SHOWN_CHARS})}}
                     order by field) as fields
            from changes group by item_id order by item_id limit $limit
        )
        select
            (select count(distinct item_id) from changes) as count,
            (select list({{'field': field, 'items': items}} order by items desc, field)
             from per_field) as fields,
            (select list({{'item_id': item_id, 'fields': fields}} order by item_id)
             from first_items) as items
        """,
        p,
    )
    return {"count": int(row["count"]), "fields": row["fields"] or [], "items": row["items"] or []}


def _percentiles(con: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> tuple[dict, dict]:
    rows = {
        r["batch_id"]: r
        for r in _rows(
            con,
            f"""
            select batch_id,
                quantile_cont(quality_score, [0.5, 0.95]) as q,
                avg(quality_score) as q_mean,
                count(quality_score)::bigint as scored,
                quantile_cont(duration_ms, [0.5, 0.95]) filter (where {_FINISHED_ITEMS}) as d,
                avg(duration_ms) filter (where {_FINISHED_ITEMS}) as d_mean
            from batch_items where batch_id in ($a, $b) group by batch_id
            """,
            {"a": p["a"], "b": p["b"]},
        )
    }

    def side(batch_id: str, key: str) -> dict[str, Any]:
        r = rows.get(batch_id) or {}
        q = r.get(key) or [None, None]
        return {
            "p50": round_figure(q[0], 4),
            "p95": round_figure(q[1], 4),
            "mean": round_figure(r.get(f"{key}_mean"), 4),
        }

    def compare(key: str) -> dict[str, Any]:
        a, b = side(p["a"], key), side(p["b"], key)
        delta = {
            k: None if a[k] is None or b[k] is None else round_figure(b[k] - a[k], 4) for k in a
        }
        return {"a": a, "b": b, "delta": delta}

    quality = compare("q")
    quality["a"]["scored"] = int(rows.get(p["a"], {}).get("scored") or 0)
    quality["b"]["scored"] = int(rows.get(p["b"], {}).get("scored") or 0)
    return quality, compare("d")


def _error_categories(con: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> list[dict]:
    return _rows(
        con,
        """
        select error_category, a, b, b - a as delta,
            case when a = 0 then 'appeared' when b = 0 then 'vanished'
                 when b > a then 'more' when b < a then 'fewer' else 'same' end as change
        from (
            select coalesce(error_category, 'unknown') as error_category,
                count(*) filter (where batch_id = $a)::bigint as a,
                count(*) filter (where batch_id = $b)::bigint as b
            from batch_items where batch_id in ($a, $b) and status = 'failed'
            group by 1
        )
        order by change = 'same', abs(b - a) desc, error_category
        """,
        {"a": p["a"], "b": p["b"]},
    )


def batch_diff(
    con: duckdb.DuckDBPyConnection, a: str, b: str, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """The diff of batch ``b`` against batch ``a`` on an open connection (see
    :func:`diff_batches`); raises :class:`DiffError`."""
    if limit < 0:
        raise DiffError(f"limit must be 0 or more, got {limit}")
    batches = _batches(con, a, b)
    operation = batches[a]["operation"]
    p = {"a": a, "b": b, "limit": limit}
    counts = _item_counts(con, p)
    changed = _changed(con, operation, p)
    counts["changed"] = changed["count"]
    counts["unchanged"] = counts["in_both"] - changed["count"]
    quality, duration = _percentiles(con, p)
    return {
        "operation": operation,
        "a": batches[a],
        "b": batches[b],
        "items": counts,
        "changed_fields": changed["fields"],
        "changed": changed["items"],
        "only_in_a": _only_in(con, p, "a"),
        "only_in_b": _only_in(con, p, "b"),
        "quality": quality,
        "duration_ms": duration,
        "error_categories": _error_categories(con, p),
        "limit": limit,
    }


def diff_batches(a: str, b: str, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Compare batch ``b`` with batch ``a`` (same operation; items matched by ``item_id``).

    Returns ``operation``, ``a`` and ``b`` (the two batches), ``items`` (counts: ``a``, ``b``,
    ``only_in_a``, ``only_in_b``, ``in_both``, ``changed``, ``unchanged``),
    ``changed_fields`` (per field, how many items changed it), ``changed`` (up to ``limit``
    items with their changed fields, old ``a`` and new ``b``), ``only_in_a`` / ``only_in_b``
    (up to ``limit`` items each), ``quality`` and ``duration_ms`` (p50, p95 and mean of each
    batch and ``delta`` = b - a), ``error_categories`` (failed items per category in each
    batch, with ``change``: appeared, vanished, more, fewer or same) and ``limit``.

    Raises :class:`DiffError` (a ``ValueError``) for an unknown id or batches of different
    operations."""
    with warehouse.connect(read_only=True) as con:
        return batch_diff(con, a, b, limit)


def latest_template_pairs(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per template with two finished batches: ``template``, ``a`` (the older of its latest
    two) and ``b`` (the latest), whether they share an operation (``same_operation``) and
    ``stored``: the diff kept in ``batch_diffs`` (JSON text) if it was computed after both
    finished (a batch retried since finishes again later), else None."""
    statuses = ", ".join(f"'{s}'" for s in FINISHED_BATCH_STATUSES)
    return _rows(
        con,
        f"""
        with ranked as (
            select template, batch_id, operation, completed_at,
                row_number() over (partition by template
                                   order by completed_at desc nulls last, batch_id desc) as n
            from batches where template is not null and status in ({statuses})
        ),
        pairs as (
            select template,
                max(batch_id) filter (where n = 2) as a,
                max(batch_id) filter (where n = 1) as b,
                count(distinct operation) = 1 as same_operation,
                max(completed_at) as finished_at
            from ranked where n <= 2 group by template having count(*) = 2
        )
        select p.template, p.a, p.b, p.same_operation,
            (select max_by(d.diff::varchar, d.computed_at) from batch_diffs d
             where d.template = p.template and d.batch_a = p.a and d.batch_b = p.b
               and d.computed_at >= p.finished_at) as stored
        from pairs p order by p.template
        """,
        {},
    )


def record_diff(con: duckdb.DuckDBPyConnection, diff: dict[str, Any], template: str | None) -> None:
    """Keep ``diff`` in ``batch_diffs``, replacing an earlier diff of the same pair and template
    (delete + insert in one transaction: the table has no key to upsert on)."""
    a, b = diff["a"]["batch_id"], diff["b"]["batch_id"]
    items, q, d = diff["items"], diff["quality"]["delta"], diff["duration_ms"]["delta"]
    changes = [e["change"] for e in diff["error_categories"]]
    con.execute("begin")
    try:
        con.execute(
            "delete from batch_diffs where batch_a = ? and batch_b = ? "
            "and template is not distinct from ?",
            [a, b, template],
        )
        con.execute(
            "insert into batch_diffs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::json, ?)",
            [
                template, a, b, diff["operation"],
                items["only_in_a"], items["only_in_b"], items["in_both"], items["changed"],
                q["p50"], q["p95"], d["p50"], d["p95"],
                changes.count("appeared"), changes.count("vanished"),
                json.dumps(diff, default=str), ledger.utcnow(),
            ],
        )  # fmt: skip
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
