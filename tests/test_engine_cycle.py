"""Whole update cycles on the simulated device, in-process, with the real engine and static hub."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import PassResult, Result
from ota_daemon.state import Journal, Phase
from ota_daemon.testing import SimWorld, serve_directory
from tests.conftest import make_config


async def run_pass(world: SimWorld, clock: FakeClock, *, dry_run: bool = False, **overrides: Any) -> PassResult:
    async with open_engine(make_config(world, **overrides), clock=clock) as engine:
        return await engine.reconcile(dry_run=dry_run)


def events(world: SimWorld) -> list[dict[str, Any]]:
    path = world.state_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def kinds(world: SimWorld) -> list[str]:
    return [e["attributes"]["event"] for e in events(world) if e["attributes"]["event"] != "progress"]


def status(world: SimWorld) -> dict[str, Any]:
    return json.loads((world.state_dir / "status.json").read_text())


FAIL = {"checks": [{"kind": "command", "name": "app", "command": [sys.executable, "-c", "import sys; print('app dead'); sys.exit(3)"]}], "deadline": "2s", "interval": "1s"}


async def test_full_update_commits(world: SimWorld, clock: FakeClock) -> None:
    """Install into the inactive slot, reboot into it once, health-gate, commit: 1.1.0 runs committed."""
    world.publish("1.1.0")
    first = await run_pass(world, clock)
    assert first.result is Result.REBOOTING
    info = world.device.info()
    assert info.booted == "b" and not info.committed
    assert world.device.slot_path("b").read_bytes() == world.image("1.1.0").read_bytes()
    second = await run_pass(world, clock)
    assert second.result is Result.COMPLETED
    info = world.device.info()
    assert (info.booted, info.primary) == ("b", "b")
    st = status(world)
    assert st["state"] == "completed" and st["currentVersion"] == "1.1.0" and st["targetVersion"] is None
    assert kinds(world).count("completed") == 1
    assert Journal(world.state_dir).load().phase is Phase.IDLE
    third = await run_pass(world, clock)
    assert third.result is Result.UP_TO_DATE


async def test_up_to_date_pass_writes_nothing(world: SimWorld, clock: FakeClock) -> None:
    """A pass with nothing to do touches neither journal, device nor event log."""
    assert (await run_pass(world, clock)).result is Result.UP_TO_DATE
    watched = [world.state_dir / "journal.json", world.device_dir / "boot.json", world.state_dir / "events.jsonl", world.state_dir / "hub-status.json"]
    before = {p: (p.stat().st_mtime_ns if p.exists() else None) for p in watched}
    before_status = {k: v for k, v in status(world).items() if k not in ("lastCheck", "updatedAt")}
    clock.advance(3600)
    assert (await run_pass(world, clock)).result is Result.UP_TO_DATE
    after = {p: (p.stat().st_mtime_ns if p.exists() else None) for p in watched}
    assert before == after
    assert {k: v for k, v in status(world).items() if k not in ("lastCheck", "updatedAt")} == before_status


async def test_dry_run_reports_without_touching(world: SimWorld, clock: FakeClock) -> None:
    """--dry-run decides and pins the target but downloads and installs nothing."""
    published = world.publish("1.1.0")
    result = await run_pass(world, clock, dry_run=True)
    assert result.result is Result.UPDATE_AVAILABLE and result.exit_code == 3
    assert result.target is not None and result.target["versionId"] == published.version_id
    assert world.device.slot_path("b").read_bytes() == b""
    assert Journal(world.state_dir).load().phase is Phase.IDLE


async def test_health_failure_rolls_back_and_quarantines(world: SimWorld, clock: FakeClock) -> None:
    """A failing health check marks the new slot bad, boots the old one, reports the check, and the
    version is not installed again until an operator retries it."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock, health=FAIL)).result is Result.REBOOTING
    gate = await run_pass(world, clock, health=FAIL)
    assert gate.result is Result.ROLLED_BACK
    assert world.device.info().booted == "a"
    report = await run_pass(world, clock, health=FAIL)
    assert report.result is Result.ROLLED_BACK
    assert "health check 'app'" in report.message
    st = status(world)
    assert st["state"] == "rollback" and st["failureCount"] == 1
    assert [q["version"] for q in st["quarantined"]] == ["1.1.0"]
    failed_check = [e for e in events(world) if e["attributes"]["event"] == "health_check_failed"]
    assert failed_check and failed_check[0]["attributes"]["check"] == "app"
    assert "app dead" in failed_check[0]["attributes"]["output"]
    assert kinds(world).count("rollback") == 1
    slot_b = world.device.slot_path("b").stat().st_mtime_ns
    again = await run_pass(world, clock)
    assert again.result is Result.BLOCKED and "quarantined" in again.message
    assert world.device.slot_path("b").stat().st_mtime_ns == slot_b
    async with open_engine(make_config(world), clock=clock) as engine:
        assert await engine.retry("1.1.0")
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    assert (await run_pass(world, clock)).result is Result.COMPLETED


