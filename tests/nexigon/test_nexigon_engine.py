"""Whole update cycles with hub.kind = "nexigon" against the agent double, over the agent
socket and over the agent CLI: the script's status shape, events, and its weaknesses gone."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import PassResult, Result
from ota_daemon.errors import TransientError
from ota_daemon.installers.simulated import make_image
from ota_daemon.testing import SimWorld

from .double.fixture import NexigonDouble

SCRIPT_FIELDS = {"state", "currentVersion", "targetVersion", "failureCount", "lastError", "config"}
APP_CHECK = {"deadline": "5s", "checks": [{"kind": "command", "name": "app", "command": [sys.executable, "-c", "pass"]}]}


@pytest.fixture
def sim(tmp_path: Path) -> SimWorld:
    world = SimWorld(tmp_path / "world", system="sim-device")
    world.create_device("1.0.0")
    return world


def release(double: NexigonDouble, sim: SimWorld, version: str, size: int = 300_000) -> Any:
    return double.publish_release(version, image=make_image(sim.system, version, bytes(size)), ext="img", system=sim.system)


def config(double: NexigonDouble, sim: SimWorld, transport: str, **overrides: Any) -> Any:
    tables = sim.tables(hub=double.hub_config(transport), **overrides)
    return build_config(tables, source="test", env={})


async def run(double: NexigonDouble, sim: SimWorld, transport: str, clock: FakeClock, **overrides: Any) -> PassResult:
    async with open_engine(config(double, sim, transport, **overrides), clock=clock) as engine:
        return await engine.reconcile()


async def test_full_cycle_script_shape(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """The demo cycle against the double: the status property ends with the script's shape and
    state completed; events have category ota and, over the socket, well-formed dated ids."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    release(double, sim, "1.1.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.REBOOTING
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.COMPLETED
    status = double.status
    assert set(status) >= SCRIPT_FIELDS
    assert status["state"] == "completed" and status["currentVersion"] == "1.1.0"
    assert status["targetVersion"] is None and status["failureCount"] == 0 and status["lastError"] is None
    assert status["config"]["path"] == double.path()
    bodies = [e["body"] for e in double.events]
    assert "installing update" in bodies and "update completed" in bodies
    assert bodies.index("update installed, rebooting") < bodies.index("update completed")
    assert all(e.get("category") == "ota" for e in double.events)
    if nexigon_transport == "socket":
        assert all(re.fullmatch(r"d_ev_\d{8}-\d{4}-[1-9A-HJ-NP-Za-km-z]{8}", e["eventId"]) for e in double.events)
    failures = [e for e in double.events if e["severity"] == "Error"]
    assert failures == []


