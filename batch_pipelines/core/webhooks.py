"""Failure notifications: a JSON POST to the webhook in ``BATCH_PIPELINES_WEBHOOK_URL``
(read when a failure happens, never at import time), through :mod:`batch_pipelines.core.http`
with a timeout and a few retries. The URL is a secret (many webhooks carry their token in
it): payloads and delivery details are redacted."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from batch_pipelines.core import http
from batch_pipelines.core.redact import redact, register_secret

WEBHOOK_ENV = "BATCH_PIPELINES_WEBHOOK_URL"


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
        "message": redact(message)[:4000],
    }


def post_webhook(
    payload: dict[str, Any], url: str | None = None, *, timeout_s: float = 10, attempts: int = 3
) -> tuple[bool, str]:
    """POST ``payload`` as JSON; returns (delivered, detail), the detail redacted. Never
    raises."""
    url = url or os.environ.get(WEBHOOK_ENV)
    if not url:
        return False, f"{WEBHOOK_ENV} is not set"
    register_secret(url)
    delivered, detail = _post(payload, url, timeout_s=timeout_s, attempts=attempts)
    return delivered, redact(detail)


def _post(
    payload: dict[str, Any], url: str, *, timeout_s: float, attempts: int
) -> tuple[bool, str]:
    if not url.startswith(("http://", "https://")):
        return False, f"{WEBHOOK_ENV} must be an http(s) URL, got {url!r}"
    retry = http.Retry(
        max_retries=max(0, attempts - 1), backoff_base_s=0.5, backoff_max_s=5, on_timeout=True
    )
    try:
        with http.HttpClient(timeout_s=timeout_s, retry=retry) as client:
            response = client.post_json(url, payload)
    except http.HttpStatusError as exc:
        return False, f"HTTP {exc.status}"
    except http.HttpError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - a notification must never fail its caller
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"HTTP {response.status}"
