"""The engine's whole cycle on the real SWUpdate, in file and stream mode."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.backend_cycle import BackendCycle


@pytest.mark.parametrize("mode", ["file", "stream"])
async def test_engine_cycle_on_swupdate(swupdate_device: Any, mode: str) -> None:
    """swupdate -i -> reboot (U-Boot try once) -> health gate -> fw_setenv ustate=0; then a failing
    gate sets the old rootpart back, the old slot boots, and the version is quarantined."""
    tables = swupdate_device.config_dict()
    tables["download"] = {"mode": mode}

    async def reboot() -> None:
        if swupdate_device.reboot_requested:
            swupdate_device.reboot()

    async def running() -> str:
        return str(json.loads(swupdate_device.build_info.read_text())["release"]["version"])

    cycle = BackendCycle(
        root=swupdate_device.dir,
        device_tables=tables,
        system=tables["system"]["name"],
        ext="swu",
        build=lambda version: swupdate_device.make_swu(version),
        reboot=reboot,
    )
    await cycle.full_cycle_and_rollback(running)
