"""The command line as a user runs it: subprocesses, exit codes, power cuts mid-update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.state import StateLock
from ota_daemon.testing import SimWorld, serve_directory


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ota_daemon", *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


def events(world: SimWorld) -> list[dict[str, Any]]:
    path = world.state_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_full_update_through_cli(world: SimWorld) -> None:
    """check installs and reboots, the next check commits, status shows it."""
    world.publish("1.1.0")
    config = str(world.toml())
    first = cli("--config", config, "check")
    assert first.returncode == 0, first.stderr
    assert "rebooting" in first.stdout
    second = cli("--config", config, "check")
    assert second.returncode == 0 and "completed" in second.stdout
    status = cli("--config", config, "status", "--json")
    doc = json.loads(status.stdout)
    assert doc["runningVersion"] == "1.1.0"
    assert doc["status"]["state"] == "completed"
    assert doc["slots"]["committed"] is True


def test_dry_run_json_exit_3(world: SimWorld) -> None:
    """check --dry-run --json exits 3 and prints the pinned target."""
    published = world.publish("1.1.0")
    result = cli("--config", str(world.toml()), "check", "--dry-run", "--json")
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"] == "update_available"
    assert doc["target"]["versionId"] == published.version_id
    assert doc["target"]["version"] == "1.1.0"
    assert doc["target"]["image"]["digest"].startswith("sha256_")


def test_up_to_date_exit_0(world: SimWorld) -> None:
    """Nothing to do: exit 0."""
    result = cli("--config", str(world.toml()), "check", "--dry-run")
    assert result.returncode == 0 and "up_to_date" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[poll]\ninterval = "soon"\n', "key 'poll.interval'"),
        ("[hub]\nnope = 1\n", "unknown key 'hub.nope'"),
        ("not = [toml", "not valid TOML"),
    ],
)
def test_bad_config_exit_2_without_traceback(tmp_path: Path, content: str, expected: str) -> None:
    """A bad config exits 2 with one line naming the file and key; never a traceback."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    result = cli("--config", str(cfg), "check")
    assert result.returncode == 2
    assert expected in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_error_exit_2() -> None:
    """An unknown command is a usage error, exit 2."""
    assert cli("frobnicate").returncode == 2


def test_lock_names_holder(world: SimWorld) -> None:
    """A second caller gets a clear message naming the holder of the lock."""
    world.state_dir.mkdir(parents=True, exist_ok=True)
    with StateLock(world.state_dir, "install"):
        result = cli("--config", str(world.toml()), "check")
    assert result.returncode == 1
    assert f"pid {os.getpid()} ('ota-daemon install')" in result.stderr


def _kill_then_converge(world: SimWorld, point: str, url: str) -> list[subprocess.CompletedProcess[str]]:
    """Run passes (the fault armed in all of them) until the device is settled; one is killed."""
    faults = world.root / "faults.json"
    faults.write_text(json.dumps([point]))
    config = str(world.toml(hub={"url": url}))
    runs: list[subprocess.CompletedProcess[str]] = []
    for _ in range(6):
        runs.append(cli("--config", config, "check", env={"OTA_DAEMON_FAULTS": str(faults)}))
        if runs[-1].returncode == 0 and ("completed" in runs[-1].stdout or "up_to_date" in runs[-1].stdout):
            break
    assert [r.returncode for r in runs].count(-9) == 1, [r.returncode for r in runs]  # killed once, at the point
    assert json.loads(faults.read_text()) == []
    return runs


@pytest.mark.parametrize("point", ["download:1", "download:1048576", "journal:downloading", "install:30", "journal:installing", "journal:rebooting", "journal:committing"])
def test_sigkill_mid_update_converges(world: SimWorld, point: str) -> None:
    """SIGKILL at a point of the update, then more passes: 1.1.0 ends committed, installed and
    reported completed exactly once, never a half state."""
    world.publish("1.1.0", size=3 << 20)
    with serve_directory(world.repo_dir) as server:
        runs = _kill_then_converge(world, point, server.url)
    assert "completed" in runs[-1].stdout or "up_to_date" in runs[-1].stdout, [r.stdout + r.stderr for r in runs]
    info = world.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0"
    assert world.device.slot_path(info.booted).read_bytes() == world.image("1.1.0", size=3 << 20).read_bytes()
    kinds = [e["attributes"]["event"] for e in events(world)]
    assert kinds.count("completed") == 1
    # never a second install of a completed attempt
    attempt_ids = {e["attributes"].get("attemptId") for e in events(world) if e["attributes"]["event"] == "completed"}
    assert len(attempt_ids) == 1


def test_sigkill_after_commit_reports_once(world: SimWorld) -> None:
    """Killed right after the commit reached the journal: the completion is reported once, no reinstall."""
    world.publish("1.1.0")
    config = str(world.toml())
    assert cli("--config", config, "check").returncode == 0
    faults = world.root / "faults.json"
    faults.write_text(json.dumps(["journal:idle"]))
    killed = cli("--config", config, "check", env={"OTA_DAEMON_FAULTS": str(faults)})
    assert killed.returncode == -9
    again = cli("--config", config, "check")
    assert again.returncode == 0
    kinds = [e["attributes"]["event"] for e in events(world)]
    assert kinds.count("installing") == 1
    assert world.device.info().committed


def test_install_local_file(world: SimWorld) -> None:
    """install FILE: the USB-stick update, with the same journal and reboot handling."""
    image = world.image("2.0.0")
    config = str(world.toml())
    result = cli("--config", config, "install", str(image))
    assert result.returncode == 0, result.stderr
    assert cli("--config", config, "check", "--dry-run").returncode in (0, 4)
    commit = cli("--config", config, "commit")
    assert commit.returncode == 0, commit.stderr
    info = world.device.info()
    assert info.committed and info.version_of(info.booted) == "2.0.0"


def test_install_wrong_sha_refused(world: SimWorld) -> None:
    """install FILE --sha256 with the wrong digest installs nothing."""
    image = world.image("2.0.0")
    result = cli("--config", str(world.toml()), "install", str(image), "--sha256", "0" * 64)
    assert result.returncode == 1
    assert world.device.slot_path("b").read_bytes() == b""


def test_demo() -> None:
    """The demo runs the whole cycle and ends with 1.1.0 committed."""
    result = cli("demo")
    assert result.returncode == 0, result.stderr
    assert "1.1.0 committed" in result.stdout
    assert "state:            completed" in result.stdout


def test_inhibit_holds_a_lease_while_the_command_runs(tmp_path: Path) -> None:
    """ota-daemon inhibit writes a lease for the command's lifetime and removes it after."""
    leases = tmp_path / "inhibit.d"
    seen = tmp_path / "seen"
    result = cli("inhibit", "--dir", str(leases), "--reason", "recording", "--what", "reboot", "--", "sh", "-c", f"cat {leases}/*.json > {seen}; exit 7")
    assert result.returncode == 7
    lease = json.loads(seen.read_text())
    assert lease["reason"] == "recording" and lease["what"] == ["reboot"]
    assert list(leases.glob("*.json")) == []


def test_world_writable_config_is_reported(world: SimWorld) -> None:
    """A configuration file anyone may write is a way to root: the daemon says so in an event."""
    config = world.toml()
    config.chmod(0o666)
    assert cli("--config", str(config), "check").returncode == 0
    warnings = [e["body"] for e in events(world) if e["attributes"]["event"] == "warning"]
    assert any("writable" in w for w in warnings), warnings
