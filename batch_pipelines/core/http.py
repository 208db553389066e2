"""The one HTTP client of the project (the annotate backend, the failure webhook), on httpx.

:class:`HttpClient` sends a request with a timeout; retries 429, 5xx and connection errors
(and timeouts, if asked) with exponential backoff and jitter, waiting at least what a
``Retry-After`` header asks, up to a cap; paces requests with an optional client-side rate
limit (a :class:`TokenBucket` shared by every thread of the process that uses the same
scope), or, with a ``limiter`` (:class:`batch_pipelines.core.limits.EndpointLimiter`),
by limits on requests in flight and per minute shared by every process of the instance, each
request holding a lease while it is on the wire and reporting its answer (429 and 503 with
their ``Retry-After``, or success) so the limits adapt; and refuses a response body larger
than ``max_response_bytes``. Failures are
:class:`HttpError` subclasses, so each caller maps them to its own errors.
"""

from __future__ import annotations

import email.utils
import functools
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from batch_pipelines.core.limits import THROTTLE_STATUSES, EndpointLimiter

DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
ERROR_BODY_CHARS = 300


class HttpError(Exception):
    """A request that gave no usable response; ``attempts`` is how many were sent."""

    def __init__(self, message: str, *, url: str, attempts: int = 1):
        super().__init__(message)
        self.url = url
        self.attempts = attempts


class HttpStatusError(HttpError):
    """A non-2xx answer. ``retryable`` (429 or 5xx) means the retries ran out."""

    def __init__(self, status: int, body: str, *, url: str, attempts: int = 1):
        detail = f"HTTP {status}" + (f": {body}" if body else "")
        super().__init__(detail, url=url, attempts=attempts)
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        return is_retryable_status(self.status)


class HttpTimeoutError(HttpError):
    """No answer within the timeout."""


class HttpConnectionError(HttpError):
    """The server could not be reached (``reached`` False), or dropped the connection."""

    def __init__(self, message: str, *, url: str, attempts: int = 1, reached: bool = False):
        super().__init__(message, url=url, attempts=attempts)
        self.reached = reached


class ResponseTooLargeError(HttpError):
    """The response body is larger than the client accepts."""


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks the client to wait: ``retry-after-ms`` (milliseconds, sent by
    OpenAI and Azure OpenAI, finer than whole seconds) when present, else ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("Retry-After"))


@dataclass(frozen=True)
class Retry:
    """When and how long to wait before sending a request again.

    Retry ``n`` (1-based) waits ``backoff_base_s * 2**(n-1)``, at most ``backoff_max_s``,
    less a random share of up to ``jitter`` of it (so clients that failed together do not
    come back together); a ``Retry-After`` longer than that wins, capped at
    ``max_retry_after_s``."""

    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0
    jitter: float = 0.25
    on_timeout: bool = False

    def delay(
        self,
        retry: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1))
        backoff *= 1.0 - self.jitter * rand()
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_retry_after_s))
        return backoff