async def test_idle_pass_costs(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """A pass with nothing to do: at most 2 hub actions over the socket (2 agent runs over the
    CLI) and no write; the script needed 7 runs, 15 actions and 4 writes."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    mark = double.mark()
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    if nexigon_transport == "socket":
        assert len(double.action_names(via="socket", since=mark)) <= 2
        assert double.invocations(since=mark) == []
    else:
        assert len(double.invocations(since=mark)) <= 2
    assert double.writes(since=mark) == []


async def test_socket_gone_mid_run_falls_back_to_cli(nexigon_hub_double: NexigonDouble, sim: SimWorld) -> None:
    """The agent's socket disappears between install and commit: the CLI carries on."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.1.0")
    assert (await run(double, sim, "socket", clock)).result is Result.REBOOTING
    mark = double.mark()
    double.agent_down()
    result = await run(double, sim, "socket", clock, health=APP_CHECK)
    assert result.result is Result.COMPLETED
    assert double.invocations(since=mark), "the CLI was used"
    assert double.status["state"] == "completed"


async def test_hub_away_events_spooled_then_in_order(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """With the hub unreachable the commit still happens (the gate checks the app); its events
    wait on disk and reach the hub in order once it is back; the next check backs off meanwhile."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.1.0")
    assert (await run(double, sim, nexigon_transport, clock, health=APP_CHECK)).result is Result.REBOOTING
    double.hub_offline()
    assert (await run(double, sim, nexigon_transport, clock, health=APP_CHECK)).result is Result.COMPLETED
    assert "update completed" not in [e["body"] for e in double.events]
    with pytest.raises(TransientError):
        await run(double, sim, nexigon_transport, clock, health=APP_CHECK)
    double.hub_online()
    assert (await run(double, sim, nexigon_transport, clock, health=APP_CHECK)).result is Result.UP_TO_DATE
    bodies = [e["body"] for e in double.events]
    assert bodies.index("committing system") < bodies.index("update completed")
    assert bodies.count("update completed") == 1
    assert double.status["state"] == "completed"


async def test_tag_moved_mid_pass_installs_pinned(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """The tag moves between resolve and download: the pinned version is installed and reported."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.1.0")
    async with open_engine(config(double, sim, nexigon_transport), clock=clock) as engine:
        original = engine.hub.issue_url

        async def moving(document: Any, asset: Any) -> str:
            if asset.filename.endswith(".img"):
                release(double, sim, "1.2.0")
            return await original(document, asset)

        engine.hub.issue_url = moving  # type: ignore[method-assign]
        result = await engine.reconcile()
    assert result.result is Result.REBOOTING and result.target_version == "1.1.0"
    assert sim.device.slot_path("b").read_bytes() == make_image(sim.system, "1.1.0", bytes(300_000))
    assert double.status["targetVersion"] == "1.1.0"


async def test_expired_url_is_reissued(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """An issued URL that expires mid-download is issued again; the download goes on."""
    double, clock = nexigon_hub_double, FakeClock()
    rel = release(double, sim, "1.1.0", size=2_000_000)
    double.set_url_max_uses(1)
    double.truncate_next_download(at=500_000)
    result = await run(double, sim, nexigon_transport, clock)
    assert result.result is Result.REBOOTING, result.message
    assert sim.device.slot_path("b").read_bytes() == rel.image


async def test_malformed_config_property(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """A config property that is not an object is ignored with a warning event; the local path stays."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    double.set_config(["not", "an", "object"])
    assert (await run(double, sim, nexigon_transport, clock)).result is Result.UP_TO_DATE
    warnings = [e for e in double.events if e["severity"] == "Warning"]
    assert any("expected a JSON object" in str(e["attributes"].get("message")) for e in warnings)
    # a good property moves the device to another tag
    beta = double.publish_release("1.2.0", image=make_image(sim.system, "1.2.0", bytes(1000)), ext="img", system=sim.system, tags=("beta",))
    double.set_config({"path": double.path("beta")})
    result = await run(double, sim, nexigon_transport, clock)
    assert result.result is Result.REBOOTING and result.target_version == beta.version
    assert double.status["config"]["path"] == double.path("beta")


async def test_status_written_only_on_change(nexigon_hub_double: NexigonDouble, nexigon_transport: str, sim: SimWorld) -> None:
    """Repeated passes with nothing new write the status property once."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    mark = double.mark()
    for _ in range(3):
        await run(double, sim, nexigon_transport, clock)
    assert double.writes(since=mark).count("devices_SetProperty") == 1


async def test_local_install_with_the_nexigon_hub(nexigon_hub_double: NexigonDouble, sim: SimWorld) -> None:
    """`ota-daemon install FILE` on a Nexigon device: the file is installed (no URL is asked of
    the hub for it) and the hub hears about it."""
    double, clock = nexigon_hub_double, FakeClock()
    release(double, sim, "1.0.0")
    image = sim.image("2.0.0")
    async with open_engine(config(double, sim, "socket", health=APP_CHECK), clock=clock) as engine:
        result = await engine.install_local(str(image))
    assert result.result is Result.REBOOTING, result.message
    async with open_engine(config(double, sim, "socket", health=APP_CHECK), clock=clock) as engine:
        assert (await engine.commit_now()).result is Result.COMPLETED
    assert sim.device.info().version_of(sim.device.info().booted) == "2.0.0"
    assert double.status["currentVersion"] == "2.0.0" and double.status["state"] == "completed"
