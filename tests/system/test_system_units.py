"""The systemd units: verified by systemd itself, and the directives the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ota_daemon.config import GuardConfig

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
UNITS = ("ota-daemon.service", "ota-daemon-guard.service", "ota-daemon-guard.timer")


def directives(path: Path) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every directive line (comments skipped, repeats kept)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(path) if s == section and k == key]


def prepare(tmp_path: Path, *, extra: dict[str, str] | None = None) -> list[Path]:
    """Copy the units to ``tmp_path``; ExecStart binaries missing here become a stub that exists."""
    stub = tmp_path / "bin" / "stub"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for name in UNITS:
        text = (UNIT_DIR / name).read_text()

        def swap(match: re.Match[str]) -> str:
            binary = match.group(2)
            return match.group(1) + (binary if Path(binary).exists() else str(stub))

        text = re.sub(r"^(Exec(?:Start|Reload)=[-@:+!]*)(/\S+)", swap, text, flags=re.MULTILINE)
        text += (extra or {}).get(name, "")
        target = tmp_path / name
        target.write_text(text)
        copies.append(target)
    return copies


def verify(units: list[Path]) -> tuple[int, list[str]]:
    """``systemd-analyze verify``: the exit code and the lines that concern our unit files."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60, check=False
    )
    names = tuple(u.name for u in units)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if any(n in line for n in names)]
    return result.returncode, ours


@pytest.fixture
def analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")


def test_system_units_verify_clean(tmp_path: Path, analyze: None) -> None:
    """systemd-analyze verify accepts all three units with no warning about any of them
    (unknown keys, unparsable values, missing executables all count)."""
    code, ours = verify(prepare(tmp_path))
    assert (code, ours) == (0, [])


@pytest.mark.parametrize(
    ("unit", "broken", "expected"),
    [
        ("ota-daemon.service", "\n[Service]\nKilMode=mixed\n", "Unknown key"),
        ("ota-daemon-guard.timer", "\n[Timer]\nOnBootSec=half an hour\n", "Failed to parse timer value"),
        ("ota-daemon-guard.service", "\n[Service]\nExecStartPost=/nonexistent/ota-daemon-hook\n", "not executable"),
    ],
)
def test_system_units_verify_catches_breakage(tmp_path: Path, analyze: None, unit: str, broken: str, expected: str) -> None:
    """The verify check is real: a typo'd key, a bad time span or a missing binary in one
    unit is reported against that unit."""
    code, ours = verify(prepare(tmp_path, extra={unit: broken}))
    assert code != 0 or ours
    assert any(expected in line for line in ours), ours


def test_system_daemon_unit_contract() -> None:
    """ota-daemon.service carries what the daemon relies on: sd_notify from the main process
    with a watchdog, exit 2 not restarted, SIGTERM to the daemon only, time to finish an
    install, SIGHUP reload to $MAINPID, the state/cache/runtime directories (runtime kept for
    inhibitor leases), and network ordering."""
    unit = UNIT_DIR / "ota-daemon.service"
    expect = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "KillMode": "mixed",
        "StateDirectory": "ota-daemon",
        "CacheDirectory": "ota-daemon",
        "RuntimeDirectory": "ota-daemon",
        "RuntimeDirectoryPreserve": "yes",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ExecStart": "/usr/bin/ota-daemon run",
    }
    assert {k: values(unit, "Service", k) for k in expect} == {k: [v] for k, v in expect.items()}
    assert values(unit, "Service", "WatchdogSec") == ["60s"]
    assert values(unit, "Service", "TimeoutStopSec") == ["15min"]
    after = " ".join(values(unit, "Unit", "After")).split()
    assert {"network-online.target", "nexigon-agent.service"} <= set(after)
    assert values(unit, "Unit", "Wants") == ["network-online.target"]
    assert "nexigon-agent.service" not in " ".join(values(unit, "Unit", "Wants") + values(unit, "Unit", "Requires"))
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


#: directives that break the installers (block devices, mounts, boot flows); see the unit's comments
FORBIDDEN = (
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "DevicePolicy", "DeviceAllow",
    "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectHostname", "CapabilityBoundingSet", "SystemCallFilter",
    "RestrictSUIDSGID", "MemoryDenyWriteExecute", "ReadOnlyPaths", "InaccessiblePaths", "User", "DynamicUser",
)


@pytest.mark.parametrize("name", ["ota-daemon.service", "ota-daemon-guard.service"])
def test_system_units_leave_out_breaking_hardening(name: str) -> None:
    """No directive that would break slot writes, mounts or boot-flow writes is set, and each
    one is named in the unit's comments with the reason it is left out."""
    path = UNIT_DIR / name
    keys = {k for _, k, _ in directives(path)}
    assert keys.isdisjoint(FORBIDDEN)
    assert values(path, "Service", "NoNewPrivileges") == ["yes"]
    if name == "ota-daemon.service":
        text = path.read_text()
        missing = [d for d in FORBIDDEN if f"{d}=" not in text and d not in ("ReadOnlyPaths", "InaccessiblePaths")]
        assert missing == []


def test_system_unit_documents_check_now() -> None:
    """The unit's comments give the "check now" recipe, aimed at the main process only
    (SIGUSR1 would kill an installer child)."""
    text = (UNIT_DIR / "ota-daemon.service").read_text()
    assert "systemctl kill --kill-whom=main -s USR1 ota-daemon" in text


def test_system_guard_timer_matches_guard_default(analyze: None) -> None:
    """The timer fires once per boot at guard.timeout's default and starts the guard service,
    a oneshot without a start timeout (it may sleep the rest of guard.timeout)."""
    timer = UNIT_DIR / "ota-daemon-guard.timer"
    (on_boot,) = values(timer, "Timer", "OnBootSec")
    span = subprocess.run(["systemd-analyze", "timespan", on_boot], capture_output=True, text=True, check=True).stdout
    micros = int(re.search(r"μs: (\d+)", span).group(1))  # type: ignore[union-attr]
    assert micros == GuardConfig().timeout * 1_000_000
    assert values(timer, "Timer", "Unit") == ["ota-daemon-guard.service"]
    assert values(timer, "Install", "WantedBy") == ["timers.target"]
    assert values(timer, "Timer", "OnUnitActiveSec") == []
    service = UNIT_DIR / "ota-daemon-guard.service"
    assert values(service, "Service", "Type") == ["oneshot"]
    assert values(service, "Service", "ExecStart") == ["/usr/bin/ota-daemon-guard"]
    assert values(service, "Service", "TimeoutStartSec") == ["infinity"]
