"""Whether a daemon serves the instance, as ``submit --wait`` decides it: a heartbeat written
seconds before ``dagster dev`` stopped must not keep it waiting (Dagster writes one every
30 s); the ``batch_dispatcher`` sensor's ticks (every 3 s) and the daemon's process tell."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from batch_pipelines.app import devrun
from batch_pipelines.app.instance import daemon_running


class FakeInstance:
    def __init__(self, home: Path, beat_age: float | None, tick_age: float | None) -> None:
        self.root_directory = str(home)
        self.beat_age, self.tick_age = beat_age, tick_age

    def get_daemon_heartbeats(self) -> dict:
        if self.beat_age is None:
            return {}
        return {"SENSOR": SimpleNamespace(timestamp=time.time() - self.beat_age)}

    def all_instigator_state(self) -> list:
        state = SimpleNamespace(name="batch_dispatcher", instigator_origin_id="o", selector_id="s")
        return [SimpleNamespace(name="inbox_sensor"), state]

    def get_ticks(self, origin_id: str, selector_id: str, limit: int) -> list:
        if self.tick_age is None:
            return []
        at = time.time() - self.tick_age
        return [SimpleNamespace(timestamp=at - 1, tick_data=SimpleNamespace(end_timestamp=at))]


def test_fresh_heartbeat_but_a_silent_dispatcher_and_no_daemon_process_is_dead(
    tmp_path: Path,
) -> None:
    assert daemon_running(FakeInstance(tmp_path, beat_age=5, tick_age=2))
    check = daemon_running(FakeInstance(tmp_path, beat_age=5, tick_age=25))
    assert not check and "batch_dispatcher sensor last ticked 25 s ago" in check.reason
    assert not daemon_running(FakeInstance(tmp_path, beat_age=None, tick_age=2))
    assert not daemon_running(FakeInstance(tmp_path, beat_age=200, tick_age=2))
    # No tick yet (a daemon just started elsewhere): the heartbeat decides.
    assert daemon_running(FakeInstance(tmp_path, beat_age=5, tick_age=None))


def test_a_stopped_make_run_is_dead_at_once_until_a_daemon_beats_again(tmp_path: Path) -> None:
    (tmp_path / devrun.PID_FILE).write_text(
        f'{{"pid": 1, "create_time": {time.time() - 100}, "stopped_at": {time.time() - 3}}}'
    )
    check = daemon_running(FakeInstance(tmp_path, beat_age=5, tick_age=1))
    assert not check and "was stopped" in check.reason
    # A daemon started since (its heartbeat is newer than the stop): alive.
    assert daemon_running(FakeInstance(tmp_path, beat_age=1, tick_age=1))
