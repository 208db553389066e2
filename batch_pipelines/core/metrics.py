"""``batch-pipelines metrics``: the ledger's figures in the OpenMetrics text format, for a
node-exporter textfile collector or a scrape job (see docs/observability.md).

Everything is read from the warehouse at call time (one read-only connection), plus the HTTP
limits file of the annotate endpoints (``<data>/http_limits.sqlite3``) when it exists.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

from batch_pipelines.core import config, warehouse

PREFIX = "batch_pipelines"
# Item duration buckets, seconds: from a fast row write to a slow LLM call.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HTTP_LIMITS_FILE = "http_limits.sqlite3"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    def __init__(
        self, name: str, kind: str, help_text: str, unit: str = "", *, openmetrics: bool = True
    ) -> None:
        self.name, self.kind, self.openmetrics = f"{PREFIX}_{name}", kind, openmetrics
        # OpenMetrics names a counter without its ``_total`` and has ``# UNIT``; the classic
        # Prometheus text format (node-exporter's textfile collector) names it with ``_total``.
        declared = self.name
        if kind == "counter" and not openmetrics:
            declared += "_total"
        self.lines = [f"# TYPE {declared} {kind}", f"# HELP {declared} {help_text}"]
        if unit and self.openmetrics:
            self.lines.insert(1, f"# UNIT {self.name} {unit}")

    def sample(self, value: float, suffix: str = "", **labels: object) -> None:
        self.lines.append(f"{self.name}{suffix}{_labels(labels)} {_num(value)}")


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _histogram(family: _Family, rows: Sequence[tuple], buckets: Iterable[float]) -> None:
    """``rows``: (operation, duration_s) pairs."""
    by_op: dict[str, list[float]] = {}
    for op, seconds in rows:
        by_op.setdefault(op, []).append(seconds)
    for op, values in sorted(by_op.items()):
        for le in (*buckets, math.inf):
            family.sample(sum(1 for v in values if v <= le), "_bucket", operation=op, le=_num(le))
        family.sample(len(values), "_count", operation=op)
        family.sample(sum(values), "_sum", operation=op)


def _throttled_429(data: Path) -> list[tuple[str, int]]:
    """429s counted per endpoint by the shared HTTP limits, if that file exists."""
    path = data / HTTP_LIMITS_FILE
    if not path.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select endpoint, throttled_429 from endpoints").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def render(
    con: duckdb.DuckDBPyConnection, data: Path | None = None, *, openmetrics: bool = True
) -> str:
    """The OpenMetrics text (ends with ``# EOF``), or with ``openmetrics=False`` the classic
    Prometheus text format (version 0.0.4)."""
    family = functools.partial(_Family, openmetrics=openmetrics)
    families: list[_Family] = []

    items = family("items", "gauge", "Items in the ledger by operation and status.")
    for op, status, n in _rows(
        con,
        "select b.operation, i.status, count(*) from batch_items i join batches b "
        "using (batch_id) group by all order by all",
    ):
        items.sample(n, operation=op, status=status)
    families.append(items)

    batches = family("batches", "gauge", "Batches by operation and status.")
    for op, status, n in _rows(
        con, "select operation, status, count(*) from batches group by all order by all"
    ):
        batches.sample(n, operation=op, status=status)
    families.append(batches)

    queue = family(
        "queue_depth",
        "gauge",
        "Pending items of queued or running batches that are not paused, by operation.",
    )
    for op, n in _rows(
        con,
        "select b.operation, count(*) filter (where i.status = 'pending') from batches b "
        "join batch_items i using (batch_id) where b.status in ('queued', 'running') "
        "and not b.paused group by all order by all",
    ):
        queue.sample(n, operation=op)
    families.append(queue)

    inflight = family("inflight_runs", "gauge", "Chunk runs with items running now, by operation.")
    for op, n in _rows(
        con,
        "select b.operation, count(distinct i.run_id) from batch_items i join batches b "
        "using (batch_id) where i.status = 'running' group by all order by all",
    ):
        inflight.sample(n, operation=op)
    families.append(inflight)

    duration = family(
        "item_duration_seconds",
        "histogram",
        "Duration of finished items (all attempts), by operation.",
        unit="seconds",
    )
    _histogram(
        duration,
        _rows(
            con,
            "select b.operation, i.duration_ms / 1000.0 from batch_items i join batches b "
            "using (batch_id) where i.duration_ms is not null and i.status in "
            "('succeeded', 'failed', 'skipped')",
        ),
        DURATION_BUCKETS,
    )
    families.append(duration)

    http429 = family(
        "http_429",
        "counter",
        "HTTP 429 answers: per endpoint from the shared HTTP limits (source=endpoint), and "
        "item attempts that ended on one (source=item_attempts).",
    )
    for endpoint, n in _throttled_429(data or config.get_paths().data):
        http429.sample(n or 0, "_total", source="endpoint", endpoint=endpoint)
    (n,) = con.execute(
        "select count(*) from item_attempts where error like '%HTTP 429%' "
        "or error like '%429 Too Many Requests%'"
    ).fetchone()
    http429.sample(n, "_total", source="item_attempts")
    families.append(http429)

    hooks = family(
        "webhook_deliveries",
        "counter",
        "Webhook delivery attempts by result (delivered, failed).",
    )
    for delivered, n in _rows(
        con, "select delivered, count(*) from webhook_deliveries group by all order by all"
    ):
        hooks.sample(n, "_total", result="delivered" if delivered else "failed")
    families.append(hooks)

    failures = family(
        "webhook_failures",
        "counter",
        "Webhook delivery attempts that failed (each retry counts).",
    )
    (n,) = con.execute("select count(*) from webhook_deliveries where not delivered").fetchone()
    failures.sample(n, "_total")
    families.append(failures)

    lines = [line for f in families for line in f.lines]
    return "\n".join([*lines, "# EOF"] if openmetrics else lines) + "\n"


def get_metrics(*, openmetrics: bool = True) -> str:
    paths = config.get_paths()
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        return render(con, paths.data, openmetrics=openmetrics)
