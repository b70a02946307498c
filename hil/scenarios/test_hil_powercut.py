"""Scenarios 6-9 of hil-rig.md §4.7: power cuts at named points of the update, enumerated
over the states the daemon persists (the wolfBoot idea applied to a state machine)."""

from __future__ import annotations

import pytest

from hil.rig import device as dev
from hil.rig.checks import events_of, kinds, wait_settled
from hil.rig.device import Release, Rig, wait_until

pytestmark = [pytest.mark.hil, pytest.mark.hil_needs(dev.POWER_CUT, dev.FAULT_POINTS)]

SIZE = 1 << 20


def _cut_fired(rig: Rig, point: str) -> None:
    wait_until(lambda: point not in rig.device.faults_left(), timeout=20, what=f"the power cut at {point}")
    wait_until(lambda: any(b.reason == "cold" for b in rig.device.boots()), timeout=10, what="the cold boot after the cut")


def _converged_once(rig: Rig, version: str, release: Release) -> None:
    device = rig.device
    wait_settled(device, version, timeout=40)
    st = device.boot_state()
    assert device.slot_holds(st.booted, release), "the running slot does not hold the published image"
    done = [e for e in events_of(device, "completed") if e["attributes"].get("currentVersion") == version]
    assert len(done) == 1, f"{len(done)} success reports for {version}"


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("journal:downloading", id="0pct"),
        pytest.param(f"download:{SIZE // 2}", id="50pct"),
        pytest.param(f"download:{SIZE * 99 // 100}", id="99pct"),
    ],
)
def test_hil_06_power_cut_during_download(rig: Rig, point: str) -> None:
    """Cut while downloading (before the first byte, half way, at 99 %): the device boots a,
    nothing was armed; the download resumes with a Range request from where the partial file
    ended (or restarts cleanly when nothing was on disk); the digest is checked and the device
    converges to v2 with about one image's worth of bytes transferred."""
    device = rig.device
    wait_settled(device, "1.0.0")
    device.arm_faults([point])
    v2 = rig.publish("2.0.0", size=SIZE)
    _cut_fired(rig, point)
    cold = next(b for b in device.boots() if b.reason == "cold")
    assert cold.slot == "a" and not cold.try_boot
    _converged_once(rig, "2.0.0", v2)
    downloads = [r for r in rig.hub.requests(v2.asset) if r.status in (200, 206)]
    if point.startswith("download:"):
        assert any((r.range_start or 0) > 0 for r in downloads), f"no resume: {[(r.range, r.status) for r in downloads]}"
    total = sum(r.bytes for r in downloads)
    assert total <= v2.size * 1.5 + 256 * 1024, f"{total} bytes fetched for a {v2.size}-byte image"


@pytest.mark.parametrize("point", ["journal:installing", "install:1", pytest.param("install:50", marks=pytest.mark.hil_qemu_ci(minutes=3)), "install:99"])
def test_hil_07_power_cut_during_slot_write(rig: Rig, point: str) -> None:
    """Cut while slot b is written (at the start, 1 %, 50 %, 99 %): a boots, b is not armed
    (never a try of a half-written slot); the next pass rewrites b whole and converges."""
    device = rig.device
    wait_settled(device, "1.0.0")
    device.arm_faults([point])
    v2 = rig.publish("2.0.0", size=SIZE)
    _cut_fired(rig, point)
    boots = device.boots()
    cold = next(b for b in boots if b.reason == "cold")
    assert cold.slot == "a" and not cold.try_boot, boots
    assert not any(b.slot == "b" for b in boots[: boots.index(cold) + 1]), "a half-written slot was booted"
    _converged_once(rig, "2.0.0", v2)
    assert kinds(device).count("installing") >= 1, kinds(device)


