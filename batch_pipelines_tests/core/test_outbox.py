"""The webhook outbox: events become one row per endpoint, are sent in order, retried with
backoff (every attempt recorded), given up after a 4xx, and a Slack URL gets a Slack body."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from batch_pipelines.core import config, ledger, outbox, warehouse, webhooks
from batch_pipelines.core.keys import new_batch_id
from batch_pipelines_tests.helpers import insert_queued_batch


def _batch() -> str:
    batch_id = new_batch_id("import")
    with warehouse.connect() as con:
        insert_queued_batch(con, batch_id, [{"id": "i0", "path": "x.csv"}])
    return batch_id


class Hook:
    """Answers with the scripted statuses, then 200; keeps raw bodies and headers."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[bytes, dict[str, str]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((raw, dict(self.headers)))
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [json.loads(raw)["event"] for raw, _ in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():  # noqa: ANN201
    h = Hook([503])
    yield h
    h.close()


def _events(batch_id: str, *names: str) -> None:
    with warehouse.connect() as con:
        for name in names:
            ledger.add_event(con, batch_id, name, detail={"percent": 50})


def _deliveries() -> list[tuple]:
    with warehouse.connect(read_only=True) as con:
        return con.execute(
            "select event, attempt, delivered, status_code from webhook_deliveries "
            "order by delivery_id"
        ).fetchall()


def test_retried_in_order_with_every_attempt_recorded(
    env, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    monkeypatch.setenv(webhooks.WEBHOOK_ENV, hook.url)
    monkeypatch.setenv(webhooks.SECRET_ENV, "a-signing-key-123")
    batch_id = _batch()
    _events(batch_id, "batch_submitted", "batch_queued", "batch_progress", "batch_paused")
    _events(batch_id, "batch_paused")  # noted twice: sent once
    paths = config.get_paths()
    first = outbox.deliver(paths)
    assert (first.enqueued, first.delivered, first.failed_attempts) == (3, 0, 1)
    # The 503 holds the later events back (order per endpoint) until its backoff is over.
    assert outbox.deliver(paths).delivered == 0
    with warehouse.connect() as con:
        con.execute(
            "update webhook_outbox set next_attempt_at = ?",
            [ledger.utcnow() - timedelta(seconds=1)],
        )
    second = outbox.deliver(paths)
    assert (second.delivered, second.due_later) == (3, 0)
    assert hook.events() == ["batch.submitted", "batch.submitted", "batch.progress", "batch.paused"]
    assert _deliveries() == [
        ("batch.submitted", 1, False, 503),
        ("batch.submitted", 2, True, 200),
        ("batch.progress", 1, True, 200),
        ("batch.paused", 1, True, 200),
    ]
    for raw, headers in hook.received:
        assert webhooks.verify(raw, "a-signing-key-123", headers["X-Batch-Signature"])


def test_a_4xx_is_final_and_slack_gets_text(env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    hook = Hook([404])
    try:
        monkeypatch.setenv(webhooks.WEBHOOK_ENV, hook.url)
        batch_id = _batch()
        _events(batch_id, "batch_submitted", "batch_resumed")
        result = outbox.deliver()
        assert (result.delivered, result.failed_attempts, result.due_later) == (1, 1, 0)
        assert [d[:3] for d in _deliveries()] == [
            ("batch.submitted", 1, False),
            ("batch.resumed", 1, True),
        ]
        assert "X-Batch-Signature" not in hook.received[0][1]  # no key, no signature
    finally:
        hook.close()
    slack = webhooks.endpoint("https://hooks.slack.com/services/T000/B000/XXXXXXXXXX")
    body = webhooks.lifecycle_body(
        7, "batch_progress", ledger.utcnow(), {"operation": "import"}, {"percent": 50}, "b1"
    )
    text = json.loads(webhooks.encode(body, slack))
    assert list(text) == ["text"] and "batch.progress: batch b1 (import) 50%" in text["text"]
    assert slack.label == "https://hooks.slack.com" and "XXXX" not in slack.endpoint_id


def test_no_endpoint_sends_nothing_and_bad_urls_are_named(
    env, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    monkeypatch.delenv(webhooks.WEBHOOK_ENV, raising=False)
    assert outbox.deliver() == outbox.PassResult()
    monkeypatch.setenv(webhooks.WEBHOOK_ENV, "http://127.0.0.1:1/a, ftp://x")
    with pytest.raises(webhooks.WebhookConfigError, match="http\\(s\\) URLs"):
        webhooks.endpoints()


def test_the_webhook_sender_sensor_delivers(env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from dagster import build_sensor_context

    from batch_pipelines.defs.sensors import webhook_sender

    monkeypatch.delenv(webhooks.WEBHOOK_ENV, raising=False)
    with build_sensor_context() as context:
        assert "is not set" in webhook_sender(context).skip_message
    hook = Hook([])
    try:
        monkeypatch.setenv(webhooks.WEBHOOK_ENV, hook.url)
        _events(_batch(), "batch_submitted", "batch_started")
        with build_sensor_context() as context:
            assert "2 delivered" in webhook_sender(context).skip_message
        assert hook.events() == ["batch.submitted", "batch.started"]
    finally:
        hook.close()


def test_on_a_lake_an_event_that_commits_late_is_still_sent(
    env, hook: Hook, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # noqa: ANN001
    """A lake numbers events by the clock at the start of the writer's transaction, so a
    transaction that began first can commit after the outbox moved its cursor past a later
    event. Before the fix the cursor skipped it for good; a repeat dropped on the first look
    must not be sent on the second either."""
    monkeypatch.setenv("BATCH_PIPELINES_WAREHOUSE", f"ducklake:sqlite:{tmp_path / 'cat.sqlite'}")
    monkeypatch.setenv(webhooks.WEBHOOK_ENV, hook.url)
    hook.statuses.clear()
    warehouse.forget_migrations()
    batch_id = _batch()
    base = int(ledger.utcnow().timestamp() * 1000) * 1_000_000

    def event(event_id: int, name: str) -> None:
        warehouse.write(
            lambda con: con.execute(
                'insert into batch_events (event_id, batch_id, event, "at") values (?, ?, ?, ?)',
                [event_id, batch_id, name, ledger.utcnow()],
            )
        )

    event(base, "batch_submitted")
    event(base + 2_000_000_000, "batch_paused")  # 2 s later
    event(base + 3_000_000_000, "batch_paused")  # a repeat: not sent
    paths = config.get_paths()
    assert outbox.deliver(paths).delivered == 2
    event(base + 1_000_000_000, "batch_started")  # began before the pause, committed after
    assert outbox.deliver(paths).delivered == 1
    assert outbox.deliver(paths).delivered == 0
    assert hook.events() == ["batch.submitted", "batch.paused", "batch.started"]
    with warehouse.connect(read_only=True) as con:
        statuses = con.execute(
            "select status, count(*) from webhook_outbox group by 1 order by 1"
        ).fetchall()
    assert statuses == [("delivered", 3), ("skipped", 1)]
