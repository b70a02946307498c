"""SIGKILL of ota-daemon after each journal transition of an update on the real RAUC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.installers import get_installer
from ota_daemon.repo import publish
from ota_daemon.state import Journal, Phase
from ota_daemon.testing import serve_directory, to_toml

EDGES = ["idle->downloading", "downloading->installing", "installing->rebooting", "rebooting->committing", "committing->idle"]


def _check(config: Path, faults: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env["OTA_DAEMON_FAULTS"] = str(faults)
    return subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(config), "check"], capture_output=True, text=True, env=env, timeout=180, check=False)


@pytest.mark.parametrize("edge", EDGES)
async def test_sigkill_at_transition_on_rauc(rauc_device: Any, edge: str) -> None:
    """Killed right after ``edge`` is journaled, later passes end with 2.0.0 committed by RAUC,
    one completion reported, no second install after it."""
    root: Path = rauc_device.root
    repo = root / "repository"
    publish(repo, "fleet/system/stable", version="2.0.0", files=[("otatest.raucb", rauc_device.build_bundle("2.0.0"))])
    faults = root / "faults.json"
    faults.write_text(json.dumps([f"journal:{edge}"]))
    with serve_directory(repo) as server:
        tables = rauc_device.config_data()
        tables["system"] = {"name": "otatest", "build_info": str(root / "none.json"), "os_release": str(root / "none")}
        tables["hub"] = {"kind": "static", "url": server.url, "path": "fleet/system/stable", "allow_insecure": True}
        tables["health"] = {"checks": [{"kind": "command", "command": ["true"]}]}
        tables["policy"] = {"inhibit_dir": str(root / "inhibit.d")}
        tables["hooks"] = {"dir": str(root / "hooks.d")}
        config = root / "config.toml"
        config.write_text(to_toml(tables))
        codes = []
        for _ in range(8):
            result = _check(config, faults)
            codes.append(result.returncode)
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            await rauc_device.reboot_if_requested()
            if result.returncode == 0 and "up_to_date" in result.stdout:
                break
    assert codes.count(-9) == 1 and json.loads(faults.read_text()) == [], codes
    installer = get_installer("rauc", config=rauc_device.config)
    try:
        info = await installer.slot_info()
    finally:
        await installer.aclose()
    assert info.version_of(info.booted) == "2.0.0" and info.booted == info.primary
    assert rauc_device.slot_bytes(rauc_device.booted) == rauc_device.payload("2.0.0")
    assert Journal(rauc_device.root / "state").load().phase is Phase.IDLE
    kinds = [json.loads(x)["attributes"]["event"] for x in (rauc_device.root / "state" / "events.jsonl").read_text().splitlines()]
    assert kinds.count("completed") == 1
    assert "installing" not in kinds[kinds.index("completed") :]
