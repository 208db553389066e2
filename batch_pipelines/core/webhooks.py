"""Webhooks: where they go, what they say, how they are signed and sent.

Endpoints are ``BATCH_PIPELINES_WEBHOOK_URL`` (one or more http(s) URLs, comma-separated),
read when something is sent, never at import time. With ``BATCH_PIPELINES_WEBHOOK_SECRET``
set, every body carries ``X-Batch-Signature: sha256=<hex HMAC-SHA256 of the raw body>``. A
URL is a secret (many webhooks carry their token in it) and so is the key: neither is logged,
stored or sent; an endpoint is named by a hash of its URL and its scheme, host and port.

Lifecycle events go through the outbox (:mod:`batch_pipelines.core.outbox`); this module
also keeps the direct notification of a failed run (:func:`post_webhook`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from batch_pipelines.core import http
from batch_pipelines.core.redact import redact, register_secret

WEBHOOK_ENV = "BATCH_PIPELINES_WEBHOOK_URL"
SECRET_ENV = "BATCH_PIPELINES_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-Batch-Signature"

# batch_events -> webhook events. A ledger event added later (by a new control) flows out as
# soon as it is named here.
LIFECYCLE_EVENTS: dict[str, str] = {
    "batch_submitted": "batch.submitted",
    "batch_started": "batch.started",
    "batch_progress": "batch.progress",
    "batch_completed": "batch.completed",
    "batch_completed_with_errors": "batch.completed",
    "batch_failed": "batch.failed",
    "batch_cancelled": "batch.cancelled",
    "batch_paused": "batch.paused",
    "batch_resumed": "batch.resumed",
    "batch_rolled_back": "batch.rolled_back",
    "batch_canary_failed": "batch.canary_failed",
    "batch_deleted": "batch.deleted",
}


class WebhookConfigError(ValueError):
    """``BATCH_PIPELINES_WEBHOOK_URL`` holds something that is not an http(s) URL."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    endpoint_id: str  # sha256 of the URL, 16 hex digits: stored instead of the URL
    label: str  # scheme://host[:port], safe to show

    @property
    def slack(self) -> bool:
        """A Slack incoming webhook wants ``{"text": ...}``."""
        return urlsplit(self.url).hostname == "hooks.slack.com"


