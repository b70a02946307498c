"""Convergence on the real RAUC where its semantics are the point (issue 12, defects 1-3 and 5).

RAUC arms the new slot while installing (it becomes primary), cannot tell a trial boot from a
committed one, and makes its target unbootable before writing. The engine and the guard must
act on exactly that: after a cut between RAUC's completion and the journal's ``rebooting``
the next boot runs the new slot, and the pass commits it; a bundle RAUC refuses leaves the
committed fallback good; a trial whose daemon never commits is rebooted by the guard, which
marks it bad first; a local bundle's version comes from its manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ota_daemon import guard
from ota_daemon.app import open_engine
from ota_daemon.config import build_config
from ota_daemon.engine import Result
from ota_daemon.installers import get_installer
from ota_daemon.repo import publish
from ota_daemon.state import Journal, Phase
from ota_daemon.testing import serve_directory, to_toml
from tests.backend_cycle import PASSING_HEALTH, BackendCycle


def _tables(rauc_device: Any, url: str) -> dict[str, Any]:
    root: Path = rauc_device.root
    tables = rauc_device.config_data()
    tables["system"] = {"name": "otatest", "build_info": str(root / "none.json"), "os_release": str(root / "none")}
    tables["hub"] = {"kind": "static", "url": url, "path": "fleet/system/stable", "allow_insecure": True}
    tables["health"] = {"checks": [{"kind": "command", "command": ["true"]}]}
    tables["policy"] = {"inhibit_dir": str(root / "inhibit.d")}
    tables["hooks"] = {"dir": str(root / "hooks.d")}
    tables["guard"] = {"timeout": "10m", "reboot_command": ["sh", "-c", f"echo reboot >> '{rauc_device.reboot_log}'"]}
    return tables


def _check(config: Path, faults: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    if faults is not None:
        env["OTA_DAEMON_FAULTS"] = str(faults)
    return subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(config), "check"], capture_output=True, text=True, env=env, timeout=180, check=False)


async def _slots(rauc_device: Any) -> Any:
    installer = get_installer("rauc", config=rauc_device.config)
    try:
        return await installer.slot_info()
    finally:
        await installer.aclose()


def _events(rauc_device: Any) -> list[str]:
    path = rauc_device.root / "state" / "events.jsonl"
    return [json.loads(x)["attributes"]["event"] for x in path.read_text().splitlines()]


def _publish_v2(rauc_device: Any) -> Path:
    """The repository with ``stable`` -> 2.0.0, a bundle for this device."""
    repo: Path = rauc_device.root / "repository"
    publish(repo, "fleet/system/stable", version="2.0.0", files=[("otatest.raucb", rauc_device.build_bundle("2.0.0"))])
    return repo


def _killed_at(config: Path, point: str) -> None:
    """One ``check`` that the fault ``point`` kills (SIGKILL, as the watchdog or OOM would)."""
    faults = config.parent / "faults.json"
    faults.write_text(json.dumps([point]))
    killed = _check(config, faults)
    assert killed.returncode == -9, (killed.stdout, killed.stderr[-2000:])


def _guard(config: Path) -> dict[str, Any] | None:
    """One run of the guard (its real code and the real ``rauc`` CLI), an hour after boot;
    returns what it recorded (``guard.json``), if anything."""
    settings = guard.load_settings(config, env={})
    env = guard.Env(uptime=lambda: 3600.0, now=lambda: 2_000_000_000.0, sleep=lambda s: None, log=lambda m, level: None)
    assert guard.run(settings, env) == 0
    record = config.parent / "state" / "guard.json"
    return dict(json.loads(record.read_text())) if record.exists() else None


def _guard_rebooted_the_trial(config: Path, rauc_device: Any) -> None:
    record = _guard(config)
    assert record is not None and record["action"] == "reboot" and "on trial" in record["reason"], record
    assert rauc_device.bootstate()["state_B"] == "bad"


@pytest.mark.parametrize("point", ["install:50", "after:installer.install"])
async def test_cut_after_rauc_completed_before_journal_then_reboot(rauc_device: Any, point: str) -> None:
    """The daemon is killed while RAUC copies (RAUC finishes on its own) or right after RAUC's
    Completed, before ``rebooting`` is journaled; the device reboots before the next pass. It
    runs the new slot, the pass commits it, the old slot stays good, nothing is installed twice."""
    root: Path = rauc_device.root
    with serve_directory(_publish_v2(rauc_device)) as server:
        config = root / "config.toml"
        config.write_text(to_toml(_tables(rauc_device, server.url)))
        _killed_at(config, point)
        assert Journal(root / "state").load().phase is Phase.INSTALLING
        installed = await _slots(rauc_device)  # waits while RAUC is still installing
        assert installed.pending == "rootfs.1" and installed.version_of("rootfs.1") == "2.0.0", installed
        assert await rauc_device.reboot() == "B"  # the power comes back: RAUC armed B
        done = _check(config)
        assert done.returncode == 0 and "completed" in done.stdout, (done.stdout, done.stderr[-2000:])
        again = _check(config)
        assert "up_to_date" in again.stdout, again.stdout
    info = await _slots(rauc_device)
    assert info.booted == info.primary == "rootfs.1" and info.version_of("rootfs.1") == "2.0.0"
    assert rauc_device.bootstate()["state_B"] == "good" and rauc_device.bootstate()["state_A"] == "good"
    kinds = _events(rauc_device)
    assert kinds.count("completed") == 1 and kinds.count("rollback") == 0, kinds
    assert kinds.count("installing") == 1, kinds  # not installed a second time
    assert await rauc_device.reboot() == "B"  # and it stays


async def test_refused_bundle_keeps_the_fallback_good(rauc_device: Any) -> None:
    """1.0.0 -> 2.0.0 committed; 3.0.0 built for another board is refused by RAUC before it
    writes: the slot holding 1.0.0 (the fallback) stays good and bootable."""
    cycle = BackendCycle(
        root=rauc_device.root,
        device_tables=rauc_device.config_data(),
        system="otatest",
        ext="raucb",
        build=lambda version: rauc_device.build_bundle(version, compatible="other-board" if version == "3.0.0" else None),
        reboot=rauc_device.reboot_if_requested,
    )
    cycle.repo.mkdir(parents=True, exist_ok=True)
    with serve_directory(cycle.repo) as server:
        cycle.url = server.url
        cycle.publish("2.0.0")
        assert (await cycle.run_pass()).result is Result.REBOOTING
        await cycle.reboot()
        assert (await cycle.run_pass()).result is Result.COMPLETED
        cycle.publish("3.0.0")
        refused = await cycle.run_pass()
        assert refused.result is Result.FAILED and "compatible" in refused.message.lower(), refused
    state = rauc_device.bootstate()
    assert state["state_A"] == "good" and state["primary"] == "B", state
    info = await _slots(rauc_device)
    assert info.slots["rootfs.0"].bootable and info.version_of("rootfs.0") == "1.0.0", info
    assert rauc_device.slot_bytes("A") == rauc_device.payload("1.0.0")
    # the fallback really boots: fail B, and A comes up
    assert await rauc_device.reboot(boot_fails=True) == "A"


async def test_guard_reboots_a_stuck_rauc_trial(rauc_device: Any) -> None:
    """After the reboot into 2.0.0 the daemon never runs: RAUC shows booted == primary, yet the
    journal holds an uncommitted trial. The guard (its real code, the real ``rauc`` CLI) marks
    the slot bad and reboots; A boots, and the daemon reports the rollback with the guard's reason."""
    root: Path = rauc_device.root
    with serve_directory(_publish_v2(rauc_device)) as server:
        config_path = root / "config.toml"
        config_path.write_text(to_toml(_tables(rauc_device, server.url)))
        first = _check(config_path)
        assert "rebooting" in first.stdout, (first.stdout, first.stderr[-2000:])
        assert await rauc_device.reboot_if_requested() == "B"
        # the new system's daemon never starts; guard.timeout later the guard looks
        _guard_rebooted_the_trial(config_path, rauc_device)
        assert await rauc_device.reboot_if_requested() == "A"
        # the guard's timer fires again in this boot before the daemon's pass: A runs committed
        # (B is still primary but marked bad, as this custom bootloader backend reports it);
        # nothing to roll back (it used to mark A bad too: no good slot left)
        before = (root / "state" / "guard.json").read_text()
        _guard(config_path)
        assert (root / "state" / "guard.json").read_text() == before
        assert rauc_device.bootstate()["state_A"] == "good", rauc_device.bootstate()
        assert await rauc_device.reboot_if_requested() is None
        report = _check(config_path)
        assert "rollback" in report.stdout and "ota-daemon-guard" in report.stdout, report.stdout
    info = await _slots(rauc_device)
    assert info.booted == "rootfs.0" and info.version_of("rootfs.0") == "1.0.0"
    assert _events(rauc_device).count("rollback") == 1


