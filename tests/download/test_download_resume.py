"""Resuming across restarts, SIGKILL and reboots; running out of disk."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dlfaults import Action, FaultServer, blob, downloader, leftovers, make_config, provider_of

from ota_daemon.clock import FakeClock
from ota_daemon.download.socket_transport import receiving
from ota_daemon.errors import NoSpace, TransientError

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from ota_daemon.config import DownloadConfig
from ota_daemon.download import Downloader, make_http_client
from ota_daemon.model import Asset

args = json.loads(sys.argv[1])

async def main():
    config = DownloadConfig(**args["config"])
    async with make_http_client(None) as http:
        async def url():
            return args["url"]
        await Downloader(config=config, http=http).to_file(url=url, asset=Asset(**args["asset"]), dest=Path(args["dest"]))

asyncio.run(main())
"""


def run_child(args: dict[str, object], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO)), json.dumps(args)], env={**os.environ, **(env or {})})


def wait_for_size(path: Path, size: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not reach {size} bytes")
        time.sleep(0.01)


def child_args(server: FaultServer, tmp_path: Path, size: int) -> dict[str, object]:
    asset = server.put("/a.img", blob(size))
    return {
        "url": server.url("/a.img"),
        "dest": str(tmp_path / "a.img"),
        "asset": asset.model_dump(by_alias=True),
        "config": {"chunk_size": "64k", "sync_interval": "1M", "free_space_margin": 0, "read_timeout": 5},
    }


def test_sigkill_mid_download_then_restart_refetches_nothing(server: FaultServer, tmp_path: Path) -> None:
    """A process SIGKILLed with 5 MiB on disk: the restarted one continues at 5 MiB (server byte count)."""
    size = 8 * MiB
    args = child_args(server, tmp_path, size)
    server.plan.append(Action("stall", after=5 * MiB))
    first = run_child(args)
    try:
        wait_for_size(tmp_path / "a.img.partial", 5 * MiB)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    server.release.set()
    second = run_child(args)
    assert second.wait(60) == 0
    assert (tmp_path / "a.img").read_bytes() == server.objects["/a.img"].data
    assert server.requests[1].headers["range"] == f"bytes={5 * MiB}-"
    assert server.bytes_sent - size <= MiB
    assert leftovers(tmp_path) == ["a.img"]


def test_sigkill_at_a_fault_point_then_restart_refetches_at_most_1_mib(server: FaultServer, tmp_path: Path) -> None:
    """The daemon's own fault point (download:<bytes>) kills the process mid-body; the restart
    fetches at most 1 MiB again, counted by the server."""
    size = 12 * MiB
    args = child_args(server, tmp_path, size)
    server.pace = 64 * MiB  # keep what is in flight small, as on a real link
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([f"download:{7 * MiB}"]))
    first = run_child(args, env={"OTA_DAEMON_FAULTS": str(faults)})
    assert first.wait(60) == -signal.SIGKILL
    assert json.loads(faults.read_text()) == []
    on_disk = (tmp_path / "a.img.partial").stat().st_size
    sent_before = server.bytes_sent  # includes what socket buffers held at the kill: lost in flight, not refetched
    server.pace = None
    second = run_child(args, env={"OTA_DAEMON_FAULTS": str(faults)})
    assert second.wait(60) == 0
    assert (tmp_path / "a.img").read_bytes() == server.objects["/a.img"].data
    resumed_at = int(server.requests[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert resumed_at >= 7 * MiB
    assert on_disk - resumed_at <= MiB  # of what was on disk, at most 1 MiB is fetched again
    assert server.bytes_sent - sent_before == size - resumed_at


async def interrupted(server: FaultServer, clock: FakeClock, tmp_path: Path, *, stall_at: int, size: int) -> None:
    """Download until the server stalls at ``stall_at``, then give up (the process "dies")."""
    server.plan.append(Action("stall", after=stall_at))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, read_timeout=0.2, max_retries=0) as dl:
        with pytest.raises(TransientError, match="stalled"):
            await dl.to_file(url=url, asset=server_asset(server, size), dest=tmp_path / "a.img")
    server.release.set()


def server_asset(server: FaultServer, size: int):  # type: ignore[no-untyped-def]
    return server.put("/a.img", server.objects["/a.img"].data) if "/a.img" in server.objects else server.put("/a.img", blob(size))


async def test_a_new_downloader_resumes_the_partial_file(server: FaultServer, clock: FakeClock, tmp_path: Path, boot_id: Path) -> None:
    """A later run (daemon restart, same boot) continues the partial file from its last byte."""
    size = 3 * MiB
    server.put("/a.img", blob(size))
    await interrupted(server, clock, tmp_path, stall_at=2 * MiB + 4096, size=size)
    assert (tmp_path / "a.img.partial").stat().st_size == 2 * MiB + 4096
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=server_asset(server, size), dest=tmp_path / "a.img")
    assert out.read_bytes() == server.objects["/a.img"].data
    assert server.requests[-1].headers["range"] == f"bytes={2 * MiB + 4096}-"