@pytest.mark.parametrize(
    ("when", "volatile"),
    [
        pytest.param("before-arm", False, id="before-arm"),
        pytest.param("while-rebooting", False, id="while-rebooting-try-kept", marks=pytest.mark.hil_device(volatile_try=False)),
        pytest.param("while-rebooting", True, id="while-rebooting-try-lost", marks=[pytest.mark.hil_device(volatile_try=True), pytest.mark.hil_needs(dev.VOLATILE_TRY), pytest.mark.hil_reboots(4)]),
    ],
)
def test_hil_08_power_cut_around_the_reboot(rig: Rig, when: str, volatile: bool) -> None:
    """Cut after the slot is written but before the try is armed, or while the armed reboot
    happens. Before arming, a boots and the daemon asks for the reboot again. While
    rebooting, the bootloader model decides: a try flag that survives lands on b, one that a
    cold cut clears (the Pi's tryboot) lands on a. Either way the device converges to v2 and
    reports success exactly once. With the try lost, the bootloader's try count shows that b
    never ran: the daemon arms the try again instead of reporting a rollback."""
    device = rig.device
    if volatile:
        device.configure(policy={"max_attempts": 2})
        device.restart_daemon()
    wait_settled(device, "1.0.0")
    if when == "before-arm":
        device.arm_faults(["journal:rebooting"])
    else:
        device.cut_power_on_next_reboot()
    v2 = rig.publish("2.0.0", size=SIZE)
    wait_until(lambda: any(b.reason == "cold" for b in device.boots()), timeout=20, what="the cold boot after the cut")
    cold = next(b for b in device.boots() if b.reason == "cold")
    expected = "b" if (when == "while-rebooting" and not volatile) else "a"
    assert cold.slot == expected, f"after the cut the board booted {cold.slot}, the model says {expected}"
    _converged_once(rig, "2.0.0", v2)
    assert not events_of(device, "rollback"), "an interrupted reboot was reported as a rollback"


@pytest.mark.hil_reboots(3)
def test_hil_09_power_cut_during_try_boot_before_commit(rig: Rig) -> None:
    """Cut on the try boot of b after the daemon journaled "committing" but before the
    commit: the cold boot returns to a (the try is spent). The journal shows the trial ran far
    enough to start its gate, so the cut is not held against the version: the daemon arms the
    try again (no rollback report, no quarantine; the loop guard bounds such retries) and
    converges; success is reported once."""
    device = rig.device
    device.configure(policy={"max_attempts": 2})
    device.restart_daemon()
    wait_settled(device, "1.0.0")
    device.arm_faults(["journal:committing"], at_next_boot=True)
    v2 = rig.publish("2.0.0", size=SIZE)
    _cut_fired(rig, "journal:committing")
    cold = next(b for b in device.boots() if b.reason == "cold")
    assert cold.slot == "a", device.boots()
    _converged_once(rig, "2.0.0", v2)
    assert not events_of(device, "rollback"), "a cut during the gate was reported as a rollback"
    quarantined = device.status().get("quarantined") or []
    assert not any(q["version"] == "2.0.0" for q in quarantined)


def _cut_right_after_commit(rig: Rig) -> str:
    device = rig.device
    wait_settled(device, "1.0.0")
    device.arm_faults(["journal:idle"], at_next_boot=True)
    v2 = rig.publish("2.0.0", size=SIZE)
    _cut_fired(rig, "journal:idle")
    cold = next(b for b in device.boots() if b.reason == "cold")
    assert cold.slot == "b", device.boots()
    wait_settled(device, "2.0.0", timeout=40)
    assert device.slot_holds("b", v2)
    return v2.version


@pytest.mark.hil_reboots(2)
def test_hil_09_power_cut_right_after_commit(rig: Rig) -> None:
    """Cut right after the commit reached the journal (phase idle written): the cold boot
    stays on b (the commit made it the default); journal, status and slots agree on v2, no
    failure is reported and success is never reported twice."""
    version = _cut_right_after_commit(rig)
    device = rig.device
    wait_until(lambda: device.status().get("state") == "completed", timeout=10, what="status state 'completed'", describe=lambda: str(device.status()))
    status = device.status()
    assert status["currentVersion"] == version and not status.get("lastError"), status
    assert not events_of(device, "rollback") and not events_of(device, "failed")
    assert len(events_of(device, "completed")) <= 1


@pytest.mark.hil_reboots(2)
def test_hil_09_completion_reported_after_cut_after_commit(rig: Rig) -> None:
    """After a cut right after the commit the attempt's success still reaches the hub:
    exactly one 'completed' event for v2 (the report goes out, keyed, before the journal
    forgets the attempt). This failed before the engine emitted 'completed' ahead of the
    journal's idle phase."""
    version = _cut_right_after_commit(rig)
    done = [e for e in events_of(rig.device, "completed") if e["attributes"].get("currentVersion") == version]
    assert len(done) == 1, f"{len(done)} success reports; events: {kinds(rig.device)}"