async def test_guard_reboots_a_trial_the_journal_still_calls_installing(rauc_device: Any) -> None:
    """The daemon is killed right after RAUC's Completed (the systemd watchdog, an OOM kill),
    before ``rebooting`` is journaled; the device reboots into B, which RAUC armed, and B's
    daemon never starts. The journal still says ``installing``: the guard took that for no
    trial and left the device on B for good. B booted while the attempt started from A, so it
    is the attempt's trial: the guard marks it bad and reboots, A boots, and the daemon reports
    one rollback with the guard's reason instead of installing 2.0.0 again."""
    root: Path = rauc_device.root
    with serve_directory(_publish_v2(rauc_device)) as server:
        config_path = root / "config.toml"
        config_path.write_text(to_toml(_tables(rauc_device, server.url)))
        _killed_at(config_path, "after:installer.install")
        assert Journal(root / "state").load().phase is Phase.INSTALLING
        assert await rauc_device.reboot() == "B"  # RAUC armed B; its daemon never starts
        _guard_rebooted_the_trial(config_path, rauc_device)
        assert await rauc_device.reboot_if_requested() == "A"
        report = _check(config_path)
        assert "rollback" in report.stdout and "ota-daemon-guard" in report.stdout, (report.stdout, report.stderr[-2000:])
        again = _check(config_path)
        assert "blocked" in again.stdout and "quarantined" in again.stdout, again.stdout
    info = await _slots(rauc_device)
    assert info.booted == "rootfs.0" and info.version_of("rootfs.0") == "1.0.0"
    assert rauc_device.bootstate()["state_A"] == "good", rauc_device.bootstate()
    kinds = _events(rauc_device)
    assert kinds.count("rollback") == 1 and kinds.count("installing") == 1, kinds


