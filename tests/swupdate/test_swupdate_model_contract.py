"""The device simulator's SWUpdate model against the real SWUpdate and U-Boot environment
tools: the same scripts, the same observable slot state (``tests/devsim/contract.py``).
Needs root (skips with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota_daemon.installers.swupdate import SwupdateInstaller
from tests.devsim import contract
from tests.devsim.contract import SCRIPTS, ModelSubject
from tests.swupdate.swupdate_harness import SwupdateDevice


class RealSwupdate:
    def __init__(self, device: SwupdateDevice) -> None:
        self.device = device
        self.installer: SwupdateInstaller = device.installer()

    def image(self, version: str, *, refused: bool = False) -> Path:
        return self.device.make_swu(version, hardware="9.9" if refused else "1.0", name=f"{version}{'-refused' if refused else ''}.swu")

    def bundle_hash(self, path: Path, *, refused: bool = False) -> str | None:
        return None

    async def power_cycle(self, *, boot_fails: bool = False) -> None:
        self.device.reboot(boot_fails=boot_fails)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
async def test_swupdate_model_matches_real_swupdate(script: str, swupdate_device: SwupdateDevice, tmp_path: Path) -> None:
    real, model = await contract.run_both(script, RealSwupdate(swupdate_device), ModelSubject("swupdate", tmp_path / "model"))
    assert model == real
