"""File safety of what the daemon writes as root: private directories, no writing through
links planted in the state directory, and a warning for a configuration file others may write."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config, load_config
from ota_daemon.engine import Result
from ota_daemon.state import Journal, Phase, atomic_write, ensure_private_dir
from ota_daemon.telemetry import Event, Telemetry
from ota_daemon.testing import SimWorld, serve_directory

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (chown to another user, files of other owners)"
)
SECRET = b"root:secret-hash:19000::::::\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, the worst a unit file or shell could leave the daemon with."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the state directory that a planted link points at."""
    path = tmp_path / "victim" / "shadow"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


# --------------------------------------------------------------------------- private directories


def test_ensure_private_dir_creates_0700_and_tightens_an_existing_dir(
    tmp_path: Path, open_umask: None
) -> None:
    """A new state directory is 0700 even with umask 0; an existing 0755 one becomes 0700."""
    fresh = ensure_private_dir(tmp_path / "a" / "state")
    assert mode(fresh) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    ensure_private_dir(loose)
    assert mode(loose) == 0o700


async def test_journal_and_telemetry_create_private_state(tmp_path: Path, open_umask: None) -> None:
    """Journal.load and Telemetry create the state directory 0700; the journal, events.jsonl
    and spool.jsonl are 0600 (status.json is 0644 on purpose, inside the private directory)."""
    journal = Journal(tmp_path / "j")
    journal.load()
    journal.save("outcome")
    assert mode(journal.dir) == 0o700 and mode(journal.path) == 0o600

    class Hub:
        kind = "h"

        async def publish_events(self, events: object) -> None:
            raise __import__("ota_daemon.errors", fromlist=["TransientError"]).TransientError(
                "away"
            )

        async def publish_status(self, status: object) -> None:
            return None

    telemetry = Telemetry(tmp_path / "t", clock=FakeClock(), hub=Hub(), deliver=True)  # type: ignore[arg-type]
    await telemetry.emit(Event.WARNING)
    await telemetry.update_status(state="idle")
    assert mode(telemetry.dir) == 0o700
    assert mode(telemetry.events_path) == 0o600 and mode(telemetry.spool_path) == 0o600
    assert mode(telemetry.status_path) == 0o644


async def test_a_whole_pass_leaves_state_cache_and_hub_cache_private(
    tmp_path: Path, open_umask: None
) -> None:
    """An update over HTTP downloaded to the cache (download.mode = file), with umask 0: the
    state directory, the download cache and the static hub's ETag cache are 0700 and every
    file the daemon wrote in them is private (0600), except status.json (0644)."""
    world = SimWorld(tmp_path / "world")
    world.create_device("1.0.0")
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        config = build_config(
            world.tables(url=server.url, download={"mode": "file"}), source="test", env={}
        )
        async with open_engine(config, clock=FakeClock()) as engine:
            result = await engine.reconcile()
    assert result.result is Result.REBOOTING
    state = world.state_dir
    assert mode(state) == 0o700
    for directory in (state / "cache", state / "hub-cache"):
        assert directory.is_dir() and mode(directory) == 0o700, directory
    for path in state.rglob("*"):
        if path.is_file() and path.name != "status.json":
            assert mode(path) & 0o077 == 0, f"{path} is {mode(path):04o}"


# --------------------------------------------------------------------------- planted links


def test_journal_save_does_not_write_through_a_link_at_its_temp_name(
    tmp_path: Path, victim: Path
) -> None:
    """A symbolic link planted at journal.json's temp name (.journal.json.<pid>.tmp): save()
    replaces the link with a new file; the file it pointed at is not written."""
    journal = Journal(tmp_path / "state")
    journal.load()
    tmp = journal.path.with_name(f".journal.json.{os.getpid()}.tmp")
    tmp.symlink_to(victim)
    journal.transition(Phase.DOWNLOADING)
    assert victim.read_bytes() == SECRET
    assert (
        not journal.path.is_symlink()
        and json.loads(journal.path.read_text())["phase"] == "downloading"
    )
    assert not os.path.lexists(tmp)


def test_journal_save_does_not_write_through_a_hard_link_at_its_temp_name(
    tmp_path: Path, victim: Path
) -> None:
    """A hard link planted at the temp name (same file system): the temp file is always a new
    file (O_EXCL), so the linked file keeps its bytes (O_TRUNC used to empty and overwrite it)."""
    journal = Journal(tmp_path / "state")
    journal.load()
    os.link(victim, journal.path.with_name(f".journal.json.{os.getpid()}.tmp"))
    journal.save("outcome")
    assert victim.read_bytes() == SECRET


