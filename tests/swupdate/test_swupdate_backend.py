"""The SWUpdate backend against the real SWUpdate 2022.12, a file-backed U-Boot env and slot files."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from swupdate_harness import SwupdateDevice, make_payload

from ota_daemon.errors import InstallerError, IntegrityError
from ota_daemon.model import FileSource, Progress, StreamSource, UrlSource

ZERO = b"\0" * 4096



async def test_install_from_file_writes_inactive_slot_and_arms_it(swupdate_device: SwupdateDevice) -> None:
    """An install from a file writes the image byte for byte into the inactive slot B, leaves
    slot A alone, switches rootpart to B with ustate=1, records the version, and reports
    progress from SWUpdate's progress socket rising to 100."""
    device = swupdate_device
    before_a = device.slot_bytes("A")
    image = device.make_swu("2.0.0", size=4 * 1024 * 1024)
    installer = device.installer()
    seen: list[Progress] = []

    outcome = await installer.install(FileSource(image), progress=seen.append, version=None)

    assert outcome.target_slot == "B" and outcome.needs_reboot and outcome.version == "2.0.0"
    payload = make_payload("2.0.0", 4 * 1024 * 1024)
    assert device.slot_bytes("B", len(payload)) == payload
    assert device.slot_bytes("A") == before_a
    env = device.env()
    assert (env["rootpart"], env["ustate"], env["upgrade_available"], env["ota_version_B"]) == ("B", "1", "1", "2.0.0")
    assert "recovery_status" not in env
    percents = [p.percent for p in seen]
    assert percents == sorted(percents) and percents[0] == 0.0 and percents[-1] == 100.0
    assert any(0 < p.percent < 100 and "rootfs.img (raw)" in p.message for p in seen), [p.message for p in seen]
    info = await installer.slot_info()
    assert (info.booted, info.primary, info.pending, info.committed) == ("A", "A", "B", True)
    assert info.version_of("B") == "2.0.0" and info.version_of("A") == "1.0.0"


async def test_reboot_then_commit_makes_new_slot_primary(swupdate_device: SwupdateDevice) -> None:
    """After install and reboot the device runs B on trial (primary still A); commit writes
    ustate=0, upgrade_available=0, bootcount=0 and rootpart=B; a second commit writes nothing."""
    device = swupdate_device
    installer = device.installer()
    await installer.install(FileSource(device.make_swu("2.0.0")))
    await installer.reboot(spare=True)
    assert device.reboot_requested
    assert device.reboot() == "B"

    info = await installer.slot_info()
    assert (info.booted, info.primary, info.committed) == ("B", "A", False)
    assert device.env()["bootcount"] == "1"
    await installer.commit()
    env = device.env()
    assert (env["rootpart"], env["ustate"], env["upgrade_available"], env["bootcount"]) == ("B", "0", "0", "0")
    info = await installer.slot_info()
    assert (info.booted, info.primary, info.committed, info.pending) == ("B", "B", True, None)

    written = device.env_file.stat().st_mtime_ns
    await installer.commit()
    assert device.env_file.stat().st_mtime_ns == written
    assert device.reboot() == "B"  # committed: stays


async def test_uncommitted_trial_falls_back_and_reads_as_rollback(swupdate_device: SwupdateDevice) -> None:
    """A trial that is never committed is abandoned by the bootloader at the next boot: the
    device runs A again, ustate=3, and slot_info reports B as failed and not bootable."""
    device = swupdate_device
    installer = device.installer()
    await installer.install(FileSource(device.make_swu("2.0.0")))
    await installer.reboot(spare=True)
    assert device.reboot(boot_fails=True) == "A"

    info = await installer.slot_info()
    assert (info.booted, info.primary, info.committed, info.pending) == ("A", "A", True, None)
    assert info.slots["B"].bootable is False and info.slots["B"].good is False
    assert info.extra["ustate"] == 3 and info.extra["failedSlot"] == "B"
    assert info.slots["A"].good is True


