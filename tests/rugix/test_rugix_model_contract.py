"""The device simulator's Rugix model against the rugix-ctrl double (itself pinned to Rugix's
sources by ``test_rugix_double_contract.py``): the same scripts, the same observable slot
state (``tests/devsim/contract.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import rugix_ctrl_double as double

from ota_daemon.installers.rugix import RugixInstaller
from tests.devsim import contract
from tests.devsim.contract import SCRIPTS, ModelSubject
from tests.rugix.rugix_harness import RugixDevice


class RealRugix:
    def __init__(self, device: RugixDevice) -> None:
        self.device = device
        self.installer: RugixInstaller = device.installer(use_bundle_hash=True)

    def image(self, version: str, *, refused: bool = False) -> Path:
        return self.device.build_bundle(version)

    def bundle_hash(self, path: Path, *, refused: bool = False) -> str | None:
        data = path.read_bytes()
        # a refused bundle: its hash does not match the one the hub published
        return str(double.bundle_hash(data + b"tampered" if refused else data))

    async def power_cycle(self, *, boot_fails: bool = False) -> None:
        self.device.reboot(fail_try=boot_fails)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
async def test_rugix_model_matches_the_rugix_double(script: str, rugix_device: RugixDevice, tmp_path: Path) -> None:
    real, model = await contract.run_both(script, RealRugix(rugix_device), ModelSubject("rugix", tmp_path / "model"))
    assert model == real