async def test_after_a_reboot_only_verified_checkpoints_are_kept(server: FaultServer, clock: FakeClock, tmp_path: Path, boot_id: Path) -> None:
    """After a reboot the partial file is checked against its saved hash states: bytes lost in the
    power cut (zeros here) cut it back to the last good checkpoint; the result verifies."""
    size = 3 * MiB
    server.put("/a.img", blob(size))
    await interrupted(server, clock, tmp_path, stall_at=2 * MiB + 100_000, size=size)
    meta = json.loads((tmp_path / "a.img.partial.json").read_text())
    marks = [at for at, _ in meta["checkpoints"]]
    assert marks and all(b - a >= 256_000 for a, b in zip([0, *marks], marks, strict=False))  # sync_interval 256k
    with open(tmp_path / "a.img.partial", "r+b") as fh:  # the page cache never reached the disk from here
        fh.seek(1_500_000)
        fh.write(b"\0" * 700_000)
    boot_id.write_text("boot-2\n")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=server_asset(server, size), dest=tmp_path / "a.img")
    assert out.read_bytes() == server.objects["/a.img"].data
    resumed_at = int(server.requests[-1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert resumed_at == max(at for at in marks if at <= 1_500_000)


async def test_after_a_reboot_the_unverifiable_tail_is_dropped(server: FaultServer, clock: FakeClock, tmp_path: Path, boot_id: Path) -> None:
    """Bytes after the last checkpoint cannot be checked after a reboot: the download goes on from it."""
    size = 2 * MiB
    server.put("/a.img", blob(size))
    await interrupted(server, clock, tmp_path, stall_at=MiB + 200_000, size=size)
    marks = [at for at, _ in json.loads((tmp_path / "a.img.partial.json").read_text())["checkpoints"]]
    boot_id.write_text("boot-2\n")
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=server_asset(server, size), dest=tmp_path / "a.img")
    assert out.read_bytes() == server.objects["/a.img"].data
    assert server.requests[-1].headers["range"] == f"bytes={max(marks)}-"


async def test_a_partial_file_of_another_version_is_discarded(server: FaultServer, clock: FakeClock, tmp_path: Path, boot_id: Path) -> None:
    """A partial file whose metadata pins another digest is never resumed."""
    size = 2 * MiB
    server.put("/a.img", blob(size))
    await interrupted(server, clock, tmp_path, stall_at=MiB, size=size)
    new = blob(size, seed=9)
    asset = server.put("/a.img", new)
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == new
    assert "range" not in server.requests[-1].headers


async def test_cancelling_a_download_keeps_the_partial_file_and_leaks_nothing(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """Cancellation (SIGTERM in the daemon) stops the receiving thread and keeps the partial file."""
    size = 2 * MiB
    asset = server.put("/a.img", blob(size))
    server.plan.append(Action("stall", after=MiB))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, read_timeout=30) as dl:
        task = asyncio.create_task(dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img"))
        await asyncio.to_thread(wait_for_size, tmp_path / "a.img.partial", MiB)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        if not receiving():
            break
        await asyncio.sleep(0.01)
    assert not receiving()
    assert (tmp_path / "a.img.partial").stat().st_size == MiB


# ---------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, mounted for the test (skips where mounting is not permitted)."""
    where = tmp_path / "small"
    where.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_not_enough_space_fails_before_downloading(server: FaultServer, clock: FakeClock, small_disk: Path) -> None:
    """Free space is checked first: the message names the directory and the numbers; no request."""
    asset = server.put("/a.img", blob(4 * MiB))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, free_space_margin="512k") as dl:
        with pytest.raises(NoSpace) as caught:
            await dl.to_file(url=url, asset=asset, dest=small_disk / "a.img")
    message = str(caught.value)
    assert f"not enough free space in {small_disk}" in message
    assert "3.0 MiB free" in message and "4.5 MiB needed" in message and "free_space_margin" in message
    assert server.requests == []


async def test_disk_full_mid_download_stops_with_a_clear_reason(server: FaultServer, clock: FakeClock, small_disk: Path) -> None:
    """The disk fills up during the download (someone else writes): a clear failure, no retry loop,
    the partial file kept for later."""
    asset = server.put("/a.img", blob(2 * MiB))
    filler = small_disk / "filler"
    server.plan.append(Action(before=lambda: filler.write_bytes(b"x" * (2 * MiB))))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        with pytest.raises(NoSpace, match=f"no space left in {small_disk}"):
            await dl.to_file(url=url, asset=asset, dest=small_disk / "a.img")
    assert len(server.requests) == 1 and clock.slept == []
    assert (small_disk / "a.img.partial").exists()
    filler.unlink()
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=small_disk / "a.img")
    assert out.read_bytes() == server.objects["/a.img"].data
    assert server.requests[-1].headers.get("range", "bytes=0-") != "bytes=0-"