async def test_mark_bad_from_the_trial_boots_the_old_slot(swupdate_device: SwupdateDevice) -> None:
    """A failed health check on B: mark_bad(B) points rootpart back at A with ustate=3, and the
    next reboot runs A with B reported failed."""
    device = swupdate_device
    installer = device.installer()
    await installer.install(FileSource(device.make_swu("2.0.0")))
    await installer.reboot(spare=True)
    device.reboot()
    await installer.mark_bad("B")
    env = device.env()
    assert (env["rootpart"], env["ustate"], env["upgrade_available"]) == ("A", "3", "0")
    await installer.reboot(spare=False)
    assert device.reboot_requested
    assert device.reboot() == "A"
    info = await installer.slot_info()
    assert (info.booted, info.primary) == ("A", "A") and info.slots["B"].bootable is False


async def _chunks(data: bytes, size: int = 256 * 1024, *, fail: BaseException | None = None) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]
        await asyncio.sleep(0)
    if fail is not None:
        raise fail


async def test_stream_install_pipes_into_stdin(swupdate_device: SwupdateDevice) -> None:
    """A byte stream goes in through ``-i /dev/stdin`` and lands in slot B byte for byte."""
    device = swupdate_device
    image = device.make_swu("3.1.0").read_bytes()
    installer = device.installer()
    outcome = await installer.install(StreamSource(_chunks(image), size=len(image)), version="3.1.0")
    payload = make_payload("3.1.0")
    assert outcome.target_slot == "B" and outcome.version == "3.1.0"
    assert device.slot_bytes("B", len(payload)) == payload
    assert device.env()["rootpart"] == "B"


async def test_stream_that_fails_its_digest_never_completes(swupdate_device: SwupdateDevice) -> None:
    """When the daemon's stream raises after its last byte (digest mismatch), the install never
    completes: the error is the stream's, the environment is not switched and slot B is not written."""
    device = swupdate_device
    image = device.make_swu("3.2.0").read_bytes()
    installer = device.installer()
    with pytest.raises(IntegrityError, match="digest"):
        await installer.install(StreamSource(_chunks(image, fail=IntegrityError("digest differs")), size=len(image)))
    env = device.env()
    assert (env["rootpart"], env["ustate"]) == ("A", "0")
    assert device.slot_bytes("B", 4096) == ZERO


def _swupdate_pids(tmp_dir: Path) -> list[int]:
    """Processes whose TMPDIR lies under ``tmp_dir`` (the installs of one test)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"TMPDIR={tmp_dir}/".encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


async def test_cancelled_install_stops_swupdate(swupdate_device: SwupdateDevice) -> None:
    """Cancelling an install (daemon shutdown) stops swupdate and its helpers, leaves no socket
    directory behind, and does not switch the environment."""
    device = swupdate_device
    image = device.make_swu("5.0.0").read_bytes()
    tmp_dir = Path(tempfile.mkdtemp(prefix="swt-"))
    try:
        started = asyncio.Event()
        never = asyncio.Event()

        async def stalled() -> AsyncIterator[bytes]:
            yield image[: 128 * 1024]
            started.set()
            await never.wait()
            yield image[128 * 1024 :]

        task = asyncio.create_task(device.installer(tmp_dir=str(tmp_dir)).install(StreamSource(stalled())))
        await started.wait()
        for _ in range(1000):  # swupdate is starting up: wait for its progress socket
            if list(tmp_dir.glob("ota-swu-*/swupdateprog")):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("swupdate never created its progress socket")
        assert _swupdate_pids(tmp_dir)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _swupdate_pids(tmp_dir) == []
        assert list(tmp_dir.iterdir()) == []
        assert device.env()["rootpart"] == "A"
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"corrupt_payload": True}, "HASH mismatch"),
        ({"tamper_description": True}, "Signature verification failed"),
        ({"rogue_signer": True}, "Authentication of all signatures failed"),
    ],
    ids=["hash-mismatch", "tampered-description", "untrusted-signer"],
)
async def test_rejected_image_leaves_slot_and_env_untouched(swupdate_device: SwupdateDevice, fault: dict[str, bool], words: str) -> None:
    """A .swu that fails verification raises InstallerError carrying SWUpdate's own words, its
    exit code and stderr; slot B is not written and the bootloader environment is unchanged."""
    device = swupdate_device
    image = device.make_swu("2.0.0", **fault)
    before = device.env()
    with pytest.raises(InstallerError) as caught:
        await device.installer().install(FileSource(image))
    err = caught.value
    assert words in str(err) and "slot B" in str(err) and "-e stable,copy2" in str(err)
    assert err.returncode == 1 and err.backend == "swupdate" and err.phase == "installing"
    assert err.stderr_tail is not None and words in err.stderr_tail
    assert device.slot_bytes("B", 4096) == ZERO
    assert device.env() == before


async def test_hardware_mismatch_is_reported(swupdate_device: SwupdateDevice) -> None:
    """An image for other hardware revisions is refused with SWUpdate's reason."""
    device = swupdate_device
    with pytest.raises(InstallerError, match="not compatible with hardware"):
        await device.installer(hwrevision="testboard:2.0").install(FileSource(device.make_swu("2.0.0")))
    assert device.slot_bytes("B", 4096) == ZERO


