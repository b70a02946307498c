"""No temporary file outlives a pass: what a killed writer left is removed by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import Result
from ota_daemon.tempfiles import sweep_temporaries
from ota_daemon.testing import SimWorld
from tests.conftest import make_config


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def tmp_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


async def test_a_pass_removes_what_killed_writers_left_everywhere_the_daemon_writes(world: SimWorld, clock: FakeClock, sleeper: subprocess.Popen[bytes]) -> None:
    """Temporary files of the journal, status, spool, hub ETag cache, build-info cache, download
    metadata, left by a killed process, are gone after the next pass;
    a live writer's file (the guard, running now) is left alone."""
    pid = dead_pid()
    state = world.state_dir
    (state / "hub-cache").mkdir(parents=True)
    (state / "cache").mkdir()
    planted = [
        state / f".journal.json.{pid}.tmp",
        state / f".status.json.{pid}.tmp",
        state / f".hub-status.json.{pid}.tmp",
        state / f".spool.jsonl.{pid}.tmp",
        state / f".build-info-cache.json.{pid}.tmp",
        state / "hub-cache" / f".demo__stable.json.{pid}.tmp",
        state / "cache" / f".0123abcd.img.partial.json.{pid}.tmp",
    ]
    for path in planted:
        path.write_text("{")
    own_old = state / f".events.jsonl.{os.getpid()}.tmp"  # this pid, but from before this process started
    own_old.write_text("{")
    os.utime(own_old, (86400, 86400))
    live = state / f".guard.json.{sleeper.pid}.tmp"
    live.write_text("{")
    async with open_engine(make_config(world), clock=clock) as engine:
        result = await engine.reconcile()
    assert result.result is Result.UP_TO_DATE
    assert tmp_names(world.root) == [str(live.relative_to(world.root))]


def test_a_reused_pid_does_not_protect_a_stale_file(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A file older than the running process that now has its pid is stale (pid reuse after a
    reboot); one written while that process ran is kept."""
    stale = tmp_path / f".journal.json.{sleeper.pid}.tmp"
    stale.write_text("{")
    os.utime(stale, (1000, 1000))
    fresh = tmp_path / f".status.json.{sleeper.pid}.tmp"
    fresh.write_text("{")
    other = tmp_path / "journal.json.tmp"  # not an atomic write's name: not ours to remove
    other.write_text("{")
    assert sweep_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])
