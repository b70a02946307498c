"""The device simulator's RAUC model against the real RAUC: the same scripts, the same
observable slot state (``tests/devsim/contract.py``). Needs root (skips with the reason)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.errors import InstallerError
from ota_daemon.model import FileSource
from tests.devsim import contract
from tests.devsim.contract import SCRIPTS, ModelSubject
from tests.rauc.conftest import RaucDevice


class RealRauc:
    def __init__(self, device: RaucDevice, installer: Any) -> None:
        self.device = device
        self.installer = installer

    def image(self, version: str, *, refused: bool = False) -> Path:
        return self.device.build_bundle(version, compatible="other-board" if refused else None)

    def bundle_hash(self, path: Path, *, refused: bool = False) -> str | None:
        return None

    async def cut_install(self, version: str) -> None:
        """RAUC wrote the slot and hangs before ``set-primary``: the power goes (SIGKILL)."""
        bundle = self.image(version)
        self.device.hang_bootloader("set-primary")
        task = asyncio.ensure_future(self.installer.install(FileSource(bundle), version=version))
        await self.device.wait_bootloader_hanging()
        self.device.crash_service()
        # the power cut takes the bootloader tool RAUC was running with it
        for pid in _processes_running(self.device.bootloader):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.device.release_bootloader()
        with contextlib.suppress(InstallerError):
            await task

    async def mark_bad_booted_alone(self) -> None:
        """What ``ota-daemon-guard`` runs before its reboot: ``rauc status mark-bad booted``."""
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.device.bus_address}
        proc = await asyncio.create_subprocess_exec("rauc", "status", "mark-bad", "booted", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

    async def power_cycle(self, *, boot_fails: bool = False) -> None:
        await self.device.reboot(boot_fails=boot_fails)


def _processes_running(script: Path) -> list[int]:
    """Processes (started by this test's RAUC) whose command line runs ``script``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(script).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("script", sorted(SCRIPTS))
async def test_rauc_model_matches_real_rauc(script: str, rauc_device: RaucDevice, rauc_installer: Any, tmp_path: Path) -> None:
    real, model = await contract.run_both(script, RealRauc(rauc_device, rauc_installer), ModelSubject("rauc", tmp_path / "model", system=rauc_device.compatible))
    assert model == real
