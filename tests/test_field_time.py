"""Clock jumps: durations (deferral cap, lease age) are elapsed time that survives reboots, and
windows wait while the wall clock is known to be wrong (earlier than the running image's build)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import PassResult, Result
from ota_daemon.inhibit import Lease, What
from ota_daemon.testing import SimWorld
from tests.conftest import make_config

DAY = 86400.0


async def run_pass(world: SimWorld, clock: FakeClock, **overrides: Any) -> PassResult:
    async with open_engine(make_config(world, **overrides), clock=clock) as engine:
        return await engine.reconcile()


def write_lease(directory: Path, clock: FakeClock, *, max_duration: float) -> None:
    """A lease as `ota-daemon inhibit` writes it, in the current boot, held by a live pid."""
    directory.mkdir(parents=True, exist_ok=True)
    lease = Lease(
        pid=os.getpid(), reason="recording in progress", what=[What.INSTALL, What.REBOOT], max_duration=max_duration,
        created=clock.now(), owner="recorder", boot_id=clock.boot_id(), boottime=clock.monotonic(),
    )
    (directory / "recorder.json").write_text(lease.model_dump_json())


def add_hook(root: Path, point: str, body: str) -> None:
    folder = root / point
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "10-busy"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


async def test_ntp_jump_does_not_end_a_lease_or_the_deferral_cap(world: SimWorld, clock: FakeClock) -> None:
    """A device booted three days slow: an application holds a 2 h lease; NTP corrects the
    clock a minute later. The install still waits for the lease (it went ahead: the lease
    looked expired and the deferral three days old)."""
    inhibit = world.root / "inhibit.d"
    policy = {"inhibit_dir": str(inhibit), "max_deferral": "1d"}
    world.publish("1.1.0")
    write_lease(inhibit, clock, max_duration=2 * 3600)
    first = await run_pass(world, clock, policy=policy)
    assert first.result is Result.BLOCKED and "recording in progress" in first.message
    clock.advance(60)
    clock.jump(3 * DAY)
    second = await run_pass(world, clock, policy=policy)
    assert second.result is Result.BLOCKED, second.message
    assert world.device.slot_path("b").read_bytes() == b""
    # the lease ends after its two hours of elapsed time, whatever the wall clock says
    clock.advance(2 * 3600)
    clock.jump(-40 * 365 * DAY)
    assert (await run_pass(world, clock, policy=policy)).result is Result.REBOOTING


async def test_deferral_cap_is_elapsed_time_across_jumps_and_reboots(world: SimWorld, clock: FakeClock) -> None:
    """A pre-reboot hook says "busy": the reboot waits up to policy.max_deferral of elapsed
    time. A wall-clock jump of days does not end it early (it rebooted one minute after the
    hook objected), a reboot does not restart it, and it does end after a day of running."""
    hooks = world.root / "hooks.d"
    add_hook(hooks, "pre-reboot", "echo busy; exit 1\n")
    overrides: dict[str, Any] = {"policy": {"max_deferral": "1d"}, "hooks": {"dir": str(hooks)}}
    world.publish("1.1.0")
    assert (await run_pass(world, clock, **overrides)).result is Result.REBOOT_PENDING
    clock.advance(60)
    clock.jump(3 * DAY)
    second = await run_pass(world, clock, **overrides)
    assert second.result is Result.REBOOT_PENDING, second.message
    assert world.device.info().booted == "a"
    clock.advance(12 * 3600)
    assert (await run_pass(world, clock, **overrides)).result is Result.REBOOT_PENDING
    clock.advance(12 * 3600 + 60)
    assert (await run_pass(world, clock, **overrides)).result is Result.REBOOTING


async def test_windows_wait_while_the_clock_is_before_the_image_build(world: SimWorld, clock: FakeClock) -> None:
    """A device without an RTC booted at 1970: the install window cannot be judged; the update
    waits with that reason in the status, and installs once the clock is set."""
    build_info = Path(make_config(world).system.build_info)
    os.utime(build_info, (clock.now() - DAY, clock.now() - DAY))
    world.publish("1.1.0")
    policy = {"install_window": "00:00-24:00"}
    clock.set_wall(5.0)  # 1970-01-01, any weekday and hour: inside "00:00-24:00"
    result = await run_pass(world, clock, policy=policy)
    assert result.result is Result.BLOCKED and "earlier than the running image's build" in result.message
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["state"] == "blocked" and "earlier than the running image's build" in status["reason"]
    assert world.device.slot_path("b").read_bytes() == b""
    clock.set_wall(1_780_000_000.0)  # NTP
    assert (await run_pass(world, clock, policy=policy)).result is Result.REBOOTING
