"""The engine's full cycle on a real (or faithfully doubled) installer: shared by the RAUC,
SWUpdate and Rugix test folders. Each folder provides a device with ``config_data()``, a way to
build an image for a version, and ``reboot()``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import PassResult, Result
from ota_daemon.repo import publish
from ota_daemon.testing import serve_directory

FAILING_HEALTH = {
    "deadline": "1s",
    "interval": "1s",
    "checks": [{"kind": "command", "name": "app", "command": [sys.executable, "-c", "print('app down'); raise SystemExit(1)"]}],
}
PASSING_HEALTH = {"deadline": "5s", "checks": [{"kind": "command", "name": "app", "command": [sys.executable, "-c", "pass"]}]}


class BackendCycle:
    """Drives the engine against a device: publish versions, run passes, reboot when asked."""

    def __init__(
        self,
        *,
        root: Path,
        device_tables: dict[str, Any],
        system: str,
        ext: str,
        build: Callable[[str], Path],
        reboot: Callable[[], Awaitable[object]],
    ) -> None:
        self.root = root
        self.repo = root / "repository"
        self.device_tables = device_tables
        self.system = system
        self.ext = ext
        self.build = build
        self.reboot = reboot
        self.clock = FakeClock()
        self.url = ""

    def publish(self, version: str) -> None:
        publish(self.repo, "fleet/system/stable", version=version, files=[(f"{self.system}.{self.ext}", self.build(version))])

    def config(self, health: dict[str, Any]) -> Any:
        tables: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in self.device_tables.items()}
        system = tables.setdefault("system", {})
        system.setdefault("build_info", str(self.root / "no-build-info.json"))
        system.update(name=self.system, os_release=str(self.root / "no-os-release"))
        tables["hub"] = {"kind": "static", "url": self.url, "path": "fleet/system/stable", "allow_insecure": True}
        tables["health"] = health
        tables.setdefault("state", {"dir": str(self.root / "state")})
        tables.setdefault("policy", {})["inhibit_dir"] = str(self.root / "inhibit.d")
        tables["hooks"] = {"dir": str(self.root / "hooks.d")}
        return build_config(tables, source="test", env={})

    async def run_pass(self, health: dict[str, Any] = PASSING_HEALTH) -> PassResult:
        async with open_engine(self.config(health), clock=self.clock) as engine:
            return await engine.reconcile()

    async def full_cycle_and_rollback(self, running: Callable[[], Awaitable[str]]) -> None:
        """1.0.0 -> 2.0.0 committed; then 3.0.0 fails its health check and rolls back to 2.0.0."""
        self.repo.mkdir(parents=True, exist_ok=True)
        with serve_directory(self.repo) as server:
            self.url = server.url
            self.publish("2.0.0")
            first = await self.run_pass()
            assert first.result is Result.REBOOTING, first
            await self.reboot()
            second = await self.run_pass()
            assert second.result is Result.COMPLETED, second
            assert await running() == "2.0.0"
            assert (await self.run_pass()).result is Result.UP_TO_DATE

            self.publish("3.0.0")
            assert (await self.run_pass(FAILING_HEALTH)).result is Result.REBOOTING
            await self.reboot()
            gate = await self.run_pass(FAILING_HEALTH)
            assert gate.result is Result.ROLLED_BACK, gate
            await self.reboot()
            report = await self.run_pass(FAILING_HEALTH)
            assert report.result is Result.ROLLED_BACK, report
            assert "health check 'app'" in report.message
            assert await running() == "2.0.0"
            blocked = await self.run_pass()
            assert blocked.result is Result.BLOCKED and "quarantined" in blocked.message

            # an operator clears the quarantine: the version installs again, and now passes
            async with open_engine(self.config(PASSING_HEALTH), clock=self.clock) as engine:
                assert await engine.retry("3.0.0")
            assert (await self.run_pass()).result is Result.REBOOTING
            await self.reboot()
            assert (await self.run_pass()).result is Result.COMPLETED
            assert await running() == "3.0.0"
