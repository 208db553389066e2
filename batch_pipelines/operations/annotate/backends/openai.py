"""The OpenAI-compatible backend: any ``/chat/completions`` endpoint, asked for a JSON object.

Base URL, model and key come from its fields or, when left unset, from
``BATCH_PIPELINES_LLM_BASE_URL`` / ``_MODEL`` / ``_API_KEY`` read when a request is made
(never at import). Requests go through :class:`batch_pipelines.core.http.HttpClient`: a
request timeout, the endpoint's limits shared by every run and process of the instance
(:mod:`batch_pipelines.core.limits`: requests in flight, adapting to 429s and 503s, and per
minute; ``BATCH_PIPELINES_LLM_MAX_IN_FLIGHT`` and ``BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE``
unless the fields set them), and retries of 429, 5xx and connection errors with exponential
backoff honouring ``Retry-After``; when retries run out it raises
:class:`TransientItemError`, so the item runner's retry policy applies.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from batch_pipelines.core import http, limits
from batch_pipelines.core.errors import ItemError, ItemTimeoutError, TransientItemError
from batch_pipelines.core.redact import register_secret
from batch_pipelines.operations.annotate.backends.base import (
    OTHER_CATEGORY,
    UNKNOWN_LANGUAGE,
    Annotator,
    settings,
)
from batch_pipelines.operations.annotate.backends.local import LANGUAGES

ENV_BASE_URL = "BATCH_PIPELINES_LLM_BASE_URL"
ENV_MODEL = "BATCH_PIPELINES_LLM_MODEL"
ENV_API_KEY = "BATCH_PIPELINES_LLM_API_KEY"
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def completions_url(base_url: str) -> str:
    """``base_url`` + ``/chat/completions``, keeping a query string (``?api-version=…``) where
    it belongs, after the path."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))


def extract_json_object(content: str) -> dict[str, Any]:
    """The first JSON object in a model's reply: plain JSON, JSON in a code fence, or JSON
    surrounded by prose."""
    text = content.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    if fence:
        text = fence.group(1).strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"no JSON object in the reply: {content[:200]!r}")


