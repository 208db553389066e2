"""The analytics views, API, analytics assets, sensors, schedule and CLI give the right figures.

Guards against wrong numbers users would trust: every figure of the views is recomputed
independently with pandas / plain Python from the raw ledger rows of a ledger populated by
hand (known durations, errors, scores, an empty batch, a batch with only failures, NULL
scores, a running batch). Also guards the speed contract (a ``batch_id`` filter must reach
the ``batch_items`` scan), the analytics assets' metadata, when they are refreshed, and the
CLI's exit codes.
"""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_schedule_context, materialize

from batch_pipelines import get_batch_metrics, get_stats, list_batches
from batch_pipelines.core import analytics, warehouse
from batch_pipelines.defs.analytics_assets import ANALYTICS_ASSETS, analytics_run_config
from batch_pipelines.defs.analytics_refresh import (
    analytics_reports_schedule,
    decide_for_finished,
    decide_for_schedule,
)
from batch_pipelines.defs.analytics_render import md_table
from batch_pipelines.defs.resources import WarehouseResource
from batch_pipelines_tests.helpers import cli

T0 = datetime(2026, 1, 1, 12, 0, 0)
MIXED = "import-20260101-120000-aaaaaa"
EMPTY = "import-20260101-120100-bbbbbb"
ALL_FAILED = "export-20260101-120200-cccccc"
RUNNING = "annotate-20260101-120300-dddddd"
RANDOM = "validate-20260101-120400-eeeeee"
UUID = "123e4567-e89b-12d3-a456-426614174000"

# (category, message, the fingerprint a person expects)
ERROR_CASES = [
    (
        "validation",
        "could not parse line 12 of /data/inbox/a_9.csv",
        "could not parse line <n> of <path>",
    ),
    (
        "validation",
        "could not parse line 7 of /data/inbox/b.csv",
        "could not parse line <n> of <path>",
    ),
    (
        "transient",
        f"HTTP 503 from annotator (request {UUID})",
        "HTTP <n> from annotator (request <uuid>)",
    ),
    ("validation", "column 'age' not found in \"penguins\"", "column <str> not found in <str>"),
    (
        "permanent",
        "sha256 mismatch: deadbeefcafe1234 != 0x00ff00ff00ff",
        "sha<n> mismatch: <hex> != <hex>",
    ),
    ("not_found", "no such file: data/samples/x/y_1.json", "no such file: <path>"),
    ("timeout", "timeout after 30.5s (attempt 3)", "timeout after <n>s (attempt <n>)"),
    ("permanent", f"batch {MIXED} stopped", "batch <batch> stopped"),
    ("permanent", "  multi\n line   error  ", "multi line error"),
    ("permanent", None, "(no message)"),
    ("permanent", "and/or something", "and/or something"),
    ("transient", "see https://example.com/a/b?x=1 now", "see <url> now"),
    ("permanent", "read ./rel/file.csv and ~/home/f.txt", "read <path> and <path>"),
]

# Random batch error templates: (category, message for item i, expected fingerprint).
TEMPLATES = [
    (
        "validation",
        lambda i: f"could not parse line {i} of /srv/in/file_{i}.csv",
        "could not parse line <n> of <path>",
    ),
    (
        "transient",
        lambda i: f"HTTP 429 rate limited (retry after {i % 9}.5 s)",
        "HTTP <n> rate limited (retry after <n> s)",
    ),
    ("validation", lambda i: f"column 'c{i}' has {i * 3} nulls", "column <str> has <n> nulls"),
    (None, lambda i: f"worker {i:08x}ff crashed", "worker <hex> crashed"),
]


def _item(batch_id: str, n: int, status: str, **kw) -> dict:  # noqa: ANN003
    row = {
        "batch_id": batch_id,
        "item_id": f"item-{n:04d}",
        "seq": n,
        "chunk_no": n // 100,
        "partition_key": f"{batch_id}~item-{n}~00000000",
        "status": status,
        "attempts": 0 if status in ("pending", "cancelled") else 1,
        "duration_ms": None,
        "quality_score": None,
        "error": None,
        "error_category": None,
        "started_at": None,
        "finished_at": None,
    }
    row.update(kw)
    return row


