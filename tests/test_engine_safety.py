"""Deferral and hooks in whole passes: inhibitor leases, the deferral cap, hook decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ota_daemon.clock import FakeClock
from ota_daemon.engine import Result
from ota_daemon.testing import SimWorld
from tests.test_engine_cycle import events, run_pass, status


def lease(world: SimWorld, name: str, *, pid: int, what: list[str], clock: FakeClock, max_duration: float = 3600) -> Path:
    directory = world.root / "inhibit.d"
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"pid": pid, "reason": f"{name} is busy", "what": what, "max_duration": max_duration, "created": clock.now()}))
    return path


def hook(world: SimWorld, point: str, name: str, body: str) -> Path:
    folder = world.root / "hooks.d" / point
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_live_lease_defers_install(world: SimWorld, clock: FakeClock) -> None:
    """A live lease holds the install back with state blocked and its reason; gone, it proceeds."""
    world.publish("1.1.0")
    path = lease(world, "recording", pid=os.getpid(), what=["install"], clock=clock)
    result = await run_pass(world, clock)
    assert result.result is Result.BLOCKED and "recording is busy" in result.message
    assert status(world)["state"] == "blocked"
    assert world.device.slot_path("b").read_bytes() == b""
    path.unlink()
    assert (await run_pass(world, clock)).result is Result.REBOOTING


async def test_stale_lease_is_ignored(world: SimWorld, clock: FakeClock) -> None:
    """A lease of a dead process, or an expired one, does not hold anything back."""
    world.publish("1.1.0")
    lease(world, "crashed", pid=dead_pid(), what=["install", "reboot"], clock=clock)
    lease(world, "old", pid=os.getpid(), what=["install"], clock=clock, max_duration=60)
    clock.advance(120)
    assert (await run_pass(world, clock)).result is Result.REBOOTING


async def test_deferral_cap(world: SimWorld, clock: FakeClock) -> None:
    """Past policy.max_deferral the update proceeds despite a live lease, and says so."""
    world.publish("1.1.0")
    lease(world, "kiosk", pid=os.getpid(), what=["install"], clock=clock, max_duration=10 * 86400)
    policy = {"max_deferral": "1d"}
    assert (await run_pass(world, clock, policy=policy)).result is Result.BLOCKED
    clock.advance(3600)
    assert (await run_pass(world, clock, policy=policy)).result is Result.BLOCKED
    clock.advance(86400)
    assert (await run_pass(world, clock, policy=policy)).result is Result.REBOOTING
    assert any("proceeding anyway" in str(e["attributes"].get("message")) for e in events(world))


async def test_reboot_lease_defers_reboot_only(world: SimWorld, clock: FakeClock) -> None:
    """A lease on 'reboot' lets the install happen and holds the reboot back."""
    world.publish("1.1.0")
    path = lease(world, "call", pid=os.getpid(), what=["reboot"], clock=clock)
    result = await run_pass(world, clock)
    assert result.result is Result.REBOOT_PENDING and "call is busy" in result.message
    assert world.device.info().booted == "a"
    assert (await run_pass(world, clock)).result is Result.REBOOT_PENDING
    path.unlink()
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    assert (await run_pass(world, clock)).result is Result.COMPLETED


async def test_pre_install_hook_fails_attempt(world: SimWorld, clock: FakeClock) -> None:
    """A pre-install hook that fails fails the attempt; its output tail goes into the event."""
    world.publish("1.1.0")
    hook(world, "pre-install", "10-check-battery", 'echo "battery at 9%, need 30%" >&2; exit 1')
    result = await run_pass(world, clock)
    assert result.result is Result.FAILED
    assert "10-check-battery" in result.message
    failed = [e for e in events(world) if e["attributes"]["event"] == "failed"]
    assert "battery at 9%" in failed[-1]["attributes"]["output"]
    assert world.device.slot_path("b").read_bytes() == b""


async def test_pre_install_hook_defers(world: SimWorld, clock: FakeClock) -> None:
    """Exit 75 from pre-install defers: nothing installed, state blocked; exit 0 later proceeds."""
    world.publish("1.1.0")
    path = hook(world, "pre-install", "10-busy", "exit 75")
    result = await run_pass(world, clock)
    assert result.result is Result.BLOCKED
    assert status(world)["state"] == "blocked"
    path.write_text("#!/bin/sh\nexit 0\n")
    assert (await run_pass(world, clock)).result is Result.REBOOTING


async def test_hooks_get_versions_and_slots(world: SimWorld, clock: FakeClock) -> None:
    """Hooks see versions and slots in their environment; post-commit runs once."""
    world.publish("1.1.0")
    out = world.root / "env.log"
    for point in ("pre-install", "post-install", "pre-reboot", "post-commit"):
        hook(world, point, "50-log", f'echo "$OTA_POINT $OTA_CURRENT_VERSION $OTA_TARGET_VERSION $OTA_FROM_SLOT $OTA_TARGET_SLOT" >> {out}')
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    assert (await run_pass(world, clock)).result is Result.COMPLETED
    assert (await run_pass(world, clock)).result is Result.UP_TO_DATE
    lines = out.read_text().splitlines()
    assert lines == [
        "pre-install 1.0.0 1.1.0 a b",
        "post-install 1.0.0 1.1.0 a b",
        "pre-reboot 1.0.0 1.1.0 a b",
        "post-commit 1.1.0 1.1.0 a b",
    ]


async def test_failing_post_hook_changes_nothing(world: SimWorld, clock: FakeClock) -> None:
    """A failing post-commit hook is reported as a warning; the update still completes."""
    world.publish("1.1.0")
    hook(world, "post-commit", "90-notify", "echo cannot reach dashboard; exit 3")
    await run_pass(world, clock)
    assert (await run_pass(world, clock)).result is Result.COMPLETED
    warnings = [e for e in events(world) if e["attributes"]["event"] == "warning" and e["attributes"].get("hookPoint") == "post-commit"]
    assert warnings and "cannot reach dashboard" in warnings[0]["attributes"]["output"]


async def test_on_rollback_hook(world: SimWorld, clock: FakeClock) -> None:
    """on-rollback hooks run when a rollback is reported."""
    world.publish("1.1.0")
    marker = world.root / "rolled-back"
    hook(world, "on-rollback", "10-mark", f'echo "$OTA_TARGET_VERSION" > {marker}')
    await run_pass(world, clock)
    world.device.boot()
    assert (await run_pass(world, clock)).result is Result.ROLLED_BACK
    assert marker.read_text().strip() == "1.1.0"


