"""The engine's whole cycle on the rugix-ctrl double, in each hand-off mode."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend_cycle import BackendCycle


@pytest.mark.parametrize("mode", ["file", "stream", "url"])
async def test_engine_cycle_on_rugix(make_rugix_device: Any, mode: str) -> None:
    """install --reboot no -> system reboot --spare -> health gate -> system commit; then a failing
    gate reboots into the default group and the version is quarantined."""
    device = make_rugix_device(rugix={"insecure_skip_bundle_verification": True})
    tables = device.config_data()
    tables["download"] = {"mode": mode}

    async def running() -> str:
        return str(device.build_info()["release"]["version"])

    cycle = BackendCycle(
        root=device.root,
        device_tables=tables,
        system=device.name,
        ext="rugixb",
        build=lambda version: device.build_bundle(version),
        reboot=device.reboot_if_requested,
    )
    await cycle.full_cycle_and_rollback(running)
