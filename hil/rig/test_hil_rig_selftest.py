"""Self-tests of the rig's own parts (no target needed): the hub double's rules, the fault
proxy's toxics, the image behaviours, the timeline's spans and the bench file checks."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from hil.rig.bench import BenchError, check_bench, load_bench
from hil.rig.faultproxy import FaultProxy
from hil.rig.hub import HubDouble
from hil.rig.images import OLD_CONTENT, behaviour_of, build_image
from hil.rig.timeline import Recorder, phase_spans

EXAMPLE = Path(__file__).resolve().parents[1] / "benches" / "example.toml"


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    recorder = Recorder("selftest")
    with HubDouble(tmp_path, recorder=recorder) as hub:
        image = build_image(tmp_path / "img", system="s", version="2.0.0", size=200_000)
        hub.publish("2.0.0", image.path, system="s")
        yield hub, image


def _asset_url(hub: HubDouble, base: str) -> str:
    return base + "fleet/" + str(hub.versions["2.0.0"].document["assets"][0]["url"])


def test_hil_rig_hub_serves_ranges_and_etags(hub: Any) -> None:
    """The hub double answers Range requests with 206 and repeated tag polls with 304."""
    h, image = hub
    url = _asset_url(h, h.url)
    part = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == image.path.read_bytes()[1000:]
    tag = httpx.get(h.url + "fleet/system/tags/stable.json")
    again = httpx.get(h.url + "fleet/system/tags/stable.json", headers={"If-None-Match": tag.headers["etag"]})
    assert again.status_code == 304
    assert [r.status for r in h.requests()] == [206, 200, 304]


def test_hil_rig_hub_rules_apply_then_expire(hub: Any) -> None:
    """A rule with times=1 answers once (503 + Retry-After), then the file is served; a flip
    rule changes exactly one byte; a redirect rule sends a chain of 302s."""
    h, image = hub
    url = _asset_url(h, h.url)
    h.add_rule(match="/assets/", status=503, headers={"Retry-After": "7"}, times=1)
    first = httpx.get(url)
    assert first.status_code == 503 and first.headers["retry-after"] == "7"
    assert httpx.get(url).content == image.path.read_bytes()
    h.clear_rules()
    h.add_rule(match="/assets/", flip_at=5000, times=1)
    flipped = httpx.get(url).content
    original = image.path.read_bytes()
    assert sum(a != b for a, b in zip(flipped, original, strict=True)) == 1
    h.add_rule(match="/assets/", redirects=2, times=1)
    assert httpx.get(url, follow_redirects=True).content == original
    assert sum(1 for r in h.requests() if r.status == 302) == 2


def test_hil_rig_proxy_cuts_and_corrupts(hub: Any) -> None:
    """Through the fault proxy: close_after ends the body early (the client sees a short
    read), corrupt_at flips one byte at a body offset, and a cleared proxy passes through."""
    h, image = hub
    with FaultProxy(("127.0.0.1", h.port)) as proxy:
        url = _asset_url(h, proxy.url)
        proxy.set(match="/assets/", close_after=50_000, times=1)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url)
        proxy.set(match="/assets/", corrupt_at=1234)
        body = httpx.get(url).content
        assert len(body) == image.size and hashlib.sha256(body).hexdigest() != image.sha256
        proxy.clear()
        assert hashlib.sha256(httpx.get(url).content).hexdigest() == image.sha256
        proxy.down()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
        proxy.up()
        assert httpx.get(url).status_code == 200


def test_hil_rig_image_behaviours(tmp_path: Path) -> None:
    """An image's header names how the simulated board behaves when it boots it."""
    for behaviour in ("ok", "panic", "hang", "unhealthy"):
        image = build_image(tmp_path, system="s", version="1", size=4096, behaviour=behaviour)
        assert behaviour_of(image.path.read_bytes()[:4096]) == behaviour
    assert behaviour_of(OLD_CONTENT[:4096]) == "ok"
    assert behaviour_of(b"\0" * 64) == "panic"


def test_hil_rig_phase_spans() -> None:
    """Daemon events and power/boot events become consecutive coloured spans."""
    events = [
        {"mono": 1.0, "source": "daemon", "kind": "downloading"},
        {"mono": 2.0, "source": "daemon", "kind": "installing"},
        {"mono": 3.0, "source": "daemon", "kind": "rebooting"},
        {"mono": 3.5, "source": "boot", "kind": "boot"},
        {"mono": 3.6, "source": "rig", "kind": "daemon-start"},
        {"mono": 4.0, "source": "daemon", "kind": "committing"},
        {"mono": 5.0, "source": "daemon", "kind": "completed"},
    ]
    spans = [(s.phase, s.start, s.end) for s in phase_spans(events, end=6.0)]
    assert spans == [("idle", 0.0, 1.0), ("download", 1.0, 2.0), ("install", 2.0, 3.0), ("reboot", 3.0, 3.5), ("boot", 3.5, 3.6), ("idle", 3.6, 4.0), ("commit", 4.0, 5.0), ("idle", 5.0, 6.0)]


