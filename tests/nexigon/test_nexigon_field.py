"""Months in the field against the Nexigon agent double: a status property the device may not
write never stands between the device and its update; the hub's config property holds for
every step of every pass, also after a reboot before the hub answers."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.daemon import Daemon
from ota_daemon.engine import PassResult, Result
from ota_daemon.installers.simulated import make_image
from ota_daemon.testing import SimWorld

from .double.fixture import NexigonDouble

STATUS = "dev.nexigon.ota.status"


@pytest.fixture
def sim(tmp_path: Path) -> SimWorld:
    world = SimWorld(tmp_path / "world", system="sim-device")
    world.create_device("1.0.0")
    return world


def release(double: NexigonDouble, sim: SimWorld, version: str) -> Any:
    return double.publish_release(version, image=make_image(sim.system, version, bytes(200_000)), ext="img", system=sim.system)


def config(double: NexigonDouble, sim: SimWorld, transport: str = "socket", **overrides: Any) -> Any:
    return build_config(sim.tables(hub=double.hub_config(transport), **overrides), source="test", env={})


async def run(double: NexigonDouble, sim: SimWorld, clock: FakeClock, transport: str = "socket", **overrides: Any) -> PassResult:
    async with open_engine(config(double, sim, transport, **overrides), clock=clock) as engine:
        return await engine.reconcile()


def local_events(sim: SimWorld) -> list[dict[str, Any]]:
    path = sim.state_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_refused_status_write_does_not_block_the_update(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """An operator protected the status property: every write is refused. The update installs
    and commits anyway, the refusal is warned about once, and 'update available' is not
    repeated by later passes."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    release(double, sim, "1.1.0")
    double.hub.set_property(STATUS, {"state": "set by the operator"}, protected=True)
    first = await run(double, sim, clock, nexigon_transport)
    assert first.result is Result.REBOOTING, first.message
    second = await run(double, sim, clock, nexigon_transport)
    assert second.result is Result.COMPLETED, second.message
    for _ in range(3):
        assert (await run(double, sim, clock, nexigon_transport)).result is Result.UP_TO_DATE
    info = sim.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0"
    assert double.status == {"state": "set by the operator"}  # the hub kept its value
    kinds = [e["attributes"]["event"] for e in local_events(sim)]
    assert kinds.count("update_available") == 1
    warnings = [e for e in local_events(sim) if e["attributes"]["event"] == "warning" and "status" in str(e["attributes"].get("message"))]
    assert len(warnings) == 1, [w["attributes"] for w in warnings]
    assert "refused" in warnings[0]["attributes"]["message"]
    # the events still reached the hub: only the status property is protected
    assert "update completed" in [e["body"] for e in double.events]
    # the local status holds the truth and says the hub has not got it
    status = json.loads((sim.state_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["currentVersion"] == "1.1.0"


async def test_status_delivered_once_the_refusal_ends(nexigon_hub_double: NexigonDouble, sim: SimWorld) -> None:
    """A refused status stays pending and is written when the hub accepts it again."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    double.hub.set_property(STATUS, {"state": "locked"}, protected=True)
    assert (await run(double, sim, clock)).result is Result.UP_TO_DATE
    assert double.status == {"state": "locked"}
    double.hub.remove_property(STATUS)
    assert (await run(double, sim, clock)).result is Result.UP_TO_DATE
    assert double.status is not None and double.status.get("currentVersion") == "1.0.0"


class _Notes:
    def __init__(self, passes: int) -> None:
        self.passes = passes
        self.daemon: Daemon | None = None
        self.messages: list[str] = []

    def notify(self, state: str) -> None:
        self.messages.append(state)
        if state.startswith("STATUS=") and self.daemon is not None and self.daemon.passes >= self.passes:
            self.daemon.stop()


async def test_daemon_polls_at_the_hubs_interval(nexigon_hub_double: NexigonDouble, sim: SimWorld) -> None:
    """pollInterval/pollJitter from the hub's config property set the daemon's schedule (it
    waited the local 4 h)."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    double.set_config({"pollInterval": "10m", "pollJitter": "30s"})
    notes = _Notes(3)
    daemon = Daemon(None, config=config(double, sim, poll={"interval": "4h", "jitter": "5m"}), clock=clock, notifier=notes, rng=random.Random(5))
    notes.daemon = daemon
    await asyncio.wait_for(daemon.run(), 120)
    waits = [s for s in clock.slept if s > 0]
    assert len(waits) >= 2
    assert all(600 <= w <= 630 for w in waits[:2]), waits


async def test_hub_reboot_policy_holds_for_every_pass(nexigon_hub_double: NexigonDouble, sim: SimWorld) -> None:
    """rebootPolicy "manual" from the hub holds for the pass that installs and for the passes
    that resume the pending reboot (pass 2 rebooted under the local 'immediate'), also when
    the hub does not answer: the last overlay it gave is kept in the state directory."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    release(double, sim, "1.1.0")
    double.set_config({"rebootPolicy": "manual"})
    first = await run(double, sim, clock, policy={"reboot": "immediate"})
    assert first.result is Result.REBOOT_PENDING, first.message
    second = await run(double, sim, clock, policy={"reboot": "immediate"})
    assert second.result is Result.REBOOT_PENDING, second.message
    info = sim.device.info()
    assert info.booted == "a" and info.version_of("a") == "1.0.0"
    double.hub_offline()
    third = await run(double, sim, clock, policy={"reboot": "immediate"})
    assert third.result is Result.REBOOT_PENDING, third.message
    assert sim.device.info().booted == "a"
    double.hub_online()
    double.set_config(None)  # the operator lifts it: the local policy reboots
    assert (await run(double, sim, clock, policy={"reboot": "immediate"})).result is Result.REBOOTING