def test_config_rejects_a_cap_below_the_floor() -> None:
    """max_rate below min_rate would cut every download as too slow: refused at load."""
    with pytest.raises(ValueError, match="below min_rate"):
        make_config(max_rate=100, min_rate=1000)


def dead_pid() -> int:
    """The pid of a process that has ended (what a killed writer's pid is to its successor)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_killed_writers_metadata_tmp_file_is_removed_by_the_next_download(server: FaultServer, clock: FakeClock, tmp_path: Path) -> None:
    """A ``.a.img.partial.json.<pid>.tmp`` of a process killed mid-checkpoint (planted here):
    the next download of the file removes it; only the image is left."""
    size = 2 * MiB
    server.put("/a.img", blob(size))
    await interrupted(server, clock, tmp_path, stall_at=MiB, size=size)
    stale = tmp_path / f".a.img.partial.json.{dead_pid()}.tmp"
    stale.write_text('{"schema": 1, "checkpoints": [')
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        await dl.to_file(url=url, asset=server_asset(server, size), dest=tmp_path / "a.img")
    assert leftovers(tmp_path) == ["a.img"]


def test_sigkill_during_the_metadata_write_then_restart_leaves_no_temporary_file(server: FaultServer, tmp_path: Path) -> None:
    """Killed (fault point ``write:a.img.partial.json``) between writing the metadata's
    temporary file and renaming it, on a resume: the next run finishes without refetching what
    it had, and no ``*.tmp`` is left in the cache."""
    size = 8 * MiB
    args = child_args(server, tmp_path, size)
    server.plan.append(Action("stall", after=5 * MiB))
    first = run_child(args)
    try:
        wait_for_size(tmp_path / "a.img.partial", 5 * MiB)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    server.release.set()
    faults = tmp_path.parent / f"{tmp_path.name}-faults.json"
    faults.write_text(json.dumps(["write:a.img.partial.json"]))
    second = run_child(args, env={"OTA_DAEMON_FAULTS": str(faults)})
    assert second.wait(60) == -signal.SIGKILL
    assert json.loads(faults.read_text()) == []
    assert [n for n in leftovers(tmp_path) if n.endswith(".tmp")], "the fault point left no temporary file"
    third = run_child(args)
    assert third.wait(60) == 0
    assert (tmp_path / "a.img").read_bytes() == server.objects["/a.img"].data
    assert server.bytes_sent - size <= MiB
    assert leftovers(tmp_path) == ["a.img"]
