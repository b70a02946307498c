"""Convergence after cuts the journal alone cannot see, on the simulated try-once device
(issue 12, defects 4 and 5; the real-RAUC ones are in tests/rauc/test_rauc_convergence.py)."""

from __future__ import annotations

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import Result
from ota_daemon.installers.simulated import SimulatedInstaller
from ota_daemon.state import Journal
from ota_daemon.testing import SimWorld
from tests.conftest import make_config
from tests.test_engine_cycle import kinds, run_pass


class Cut(BaseException):
    """The power goes off (a BaseException, like the seam's PowerCut)."""


async def test_cut_between_reboot_request_and_arming_rearms(world: SimWorld, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal says the reboot was requested, but the power went off before the try-boot
    was armed: the old slot comes back. That is no rollback and quarantines nothing: the pass
    arms the try-boot again and reboots, and the update completes."""
    world.publish("1.1.0")

    async def power_off(self: SimulatedInstaller, *, spare: bool) -> None:
        raise Cut

    monkeypatch.setattr(SimulatedInstaller, "reboot", power_off)
    with pytest.raises(Cut):
        await run_pass(world, clock)
    monkeypatch.undo()
    assert Journal(world.state_dir).load().attempt.reboot_requested  # type: ignore[union-attr]
    world.device.boot()  # the power comes back: nothing was armed, the old slot boots
    again = await run_pass(world, clock)
    assert again.result is Result.REBOOTING, again
    done = await run_pass(world, clock)
    assert done.result is Result.COMPLETED, done
    assert "rollback" not in kinds(world) and kinds(world).count("completed") == 1
    assert not Journal(world.state_dir).load().quarantine


async def test_local_image_without_a_readable_version_commits(world: SimWorld, clock: FakeClock) -> None:
    """``ota-daemon install FILE`` of an image whose version nobody can read and no
    --image-version: the commit does not hinge on the placeholder version."""
    image = world.root / "raw.img"
    image.write_bytes(b"raw image without a header\n" * 1000)
    config = make_config(world)
    async with open_engine(config, clock=clock) as engine:
        first = await engine.install_local(str(image))
    assert first.result is Result.REBOOTING and first.target_version is not None and first.target_version.startswith("local-")
    async with open_engine(config, clock=clock) as engine:
        done = await engine.reconcile()
    assert done.result is Result.COMPLETED, done
    info = world.device.info()
    assert info.booted == "b" and info.committed


async def test_local_image_version_from_the_image_wins_and_must_agree(world: SimWorld, clock: FakeClock) -> None:
    """The image's own version is taken; a contradicting --image-version is refused before
    anything is written."""
    image = world.image("1.2.0")
    config = make_config(world)
    async with open_engine(config, clock=clock) as engine:
        with pytest.raises(Exception, match=r"the image says version 1\.2\.0"):
            await engine.install_local(str(image), version="9.9")
        assert world.device.slot_path("b").read_bytes() == b""
        first = await engine.install_local(str(image))
    assert first.target_version == "1.2.0"
