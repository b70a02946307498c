"""Scenarios 13 and 15 of hil-rig.md §4.7: images that must be rejected before a slot is
armed, and a download directory that runs out of space."""

from __future__ import annotations

import time

import pytest

from hil.rig import device as dev
from hil.rig.checks import events_of, kinds, reboots, wait_event, wait_settled
from hil.rig.device import Rig, wait_until
from hil.rig.images import OLD_CONTENT

pytestmark = pytest.mark.hil

SIZE = 1 << 20

REJECT = ["bitflip-in-transit", "tampered-at-rest", "wrong-size", "wrong-compatible", "unsigned", "wrong-key"]


@pytest.mark.hil_reboots(0)
def test_hil_13_foreign_image_without_build_info_rejected(rig: Rig) -> None:
    """A release whose image (under this device's asset name) is built for another board and
    that carries no build info for this system is rejected by the installer (its own system
    check, as RAUC's 'compatible') before the passive slot is touched or armed."""
    device = rig.device
    wait_settled(device, "1.0.0")
    active = device.boot_state().booted
    rig.publish("2.0.0", size=SIZE, system_name="some-other-board", build_info=False)
    event = wait_event(device, "failed", timeout=25)[-1]
    assert "some-other-board" in event["attributes"].get("error", ""), event
    time.sleep(2.0)  # a few more polls: the rejected image stays rejected
    st = device.boot_state()
    assert st.booted == active and st.default == active and st.try_next is None, st
    assert reboots(device) == 0 and "rebooting" not in kinds(device), kinds(device)


@pytest.mark.parametrize("case", REJECT)
@pytest.mark.hil_reboots(0)
def test_hil_13_bad_image_rejected_before_arming(rig: Rig, case: str) -> None:
    """A corrupted or foreign image (a flipped byte in transit or at rest, a size that differs
    from the pinned one, an image for another system; on the Pi also unsigned and wrong-key
    bundles) is rejected before the passive slot is armed: the passive slot keeps a known
    "old content" pattern (Mender's technique), the active slot is unchanged, nothing
    reboots, and the rejection is reported."""
    device = rig.device
    if case in ("unsigned", "wrong-key") and rig.target == "sim":
        pytest.skip("the simulated installer has no signatures; its trust anchor is the pinned sha256 "
                    "(the other cases); unsigned and wrong-key bundles run on the rpi bench (and in tests/rauc)")
    wait_settled(device, "1.0.0")
    active = device.boot_state().booted
    active_sha = device.slot_sha256(active)
    pattern = device.write_passive_pattern(OLD_CONTENT) if dev.OLD_CONTENT in device.capabilities else ""
    if case == "wrong-compatible":
        rig.publish("2.0.0", size=SIZE, system_name="some-other-board")
        event = wait_event(device, "refused", timeout=20)[-1]
        assert "some-other-board" in str(event["attributes"].get("message")), event
    else:
        v2 = rig.publish("2.0.0", size=SIZE, move=False)
        if case == "bitflip-in-transit":
            rig.proxy.set(match=v2.asset, corrupt_at=SIZE // 3)
        elif case == "tampered-at-rest":
            rig.hub.add_rule(match=v2.asset, flip_at=SIZE // 2)
        elif case == "wrong-size":
            rig.hub.tag("2.0.0")
            rig.hub.rewrite_document("2.0.0", size=v2.size + 4096)
        if case != "wrong-size":
            rig.hub.tag("2.0.0")
        event = wait_event(device, "failed", timeout=25)[-1]
        error = event["attributes"].get("error", "")
        assert "sha256" in error or "bytes" in error, error
    time.sleep(2.0)  # a few more polls: the rejected image must stay rejected
    st = device.boot_state()
    assert st.booted == active and st.default == active and st.try_next is None, st
    assert device.slot_sha256(active) == active_sha, "the active slot changed"
    if pattern:
        assert device.slot_sha256(st.passive) == pattern, "the passive slot was written"
    # `installing update` goes out before the download, as the script sent it; the image must
    # never have passed verification nor reached the installer
    assert not {"downloaded", "installed", "rebooting"} & set(kinds(device)), kinds(device)
    assert reboots(device) == 0
    assert device.status().get("state") in ("failed", "blocked", "rollback"), device.status()


@pytest.mark.hil_needs(dev.DISK_FULL)
@pytest.mark.hil_reboots(1)
def test_hil_15_disk_full_before_download(rig: Rig) -> None:
    """The download directory has less free space than the image: the daemon holds the update
    back before fetching (state blocked, a 'blocked' event naming the space, the version not
    quarantined), leaves no partial data (at most an empty placeholder), keeps its journal
    intact and stays up; when space is freed it updates by itself."""
    device = rig.device
    device.small_cache_fs(3 * SIZE)
    device.restart_daemon()
    wait_settled(device, "1.0.0")
    device.fill_cache_fs(leave=SIZE // 2)
    v2 = rig.publish("2.0.0", size=SIZE)
    blocked = wait_event(device, "blocked", timeout=20)[-1]
    assert "space" in blocked["attributes"].get("reason", ""), blocked
    assert device.status().get("state") == "blocked" and not device.status().get("quarantined")
    partial = [f for f in device.cache_files() if f.endswith(".partial")]
    assert all(device.cache_size(f) == 0 for f in partial), f"partial data written although it could not fit: {partial}"
    wait_until(lambda: device.journal().get("phase", "idle") == "idle", timeout=5, what="the journal back to idle")
    assert device.daemon_running() and device.daemon_restarts() == 0
    assert rig.hub.bytes_sent(v2.asset) == 0
    device.free_cache_fs()
    wait_settled(device, "2.0.0", timeout=30)
    assert device.slot_holds("b", v2)


@pytest.mark.hil_needs(dev.DISK_FULL)
@pytest.mark.hil_reboots(1)
def test_hil_15_disk_fills_during_download(rig: Rig) -> None:
    """The download directory fills up while the image is downloading (ENOSPC mid-write): the
    update is held back (blocked, naming the space), no crash, the journal intact, the partial
    download bounded by the image size (kept for resume); when space is freed the update
    completes by itself and the cache is emptied."""
    device = rig.device
    device.small_cache_fs(3 * SIZE)
    device.restart_daemon()
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", size=SIZE, move=False)
    rig.hub.add_rule(match=v2.asset, rate=300_000, times=1, name="slow first download")
    rig.hub.tag("2.0.0")
    wait_until(lambda: rig.hub.bytes_sent(v2.asset) > 150_000, timeout=15, what="the download under way")
    device.fill_cache_fs(leave=16 * 1024)
    blocked = wait_event(device, "blocked", timeout=25)[-1]
    assert "space" in blocked["attributes"].get("reason", ""), blocked
    assert device.daemon_running() and device.daemon_restarts() == 0
    wait_until(lambda: device.journal().get("phase", "idle") == "idle", timeout=5, what="the journal back to idle")
    partial = [f for f in device.cache_files() if f.endswith(".partial")]
    assert all(device.cache_size(f) <= SIZE for f in partial), "the partial file outgrew the image"
    device.free_cache_fs()
    wait_settled(device, "2.0.0", timeout=40)
    assert device.slot_holds("b", v2)
    assert not device.cache_files(), f"cache not emptied after the commit: {device.cache_files()}"
    assert len(events_of(device, "completed")) == 1

