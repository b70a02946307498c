"""The RAUC backend against the real RAUC 1.8 service (private D-Bus, file-backed slots)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ota_daemon.errors import InstallerError
from ota_daemon.installers.base import Installer
from ota_daemon.installers.rauc import RaucInstaller
from ota_daemon.model import FileSource, Progress, SourceKind, UrlSource

if TYPE_CHECKING:
    from conftest import RaucDevice  # tests/rauc/conftest.py

pytestmark = pytest.mark.root


class Recorder:
    """A progress callback that keeps every report."""

    def __init__(self) -> None:
        self.items: list[Progress] = []

    async def __call__(self, item: Progress) -> None:
        self.items.append(item)

    @property
    def percents(self) -> list[float]:
        return [p.percent for p in self.items]


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A loopback HTTP server for ``directory``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))

    class Quiet(handler.func):  # type: ignore[name-defined,misc]
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------- slot facts


async def test_rauc_slot_info_on_a_fresh_device(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """Before any update: booted and primary are slot names (rootfs.0), the system is
    committed, the factory version is read from RAUC's slot status, bootnames sit in extra,
    and the boot id comes from the configured file."""
    assert isinstance(rauc_installer, Installer)
    assert rauc_installer.source_kinds == frozenset({SourceKind.FILE, SourceKind.URL})
    info = await rauc_installer.slot_info()
    assert info.booted == "rootfs.0"
    assert info.primary == "rootfs.0"
    assert info.committed
    assert info.pending is None
    assert set(info.slots) == {"rootfs.0", "rootfs.1"}
    assert info.version_of("rootfs.0") == "1.0.0"
    assert info.version_of("rootfs.1") is None
    assert info.other() == "rootfs.1"
    assert info.boot_id == rauc_device.boot_id_file.read_text().strip()
    assert info.extra["bootnames"] == {"rootfs.0": "A", "rootfs.1": "B"}
    assert info.extra["compatible"] == "otatest-x86"


# --------------------------------------------------------------------------- install, reboot, commit


async def test_rauc_install_writes_the_other_slot_and_arms_it(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """An install writes the bundle's image byte for byte into the inactive slot, leaves the
    booted slot alone, makes the new slot primary (pending, not committed), never reboots,
    and reports RAUC's progress as monotonic percentages ending at 100."""
    bundle = rauc_device.build_bundle("2.0.0")
    progress = Recorder()
    outcome = await rauc_installer.install(FileSource(bundle), progress=progress, version="2.0.0")

    assert outcome.target_slot == "rootfs.1"
    assert outcome.version == "2.0.0"
    assert outcome.needs_reboot
    assert rauc_device.slot_bytes("B") == rauc_device.payload("2.0.0")
    assert rauc_device.slot_bytes("A") == rauc_device.payload("1.0.0")

    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary, info.pending) == ("rootfs.0", "rootfs.1", "rootfs.1")
    assert not info.committed
    assert info.version_of("rootfs.1") == "2.0.0"
    assert info.slots["rootfs.1"].bootable
    assert rauc_device.bootstate()["primary"] == "B"
    assert rauc_device.reboot_requests == 0

    percents = progress.percents
    assert len(percents) >= 5
    assert percents == sorted(percents)
    assert all(0 <= p <= 100 for p in percents)
    assert percents[-1] == 100
    assert 100 not in percents[:-1]
    assert all(p.phase == "installing" and p.message for p in progress.items)
    assert any("rootfs.1" in p.message for p in progress.items)


async def test_rauc_full_cycle_reboot_commit_and_next_update(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """Install 2.0.0, reboot (the command runs, RAUC armed slot B), boot into B with a new
    boot id, commit (idempotently); the next update, 3.0.0, then goes to slot A."""
    outcome = await rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0")))
    before = await rauc_installer.slot_info()

    assert await rauc_device.reboot_if_requested() is None
    await rauc_installer.reboot(spare=True)
    assert rauc_device.reboot_requests == 1
    assert await rauc_device.reboot_if_requested() == "B"

    info = await rauc_installer.slot_info()
    assert info.booted == outcome.target_slot == "rootfs.1"
    assert info.primary == "rootfs.1"
    assert info.boot_id != before.boot_id
    assert info.version_of("rootfs.1") == "2.0.0"

    await rauc_installer.commit()
    await rauc_installer.commit()
    assert rauc_device.bootstate() == {"primary": "B", "state_A": "good", "state_B": "good"} | rauc_device.bootstate()
    assert rauc_device.bootstate()["state_B"] == "good"
    assert "set-state B good" in rauc_device.bootloader_log.read_text()
    info = await rauc_installer.slot_info()
    assert info.committed and info.slots["rootfs.1"].good

    # a further reboot stays on the committed slot
    assert await rauc_device.reboot() == "B"

    second = await rauc_installer.install(FileSource(rauc_device.build_bundle("3.0.0")))
    assert second.target_slot == "rootfs.0"
    assert second.version == "3.0.0"
    assert rauc_device.slot_bytes("A") == rauc_device.payload("3.0.0")
    assert rauc_device.slot_bytes("B") == rauc_device.payload("2.0.0")
    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary) == ("rootfs.1", "rootfs.0")