def endpoint(url: str) -> Endpoint:
    url = url.strip()
    register_secret(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConfigError(
            f"{WEBHOOK_ENV} must hold http(s) URLs, comma-separated; got {redact(url)!r}"
        )
    port = f":{parts.port}" if parts.port else ""
    return Endpoint(
        url,
        hashlib.sha256(url.encode()).hexdigest()[:16],
        f"{parts.scheme}://{parts.hostname}{port}",
    )


def endpoints(environ: Mapping[str, str] | None = None) -> list[Endpoint]:
    """The configured endpoints (none when the variable is unset or empty); raises
    :class:`WebhookConfigError` for one that is not an http(s) URL."""
    value = (environ if environ is not None else os.environ).get(WEBHOOK_ENV, "")
    return [endpoint(u) for u in value.split(",") if u.strip()]


def signing_secret(environ: Mapping[str, str] | None = None) -> str | None:
    secret = (environ if environ is not None else os.environ).get(SECRET_ENV) or None
    register_secret(secret)
    return secret


def sign(body: bytes, secret: str) -> str:
    """The ``X-Batch-Signature`` value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """What a receiver does: compare the header with the body's signature, in constant time."""
    return hmac.compare_digest(sign(body, secret), signature)


def lifecycle_body(
    event_id: int,
    event: str,
    at: datetime,
    batch: Mapping[str, Any] | None,
    detail: Mapping[str, Any] | None,
    batch_id: str | None,
) -> dict[str, Any]:
    """The JSON body of one lifecycle event: counts are the batch's when the event is read."""
    batch = batch or {}
    detail = dict(detail or {})
    body: dict[str, Any] = {
        "event": LIFECYCLE_EVENTS[event],
        "event_id": event_id,
        "batch_id": batch_id,
        "operation": batch.get("operation") or detail.get("operation"),
        "name": batch.get("name"),
        "status": batch.get("status"),
        "counts": {
            k: batch.get(f"{k}_items")
            for k in ("total", "processed", "succeeded", "failed", "skipped", "cancelled")
        },
        "correlation_id": batch.get("correlation_id") or detail.get("correlation_id"),
        "time": at.isoformat(timespec="milliseconds") + "Z",
    }
    if event == "batch_progress":
        body["percent"] = detail.get("percent")
    if detail:
        body["detail"] = detail
    return body


def slack_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a Slack incoming webhook shows: one line of text."""
    counts = body.get("counts") or {}
    text = (
        f"{body['event']}: batch {body.get('batch_id')} ({body.get('operation')})"
        + (f" {body['percent']}%" if body.get("percent") is not None else "")
        + (
            f": {counts.get('processed')}/{counts.get('total')} processed, "
            f"{counts.get('failed')} failed"
            if counts.get("total") is not None
            else ""
        )
        + f" [correlation id {body.get('correlation_id')}]"
    )
    return {"text": text}


def encode(body: Mapping[str, Any], target: Endpoint) -> bytes:
    """The raw bytes sent to ``target`` (and signed)."""
    payload = slack_body(body) if target.slack else body
    return json.dumps(payload, default=str, separators=(",", ":")).encode()


def send(
    target: Endpoint,
    raw: bytes,
    secret: str | None,
    *,
    timeout_s: float = 10,
    attempts: int = 1,
) -> tuple[bool, int | None, str]:
    """POST ``raw`` (signed when there is a key); returns (delivered, HTTP status, detail),
    the detail redacted. Never raises."""
    headers = {"Content-Type": "application/json", "User-Agent": "batch-pipelines"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(raw, secret)
    retry = http.Retry(
        max_retries=max(0, attempts - 1), backoff_base_s=0.5, backoff_max_s=5, on_timeout=True
    )
    try:
        with http.HttpClient(timeout_s=timeout_s, retry=retry) as client:
            response = client.request("POST", target.url, content=raw, headers=headers)
    except http.HttpStatusError as exc:
        return False, exc.status, f"HTTP {exc.status}"
    except http.HttpError as exc:
        return False, None, redact(str(exc))
    except Exception as exc:  # noqa: BLE001 - a notification must never fail its caller
        return False, None, redact(f"{type(exc).__name__}: {exc}")
    return True, response.status, f"HTTP {response.status}"


def failure_payload(
    run_id: str, job_name: str, tags: Mapping[str, str], message: str
) -> dict[str, Any]:
    return {
        "event": "run_failed",
        "run_id": run_id,
        "job": job_name,
        "batch_id": tags.get("batch/id"),
        "operation": tags.get("batch/operation"),
        "chunk": tags.get("batch/chunk"),
        "priority": tags.get("batch/priority"),
        "correlation_id": tags.get("batch/correlation_id"),
        "message": redact(message)[:4000],
    }


def post_webhook(
    payload: dict[str, Any], url: str | None = None, *, timeout_s: float = 10, attempts: int = 3
) -> tuple[bool, str]:
    """POST ``payload`` as JSON to ``url``, else to every configured endpoint (signed when
    there is a key); returns (delivered everywhere, detail), the detail redacted. Never
    raises."""
    try:
        targets = [endpoint(url)] if url else endpoints()
    except WebhookConfigError as exc:
        return False, str(exc)
    if not targets:
        return False, f"{WEBHOOK_ENV} is not set"
    secret = signing_secret()
    results = [
        send(t, encode(payload, t), secret, timeout_s=timeout_s, attempts=attempts) for t in targets
    ]
    return all(r[0] for r in results), "; ".join(r[2] for r in results)
