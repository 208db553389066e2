"""Supervising the attempts of a pool of threads that run their handlers themselves: the
per-item timeout and a stopped batch end an attempt whatever its handler does, and one that
does not leave its handler is abandoned with its thread (its result never committed)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import ItemCancelledError, ItemTimeoutError

if TYPE_CHECKING:
    from batch_pipelines.core.execution import ItemRun

log = logging.getLogger("batch_pipelines.core.runner")

STOP_GRACE_S = 2.0  # how long an attempt told to stop has to leave its handler
_WATCH_POLL_S = 0.5  # the longest a supervisor sleeps (a batch stopped elsewhere)


class AttemptAbandoned(BaseException):
    """Raised in the thread of an abandoned attempt once its handler returns at last: the
    item is another thread's now (:meth:`ItemRun.abandon`), so this thread leaves."""


class InFlight:
    """One attempt in its handler, shared by the thread that runs it and its supervisor."""

    def __init__(self, run: ItemRun, ctx: ItemContext, started: float, started_at: datetime):
        self.run, self.ctx, self.started, self.started_at = run, ctx, started, started_at
        self.thread = threading.current_thread()
        self.told_at: float | None = None
        self.stop_error: Exception | None = None
        self.state = "running"  # then "over" (its thread took its end) or "abandoned"
        self.lock = threading.Lock()


class Supervisor:
    """The attempts in flight of a pool of threads, each running its handler itself (no
    thread handoff per item: that cost a light item more than its own work), watched from a
    thread of its own, so a timeout or a stopped batch takes effect while the pool's owner is
    busy (a flush waiting for the warehouse).

    An attempt whose deadline has passed, or every attempt once ``batch_stop`` is set, is
    told to stop: its context's events are set (``ctx.check()`` raises) and its DuckDB
    connections are interrupted; its end is then a timeout or a cancellation, whatever the
    handler returns. One that has not left its handler :data:`STOP_GRACE_S` later is
    abandoned and given to ``on_abandoned`` (in the supervisor's thread): the owner settles
    the item (:meth:`ItemRun.abandon`) and starts another thread, and the stuck thread leaves
    when its handler returns (its result is never committed)."""

    def __init__(
        self, batch_stop: threading.Event, on_abandoned: Callable[[InFlight], None]
    ) -> None:
        self.batch_stop, self.on_abandoned = batch_stop, on_abandoned
        self._in_flight: set[InFlight] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_look = 0.0
        self._done = False
        self._thread = threading.Thread(target=self._loop, name="item-supervisor", daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done = True
        self._wake.set()
        self._thread.join(5)

    def begin(self, a: InFlight) -> None:
        self._in_flight.add(a)
        if a.ctx.deadline is not None and a.ctx.deadline < self._next_look:
            self._wake.set()  # a deadline before the next look (short item timeouts)

    def end(self, a: InFlight) -> None:
        self._in_flight.discard(a)

    def _loop(self) -> None:
        while not self._done:
            try:
                for a in self.watch():
                    self.on_abandoned(a)
            except Exception:  # noqa: BLE001 - a look that fails must not end the watch
                log.exception("supervising the items in flight failed; looking again")
                self._next_look = time.monotonic() + _WATCH_POLL_S
            self._wake.wait(max(0.0, self._next_look - time.monotonic()))
            self._wake.clear()

    def watch(self) -> list[InFlight]:
        """Tell the attempts due to stop, abandon those past their grace (returned), and
        plan the next look."""
        with self._lock:
            now = time.monotonic()
            stopping = self.batch_stop.is_set()
            abandoned: list[InFlight] = []
            wake = _WATCH_POLL_S
            for a in list(self._in_flight):
                deadline = a.ctx.deadline
                if a.told_at is None:
                    timed_out = deadline is not None and now >= deadline
                    if timed_out or stopping:
                        a.stop_error = (
                            ItemTimeoutError(f"item exceeded item_timeout_s ({a.ctx.timeout_s:g}s)")
                            if timed_out
                            else ItemCancelledError("batch cancelled or stopped while the item ran")
                        )
                        a.told_at = now
                        a.ctx.cancel_event.set()
                        a.ctx.interrupt()
                        wake = min(wake, STOP_GRACE_S)
                    elif deadline is not None:
                        wake = min(wake, deadline - now)
                    continue
                if now - a.told_at < STOP_GRACE_S:
                    wake = min(wake, a.told_at + STOP_GRACE_S - now)
                    continue
                with a.lock:
                    mine = a.state == "running"
                    if mine:
                        a.state = "abandoned"
                if mine:
                    self._in_flight.discard(a)
                    abandoned.append(a)
            self._next_look = now + max(0.0, wake)
            return abandoned