async def test_handler_failure_names_the_cause_and_marks_failure(swupdate_device: SwupdateDevice) -> None:
    """A handler that cannot write its device fails the install with SWUpdate's message and the
    trace line naming the cause; SWUpdate leaves ustate=3, which slot_info reports as B failed,
    and the version recorded for B's old contents is gone."""
    device = swupdate_device
    device.set_env(ota_version_B="0.9.0")
    missing = device.dir / "no-such-dir" / "slotB.img"
    image = device.make_swu("2.0.0", devices={"B": str(missing)})
    installer = device.installer()
    with pytest.raises(InstallerError) as caught:
        await installer.install(FileSource(image))
    message = str(caught.value)
    assert "Installation failed" in message and "cannot be opened: No such file or directory" in message
    env = device.env()
    assert (env["rootpart"], env["ustate"], env.get("recovery_status")) == ("A", "3", "failed")
    assert "ota_version_B" not in env  # the old contents' version died with the overwrite
    info = await installer.slot_info()
    assert info.booted == "A" and info.committed and info.slots["B"].bootable is False
    assert device.slot_bytes("B", 4096) == ZERO


async def test_selection_that_does_not_switch_the_slot_is_caught(swupdate_device: SwupdateDevice) -> None:
    """An image whose copy2 mode sets rootpart to the wrong slot is reported after the install,
    naming the variable, the expected value and the selection."""
    device = swupdate_device
    image = device.make_swu("2.0.0", rootpart={"B": "A"})
    with pytest.raises(InstallerError, match=r"rootpart is 'A', expected 'B'.*stable,copy2|rootpart is 'A', expected 'B'"):
        await device.installer().install(FileSource(image))


async def test_install_refused_while_running_an_uncommitted_trial(swupdate_device: SwupdateDevice) -> None:
    """While B runs on trial, installing again would overwrite the fallback slot A: refused."""
    device = swupdate_device
    installer = device.installer()
    await installer.install(FileSource(device.make_swu("2.0.0")))
    device.reboot()
    before_a = device.slot_bytes("A")
    with pytest.raises(InstallerError, match="runs on trial"):
        await installer.install(FileSource(device.make_swu("3.0.0")))
    assert device.slot_bytes("A") == before_a


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_url_install_uses_swupdates_downloader(swupdate_device: SwupdateDevice, http_root: tuple[str, Path]) -> None:
    """A URL is handed to SWUpdate's downloader (-d) and the image lands in slot B. (The version
    comes from the caller's pin: the image's own header passes only through SWUpdate.)"""
    device = swupdate_device
    base, root = http_root
    (root / "update.swu").write_bytes(device.make_swu("4.0.0").read_bytes())
    outcome = await device.installer().install(UrlSource(f"{base}/update.swu?X-Token=s3cr3t"), version="4.0.0")
    payload = make_payload("4.0.0")
    assert outcome.target_slot == "B" and outcome.version == "4.0.0"
    assert device.slot_bytes("B", len(payload)) == payload


async def test_url_failure_is_reported_without_the_credential(swupdate_device: SwupdateDevice, http_root: tuple[str, Path]) -> None:
    """A 404 from the server fails the install with SWUpdate's HTTP error, and the URL's query
    (where issued URLs carry their credential) appears nowhere in the error."""
    device = swupdate_device
    base, _ = http_root
    with pytest.raises(InstallerError) as caught:
        await device.installer().install(UrlSource(f"{base}/missing.swu?X-Token=s3cr3t"))
    err = caught.value
    assert "404" in str(err) or "404" in (err.stderr_tail or "")
    assert "s3cr3t" not in str(err) and "s3cr3t" not in (err.stderr_tail or "")
    assert device.slot_bytes("B", 4096) == ZERO


