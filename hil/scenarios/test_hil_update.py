"""Scenarios 1, 2 and 14 of hil-rig.md §4.7: the happy path, the idle no-op, and a tag that
moves while an update is downloading."""

from __future__ import annotations

import itertools

import pytest

from hil.rig.checks import events_of, kinds, reboots, wait_event, wait_settled
from hil.rig.device import Rig, wait_until

pytestmark = pytest.mark.hil


@pytest.mark.hil_qemu_ci(minutes=2)
def test_hil_01_happy_path(rig: Rig) -> None:
    """v1 -> v2 by moving the tag: one download, slot b written with v2's bytes, exactly one
    reboot (a try boot of b), health OK, commit; default = active = b; v2 reported as
    completed once; the timings land in the report."""
    device = rig.device
    wait_settled(device, "1.0.0")
    rig.step("tag -> 2.0.0")
    v2 = rig.publish("2.0.0")
    wait_settled(device, "2.0.0")

    st = device.boot_state()
    assert (st.booted, st.default, st.try_next) == ("b", "b", None)
    assert device.slot_holds("b", v2), "slot b does not hold v2's image"
    downloads = [r for r in rig.hub.requests(v2.asset) if r.status in (200, 206)]
    assert len(downloads) == 1 and downloads[0].bytes == v2.size, f"expected one whole download, got {downloads}"
    assert reboots(device) == 1
    tried = [b for b in device.boots() if b.reason == "warm"]
    assert len(tried) == 1 and tried[0].slot == "b" and tried[0].try_boot, f"boots: {device.boots()}"
    completed = events_of(device, "completed")
    assert len(completed) == 1 and completed[0]["attributes"]["currentVersion"] == "2.0.0"
    seq = [k for k in kinds(device) if k in ("update_available", "downloading", "downloaded", "installing", "rebooting", "committing", "completed")]
    # `installing update` goes out before the download, as the script sent it
    assert seq == ["update_available", "installing", "downloading", "downloaded", "rebooting", "committing", "completed"]
    status = device.status()
    assert status["state"] == "completed" and status["currentVersion"] == "2.0.0" and not status.get("lastError")


def test_hil_02_same_version_is_a_noop(rig: Rig) -> None:
    """Tag = running version: over at least three poll periods only the tag document is
    fetched (a 304 after the first), nothing is downloaded, installed or rebooted, and the
    polls come once per interval (1 s + up to 0.2 s jitter, with tolerance)."""
    device = rig.device
    wait_settled(device, "1.0.0")
    first = len(rig.hub.requests("/tags/"))
    wait_until(lambda: len(rig.hub.requests("/tags/")) >= first + 4, timeout=15, what="four more polls")
    polls = rig.hub.requests("/tags/")
    image = rig.hub.asset_url_part("1.0.0")
    assert not rig.hub.requests(image), "the running version's image was downloaded"
    other = [r for r in rig.hub.requests() if "/tags/" not in r.path]
    assert all(r.bytes < 4096 for r in other), f"only metadata may be fetched: {other}"
    assert [r.status for r in polls[1:]] == [304] * (len(polls) - 1), "idle polls must be conditional (ETag -> 304)"
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(polls[1:])]
    assert gaps and all(0.8 <= g <= 2.0 for g in gaps), f"poll gaps {gaps} outside 1 s + jitter (tolerance 0.8-2.0 s)"
    assert reboots(device) == 0
    assert not {"downloading", "installing", "rebooting"} & set(kinds(device))
    assert device.journal().get("phase", "idle") == "idle"


@pytest.mark.hil_reboots(2)
def test_hil_14_tag_moves_forward_while_downloading(rig: Rig) -> None:
    """Tag v2 -> v3 while v2 downloads: the documented policy is finish-then-update (the pass
    pins the version once): v2 is installed whole and committed, then v3; the final version
    is the tag's, slot contents are v3's exact bytes (no mixing of two artifacts)."""
    device = rig.device
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", move=False)
    rig.hub.add_rule(match=v2.asset, rate=400_000, name="v2 download at 400 kB/s")
    rig.hub.tag("2.0.0")
    wait_until(lambda: rig.hub.bytes_sent(v2.asset) > 64 * 1024, timeout=15, what="v2 to be downloading")
    rig.step("tag -> 3.0.0 mid-download")
    v3 = rig.publish("3.0.0")
    wait_settled(device, "3.0.0", timeout=40)
    st = device.boot_state()
    assert device.slot_holds(st.booted, v3), "the running slot is not v3's image"
    versions = [e["attributes"].get("currentVersion") for e in events_of(device, "completed")]
    assert versions == ["2.0.0", "3.0.0"], f"completed events {versions}"
    assert rig.hub.bytes_sent(v2.asset) <= v2.size * 1.1


@pytest.mark.hil_reboots(1)
def test_hil_14_tag_moves_back_while_downloading(rig: Rig) -> None:
    """Tag v3 -> v2 while v3 downloads: v3 (pinned) is installed and committed; the tag then
    names an older version, and the downgrade policy (policy.downgrade = "refuse")
    refuses it with a clear reason: final version v3, v2 never downloaded."""
    device = rig.device
    device.configure(policy={"downgrade": "refuse"})
    device.restart_daemon()
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", move=False)
    v3 = rig.publish("3.0.0", move=False)
    rig.hub.add_rule(match=v3.asset, rate=400_000, name="v3 download at 400 kB/s")
    rig.hub.tag("3.0.0")
    wait_until(lambda: rig.hub.bytes_sent(v3.asset) > 64 * 1024, timeout=15, what="v3 to be downloading")
    rig.step("tag -> 2.0.0 mid-download")
    rig.hub.tag("2.0.0")
    wait_settled(device, "3.0.0", timeout=40)
    refused = wait_event(device, "refused", timeout=10)
    reason = str(refused[-1]["attributes"].get("message"))
    assert "policy.downgrade" in reason and "older" in reason, refused[-1]
    assert device.slot_holds(device.boot_state().booted, v3)
    assert rig.hub.bytes_sent(v2.asset) == 0, "the refused downgrade was downloaded"
