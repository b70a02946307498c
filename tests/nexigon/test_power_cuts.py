"""A power cut around each write of the Nexigon hub (``hub.device-id``, ``hub.details-cache``
effects of the side-effect seam), in-process, in a whole update against the agent double.

After the cut the device power-cycles and passes go on: 1.1.0 committed, its ending reported
once, no second install, the hub's files readable (or absent) and no temporary file left.
``tests/test_cut_points.py`` counts these points as reached here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ota_daemon import effects
from ota_daemon.clock import FakeClock
from ota_daemon.engine import Result
from ota_daemon.testing import SimWorld

from .double.fixture import NexigonDouble
from .test_nexigon_engine import release, run

NEXIGON_POINTS = [p for p in effects.cut_points() if p.split(":", 1)[1] in ("hub.device-id", "hub.details-cache")]


@pytest.mark.parametrize("point", NEXIGON_POINTS)
async def test_power_cut_around_the_nexigon_hubs_files(nexigon_hub_double: NexigonDouble, tmp_path: Path, point: str) -> None:
    double, clock = nexigon_hub_double, FakeClock()
    sim = SimWorld(tmp_path / "world", system="sim-device")
    sim.create_device("1.0.0")
    release(double, sim, "1.0.0")
    release(double, sim, "1.1.0")
    cut = effects.CutOnce(point)
    results = []
    with effects.hooked(cut):
        for _ in range(8):
            try:
                result = await run(double, sim, "socket", clock)
            except effects.PowerCut:
                effects.power_on()
                sim.device.boot()  # the power comes back: the bootloader decides
                clock.advance(60)
                continue
            results.append(result.result)
            clock.advance(60)
            if result.result is Result.UP_TO_DATE:
                break
    assert cut.fired, (point, sorted(set(cut.reached)))
    info = sim.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0", (point, info, results)
    events = [json.loads(line) for line in (sim.state_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["attributes"]["event"] for e in events]
    assert kinds.count("completed") == 1 and "installing" not in kinds[kinds.index("completed") :], (point, kinds)
    assert double.status["state"] == "completed" and double.status["currentVersion"] == "1.1.0", double.status
    leftovers = [p.name for p in sim.state_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, (point, leftovers)
    for file in sim.state_dir.rglob("*.json"):
        json.loads(file.read_text())  # whole, or absent
