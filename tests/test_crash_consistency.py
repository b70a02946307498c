"""SIGKILL at every journal transition, enumerated from ``state.TRANSITIONS``.

For each edge, the scenarios below are tried until one reaches it; the process is killed
right after the transition is written, and further passes run until the device settles.
Afterwards the device runs exactly one committed version (the one the scenario ends with),
the journal is idle, and no completion or rollback was reported twice; no attempt that
completed was installed again. A new edge that no scenario reaches fails the test, so every
transition stays covered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.state import TRANSITIONS, Journal, Phase
from ota_daemon.testing import SimWorld


@dataclass
class Scenario:
    name: str
    final_version: str
    overrides: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[SimWorld], None] | None = None
    fail_trial_boot: bool = False
    final_outcome: str = "completed"
    #: power cuts the scenario itself causes (besides the armed one)
    own_kills: int = 0
    #: fault points the scenario arms itself, before the one under test
    own_faults: tuple[str, ...] = ()
    #: a kill is a power cut: the device reboots (its bootloader decides) before the next pass
    power_cycle: bool = False


def _corrupt(world: SimWorld) -> None:
    published = world.versions["1.1.0"]
    image = next(a for a in published.document["assets"] if a["filename"].endswith(".img"))
    blob = world.repo_dir / "fleet" / image["url"]
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


def _foreign(world: SimWorld) -> None:
    world.publish("1.1.0", system="other-board", build_info=False)


FAILING_GATE = {"deadline": "1s", "interval": "1s", "checks": [{"kind": "command", "name": "app", "command": ["false"]}]}

# the gate's first run pulls the plug on the daemon (its parent) in the middle of the commit phase
CRASH_IN_GATE = {
    "deadline": "5s",
    "checks": [{"kind": "command", "name": "app", "command": ["sh", "-c", 'm="$(dirname "$OTA_MARK")"; [ -e "$OTA_MARK" ] || { touch "$OTA_MARK"; kill -9 $PPID; sleep 5; }; true']}],
}

SCENARIOS = [
    Scenario("update in file mode", "1.1.0"),
    Scenario("update in stream mode", "1.1.0", {"download": {"mode": "stream"}}),
    Scenario("trial boot fails", "1.0.0", fail_trial_boot=True, final_outcome="rollback"),
    Scenario("health gate fails", "1.0.0", {"health": FAILING_GATE}, final_outcome="rollback"),
    # bytes that differ from the document prove nothing against the version: failed, backing off
    Scenario("corrupt image, file mode", "1.0.0", prepare=_corrupt, final_outcome="backoff"),
    Scenario("corrupt image, stream mode", "1.0.0", {"download": {"mode": "stream"}}, prepare=_corrupt, final_outcome="backoff"),
    Scenario("installer refuses the image", "1.0.0", prepare=_foreign, final_outcome="failed"),
    Scenario("power cut during the health gate", "1.1.0", {"health": CRASH_IN_GATE}, own_kills=1),
    Scenario("power cut before the reboot", "1.1.0", own_faults=("journal:installing->rebooting",), own_kills=1),
    # the trial system loses power mid-commit: the try-once bootloader returns to the old slot,
    # the daemon arms the trial again (committing -> rebooting) and it completes
    Scenario("power loss during the commit", "1.1.0", own_faults=("journal:rebooting->committing",), own_kills=1, power_cycle=True),
]

EDGES = sorted(f"{a.value}->{b.value}" for a, b in TRANSITIONS)


def _check(world: SimWorld, config: Path, faults: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    if faults is not None:
        env["OTA_DAEMON_FAULTS"] = str(faults)
    return subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(config), "check"], capture_output=True, text=True, env=env, timeout=120, check=False)


def _events(world: SimWorld) -> list[dict[str, Any]]:
    path = world.state_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def run_scenario(root: Path, scenario: Scenario, point: str) -> bool:
    """Run ``scenario`` with a kill armed at ``point``; True if the kill happened. Asserts the
    invariants either way."""
    world = SimWorld(root)
    world.create_device("1.0.0")
    world.publish("1.0.0")
    world.publish("1.1.0", size=512 << 10)
    if scenario.prepare:
        scenario.prepare(world)
    config = world.toml(**scenario.overrides)
    faults = root / "faults.json"
    faults.write_text(json.dumps([*scenario.own_faults, point]))
    codes: list[int] = []
    failed_trial = False
    os.environ["OTA_MARK"] = str(root / "gate-crashed")
    try:
        for _ in range(10):
            result = _check(world, config, faults)
            codes.append(result.returncode)
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            if result.returncode == -9 and scenario.power_cycle:
                world.device.boot()
            info = world.device.info()
            if scenario.fail_trial_boot and not failed_trial and info.booted == "b" and not info.committed:
                world.device.boot()  # the trial system dies before it can commit
                failed_trial = True
            if result.returncode in (0, 4) and ("up_to_date" in result.stdout or "blocked" in result.stdout):
                break
            if scenario.final_outcome == "backoff" and result.returncode == 1 and "trying again later" in result.stdout:
                break
    finally:
        del os.environ["OTA_MARK"]
    killed = point not in json.loads(faults.read_text())
    assert codes.count(-9) == int(killed) + scenario.own_kills, codes
    assert codes[-1] in ((1,) if scenario.final_outcome == "backoff" else (0, 4)), (codes, result.stdout, result.stderr[-2000:])
    if scenario.final_outcome == "backoff":
        assert Journal(world.state_dir).load().quarantine == {}
    # the device settled on one committed version
    info = world.device.info()
    assert info.committed and info.pending is None, info
    assert info.version_of(info.booted) == scenario.final_version, (info, codes)
    assert Journal(world.state_dir).load().phase is Phase.IDLE
    kinds = [e["attributes"]["event"] for e in _events(world)]
    assert kinds.count("completed") == (1 if scenario.final_outcome == "completed" else 0), (scenario.name, point, kinds)
    assert kinds.count("rollback") == (1 if scenario.final_outcome == "rollback" else 0), kinds
    if "completed" in kinds:
        assert "installing" not in kinds[kinds.index("completed") :], kinds
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["currentVersion"] == scenario.final_version
    return killed


@pytest.mark.parametrize("edge", EDGES)
def test_sigkill_at_every_transition(tmp_path: Path, edge: str) -> None:
    """Killed right after the journal transition ``edge`` is written, the device converges."""
    for index, scenario in enumerate(SCENARIOS):
        if run_scenario(tmp_path / f"s{index}", scenario, f"journal:{edge}"):
            return
    pytest.fail(f"no scenario reaches the journal transition {edge}: add one to SCENARIOS")
