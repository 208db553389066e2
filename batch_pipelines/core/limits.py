"""Limits per HTTP endpoint that hold across every thread, run and process of the instance,
and adapt to what the server answers.

An endpoint is a scheme, host and port (``https://api.openai.com:443``). For each one, a small
SQLite file under the data root (``<data>/http_limits.sqlite3``, WAL, shared by every process
that uses that data root) holds:

- **in-flight leases**: a request holds one while it is on the wire; at most ``cap`` at once.
  A lease records its pid, host and an expiry, so the leases of a killed process are taken
  back (at once when its pid is gone, at the latest when they expire);
- **the cap**, which adapts (AIMD). A 429 or 503 cuts it (multiplicative decrease) down to
  the number of requests the server was serving when it pushed back (those sent before the
  refused one and still in flight), by at least one and at most by half (:data:`DECREASE`),
  never below 1; once per round: answers to requests sent before a cut do not cut again. It
  grows by one per ``cap`` successes (additive increase), :data:`PLATEAU` times slower at
  and above the cap where the last cut came (probing there costs another cut and a refusal),
  never above ``max_in_flight`` (``BATCH_PIPELINES_LLM_MAX_IN_FLIGHT``). A ``Retry-After``
  (or ``retry-after-ms``) holds every new request to the endpoint until it has passed when
  the cut cannot be the answer: the server refused while serving none of ours, or refused
  again, at the cap of a cut made less than that Retry-After ago (the refused request always
  waits it, in :class:`~batch_pipelines.core.http.HttpClient`). An endpoint left idle for
  :data:`IDLE_RESET_S` starts again from ``max_in_flight``;
- **a token bucket** of ``requests_per_minute`` (``BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE``),
  saving up to ``max_in_flight`` requests;
- counters (requests, 429s, 503s) for :func:`endpoint_stats`.

Threads of one process take turns at the file (one asks at a time, the others wait on a
condition that a release in this process wakes), so waiting costs no busy polling of SQLite.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from batch_pipelines.core import config

ENV_MAX_IN_FLIGHT = "BATCH_PIPELINES_LLM_MAX_IN_FLIGHT"
ENV_REQUESTS_PER_MINUTE = "BATCH_PIPELINES_LLM_REQUESTS_PER_MINUTE"
DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_REQUESTS_PER_MINUTE = 600.0
MAX_IN_FLIGHT_LIMIT = 1024
DB_NAME = "http_limits.sqlite3"
DECREASE = 0.5  # multiplicative decrease of the cap on a 429 or 503
THROTTLE_STATUSES = (429, 503)
# A cap learned long ago says little about the server now: an endpoint left idle this long
# starts again from its configured maximum.
IDLE_RESET_S = 300.0
PLATEAU = 8  # near the last ceiling, one more slot per PLATEAU * cap successes
POLL_S = 0.05  # how often a waiting process looks for slots freed by other processes

_SCHEMA = """
create table if not exists endpoints (
    endpoint text primary key,
    max_cap integer not null,
    cap integer not null,
    successes integer not null default 0,
    ceiling integer not null default 0,
    decreased_at real not null default 0,
    blocked_until real not null default 0,
    tokens real not null,
    tokens_at real not null,
    requests integer not null default 0,
    throttled_429 integer not null default 0,
    throttled_503 integer not null default 0,
    updated_at real not null
);
create table if not exists leases (
    id integer primary key autoincrement,
    endpoint text not null,
    pid integer not null,
    host text not null,
    acquired_at real not null,
    expires_at real not null
);
create index if not exists leases_endpoint on leases (endpoint);
"""


def _positive_env(name: str, default: float, *, integer: bool, most: float | None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    kind = "a whole number" if integer else "a number"
    bounds = f"from 1 to {most:g}" if most else "greater than 0"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ValueError(f"{name} must be {kind} {bounds}, got {raw!r}") from None
    if value <= 0 or (integer and value < 1) or (most is not None and value > most):
        raise ValueError(f"{name} must be {kind} {bounds}, got {raw!r}")
    return value


def max_in_flight_from_env() -> int:
    limit = MAX_IN_FLIGHT_LIMIT
    return int(_positive_env(ENV_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT, integer=True, most=limit))


def requests_per_minute_from_env() -> float:
    return _positive_env(
        ENV_REQUESTS_PER_MINUTE, DEFAULT_REQUESTS_PER_MINUTE, integer=False, most=None
    )


def endpoint_of(url: str) -> str:
    """``scheme://host:port`` of a URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{host}:{port}"


