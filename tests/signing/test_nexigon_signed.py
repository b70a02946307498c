"""Signed releases through the Nexigon hub (the agent double): the metadata travels as assets
of each version, fetched through issued URLs; a compromised hub account alone cannot install."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import PassResult, Result
from ota_daemon.installers.simulated import make_image
from ota_daemon.signing.nexigon import nexigon_assets
from ota_daemon.signing.publish import SignedRepository
from ota_daemon.testing import SimWorld
from tests.nexigon.double.fixture import NexigonDouble
from tests.signing.helpers import fingerprint


class Setup:
    first: Any

    def __init__(self, tmp_path: Path, double: NexigonDouble) -> None:
        self.double = double
        self.clock = FakeClock()
        self.world = SimWorld(tmp_path / "world", system="sim-device")
        self.world.create_device("1.0.0")
        self.repo = SignedRepository(tmp_path / "signed" / double.repository, tmp_path / "keys", now=self.clock.now)
        self.repo.init(thresholds={"targets": 2})
        self.trusted_root = tmp_path / "trusted-root.json"
        shutil.copyfile(self.repo.metadata / "1.root.json", self.trusted_root)

    def image(self, version: str) -> bytes:
        return make_image(self.world.system, version, bytes(200_000))

    def release(self, version: str, *, signed: bool = True, image: bytes | None = None) -> Any:
        """Sign the release in the repository, then publish it on the hub with the metadata as assets."""
        data = self.image(version)
        if signed:
            path = self.world.root / f"{version}.img"
            path.write_bytes(data)
            self.repo.publish(self.double.package, "stable", version=version, files=[("sim-device.img", path)], system="sim-device")
        extra = nexigon_assets(self.repo.folder)
        return self.double.publish_release(version, image=image or data, ext="img", system=self.world.system, extra_assets=extra)

    async def run(self) -> PassResult:
        tables = self.world.tables(hub={**self.double.hub_config("socket"), "verify": "tuf", "trusted_root": str(self.trusted_root), "device_id": "dev-1"})
        async with open_engine(build_config(tables, source="test", env={}), clock=self.clock) as engine:
            return await engine.reconcile()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with NexigonDouble(tmp_path / "nexigon-double") as double:
        s = Setup(tmp_path, double)
        s.first = s.release("1.0.0")
        yield s


async def test_signed_release_through_nexigon(setup: Setup) -> None:
    assert (await setup.run()).result is Result.UP_TO_DATE
    setup.release("1.1.0")
    assert (await setup.run()).result is Result.REBOOTING
    assert (await setup.run()).result is Result.COMPLETED
    assert setup.double.status["currentVersion"] == "1.1.0"


async def test_hub_account_alone_cannot_install(setup: Setup) -> None:
    """With the hub account only: a new version (the old metadata copied along) moved to the
    tag is refused; so is a version whose image differs from the signed one."""
    assert (await setup.run()).result is Result.UP_TO_DATE
    device = fingerprint(setup.world.device_dir)
    setup.release("6.6.6", signed=False)
    result = await setup.run()
    assert result.result is Result.FAILED and "which is not 1.0.0, the version the signed tag names" in result.message
    assert setup.double.status["currentVersion"] == "1.0.0" and setup.double.status["lastError"] == result.message
    assert fingerprint(setup.world.device_dir) == device


async def test_swapped_image_is_refused(setup: Setup) -> None:
    assert (await setup.run()).result is Result.UP_TO_DATE
    device = fingerprint(setup.world.device_dir)
    setup.release("1.1.0", image=make_image("sim-device", "1.1.0", b"\xff" * 200_000))
    result = await setup.run()
    assert result.result is Result.FAILED and "differs from the signed entry" in result.message
    assert setup.double.status["lastError"] == result.message
    assert fingerprint(setup.world.device_dir) == device


async def test_hub_moves_the_tag_back(setup: Setup) -> None:
    """The hub account points the tag at an older version: its metadata is older than what the
    device trusts (a replay)."""
    setup.release("1.1.0")
    assert (await setup.run()).result is Result.REBOOTING
    assert (await setup.run()).result is Result.COMPLETED
    device = fingerprint(setup.world.device_dir)
    setup.double.hub.tag_version(setup.first.version_id, "stable", reassign=True)
    result = await setup.run()
    assert result.result is Result.FAILED and "older than what this device already trusts" in result.message
    assert fingerprint(setup.world.device_dir) == device


async def test_freeze_through_nexigon(setup: Setup) -> None:
    """The hub keeps answering with the same version: its metadata expires on the device."""
    assert (await setup.run()).result is Result.UP_TO_DATE
    setup.clock.advance(2 * 86400)
    result = await setup.run()
    assert result.result is Result.FAILED and "expired" in result.message
    assert setup.double.status["lastError"] == result.message


async def test_one_of_two_targets_keys_through_nexigon(setup: Setup) -> None:
    """One targets key (of two) and the online keys stolen, plus the hub account: a release
    signed with them, published as a version with its metadata assets, is refused."""
    from ota_daemon.signing import keys as keystore
    from tests.signing.test_attacks import forge

    assert (await setup.run()).result is Result.UP_TO_DATE
    device = fingerprint(setup.world.device_dir)
    data = setup.image("6.6.6")
    path = setup.world.root / "evil.img"
    path.write_bytes(data)
    state = setup.repo.load()
    loaded = keystore.load(setup.repo.keys_dir)
    loot = {role: [loaded[k] for k in state.root.signed.roles[role].keyids] for role in ("snapshot", "timestamp")}
    loot["targets"] = [loaded[state.root.signed.roles["targets"].keyids[0]]]
    import hashlib

    from tuf.api.metadata import TargetFile

    digest = hashlib.sha256(data).hexdigest()
    ota = {"version": "6.6.6", "release": 9, "url": f"assets/sha256_{digest}", "system": "sim-device"}
    state.targets.signed.targets["system/6.6.6/sim-device.img"] = TargetFile(len(data), {"sha256": digest}, "system/6.6.6/sim-device.img", {"custom": {"ota": ota}})
    setup.repo._point(state, "system", "stable", "6.6.6", files=["sim-device.img"], release=9, rollback=False, rollout=None)
    forge(setup.repo, state, loot)
    setup.double.publish_release("6.6.6", image=data, ext="img", system="sim-device", extra_assets=nexigon_assets(setup.repo.folder))
    result = await setup.run()
    assert result.result is Result.FAILED and "lacks the signatures" in result.message
    assert fingerprint(setup.world.device_dir) == device