def _mixed_items() -> list[dict]:
    rows = []
    scores = [0.0, 0.2, 0.39999, 0.4, 0.6, 0.8, 1.0, None]
    for n, score in enumerate(scores):  # 8 succeeded, 100..800 ms, one per 20 s
        start = T0 + timedelta(seconds=20 * n)
        rows.append(
            _item(
                MIXED,
                n,
                "succeeded",
                duration_ms=100.0 * (n + 1),
                quality_score=score,
                started_at=start,
                finished_at=start + timedelta(milliseconds=100 * (n + 1)),
                attempts=2 if n == 0 else 1,
            )
        )
    for k, (cat, msg, _) in enumerate(ERROR_CASES[:3]):
        n = 8 + k
        start = T0 + timedelta(seconds=20 * n)
        rows.append(
            _item(
                MIXED,
                n,
                "failed",
                duration_ms=[900.0, 1000.0, 50.0][k],
                error=msg,
                error_category=cat,
                started_at=start,
                finished_at=start + timedelta(milliseconds=[900, 1000, 50][k]),
            )
        )
    start = T0 + timedelta(seconds=220)
    rows.append(
        _item(
            MIXED,
            11,
            "skipped",
            duration_ms=10.0,
            started_at=start,
            finished_at=start + timedelta(milliseconds=10),
        )
    )
    rows.append(
        _item(
            MIXED,
            12,
            "cancelled",
            error="batch cancelled",
            error_category="cancelled",
            finished_at=T0 + timedelta(seconds=300),
        )
    )
    return rows


def _all_failed_items() -> list[dict]:
    rows = []
    for n, (cat, msg, _) in enumerate(ERROR_CASES[3:]):
        start = T0 + timedelta(minutes=2, seconds=7 * n)
        rows.append(
            _item(
                ALL_FAILED,
                n,
                "failed",
                duration_ms=5.0 + n,
                error=msg,
                error_category=None if n == 2 else cat,
                started_at=start,
                finished_at=start + timedelta(milliseconds=5 + n),
            )
        )
    return rows


def _running_items() -> list[dict]:
    rows = []
    for n in range(3):
        start = T0 + timedelta(minutes=3, seconds=n)
        rows.append(
            _item(
                RUNNING,
                n,
                "succeeded",
                duration_ms=30.0,
                started_at=start,
                finished_at=start + timedelta(milliseconds=30),
            )
        )
    rows.append(_item(RUNNING, 3, "running", started_at=T0 + timedelta(minutes=3, seconds=5)))
    rows += [_item(RUNNING, n, "pending") for n in (4, 5)]
    return rows


def _random_items(n_items: int = 400) -> list[dict]:
    rng = random.Random(4)
    rows = []
    clock = T0 + timedelta(minutes=4)
    for n in range(n_items):
        r = rng.random()
        status = (
            "succeeded"
            if r < 0.7
            else "failed"
            if r < 0.88
            else "skipped"
            if r < 0.95
            else "cancelled"
        )
        ms = round(rng.expovariate(1 / 250.0), 3)
        clock += timedelta(milliseconds=rng.randint(100, 4000))
        kw: dict = {}
        if status == "cancelled":
            kw = {"error": "cancelled", "error_category": "cancelled", "finished_at": clock}
        else:
            kw = {
                "duration_ms": ms,
                "started_at": clock,
                "finished_at": clock + timedelta(milliseconds=ms),
                "attempts": rng.choice([1, 1, 1, 2, 3]),
            }
        if status == "succeeded" and rng.random() < 0.85:
            kw["quality_score"] = rng.choice([round(rng.random(), 4), 0.2, 0.4, 0.6, 0.8, 1.0])
        if status == "failed":
            cat, make, _ = TEMPLATES[n % len(TEMPLATES)]
            kw.update(error=make(n), error_category=cat)
        rows.append(_item(RANDOM, n, status, **kw))
    return rows


BATCHES = [
    (MIXED, "import", "completed_with_errors", 0),
    (EMPTY, "import", "completed", 1),
    (ALL_FAILED, "export", "failed", 2),
    (RUNNING, "annotate", "running", 3),
    (RANDOM, "validate", "completed_with_errors", 4),
]


def populate(path: Path) -> None:
    items = _mixed_items() + _all_failed_items() + _running_items() + _random_items()
    counts: dict[str, int] = {}
    for it in items:
        counts[it["batch_id"]] = counts.get(it["batch_id"], 0) + 1
    with warehouse.connect(path) as con:
        con.execute("begin")
        for batch_id, op, status, k in BATCHES:
            created = T0 + timedelta(minutes=k)
            done = status in ("completed", "completed_with_errors", "failed")
            con.execute(
                "insert into batches (batch_id, operation, name, status, priority, total_items, "
                "created_at, completed_at) values (?, ?, ?, ?, 'normal', ?, ?, ?)",
                [
                    batch_id,
                    op,
                    f"batch {k}",
                    status,
                    counts.get(batch_id, 0),
                    created,
                    created + timedelta(hours=1) if done else None,
                ],
            )
        cols = list(items[0])
        con.executemany(
            f"insert into batch_items ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
            [[it[c] for c in cols] for it in items],
        )
        con.execute("commit")


@pytest.fixture
def ledger(env) -> Path:  # noqa: ANN001
    populate(env.warehouse)
    return env.warehouse