def db_path(paths: config.Paths | None = None) -> Path:
    return (paths or config.get_paths()).data / DB_NAME


def _connect(path: Path, *, wait_s: float = 30.0) -> sqlite3.Connection:
    # Two processes creating the file at once can get "database is locked" from the switch to
    # WAL, which SQLite does not retry through the busy timeout: retry, bounded, with jitter.
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline, delay = time.monotonic() + wait_s, 0.01
    while True:
        con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            for pragma in ("busy_timeout = 30000", "journal_mode = wal", "synchronous = normal"):
                con.execute(f"pragma {pragma}")
            con.executescript(_SCHEMA)
            return con
        except sqlite3.OperationalError as exc:
            con.close()
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 0.5)


@dataclass(frozen=True)
class Lease:
    id: int
    endpoint: str
    acquired_at: float


class EndpointLimiter:
    """The shared limits of one endpoint (see the module). Thread-safe; one per process and
    endpoint through :func:`limiter_for`. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        path: Path,
        endpoint: str,
        max_in_flight: int,
        requests_per_minute: float,
        *,
        burst: int | None = None,
        lease_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:
            raise ValueError(f"max_in_flight must be from 1 to {MAX_IN_FLIGHT_LIMIT}")
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be greater than 0")
        self.path = path
        self.endpoint = endpoint
        self.max_in_flight = max_in_flight
        self.rate = requests_per_minute / 60.0
        self.burst = burst
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._host = socket.gethostname()
        self._db_lock = threading.Lock()  # one sqlite connection, used by one thread at a time
        self._gate = threading.Lock()  # one thread of this process asks for a slot at a time
        self._changed = threading.Condition()
        self._con = _connect(path)

    def configure(
        self,
        max_in_flight: int,
        requests_per_minute: float,
        burst: int | None = None,
        lease_ttl_s: float = 600.0,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.rate = requests_per_minute / 60.0
        self.burst = burst
        self.lease_ttl_s = max(self.lease_ttl_s, lease_ttl_s)

    # ------------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            con = self._con
            con.execute("begin immediate")
            try:
                yield con
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")

    def _row(self, con: sqlite3.Connection, now: float) -> dict[str, Any]:
        con.execute(
            "insert into endpoints (endpoint, max_cap, cap, tokens, tokens_at, updated_at) "
            "values (?, ?, ?, ?, ?, ?) on conflict do nothing",
            [self.endpoint, self.max_in_flight, self.max_in_flight, self.max_in_flight, now, now],
        )
        cur = con.execute("select * from endpoints where endpoint = ?", [self.endpoint])
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))

    def _reclaim(self, con: sqlite3.Connection, now: float, dead_pids: bool) -> None:
        con.execute(
            "delete from leases where endpoint = ? and expires_at < ?", [self.endpoint, now]
        )
        if not dead_pids:
            return
        pids = con.execute(
            "select distinct pid from leases where endpoint = ? and host = ? and pid <> ?",
            [self.endpoint, self._host, os.getpid()],
        ).fetchall()
        for (pid,) in pids:
            if not psutil.pid_exists(pid):
                con.execute(
                    "delete from leases where endpoint = ? and host = ? and pid = ?",
                    [self.endpoint, self._host, pid],
                )

    def _in_flight(self, con: sqlite3.Connection) -> int:
        return con.execute(
            "select count(*) from leases where endpoint = ?", [self.endpoint]
        ).fetchone()[0]

    def _try_acquire(self) -> Lease | float:
        """A lease, or how long to wait before asking again."""
        now = self._clock()
        with self._tx() as con:
            row = self._row(con, now)
            self._reclaim(con, now, dead_pids=False)
            in_flight = self._in_flight(con)
            cap, most = row["cap"], self.max_in_flight
            if in_flight == 0 and now - row["updated_at"] > IDLE_RESET_S:
                cap = most
            cap = max(1, min(cap, most))
            if cap != row["cap"] or most != row["max_cap"]:
                con.execute(
                    "update endpoints set cap = ?, max_cap = ? where endpoint = ?",
                    [cap, most, self.endpoint],
                )
            if now < row["blocked_until"]:
                return row["blocked_until"] - now
            if in_flight >= cap:
                self._reclaim(con, now, dead_pids=True)
                in_flight = self._in_flight(con)
                if in_flight >= cap:
                    return POLL_S
            burst = float(self.burst or most)
            tokens = min(burst, row["tokens"] + max(0.0, now - row["tokens_at"]) * self.rate)
            if tokens < 1.0:
                return (1.0 - tokens) / self.rate
            con.execute(
                "update endpoints set tokens = ?, tokens_at = ?, requests = requests + 1, "
                "updated_at = ? where endpoint = ?",
                [tokens - 1.0, now, now, self.endpoint],
            )
            cur = con.execute(
                "insert into leases (endpoint, pid, host, acquired_at, expires_at) "
                "values (?, ?, ?, ?, ?)",
                [self.endpoint, os.getpid(), self._host, now, now + self.lease_ttl_s],
            )
            return Lease(int(cur.lastrowid or 0), self.endpoint, now)

    # ------------------------------------------------------------------------------ public

    def acquire(self, sleep: Callable[[float], None] | None = None) -> Lease:
        """Wait for a slot (cap, rate, Retry-After) and take it."""
        with self._gate:
            while True:
                got = self._try_acquire()
                if isinstance(got, Lease):
                    return got
                if sleep is not None:
                    sleep(got)
                    continue
                with self._changed:
                    self._changed.wait(min(got, POLL_S))

    def release(
        self, lease: Lease, status: int | None = None, retry_after: float | None = None
    ) -> None:
        """Give the slot back; ``status`` is the answer (None: no answer), which adapts the
        cap: 429/503 cut it and, with ``retry_after``, hold the endpoint; 2xx grow it."""
        now = self._clock()
        try:
            with self._tx() as con:
                con.execute("delete from leases where id = ?", [lease.id])
                row = self._row(con, now)
                if status in THROTTLE_STATUSES:
                    self._throttled(con, row, lease, status, retry_after, now)
                elif status is not None and 200 <= status < 300:
                    successes, cap = row["successes"] + 1, row["cap"]
                    # Probing past the cap where the server last pushed back costs a refused
                    # request and its Retry-After wait: there, grow PLATEAU times slower.
                    window = cap * (PLATEAU if row["ceiling"] and cap + 1 >= row["ceiling"] else 1)
                    if successes >= window:
                        successes, cap = 0, min(row["max_cap"], cap + 1)
                    con.execute(
                        "update endpoints set successes = ?, cap = ?, updated_at = ? "
                        "where endpoint = ?",
                        [successes, cap, now, self.endpoint],
                    )
        finally:
            with self._changed:
                self._changed.notify_all()

    def _throttled(
        self,
        con: sqlite3.Connection,
        row: dict[str, Any],
        lease: Lease,
        status: int,
        retry_after: float | None,
        now: float,
    ) -> None:
        column = "throttled_429" if status == 429 else "throttled_503"
        cap, decreased_at = row["cap"], row["decreased_at"]
        # Requests sent before the last cut saw the old cap: their 429s do not cut again.
        ceiling = row["ceiling"]
        hold = False
        if lease.acquired_at > decreased_at:
            # What the server was serving when it pushed back: the requests sent before this
            # one and still in flight. The cut goes down to that, by at most DECREASE.
            older = con.execute(
                "select count(*) from leases where endpoint = ? and acquired_at < ?",
                [self.endpoint, lease.acquired_at],
            ).fetchone()[0]
            # The Retry-After holds every new request when the cut cannot be the answer: the
            # server refused while serving none of ours (a rate limit, or someone else's
            # load), or refuses again at the cap of a cut made less than its Retry-After ago.
            # A refusal the cut explains (a probe one past the server's capacity) holds only
            # the refused request (the client waits before sending it again): holding them
            # all would idle the endpoint for a Retry-After at every probe.
            hold = older == 0 or (retry_after is not None and now - decreased_at < retry_after)
            ceiling = cap
            cap = max(1, min(cap - 1, max(int(cap * DECREASE), older)))
            decreased_at = now
        blocked = row["blocked_until"]
        if retry_after is not None and (hold or blocked > now):
            blocked = max(blocked, now + retry_after)
        con.execute(
            f"update endpoints set {column} = {column} + 1, cap = ?, successes = 0, "
            "ceiling = ?, decreased_at = ?, blocked_until = ?, updated_at = ? where endpoint = ?",
            [cap, ceiling, decreased_at, blocked, now, self.endpoint],
        )

    def stats(self) -> dict[str, Any]:
        return _stats(self._con, self._db_lock, self.endpoint)[0]


def _stats(
    con: sqlite3.Connection, lock: threading.Lock, endpoint: str | None = None
) -> list[dict[str, Any]]:
    where, args = ("where e.endpoint = ?", [endpoint]) if endpoint else ("", [])
    with lock:
        cur = con.execute(
            "select e.endpoint, e.cap, e.max_cap, e.requests, e.throttled_429, e.throttled_503, "
            "(select count(*) from leases l where l.endpoint = e.endpoint) as in_flight, "
            "e.blocked_until, e.updated_at "
            f"from endpoints e {where} order by e.endpoint",
            args,
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


_LIMITERS: dict[tuple[int, Path, str], EndpointLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(
    url: str,
    *,
    max_in_flight: int | None = None,
    requests_per_minute: float | None = None,
    burst: int | None = None,
    lease_ttl_s: float = 600.0,
    paths: config.Paths | None = None,
) -> EndpointLimiter:
    """This process's limiter of ``url``'s endpoint; unset limits come from the environment
    (validated: a bad value raises ``ValueError`` naming the variable)."""
    most = max_in_flight if max_in_flight is not None else max_in_flight_from_env()
    rpm = requests_per_minute if requests_per_minute is not None else requests_per_minute_from_env()
    # Keyed by pid too: a forked child must not share its parent's sqlite connection.
    key = (os.getpid(), db_path(paths), endpoint_of(url))
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = EndpointLimiter(
                key[1], key[2], most, rpm, burst=burst, lease_ttl_s=lease_ttl_s
            )
        else:
            limiter.configure(most, rpm, burst, lease_ttl_s)
        return limiter


def endpoint_stats(paths: config.Paths | None = None) -> list[dict[str, Any]]:
    """Every endpoint's current cap, configured maximum, requests, 429s and 503s and leases in
    flight (for ``stats`` and analytics); empty when no HTTP limit was ever used."""
    path = db_path(paths)
    if not path.exists():
        return []
    con = _connect(path)
    try:
        return _stats(con, threading.Lock())
    finally:
        con.close()


def run_metadata() -> dict[str, Any]:
    """Scalar metadata on the endpoints this process has talked to (cap now, 429s so far),
    for a run's materializations: ``http_cap`` and ``http_429`` for one endpoint, keyed by
    endpoint for several."""
    with _LIMITERS_LOCK:
        limiters = list(_LIMITERS.values())
    out: dict[str, Any] = {}
    for limiter in limiters:
        try:
            s = limiter.stats()
        except sqlite3.Error:
            continue
        suffix = "" if len(limiters) == 1 else f" {limiter.endpoint}"
        out[f"http_cap{suffix}"] = s["cap"]
        out[f"http_429{suffix}"] = s["throttled_429"]
    return out