def normalize_reply(reply: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce a model's JSON into the annotation shape, tolerating missing or odd fields."""
    language = str(reply.get("language") or UNKNOWN_LANGUAGE).strip().lower()[:16]
    if language not in LANGUAGES:
        language = language if re.fullmatch(r"[a-z]{2,3}", language) else UNKNOWN_LANGUAGE
    raw_keywords = reply.get("keywords") or reply.get("tags") or []
    if isinstance(raw_keywords, str):
        raw_keywords = [k for k in re.split(r"[,;\n]", raw_keywords)]
    keywords = []
    for k in raw_keywords if isinstance(raw_keywords, list) else []:
        k = " ".join(str(k).split()).lower()
        if k and k not in keywords:
            keywords.append(k[:100])
    keywords = keywords[: settings["max_keywords"]]
    categories = set(settings["taxonomy"])
    category = str(reply.get("category") or OTHER_CATEGORY).strip()
    if category not in categories:
        lowered = {c.lower(): c for c in categories}
        category = lowered.get(category.lower(), OTHER_CATEGORY)
    summary = " ".join(str(reply.get("summary") or "").split())
    limit = settings["summary_max_chars"]
    if len(summary) > limit:
        summary = summary[: limit - 1].rsplit(" ", 1)[0] + "…"
    try:
        confidence = float(reply.get("confidence", 0.5))
    except (TypeError, ValueError):
        confidence = 0.5
    if math.isnan(confidence):
        confidence = 0.5
    confidence = max(0.0, min(1.0, confidence))
    return {
        "language": language,
        "language_confidence": confidence,
        "keywords": keywords,
        "category": category,
        "category_scores": {},
        "summary": summary,
        "confidence": round(confidence, 4),
    }


SYSTEM_PROMPT = (
    "You annotate documents. Reply with one JSON object only, no prose, with the keys: "
    '"language" (ISO 639-1 code), "keywords" (list of at most {max_keywords} short key '
    'phrases), "category" (exactly one of: {categories}), "summary" (an extractive summary '
    'of at most {summary_max_chars} characters, copied from the text), "confidence" (a number '
    "from 0 to 1: how sure you are of the category)."
)


class OpenAICompatibleAnnotator(BaseModel, Annotator):
    """Annotation by an OpenAI-compatible chat-completions endpoint.

    ``base_url`` (e.g. ``https://api.openai.com/v1``), ``model`` and ``api_key`` default to
    ``BATCH_PIPELINES_LLM_BASE_URL``, ``BATCH_PIPELINES_LLM_MODEL`` and
    ``BATCH_PIPELINES_LLM_API_KEY``, read at request time.
    """

    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1")
    model: str | None = None
    api_key: str | None = None
    request_timeout_s: float = Field(30.0, gt=0, le=600)
    max_in_flight: int | None = Field(
        None,
        ge=1,
        le=limits.MAX_IN_FLIGHT_LIMIT,
        description=f"Most requests in flight to the endpoint (default: ${limits.ENV_MAX_IN_FLIGHT})",
    )
    requests_per_minute: float | None = Field(
        None,
        gt=0,
        description=f"Requests per minute to the endpoint (default: ${limits.ENV_REQUESTS_PER_MINUTE})",
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="Requests that may go at once after a pause (default: max_in_flight)",
    )
    max_retries: int = Field(4, ge=0, le=20, description="Retries on 429, 5xx, lost connections")
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    backoff_jitter: float = Field(0.25, ge=0, le=1, description="Share of a backoff randomized")
    max_retry_after_s: float = Field(120.0, ge=0, description="Longest Retry-After honoured")
    max_input_chars: int = Field(12000, ge=100, description="Longer texts are truncated")
    temperature: float = 0.0
    json_mode: bool = Field(True, description="Send response_format json_object")

    def resolved(self) -> tuple[str, str, str | None]:
        base_url = self.base_url or os.environ.get(ENV_BASE_URL)
        model = self.model or os.environ.get(ENV_MODEL)
        api_key = self.api_key or os.environ.get(ENV_API_KEY)
        if not base_url:
            raise ItemError(
                f"annotator backend openai: no base URL (set {ENV_BASE_URL} or the resource's "
                "base_url)",
                category="permanent",
            )
        if not model:
            raise ItemError(
                f"annotator backend openai: no model (set {ENV_MODEL} or the resource's model)",
                category="permanent",
            )
        register_secret(api_key)
        return base_url.rstrip("/"), model, api_key

    def retry_policy(self) -> http.Retry:
        return http.Retry(
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            max_retry_after_s=self.max_retry_after_s,
            jitter=self.backoff_jitter,
        )

    def _request_body(self, model: str, text: str, s: Mapping[str, Any]) -> dict[str, Any]:
        system = SYSTEM_PROMPT.format(
            max_keywords=s["max_keywords"],
            categories=", ".join([*s["taxonomy"], OTHER_CATEGORY]),
            summary_max_chars=s["summary_max_chars"],
        )
        body: dict[str, Any] = {
            "model": model,
            "temperature": self.temperature,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": text[: self.max_input_chars]},
            ],
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def post(self, url: str, body: dict[str, Any], api_key: str | None, model: str) -> Any:
        """POST with rate limit and retries; returns the decoded JSON response."""
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        try:
            limiter = limits.limiter_for(
                url,
                max_in_flight=self.max_in_flight,
                requests_per_minute=self.requests_per_minute,
                burst=self.burst,
                lease_ttl_s=max(600.0, 4 * self.request_timeout_s),
            )
        except ValueError as exc:  # a bad BATCH_PIPELINES_LLM_* value: no request can go
            raise ItemError(f"annotator backend openai: {exc}", category="permanent") from None
        client = http.HttpClient(
            timeout_s=self.request_timeout_s,
            retry=self.retry_policy(),
            max_response_bytes=MAX_RESPONSE_BYTES,
            limiter=limiter,
        )
        try:
            # A client per request: a connection is never reused after a reply that sent more
            # than it declared, whose surplus would be read as the next reply.
            with client:
                response = client.post_json(url, body, headers=headers)
        except http.HttpStatusError as exc:
            if exc.retryable:
                raise TransientItemError(
                    f"annotator backend {url} still failing after {exc.attempts} attempts "
                    f"(last: {exc})"
                ) from None
            raise ItemError(
                f"annotator backend {url} returned HTTP {exc.status}: {exc.body}",
                category="permanent",
            ) from None
        except http.HttpTimeoutError as exc:
            raise ItemTimeoutError(
                f"annotator backend {url} did not answer within {self.request_timeout_s:g}s"
            ) from exc
        except http.HttpConnectionError as exc:
            what = "dropped the connection" if exc.reached else "is unreachable"
            raise TransientItemError(
                f"annotator backend {url} {what} ({exc.attempts} attempts): {exc}"
            ) from exc
        except http.HttpError as exc:
            raise ItemError(f"annotator backend {url}: {exc}", category="permanent") from None
        try:
            return response.json()
        except ValueError:
            raise ItemError(
                f"annotator backend {url} returned a non-JSON response: {response.content[:200]!r}",
                category="permanent",
            ) from None

    def annotate(self, text: str, options: Any = None) -> dict[str, Any]:
        s = settings(options)
        base_url, model, api_key = self.resolved()
        url = completions_url(base_url)
        response = self.post(url, self._request_body(model, text, s), api_key, model)
        try:
            content = response["choices"][0]["message"]["content"]
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            reply = extract_json_object(str(content))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ItemError(
                f"annotator backend {url} gave an unusable answer: {exc}", category="permanent"
            ) from None
        out = normalize_reply(reply, s)
        out["backend"] = "openai"
        out["model"] = model
        return out
