"""Template names, cron schedules and time zones are checked before anything is saved, and a
schedule's latest tick is computed in its own time zone (wall clock, across DST)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batch_pipelines.core.templates import check_name, check_schedule, latest_tick, tick_key


@pytest.mark.parametrize("name", ["nightly", "a", "daily-penguins.v2", "x_1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == []


@pytest.mark.parametrize("name", ["", "-x", "has space", "a/b", "é", "x" * 101])
def test_bad_names_are_named(name: str) -> None:
    [(field, message)] = check_name(name)
    assert field == "name" and "template name" in message


def test_schedule_and_timezone_problems_name_their_field() -> None:
    assert check_schedule("0 6 * * 1-5", "Europe/Paris") == []
    assert check_schedule("@daily", None) == []
    assert check_schedule(None, None) == []
    for bad in ("61 * * * *", "every day", "* * * * * *", "", 5):
        assert [f for f, _ in check_schedule(bad, "UTC")] == ["schedule"], bad
    for bad in ("Mars/Olympus", "", "../etc/passwd", 3):
        assert [f for f, _ in check_schedule("0 * * * *", bad)] == ["timezone"], bad


def test_latest_tick_is_at_or_before_now_in_the_templates_zone() -> None:
    now = datetime(2026, 7, 1, 4, 30)  # UTC: 06:30 in Paris (CEST)
    tick = latest_tick("0 6 * * *", "Europe/Paris", now)
    assert tick.isoformat() == "2026-07-01T06:00:00+02:00"
    on_the_tick = latest_tick("30 4 * * *", "UTC", now)
    assert on_the_tick.replace(tzinfo=None) == now
    # Still 6:00 on the wall clock after the clocks went back (CET, UTC+1).
    winter = latest_tick("0 6 * * *", "Europe/Paris", datetime(2026, 12, 1, 5, 30, tzinfo=UTC))
    assert winter.isoformat() == "2026-12-01T06:00:00+01:00"


def test_tick_key_is_the_wall_clock_minute() -> None:
    tick = latest_tick("0 1 * * *", "America/New_York", datetime(2026, 11, 1, 7, 0))
    # 01:00 happens twice that night: both give one key, so one submission.
    assert tick_key("t", tick) == "template:t:2026-11-01T01:00"
