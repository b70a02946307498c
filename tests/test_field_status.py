"""Status that never lies by omission: a failed gate is visible before the reboot, an old
failure is cleared once the tag names the running version, a fresh device is idle."""

from __future__ import annotations

import json
import sys
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import PassResult, Result
from ota_daemon.installers.simulated import SimulatedInstaller
from ota_daemon.testing import SimWorld
from tests.conftest import make_config

FAIL = {"checks": [{"kind": "command", "name": "app", "command": [sys.executable, "-c", "import sys; print('app dead'); sys.exit(3)"]}], "deadline": "2s", "interval": "1s"}


async def run_pass(world: SimWorld, clock: FakeClock, **overrides: Any) -> PassResult:
    async with open_engine(make_config(world, **overrides), clock=clock) as engine:
        return await engine.reconcile()


def status(world: SimWorld) -> dict[str, Any]:
    return json.loads((world.state_dir / "status.json").read_text())


def kinds(world: SimWorld) -> list[str]:
    lines = (world.state_dir / "events.jsonl").read_text().splitlines() if (world.state_dir / "events.jsonl").exists() else []
    return [json.loads(line)["attributes"]["event"] for line in lines]


async def test_fresh_device_first_idle_pass_is_idle_not_completed(world: SimWorld, clock: FakeClock) -> None:
    """Nothing was ever installed: the status is 'idle' (it said 'completed')."""
    assert (await run_pass(world, clock)).result is Result.UP_TO_DATE
    st = status(world)
    assert st["state"] == "idle" and st["targetVersion"] is None
    assert "up_to_date" not in kinds(world)
    assert (await run_pass(world, clock)).result is Result.UP_TO_DATE
    assert status(world)["state"] == "idle"


async def test_failed_gate_is_in_the_status_before_the_reboot(world: SimWorld, clock: FakeClock, monkeypatch: Any) -> None:
    """Between the failed health gate and the reboot the status says 'failed' with the error
    (it stayed 'committing' with no error: a reboot that never came left it so for good)."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock, health=FAIL)).result is Result.REBOOTING
    seen: list[dict[str, Any]] = []

    async def reboot_that_hangs(self: SimulatedInstaller, *, spare: bool) -> None:
        seen.append(status(world))

    monkeypatch.setattr(SimulatedInstaller, "reboot", reboot_that_hangs)
    result = await run_pass(world, clock, health=FAIL)
    assert result.result is Result.ROLLED_BACK
    assert seen, "the rollback reboot was asked for"
    for st in (seen[0], status(world)):
        assert st["state"] == "failed" and st["state"] != "committing"
        assert "app" in st["lastError"] and "rolling back" in st["reason"]
        assert st["targetVersion"] == "1.1.0"


async def test_tag_moved_back_clears_the_old_failure(world: SimWorld, clock: FakeClock) -> None:
    """1.1.0 rolls back and is quarantined; the operator moves the tag back to the running
    1.0.0: the status no longer shows 'failed'/'rollback' with target 1.1.0 and its reason;
    the quarantine list still names 1.1.0."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock, health=FAIL)).result is Result.REBOOTING
    assert (await run_pass(world, clock, health=FAIL)).result is Result.ROLLED_BACK
    await run_pass(world, clock, health=FAIL)  # the old slot boots; the rollback is reported
    assert status(world)["state"] == "rollback"
    world.tag("1.0.0")
    assert (await run_pass(world, clock)).result is Result.UP_TO_DATE
    st = status(world)
    assert st["state"] == "idle" and st["targetVersion"] is None and st["reason"] is None and st["lastError"] is None
    assert [q["version"] for q in st["quarantined"]] == ["1.1.0"]