def raw_items(path: Path) -> pd.DataFrame:
    with warehouse.connect(path, read_only=True) as con:
        return con.execute(
            "select batch_id, item_id, status, attempts, duration_ms, quality_score, error, "
            "error_category, started_at, finished_at from batch_items"
        ).df()


def view(path: Path, name: str, where: str = "", params: list | None = None) -> list[dict]:
    with warehouse.connect(path, read_only=True) as con:
        return analytics.query_rows(con, f"select * from {name} {where}", params)


def close(a, b) -> bool:  # noqa: ANN001
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and a == pytest.approx(b, rel=1e-9, abs=1e-9)


FINISHED = ("succeeded", "failed", "skipped")


def expected_fingerprint(message: str | None) -> str:
    message = message if isinstance(message, str) else None  # pandas gives NaN for NULL
    for _, msg, fp in ERROR_CASES:
        if msg == message:
            return fp
    for _, make, fp in TEMPLATES:
        probe = make(0)
        if message is not None and message.split(" ")[0] == probe.split(" ")[0]:
            return fp
    raise AssertionError(f"no expected fingerprint for {message!r}")


# -------------------------------------------------------------------------------- views


def test_error_fingerprint_normalises_variable_parts(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        for _, message, fp in ERROR_CASES:
            assert con.execute("select error_fingerprint(?)", [message]).fetchone()[0] == fp
        for _, make, fp in TEMPLATES:
            assert {
                con.execute("select error_fingerprint(?)", [make(i)]).fetchone()[0]
                for i in (1, 17, 123456)
            } == {fp}
        long = con.execute("select error_fingerprint(?)", ["x" * 1000]).fetchone()[0]
        assert len(long) == 300


@pytest.mark.usefixtures("any_env")  # and again on a lake
def test_batch_metrics_match_an_independent_computation(ledger: Path) -> None:
    df = raw_items(ledger)
    rows = {r["batch_id"]: r for r in view(ledger, "batch_metrics")}
    assert set(rows) == {b[0] for b in BATCHES}
    for batch_id, op, status, _ in BATCHES:
        got = rows[batch_id]
        items = df[df.batch_id == batch_id]
        fin = items[items.status.isin(FINISHED)]
        assert (got["operation"], got["status"]) == (op, status)
        assert got["total"] == len(items)
        for s in ("pending", "running", "succeeded", "failed", "skipped", "cancelled"):
            assert got[s] == int((items.status == s).sum()), (batch_id, s)
        assert got["finished"] == len(fin)
        assert got["attempts"] == int(items.attempts.sum())
        assert got["retried_items"] == int((items.attempts > 1).sum())
        exp_rate = (fin.status == "succeeded").sum() / len(fin) if len(fin) else None
        assert close(got["success_rate"], exp_rate), batch_id
        durations = fin.duration_ms.dropna()
        for q, col in (
            (0.5, "p50_duration_ms"),
            (0.95, "p95_duration_ms"),
            (0.99, "p99_duration_ms"),
        ):
            exp = float(durations.quantile(q, interpolation="linear")) if len(durations) else None
            assert close(got[col], exp), (batch_id, col)
        assert close(got["avg_duration_ms"], float(durations.mean()) if len(durations) else None)
        assert close(got["total_duration_ms"], float(durations.sum()) if len(durations) else None)
        scores = items.quality_score.dropna()
        assert close(got["mean_quality"], float(scores.mean()) if len(scores) else None)
        assert got["scored_items"] == len(scores)
        if len(fin):
            first, last = fin.started_at.min(), fin.finished_at.max()
            wall = (last - first).total_seconds()
            assert got["first_started_at"] == first.to_pydatetime()
            assert got["last_finished_at"] == last.to_pydatetime()
            assert close(got["wall_time_s"], wall)
            assert close(got["throughput_per_min"], len(fin) / (wall / 60))
        else:
            assert got["wall_time_s"] is None and got["throughput_per_min"] is None


def test_batch_metrics_hand_checked_edge_cases(ledger: Path) -> None:
    rows = {r["batch_id"]: r for r in view(ledger, "batch_metrics")}
    mixed = rows[MIXED]
    assert (mixed["succeeded"], mixed["failed"], mixed["skipped"], mixed["cancelled"]) == (
        8,
        3,
        1,
        1,
    )
    assert mixed["success_rate"] == pytest.approx(8 / 12)  # cancelled items do not count
    assert mixed["total_duration_ms"] == pytest.approx(3600 + 1950 + 10)
    assert mixed["mean_quality"] == pytest.approx((0 + 0.2 + 0.39999 + 0.4 + 0.6 + 0.8 + 1.0) / 7)
    empty = rows[EMPTY]
    assert empty["total"] == 0 and empty["success_rate"] is None
    assert empty["p50_duration_ms"] is None and empty["mean_quality"] is None
    failed = rows[ALL_FAILED]
    assert failed["success_rate"] == 0.0 and failed["mean_quality"] is None
    running = rows[RUNNING]
    assert (running["pending"], running["running"], running["succeeded"]) == (2, 1, 3)
    assert running["success_rate"] == 1.0 and running["p99_duration_ms"] == 30.0


@pytest.mark.usefixtures("any_env")  # and again on a lake
def test_error_distribution_matches_an_independent_computation(ledger: Path) -> None:
    df = raw_items(ledger)
    failed = df[df.status == "failed"].copy()
    failed["error_category"] = failed.error_category.fillna("unknown")
    failed["fingerprint"] = [expected_fingerprint(m) for m in failed.error]
    expected = {}
    for (batch_id, cat, fp), group in failed.groupby(["batch_id", "error_category", "fingerprint"]):
        total = int((failed.batch_id == batch_id).sum())
        expected[(batch_id, cat, fp)] = (len(group), 100.0 * len(group) / total)
    rows = view(ledger, "error_distribution")
    got = {
        (r["batch_id"], r["error_category"], r["fingerprint"]): (r["count"], r["percentage"])
        for r in rows
    }
    assert got.keys() == expected.keys()
    for key, (n, pct) in expected.items():
        assert got[key][0] == n and got[key][1] == pytest.approx(pct), key
    ops = {r["batch_id"]: r["operation"] for r in rows}
    assert ops[MIXED] == "import" and ops[ALL_FAILED] == "export"
    # the two "could not parse" errors of the mixed batch group together: 2 of its 3 failures
    assert got[(MIXED, "validation", "could not parse line <n> of <path>")] == (
        2,
        pytest.approx(200 / 3),
    )
    assert (ALL_FAILED, "unknown", "no such file: <path>") in got  # NULL category
    assert {k[0] for k in got} == {MIXED, ALL_FAILED, RANDOM}  # no failures, no rows
    for batch_id in (MIXED, ALL_FAILED, RANDOM):
        assert sum(v[1] for k, v in got.items() if k[0] == batch_id) == pytest.approx(100.0)


def _bucket(score: float) -> int:
    for bucket, upper in enumerate((0.2, 0.4, 0.6, 0.8), start=1):
        if score < upper:
            return bucket
    return 5


def test_quality_distribution_has_five_buckets_per_batch(ledger: Path) -> None:
    df = raw_items(ledger)
    rows = view(ledger, "quality_distribution", "order by batch_id, bucket")
    assert len(rows) == 5 * len(BATCHES)
    for batch_id, *_ in BATCHES:
        mine = [r for r in rows if r["batch_id"] == batch_id]
        assert [r["label"] for r in mine] == ["0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"]
        scores = df[(df.batch_id == batch_id)].quality_score.dropna().tolist()
        counts = [sum(1 for s in scores if _bucket(s) == b) for b in range(1, 6)]
        assert [r["count"] for r in mine] == counts, batch_id
        for r, n in zip(mine, counts, strict=True):
            assert close(r["percentage"], 100.0 * n / len(scores) if scores else None)
    mixed = [r["count"] for r in rows if r["batch_id"] == MIXED]
    assert mixed == [1, 2, 1, 1, 2]  # 0.2 -> second bucket, 1.0 -> last bucket


def test_batch_timeline_matches_an_independent_computation(ledger: Path) -> None:
    df = raw_items(ledger)
    fin = df[df.status.isin(FINISHED) & df.finished_at.notna()].copy()
    fin["minute"] = fin.finished_at.dt.floor("min")
    rows = view(ledger, "batch_timeline", "order by batch_id, minute")
    assert {r["batch_id"] for r in rows} == set(fin.batch_id)
    for batch_id, items in fin.groupby("batch_id"):
        mine = [r for r in rows if r["batch_id"] == batch_id]
        per = items.groupby("minute").status.value_counts().unstack(fill_value=0)
        assert [r["minute"] for r in mine] == [m.to_pydatetime() for m in per.index]
        cum_f = cum_s = cum_x = 0
        for r, (_, counts) in zip(mine, per.iterrows(), strict=True):
            ok, bad, skip = (int(counts.get(s, 0)) for s in FINISHED)
            cum_f, cum_s, cum_x = cum_f + ok + bad + skip, cum_s + ok, cum_x + bad
            assert (r["finished"], r["succeeded"], r["failed"], r["skipped"]) == (
                ok + bad + skip,
                ok,
                bad,
                skip,
            )
            assert (
                r["cumulative_finished"],
                r["cumulative_succeeded"],
                r["cumulative_failed"],
            ) == (cum_f, cum_s, cum_x)
            assert r["running_success_rate"] == pytest.approx(cum_s / cum_f)


@pytest.mark.usefixtures("any_env")  # and again on a lake
def test_operation_stats_match_an_independent_computation(ledger: Path) -> None:
    df = raw_items(ledger)
    rows = {r["operation"]: r for r in view(ledger, "operation_stats")}
    assert set(rows) == {"import", "export", "annotate", "validate"}
    for op in rows:
        ids = [b[0] for b in BATCHES if b[1] == op]
        statuses = [b[2] for b in BATCHES if b[1] == op]
        items = df[df.batch_id.isin(ids)]
        fin = items[items.status.isin(FINISHED)]
        got = rows[op]
        assert got["batches"] == len(ids)
        for s in ("running", "completed", "completed_with_errors", "failed", "cancelled"):
            assert got[f"batches_{s}"] == statuses.count(s)
        terminal = [
            s
            for s in statuses
            if s in ("completed", "completed_with_errors", "failed", "cancelled")
        ]
        done = [s for s in terminal if s.startswith("completed")]
        assert close(got["completion_rate"], len(done) / len(terminal) if terminal else None)
        assert got["items_total"] == len(items)
        for s in ("succeeded", "failed", "skipped", "cancelled", "pending", "running"):
            assert got[f"items_{s}"] == int((items.status == s).sum())
        assert close(
            got["item_success_rate"],
            (fin.status == "succeeded").sum() / len(fin) if len(fin) else None,
        )
        assert close(got["total_duration_ms"], float(fin.duration_ms.sum()) if len(fin) else None)
        assert close(got["avg_duration_ms"], float(fin.duration_ms.mean()) if len(fin) else None)
        scores = items.quality_score.dropna()
        assert close(got["mean_quality"], float(scores.mean()) if len(scores) else None)
    assert rows["import"]["batches"] == 2 and rows["import"]["completion_rate"] == 1.0
    assert rows["export"]["completion_rate"] == 0.0


def _scan_filters(plan: list[dict], table: str) -> list[str]:
    found = []
    for node in plan:
        info = node.get("extra_info", {})
        if str(info.get("Table", "")).endswith(table):
            found.append(json.dumps(info.get("Filters", "")))
        found += _scan_filters(node.get("children", []), table)
    return found


@pytest.mark.parametrize(
    "name", ["batch_metrics", "error_distribution", "quality_distribution", "batch_timeline"]
)
def test_batch_filter_reaches_the_item_scan(ledger: Path, name: str) -> None:
    """Without this, one batch's report scans and aggregates every item of every batch."""
    with warehouse.connect(ledger, read_only=True) as con:
        plan = json.loads(
            con.execute(
                f"explain (format json) select * from {name} where batch_id = ?", [MIXED]
            ).fetchall()[0][1]
        )
    scans = _scan_filters(plan, "batch_items")
    assert scans and all("batch_id" in f for f in scans), scans


# -------------------------------------------------------------------------------- API


def test_get_batch_metrics_and_stats(ledger: Path) -> None:
    m = get_batch_metrics(MIXED)
    assert m["batch_id"] == MIXED and m["success_rate"] == pytest.approx(8 / 12)
    assert [q["count"] for q in m["quality"]] == [1, 2, 1, 1, 2]
    assert m["errors"][0]["fingerprint"] == "could not parse line <n> of <path>"
    assert m["error_categories"] == [
        {"error_category": "validation", "count": 2, "percentage": pytest.approx(200 / 3)},
        {"error_category": "transient", "count": 1, "percentage": pytest.approx(100 / 3)},
    ]
    assert sum(t["finished"] for t in m["timeline"]) == 12
    empty = get_batch_metrics(EMPTY)
    assert empty["errors"] == [] and empty["timeline"] == [] and len(empty["quality"]) == 5
    with pytest.raises(analytics.BatchNotFoundError, match="no batch 'nope'"):
        get_batch_metrics("nope")
    with pytest.raises(KeyError):
        get_batch_metrics("nope")

    df = raw_items(ledger)
    fin = df[df.status.isin(FINISHED)]
    s = get_stats(top_errors=3)
    assert s["batches"] == 5
    assert s["batches_by_status"]["completed_with_errors"] == 2
    assert s["batches_by_status"]["paused"] == 0
    assert s["completion_rate"] == pytest.approx(3 / 4)
    assert s["items"]["total"] == len(df) and s["items"]["finished"] == len(fin)
    assert s["item_success_rate"] == pytest.approx((fin.status == "succeeded").sum() / len(fin))
    assert s["durations"]["p95_ms"] == pytest.approx(fin.duration_ms.quantile(0.95))
    assert s["mean_quality"] == pytest.approx(df.quality_score.mean())
    assert [r["operation"] for r in s["by_operation"]] == [
        "annotate",
        "export",
        "import",
        "validate",
    ]
    assert len(s["top_errors"]) == 3
    assert s["top_errors"][0]["count"] >= s["top_errors"][1]["count"] >= s["top_errors"][2]["count"]


def test_list_batches_is_exported_and_validates_limit(ledger: Path) -> None:
    assert [b["batch_id"] for b in list_batches(limit=2)] == [RANDOM, RUNNING]
    assert [b["batch_id"] for b in list_batches(operation=["import"])] == [EMPTY, MIXED]
    for bad in (0, 101):
        with pytest.raises(ValueError, match="between 1 and 100"):
            list_batches(limit=bad)


def test_analytics_on_an_empty_warehouse(env) -> None:  # noqa: ANN001
    s = get_stats()
    assert s["batches"] == 0 and s["completion_rate"] is None and s["by_operation"] == []
    assert s["durations"]["p50_ms"] is None and s["top_errors"] == []


# --------------------------------------------------------------------- analytics assets


def test_analytics_assets_materialize_with_previews_and_charts(ledger: Path, env, instance) -> None:  # noqa: ANN001
    from batch_pipelines.core import ledger as ledger_api

    with warehouse.connect(ledger) as con:
        for n, (start, end) in enumerate(((0, 60), (30, 90))):
            ledger_api.record_run_metrics(
                con,
                {
                    "run_id": f"run{n}",
                    "batch_id": MIXED,
                    "items": 6,
                    "queued_at": T0,
                    "started_at": T0 + timedelta(seconds=start),
                    "ended_at": T0 + timedelta(seconds=end),
                    "queue_wait_s": float(start),
                    "cpu_user_s": 1.5,
                    "cpu_system_s": 0.5,
                    "peak_rss_mb": 200.0 + n,
                },
            )
    result = materialize(
        ANALYTICS_ASSETS,
        instance=instance,
        resources={"warehouse": WarehouseResource()},
        run_config=analytics_run_config(MIXED),
    )
    assert result.success
    meta = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert set(meta) == {a.key.to_user_string() for a in ANALYTICS_ASSETS}
    assert meta["batch_metrics_report"]["dagster/row_count"].value == 5
    assert meta["error_report"]["dagster/row_count"].value == len(
        view(ledger, "error_distribution")
    )
    assert meta["quality_report"]["dagster/row_count"].value == 25
    assert meta["operation_stats_report"]["dagster/row_count"].value == 4
    for name in ("batch_metrics_report", "quality_report", "timeline_report"):
        preview = meta[name]["preview"].value
        assert preview.startswith(f"![{name}](data:image/png;base64,"), name
        png = Path(meta[name]["chart_path"].value)
        assert (
            png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            and png.parent == env.data / "reports" / "analytics"
        )
    assert "data:image" not in meta["error_report"]["preview"].value
    assert "could not parse line <n> of <path>" in meta["error_report"]["preview"].value
    assert "| category | severity | fingerprint |" in meta["error_report"]["preview"].value
    assert "| validation | error |" in meta["error_report"]["preview"].value
    assert meta["batch_metrics_report"]["focus_batch_id"].value == MIXED
    assert meta["batch_metrics_report"]["focus_success_rate"].value == pytest.approx(8 / 12)
    # The Resources part: what the focus batch's chunk runs cost, and the slots they used.
    assert meta["batch_metrics_report"]["focus_peak_rss_mb"].value == 201.0
    assert meta["batch_metrics_report"]["focus_cpu_s_per_item"].value == pytest.approx(4 / 12)
    preview = meta["batch_metrics_report"]["preview"].value
    assert "**Resources**" in preview and "![run slots](data:image/png;base64," in preview
    resources = get_batch_metrics(MIXED)["resources"]
    assert (resources["runs"], resources["max_slots"]) == (2, 2)  # they overlapped 30 s
    assert resources["queue_wait_p50_s"] == pytest.approx(15.0)
    assert [p["runs"] for p in resources["slots"]][:1] == [1]
    report_md = (env.data / "reports" / "analytics" / "operation_stats_report.md").read_text()
    assert "| validate |" in report_md

    # No config: the focus is the batch that finished last (RANDOM, completed an hour after T0+4m).
    result = materialize(
        ANALYTICS_ASSETS[:1], instance=instance, resources={"warehouse": WarehouseResource()}
    )
    event = result.get_asset_materialization_events()[0]
    assert event.event_specific_data.materialization.metadata["focus_batch_id"].value == RANDOM


def test_analytics_assets_on_an_empty_warehouse(env, instance) -> None:  # noqa: ANN001
    result = materialize(
        ANALYTICS_ASSETS, instance=instance, resources={"warehouse": WarehouseResource()}
    )
    assert result.success
    for event in result.get_asset_materialization_events():
        metadata = event.event_specific_data.materialization.metadata
        assert metadata["dagster/row_count"].value == 0
        assert "chart_path" not in metadata


def test_md_table_escapes_and_formats() -> None:
    text = md_table(
        [{"a": "x|y", "b": 0.5, "c": None}], [("a", "A", ""), ("b", "B", "rate"), ("c", "C", "ms")]
    )
    assert text.splitlines() == ["| A | B | C |", "| --- | ---: | ---: |", "| x\\|y | 50.0% |  |"]
    assert md_table([], [("a", "A", "")]) == "_no rows_"


# ------------------------------------------------------------------- sensors and schedule


def test_decide_for_finished() -> None:
    at = datetime(2026, 1, 1, 12)
    assert decide_for_finished([], None) == ([], None)
    assert decide_for_finished([], at) == ([], at)
    requests, cursor = decide_for_finished(
        [(MIXED, at), (EMPTY, at + timedelta(seconds=3))], at - timedelta(seconds=1)
    )
    assert cursor == at + timedelta(seconds=3)
    assert [r.run_key for r in requests] == [
        f"analytics:{MIXED}:2026-01-01T12:00:00",
        f"analytics:{EMPTY}:2026-01-01T12:00:03",
    ]
    assert requests[0].tags["analytics/batch_id"] == MIXED
    assert requests[0].run_config["ops"]["batch_metrics_report"]["config"]["batch_id"] == MIXED
    assert "operation_stats_report" not in requests[0].run_config["ops"]
    # A cursor never goes back.
    assert decide_for_finished([(MIXED, at)], at + timedelta(seconds=9))[1] == at + timedelta(
        seconds=9
    )


def test_decide_for_schedule() -> None:
    now = datetime(2026, 1, 1, 12)
    assert isinstance(decide_for_schedule(None, None), SkipReason)
    assert isinstance(decide_for_schedule(now, None), RunRequest)
    assert isinstance(decide_for_schedule(now, now + timedelta(seconds=1)), SkipReason)
    request = decide_for_schedule(now, now - timedelta(seconds=1))
    assert request.run_key == "analytics-schedule:2026-01-01T12:00:00"


def test_schedule_requests_reports_only_when_a_batch_finished_since(
    ledger: Path, instance: DagsterInstance
) -> None:
    from batch_pipelines.definitions import defs

    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 1, 2)
    )
    assert isinstance(analytics_reports_schedule(context), RunRequest)
    result = defs.resolve_job_def("analytics_reports_job").execute_in_process(instance=instance)
    assert result.success
    skip = analytics_reports_schedule(context)
    assert isinstance(skip, SkipReason) and "no batch finished since" in skip.skip_message


