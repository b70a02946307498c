"""Elapsed time that survives reboots and ignores the wall clock."""

from __future__ import annotations

import json
from pathlib import Path

from ota_daemon.clock import FakeClock
from ota_daemon.elapsed import FILE_NAME, Elapsed


def test_elapsed_ignores_wall_clock_jumps(tmp_path: Path) -> None:
    clock = FakeClock()
    elapsed = Elapsed(tmp_path, clock)
    start = elapsed.now()
    clock.advance(120)
    clock.jump(-40 * 365 * 86400)  # an RTC-less boot at 1970 would look like this
    assert elapsed.now() - start == 120
    clock.jump(+3 * 86400)  # NTP corrects the clock by days
    clock.advance(30)
    assert elapsed.now() - start == 150


def test_elapsed_carries_on_across_reboots(tmp_path: Path) -> None:
    """A reboot starts the boot clock again; the counter carries on from the last reading
    (time powered off does not count: durations only ever come out longer)."""
    clock = FakeClock()
    start = Elapsed(tmp_path, clock).now()
    clock.advance(3600)
    before = Elapsed(tmp_path, clock).now()
    assert before - start == 3600
    clock.reboot(off_for=86400, wall=0.0)  # off for a day, back at 1970
    after = Elapsed(tmp_path, clock).now()
    assert after >= before and after - before <= 10
    clock.advance(600)
    assert Elapsed(tmp_path, clock).now() - before >= 600


def test_unreadable_counter_starts_again(tmp_path: Path) -> None:
    clock = FakeClock()
    (tmp_path / FILE_NAME).write_text("{not json")
    assert Elapsed(tmp_path, clock).now() >= 0
    assert json.loads((tmp_path / FILE_NAME).read_text())["bootId"] == clock.boot_id()
    (tmp_path / FILE_NAME).write_text(json.dumps({"bootId": "x", "base": -5, "seen": 1e300}))
    assert 0 <= Elapsed(tmp_path, clock).now() < 1e6
