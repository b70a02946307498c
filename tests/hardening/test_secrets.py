"""Secrets never leave: full update cycles against the Nexigon double (faults included), then
everything the daemon wrote or sent is searched for the issued URLs' credentials and the
device's deployment token id.

Searched: the stdout and stderr of every run (debug logs included), every file under the
state directory, the status property and the events on the hub, and `status --json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ota_daemon.installers.simulated import make_image
from ota_daemon.testing import SimWorld, to_toml
from tests.nexigon.double.fixture import NexigonDouble

FAILING = {"deadline": "1s", "interval": "1s", "checks": [{"kind": "command", "name": "app", "command": ["false"]}]}
PASSING = {"checks": [{"kind": "command", "name": "app", "command": ["true"]}]}


@pytest.fixture
def double(tmp_path: Path) -> NexigonDouble:
    with NexigonDouble(tmp_path / "double") as d:
        yield d  # type: ignore[misc]


@pytest.mark.parametrize("transport", ["socket", "cli"])
def test_no_secret_in_anything_written_or_sent(double: NexigonDouble, tmp_path: Path, transport: str) -> None:
    """Update, expired and re-issued URLs, a cut download, a failed download, the hub away, a
    health-gate rollback: no credential appears anywhere."""
    world = SimWorld(tmp_path / "world")
    world.create_device("1.0.0")
    outputs: list[str] = []

    def run(*args: str, health: dict[str, object] = PASSING) -> subprocess.CompletedProcess[str]:
        config = world.root / "config.toml"
        tables = world.tables(hub=double.hub_config(transport), health=health, log={"level": "debug", "format": "json"}, download={"retry_initial_wait": "0.05s", "max_retries": 2})
        config.write_text(to_toml(tables))
        result = subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(config), *args], capture_output=True, text=True, env=double.env(), timeout=120, check=False)
        outputs.extend([result.stdout, result.stderr])
        return result

    def image(version: str) -> bytes:
        return make_image(world.system, version, bytes(600_000))

    double.publish_release("1.1.0", image=image("1.1.0"), ext="img", system=world.system)
    double.set_url_max_uses(1)
    double.truncate_next_download(at=200_000)  # cut: resumed through a re-issued URL
    assert run("check").returncode == 0
    double.hub_offline()
    assert run("check").returncode == 0  # commit with the hub away; events spooled
    double.hub_online()
    double.expire_urls()
    assert run("check").returncode == 0
    double.publish_release("1.2.0", image=image("1.2.0"), ext="img", system=world.system)
    double.fail_downloads(count=20)  # the server keeps failing: the pass gives up, transiently
    run("check")
    double.fail_downloads(count=0)
    assert run("check", health=FAILING).returncode == 0  # installs 1.2.0, reboots
    run("check", health=FAILING)  # the gate fails: rollback
    run("check", health=FAILING)  # reports it
    run("status", "--json", "--events", "1000")

    state = double.hub.read()
    secrets = [token for token in state["urls"]] + [state["device"]["tokenId"]]
    assert len(secrets) >= 4, "the cycles issued URLs"
    written = [p.read_bytes().decode("utf-8", "replace") for p in world.state_dir.rglob("*") if p.is_file()]
    sent = [json.dumps(double.status), json.dumps(double.events)]
    haystack = "\n".join(outputs + written + sent)
    assert "X-Amz-Signature" not in haystack.replace("X-Amz-Signature=<redacted>", "")
    leaked = [s for s in secrets if s in haystack]
    assert leaked == []
    assert "rollback" in json.dumps(double.events)  # the cycles did reach the error paths