async def test_boot_failure_detected_as_rollback(world: SimWorld, clock: FakeClock) -> None:
    """The new slot boots once, the device restarts before the commit: the old slot is back, and the
    next pass reports a rollback (not a success, not a second install)."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    world.device.boot()  # power cut on the trial boot: try-once falls back
    result = await run_pass(world, clock)
    assert result.result is Result.ROLLED_BACK
    assert "did not stay booted" in result.message
    assert world.device.info().booted == "a"
    assert (await run_pass(world, clock)).result is Result.BLOCKED


async def test_guard_reboot_named_in_rollback(world: SimWorld, clock: FakeClock) -> None:
    """When ota-daemon-guard rebooted the trial system, the rollback report says so."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    (world.state_dir / "guard.json").write_text(json.dumps({"at": clock.now() + 1, "action": "reboot", "reason": "still uncommitted 1800s after boot"}))
    world.device.boot()
    result = await run_pass(world, clock)
    assert result.result is Result.ROLLED_BACK
    assert "rebooted by ota-daemon-guard: still uncommitted 1800s after boot" in result.message


def _attempt_id(world: SimWorld) -> str:
    journal = json.loads((world.state_dir / "journal.json").read_text())
    return str(journal["attempt"]["id"])


async def test_guard_reboot_named_after_the_clock_jumped_back(world: SimWorld, clock: FakeClock) -> None:
    """The guard's record names the attempt: a wall clock that jumped back between the install
    and the guard's reboot (no RTC, NTP correcting a clock that ran ahead) does not hide it."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    record = {"at": clock.now() - 86400, "action": "reboot", "reason": "still uncommitted 1800s after boot", "attemptId": _attempt_id(world)}
    (world.state_dir / "guard.json").write_text(json.dumps(record))
    world.device.boot()
    result = await run_pass(world, clock)
    assert result.result is Result.ROLLED_BACK
    assert "rebooted by ota-daemon-guard: still uncommitted 1800s after boot" in result.message


async def test_an_older_attempts_guard_record_is_not_this_attempts(world: SimWorld, clock: FakeClock) -> None:
    """A guard record of another attempt, stamped later than this attempt started (the clock
    jumped back since), is not the reason this attempt rolled back."""
    world.publish("1.1.0")
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    record = {"at": clock.now() + 86400, "action": "reboot", "reason": "still uncommitted 1800s after boot", "attemptId": "an-older-attempt"}
    (world.state_dir / "guard.json").write_text(json.dumps(record))
    world.device.boot()
    result = await run_pass(world, clock)
    assert result.result is Result.ROLLED_BACK
    assert "ota-daemon-guard" not in result.message


async def test_new_tag_after_quarantine_installs(world: SimWorld, clock: FakeClock) -> None:
    """Once the tag points at another version, that version installs."""
    world.publish("1.1.0")
    await run_pass(world, clock)
    world.device.boot()
    await run_pass(world, clock)
    world.publish("1.2.0")
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    assert (await run_pass(world, clock)).result is Result.COMPLETED
    assert status(world)["currentVersion"] == "1.2.0"


async def test_tag_moved_back_rolls_back_unless_refused(world: SimWorld, clock: FakeClock) -> None:
    """A tag moved back to an older version is the operator's intent: installed. With
    policy.downgrade = "refuse" it is refused with a reason (both versions are SemVer)."""
    world.publish("0.9.0")
    result = await run_pass(world, clock, policy={"downgrade": "refuse"})
    assert result.result is Result.BLOCKED and "policy.downgrade = 'refuse'" in result.message
    assert world.device.slot_path("b").read_bytes() == b""
    assert (await run_pass(world, clock)).result is Result.REBOOTING


async def test_foreign_system_refused(world: SimWorld, clock: FakeClock) -> None:
    """A version whose build info names another system is refused."""
    published = world.publish("1.1.0")
    info_asset = next(a for a in published.document["assets"] if a["filename"].endswith(".build-info.json"))
    path = world.repo_dir / "fleet" / info_asset["url"]
    other = json.dumps({"name": "other-board", "release": {"id": "x", "version": "1.1.0"}}).encode()
    # a different build info is a different asset: rewrite the document to point at it
    import hashlib

    digest = hashlib.sha256(other).hexdigest()
    (world.repo_dir / "fleet" / "assets" / f"sha256_{digest}").write_bytes(other)
    tag_file = world.repo_dir / "fleet/system/tags/stable.json"
    doc = json.loads(tag_file.read_text())
    for asset in doc["assets"]:
        if asset["filename"].endswith(".build-info.json"):
            asset.update(size=len(other), digest=f"sha256_{digest}", url=f"assets/sha256_{digest}")
    tag_file.write_text(json.dumps(doc))
    assert path.exists()
    result = await run_pass(world, clock)
    assert result.result is Result.BLOCKED and "other-board" in result.message


async def test_digest_mismatch_is_never_installed(world: SimWorld, clock: FakeClock) -> None:
    """An image whose bytes differ from the document's digest is refused; the slot stays untouched."""
    published = world.publish("1.1.0")
    image = next(a for a in published.document["assets"] if a["filename"].endswith(".img"))
    blob = world.repo_dir / "fleet" / image["url"]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = await run_pass(world, clock)
    assert result.result is Result.FAILED and "sha256" in result.message
    assert world.device.slot_path("b").read_bytes() == b""
    assert world.device.info().pending is None