async def test_cut_after_rauc_mark_good_before_journal_the_guard_leaves_it(rauc_device: Any) -> None:
    """The gate passed and RAUC marked 2.0.0 good; the daemon dies before ``committed`` is
    journaled and the device reboots into B. The guard's timer fires before the daemon's next
    pass: RAUC cannot show whether B was committed, the journal shows its gate passed, so the
    guard leaves B alone (it used to mark the committed B bad and reboot into A); the next pass
    finishes the commit and reports one completion."""
    root: Path = rauc_device.root
    with serve_directory(_publish_v2(rauc_device)) as server:
        config_path = root / "config.toml"
        config_path.write_text(to_toml(_tables(rauc_device, server.url)))
        first = _check(config_path)
        assert "rebooting" in first.stdout, (first.stdout, first.stderr[-2000:])
        assert await rauc_device.reboot_if_requested() == "B"
        _killed_at(config_path, "before:journal:committed")
        assert Journal(root / "state").load().phase is Phase.COMMITTING
        assert await rauc_device.reboot() == "B"
        assert _guard(config_path) is None
        assert rauc_device.bootstate()["state_B"] == "good", rauc_device.bootstate()
        done = _check(config_path)
        assert done.returncode == 0 and "completed" in done.stdout, (done.stdout, done.stderr[-2000:])
    info = await _slots(rauc_device)
    assert info.booted == info.primary == "rootfs.1" and info.version_of("rootfs.1") == "2.0.0"
    kinds = _events(rauc_device)
    assert kinds.count("completed") == 1 and kinds.count("rollback") == 0, kinds
    assert await rauc_device.reboot() == "B"


async def test_local_bundle_version_comes_from_its_manifest(rauc_device: Any) -> None:
    """``ota-daemon install FILE.raucb`` without --image-version takes 2.0.0 from the manifest
    and commits after the reboot (it used to expect ``local-<digest>`` and roll back)."""
    bundle = rauc_device.build_bundle("2.0.0")
    tables = _tables(rauc_device, "http://127.0.0.1:9/")
    tables["health"] = PASSING_HEALTH
    config = build_config(tables, source="test", env={})
    async with open_engine(config) as engine:
        installed = await engine.install_local(str(bundle))
    assert installed.result is Result.REBOOTING and installed.target_version == "2.0.0", installed
    assert await rauc_device.reboot_if_requested() == "B"
    async with open_engine(config) as engine:
        done = await engine.reconcile()  # the next pass, after the reboot
    assert done.result is Result.COMPLETED, done
    info = await _slots(rauc_device)
    assert info.booted == "rootfs.1" and info.version_of("rootfs.1") == "2.0.0"
