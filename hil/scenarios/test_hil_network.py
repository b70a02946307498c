"""Scenarios 10, 11 and 12 of hil-rig.md §4.7: a flaky link (through the fault proxy), a hub
that is unreachable, and a hub that answers with errors (through the hub double's rules)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from hil.rig import device as dev
from hil.rig.checks import events_of, kinds, reboots, wait_event, wait_settled
from hil.rig.device import Rig, wait_until
from hil.rig.images import OLD_CONTENT

pytestmark = pytest.mark.hil

SIZE = 1 << 20


def _passive_old_content(rig: Rig) -> str:
    if dev.OLD_CONTENT not in rig.device.capabilities:
        return ""
    return rig.device.write_passive_pattern(OLD_CONTENT)


def _transient_failures(rig: Rig) -> list[dict[str, Any]]:
    return [e for e in rig.recorder.select("daemon", "log") if e.get("retry_in") is not None]


# =========================================================================== 10: flaky network


FLAKY: dict[str, dict[str, Any]] = {
    "latency-jitter": {"latency": 0.02, "jitter": 0.015, "slice": 16384},
    "bandwidth-cap": {"rate": 500_000},
    "resets": {"reset_after": 300_000, "times": 2},
    "stall": {"stall_after": 400_000, "stall_for": None, "times": 1},
    "mid-stream-cut": {"close_after": 500_000, "times": 1},
}


@pytest.mark.parametrize("kind", list(FLAKY))
def test_hil_10_flaky_network_with_resume(rig: Rig, kind: str) -> None:
    """The image travels through a bad link (latency and jitter, a bandwidth cap, resets, a
    stall, a mid-stream cut). The update completes within a bound; the bytes the device
    received stay within size x 1.1 (+ one socket buffer) because it resumes with Range
    requests; a stall is cut by the read timeout (download.read_timeout = 1 s) and resumed."""
    device = rig.device
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", size=SIZE, move=False)
    rig.proxy.set(match=v2.asset, **FLAKY[kind])
    started = time.monotonic()
    rig.hub.tag("2.0.0")
    wait_settled(device, "2.0.0", timeout=45)
    took = time.monotonic() - started
    assert took < 30, f"the update took {took:.1f}s through {kind}"
    assert device.slot_holds("b", v2)
    delivered = rig.proxy.delivered(v2.asset)
    # a reset (RST) makes the receiver drop what it had not read yet: up to reset_after per reset
    lost = FLAKY[kind].get("reset_after", 0) * FLAKY[kind].get("times", 0)
    assert delivered <= SIZE * 1.1 + 256 * 1024 + lost, f"{delivered} bytes delivered for a {SIZE}-byte image"
    requests = [r for r in rig.hub.requests(v2.asset) if r.status in (200, 206)]
    if kind in ("resets", "stall", "mid-stream-cut"):
        resumed = [r for r in requests if (r.range_start or 0) > 0]
        assert resumed, f"no Range resume after {kind}: {[(r.range, r.status, r.bytes) for r in requests]}"
    if kind == "stall":
        first, second = requests[0], next(r for r in requests if (r.range_start or 0) > 0)
        assert second.mono - first.mono >= 1.0, "the stall was abandoned before download.read_timeout"
        assert second.range_start is not None and second.range_start >= 300_000, f"resumed from {second.range_start}"
        rig.proxy.clear()
    assert reboots(device) == 1


# =========================================================================== 11: hub unreachable


@pytest.mark.parametrize("how", ["refused", "blackhole"])
@pytest.mark.hil_reboots(1)
def test_hil_11_hub_unreachable_at_start(rig: Rig, how: str) -> None:
    """The hub is unreachable (connection refused, or a blackhole that never answers) when an
    update is due: the daemon stays up (no crash, no restart), backs off with jitter within
    its cap (visible in its retry delays), and recovers on its own when the hub returns."""
    device = rig.device
    wait_settled(device, "1.0.0")
    if how == "refused":
        rig.proxy.down()
    else:
        rig.proxy.set(blackhole=True)
    rig.publish("2.0.0", size=SIZE)
    failures = wait_until(lambda: f if len(f := _transient_failures(rig)) >= 4 else [], timeout=30, what="four failed passes")
    delays = [float(e["retry_in"]) for e in failures]
    # from a sixteenth of the poll interval (1 s here), doubling, jitter over the upper half, capped
    assert all(0 < d <= 1.0 for d in delays), f"backoff delays {delays} outside (0, poll interval]"
    assert delays[1] >= delays[0] and delays[3] >= 2 * delays[0], f"backoff delays {delays} do not grow"
    gap = failures[1]["mono"] - failures[0]["mono"]
    assert gap >= delays[0] - 0.3, f"the retry came {gap:.1f}s after the failure, the backoff said {delays[0]}s"
    assert device.daemon_running() and device.daemon_restarts() == 0
    rig.step("hub back")
    if how == "refused":
        rig.proxy.up()
    else:
        rig.proxy.clear()
    wait_settled(device, "2.0.0", timeout=30)


@pytest.mark.hil_reboots(1)
def test_hil_11_hub_vanishes_mid_download(rig: Rig) -> None:
    """The hub goes away in the middle of the image (open connections reset, new ones
    refused) and comes back 2 s later: the download retries with growing waits, resumes
    with a Range request, and the update completes; the daemon never crashed."""
    device = rig.device
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", size=SIZE, move=False)
    rig.hub.add_rule(match=v2.asset, rate=300_000, times=1, name="first download at 300 kB/s")
    rig.hub.tag("2.0.0")
    wait_until(lambda: rig.proxy.delivered(v2.asset) > 200_000, timeout=15, what="the download under way")
    rig.proxy.down(drop=True)
    time.sleep(2.0)
    rig.step("hub back")
    rig.proxy.up()
    wait_settled(device, "2.0.0", timeout=40)
    requests = [r for r in rig.hub.requests(v2.asset) if r.status in (200, 206)]
    assert any((r.range_start or 0) > 0 for r in requests), [(r.range, r.status) for r in requests]
    assert device.daemon_restarts() == 0
    assert device.slot_holds("b", v2)


@pytest.mark.hil_needs(dev.NAME_RESOLUTION)
@pytest.mark.hil_reboots(1)
def test_hil_11_hub_name_does_not_resolve(rig: Rig) -> None:
    """The hub's host name does not resolve (DNS down): the daemon backs off and stays up,
    and updates once the name resolves again."""
    device = rig.device
    wait_settled(device, "1.0.0")
    device.set_name_resolution(False)
    rig.publish("2.0.0", size=SIZE)
    wait_until(lambda: _transient_failures(rig), timeout=20, what="a failed pass")
    assert device.daemon_running() and device.daemon_restarts() == 0
    device.set_name_resolution(True)
    wait_settled(device, "2.0.0", timeout=30)


# =========================================================================== 12: server errors


@pytest.mark.hil_reboots(1)
def test_hil_12_tag_500_is_retried_after_backoff(rig: Rig) -> None:
    """The tag answers 500 once: nothing is installed from it, the failure is logged, the
    next try comes after the backoff the daemon logged (not a tight loop), and the update
    completes."""
    device = rig.device
    wait_settled(device, "1.0.0")
    rig.hub.add_rule(match="/tags/", status=500, times=1)
    rig.publish("2.0.0", size=SIZE)
    wait_settled(device, "2.0.0", timeout=30)
    tags = rig.hub.requests("/tags/")
    failed = next(i for i, r in enumerate(tags) if r.status == 500)
    failures = _transient_failures(rig)
    assert failures, "the failure was not logged"
    waited = tags[failed + 1].mono - tags[failed].mono
    assert waited >= float(failures[0]["retry_in"]) - 0.05, f"retried after {waited:.2f}s, the backoff said {failures[0]['retry_in']}s"


@pytest.mark.hil_reboots(1)
def test_hil_12_retry_after_is_honoured(rig: Rig) -> None:
    """A 503 with Retry-After: 11 (longer than any backoff step here, shorter than the poll
    interval of 30 s): the next request comes no earlier than 11 s later; then the update
    completes."""
    device = rig.device
    device.configure(poll={"interval": "30s", "jitter": "0s"})
    passes = len(rig.recorder.select("daemon", "pass"))
    device.restart_daemon()
    wait_until(lambda: len(rig.recorder.select("daemon", "pass")) > passes, timeout=10, what="the restarted daemon's first pass")
    wait_settled(device, "1.0.0")
    before = len(rig.hub.requests("/tags/"))
    rig.hub.add_rule(match="/tags/", status=503, headers={"Retry-After": "11"}, times=1)
    rig.publish("2.0.0", size=SIZE)
    device.check_now()
    wait_settled(device, "2.0.0", timeout=40)
    tags = rig.hub.requests("/tags/")[before:]
    failed = next(i for i, r in enumerate(tags) if r.status == 503)
    gap = tags[failed + 1].mono - tags[failed].mono
    assert gap >= 10.9, f"the retry came after {gap:.1f}s; Retry-After said 11 s"


@pytest.mark.hil_reboots(1)
def test_hil_12_asset_429_waits_and_resumes(rig: Rig) -> None:
    """The image answers 429 with Retry-After: 1 twice: the download waits at least that
    long each time (no hammering) and completes."""
    device = rig.device
    device.configure(download={"retry_max_wait": "2s"})
    device.restart_daemon()
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", size=SIZE, move=False)
    rig.hub.add_rule(match=v2.asset, status=429, headers={"Retry-After": "1"}, times=2)
    rig.hub.tag("2.0.0")
    wait_settled(device, "2.0.0", timeout=30)
    asset = rig.hub.requests(v2.asset)
    assert [r.status for r in asset[:3]] == [429, 429, 200], [(r.status, r.range) for r in asset]
    assert all(b.mono - a.mono >= 0.95 for a, b in itertools.pairwise(asset[:3])), [r.mono for r in asset]


@pytest.mark.parametrize("fault", ["artifact-404", "malformed-json", "wrong-content-length"])
@pytest.mark.hil_reboots(1)
def test_hil_12_bad_metadata_never_installs(rig: Rig, fault: str) -> None:
    """The image answers 404, its Content-Length differs from the size the version document
    pins, or the tag document is malformed JSON: the failure is reported (a 'failed' event
    naming it), the passive slot keeps its old content and is never armed, nothing reboots;
    a 404 or a wrong length is no verdict on the version (a CDN may still be filling), so it
    is retried, but backing off: from a sixteenth of the poll interval, doubling, never more
    often than every half interval. After a malformed document is fixed, the
    next poll installs."""
    device = rig.device
    wait_settled(device, "1.0.0")
    pattern = _passive_old_content(rig)
    v2 = rig.publish("2.0.0", size=SIZE, move=False)
    if fault == "artifact-404":
        rig.hub.add_rule(match=v2.asset, status=404)
    elif fault == "wrong-content-length":
        rig.hub.add_rule(match=v2.asset, length_delta=1000)
    else:
        rig.hub.add_rule(match="/tags/", body='{"versionId": "pkg_v_broken", "assets": [', times=3)
    rig.hub.tag("2.0.0")
    failed = wait_event(device, "failed", timeout=20)
    error = failed[-1]["attributes"].get("error", "")
    expected = {"artifact-404": "404", "malformed-json": "JSON", "wrong-content-length": "bytes"}[fault]
    assert expected in error, error
    time.sleep(2.5)
    st = device.boot_state()
    assert st.booted == "a" and st.try_next is None and reboots(device) == 0
    if pattern:
        assert device.slot_sha256("b") == pattern, "the passive slot was touched"
    if fault != "malformed-json":
        asset = rig.hub.requests(v2.asset)
        span = asset[-1].mono - asset[0].mono
        # the first five gaps add up to at least half a second, then each is at least half of the 1 s interval
        assert len(asset) <= 6 + span / 0.5, f"{len(asset)} requests in {span:.2f} s: not backing off"
        assert "downloaded" not in kinds(device)
        assert device.status()["state"] in ("failed", "blocked")
    else:
        assert not rig.hub.requests(v2.asset), "an image was fetched from a malformed document"
        rig.hub.clear_rules()
        wait_settled(device, "2.0.0", timeout=30)


@pytest.mark.parametrize("fault", ["short-body", "redirect-chain"])
@pytest.mark.hil_reboots(1)
def test_hil_12_odd_answers_still_verify(rig: Rig, fault: str) -> None:
    """A body that ends before its Content-Length (the connection closes at 600 kB), or a
    chain of three redirects before the image: the download resumes or follows, and only the
    verified image is installed."""
    device = rig.device
    wait_settled(device, "1.0.0")
    v2 = rig.publish("2.0.0", size=SIZE, move=False)
    if fault == "short-body":
        rig.hub.add_rule(match=v2.asset, cut_after=600_000, times=1)
    else:
        rig.hub.add_rule(match=v2.asset, redirects=3, times=1)
    rig.hub.tag("2.0.0")
    wait_settled(device, "2.0.0", timeout=30)
    assert device.slot_holds("b", v2)
    if fault == "redirect-chain":
        assert sum(1 for r in rig.hub.requests() if r.status == 302) == 3
    else:
        assert any((r.range_start or 0) > 0 for r in rig.hub.requests(v2.asset))
    assert len(events_of(device, "completed")) == 1