def test_schedule_skips_on_an_empty_warehouse(env, instance: DagsterInstance) -> None:  # noqa: ANN001
    context = build_schedule_context(instance=instance)
    assert "no batch has finished" in analytics_reports_schedule(context).skip_message


def test_sensor_requests_reports_for_batches_run_in_process(samples: Path, env, instance) -> None:  # noqa: ANN001
    """Real batches run in-process (as the CLI and `make demo` do): the sensor, reading the
    ledger, requests one report run per finished batch, once, and waits for a running one."""
    from dagster import build_sensor_context

    from batch_pipelines.app.inprocess import run_batch_in_process
    from batch_pipelines.app.submit import submit_batch
    from batch_pipelines.definitions import defs
    from batch_pipelines.defs.analytics_refresh import analytics_on_batch_finished

    def manifest(path: str) -> dict:
        return {
            "operation": "import",
            "options": {"target_table": "p"},
            "items": [{"path": "data/samples/penguins_2007.csv"}, {"path": path}],
        }

    first = submit_batch(manifest("data/samples/bad/empty.csv"), instance=instance)
    assert run_batch_in_process(first, instance, defs)["status"] == "completed_with_errors"
    second = submit_batch(manifest("data/samples/penguins_2008.tsv"), instance=instance)
    assert run_batch_in_process(second, instance, defs)["status"] == "completed"
    waiting = submit_batch(manifest("data/samples/penguins_2009.json"), instance=instance)

    result = analytics_on_batch_finished(build_sensor_context(instance=instance))
    assert [r.tags["analytics/batch_id"] for r in result.run_requests] == [first, second]
    assert all(
        r.run_key.startswith(f"analytics:{r.tags['analytics/batch_id']}:")
        for r in result.run_requests
    )
    cursor = result.cursor
    # Nothing new: no request, whether or not the runs were launched yet (their run keys
    # keep the daemon from launching them twice).
    for request in result.run_requests:
        defs.resolve_job_def("analytics_reports_job").execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags
        )
    again = analytics_on_batch_finished(build_sensor_context(instance=instance, cursor=cursor))
    assert not again.run_requests
    assert run_batch_in_process(waiting, instance, defs)["status"] == "completed"
    result = analytics_on_batch_finished(build_sensor_context(instance=instance, cursor=cursor))
    assert [r.tags["analytics/batch_id"] for r in result.run_requests] == [waiting]

    # The report itself reads what the runner wrote.
    metrics = get_batch_metrics(first)
    assert (metrics["succeeded"], metrics["failed"], metrics["success_rate"]) == (1, 1, 0.5)
    assert metrics["errors"][0]["error_category"] == "validation"
    assert metrics["p50_duration_ms"] > 0 and metrics["throughput_per_min"] > 0