async def test_booted_slot_is_pinned_per_boot_in_env_mode(swupdate_device: SwupdateDevice) -> None:
    """In env mode the booted slot is rootpart as found first in this boot: after an install
    switched rootpart, a new backend instance (a restarted daemon) still reports A until the reboot."""
    device = swupdate_device
    await device.installer().install(FileSource(device.make_swu("2.0.0")))
    info = await device.installer().slot_info()
    assert (info.booted, info.pending) == ("A", "B")
    device.reboot()
    assert (await device.installer().slot_info()).booted == "B"


async def test_booted_slot_from_kernel_command_line(swupdate_device: SwupdateDevice) -> None:
    """With booted_from = "cmdline" the booted slot is the mapped root= argument; an unknown
    value is an error naming the argument, the file and the expected values."""
    device = swupdate_device
    installer = device.installer(booted_from="cmdline")
    assert (await installer.slot_info()).booted == "A"
    device.set_env(rootpart="B")
    device.reboot()
    assert (await installer.slot_info()).booted == "B"
    device.cmdline.write_text("root=/dev/sda9\n")
    with pytest.raises(InstallerError, match=r"root='/dev/sda9'.*cmdline.*A or B"):
        await installer.slot_info()


async def test_reboot_spare_arms_a_try_and_non_spare_cancels_a_pending_switch(swupdate_device: SwupdateDevice) -> None:
    """reboot(spare=True) with nothing pending arms a one-time try of the other slot;
    reboot(spare=False) with a pending switch cancels it so the booted slot boots again."""
    device = swupdate_device
    installer = device.installer()
    await installer.reboot(spare=True)
    env = device.env()
    assert (env["rootpart"], env["ustate"], env["upgrade_available"]) == ("B", "1", "1")
    await installer.reboot(spare=False)
    env = device.env()
    assert (env["rootpart"], env["ustate"], env["upgrade_available"]) == ("A", "0", "0")
    assert device.reboot() == "A"


async def test_reboot_command_failure_is_an_installer_error(swupdate_device: SwupdateDevice) -> None:
    """A reboot command that fails raises InstallerError naming the command and its output."""
    installer = swupdate_device.installer(reboot_command=["sh", "-c", "echo no reboot for you >&2; exit 3"])
    with pytest.raises(InstallerError, match="no reboot for you") as caught:
        await installer.reboot(spare=False)
    assert caught.value.returncode == 3


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"bin": "/nonexistent/swupdate", "command_prefix": []}, "swupdate: installing: /nonexistent/swupdate not found"),
        ({"fw_printenv_bin": "/nonexistent/fw_printenv"}, "/nonexistent/fw_printenv not found"),
    ],
    ids=["swupdate-missing", "fw_printenv-missing"],
)
async def test_missing_tools_are_installer_errors(swupdate_device: SwupdateDevice, override: dict[str, object], words: str) -> None:
    """A missing tool surfaces as InstallerError naming it, never as a bare OSError."""
    device = swupdate_device
    with pytest.raises(InstallerError, match=words):
        await device.installer(**override).install(FileSource(device.make_swu("2.0.0")))


async def test_env_that_names_no_slot_is_a_clear_error(swupdate_device: SwupdateDevice) -> None:
    """A rootpart value outside the configured slots is reported with the expected values."""
    device = swupdate_device
    device.set_env(rootpart="C")
    with pytest.raises(InstallerError, match=r"rootpart='C' names no slot; expected A or B"):
        await device.installer().slot_info()


async def test_mark_bad_rejects_unknown_slot(swupdate_device: SwupdateDevice) -> None:
    """mark_bad of a slot that does not exist names the real slots and writes nothing."""
    device = swupdate_device
    before = device.env()
    with pytest.raises(InstallerError, match="no slot 'C'; slots are A and B"):
        await device.installer().mark_bad("C")
    assert device.env() == before
