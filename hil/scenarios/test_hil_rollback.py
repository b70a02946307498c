"""Scenarios 3, 4 and 5 of hil-rig.md §4.7: bad images that panic, boot unhealthy, or hang."""

from __future__ import annotations

import time

import pytest

from hil.rig import device as dev
from hil.rig.checks import events_of, kinds, reboots, wait_event, wait_settled
from hil.rig.device import Rig, wait_until

pytestmark = pytest.mark.hil


def _no_retry_for(rig: Rig, asset: str, seconds: float, *, polls: int = 2) -> None:
    """Over at least ``seconds`` and ``polls`` more polls of the tag, the quarantined
    version's image is not fetched again. Counting polls, not only seconds: on a slow target
    (qemu under TCG) a few seconds may hold no poll at all."""
    before = len(rig.hub.requests(asset))
    seen = len(rig.hub.requests("/tags/"))
    time.sleep(seconds)
    wait_until(lambda: len(rig.hub.requests("/tags/")) >= seen + polls, timeout=seconds + 10, what=f"{polls} more polls of the tag (the daemon stopped polling?)")
    assert len(rig.hub.requests(asset)) == before, "the quarantined version was downloaded again"


@pytest.mark.hil_needs(dev.PAYLOADS)
@pytest.mark.hil_reboots(3)
@pytest.mark.hil_qemu_ci(minutes=4.5)
def test_hil_03_image_panics_on_boot(rig: Rig) -> None:
    """v2 panics when booted: the boot history shows the try of b failing and a return to
    a; the daemon on a sees "installed b, booted a", reports a rollback with the reason,
    quarantines v2 and does not retry it while the tag stays; a new tag (v2.0.1) installs."""
    device = rig.device
    wait_settled(device, "1.0.0")
    bad = rig.publish("2.0.0", behaviour="panic")
    rollback = wait_event(device, "rollback", timeout=20)
    wait_settled(device, "1.0.0")
    boots = device.boots()
    assert [(b.slot, b.try_boot, b.behaviour) for b in boots[1:3]] == [("b", True, "panic"), ("a", False, "ok")], boots
    attrs = rollback[-1]["attributes"]
    assert attrs["targetVersion"] == "2.0.0" and "did not stay booted" in attrs["error"], attrs
    status = device.status()
    assert status["state"] == "rollback" and any(q["version"] == "2.0.0" for q in status.get("quarantined", []))
    _no_retry_for(rig, bad.asset, 3.0)
    assert reboots(device) == 2
    rig.step("tag -> 2.0.1 (fixed)")
    rig.publish("2.0.1")
    wait_settled(device, "2.0.1")
    assert len(events_of(device, "rollback")) == 1


@pytest.mark.hil_needs(dev.PAYLOADS)
@pytest.mark.hil_reboots(2)
@pytest.mark.hil_qemu_ci(minutes=3)
def test_hil_04_boots_but_unhealthy(rig: Rig) -> None:
    """v2 boots but its application never turns healthy: no commit; the daemon marks b bad
    and reboots back to a; the failure is reported naming the health check; exactly two
    reboots (no loop) and v2 is not tried again while the tag stays on it."""
    device = rig.device
    wait_settled(device, "1.0.0")
    bad = rig.publish("2.0.0", behaviour="unhealthy")
    failed = wait_event(device, "health_check_failed", timeout=20)
    wait_event(device, "rollback", timeout=20)
    wait_settled(device, "1.0.0")
    assert failed[-1]["attributes"].get("check") == "app healthy", failed[-1]
    assert "app healthy" in events_of(device, "rollback")[-1]["attributes"]["error"]
    st = device.boot_state()
    assert st.default == "a" and st.slots["b"].bad, st
    assert "completed" not in kinds(device)
    _no_retry_for(rig, bad.asset, 3.0)
    assert reboots(device) == 2, device.boots()


@pytest.mark.hil_needs(dev.PAYLOADS)
@pytest.mark.hil_device(watchdog=1.0)
@pytest.mark.hil_reboots(2)
def test_hil_05_image_hangs(rig: Rig) -> None:
    """v2 hangs at boot (nothing runs, the daemon never starts in it): the watchdog model
    resets the board after its timeout and the bootloader falls back to a; the daemon reports
    the rollback and quarantines v2. On the Pi this scenario checks the watchdog configuration
    instead (see the rpi target)."""
    device = rig.device
    wait_settled(device, "1.0.0")
    rig.publish("2.0.0", behaviour="hang")
    wait_until(lambda: rig.recorder.select("boot", "hang"), timeout=20, what="the hang")
    rollback = wait_event(device, "rollback", timeout=20)
    wait_settled(device, "1.0.0")
    reasons = [(b.slot, b.reason, b.behaviour) for b in device.boots()[1:]]
    assert reasons == [("b", "warm", "hang"), ("a", "watchdog", "ok")], reasons
    hang_at = rig.recorder.select("boot", "hang")[0]["mono"]
    wd_at = rig.recorder.select("boot", "watchdog")[0]["mono"]
    assert wd_at - hang_at >= 0.9, "the watchdog fired before its timeout"
    assert rollback[-1]["attributes"]["targetVersion"] == "2.0.0"


@pytest.mark.hil_needs(dev.PAYLOADS, dev.GUARD)
@pytest.mark.hil_reboots(2)
@pytest.mark.hil_qemu_ci(minutes=8)
def test_hil_16_guard_reboots_a_trial_whose_daemon_never_starts(rig: Rig) -> None:
    """v2 boots but ota-daemon.service cannot start in it: nobody commits the trial, so
    ota-daemon-guard (its own timer, guard.timeout after boot) reboots, the bootloader's
    try-once rule returns to a, and the daemon there reports the rollback with the guard's
    reason and quarantines v2. Needs the real units and timer (qemu)."""
    device = rig.device
    wait_settled(device, "1.0.0")
    rig.publish("2.0.0", behaviour="nodaemon")
    wait_until(lambda: any(b.slot == "b" and b.try_boot for b in device.boots()), timeout=60, what="the trial boot of b")
    assert not device.daemon_running()
    rollback = wait_event(device, "rollback", timeout=60)
    wait_settled(device, "1.0.0")
    trial = next(b for b in device.boots() if b.slot == "b")
    back = device.boots()[trial.n]  # the boot after the trial
    assert (back.slot, back.reason) == ("a", "warm"), device.boots()
    error = rollback[-1]["attributes"]["error"]
    assert "ota-daemon-guard" in error, error
    status = device.status()
    assert any(q["version"] == "2.0.0" for q in status.get("quarantined", [])), status
