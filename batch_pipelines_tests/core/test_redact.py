"""Credentials out of stored and logged text.

Guards against: a password in a URL, a key in a query string or a header, or the configured
API key echoed back by a server reaching an item's error, a ledger event or a webhook; a
writer that forgets to redact (the ledger redacts again); and over-eager masking that turns
ordinary error messages into noise.
"""

from __future__ import annotations

import pytest

from batch_pipelines.core import ledger, redact, warehouse, webhooks
from batch_pipelines.core.errors import ItemError, classify
from batch_pipelines.core.ledger import Attempt, ItemOutcome, ItemStatus, utcnow
from batch_pipelines_tests.helpers import insert_queued_batch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET https://alice:s3cr3t-pass@api.test/v1 failed",
            "GET https://***@api.test/v1 failed",
        ),
        ("postgresql://ghp_token1234@db:5432/x", "postgresql://***@db:5432/x"),
        (
            "http://h/v1/chat?api-key=abc123&api-version=2024-01&sig=zz%2Fyy#f",
            "http://h/v1/chat?api-key=***&api-version=2024-01&sig=***#f",
        ),
        (
            "https://h/x?X-Amz-Credential=AKIA1/2&X-Amz-Signature=deadbeef&access_token=t",
            "https://h/x?X-Amz-Credential=***&X-Amz-Signature=***&access_token=***",
        ),
        ("Authorization: Bearer abc.def-ghi_123", "Authorization: ***"),
        ("headers {'authorization': 'Basic dXNlcjpwYXNz'}", "headers {'authorization': '***'}"),
        ("sent bearer eyJhbGciOiJIUzI1NiJ9.x.y upstream", "sent bearer *** upstream"),
        ('{"api_key": "abc", "password": "hunter22"}', '{"api_key": "***", "password": "***"}'),
        ("host=db user=u password=hunter22 dbname=x", "host=db user=u password=*** dbname=x"),
        (
            "Incorrect API key provided: sk-proj-AbCdEf0123456789xyz.",
            "Incorrect API key provided: sk-***.",
        ),
    ],
)
def test_patterns(text: str, expected: str) -> None:
    assert redact.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "table 'missing' does not exist",
        "annotator backend http://127.0.0.1:8000/v1/chat/completions returned HTTP 401: bad key",
        'after 5 attempts (last: HTTP 503: {"error": "overloaded"})',
        "http://h/x?email=a@b.test&page=2",
        "KeyError: 'token' not in row; basic validation failed: secret santa",
        "could not parse line 3 of /data/in.csv",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact.redact(text) == text


def test_configured_secrets_are_masked_wherever_they_appear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_PIPELINES_LLM_API_KEY", "live-key/With+Odd=chars")
    monkeypatch.setenv("BATCH_PIPELINES_WEBHOOK_URL", "https://hooks.test/services/T0/B0/XyZ")
    text = (
        "echo: live-key/With+Odd=chars, encoded live-key%2FWith%2BOdd%3Dchars, "
        "hook https://hooks.test/services/T0/B0/XyZ"
    )
    assert redact.redact(text) == "echo: ***, encoded ***, hook ***"
    redact.register_secret("a-resource-config-key")
    redact.register_secret("short")  # too short to search for: it would mask words
    assert redact.redact("got a-resource-config-key, short") == "got ***, short"
    assert redact.redact_value({"a": ["x a-resource-config-key", 3], "b": None}) == {
        "a": ["x ***", 3],
        "b": None,
    }


def test_classify_redacts_item_errors() -> None:
    c = classify(ItemError("backend https://u:pw-1234@h/v1?token=abc said no"))
    assert c.message == "backend https://***@h/v1?token=*** said no"
    c = classify(RuntimeError("password=hunter22"))
    assert c.message == "RuntimeError: password=***"


def test_the_ledger_redacts_what_it_is_given(env) -> None:  # noqa: ANN001
    """A writer that skipped :func:`classify` still stores no secret."""
    leak = "boom at https://u:pw-ledger-1@h/x?api_key=k-ledger-2"
    batch_id = "import-20260101-000000-aaaaaa"
    with warehouse.connect(env.warehouse) as con:
        con.execute("begin")
        insert_queued_batch(con, batch_id, [{"id": "a"}, {"id": "b"}, {"id": "c"}])
        now = utcnow()
        outcomes = [
            ItemOutcome(
                batch_id=batch_id,
                item_id=item_id,
                status=ItemStatus.FAILED,
                error=leak,
                error_category="permanent",
                severity="error",
                attempts=[Attempt(1, now, now, 1.0, ItemStatus.FAILED, leak, "permanent")],
                finished_at=now,
            )
            for item_id in ("a", "b")
        ]
        ledger.record_outcome(con, outcomes[0], "r1")
        ledger.record_outcomes(con, outcomes[1:], "r1")
        ledger.add_event(con, batch_id, "note", detail={"deep": [{"why": leak}]})
        ledger.cancel_pending(con, batch_id, leak)
        ledger.set_batch_status(con, batch_id, "failed", error=leak)
        con.execute("commit")
    rows = env.sql(
        "select error from batch_items union all select error from item_attempts "
        "union all select detail::varchar from batch_events union all select error from batches"
    )
    text = repr(rows)
    assert "pw-ledger-1" not in text and "k-ledger-2" not in text, text
    assert text.count("https://***@h/x?api_key=***") >= 7


def test_webhooks_never_carry_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = webhooks.failure_payload(
        "r1", "annotate_job", {"batch/id": "b1"}, "step failed: Authorization: Bearer tok-12345678"
    )
    assert payload["message"] == "step failed: Authorization: ***"
    delivered, detail = webhooks.post_webhook({"a": 1}, "ftp://hook:pw-hook-123@h/x")
    assert (delivered, detail) == (
        False,
        f"{webhooks.WEBHOOK_ENV} must hold http(s) URLs, comma-separated; got '***'",
    )
    monkeypatch.setenv(webhooks.WEBHOOK_ENV, "not-a-url/with-its-token-inside")
    delivered, detail = webhooks.post_webhook({"a": 1}, attempts=1)
    assert delivered is False and "with-its-token-inside" not in detail, detail
    # One bad URL among several: the others are masked too.
    monkeypatch.setenv(webhooks.WEBHOOK_ENV, "https://h/hook-token-a1b2c3d4,not-a-url-e5f6g7h8")
    delivered, detail = webhooks.post_webhook({"a": 1}, attempts=1)
    assert delivered is False and "e5f6g7h8" not in detail, detail
    assert "a1b2c3d4" not in redact.redact("x https://h/hook-token-a1b2c3d4 y")
