"""Failure notifications: a JSON POST to the webhook in ``BATCH_PIPELINES_WEBHOOK_URL``
(read when a failure happens, never at import time), with a timeout and a few retries."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

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
        "message": message[:4000],
    }


def post_webhook(
    payload: dict[str, Any], url: str | None = None, *, timeout_s: float = 10, attempts: int = 3
) -> tuple[bool, str]:
    """POST ``payload`` as JSON; returns (delivered, detail). Never raises."""
    url = url or os.environ.get(WEBHOOK_ENV)
    if not url:
        return False, f"{WEBHOOK_ENV} is not set"
    if not url.startswith(("http://", "https://")):
        return False, f"{WEBHOOK_ENV} must be an http(s) URL, got {url!r}"
    body = json.dumps(payload, default=str).encode()
    detail = ""
    for attempt in range(attempts):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                if 200 <= response.status < 300:
                    return True, f"HTTP {response.status}"
                detail = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            detail = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:
                return False, detail
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            detail = str(exc)
        time.sleep(min(2**attempt * 0.5, 5))
    return False, detail
