"""Fixtures for the SWUpdate backend tests (helpers live in ``swupdate_harness.py``).

``swupdate_device``: a fresh file-backed device (slot files, U-Boot env file, simulated U-Boot)
booted from slot A running 1.0.0, with ``.config`` (``installer.kind = "swupdate"``),
``.make_swu(version)``, ``.installer()`` and ``.reboot()``. Skips when not root or a tool is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from swupdate_harness import Pki, SwupdateDevice, make_pki, probe_namespace, require_swupdate  # noqa: E402


@pytest.fixture(scope="session")
def swupdate_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, signer and a rogue signer (another CA), made once per session."""
    require_swupdate()
    return make_pki(tmp_path_factory.mktemp("swu-pki"))


@pytest.fixture(scope="session")
def swupdate_namespace_ok(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Probe once: the namespace wrapper shows a private /etc/fw_env.config and leaves the host's alone."""
    require_swupdate()
    host_had = Path("/etc/fw_env.config").exists()
    reason = probe_namespace(tmp_path_factory.mktemp("swu-ns-probe"))
    if reason:
        pytest.skip(reason)
    assert Path("/etc/fw_env.config").exists() == host_had, "the namespace wrapper leaked into the host's /etc"


@pytest.fixture
def swupdate_device(tmp_path: Path, swupdate_pki: Pki, swupdate_namespace_ok: None) -> Iterator[SwupdateDevice]:
    """A fresh device booted from slot A running 1.0.0; ``.config`` has installer.kind = "swupdate".

    Use ``device.make_swu(version)`` for a signed image, ``device.installer()`` for the backend,
    and ``device.reboot()`` to apply the simulated bootloader's decision after the installer's
    ``reboot()`` (whose command only drops ``device.reboot_marker``).
    """
    host_had = Path("/etc/fw_env.config").exists()
    yield SwupdateDevice.create(tmp_path / "device", swupdate_pki)
    assert Path("/etc/fw_env.config").exists() == host_had, "a test touched the host's /etc/fw_env.config"
