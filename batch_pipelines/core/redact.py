"""Credentials out of every text the project stores or logs.

:func:`redact` replaces with ``***``: the userinfo of URLs (``https://u:PASS@host``), the
values of query parameters and ``name=value`` / ``"name": "value"`` pairs named like a key,
token, secret, password, auth or signature, ``Authorization`` headers and ``Bearer``
tokens, OpenAI-style ``sk-…`` keys, and the values of the secrets the project is
configured with wherever they appear (an API key echoed back by a server): the environment
variables in :data:`SECRET_ENV_VARS` (read at each call, so a value set after import counts)
and the values given to :func:`register_secret` (a key from a resource's config).

Errors are redacted where they are made (:func:`batch_pipelines.core.errors.classify`) and
again where they are written (the ledger, webhook payloads, Dagster failure metadata), so a
path that forgets one of them still stores nothing secret.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

MASK = "***"

# Values shorter than this are not searched for: "k" or "test" would mask ordinary words.
MIN_SECRET_CHARS = 8

# Listed here rather than registered by the code that reads them, so that a process which
# never imported that code (the daemon recording a failed run, a report) still masks them.
SECRET_ENV_VARS: tuple[str, ...] = (
    "BATCH_PIPELINES_LLM_API_KEY",  # the annotate backend's key
    "BATCH_PIPELINES_WEBHOOK_URL",  # webhook URLs often carry their token (comma-separated)
    "BATCH_PIPELINES_WEBHOOK_SECRET",  # the key that signs webhook bodies
    "DAGSTER_PG_PASSWORD",  # deploy/dagster.postgres.yaml
)

_SECRET_NAME = (
    r"[\w.-]*(?:key|token|secret|passw(?:or)?d|pwd|auth|signature|sig|credentials?)[\w.-]*"
    r"|code"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://userinfo@host: the whole userinfo, user names can be tokens too.
    (
        re.compile(r"(?P<pre>\b[a-z][a-z0-9+.-]*://)[^/?#@\s'\"<>]+@", re.IGNORECASE),
        r"\g<pre>***@",
    ),
    # ?api-key=…, &access_token=…, ;sig=… in URLs
    (
        re.compile(rf"(?P<pre>[?&;](?:{_SECRET_NAME})=)[^&#;\s'\"<>]+", re.IGNORECASE),
        r"\g<pre>***",
    ),
    # Authorization: Bearer …, Proxy-Authorization: Basic …
    (
        re.compile(
            r"(?P<pre>\b(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)"
            r"(?:(?:bearer|basic|token|digest)\s+)?[^\s'\",;]+",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
    (re.compile(r"(?P<pre>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\g<pre>***"),
    # api_key=…, password: …, "client_secret": "…" in messages, DSNs and echoed JSON
    (
        re.compile(
            r"(?P<pre>\b(?:api[_-]?key|apikey|access[_-]?key|secret[_-]?key|access[_-]?token|"
            r"auth[_-]?token|refresh[_-]?token|client[_-]?secret|secret|passw(?:or)?d|pwd)"
            r"['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
    (re.compile(r"\bsk-(?:[a-z]+-)?[A-Za-z0-9_-]{16,}"), "sk-***"),
)

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears from now on, in this process."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _registered.add(value)


def _forms(value: str) -> Iterable[str]:
    yield value
    for encoded in (quote(value, safe=""), quote(value)):
        if encoded != value:
            yield encoded


def known_secrets() -> list[str]:
    """The secret values searched for, longest first (so a value inside another one does not
    leave the rest of it behind)."""
    values = set(_registered)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "").strip()
        for part in (value, *value.split(",")):
            if len(part.strip()) >= MIN_SECRET_CHARS:
                values.add(part.strip())
    forms = {form for value in values for form in _forms(value)}
    return sorted(forms, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``***`` (see the module)."""
    if not text:
        return text
    for value in known_secrets():
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_optional(text: str | None) -> str | None:
    return None if text is None else redact(text)


def redact_value(value: Any) -> Any:  # noqa: ANN401 - any JSON-like value
    """:func:`redact` applied to every string inside dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value
