"""The Rugix backend (``ota_daemon.installers.rugix``) against the ``rugix-ctrl`` double.

Outcomes are read from the emulated device (slot files, boot state, the tool's own
``system info``), never from the backend's word alone.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import rugix_ctrl_double as double
from rugix_harness import BundleServer, MakeRugixDevice, RugixDevice

from ota_daemon.errors import InstallerError, IntegrityError, TransientError, UpdateFailed
from ota_daemon.installers import get_installer
from ota_daemon.installers.base import Installer
from ota_daemon.installers.rugix import RugixInstaller, error_summary, parse_system_info
from ota_daemon.model import FileSource, Progress, SourceKind, StreamSource, UrlSource

CHUNK = 64 * 1024


def write_bundle(tmp_path: Path, data: bytes, name: str = "update.rugixb") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def tool_slots(dev: RugixDevice) -> dict[str, dict[str, object]]:
    """The slot DB as the tool reports it."""
    import subprocess

    out = subprocess.run([str(dev.bin), "system", "info", "--json"], capture_output=True, check=True).stdout
    slots: dict[str, dict[str, object]] = json.loads(out)["slots"]
    return slots


async def chunks_of(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def wait_until(predicate: object, what: str, limit: float = 20.0) -> None:
    """Wait for a condition another process brings about (not for time to pass)."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.005)


async def install_and_try(dev: RugixDevice, tmp_path: Path, version: str = "2.0.0") -> RugixInstaller:
    installer = dev.installer()
    data = dev.bundle(version, b"p" * 5000)
    await installer.install(FileSource(write_bundle(tmp_path, data)), bundle_hash=double.bundle_hash(data), version=version)
    await installer.reboot(spare=True)
    assert dev.reboot() == "b"
    return installer


# --------------------------------------------------------------------------- construction and status


def test_registry_builds_the_rugix_installer_from_config(rugix_device: RugixDevice) -> None:
    """`installer.kind = "rugix"` yields a RugixInstaller that satisfies the Installer protocol and
    declares file, URL and stream sources and .rugixb images."""
    installer = get_installer("rugix", config=rugix_device.config, clock=None)
    assert isinstance(installer, RugixInstaller)
    assert isinstance(installer, Installer)
    assert installer.kind == "rugix"
    assert installer.image_ext == "rugixb"
    assert installer.source_kinds == {SourceKind.FILE, SourceKind.URL, SourceKind.STREAM}
    assert installer.bin == str(rugix_device.bin)


async def test_slot_info_maps_boot_groups_to_slots(rugix_device: RugixDevice) -> None:
    """`system info`: groups a/b are the slots, booted = activeGroup, primary = defaultGroup, no
    version per slot, boot id from the configured file."""
    info = await rugix_device.installer().slot_info()
    assert (info.booted, info.primary, info.committed) == ("a", "a", True)
    assert sorted(info.slots) == ["a", "b"]
    assert info.version_of("a") is None
    assert info.version_of("b") is None
    assert info.boot_id == rugix_device.boot_id()
    assert info.pending is None
    assert info.extra["bootFlow"] == "grub"


# --------------------------------------------------------------------------- install