async def test_malformed_document_fails_clearly(world: SimWorld, clock: FakeClock) -> None:
    """A tag file that is not a version document gives a clear error naming the field; no install."""
    tag_file = world.repo_dir / "fleet/system/tags/stable.json"
    tag_file.write_text(json.dumps({"versionId": "v", "assets": [{"filename": "sim-device.img", "size": -1, "digest": "md5_x"}]}))
    result = await run_pass(world, clock)
    assert result.result is Result.FAILED
    assert "assets.0.size" in result.message
    assert status(world)["state"] == "failed"


async def test_missing_tag(world: SimWorld, clock: FakeClock) -> None:
    """A tag that does not exist is reported as such."""
    result = await run_pass(world, clock, hub={"path": "fleet/system/nightly"})
    assert result.result is Result.FAILED and "'fleet/system/nightly' not found" in result.message


async def test_stream_mode(world: SimWorld, clock: FakeClock) -> None:
    """Stream mode pipes verified bytes straight into the slot."""
    world.publish("1.1.0", size=3 << 20)
    assert (await run_pass(world, clock, download={"mode": "stream"})).result is Result.REBOOTING
    assert world.device.slot_path("b").read_bytes() == world.image("1.1.0", size=3 << 20).read_bytes()


async def test_stream_digest_mismatch_disarms_slot(world: SimWorld, clock: FakeClock) -> None:
    """In stream mode a digest mismatch found at the end leaves the new slot unbootable."""
    published = world.publish("1.1.0")
    image = next(a for a in published.document["assets"] if a["filename"].endswith(".img"))
    blob = world.repo_dir / "fleet" / image["url"]
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    result = await run_pass(world, clock, download={"mode": "stream"})
    assert result.result is Result.FAILED
    info = world.device.info()
    assert info.pending is None and not info.slots["b"].bootable
    world.device.boot()
    assert world.device.info().booted == "a"


async def test_corrupt_journal_is_moved_aside(world: SimWorld, clock: FakeClock) -> None:
    """An unreadable journal is moved aside and reported; the pass goes on from the slots."""
    world.state_dir.mkdir(parents=True, exist_ok=True)
    (world.state_dir / "journal.json").write_text("{not json")
    result = await run_pass(world, clock)
    assert result.result is Result.UP_TO_DATE
    assert list(world.state_dir.glob("journal.corrupt.*.json"))
    assert any("unreadable" in str(e["attributes"].get("message")) for e in events(world))


async def test_crash_loop_stops(world: SimWorld, clock: FakeClock) -> None:
    """A pass that finds itself re-entering the install phase again and again gives up and says why."""
    world.publish("1.1.0")
    journal = Journal(world.state_dir)
    limit = make_config(world).policy.max_phase_entries
    for _ in range(limit):
        # simulate a power cut during every install: the journal says installing
        journal.load()
        from ota_daemon.state import AssetRef, Attempt

        journal.data.attempt = Attempt(
            id="x", target_version="1.1.0", version_id="v", path=world.path,
            image=AssetRef(filename="i", size=1, digest="sha256_" + "0" * 64), from_slot="a", started_at=0,
        )
        if journal.data.phase is Phase.IDLE:
            journal.transition(Phase.INSTALLING)
        journal.transition(Phase.IDLE)
    result = await run_pass(world, clock)
    assert result.result is Result.FAILED
    assert "without progress" in result.message
    assert (await run_pass(world, clock)).result is Result.BLOCKED


