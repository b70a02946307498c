"""The engine's whole cycle on the real RAUC: install, reboot, commit; then a health-gate rollback."""

from __future__ import annotations

from typing import Any

from ota_daemon.installers import get_installer
from tests.backend_cycle import BackendCycle


async def test_engine_cycle_on_rauc(rauc_device: Any) -> None:
    """check -> install via D-Bus -> reboot -> health gate -> mark-good; then a failing gate marks the
    new slot bad, the old one boots again, and the version is quarantined."""

    async def running() -> str:
        installer = get_installer("rauc", config=rauc_device.config)
        try:
            info = await installer.slot_info()
        finally:
            await installer.aclose()
        return str(info.version_of(info.booted))

    cycle = BackendCycle(
        root=rauc_device.root,
        device_tables=rauc_device.config_data(),
        system="otatest",
        ext="raucb",
        build=lambda version: rauc_device.build_bundle(version),
        reboot=rauc_device.reboot_if_requested,
    )
    await cycle.full_cycle_and_rollback(running)
