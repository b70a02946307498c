"""The README's "Signed releases and staged rollouts" walk-through, run as written; then a
device pinned to the walk-through's first root installs what it published."""

from __future__ import annotations

import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from ota_daemon.app import open_engine
from ota_daemon.cli import main
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import Result
from ota_daemon.testing import SimWorld, serve_directory

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> list[str]:
    text = README.read_text()
    section = text.split("## Signed releases and staged rollouts", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


async def test_readme_walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    world = SimWorld(tmp_path / "world", system="dev")
    world.create_device("1.0.0")
    shutil.copyfile(world.image("1.1.0"), tmp_path / "dev.rugixb")
    (tmp_path / "rootfs/etc/ota-daemon").mkdir(parents=True)
    lines = walkthrough()
    assert any("rollout halt" in line for line in lines) and any("rotate" in line for line in lines)
    for line in lines:
        argv = shlex.split(line.split("  #", 1)[0])
        if argv[0] == "cp":
            shutil.copyfile(argv[1], argv[2])
            continue
        assert argv[0] == "ota-daemon", line
        out = io.StringIO()
        assert main(argv[1:], out=out) == 0, (line, out.getvalue())
    assert "ok:" in out.getvalue()  # the last step is repo verify

    # a device that pinned the first root follows the rotation and installs 1.1.0 once the
    # halt is lifted and the rollout is complete
    assert main(["repo", "rollout", "resume", "www", "fleet/system/stable", "--keys", "keys"], out=io.StringIO()) == 0
    assert main(["repo", "rollout", "set", "www", "fleet/system/stable", "--keys", "keys", "--stage", "0:100", "--stagger", "0s"], out=io.StringIO()) == 0
    with serve_directory(tmp_path / "www") as server:
        tables = world.tables(
            url=server.url,
            hub={"path": "fleet/system/stable", "verify": "tuf", "trusted_root": str(tmp_path / "rootfs/etc/ota-daemon/trusted-root.json"), "device_id": "dev-1"},
            installer={"kind": "simulated", "simulated": {"device_dir": str(world.device_dir)}},
        )
        tables["hub"]["image_asset"] = "{system}.rugixb"
        import time

        async with open_engine(build_config(tables, source="test", env={}), clock=FakeClock(start=time.time())) as engine:
            result = await engine.reconcile()
    assert result.result is Result.REBOOTING, result.message