def test_hil_rig_example_bench_parses() -> None:
    """The shipped example bench file is valid: every table and image role is understood."""
    bench = load_bench(EXAMPLE)
    assert bench.host == "192.0.2.50" and bench.installer == "rugix"
    assert {"baseline", "good", "panic", "unsigned"} <= set(bench.images)
    assert bench.power_off[0] == "curl" and bench.boot_timeout == 180.0


def test_hil_rig_bench_errors_name_the_key(tmp_path: Path) -> None:
    """A bench file with a missing key or an unknown table is refused with a message naming it."""
    bad = tmp_path / "bench.toml"
    bad.write_text('[device]\nhost = "x"\ninstaller = "rugix"\n[power]\non = "true"\noff = "true"\n[hub]\nlisten = "127.0.0.1:1"\nurl = "http://x/"\n[images]\nsystem = "s"\nbaseline = { version = "1", file = "a" }\n')
    with pytest.raises(BenchError, match="'good' image is required"):
        load_bench(bad)
    bad.write_text(bad.read_text() + "[extra]\n")
    with pytest.raises(BenchError, match=r"unknown table \[extra\]"):
        load_bench(bad)


def test_hil_rig_check_bench_reports_unreachable_board(tmp_path: Path) -> None:
    """--check-bench fails with the SSH error when the board does not answer, after the file,
    images and power commands passed."""
    for name in ("a.img", "b.img"):
        (tmp_path / name).write_bytes(b"x")
    bench = tmp_path / "bench.toml"
    bench.write_text(
        '[device]\nhost = "127.0.0.1"\nport = 1\ninstaller = "rugix"\n[power]\non = "true"\noff = "true"\n'
        '[hub]\nlisten = "127.0.0.1:0"\nurl = "http://127.0.0.1/"\n[images]\nsystem = "s"\n'
        'baseline = { version = "1.0.0", file = "a.img" }\ngood = { version = "2.0.0", file = "b.img" }\n'
    )

    def fake_ssh(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[0] == "ssh" and "root@127.0.0.1" in cmd
        return subprocess.CompletedProcess(cmd, 255, "", "ssh: connect to host 127.0.0.1 port 1: Connection refused")

    with pytest.raises(BenchError, match="Connection refused"):
        check_bench(bench, run=fake_ssh)
    ok = check_bench(bench, run=lambda cmd, **_: subprocess.CompletedProcess(cmd, 0, "enabled\nabcd-boot\n", ""))
    assert ok[-1].endswith("boot id abcd-boot")


def test_hil_rig_qemu_cuts_power_on_the_daemons_kill_line() -> None:
    """The qemu target cuts the power when the console says the daemon was SIGKILLed (a fault
    point fired) while a point is armed; not on other exits, not with nothing armed."""
    import threading

    from hil.rig.targets.qemu import QemuDevice

    device = object.__new__(QemuDevice)  # the console logic only: no QEMU, no disk
    device._lock = threading.RLock()
    device._armed = []
    device._proc = object()  # type: ignore[assignment]
    device._boots, device._last_lines = [], []
    device._next_reason, device._panicked, device._cut_next_reboot = None, False, False
    device.recorder = Recorder("selftest")
    cut = threading.Event()
    cuts: list[str] = []

    def fake_cut(why: str) -> None:
        cuts.append(why)
        cut.set()

    device._cut = fake_cut  # type: ignore[method-assign]
    device._on_console("HIL-DAEMON-EXIT result=signal status=KILL")  # nothing armed
    device._armed = ["install:50"]
    device._on_console("HIL-DAEMON-EXIT result=exit-code status=1")  # a failed start
    device._on_console("HIL-DAEMON-EXIT result=success status=0")  # a stop
    assert not cut.wait(0.2) and cuts == []
    device._on_console("HIL-DAEMON-EXIT result=signal status=KILL")
    assert cut.wait(5.0), "no power cut"
    assert cuts == ["fault point install:50"] and device._armed == []
    fired = device.recorder.select("fault", "fault-point")
    assert [e["point"] for e in fired] == ["install:50"]


def _collected(*args: str) -> list[str]:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "hil", "-p", "no:cacheprovider", "--collect-only", "-q", "--target", "qemu", *args],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode in (0, 5), out.stdout[-2000:] + out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_hil_rig_shards_split_the_selection_once_and_by_minutes() -> None:
    """--shard K/N after -m: the N parts are disjoint, cover the selection, and the longest
    scenario lands alone when it outweighs the others; a bad value is a usage error."""
    from hil.conftest import parse_shard, shard_of

    whole = _collected("-m", "hil_qemu_ci")
    parts = [_collected("-m", "hil_qemu_ci", "--shard", f"{k}/2") for k in (1, 2)]
    assert len(whole) >= 2 and all(parts), parts
    assert sorted(parts[0] + parts[1]) == sorted(whole) and not set(parts[0]) & set(parts[1])
    assert shard_of([("a", 30.0), ("b", 10.0), ("c", 10.0), ("d", 9.0)], 2) == {"a": 1, "b": 2, "c": 2, "d": 2}
    assert shard_of([("x", 5.0), ("y", 5.0)], 2) == shard_of([("y", 5.0), ("x", 5.0)], 2) == {"x": 1, "y": 2}
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(pytest.UsageError, match="--shard"):
            parse_shard(bad)
