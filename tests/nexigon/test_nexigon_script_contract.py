"""The contract of ``nexigon-rugix-ota`` that fleets' dashboards are built on, kept by the
daemon: the status property is always complete (also when the first pass after a migration
fails), event bodies are a fixed vocabulary with details in attributes, the script's
attributes are kept, and a heartbeat shows an idle device is still checking."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ota_daemon.clock import FakeClock
from ota_daemon.engine import Result
from ota_daemon.errors import OtaError, TransientError
from ota_daemon.testing import SimWorld

from .cycle import assert_script_shape, config, release, run, script_status
from .double.fixture import NexigonDouble

FAILING_APP = {"deadline": "5s", "checks": [{"kind": "command", "name": "app", "command": [sys.executable, "-c", "raise SystemExit(1)"]}]}
STATUS = "dev.nexigon.ota.status"
DAY = 86400.0


@pytest.fixture
def sim(tmp_path: Path) -> SimWorld:
    world = SimWorld(tmp_path / "world", system="sim-device")
    world.create_device("1.0.0")
    return world


def migrated(double: NexigonDouble, **fields: object) -> dict[str, object]:
    """The script ran on this device before: its status property is there."""
    status = script_status(double, **fields)
    double.hub.set_property(STATUS, status)
    return status


# --------------------------------------------------------------------------- the status property


async def test_hub_timeout_on_first_pass_after_migration_keeps_the_script_status(
    nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld
) -> None:
    """The hub does not answer the resolve on the first pass after the script was replaced:
    the status written is complete and keeps the script's failureCount and lastError."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    before = migrated(double)
    double.hang("repositories_ResolveVersionByPath")
    try:
        with pytest.raises(TransientError):
            await run(double, sim, nexigon_transport, clock, timeout=0.5)
    finally:
        double.unhang()
    status = double.status
    assert_script_shape(status)
    assert status["failureCount"] == before["failureCount"]
    assert status["lastError"] == before["lastError"]
    assert status["config"]["path"] == double.path()
    # the local status tells what happened; the hub's lastError is not the timeout
    local = json.loads((sim.state_dir / "status.json").read_text())
    assert "did not finish" in local["lastError"] or "no answer" in local["lastError"]


async def test_installer_error_on_first_pass_after_migration_keeps_the_script_status(
    nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld
) -> None:
    """The installer fails before anything else on the first pass: the script's status is
    not replaced by an empty one."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    before = migrated(double, state="completed", failureCount=0, lastError=None)
    boot = sim.device_dir / "boot.json"
    boot.rename(boot.with_suffix(".away"))
    with pytest.raises(OtaError):
        await run(double, sim, nexigon_transport, clock)
    status = double.status
    assert_script_shape(status)
    assert {k: status[k] for k in before} == before


async def test_installer_error_on_a_fresh_device_publishes_a_complete_status(
    nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld
) -> None:
    """No status anywhere and the installer fails at once: what is published is complete."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    boot = sim.device_dir / "boot.json"
    boot.rename(boot.with_suffix(".away"))
    with pytest.raises(OtaError):
        await run(double, sim, nexigon_transport, clock)
    if double.status is not None:
        assert_script_shape(double.status)
        assert double.status["currentVersion"] == "1.0.0"


async def test_a_failure_after_migration_counts_on_from_the_script(
    nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld
) -> None:
    """The script had failed twice; a tag that does not exist is the third failure."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    migrated(double, failureCount=2)
    result = await run(double, sim, nexigon_transport, clock, hub={"path": double.path("nope")})
    assert result.result is Result.FAILED
    status = double.status
    assert_script_shape(status)
    assert status["state"] == "failed" and status["failureCount"] == 3
    assert "nope" in status["lastError"]


async def test_a_transient_error_stays_local(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """set_local(lastError=…) is local: the hub's status keeps its lastError and stays complete."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    published = double.status
    double.inject_error("Internal", "database is busy", action="repositories_ResolveVersionByPath")
    with pytest.raises(TransientError):
        await run(double, sim, nexigon_transport, clock)
    assert double.status == published
    assert "database is busy" in json.loads((sim.state_dir / "status.json").read_text())["lastError"]