class TokenBucket:
    """A thread-safe token bucket: ``rate_per_minute`` tokens per minute, at most ``burst``
    saved up. ``acquire`` reserves a token (the balance may go negative) and sleeps until the
    reservation is due, so concurrent callers are served in order without busy waiting.
    ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        rate_per_minute: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = float(max(1, burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; returns how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> float:
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


_BUCKETS: dict[tuple[str, float, int], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def shared_bucket(scope: str, rpm: float, burst: int) -> TokenBucket:
    """The process-wide bucket of one scope (e.g. an endpoint and a model), so every thread
    of a run shares one limit."""
    key = (scope, float(rpm), int(burst))
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get(key)
        if bucket is None:
            bucket = _BUCKETS[key] = TokenBucket(rpm, burst)
        return bucket


@dataclass(frozen=True)
class RateLimit:
    """A client-side limit of ``requests_per_minute``, shared by everyone using ``scope``."""

    requests_per_minute: float
    burst: int = 1
    scope: str = ""


_SSL_LOCK = threading.Lock()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """Built once per process: a verifying context costs ~40 ms of CPU, too much for every
    client. Under a lock: ``functools.cache`` alone lets every thread that asks before the
    first build ends build its own (64 items in flight cost 2.5 s at a chunk's start)."""
    with _SSL_LOCK:
        return _build_ssl_context()


@functools.cache
def _build_ssl_context() -> ssl.SSLContext:
    create = getattr(httpx, "create_ssl_context", None)
    return create() if create is not None else ssl.create_default_context()


@dataclass(frozen=True)
class Response:
    status: int
    headers: httpx.Headers
    content: bytes
    attempts: int

    def json(self) -> Any:
        return json.loads(self.content)


class HttpClient:
    """Requests with timeout, retries, rate limit and a response size cap (see the module).

    Use it as a context manager, or call :meth:`close`. ``transport`` and ``sleep`` are
    injectable for tests."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        retry: Retry | None = None,
        rate_limit: RateLimit | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        limiter: EndpointLimiter | None = None,
    ):
        self.timeout_s = timeout_s
        self.retry = retry or Retry()
        self.rate_limit = rate_limit
        self.limiter = limiter
        self.max_response_bytes = max_response_bytes
        self._sleep = sleep
        self._client = httpx.Client(
            timeout=timeout_s,
            headers=dict(headers or {}),
            transport=transport,
            verify=_ssl_context(),
        )

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def post_json(
        self, url: str, payload: Any, headers: Mapping[str, str] | None = None
    ) -> Response:
        """POST ``payload`` as JSON (values JSON cannot encode are sent as strings)."""
        body = json.dumps(payload, default=str).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", url, content=body, headers=sent)

    def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send until a 2xx answer, a non-retryable failure, or the retries run out."""
        retry = self.retry
        bucket = (
            shared_bucket(
                self.rate_limit.scope, self.rate_limit.requests_per_minute, self.rate_limit.burst
            )
            if self.rate_limit
            else None
        )
        retry_after: float | None = None
        last: HttpError | None = None
        for attempt in range(1, retry.max_retries + 2):
            if attempt > 1:
                self._sleep(retry.delay(attempt - 1, retry_after))
            retry_after = None
            if bucket is not None:
                bucket.acquire()
            try:
                status, response_headers, body = self._send_limited(method, url, content, headers)
            except httpx.TimeoutException as exc:
                last = HttpTimeoutError(
                    f"no answer within {self.timeout_s:g}s ({type(exc).__name__})",
                    url=url,
                    attempts=attempt,
                )
                if not retry.on_timeout:
                    raise last from exc
                continue
            except httpx.TransportError as exc:
                last = HttpConnectionError(
                    str(exc) or type(exc).__name__,
                    url=url,
                    attempts=attempt,
                    reached=not isinstance(exc, httpx.ConnectError),
                )
                continue
            if 200 <= status < 300:
                return Response(status, response_headers, body, attempt)
            text = body[:ERROR_BODY_CHARS].decode("utf-8", "replace")
            last = HttpStatusError(status, text, url=url, attempts=attempt)
            if not last.retryable:
                raise last
            retry_after = retry_after_of(response_headers)
        assert last is not None
        raise last

    def _send_limited(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str] | None
    ) -> tuple[int, httpx.Headers, bytes]:
        """:meth:`_send` holding a lease of the limiter, if any, released however it ends."""
        if self.limiter is None:
            return self._send(method, url, content, headers)
        lease = self.limiter.acquire()
        status: int | None = None
        retry_after: float | None = None
        try:
            status, response_headers, body = self._send(method, url, content, headers)
            if status in THROTTLE_STATUSES:
                retry_after = retry_after_of(response_headers)
                if retry_after is not None:
                    retry_after = min(retry_after, self.retry.max_retry_after_s)
            return status, response_headers, body
        finally:
            self.limiter.release(lease, status, retry_after)

    def _send(
        self, method: str, url: str, content: bytes | None, headers: Mapping[str, str] | None
    ) -> tuple[int, httpx.Headers, bytes]:
        cap = self.max_response_bytes
        with self._client.stream(method, url, content=content, headers=headers) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise ResponseTooLargeError(
                    f"response of {declared} bytes is larger than the {cap} accepted", url=url
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > cap:
                    raise ResponseTooLargeError(
                        f"response is larger than the {cap} bytes accepted", url=url
                    )
            return response.status_code, response.headers, bytes(body)
