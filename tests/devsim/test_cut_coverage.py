"""Every enumerated cut point is reached by some scenario of the simulator.

The cut points are enumerated from the code (:func:`ota_daemon.devsim.rules.cut_points`:
journal transitions from ``state.TRANSITIONS``, each installer call, the tools' own write and
arm steps, hub writes). A new side effect, or a new journal edge, that no scenario below
reaches fails this test: add a scenario that reaches it (and so gets cut there by
``test_scenarios.py``'s sweep and the stateful machine).
"""

from __future__ import annotations

from collections import Counter

import pytest

from ota_daemon.devsim.rules import GUARD_POINTS, HTTP_ONLY, Driver, cut_points, guard_points
from ota_daemon.devsim.world import World, scratch_dir
from tests.devsim.conftest import KINDS

#: scripted scenarios, as (step, argument) lists for :class:`Driver`
SCENARIOS: dict[str, list[tuple[str, dict[str, object]]]] = {
    "good update": [("publish", {"kind": "good"}), ("run", {}), ("run", {}), ("run", {})],
    "refused": [("publish", {"kind": "refused"}), ("run", {}), ("run", {})],
    "corrupt": [("publish", {"kind": "corrupt"}), ("run", {})],
    "trial dies": [("publish", {"kind": "dies"}), ("run", {}), ("run", {})],
    "gate fails": [("publish", {"kind": "gate-fails"}), ("run", {}), ("run", {}), ("run", {})],
    "daemon never starts": [("publish", {"kind": "no-daemon"}), ("run", {}), ("guard", {}), ("run", {})],
    "cut in the trial's gate": [("publish", {"kind": "good"}), ("run", {}), ("cut", {"point": "journal:rebooting->committing"}), ("run", {}), ("run", {})],
    "gate cut twice": [
        ("publish", {"kind": "good"}), ("run", {}),
        ("cut", {"point": "installer:commit:before"}), ("reboot", {}), ("run", {}), ("run", {}),
    ],
    "cut mid-download": [("publish", {"kind": "good"}), ("cut", {"point": "journal:idle->downloading"}), ("run", {}), ("run", {})],
    "cut mid-install": [("publish", {"kind": "good"}), ("cut", {"point": "model:install:writing"}), ("run", {}), ("run", {}), ("run", {})],
    "hub away, writes refused": [("refuse_writes", {"on": True}), ("publish", {"kind": "good"}), ("outage", {"hours": 26.0}), ("refuse_writes", {"on": False}), ("run", {}), ("run", {})],
    "late asset": [("publish", {"kind": "good"}), ("hide_asset", {}), ("run", {}), ("show_assets", {}), ("run", {}), ("run", {})],
    "disk nearly full": [("disk", {"full": True}), ("publish", {"kind": "good"}), ("run", {}), ("disk", {"full": False}), ("run", {}), ("run", {})],
    "manual reboot": [("hub_config", {"index": 2}), ("publish", {"kind": "good"}), ("run", {}), ("run", {}), ("reboot", {}), ("run", {})],
    "manual, then immediate": [("hub_config", {"index": 2}), ("publish", {"kind": "good"}), ("run", {}), ("hub_config", {"index": 0}), ("run", {}), ("run", {})],
    "daemon crash in the gate": [("publish", {"kind": "good"}), ("run", {}), ("crash", {"point": "journal:rebooting->committing"}), ("run", {})],
    "stream install": [("stream", {"on": True}), ("publish", {"kind": "good"}), ("run", {}), ("run", {})],
}


@pytest.mark.parametrize("kind", KINDS)
async def test_every_cut_point_is_reached_by_a_scenario(kind: str) -> None:
    reached: Counter[str] = Counter()
    for steps in SCENARIOS.values():
        with scratch_dir() as root:
            world = World(root / "w", kind)
            driver = Driver(world)
            try:
                for name, args in steps:
                    await getattr(driver, name)(**args)
            finally:
                await world.aclose()
            reached.update(world.reached)
    missing = [point for point in cut_points(kind) if not reached[point]]
    assert not missing, f"cut points no scenario reaches on {kind}: {missing}"


@pytest.mark.parametrize("kind", KINDS)
async def test_http_and_guard_cut_points_are_reached(kind: str) -> None:
    """The points only an HTTP world reaches (the downloader's files, the hub's ETag cache) and
    the guard's own, which the exploration cuts with its ``guard_cut`` rule."""
    reached: Counter[str] = Counter()
    with scratch_dir() as root:
        world = World(root / "w", kind, http=True)
        driver = Driver(world)
        try:
            for name, args in [*SCENARIOS["good update"], *SCENARIOS["corrupt"]]:
                await getattr(driver, name)(**args)
        finally:
            await world.aclose()
        reached.update(world.reached)
    http_only = [point for point in cut_points(kind, http=True) if point.split(":", 1)[1] in HTTP_ONLY]
    missing = [point for point in http_only if not reached[point]]
    assert http_only
    assert not missing, f"cut points no HTTP scenario reaches on {kind}: {missing}"
    assert set(guard_points("rauc")) == set(GUARD_POINTS)  # the RAUC world reaches every guard point
    for point in guard_points(kind):
        with scratch_dir() as root:
            world = World(root / "w", kind)
            driver = Driver(world)
            try:
                await driver.publish("no-daemon")
                await driver.run()
                line = await driver.guard_cut(point)
                assert "not reached" not in line, line
                assert world.violations == []
            finally:
                await world.aclose()