async def test_install_from_file_writes_the_inactive_slot_with_progress(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """A file install writes group b, reports increasing progress ending at 100 from the tool's JSON
    lines, returns the target slot, and arms nothing (the default still boots)."""
    data = rugix_device.bundle("2.0.0", os.urandom(1_000_000))
    seen: list[Progress] = []
    outcome = await rugix_device.installer().install(
        FileSource(write_bundle(tmp_path, data)), progress=seen.append, version="2.0.0", bundle_hash=double.bundle_hash(data)
    )
    assert (outcome.target_slot, outcome.needs_reboot, outcome.version) == ("b", True, "2.0.0")
    assert rugix_device.slot_bytes("b") == data
    percents = [p.percent for p in seen]
    assert len(percents) > 3
    assert percents == sorted(percents)
    assert percents[-1] == 100.0
    assert all(p.phase == "installing" for p in seen)
    assert rugix_device.reboot() == "a"


async def test_install_passes_absolute_paths_so_http_named_files_are_files(
    rugix_device: RugixDevice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path starting with "http" would be fetched as a URL by rugix-ctrl; the backend
    hands it an absolute path."""
    data = rugix_device.bundle("2.0.0")
    write_bundle(tmp_path, data, "http-update.rugixb")
    monkeypatch.chdir(tmp_path)
    await rugix_device.installer().install(FileSource(Path("http-update.rugixb")), bundle_hash=double.bundle_hash(data))
    assert rugix_device.slot_bytes("b") == data


async def test_install_from_stream_pipes_chunks_without_holding_the_image(rugix_device: RugixDevice) -> None:
    """A stream goes to `update install -` chunk by chunk: before the source yields chunk i the tool
    has already written nearly all earlier chunks, so the image is never held whole; progress
    (from bytes piped, the tool prints none for stdin) ends at 100."""
    data = os.urandom(64 * CHUNK)
    slot = rugix_device.device.slot_path("b")

    async def source() -> AsyncIterator[bytes]:
        for i in range(64):
            if i >= 8:
                need = (i - 6) * CHUNK
                await wait_until(lambda need=need: slot.exists() and slot.stat().st_size >= need, f"slot holds {need} bytes")
            yield data[i * CHUNK : (i + 1) * CHUNK]

    seen: list[float] = []

    async def on_progress(p: Progress) -> None:
        seen.append(p.percent)

    outcome = await rugix_device.installer().install(
        StreamSource(source(), size=len(data)), progress=on_progress, bundle_hash=double.bundle_hash(data)
    )
    assert outcome.target_slot == "b"
    assert rugix_device.slot_bytes("b") == data
    assert seen == sorted(seen)
    assert seen[-1] == 100.0
    assert max(seen[:-1]) < 100.0


async def test_a_failing_stream_kills_the_tool_before_it_sees_the_end(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """When the source fails (here: the daemon finds a digest mismatch at the end), the source's own
    error propagates and rugix-ctrl is killed instead of seeing EOF: no slot-DB entry, nothing
    armed, and the update lock is free for the next install."""
    data = os.urandom(8 * CHUNK)

    async def source() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(data):
            yield chunk
        raise IntegrityError("digest of update.rugixb differs from the pinned asset")

    installer = rugix_device.installer(insecure_skip_bundle_verification=True)
    with pytest.raises(IntegrityError):
        await installer.install(StreamSource(source(), size=len(data)))
    assert tool_slots(rugix_device)["system-b"] == {"active": False}
    assert rugix_device.state()["tryNext"] is None
    again = rugix_device.bundle("2.0.0")
    await installer.install(FileSource(write_bundle(tmp_path, again)))
    assert rugix_device.slot_bytes("b") == again


async def test_cancelling_an_install_kills_the_tool(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """Cancellation propagates and takes the rugix-ctrl process with it (its update lock is released)."""
    started = asyncio.Event()
    forever = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b"x" * CHUNK
        started.set()
        await forever.wait()
        yield b""

    installer = rugix_device.installer(insecure_skip_bundle_verification=True)
    task = asyncio.create_task(installer.install(StreamSource(source(), size=None)))
    await started.wait()
    await wait_until(lambda: rugix_device.device.slot_path("b").stat().st_size > 0 if rugix_device.device.slot_path("b").exists() else False, "tool started writing")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    data = rugix_device.bundle("2.0.0")
    await installer.install(FileSource(write_bundle(tmp_path, data)))
    assert rugix_device.slot_bytes("b") == data


async def test_install_from_url_served_by_a_loopback_server(rugix_device: RugixDevice, bundle_server: BundleServer) -> None:
    """A URL is handed to rugix-ctrl, which fetches it itself; progress comes from its JSON lines."""
    data = rugix_device.bundle("2.0.0", os.urandom(600_000))
    url = bundle_server.add("system.rugixb", data) + "?X-Amz-Signature=abc123"
    seen: list[float] = []
    outcome = await rugix_device.installer().install(
        UrlSource(url, size=len(data)), progress=lambda p: seen.append(p.percent), bundle_hash=double.bundle_hash(data)
    )
    assert outcome.target_slot == "b"
    assert rugix_device.slot_bytes("b") == data
    assert bundle_server.requests[0]["path"] == "/system.rugixb?X-Amz-Signature=abc123"
    assert seen[-1] == 100.0


async def test_url_install_errors_carry_the_tool_text_without_the_url_secret(rugix_device: RugixDevice, bundle_server: BundleServer) -> None:
    """The tool's report (it may quote the URL) reaches the InstallerError redacted: no query secret."""
    url = bundle_server.base_url + "/missing.rugixb?token=SECRET-TOKEN"
    with pytest.raises(InstallerError) as caught:
        await rugix_device.installer(insecure_skip_bundle_verification=True).install(UrlSource(url))
    exc = caught.value
    assert "404" in str(exc)
    assert "SECRET-TOKEN" not in str(exc)
    assert exc.stderr_tail is not None
    assert "SECRET-TOKEN" not in exc.stderr_tail
    assert exc.returncode == 1


async def test_non_http_url_is_refused_before_calling_the_tool(rugix_device: RugixDevice) -> None:
    """rugix-ctrl fetches only http(s): another scheme would be opened as a file path, so it is refused."""
    with pytest.raises(InstallerError, match="http:// and https://"):
        await rugix_device.installer().install(UrlSource("ftp://example.org/x.rugixb?sig=1"))
    assert not any(call[:2] == ["update", "install"] for call in rugix_device.calls())


# --------------------------------------------------------------------------- verification


async def test_bundle_hash_is_passed_through_and_checked_by_the_tool(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """The given bundle hash reaches rugix-ctrl: the right one installs, a wrong one fails with the
    tool's words in the InstallerError."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    installer = rugix_device.installer()
    with pytest.raises(InstallerError) as caught:
        await installer.install(FileSource(path), bundle_hash="sha256:" + "0" * 64)
    assert "bundle hash mismatch" in str(caught.value)
    assert caught.value.returncode == 1
    assert caught.value.phase == "installing"
    await installer.install(FileSource(path), bundle_hash=double.bundle_hash(data, "sha512-256"))
    assert tool_slots(rugix_device)["system-b"]["size"] == len(data)


async def test_without_hash_rugix_1x_refuses_unless_configured_insecure(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """No bundle hash: rugix-ctrl 1.x refuses ("bundle verification failed"); with
    `insecure_skip_bundle_verification` the backend passes the opt-out flag and it installs."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    with pytest.raises(InstallerError, match="bundle verification failed, refusing to install update"):
        await rugix_device.installer().install(FileSource(path))
    await rugix_device.installer(insecure_skip_bundle_verification=True).install(FileSource(path))
    assert rugix_device.slot_bytes("b") == data


async def test_use_bundle_hash_demands_a_hash_before_calling_the_tool(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`use_bundle_hash = true` (the script's useBundleHash) and no hash: refused, rugix-ctrl never runs an install."""
    path = write_bundle(tmp_path, rugix_device.bundle("2.0.0"))
    with pytest.raises(InstallerError, match=r"rugix\.bundleHash"):
        await rugix_device.installer(use_bundle_hash=True, insecure_skip_bundle_verification=True).install(FileSource(path))
    assert not any(call[:2] == ["update", "install"] for call in rugix_device.calls())
    assert rugix_device.slot_bytes("b") == b""


async def test_extra_args_reach_update_install(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`extra_args` are added to `update install`: `--boot-group a` makes the tool refuse the active group."""
    data = rugix_device.bundle("2.0.0")
    with pytest.raises(InstallerError, match="selected boot group a is active"):
        await rugix_device.installer(extra_args=["--boot-group", "a"]).install(
            FileSource(write_bundle(tmp_path, data)), bundle_hash=double.bundle_hash(data)
        )


async def test_dialect_0_8_passes_verify_bundle(make_rugix_device: MakeRugixDevice, tmp_path: Path) -> None:
    """dialect 0.8: the hash goes as --verify-bundle (a wrong one fails, the right one installs) and
    the 1.x-only insecure flag is not passed."""
    dev = make_rugix_device(dialect="0.8", rugix={"insecure_skip_bundle_verification": True})
    data = dev.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    installer = dev.installer()
    with pytest.raises(InstallerError, match="bundle hash mismatch"):
        await installer.install(FileSource(path), bundle_hash="sha256:" + "1" * 64)
    await installer.install(FileSource(path), bundle_hash=double.bundle_hash(data))
    assert dev.slot_bytes("b") == data
    assert not any("--insecure-skip-bundle-verification" in call for call in dev.calls())


# --------------------------------------------------------------------------- boot, commit, rollback


async def test_spare_reboot_then_commit(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """reboot(spare=True) tries b once (booted b, primary a, new boot id); commit makes b primary;
    a second commit is a no-op."""
    first_boot = rugix_device.boot_id()
    installer = await install_and_try(rugix_device, tmp_path)
    info = await installer.slot_info()
    assert (info.booted, info.primary, info.committed) == ("b", "a", False)
    assert info.boot_id != first_boot
    assert rugix_device.build_info()["release"]["version"] == "2.0.0"
    await installer.commit()
    info = await installer.slot_info()
    assert (info.booted, info.primary) == ("b", "b")
    await installer.commit()
    assert rugix_device.reboot() == "b"


async def test_rollback_after_a_failed_try_boot_is_visible(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """The try boot of b fails: afterwards booted = primary = a, the old group (the engine's rollback signal)."""
    installer = rugix_device.installer()
    data = rugix_device.bundle("2.0.0")
    await installer.install(FileSource(write_bundle(tmp_path, data)), bundle_hash=double.bundle_hash(data))
    await installer.reboot(spare=True)
    assert rugix_device.reboot(fail_try=True) == "a"
    info = await installer.slot_info()
    assert (info.booted, info.primary, info.committed) == ("a", "a", True)
    assert rugix_device.build_info()["release"]["version"] == "1.0.0"


async def test_uncommitted_try_falls_back_on_a_plain_reboot(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """reboot(spare=False) while b runs uncommitted: `system reboot`, and the default a boots again."""
    installer = await install_and_try(rugix_device, tmp_path)
    await installer.reboot(spare=False)
    assert rugix_device.state()["rebootRequested"] == "plain"
    assert rugix_device.reboot() == "a"
    assert (await installer.slot_info()).booted == "a"


async def test_install_while_uncommitted_raises_the_tools_refusal(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """The refusal is an InstallerError (an UpdateFailed, not a TransientError: the engine reports it
    and does not retry in a loop) with rugix-ctrl's message, exit status and stderr tail."""
    installer = await install_and_try(rugix_device, tmp_path)
    data = rugix_device.bundle("3.0.0")
    with pytest.raises(InstallerError) as caught:
        await installer.install(FileSource(write_bundle(tmp_path, data, "three.rugixb")), bundle_hash=double.bundle_hash(data))
    exc = caught.value
    assert isinstance(exc, UpdateFailed)
    assert not isinstance(exc, TransientError)
    assert "system needs to be committed before installing an update" in str(exc)
    assert exc.returncode == 1
    assert exc.backend == "rugix"
    assert exc.stderr_tail is not None
    assert "system needs to be committed" in exc.stderr_tail
    assert rugix_device.slot_bytes("a") == rugix_device.bundle("1.0.0")


async def test_stream_install_while_uncommitted_reports_the_refusal_not_a_broken_pipe(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """rugix-ctrl refuses before reading stdin; the backend stops piping and reports the tool's
    refusal, and does not consume the rest of the stream."""
    installer = await install_and_try(rugix_device, tmp_path)
    pulled = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"z" * CHUNK

    with pytest.raises(InstallerError, match="system needs to be committed before installing an update"):
        await installer.install(StreamSource(source(), size=1000 * CHUNK), bundle_hash="sha256:" + "0" * 64)
    assert pulled < 1000


async def test_failing_pre_commit_hook_is_an_installer_error_and_nothing_is_committed(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """A Rugix pre-commit hook that fails aborts the commit: InstallerError with the hook's words; b stays uncommitted."""
    installer = await install_and_try(rugix_device, tmp_path)
    rugix_device.fail_pre_commit("data migration failed")
    with pytest.raises(InstallerError) as caught:
        await installer.commit()
    assert "unable to run `pre-commit` hooks" in str(caught.value)
    assert caught.value.stderr_tail is not None
    assert "data migration failed" in caught.value.stderr_tail
    assert caught.value.phase == "committing"
    info = await installer.slot_info()
    assert (info.booted, info.primary) == ("b", "a")


async def test_mark_bad_on_the_tried_group_needs_no_action(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """mark_bad(b) while b is tried uncommitted succeeds without touching the boot flow (try-once),
    and the following plain reboot brings back a."""
    installer = await install_and_try(rugix_device, tmp_path)
    await installer.mark_bad("b")
    assert rugix_device.state()["bad"] == []
    await installer.reboot(spare=False)
    assert rugix_device.reboot() == "a"


async def test_mark_bad_command_marks_the_group_in_the_boot_flow(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """With `mark_bad_command`, `boot mark-bad b` runs: even a spare reboot no longer tries b."""
    data = rugix_device.bundle("2.0.0")
    installer = rugix_device.installer(mark_bad_command=True)
    await installer.install(FileSource(write_bundle(tmp_path, data)), bundle_hash=double.bundle_hash(data))
    await installer.mark_bad("b")
    assert rugix_device.state()["bad"] == ["b"]
    await installer.reboot(spare=True)
    assert rugix_device.reboot() == "a"


async def test_mark_bad_refuses_the_default_and_unknown_groups(rugix_device: RugixDevice) -> None:
    """The default group cannot be marked bad with Rugix (only the booted group can become default);
    an unknown group is named with the valid ones."""
    installer = rugix_device.installer()
    with pytest.raises(InstallerError, match="default group"):
        await installer.mark_bad("a")
    with pytest.raises(InstallerError, match="groups: a, b"):
        await installer.mark_bad("c")


# --------------------------------------------------------------------------- error mapping


def fake_tool(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-rugix-ctrl"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


FAILURES = {
    "missing binary": None,
    "not executable": "",
    "exit 1 with a report": 'echo "INFO starting" >&2; echo "unable to load system config" >&2; exit 1',
    "no JSON": 'echo "this is not json"',
    "no boot section": 'echo \'{"slots": {}, "state": {"status": "Active"}}\'',
    "active group unknown": 'echo \'{"slots": {}, "boot": {"bootFlow": "grub", "defaultGroup": "a", "groups": {"a": {}, "b": {}}}, "state": {"status": "Active"}}\'',
    "killed": "kill -KILL $$",
    "hangs": "exec sleep 30",
}


@pytest.mark.parametrize("case", sorted(FAILURES))
async def test_every_tool_failure_becomes_an_installer_error(case: str, rugix_device: RugixDevice, tmp_path: Path) -> None:
    """Each way rugix-ctrl can fail (absent, not executable, non-zero exit, bad output, signal,
    hang) surfaces as InstallerError(backend="rugix"), never as a raw OSError or ValueError."""
    body = FAILURES[case]
    if body is None:
        bin_path = tmp_path / "does-not-exist"
    elif case == "not executable":
        bin_path = tmp_path / "plain-file"
        bin_path.write_text("#!/bin/sh\n")
    else:
        bin_path = fake_tool(tmp_path, body)
    installer = rugix_device.installer(bin=str(bin_path), command_timeout=0.5)
    with pytest.raises(InstallerError) as caught:
        await installer.slot_info()
    assert caught.value.backend == "rugix"
    assert caught.value.phase == "status"


async def test_report_lines_not_log_lines_make_the_message(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """The error message quotes the tool's report, not its INFO log lines."""
    tool = fake_tool(tmp_path, 'echo "INFO rebooting" >&2; echo "unable to reboot system" >&2; echo "  caused by: reboot: not found" >&2; exit 1')
    with pytest.raises(InstallerError) as caught:
        await rugix_device.installer(bin=str(tool)).reboot(spare=True)
    assert "unable to reboot system / caused by: reboot: not found" in str(caught.value)
    assert "INFO" not in str(caught.value)
    assert "'rugix-ctrl system reboot --spare' failed (exit 1)" in str(caught.value)


async def test_reboot_killed_by_the_shutdown_it_started_is_not_an_error(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`system reboot` that dies of SIGTERM (the system going down) counts as a reboot under way."""
    tool = fake_tool(tmp_path, "kill -TERM $$")
    await rugix_device.installer(bin=str(tool)).reboot(spare=False)


def test_parse_system_info_handles_missing_groups_and_rejects_three() -> None:
    """Without `groups` the two groups come from active/default; three groups are not A/B."""
    info = parse_system_info(json.dumps({"slots": {}, "boot": {"activeGroup": "b", "defaultGroup": "a"}, "state": {}}), boot_id="x")
    assert (info.booted, info.primary, sorted(info.slots), info.boot_id) == ("b", "a", ["a", "b"], "x")
    three = {"boot": {"activeGroup": "a", "defaultGroup": "a", "groups": {"a": {}, "b": {}, "c": {}}}}
    with pytest.raises(InstallerError, match="expected two boot groups"):
        parse_system_info(json.dumps(three))


def test_error_summary_falls_back_to_all_lines() -> None:
    """With only log lines on stderr the summary still says something."""
    assert error_summary("INFO a\nWARN b\n") == "INFO a / WARN b"
    assert error_summary("INFO a\nreal error\n") == "real error"