async def test_tag_moved_during_pass_installs_pinned(world: SimWorld, clock: FakeClock) -> None:
    """The tag is resolved once: moving it mid-pass does not change what is installed."""
    world.publish("1.1.0")
    async with open_engine(make_config(world), clock=clock) as engine:
        original = engine.hub.issue_url

        async def moving(document: Any, asset: Any) -> str:
            world.publish("1.2.0")  # moves the tag
            return await original(document, asset)

        engine.hub.issue_url = moving  # type: ignore[method-assign]
        result = await engine.reconcile()
    assert result.result is Result.REBOOTING and result.target_version == "1.1.0"
    assert (await run_pass(world, clock)).result is Result.COMPLETED
    assert status(world)["currentVersion"] == "1.1.0"


@pytest.mark.parametrize("policy", ["manual", "window"])
async def test_reboot_policy_waits(world: SimWorld, clock: FakeClock, policy: str) -> None:
    """With manual (or a closed window) reboot policy the install waits for the reboot."""
    world.publish("1.1.0")
    extra: dict[str, Any] = {"reboot": policy}
    if policy == "window":
        extra["reboot_window"] = "Sun 03:00-03:01"
        clock._now = 1_780_000_000.0  # a Thursday
    result = await run_pass(world, clock, policy=extra)
    assert result.result is Result.REBOOT_PENDING
    assert world.device.info().booted == "a"
    assert Journal(world.state_dir).load().phase is Phase.REBOOTING
    world.device.boot()  # a reboot that was not ours: the new slot was not tried, nothing is lost
    again = await run_pass(world, clock, policy=extra)
    assert again.result is Result.REBOOT_PENDING
    async with open_engine(make_config(world, policy=extra), clock=clock) as engine:
        assert (await engine.reboot_now()).result is Result.REBOOTING
    assert world.device.info().booted == "b"
    assert (await run_pass(world, clock, policy=extra)).result is Result.COMPLETED


def test_world_files_exist(world: SimWorld) -> None:
    """The fixture world has a device and a repository (sanity for the tests above)."""
    assert (world.device_dir / "boot.json").exists()
    assert Path(world.repo_dir, "fleet/system/tags/stable.json").exists()


async def test_foreign_image_without_build_info_refused_by_installer(world: SimWorld, clock: FakeClock) -> None:
    """No build info to compare: the simulated installer's own system check (as RAUC's
    'compatible') refuses an image for another board before touching the slot."""
    world.publish("1.1.0", system="other-board", build_info=False)
    result = await run_pass(world, clock)
    assert result.result is Result.FAILED and "built for system 'other-board'" in result.message
    assert world.device.slot_path("b").read_bytes() == b""
    assert world.device.info().pending is None


async def test_no_space_blocks_without_blaming_the_version(world: SimWorld, clock: FakeClock) -> None:
    """When the image does not fit, the update waits (blocked, the reason names the space);
    the version is not quarantined and installs once there is room."""
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        result = await run_pass(world, clock, hub={"url": server.url}, download={"free_space_margin": "1000T"})
        assert result.result is Result.BLOCKED and "not enough free space" in result.message
        assert status(world)["state"] == "blocked" and not status(world).get("quarantined")
        assert (await run_pass(world, clock, hub={"url": server.url})).result is Result.REBOOTING


async def test_blocked_passes_are_no_crash_loop(world: SimWorld, clock: FakeClock) -> None:
    """Many passes blocked by missing space (each ends by itself) never trip the loop guard."""
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        for _ in range(6):
            result = await run_pass(world, clock, hub={"url": server.url}, download={"free_space_margin": "1000T"})
            assert result.result is Result.BLOCKED, result.message
        assert (await run_pass(world, clock, hub={"url": server.url})).result is Result.REBOOTING


async def test_repeated_blocked_passes_are_quiet(world: SimWorld, clock: FakeClock) -> None:
    """The same update blocked pass after pass (no space) is reported once, not every poll."""
    world.publish("1.1.0")
    with serve_directory(world.repo_dir) as server:
        for _ in range(3):
            await run_pass(world, clock, hub={"url": server.url}, download={"free_space_margin": "1000T"})
    assert kinds(world).count("blocked") == 1
    assert kinds(world).count("update_available") == 1
