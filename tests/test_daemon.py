"""The daemon loop: schedule, backoff, signals and the sd_notify conversation."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.clock import FakeClock
from ota_daemon.daemon import Daemon, backoff_delay
from ota_daemon.testing import SimWorld
from tests.conftest import make_config


class RecordingNotifier:
    """Records sd_notify messages; stops the daemon once ``done(messages, daemon)`` holds."""

    def __init__(self, done: Any, daemon_ref: list[Daemon]) -> None:
        self.messages: list[str] = []
        self.done = done
        self.daemon_ref = daemon_ref

    def notify(self, state: str) -> None:
        self.messages.append(state)
        if state.startswith("STATUS=") and self.daemon_ref and self.done(self.messages, self.daemon_ref[0]):
            self.daemon_ref[0].stop()


async def run_daemon(world: SimWorld, clock: FakeClock, passes: int, *, done: Any = None, **overrides: Any) -> tuple[Daemon, RecordingNotifier]:
    import random

    ref: list[Daemon] = []
    notifier = RecordingNotifier(done or (lambda _m, d: d.passes >= passes), ref)
    daemon = Daemon(None, config=make_config(world, **overrides), clock=clock, notifier=notifier, rng=random.Random(7))
    ref.append(daemon)
    await asyncio.wait_for(daemon.run(), 60)
    return daemon, notifier


async def test_polls_at_interval_with_jitter(world: SimWorld, clock: FakeClock) -> None:
    """Idle passes are spaced by the interval plus up to the jitter, in injected time."""
    _, notifier = await run_daemon(world, clock, 3, poll={"interval": "1h", "jitter": "5m"})
    waits = [s for s in clock.slept if s > 0]
    assert len(waits) >= 2
    for wait in waits[:2]:
        assert 3600 <= wait <= 3900
    assert notifier.messages[0] == "READY=1"
    assert notifier.messages[-1] == "STOPPING=1"
    assert any(m.startswith("STATUS=idle, 1.0.0, next check") for m in notifier.messages)


async def test_backoff_on_hub_errors(world: SimWorld, clock: FakeClock) -> None:
    """An unreachable hub is retried with growing delays, capped at the interval; never a tight loop."""

    def six_failures(messages: list[str], _: Daemon) -> bool:
        return sum(m.startswith("STATUS=hub unavailable") for m in messages) >= 6

    daemon, _ = await run_daemon(world, clock, 0, done=six_failures, hub={"url": "http://127.0.0.1:9/"}, poll={"interval": "2m"})
    waits = [s for s in clock.slept if s > 0]
    assert len(waits) >= 5
    assert waits[0] <= 10
    assert all(w <= 120 for w in waits)
    assert waits[4] > waits[0]
    assert daemon.failures >= 6
    assert not (world.state_dir / "journal.json").exists() or "idle" in (world.state_dir / "journal.json").read_text()


def test_backoff_delay_grows_and_caps() -> None:
    """Exponential backoff with jitter, capped at the poll interval."""
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, interval=600, rng=rng) for n in range(1, 12)]
    assert delays[0] <= 10
    assert max(delays) <= 600
    assert delays[-1] >= 300
    assert all(d > 0 for d in delays)


async def test_update_then_commit_in_daemon(world: SimWorld, clock: FakeClock) -> None:
    """The daemon installs, (simulated) reboots and commits across passes, reporting progress."""
    world.publish("1.1.0")
    _, notifier = await run_daemon(world, clock, 3, poll={"interval": "1h"})
    info = world.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0"
    statuses = [m for m in notifier.messages if m.startswith("STATUS=")]
    assert any("installing" in s for s in statuses)
    assert any(s.startswith("STATUS=idle, 1.1.0") for s in statuses)


# --------------------------------------------------------------------------- sd_notify, for real


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock


def _receive_until(sock: socket.socket, predicate: Any, limit: float = 60) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.extend(data.split("\n"))
        if any(predicate(m) for m in got):
            return got
    raise AssertionError(f"never saw the expected message; got {got}")


def test_sd_notify_conversation(world: SimWorld, tmp_path: Path) -> None:
    """Over a real NOTIFY_SOCKET: READY, STATUS through an update, WATCHDOG at half the
    configured rate, STOPPING on SIGTERM, exit 0."""
    world.publish("1.1.0", size=2 << 20)
    sock = _notify_socket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    config = world.toml(poll={"interval": "1h"})
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", "--config", str(config), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        messages = _receive_until(sock, lambda m: m.startswith("STATUS=idle, 1.1.0"))
        assert messages[0] == "READY=1" or "READY=1" in messages
        statuses = [m for m in messages if m.startswith("STATUS=")]
        assert any(s.startswith("STATUS=installing") or s.startswith("STATUS=downloading") for s in statuses), statuses
        # watchdog: count pings over a measured stretch
        start = time.monotonic()
        pings = 0
        while time.monotonic() - start < 1.2:
            try:
                if "WATCHDOG=1" in sock.recv(4096).decode():
                    pings += 1
            except TimeoutError:
                break
        elapsed = time.monotonic() - start
        assert 0.5 * elapsed / 0.2 <= pings <= 1.5 * elapsed / 0.2 + 1, (pings, elapsed)
        proc.send_signal(signal.SIGTERM)
        tail = _receive_until(sock, lambda m: m == "STOPPING=1", limit=20)
        assert "STOPPING=1" in tail
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    info = world.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0"


def test_config_error_exit_2_with_status(tmp_path: Path) -> None:
    """A fatal configuration error: STATUS names it, exit code 2 (RestartPreventExitStatus=2)."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[poll]\ninterval = "sometimes"\n')
    sock = _notify_socket(tmp_path / "n.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env["NOTIFY_SOCKET"] = str(tmp_path / "n.sock")
    proc = subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(bad), "run"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "poll.interval" in proc.stderr and "Traceback" not in proc.stderr
    sock.settimeout(2)
    assert "configuration error" in sock.recv(4096).decode()
    sock.close()


@pytest.mark.parametrize("sig", [signal.SIGUSR1])
def test_sigusr1_checks_now(world: SimWorld, tmp_path: Path, sig: signal.Signals) -> None:
    """SIGUSR1 makes an idle daemon check now instead of at the next interval."""
    sock = _notify_socket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    config = world.toml(poll={"interval": "1h"})
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", "--config", str(config), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _receive_until(sock, lambda m: m.startswith("STATUS=idle, 1.0.0"))
        world.publish("1.1.0")
        proc.send_signal(sig)
        _receive_until(sock, lambda m: m.startswith("STATUS=idle, 1.1.0"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_sighup_reloads_and_keeps_a_good_config(world: SimWorld, tmp_path: Path) -> None:
    """SIGHUP re-reads the file: a broken file is reported and the old config stays in force;
    a good one takes effect (here: another tag, installed after SIGUSR1)."""
    sock = _notify_socket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    config = world.toml(poll={"interval": "1h"})
    good = config.read_text()
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", "--config", str(config), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _receive_until(sock, lambda m: m.startswith("STATUS=idle, 1.0.0"))
        config.write_text("[poll\n")
        proc.send_signal(signal.SIGHUP)
        _receive_until(sock, lambda m: m == "RELOADING=1")
        _receive_until(sock, lambda m: m == "READY=1")
        assert proc.poll() is None  # still running on the old config
        world.publish("1.1.0", tag="beta")
        config.write_text(good.replace('path = "fleet/system/stable"', 'path = "fleet/system/beta"'))
        proc.send_signal(signal.SIGHUP)
        _receive_until(sock, lambda m: m == "RELOADING=1")
        proc.send_signal(signal.SIGUSR1)
        _receive_until(sock, lambda m: m.startswith("STATUS=idle, 1.1.0"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


# --------------------------------------------------------------------------- months in the field


@pytest.mark.parametrize("failures", [1024, 1025, 1100, 10**6, 10**18])
def test_backoff_delay_never_overflows(failures: int) -> None:
    """A hub away for days: after ~1,025 failed passes in a row the delay stays capped at the
    interval (it raised OverflowError and ended the daemon)."""
    import random

    delay = backoff_delay(failures, interval=60, rng=random.Random(3))
    assert 30 <= delay <= 60


async def test_daemon_survives_a_hub_outage_of_days(world: SimWorld, clock: FakeClock) -> None:
    """The daemon keeps retrying through a day-long outage at a one-minute interval
    (1,440+ failed passes in a row) without dying; each wait is at most the interval."""
    def enough(messages: list[str], d: Daemon) -> bool:
        return d.failures >= 1030

    import random

    ref: list[Daemon] = []
    notifier = RecordingNotifier(enough, ref)
    daemon = Daemon(None, config=make_config(world, hub={"url": "http://127.0.0.1:9/"}, poll={"interval": "1m"}), clock=clock, notifier=notifier, rng=random.Random(7))
    ref.append(daemon)
    daemon.failures = 1020  # the first 1,020 failures went by already
    await asyncio.wait_for(daemon.run(), 120)
    assert daemon.failures >= 1030
    assert all(s <= 60 for s in clock.slept)


