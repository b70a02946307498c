"""hypothesis stateful testing of the device simulator: random rule sequences that shrink.

Rules publish releases of every kind (good; corrupt; refused by the installer; failing the
health gate; dying in the trial boot; a daemon that never starts; built for another system),
move the tag back and forth, cut power at any enumerated cut point, reboot, run the guard (and
cut power while it acts) and
passes; and the field's rules (issue 13): clock jumps both ways and a boot at 1970, hub
outages longer than a day, refused hub writes, images that 404 and then appear, changes of the
hub's config property, a nearly full disk. After every step the world's invariants must hold;
at the end the faults stop and the device must converge.

The budget is fixed and derandomized (same examples every run): ``max_examples`` per installer
below; ``DEVSIM_EXAMPLES`` raises it for a longer local run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ota_daemon.devsim.models import BrickedError
from ota_daemon.devsim.rules import CLOCK_JUMPS, GUARD_POINTS, HUB_CONFIGS, Driver, cut_points
from ota_daemon.devsim.world import RELEASE_KINDS, World

EXAMPLES = int(os.environ.get("DEVSIM_EXAMPLES", "30"))
STEPS = int(os.environ.get("DEVSIM_STEPS", "20"))

#: violations of defects the simulator found in the engine and that are being fixed elsewhere,
#: by installer kind: tolerated until the fixes land, so the machine keeps exploring everything
#: else (issue 12's defects 1-4, found here first, are fixed and left this list). Each entry
#: names its defect. ``STATUS_LAG``: a cut between the
#: status write (``installing``) and the journal transition that follows it, then the hub
#: away: the status says ``installing`` while the journal is idle until a pass gets past the
#: hub (found by the exploration; reported).
STATUS_LAG = ("status ahead of the journal", r"status says \w+ while the journal is idle")
KNOWN: dict[str, list[tuple[str, str]]] = {kind: [] for kind in ("rauc", "rugix", "simulated", "swupdate")}


def _scratch() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="devsim-", dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None))


class DeviceMachine(RuleBasedStateMachine):
    kind: ClassVar[str] = "simulated"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = _scratch()
        self.world = World(self.dir / "world", self.kind)
        self.driver = Driver(self.world)
        self.transcript: list[str] = []

    def step(self, coro: object) -> None:
        try:
            line = self.loop.run_until_complete(coro)  # type: ignore[arg-type]
        except BrickedError as exc:
            line = f"bricked: {exc}"
        self.transcript.append(str(line))

    def unexpected(self) -> list[str]:
        known = KNOWN.get(self.kind, [])
        return [v for v in self.world.violations if not any(re.search(pattern, v) for _, pattern in known)]

    @initialize()
    def start(self) -> None:
        self.step(self.driver.run())

    @rule(kind=st.sampled_from(RELEASE_KINDS), passes=st.integers(0, 3))
    def publish(self, kind: str, passes: int) -> None:
        """A release, then as many passes as the device gets before anything else happens."""
        self.step(self.driver.publish(kind))
        for _ in range(passes):
            self.step(self.driver.run())

    @rule(index=st.integers(0, 30))
    def tag(self, index: int) -> None:
        self.step(self.driver.tag(index))

    @rule(passes=st.integers(1, 3))
    def run_passes(self, passes: int) -> None:
        for _ in range(passes):
            self.step(self.driver.run())

    @rule(point=st.sampled_from(sorted({p for k in ("rauc", "rugix") for p in cut_points(k)})))
    def cut(self, point: str) -> None:
        self.step(self.driver.cut(point))

    @rule(point=st.sampled_from(sorted({p for k in ("rauc", "rugix") for p in cut_points(k)})))
    def crash(self, point: str) -> None:
        self.step(self.driver.crash(point))

    @rule(on=st.booleans())
    def stream(self, on: bool) -> None:
        self.step(self.driver.stream(on))

    @rule()
    def reboot(self) -> None:
        self.step(self.driver.reboot())

    @rule()
    def guard(self) -> None:
        self.step(self.driver.guard())

    @rule(point=st.sampled_from(GUARD_POINTS))
    def guard_cut(self, point: str) -> None:
        self.step(self.driver.guard_cut(point))

    @rule(seconds=st.sampled_from(CLOCK_JUMPS))
    def clock_jump(self, seconds: float) -> None:
        self.step(self.driver.clock_jump(seconds))

    @rule()
    def boot_at_1970(self) -> None:
        self.step(self.driver.boot_at_1970())

    @rule(hours=st.sampled_from((26.0, 50.0)))
    def outage(self, hours: float) -> None:
        self.step(self.driver.outage(hours))

    @rule(on=st.booleans())
    def refuse_writes(self, on: bool) -> None:
        self.step(self.driver.refuse_writes(on))

    @rule()
    def hide_asset(self) -> None:
        self.step(self.driver.hide_asset())

    @rule()
    def show_assets(self) -> None:
        self.step(self.driver.show_assets())

    @rule(index=st.integers(0, len(HUB_CONFIGS) - 1))
    def hub_config(self, index: int) -> None:
        self.step(self.driver.hub_config(index))

    @rule(full=st.booleans())
    def disk(self, full: bool) -> None:
        self.step(self.driver.disk(full))

    @invariant()
    def holds(self) -> None:
        self.world.check_invariants()
        assert not self.unexpected(), self.report()

    def report(self) -> str:
        lines = "\n".join(f"  {i:3d}. {line}" for i, line in enumerate(self.transcript, 1))
        return f"{self.kind}: {self.unexpected()}\n{lines}"

    def teardown(self) -> None:
        try:
            if not self.unexpected():
                self.loop.run_until_complete(self.world.converge())
            assert not self.unexpected(), self.report()
        finally:
            self.loop.run_until_complete(self.world.aclose())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def _machine(kind: str) -> type[DeviceMachine]:
    return type(f"DeviceMachine_{kind}", (DeviceMachine,), {"kind": kind})


@pytest.mark.parametrize("kind", ["rauc", "rugix", "simulated", "swupdate"])
def test_device_keeps_its_invariants(kind: str) -> None:
    machine = _machine(kind)
    machine.TestCase.settings = SETTINGS
    machine.TestCase().runTest()
