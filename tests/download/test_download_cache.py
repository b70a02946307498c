"""The download cache holds at most the pinned target's image and its partial download.

Whole passes of the real engine on the simulated device, the repository served over a real
loopback HTTP server (a ``file://`` repository is read in place and never cached).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import PassResult, Result
from ota_daemon.testing import SimWorld, serve_directory
from tests.conftest import make_config

KiB = 1 << 10


def cached(world: SimWorld) -> list[str]:
    cache = world.state_dir / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def digest_name(world: SimWorld, version: str) -> str:
    assets = world.versions[version].document["assets"]
    return next(f"{a['digest']}.img" for a in assets if a["filename"] == f"{world.system}.img")


async def run_pass(world: SimWorld, clock: FakeClock, url: str, **overrides: Any) -> PassResult:
    download = {"mode": "file", **overrides.pop("download", {})}
    async with open_engine(make_config(world, hub={"url": url}, download=download, **overrides), clock=clock) as engine:
        return await engine.reconcile()


def closed_window(clock: FakeClock) -> str:
    """An install window that is not open at the fake clock's time."""
    hour = datetime.fromtimestamp(clock.now()).hour
    return f"{(hour + 3) % 24:02d}:00-{(hour + 4) % 24:02d}:00"


async def test_an_image_the_installer_refuses_is_removed_at_once(world: SimWorld, clock: FakeClock) -> None:
    """The installer refuses the downloaded image (built for another board): the pass fails
    and the cache is empty."""
    world.publish("1.1.0", system="other-board", build_info=False)
    with serve_directory(world.repo_dir) as server:
        result = await run_pass(world, clock, server.url)
    assert result.result is Result.FAILED and "built for system 'other-board'" in result.message
    assert cached(world) == []


async def test_a_predownloaded_image_goes_when_the_tag_moves(world: SimWorld, clock: FakeClock) -> None:
    """Outside the install window the target is downloaded ahead; the tag moves on (1.2.0),
    then back to the running version: the cache follows the pinned target each time."""
    policy = {"install_window": closed_window(clock), "inhibit_dir": str(world.root / "inhibit.d")}
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        assert (await run_pass(world, clock, server.url, policy=policy)).result is Result.BLOCKED
        assert cached(world) == [digest_name(world, "1.1.0")]
        world.publish("1.2.0")
        assert (await run_pass(world, clock, server.url, policy=policy)).result is Result.BLOCKED
        assert cached(world) == [digest_name(world, "1.2.0")]
        world.publish("1.0.0")  # the tag back at the running version
        assert (await run_pass(world, clock, server.url, policy=policy)).result is Result.UP_TO_DATE
        assert cached(world) == []


async def test_a_partial_download_of_another_version_goes_before_the_next_download(world: SimWorld, clock: FakeClock) -> None:
    """Leftovers of another version (an image, a partial download, its metadata) are removed
    before the pinned target's download starts; unknown files too."""
    cache = world.state_dir / "cache"
    cache.mkdir(parents=True)
    stale = ["0" * 64 + ".img", "1" * 64 + ".img.partial", "1" * 64 + ".img.partial.json", "junk"]
    for name in stale:
        (cache / name).write_bytes(b"x" * 1000)
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        result = await run_pass(world, clock, server.url)
    assert result.result is Result.REBOOTING, result.message
    assert cached(world) == [digest_name(world, "1.1.0")]


@pytest.fixture
def one_image_cache(tmp_path: Path) -> Iterator[Path]:
    """A 768 KiB tmpfs for the cache: room for one 512 KiB image, not two (skips where mounting
    is not permitted)."""
    where = tmp_path / "small-cache"
    where.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_cache_sized_for_one_image_never_wedges(world: SimWorld, clock: FakeClock, one_image_cache: Path) -> None:
    """A refused image no longer stays: the next version fits in a cache with room for one
    image (it used to end ``blocked: not enough free space`` on every pass, ``retry`` or not)."""
    download = {"cache_dir": str(one_image_cache), "free_space_margin": 0}
    world.publish("1.1.0", system="other-board", build_info=False, size=512 * KiB)
    with serve_directory(world.repo_dir) as server:
        first = await run_pass(world, clock, server.url, download=download)
        assert first.result is Result.FAILED and "other-board" in first.message
        world.publish("1.2.0", size=512 * KiB)
        second = await run_pass(world, clock, server.url, download=download)
        assert second.result is Result.REBOOTING, second.message
        assert (await run_pass(world, clock, server.url, download=download)).result is Result.COMPLETED
        assert list(one_image_cache.iterdir()) == []


async def test_a_dry_run_leaves_the_cache_alone(world: SimWorld, clock: FakeClock) -> None:
    """``check --dry-run`` decides but removes nothing, not even another version's image."""
    cache = world.state_dir / "cache"
    cache.mkdir(parents=True)
    (cache / ("0" * 64 + ".img")).write_bytes(b"x")
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        async with open_engine(make_config(world, hub={"url": server.url}, download={"mode": "file"}), clock=clock) as engine:
            result = await engine.reconcile(dry_run=True)
        assert result.result is Result.UPDATE_AVAILABLE
        world.publish("1.0.0")  # nothing to install
        async with open_engine(make_config(world, hub={"url": server.url}, download={"mode": "file"}), clock=clock) as engine:
            result = await engine.reconcile(dry_run=True)
        assert result.result is Result.UP_TO_DATE
    assert cached(world) == ["0" * 64 + ".img"]
