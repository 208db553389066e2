"""Lifecycle webhooks, derived from ``batch_events`` through an outbox.

Nothing on an item's path sends anything: the ledger writes its events as always, and a
sender (the ``webhook_sender`` sensor under the daemon, a background thread of ``submit
--wait``, or ``batch-pipelines webhooks deliver``) does one :func:`deliver` pass at a time:

1. **enqueue** (one short write): the events after ``webhook_cursor`` that are lifecycle events
   (:data:`~batch_pipelines.core.webhooks.LIFECYCLE_EVENTS`) become one ``webhook_outbox`` row
   per endpoint, with the body to send; the cursor moves past them. Events older than
   :data:`MAX_EVENT_AGE` are history (webhooks configured late do not replay the past), and an
   event repeating the last one of its batch (``paused`` noted by two writers) is dropped.
2. **lease** (one short write): per endpoint, the rows due, in event order up to the first one
   waiting for its backoff, are marked ``sending`` for :data:`LEASE` (two senders never send
   the same row; a sender that died leaves rows that are due again when their lease ends).
3. **send** each row once, outside the warehouse lock, and record the attempt in
   ``webhook_deliveries`` (one short write each): ``delivered``, or ``pending`` again with an
   exponential backoff, or ``failed`` after :data:`MAX_ATTEMPTS` attempts or a 4xx answer
   other than 408/429. A failing endpoint stops its own rows for this pass, so events reach
   each endpoint in order; other endpoints go on.

Retention: :func:`purge` (run by cleanup's ``old_batches`` target, so by the nightly cleanup
too) deletes ``delivered`` and ``failed`` rows created before the cutoff, and the delivery
attempts before it. Rows still to send (``pending``, ``sending``) are kept whatever their
age, and so are the rows of a batch still running: its last event is what stops a repeat.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb

from batch_pipelines.core import config, lake, warehouse
from batch_pipelines.core.http import Retry
from batch_pipelines.core.ledger.models import (
    TERMINAL_BATCH_STATUSES,
    from_json,
    to_json,
    utcnow,
)
from batch_pipelines.core.webhooks import (
    LIFECYCLE_EVENTS,
    Endpoint,
    WebhookConfigError,
    encode,
    endpoints,
    lifecycle_body,
    send,
    signing_secret,
)

log = logging.getLogger("batch_pipelines.core.outbox")

MAX_ATTEMPTS = 6
MAX_EVENT_AGE = timedelta(hours=1)
LEASE = timedelta(minutes=2)
BACKOFF = Retry(backoff_base_s=2, backoff_max_s=300, jitter=0.25)
SEND_TIMEOUT_S = 10.0
_NO_REPEAT = {"batch.progress"}
# MAX_EVENT_AGE in lake event ids (milliseconds since the epoch, then 6 random digits).
_LAKE_LOOKBACK_IDS = int(MAX_EVENT_AGE.total_seconds() * 1000) * 1_000_000


_OUTBOX_DONE = (
    "from webhook_outbox o where o.status in ('delivered', 'failed', 'skipped') "
    "and o.created_at < $cutoff "
    "and (o.batch_id is null or not exists (select 1 from batches b where b.batch_id = "
    "o.batch_id and b.status not in (select unnest($terminal))))"
)
# Attempts go by their own age, except those of a row still to send: they say why it is late.
_DELIVERIES_DONE = (
    'from webhook_deliveries d where d."at" < $cutoff and not exists (select 1 from '
    "webhook_outbox o where o.event_id = d.event_id and o.endpoint_id = d.endpoint_id and "
    "o.status in ('pending', 'sending'))"
)


def _outbox_args(cutoff: datetime) -> dict[str, Any]:
    return {"cutoff": cutoff, "terminal": list(TERMINAL_BATCH_STATUSES)}


def purgeable(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> tuple[int, int]:
    """(outbox rows, delivery attempts) that :func:`purge` would delete."""
    (rows,) = con.execute(f"select count(*) {_OUTBOX_DONE}", _outbox_args(cutoff)).fetchone()
    (attempts,) = con.execute(f"select count(*) {_DELIVERIES_DONE}", {"cutoff": cutoff}).fetchone()
    return rows, attempts


def purge(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> tuple[int, int]:
    """Delete the delivered and given-up outbox rows created before ``cutoff`` and the
    attempts made before it, never what is still to send (caller's transaction); returns
    (outbox rows, delivery attempts) deleted."""
    (attempts,) = con.execute(
        f"delete from webhook_deliveries where delivery_id in (select d.delivery_id "
        f"{_DELIVERIES_DONE})",
        {"cutoff": cutoff},
    ).fetchone()
    (rows,) = con.execute(
        "delete from webhook_outbox where (event_id, endpoint_id) in (select "
        f"(o.event_id, o.endpoint_id) {_OUTBOX_DONE})",
        _outbox_args(cutoff),
    ).fetchone()
    return rows, attempts


@dataclass
class PassResult:
    enqueued: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    due_later: int = 0


def enqueue(con: duckdb.DuckDBPyConnection, targets: list[Endpoint], now: datetime) -> int:
    """Turn the lifecycle events after the cursor into outbox rows (caller's transaction).

    On a lake, event ids come from the clock at the start of the writer's transaction (a lake
    has no sequence), so an event can commit after one with a higher id that the cursor has
    already passed. There each pass also looks back over :data:`MAX_EVENT_AGE` (older events
    are history anyway) and takes what the outbox does not hold yet; an event dropped as a
    repeat is kept as a ``skipped`` row, so a second look never sends it."""
    (cursor,) = con.execute(
        "select event_id from webhook_cursor where name = 'batch_events'"
    ).fetchone()
    (newest,) = con.execute(
        "select max(event_id) from batch_events where event_id > ?", [cursor]
    ).fetchone()
    on_lake = lake.is_lake(con)
    since = cursor - _LAKE_LOOKBACK_IDS if on_lake else cursor
    if newest is None and not on_lake:
        return 0
    events = con.execute(
        'select event_id, batch_id, event, "at", detail::varchar from batch_events '
        "where event_id > ? and event in (select unnest(?)) order by event_id",
        [since, list(LIFECYCLE_EVENTS)],
    ).fetchall()
    taken: set[tuple[int, str]] = set()
    if on_lake and events:
        taken = set(
            con.execute(
                "select event_id, endpoint_id from webhook_outbox where event_id > ?", [since]
            ).fetchall()
        )
    n = 0
    last_seen: dict[tuple[str | None, str], str] = {}
    for event_id, batch_id, event, at, detail in events:
        if at < now - MAX_EVENT_AGE:
            continue
        todo = [t for t in targets if (event_id, t.endpoint_id) not in taken]
        if not todo:
            continue
        batch = _batch(con, batch_id)
        body = lifecycle_body(event_id, event, at, batch, from_json(detail, {}), batch_id)
        for t in todo:
            repeat = (
                body["event"] not in _NO_REPEAT
                and _last_event(con, last_seen, batch_id, t) == body["event"]
            )
            # "insert or ignore" without the primary key a lake cannot hold.
            con.execute(
                "insert into webhook_outbox (event_id, endpoint_id, endpoint, "
                "batch_id, event, body, status, created_at) select ?, ?, ?, ?, ?, ?, "
                "?, ? where not exists (select 1 from webhook_outbox "
                "where event_id = ? and endpoint_id = ?)",
                [event_id, t.endpoint_id, t.label, batch_id, body["event"], to_json(body)]
                + ["skipped" if repeat else "pending", now, event_id, t.endpoint_id],
            )
            last_seen[(batch_id, t.endpoint_id)] = body["event"]
            n += not repeat
    if newest is not None:
        con.execute("update webhook_cursor set event_id = ? where name = 'batch_events'", [newest])
    return n


def _batch(con: duckdb.DuckDBPyConnection, batch_id: str | None) -> dict[str, Any] | None:
    if batch_id is None:
        return None
    rel = con.execute(
        "select operation, name, status, total_items, processed_items, succeeded_items, "
        "failed_items, skipped_items, cancelled_items, correlation_id from batches "
        "where batch_id = ?",
        [batch_id],
    )
    row = rel.fetchone()
    return dict(zip([d[0] for d in rel.description], row, strict=True)) if row else None


def _last_event(
    con: duckdb.DuckDBPyConnection,
    seen: dict[tuple[str | None, str], str],
    batch_id: str | None,
    target: Endpoint,
) -> str | None:
    key = (batch_id, target.endpoint_id)
    if key not in seen:
        row = con.execute(
            "select event from webhook_outbox where batch_id is not distinct from ? and "
            "endpoint_id = ? order by event_id desc limit 1",
            [batch_id, target.endpoint_id],
        ).fetchone()
        seen[key] = row[0] if row else None
    return seen[key]


def lease(con: duckdb.DuckDBPyConnection, now: datetime) -> list[dict[str, Any]]:
    """Mark the rows due ``sending`` (caller's transaction); returns them in event order."""
    rows = con.execute(
        "select event_id, endpoint_id, endpoint, batch_id, event, body::varchar, attempts, "
        "coalesce(next_attempt_at, created_at) <= ? as due from webhook_outbox "
        "where status = 'pending' or (status = 'sending' and lease_until < ?) "
        "order by endpoint_id, event_id",
        [now, now],
    ).fetchall()
    taken: list[dict[str, Any]] = []
    blocked: set[str] = set()
    for event_id, endpoint_id, label, batch_id, event, body, attempts, due in rows:
        if endpoint_id in blocked:
            continue
        if not due:
            blocked.add(endpoint_id)  # later events wait for this one: order per endpoint
            continue
        taken.append(
            {
                "event_id": event_id,
                "endpoint_id": endpoint_id,
                "endpoint": label,
                "batch_id": batch_id,
                "event": event,
                "body": from_json(body),
                "attempts": attempts,
            }
        )
    for r in taken:
        con.execute(
            "update webhook_outbox set status = 'sending', lease_until = ? "
            "where event_id = ? and endpoint_id = ?",
            [now + LEASE, r["event_id"], r["endpoint_id"]],
        )
    taken.sort(key=lambda r: r["event_id"])
    return taken


def _record(
    paths: config.Paths,
    row: dict[str, Any],
    delivered: bool,
    status_code: int | None,
    detail: str,
    duration_ms: float,
) -> str:
    attempt = row["attempts"] + 1
    final_4xx = (
        status_code is not None and 400 <= status_code < 500 and status_code not in (408, 429)
    )
    if delivered:
        status, next_at = "delivered", None
    elif attempt >= MAX_ATTEMPTS or final_4xx:
        status, next_at = "failed", None
    else:
        status, next_at = "pending", utcnow() + timedelta(seconds=BACKOFF.delay(attempt))

    def write(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "insert into webhook_deliveries (event_id, endpoint_id, endpoint, batch_id, event, "
            'attempt, "at", duration_ms, status_code, delivered, error) '
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row["event_id"],
                row["endpoint_id"],
                row["endpoint"],
                row["batch_id"],
                row["event"],
                attempt,
                utcnow(),
                duration_ms,
                status_code,
                delivered,
                None if delivered else detail,
            ],
        )
        con.execute(
            "update webhook_outbox set status = ?, attempts = ?, next_attempt_at = ?, "
            "lease_until = null where event_id = ? and endpoint_id = ?",
            [status, attempt, next_at, row["event_id"], row["endpoint_id"]],
        )

    warehouse.write(write, paths.warehouse, timeout_s=60)
    return status


def _release(paths: config.Paths, rows: list[dict[str, Any]]) -> None:
    def write(con: duckdb.DuckDBPyConnection) -> None:
        for r in rows:
            con.execute(
                "update webhook_outbox set status = 'pending', lease_until = null "
                "where event_id = ? and endpoint_id = ? and status = 'sending'",
                [r["event_id"], r["endpoint_id"]],
            )

    warehouse.write(write, paths.warehouse, timeout_s=60)


def deliver(paths: config.Paths | None = None, targets: list[Endpoint] | None = None) -> PassResult:
    """One pass: enqueue new events, send what is due (see the module)."""
    paths = paths or config.get_paths()
    targets = endpoints() if targets is None else targets
    result = PassResult()
    if not targets:
        return result
    secret = signing_secret()
    by_id = {t.endpoint_id: t for t in targets}

    def take(con: duckdb.DuckDBPyConnection) -> tuple[int, list[dict[str, Any]]]:
        now = utcnow()
        return enqueue(con, targets, now), lease(con, now)

    # On a lake, a commit that conflicts with another writer's runs again on fresh data.
    result.enqueued, rows = warehouse.write(take, paths.warehouse, timeout_s=60)
    stopped: set[str] = set()
    left: list[dict[str, Any]] = []
    for row in rows:
        target = by_id.get(row["endpoint_id"])
        if row["endpoint_id"] in stopped:
            left.append(row)
            continue
        started = time.monotonic()
        if target is None:  # no longer configured
            delivered, code, detail = False, None, "endpoint no longer configured"
            row["attempts"] = MAX_ATTEMPTS - 1
        else:
            delivered, code, detail = send(
                target, encode(row["body"], target), secret, timeout_s=SEND_TIMEOUT_S
            )
        ms = (time.monotonic() - started) * 1000
        status = _record(paths, row, delivered, code, detail, ms)
        if delivered:
            result.delivered += 1
        else:
            result.failed_attempts += 1
            log.warning(
                "webhook %s of batch %s to %s: %s (%s)",
                row["event"],
                row["batch_id"],
                row["endpoint"],
                detail,
                status,
            )
            if status == "pending":
                stopped.add(row["endpoint_id"])
    if left:
        _release(paths, left)
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        (result.due_later,) = con.execute(
            "select count(*) from webhook_outbox where status in ('pending', 'sending')"
        ).fetchone()
    return result


class WebhookSender:
    """Delivers in a background thread while a batch runs in this process (``submit
    --wait``), every ``interval_s``; :meth:`stop` makes a last pass for up to ``drain_s``."""

    def __init__(self, paths: config.Paths | None = None, interval_s: float = 1.0) -> None:
        self.paths = paths or config.get_paths()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"webhooks-{uuid.uuid4().hex[:6]}", daemon=True
        )
        try:
            self.targets = endpoints()
        except WebhookConfigError as exc:  # a bad URL never stops a batch
            log.warning("lifecycle webhooks off: %s", exc)
            self.targets = []

    def __enter__(self) -> WebhookSender:
        if self.targets:
            self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Interrupted: a short last pass, for the batch.paused event of the interruption.
        self.stop(drain_s=2.0 if exc_type is not None else 10.0)

    def _pass(self) -> PassResult | None:
        try:
            return deliver(self.paths, self.targets)
        except Exception:  # noqa: BLE001 - webhooks never fail the batch
            log.warning("webhook delivery pass failed", exc_info=True)
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._pass()

    def stop(self, drain_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(30)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            r = self._pass()
            if r is None or not r.due_later or (not r.delivered and not r.enqueued):
                break
