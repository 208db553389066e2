"""The HTTP helper and the webhook sender built on it.

Guards against: retrying what must not be retried (4xx) or giving up on what should be
(429, 5xx, lost connections); ignoring Retry-After or honouring an absurd one; a rate limit
that threads do not share; reading an unbounded response into memory; a webhook sender that
raises into its caller or hammers an endpoint without backing off.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from batch_pipelines.core import http, webhooks


def client(
    handler: Callable[[httpx.Request], httpx.Response], **kw: object
) -> tuple[http.HttpClient, list[float]]:
    """A client on a scripted transport; the second value collects the waits it asked for."""
    waits: list[float] = []
    settings: dict = {"retry": http.Retry(max_retries=3, backoff_base_s=1, jitter=0)}
    settings.update(kw)
    return (
        http.HttpClient(transport=httpx.MockTransport(handler), sleep=waits.append, **settings),
        waits,
    )


def scripted(*steps: object) -> Callable[[httpx.Request], httpx.Response]:
    """Each request takes the next step: a Response, or an exception to raise."""
    remaining = list(steps)
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        step = remaining.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    handle.sent = sent  # type: ignore[attr-defined]
    return handle


def test_retries_429_and_5xx_with_backoff_and_retry_after() -> None:
    handler = scripted(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(503, text="down"),
        httpx.Response(500),
        httpx.Response(200, json={"ok": True}),
    )
    c, waits = client(handler)
    response = c.post_json("http://api.test/x", {"n": 1})
    assert response.json() == {"ok": True} and response.attempts == 4
    assert waits == [7.0, 2.0, 4.0]  # Retry-After wins over the 1 s backoff, then 2, 4
    sent = handler.sent  # type: ignore[attr-defined]
    assert json.loads(sent[0].content) == {"n": 1}
    assert sent[0].headers["Content-Type"] == "application/json"


def test_retry_after_is_capped_and_jitter_only_shortens() -> None:
    policy = http.Retry(backoff_base_s=2, backoff_max_s=10, max_retry_after_s=60, jitter=0.5)
    assert policy.delay(1, 3600.0) == 60.0
    assert policy.delay(1, rand=lambda: 0.0) == 2.0 and policy.delay(1, rand=lambda: 1.0) == 1.0
    assert policy.delay(9, rand=lambda: 0.0) == 10.0
    assert all(5.0 <= policy.delay(9) <= 10.0 for _ in range(50))


def test_client_errors_are_not_retried() -> None:
    c, waits = client(scripted(httpx.Response(404, text="no such model")))
    with pytest.raises(http.HttpStatusError) as info:
        c.request("GET", "http://api.test/x")
    assert info.value.status == 404 and not info.value.retryable
    assert info.value.body == "no such model" and info.value.attempts == 1 and waits == []


def test_retries_run_out() -> None:
    c, waits = client(
        scripted(*[httpx.Response(502, text="bad gateway")] * 3),
        retry=http.Retry(max_retries=2, backoff_base_s=0.5, jitter=0),
    )
    with pytest.raises(http.HttpStatusError, match="HTTP 502: bad gateway") as info:
        c.request("GET", "http://api.test/x")
    assert info.value.retryable and info.value.attempts == 3 and waits == [0.5, 1.0]


def test_connection_errors_are_retried_timeouts_only_when_asked() -> None:
    refused = httpx.ConnectError("connection refused")
    c, waits = client(scripted(refused, refused, httpx.Response(204)))
    assert c.request("GET", "http://api.test/x").status == 204 and len(waits) == 2
    c, _ = client(scripted(*[refused] * 4))
    with pytest.raises(http.HttpConnectionError, match="refused") as info:
        c.request("GET", "http://api.test/x")
    assert info.value.attempts == 4 and not info.value.reached
    c, _ = client(scripted(httpx.RemoteProtocolError("peer closed"), httpx.ReadTimeout("slow")))
    with pytest.raises(http.HttpTimeoutError, match="no answer within 30s") as timeout:
        c.request("GET", "http://api.test/x")
    assert timeout.value.attempts == 2
    retry = http.Retry(max_retries=1, backoff_base_s=0, on_timeout=True)
    c, _ = client(scripted(httpx.ReadTimeout("slow"), httpx.Response(200)), retry=retry)
    assert c.request("GET", "http://api.test/x").attempts == 2


def test_response_size_is_capped() -> None:
    c, _ = client(scripted(httpx.Response(200, content=b"x" * 2048)), max_response_bytes=1024)
    with pytest.raises(http.ResponseTooLargeError, match="2048 bytes"):
        c.request("GET", "http://api.test/x")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(64):
            yield b"y" * 100

    c, _ = client(scripted(httpx.Response(200, content=chunks())), max_response_bytes=1000)
    with pytest.raises(http.ResponseTooLargeError, match="larger than the 1000 bytes"):
        c.request("GET", "http://api.test/x")


def test_rate_limit_is_shared_by_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []

    class Recording(http.TokenBucket):
        def acquire(self) -> float:
            taken.append("token")
            return 0.0

    monkeypatch.setattr(http, "shared_bucket", lambda scope, rpm, burst: Recording(rpm, burst))
    c, _ = client(
        scripted(httpx.Response(429), httpx.Response(200)),
        rate_limit=http.RateLimit(60, 1, "api.test m"),
    )
    c.request("GET", "http://api.test/x")
    assert taken == ["token", "token"]  # every attempt, retries included, takes a token


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_paces_requests() -> None:
    clock = FakeClock()
    bucket = http.TokenBucket(60, burst=2, clock=clock, sleep=clock.sleep)  # 1 per second
    start = clock.now
    for _ in range(10):
        bucket.acquire()
    # 2 go at once from the full bucket, the other 8 wait one second each.
    assert clock.now - start == pytest.approx(8.0)
    clock.now += 100  # idle: the bucket refills to its burst, no more
    t = clock.now
    for _ in range(3):
        bucket.acquire()
    assert clock.now - t == pytest.approx(1.0)


def test_token_bucket_is_shared_across_threads() -> None:
    clock = FakeClock()  # frozen: only reservations move the schedule
    bucket = http.TokenBucket(600, burst=1, clock=clock, sleep=lambda s: None)  # 10 per second
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            w = bucket.reserve()
            with lock:
                waits.append(w)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 requests at 10/s: every slot handed out exactly once, the last 3.9 s out.
    assert sorted(round(w, 6) for w in waits) == [round(i / 10, 6) for i in range(40)]
    assert http.shared_bucket("u m", 60, 1) is http.shared_bucket("u m", 60, 1)
    assert http.shared_bucket("u m", 60, 1) is not http.shared_bucket("u m2", 60, 1)


def test_ssl_context_is_built_once_by_threads_asking_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 64 items in flight each opening a client at a chunk's start built 64 contexts (~40 ms
    # of CPU each) when only the first call's result was cached.
    built: list[int] = []
    started = threading.Barrier(8)

    def create() -> object:
        built.append(1)
        threading.Event().wait(0.05)  # long enough for every thread to be asking
        return object()

    monkeypatch.setattr(httpx, "create_ssl_context", create, raising=False)
    http._ssl_context.cache_clear()
    http._build_ssl_context.cache_clear()
    got: list[object] = []

    def ask() -> None:
        started.wait()
        got.append(http._ssl_context())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        http._ssl_context.cache_clear()
        http._build_ssl_context.cache_clear()
    assert len(built) == 1 and len(got) == 8 and len({id(g) for g in got}) == 1


# --- the webhook sender ----------------------------------------------------------------------


class Hook:
    """A webhook receiver on 127.0.0.1 answering with the scripted statuses, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                hook.received.append(
                    json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                )
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http.Retry, "delay", lambda self, n, ra=None, rand=None: 0.0)


def test_webhook_delivers_after_a_5xx(no_backoff: None) -> None:
    hook = Hook([503])
    try:
        payload = webhooks.failure_payload("r1", "import_job", {"batch/id": "b1"}, "boom")
        assert webhooks.post_webhook(payload, hook.url) == (True, "HTTP 200")
    finally:
        hook.close()
    assert len(hook.received) == 2 and hook.received[0]["batch_id"] == "b1"


def test_webhook_failures_are_returned_not_raised(
    no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = Hook([400, 500, 500, 500])
    try:
        assert webhooks.post_webhook({"a": 1}, hook.url) == (False, "HTTP 400")
        assert webhooks.post_webhook({"a": 1}, hook.url, attempts=3) == (False, "HTTP 500")
    finally:
        hook.close()
    assert len(hook.received) == 4
    monkeypatch.delenv(webhooks.WEBHOOK_ENV, raising=False)
    assert webhooks.post_webhook({"a": 1}) == (False, f"{webhooks.WEBHOOK_ENV} is not set")
    assert webhooks.post_webhook({"a": 1}, "ftp://x")[0] is False
    delivered, detail = webhooks.post_webhook({"a": 1}, "http://127.0.0.1:1/hook", attempts=2)
    assert delivered is False and detail