def test_definitions_include_the_analytics_job_sensors_and_schedule() -> None:
    from batch_pipelines.definitions import defs

    repo = defs.get_repository_def()
    assert "analytics_reports_job" in {j.name for j in repo.get_all_jobs()}
    assert "analytics_on_batch_finished" in {s.name for s in repo.sensor_defs}
    assert "analytics_reports_schedule" in {s.name for s in repo.schedule_defs}
    report = defs.resolve_assets_def("batch_metrics_report")
    deps = {k.to_user_string() for k in report.asset_deps[report.key]}
    assert deps == {
        f"{op}_items"
        for op in ("annotate", "import", "export", "transform", "report", "validate", "cleanup")
    }


# ------------------------------------------------------------------------------------ CLI


def cli_in_process(*args: str):  # noqa: ANN201
    from click.testing import CliRunner

    from batch_pipelines.cli.main import main

    return CliRunner().invoke(main, list(args), terminal_width=160)


@pytest.mark.e2e
def test_cli_report_stats_and_list_exit_codes(ledger: Path, env) -> None:  # noqa: ANN001
    out = cli(env, "report", MIXED)
    assert out.returncode == 0, out.stderr
    for text in ("success rate", "66.7%", "p95", "could not parse line <n> of <path>", "0.8-1.0"):
        assert text in out.stdout, text
    missing = cli(env, "report", "import-20990101-000000-ffffff")
    assert missing.returncode == 1 and "no batch 'import-20990101-000000-ffffff'" in missing.stderr
    out = cli(env, "stats", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["batches"] == 5 and len(data["by_operation"]) == 4
    out = cli(env, "list", "--limit", "101")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "--limit" in out.stderr and "between 1 and 100" in out.stderr


def test_cli_report_stats_and_list_output(ledger: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_pipelines.cli.utils import console

    monkeypatch.setattr(console, "_width", 200)
    out = cli_in_process("report", MIXED, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["success_rate"] == pytest.approx(8 / 12) and len(data["quality"]) == 5
    assert data["errors"][0]["count"] == 2
    out = cli_in_process("report", EMPTY)
    assert out.exit_code == 0 and "no failed items" in out.output, out.output
    out = cli_in_process("stats")
    assert out.exit_code == 0, out.output
    for text in ("by operation", "validate", "most frequent errors", "completion rate"):
        assert text in out.output, text

    def ids(*args: str) -> list[str]:
        result = cli_in_process("list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [b["batch_id"] for b in json.loads(result.output)]

    assert ids() == [b[0] for b in reversed(BATCHES)]
    assert ids("--limit", "100") == ids()
    assert ids("--limit", "2", "--offset", "1") == [RUNNING, ALL_FAILED]
    assert ids("--operation", "import", "--status", "completed") == [EMPTY]
    assert ids(
        "--created-after", "2026-01-01T12:02:00", "--created-before", "2026-01-01T12:04:00"
    ) == [
        RUNNING,
        ALL_FAILED,
    ]
    for bad in (
        ["--limit", "0"],
        ["--offset", "-1"],
        ["--created-after", "soon"],
        ["--status", "x"],
    ):
        result = cli_in_process("list", *bad)
        assert result.exit_code == 2, (bad, result.output)
        assert bad[0] in result.output


def test_cli_list_defaults_to_50_newest_first(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse) as con:
        con.executemany(
            "insert into batches (batch_id, operation, name, status, priority, total_items, "
            "created_at) values (?, 'import', 'b', 'completed', 'normal', 0, ?)",
            [[f"import-20260101-{n:06d}-abcdef", T0 + timedelta(seconds=n)] for n in range(55)],
        )
    result = cli_in_process("list", "--json")
    assert result.exit_code == 0, result.output
    ids = [b["batch_id"] for b in json.loads(result.output)]
    assert len(ids) == 50 and ids[0] == "import-20260101-000054-abcdef"
    result = cli_in_process("list", "--json", "--offset", "50")
    assert len(json.loads(result.output)) == 5