async def test_status_complete_after_every_situation(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """Update, commit, failed gate, rollback, blocked: the status has the script's shape after each."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    for expected in (Result.UP_TO_DATE,):
        assert (await run(double, sim, nexigon_transport, clock)).result is expected
        assert_script_shape(double.status)
    release(double, sim, "1.1.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.REBOOTING
    assert_script_shape(double.status)
    assert double.status["state"] == "installing" and double.status["targetVersion"] == "1.1.0"
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.COMPLETED
    assert_script_shape(double.status)
    release(double, sim, "1.2.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.REBOOTING
    assert (await run(double, sim, nexigon_transport, clock, health=FAILING_APP)).result is Result.ROLLED_BACK
    assert_script_shape(double.status)
    assert (await run(double, sim, nexigon_transport, clock, health=FAILING_APP)).result is Result.ROLLED_BACK
    assert_script_shape(double.status)
    assert double.status["state"] == "rollback" and double.status["failureCount"] == 1
    # the rolled-back version stays behind the tag: refused (blocked), still complete
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.BLOCKED
    assert_script_shape(double.status)


# --------------------------------------------------------------------------- events

#: every body the daemon sends to the hub (README, "Migrating from nexigon-rugix-ota")
HUB_BODIES = {
    "no update available",
    "installing update",
    "update installed, rebooting",
    "update installed, waiting for reboot",
    "committing system",
    "health check failed",
    "update completed",
    "update failed",
    "update deferred",
    "update refused",
    "warning",
}


async def test_event_bodies_are_a_fixed_vocabulary(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """Bodies come from a fixed set; versions, reasons and errors are attributes. A rollback
    is reported as the script reported it: `update failed`, with targetVersion, currentVersion
    and error."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    double.set_config(["not", "an", "object"])  # a warning
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    release(double, sim, "1.1.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.REBOOTING
    assert (await run(double, sim, nexigon_transport, clock, health=FAILING_APP)).result is Result.ROLLED_BACK
    assert (await run(double, sim, nexigon_transport, clock, health=FAILING_APP)).result is Result.ROLLED_BACK
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.BLOCKED
    events = double.events
    bodies = [e["body"] for e in events]
    assert set(bodies) <= HUB_BODIES, sorted(set(bodies) - HUB_BODIES)
    assert all(isinstance(e["attributes"].get("event"), str) for e in events)
    warning = next(e for e in events if e["body"] == "warning")
    assert "expected a JSON object" in warning["attributes"]["message"]
    rollback = next(e for e in events if e["attributes"]["event"] == "rollback")
    assert rollback["body"] == "update failed"
    attrs = rollback["attributes"]
    assert attrs["targetVersion"] == "1.1.0" and attrs["currentVersion"] == "1.0.0"
    assert attrs["error"].startswith("update rolled back (expected 1.1.0, running 1.0.0)")


async def test_installing_update_keeps_the_script_attributes(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """`installing update` carries activeGroup and targetGroup (and currentVersion/targetVersion,
    which the script put on `update available, installing`), ours beside them."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.1.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.REBOOTING
    installing = [e for e in double.events if e["body"] == "installing update"]
    assert len(installing) == 1
    attrs = installing[0]["attributes"]
    assert attrs["activeGroup"] == "a" and attrs["targetGroup"] == "b"
    assert attrs["currentVersion"] == "1.0.0" and attrs["targetVersion"] == "1.1.0"
    assert attrs["fromSlot"] == "a" and attrs["event"] == "installing"
    committing = next(e for e in (await _commit(double, sim, nexigon_transport, clock)) if e["body"] == "committing system")
    assert committing["attributes"]["activeGroup"] == "b" and committing["attributes"]["defaultGroup"] == "a"


async def _commit(double: NexigonDouble, sim: SimWorld, transport: str, clock: FakeClock) -> list[dict[str, object]]:
    assert (await run(double, sim, transport, clock)).result is Result.COMPLETED
    return double.events


# --------------------------------------------------------------------------- heartbeat


async def test_heartbeat_writes_last_check_once_a_day(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """Idle passes write nothing, except `lastCheck` once per telemetry.heartbeat (1d)."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    first = double.status["lastCheck"]
    mark = double.mark()
    for _ in range(5):  # 4 h apart: within the day
        clock.advance(4 * 3600)
        assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    assert double.writes(since=mark) == []
    assert double.status["lastCheck"] == first
    clock.advance(4 * 3600)  # 24 h after the first check
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    assert double.writes(since=mark) == ["devices_SetProperty"]
    assert double.status["lastCheck"] > first
    assert_script_shape(double.status)


async def test_heartbeat_off(nexigon_hub_double: NexigonDouble, sim: SimWorld) -> None:
    """telemetry.heartbeat = 0: no lastCheck on the hub and no write in idle passes, ever."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    assert (await run(double, sim, "socket", clock, telemetry={"heartbeat": "0"})).result is Result.UP_TO_DATE
    mark = double.mark()
    for _ in range(4):
        clock.advance(DAY)
        assert (await run(double, sim, "socket", clock, telemetry={"heartbeat": "0"})).result is Result.UP_TO_DATE
    assert double.writes(since=mark) == []
    assert "lastCheck" not in double.status


def test_heartbeat_setting_is_checked(sim: SimWorld, nexigon_hub_double: NexigonDouble) -> None:
    """A bad telemetry.heartbeat is a configuration error naming the key."""
    from ota_daemon.errors import ConfigError

    with pytest.raises(ConfigError, match=r"telemetry\.heartbeat"):
        config(nexigon_hub_double, sim, "socket", telemetry={"heartbeat": "soon"})
    assert config(nexigon_hub_double, sim, "socket").telemetry.heartbeat == DAY