async def test_rauc_commit_makes_the_booted_slot_primary(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """When the bootloader booted the new slot once but still names the old one primary
    (EFI BootNext style), commit marks the booted slot good *and* primary."""
    await rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0")))
    assert await rauc_device.reboot() == "B"
    state = rauc_device.bootstate()
    state["primary"] = "A"  # the one-shot is consumed
    rauc_device.write_bootstate(state)
    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary, info.committed) == ("rootfs.1", "rootfs.0", False)

    await rauc_installer.commit()

    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary, info.committed) == ("rootfs.1", "rootfs.1", True)
    assert rauc_device.bootstate()["primary"] == "B"
    assert await rauc_device.reboot() == "B"


# --------------------------------------------------------------------------- rollback


async def test_rauc_fallback_after_failed_boot_is_visible(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """When the new slot never comes up and the bootloader falls back, slot_info shows the
    old slot booted and primary, and the target slot not bootable but still carrying the
    version that was tried: the engine's rollback signature."""
    outcome = await rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0")))
    await rauc_installer.reboot(spare=True)
    assert await rauc_device.reboot(boot_fails=True) == "A"

    info = await rauc_installer.slot_info()
    assert info.booted == "rootfs.0" != outcome.target_slot
    assert info.primary == "rootfs.0"
    assert info.committed
    target = info.slots[outcome.target_slot]
    assert not target.bootable
    assert target.good is False
    assert target.version == "2.0.0"
    assert info.extra["boot_status"][outcome.target_slot] == "bad"


async def test_rauc_mark_bad_after_failed_health_check_rolls_back(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """Booted into the new slot, a failed health check marks it bad: the old slot becomes
    primary, and the next reboot boots it."""
    await rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0")))
    assert await rauc_device.reboot() == "B"

    await rauc_installer.mark_bad("rootfs.1")
    info = await rauc_installer.slot_info()
    assert info.primary == "rootfs.0"
    assert not info.slots["rootfs.1"].bootable

    await rauc_installer.reboot(spare=False)
    assert await rauc_device.reboot() == "A"
    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary) == ("rootfs.0", "rootfs.0")
    assert rauc_device.slot_bytes("A") == rauc_device.payload("1.0.0")


async def test_rauc_mark_bad_disarms_an_installed_slot_by_bootname(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """Marking the just-installed slot bad before any reboot (given by its bootname) keeps
    the old slot primary: the reboot comes back to it."""
    await rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0")))
    await rauc_installer.mark_bad("B")
    assert rauc_device.bootstate()["primary"] == "A"
    assert rauc_device.bootstate()["state_B"] == "bad"
    assert await rauc_device.reboot() == "A"
    info = await rauc_installer.slot_info()
    assert info.committed and info.pending is None


async def test_rauc_mark_bad_unknown_slot_names_the_valid_ones(rauc_installer: RaucInstaller) -> None:
    """An unknown slot is refused with the valid slot names and bootnames."""
    with pytest.raises(InstallerError, match=r"no slot 'rootfs\.7'.*rootfs\.0 \(A\).*rootfs\.1 \(B\)"):
        await rauc_installer.mark_bad("rootfs.7")


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("case", "rauc_text"),
    [
        ("compatible", "Compatible mismatch: Expected 'otatest-x86' but bundle manifest has 'other-board'"),
        ("rogue-signer", "signature verification failed"),
        ("tampered", "signature verification failed"),
        ("missing", "No such file or directory"),
    ],
)
async def test_rauc_failed_install_reports_rauc_text_and_keeps_the_old_slot(
    rauc_device: RaucDevice, rauc_installer: RaucInstaller, case: str, rauc_text: str
) -> None:
    """A bundle RAUC refuses (wrong compatible, untrusted signer, modified bytes, no file)
    raises InstallerError carrying RAUC's LastError; the inactive slot is untouched, the
    old slot stays primary and committed, and progress never claims 100%."""
    if case == "compatible":
        bundle = rauc_device.build_bundle("2.0.0", compatible="other-board")
    elif case == "rogue-signer":
        bundle = rauc_device.build_bundle("2.0.0", rogue=True)
    elif case == "tampered":
        bundle = rauc_device.build_bundle("2.0.0")
        data = bytearray(bundle.read_bytes())
        # plain format: squashfs, CMS signature, 8-byte big-endian signature size
        squashfs_end = len(data) - 8 - int.from_bytes(data[-8:], "big")
        data[squashfs_end // 2] ^= 0xFF
        bundle.write_bytes(bytes(data))
    else:
        bundle = rauc_device.bundles / "absent.raucb"
    progress = Recorder()

    with pytest.raises(InstallerError) as caught:
        await rauc_installer.install(FileSource(bundle), progress=progress)

    err = caught.value
    assert err.backend == "rauc"
    assert err.phase == "installing"
    assert err.returncode == 1
    assert rauc_text in str(err)
    assert err.stderr_tail and rauc_text in err.stderr_tail
    assert bundle.name in str(err)
    assert rauc_device.slot_bytes("B") == rauc_device.blank
    assert rauc_device.slot_bytes("A") == rauc_device.payload("1.0.0")
    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary, info.committed) == ("rootfs.0", "rootfs.0", True)
    assert rauc_device.bootstate()["primary"] == "A"
    assert all(p < 100 for p in progress.percents)
    assert progress.percents == sorted(progress.percents)


async def test_rauc_calls_while_rauc_is_busy_wait_for_it(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """RAUC 1.8 answers no method call while it installs ("already processing a different
    method"): slot_info and a second install from another client wait until RAUC is idle,
    then see the first install's result and install in turn."""
    rauc_device.hang_bootloader("set-primary")
    first = asyncio.create_task(rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0"))))
    await rauc_device.wait_bootloader_hanging()

    other = RaucInstaller.from_config(config=rauc_device.config)
    try:
        refused = asyncio.Event()
        wait_idle = other._wait_idle

        async def spy(phase: str) -> None:
            refused.set()  # RAUC refused the status call: now it must wait, not fail
            await wait_idle(phase)

        other._wait_idle = spy  # type: ignore[method-assign]
        status = asyncio.create_task(other.slot_info())
        async with asyncio.timeout(15):  # a safety net only: RAUC refuses at once
            await refused.wait()
        assert not status.done()
        rauc_device.release_bootloader()
        outcome = await first
        info = await status
        second = await other.install(FileSource(rauc_device.build_bundle("3.0.0")))
    finally:
        await other.aclose()
    assert (outcome.target_slot, outcome.version) == ("rootfs.1", "2.0.0")
    assert (info.booted, info.primary) == ("rootfs.0", "rootfs.1")
    assert (second.target_slot, second.version) == ("rootfs.1", "3.0.0")
    assert rauc_device.slot_bytes("B") == rauc_device.payload("3.0.0")


async def test_rauc_service_dying_mid_install_fails_the_install(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """When the RAUC service dies during an install, install() raises at once (it does not
    wait forever), and after the power cycle the old slot is still primary and booted."""
    rauc_device.hang_bootloader("set-state")
    progress = Recorder()
    task = asyncio.create_task(rauc_installer.install(FileSource(rauc_device.build_bundle("2.0.0")), progress=progress))
    await rauc_device.wait_bootloader_hanging()
    rauc_device.crash_service()

    with pytest.raises(InstallerError, match="RAUC service left the D-Bus") as caught:
        await task
    assert caught.value.returncode == 2
    assert all(p < 100 for p in progress.percents)

    assert await rauc_device.reboot() == "A"
    info = await rauc_installer.slot_info()
    assert (info.booted, info.primary) == ("rootfs.0", "rootfs.0")
    assert rauc_device.slot_bytes("A") == rauc_device.payload("1.0.0")


async def test_rauc_service_gone_is_a_clear_error(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """With the RAUC service stopped, slot_info names the service and the bus it is missing from."""
    await rauc_device.stop_service()
    with pytest.raises(InstallerError, match=r"RAUC service \(de\.pengutronix\.rauc\) is not running on the D-Bus bus unix:path="):
        await rauc_installer.slot_info()


# --------------------------------------------------------------------------- URLs


async def test_rauc_url_install_and_redacted_failure(rauc_device: RaucDevice, rauc_installer: RaucInstaller) -> None:
    """RAUC fetches a URL itself (1.8: download, then install); a failing URL raises an
    InstallerError whose message keeps the host and path but not the query credential."""
    bundle = rauc_device.build_bundle("2.0.0")
    with serve(rauc_device.bundles) as base:
        outcome = await rauc_installer.install(UrlSource(f"{base}/{bundle.name}?X-Token=s3cr3t"), version="2.0.0")
        assert (outcome.target_slot, outcome.version) == ("rootfs.1", "2.0.0")
        assert rauc_device.slot_bytes("B") == rauc_device.payload("2.0.0")

        with pytest.raises(InstallerError) as caught:
            await rauc_installer.install(UrlSource(f"{base}/missing.raucb?X-Token=s3cr3t"))
    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in (caught.value.stderr_tail or "")
    assert "/missing.raucb" in str(caught.value)
