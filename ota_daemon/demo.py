"""``ota-daemon demo``: a whole A/B update on a throw-away simulated device.

A device running 1.0.0 and a local repository whose ``stable`` tag points to 1.1.0; the real
engine checks, downloads, verifies, installs into the inactive slot, reboots (simulated),
health-gates and commits. Everything lives in one temporary folder, removed at the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from ota_daemon.app import open_engine
from ota_daemon.config import build_config
from ota_daemon.console import ProgressBar, format_event, print_status, read_status
from ota_daemon.engine import PassResult, Result
from ota_daemon.testing import SimWorld

SYSTEM = "demo-device"


def prepare(root: Path, *, payload_mib: int = 24) -> dict[str, Any]:
    """A device running 1.0.0 and a repository whose ``stable`` tag points at 1.1.0."""
    world = SimWorld(root, system=SYSTEM, path="demo/system/stable")
    world.create_device("1.0.0")
    world.publish("1.0.0", size=payload_mib << 20)
    world.publish("1.1.0", size=payload_mib << 20)
    return world.tables(
        poll={"interval": "1m"},
        health={
            "deadline": "30s",
            "checks": [
                {"kind": "hub", "name": "hub reachable"},
                {"kind": "command", "name": "app starts", "command": [sys.executable, "-c", "pass"]},
            ],
        },
    )


async def run_demo(out: TextIO, *, keep: Path | None = None) -> int:
    from ota_daemon import logs

    logs.configure("warning", "auto")

    with tempfile.TemporaryDirectory(prefix="ota-daemon-demo-") as tmp:
        root = keep or Path(tmp)
        out.write(f"demo: simulated A/B device running 1.0.0; repository tag 'stable' -> 1.1.0 (in {root})\n")
        tables = prepare(root)
        config = build_config(tables, source="demo", env={})
        bar = ProgressBar(out)
        result: PassResult | None = None
        async with open_engine(config) as engine:
            engine.telemetry.progress_listeners.append(bar.update)
            engine.telemetry.log_progress = not bar.tty
            logs.set_interrupter(bar.interrupt if bar.tty else None)
            for step in range(4):
                out.write(f"\n== pass {step + 1}: ota-daemon check\n")
                result = await engine.reconcile()
                bar.finish()
                out.write(f"   {result.result.value}: {result.message}\n")
                if result.result is Result.REBOOTING:
                    info = await engine.installer.slot_info()
                    out.write(f"   (simulated reboot: now booted from slot {info.booted}, on trial: {not info.committed})\n")
                    continue
                break
            logs.set_interrupter(None)
            out.write("\n== ota-daemon status\n")
            view = await read_status(config, events=0)
            print_status(view, out)
            # every event of the demo (its state directory is fresh), progress steps left out
            shown = [e for e in engine.telemetry.recent_events(10_000) if e.get("attributes", {}).get("event") != "progress"]
            out.write(f"events of this demo ({len(shown)}, progress steps left out):\n")
            for event in shown:
                out.write(f"  {format_event(event)}\n")
        ok = result is not None and result.result is Result.COMPLETED
        out.write("\ndemo: " + ("1.1.0 committed. Done.\n" if ok else "did not complete.\n"))
        return 0 if ok else 1
