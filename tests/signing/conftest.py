"""A simulated device and a *signed* repository (TUF metadata), served over loopback HTTP."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import Config, build_config
from ota_daemon.engine import Engine
from ota_daemon.signing.publish import SignedRepository
from ota_daemon.testing import SimWorld, serve_directory

DEVICE_ID = "device-0001"


@dataclass
class Signed:
    world: SimWorld
    clock: FakeClock
    repo: SignedRepository
    server: Any
    keys: Path

    @property
    def trusted_root(self) -> Path:
        return self.world.root / "trusted-root.json"

    def publish(self, version: str, *, system: str | None = None, **kwargs: Any) -> int:
        image = self.world.image(version, system=system)
        return self.repo.publish("system", "stable", version=version, files=[(f"{self.world.system}.img", image)], system=system or self.world.system, **kwargs)

    def tables(self, **hub: Any) -> dict[str, Any]:
        return self.world.tables(
            url=self.server.url,
            hub={"verify": "tuf", "trusted_root": str(self.trusted_root), "device_id": DEVICE_ID, **hub},
        )

    def config(self, **hub: Any) -> Config:
        return build_config(self.tables(**hub), source="test", env={})


@pytest.fixture
def signed(tmp_path: Path, clock: FakeClock) -> Iterator[Signed]:
    """A device on 1.0.0; the signed repository's stable tag at 1.0.0 (release 1)."""
    world = SimWorld(tmp_path)
    world.create_device("1.0.0")
    keys = tmp_path / "keys"
    repo = SignedRepository(world.repo_dir / "fleet", keys, now=clock.now)
    repo.init(thresholds={"targets": 2})
    shutil.copyfile(world.repo_dir / "fleet" / "metadata" / "1.root.json", tmp_path / "trusted-root.json")
    with serve_directory(world.repo_dir) as server:
        s = Signed(world, clock, repo, server, keys)
        s.publish("1.0.0")
        yield s


@pytest.fixture
async def signed_engine(signed: Signed, clock: FakeClock) -> AsyncIterator[Engine]:
    async with open_engine(signed.config(), clock=clock) as e:
        yield e
