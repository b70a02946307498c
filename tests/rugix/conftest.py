"""Fixtures for the Rugix backend tests (helpers live in ``rugix_harness.py``).

``rugix_device``: a fresh emulated device plus a Config (``installer.kind = "rugix"``) pointing
at its ``rugix-ctrl`` double, and ``reboot()``. ``make_rugix_device(...)``: more of them.
``bundle_server``: a real loopback HTTP server for bundles.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import rugix_ctrl_double as double  # noqa: E402
from rugix_harness import BundleServer, MakeRugixDevice, RugixDevice, write_wrapper  # noqa: E402

from ota_daemon.config import build_config  # noqa: E402


@pytest.fixture
def make_rugix_device(tmp_path: Path) -> Iterator[MakeRugixDevice]:
    """Build emulated devices: ``make_rugix_device(name=..., version=..., dialect=..., on_reboot=..., rugix={...})``."""
    count = 0

    def make(
        *,
        name: str = "rugix-double",
        version: str = "1.0.0",
        dialect: str = "1.x",
        on_reboot: str = "record",
        rugix: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> RugixDevice:
        nonlocal count
        count += 1
        root = tmp_path / f"rugix-device-{count}"
        state_dir = root / "device"
        double.init_device(state_dir, name=name, version=version, dialect=dialect, on_reboot=on_reboot)
        wrapper = write_wrapper(root / "bin" / "rugix-ctrl", state_dir)
        data: dict[str, Any] = {
            "system": {"build_info": str(state_dir / "system-build-info.json")},
            "state": {"dir": str(root / "state")},
            "installer": {
                "kind": "rugix",
                "rugix": {
                    "bin": str(wrapper),
                    "boot_id_file": str(state_dir / "boot_id"),
                    "dialect": dialect,
                    **(rugix or {}),
                },
            },
            **(extra or {}),
        }
        config = build_config(data, source="test", env={})
        return RugixDevice(dir=state_dir, bin=wrapper, config=config, name=name, data=data)

    yield make


@pytest.fixture
def rugix_device(make_rugix_device: MakeRugixDevice) -> RugixDevice:
    """A fresh emulated Rugix device (1.x, group ``a`` committed, running 1.0.0)."""
    return make_rugix_device()


@pytest.fixture
def bundle_server() -> Iterator[BundleServer]:
    """A loopback HTTP server the double (and the backend's URL installs) fetch from."""
    server = BundleServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
