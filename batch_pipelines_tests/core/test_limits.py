"""Limits per HTTP endpoint shared across processes, adapting to 429s (core/limits.py).

Guards against: a cap that holds per process but not across processes; a cap that does not
shrink on 429/503 or never grows back (or grows past the configured maximum); a Retry-After
that only the refused request honours when the cut cannot explain the refusal, or that idles
the whole endpoint at every probe the cut does explain; leases left behind by an exception, a timeout, an
interrupt or a killed process, which would starve every later run; and unclear errors for a
bad BATCH_PIPELINES_LLM_* value. Timing is never asserted: clocks are injected, and servers
count what they saw.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_pipelines.core import http, limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(tmp_path: Path, cap: int = 8, rpm: float = 1e9, **kw: object) -> limits.EndpointLimiter:
    return limits.EndpointLimiter(tmp_path / limits.DB_NAME, "http://h:80", cap, rpm, **kw)


class CountingServer:
    """Answers every POST after ``latency_s``, counting the most requests it served at once;
    ``refuse`` answers the next N requests 429 with ``Retry-After: 0``."""

    def __init__(self, latency_s: float = 0.05) -> None:
        self.in_flight = self.most = self.served = 0
        self.refuse = 0
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with srv.lock:
                    refused = srv.refuse > 0
                    srv.refuse -= refused
                    srv.in_flight += not refused
                    srv.most = max(srv.most, srv.in_flight)
                if not refused:
                    time.sleep(latency_s)
                    with srv.lock:
                        srv.in_flight -= 1
                        srv.served += 1
                self.send_response(429 if refused else 200)
                if refused:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/chat/completions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[CountingServer]:
    s = CountingServer()
    yield s
    s.close()


def test_endpoint_is_scheme_host_and_port() -> None:
    assert limits.endpoint_of("https://API.openai.com/v1/chat") == "https://api.openai.com:443"
    assert limits.endpoint_of("http://127.0.0.1:8000/v1?x=1") == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (limits.ENV_MAX_IN_FLIGHT, "many", "a whole number from 1 to 1024, got 'many'"),
        (limits.ENV_MAX_IN_FLIGHT, "0", "a whole number from 1 to 1024, got '0'"),
        (limits.ENV_MAX_IN_FLIGHT, "5000", "a whole number from 1 to 1024, got '5000'"),
        (limits.ENV_REQUESTS_PER_MINUTE, "fast", "a number greater than 0, got 'fast'"),
        (limits.ENV_REQUESTS_PER_MINUTE, "-5", "a number greater than 0, got '-5'"),
    ],
)
def test_bad_environment_values_are_named(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=f"^{name} must be {message}$"):
        limits.limiter_for("http://h/v1", paths=None)


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_MAX_IN_FLIGHT, raising=False)
    monkeypatch.delenv(limits.ENV_REQUESTS_PER_MINUTE, raising=False)
    assert limits.max_in_flight_from_env() == 16
    assert limits.requests_per_minute_from_env() == 600
    monkeypatch.setenv(limits.ENV_MAX_IN_FLIGHT, "64")
    monkeypatch.setenv(limits.ENV_REQUESTS_PER_MINUTE, "7200")
    assert limits.max_in_flight_from_env() == 64
    assert limits.requests_per_minute_from_env() == 7200


def test_cap_halves_on_429_once_per_round_and_grows_back(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=8, clock=clock)
    leases = [lim.acquire(clock.sleep) for _ in range(8)]  # all sent at the same moment
    lim.release(leases[0], 429)
    assert lim.stats()["cap"] == 4
    # The other answers to the same round are counted but do not cut again.
    lim.release(leases[1], 429)
    lim.release(leases[2], 503)
    s = lim.stats()
    assert (s["cap"], s["throttled_429"], s["throttled_503"]) == (4, 2, 1)
    for lease in leases[3:]:
        lim.release(lease, 200)
    s = lim.stats()
    assert (s["in_flight"], s["cap"]) == (0, 5)  # 4 successes (at cap 4) add one
    caps = []
    for _ in range(400):
        clock.now += 0.01
        lim.release(lim.acquire(clock.sleep), 200)
        caps.append(lim.stats()["cap"])
    # One more slot per `cap` successes, slower near the cap of the last cut, never past 8.
    assert caps[0] == 5 and caps[-1] == 8 and max(caps) == 8
    assert caps == sorted(caps) and caps.index(7) - caps.index(6) == 6
    assert caps.index(8) - caps.index(7) == 7 * limits.PLATEAU


def test_cut_goes_down_to_what_the_server_was_serving(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=8, clock=clock)
    leases = []
    for _ in range(8):
        clock.now += 0.01
        leases.append(lim.acquire(clock.sleep))
    lim.release(leases[6], 429)  # six older requests were being served
    assert lim.stats()["cap"] == 6


def test_cap_holds_while_leases_are_out(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=2, clock=clock)
    first, second = lim.acquire(clock.sleep), lim.acquire(clock.sleep)
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        clock.sleep(s)
        if len(waits) == 3:
            lim.release(first, 200)

    third = lim.acquire(sleep)
    assert len(waits) == 3 and third.id > second.id


def test_retry_after_holds_the_whole_endpoint(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=8, clock=clock)
    refused = lim.acquire(clock.sleep)
    lim.release(refused, 429, retry_after=30)
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        clock.sleep(s)

    lease = lim.acquire(sleep)  # any caller, not only the refused request
    assert waits == [30.0] and lease.acquired_at == 1030.0


def test_a_refusal_the_cut_explains_holds_only_the_refused_request(tmp_path: Path) -> None:
    # A probe one past the server's capacity: it refused the 5th request while serving the 4
    # sent before. The cut answers it; holding every request for the Retry-After would idle
    # the endpoint at each probe.
    clock = Clock()
    lim = limiter(tmp_path, cap=5, clock=clock)
    leases = []
    for _ in range(5):
        clock.now += 0.01
        leases.append(lim.acquire(clock.sleep))
    clock.now += 0.1
    lim.release(leases[4], 429, retry_after=0.25)
    s = lim.stats()
    assert (s["cap"], s["throttled_429"], s["blocked_until"]) == (4, 1, 0)
    lim.release(leases[0], 200)
    clock.now += 0.01
    waits: list[float] = []
    lease = lim.acquire(lambda w: (waits.append(w), clock.sleep(w)))
    assert waits == [] and lease.acquired_at == clock.now
    # Refused again at the lower cap within that Retry-After: the cut was not the answer,
    # so now every new request waits.
    clock.now += 0.05
    lim.release(lease, 429, retry_after=0.25)
    assert lim.stats()["blocked_until"] == pytest.approx(clock.now + 0.25)
    lim.release(leases[1], 200)
    waits.clear()
    lim.acquire(lambda w: (waits.append(w), clock.sleep(w)))
    assert waits and sum(waits) == pytest.approx(0.25)


def test_rate_limit_is_shared_state(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=2, rpm=60, clock=clock)  # one a second, two saved up
    for _ in range(2):
        lim.release(lim.acquire(clock.sleep), 200)
    other = limiter(tmp_path, cap=2, rpm=60, clock=clock)  # another process, same file
    waits: list[float] = []
    other.acquire(lambda s: (waits.append(s), clock.sleep(s)))
    assert waits == [pytest.approx(1.0)]


def test_expired_leases_are_reclaimed(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=1, clock=clock, lease_ttl_s=10)
    lim.acquire(clock.sleep)  # never released
    waits: list[float] = []
    lim.acquire(lambda s: (waits.append(s), clock.sleep(s)))
    assert waits and clock.now > 1010


def _child(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_leases_of_a_killed_process_are_reclaimed(tmp_path: Path) -> None:
    env = {"BATCH_PIPELINES_DATA": str(tmp_path), limits.ENV_MAX_IN_FLIGHT: "1"}
    child = _child(
        """
        import time
        from batch_pipelines.core import limits
        limits.limiter_for("http://127.0.0.1:9/v1").acquire()
        print("held", flush=True)
        time.sleep(600)
        """,
        env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        lim = limits.EndpointLimiter(tmp_path / limits.DB_NAME, "http://127.0.0.1:9", 1, 1e9)
        assert lim.stats()["in_flight"] == 1
        lim.acquire()  # the dead pid's lease is taken back, long before it expires
        assert lim.stats()["in_flight"] == 1
    finally:
        child.kill()
        child.wait(10)


def test_in_flight_cap_holds_across_processes(tmp_path: Path, server: CountingServer) -> None:
    code = """
        import sys
        from concurrent.futures import ThreadPoolExecutor
        from batch_pipelines.core import http, limits
        url = sys.argv[1]
        client = http.HttpClient(limiter=limits.limiter_for(url))
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda i: client.post_json(url, {}).status, range(12)))
        print(codes.count(200), flush=True)
    """
    env = {
        "BATCH_PIPELINES_DATA": str(tmp_path),
        limits.ENV_MAX_IN_FLIGHT: "3",
        limits.ENV_REQUESTS_PER_MINUTE: "60000",
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), server.url],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [c.communicate(timeout=120)[0] for c in children]
    assert [c.returncode for c in children] == [0, 0]
    assert [int(o.split()[-1]) for o in outs] == [12, 12]
    assert server.served == 24 and 1 <= server.most <= 3
    (stats,) = limits.endpoint_stats(limits_paths(tmp_path))
    assert stats["in_flight"] == 0 and stats["requests"] == 24


def limits_paths(tmp_path: Path):  # noqa: ANN201
    from batch_pipelines.core import config

    return config.get_paths(str(tmp_path))


def _open_at(path: str, start: float, results: Any) -> None:
    while time.time() < start:
        time.sleep(0.001)
    try:
        limits._connect(Path(path)).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


def test_processes_opening_a_new_limits_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Regression (CI): two chunk processes created the limits file at the same moment and one
    died with "database is locked" from the switch to WAL, which SQLite does not retry through
    the busy timeout. Eight processes at once, over ten fresh files (before the fix, about one
    open in thirty failed)."""
    ctx = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for round_ in range(10):
        path = str(tmp_path / f"r{round_}" / limits.DB_NAME)
        results = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_open_at, args=(path, start, results)) for _ in range(8)]
        for proc in procs:
            proc.start()
        outcomes += [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
    assert [o for o in outcomes if o != "ok"] == []


def test_client_reports_429_and_retry_after_ms(tmp_path: Path) -> None:
    clock = Clock()
    lim = limiter(tmp_path, cap=4, clock=clock)
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "1", "retry-after-ms": "250"}),
            httpx.Response(200, json={}),
        ]
    )
    client = http.HttpClient(
        transport=httpx.MockTransport(lambda r: next(answers)),
        sleep=clock.sleep,  # the retry waits at least the 250 ms asked
        limiter=lim,
        retry=http.Retry(max_retries=2, jitter=0),
    )
    assert client.post_json("http://h/v1", {}).status == 200
    s = lim.stats()
    assert (s["throttled_429"], s["requests"], s["in_flight"]) == (1, 2, 0)
    assert s["blocked_until"] == 1000.25


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), KeyboardInterrupt()],
    ids=["timeout", "connection", "interrupt"],
)
def test_lease_released_on_every_path(tmp_path: Path, error: BaseException) -> None:
    lim = limiter(tmp_path, cap=1)

    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    client = http.HttpClient(
        transport=httpx.MockTransport(fail),
        sleep=lambda s: None,
        limiter=lim,
        retry=http.Retry(max_retries=1),
    )
    with pytest.raises((http.HttpError, KeyboardInterrupt)):
        client.post_json("http://h/v1", {})
    assert lim.stats()["in_flight"] == 0


def test_run_metadata_names_cap_and_429s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_MAX_IN_FLIGHT, raising=False)  # 16, halved on the 429
    lim = limits.limiter_for("http://meta.example/v1", paths=limits_paths(tmp_path))
    lim.release(lim.acquire(), 429)
    meta = limits.run_metadata()
    # One endpoint so far in this process: plain keys; several: keyed by endpoint.
    suffix = "" if "http_429" in meta else " http://meta.example:80"
    assert meta[f"http_429{suffix}"] == 1 and meta[f"http_cap{suffix}"] == 8
    assert json.dumps(meta)
