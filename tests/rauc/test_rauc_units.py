"""The RAUC backend's configuration, construction and failures that need no RAUC service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.errors import ConfigError, InstallerError
from ota_daemon.installers import get_installer
from ota_daemon.installers.base import Installer
from ota_daemon.installers.rauc import RaucInstaller
from ota_daemon.model import SourceKind, StreamSource


def test_rauc_config_defaults() -> None:
    """Without settings the backend talks to the system bus, reboots with systemctl and
    reads the kernel's boot id."""
    rauc = build_config({"installer": {"kind": "rauc"}}, source="test", env={}).installer.rauc
    assert rauc.bus == "system"
    assert rauc.reboot_command == ["systemctl", "reboot"]
    assert rauc.boot_id_file == Path("/proc/sys/kernel/random/boot_id")
    assert rauc.call_timeout == 60.0
    assert rauc.busy_timeout == 3600.0


@pytest.mark.parametrize("bus", ["system", "session", "unix:path=/run/x/bus", "tcp:host=127.0.0.1,port=5555"])
def test_rauc_config_accepts_bus_kinds_and_addresses(bus: str) -> None:
    """installer.rauc.bus takes 'system', 'session' or a D-Bus address."""
    config = build_config({"installer": {"kind": "rauc", "rauc": {"bus": bus}}}, source="test", env={})
    assert config.installer.rauc.bus == bus


@pytest.mark.parametrize(
    ("rauc", "key"),
    [({"bus": "systembus"}, "installer.rauc.bus"), ({"reboot_command": []}, "installer.rauc.reboot_command")],
)
def test_rauc_config_rejects_bad_values_naming_the_key(rauc: dict[str, object], key: str) -> None:
    """A bad bus or an empty reboot command is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config({"installer": {"kind": "rauc", "rauc": rauc}}, source="test.toml", env={})


async def test_rauc_registry_builds_the_backend_from_config_without_io(tmp_path: Path) -> None:
    """get_installer('rauc') builds a RaucInstaller from the config and connects to nothing
    until first used."""
    config = build_config(
        {"installer": {"kind": "rauc", "rauc": {"bus": "unix:path=/nonexistent/bus", "reboot_command": ["true"],
                                                "boot_id_file": str(tmp_path / "boot_id")}}},
        source="test",
        env={},
    )
    installer = get_installer("rauc", config=config, clock=FakeClock())
    assert isinstance(installer, RaucInstaller)
    assert isinstance(installer, Installer)
    assert (installer.kind, installer.image_ext) == ("rauc", "raucb")
    assert installer.source_kinds == frozenset({SourceKind.FILE, SourceKind.URL})
    assert installer.bus_spec == "unix:path=/nonexistent/bus"
    assert installer.reboot_command == ["true"]
    assert installer.boot_id_file == tmp_path / "boot_id"
    await installer.aclose()


async def test_rauc_missing_bus_is_a_clear_error(tmp_path: Path) -> None:
    """A bus socket that does not exist gives an InstallerError naming the bus address."""
    pytest.importorskip("dbus_fast", reason="dbus-fast is not installed (extra 'rauc')")
    installer = RaucInstaller(bus=f"unix:path={tmp_path}/no.sock")
    with pytest.raises(InstallerError, match=r"cannot connect to the D-Bus bus unix:path=.*/no\.sock") as caught:
        await installer.slot_info()
    assert caught.value.backend == "rauc"
    await installer.aclose()


async def test_rauc_stream_source_is_refused_before_any_bus_traffic(tmp_path: Path) -> None:
    """RAUC has no stdin form: a stream source fails at once, naming the way out."""
    installer = RaucInstaller(bus=f"unix:path={tmp_path}/no.sock")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(InstallerError, match=r"cannot install from a stream.*download\.mode") as caught:
        await installer.install(StreamSource(chunks()))
    assert caught.value.phase == "installing"


async def test_rauc_reboot_runs_the_command_and_reports_its_failure(tmp_path: Path) -> None:
    """reboot() runs the configured command; a non-zero exit is an InstallerError with the
    exit code and the command's output."""
    marker = tmp_path / "rebooted"
    ok = RaucInstaller(reboot_command=["sh", "-c", f"echo yes > '{marker}'"])
    await ok.reboot(spare=True)
    assert marker.read_text() == "yes\n"

    failing = RaucInstaller(reboot_command=["sh", "-c", "echo 'Failed to reboot: access denied' >&2; exit 3"])
    with pytest.raises(InstallerError, match="exited with 3") as caught:
        await failing.reboot(spare=False)
    assert caught.value.phase == "rebooting"
    assert caught.value.returncode == 3
    assert "access denied" in (caught.value.stderr_tail or "")

    missing = RaucInstaller(reboot_command=[str(tmp_path / "no-such-reboot")])
    with pytest.raises(InstallerError, match="not found"):
        await missing.reboot(spare=True)


async def test_rauc_closed_installer_refuses_work() -> None:
    """After aclose() the installer is finished: further calls are a programming error."""
    installer = RaucInstaller(bus="unix:path=/nonexistent/bus")
    await installer.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await installer.slot_info()