def test_journal_saved_over_a_link_replaces_the_link(tmp_path: Path, victim: Path) -> None:
    """journal.json itself is a symbolic link: load() moves it aside without reading through
    it, save() writes a regular journal.json; the target is untouched."""
    journal = Journal(tmp_path / "state")
    journal.dir.mkdir(mode=0o700)
    journal.path.symlink_to(victim)
    journal.load()
    assert journal.recovered_from is not None
    journal.save("outcome")
    assert victim.read_bytes() == SECRET and not journal.path.is_symlink()


@pytest.mark.parametrize("name", ["events.jsonl", "spool.jsonl"])
async def test_telemetry_does_not_append_through_a_planted_link(
    tmp_path: Path, victim: Path, name: str
) -> None:
    """A symbolic link planted at events.jsonl or spool.jsonl: emit() does not write the file
    it points at; the link is replaced by a private regular file holding the event."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / name).symlink_to(victim)

    class Away:
        kind = "away"

        async def publish_events(self, events: object) -> None:
            from ota_daemon.errors import TransientError

            raise TransientError("away")

        async def publish_status(self, status: object) -> None:
            return None

    telemetry = Telemetry(state, clock=FakeClock(), hub=Away(), deliver=True)  # type: ignore[arg-type]
    record = await telemetry.emit(Event.WARNING)
    assert victim.read_bytes() == SECRET
    path = state / name
    assert not path.is_symlink() and mode(path) == 0o600
    assert json.loads(path.read_bytes().splitlines()[-1]) == record


async def test_telemetry_does_not_block_on_a_planted_fifo(tmp_path: Path) -> None:
    """A FIFO at events.jsonl or status.json (opening one blocks until a peer appears): the
    daemon starts and records events without hanging."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "events.jsonl")
    os.mkfifo(state / "status.json")
    async with asyncio.timeout(5):
        telemetry = Telemetry(state, clock=FakeClock())
        await telemetry.emit(Event.CHECKING)
        await telemetry.update_status(state="idle")
    assert stat.S_ISREG((state / "events.jsonl").lstat().st_mode)
    assert telemetry.recent_events()[-1]["attributes"]["event"] == "checking"


def test_status_file_is_written_without_following_a_link_at_its_temp_name(
    tmp_path: Path, victim: Path
) -> None:
    """atomic_write (status.json, caches, hub status) never writes through a link at its temp name."""
    target = tmp_path / "status.json"
    target.with_name(f".status.json.{os.getpid()}.tmp").symlink_to(victim)
    atomic_write(target, b"{}")
    assert victim.read_bytes() == SECRET and target.read_bytes() == b"{}"


# --------------------------------------------------------------------------- config file warnings


def write_config(path: Path, file_mode: int) -> Path:
    path.write_text('[poll]\ninterval = "1h"\n')
    path.chmod(file_mode)
    return path


def test_private_config_file_has_no_warnings(tmp_path: Path) -> None:
    """A config file only its owner may write: load_config gives no warnings."""
    path = write_config(tmp_path / "config.toml", 0o644)
    assert load_config(path, env={}).warnings == []


def test_world_writable_config_file_is_warned_about(tmp_path: Path) -> None:
    """A world-writable config file (mode 0666) loads, with a warning naming the file, the
    mode and the fix; the warning is not a configuration key."""
    path = write_config(tmp_path / "config.toml", 0o666)
    config = load_config(path, env={})
    assert config.poll.interval == 3600
    assert (
        len(config.warnings) == 1
        and str(path) in config.warnings[0]
        and "0666" in config.warnings[0]
    )
    assert "chmod o-w" in config.warnings[0]
    assert "warnings" not in config.redacted() and "_load_warnings" not in config.model_dump()


@needs_root
def test_group_writable_config_file_of_another_group_is_warned_about(tmp_path: Path) -> None:
    """Group-writable (0664) is fine for group root, a warning for any other group."""
    path = write_config(tmp_path / "config.toml", 0o664)
    os.chown(path, 0, 0)
    assert load_config(path, env={}).warnings == []
    os.chown(path, 0, 4242)
    assert any("group 4242" in w for w in load_config(path, env={}).warnings)


@needs_root
def test_config_file_owned_by_another_user_is_warned_about(tmp_path: Path) -> None:
    """A config file owned by another user (who may chmod and rewrite it) is warned about."""
    path = write_config(tmp_path / "config.toml", 0o644)
    os.chown(path, 4242, 0)
    assert any("uid 4242" in w for w in load_config(path, env={}).warnings)


def test_config_in_a_world_writable_directory_is_warned_about(tmp_path: Path) -> None:
    """A config file in a directory anyone may write (and not sticky): anyone may replace it."""
    directory = tmp_path / "etc"
    directory.mkdir()
    directory.chmod(0o777)
    path = write_config(directory / "config.toml", 0o644)
    assert any("replace config.toml" in w for w in load_config(path, env={}).warnings)
    directory.chmod(0o1777)
    assert load_config(path, env={}).warnings == []
