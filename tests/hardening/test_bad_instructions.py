"""Bad instructions from the hub are refused with a reason, and nothing is installed:
an image for another system, a downgrade, an asset URL with '..', an absurd size, an asset
larger than the free space."""

from __future__ import annotations

import json
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import PassResult, Result
from ota_daemon.repo import publish
from ota_daemon.testing import SimWorld, serve_directory


def rewrite_tag(world: SimWorld, change: Any) -> None:
    tag = world.repo_dir / "fleet/system/tags/stable.json"
    doc = json.loads(tag.read_text())
    change(doc)
    tag.write_text(json.dumps(doc))


def image_of(doc: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in doc["assets"] if a["filename"].endswith(".img"))


async def run(world: SimWorld, **overrides: Any) -> PassResult:
    async with open_engine(build_config(world.tables(**overrides), source="t", env={}), clock=FakeClock()) as engine:
        return await engine.reconcile()


def untouched(world: SimWorld) -> bool:
    info = world.device.info()
    return world.device.slot_path("b").read_bytes() == b"" and info.pending is None and info.booted == "a"


async def test_image_for_another_system(world: SimWorld) -> None:
    """Build info naming another system: refused, with both names in the reason."""
    info = world.root / "other-build-info.json"
    info.write_text(json.dumps({"name": "gateway-x", "release": {"id": "gateway-x@1.1.0", "version": "1.1.0"}}))
    files = [("sim-device.img", world.image("1.1.0", system="gateway-x")), ("sim-device.build-info.json", info)]
    publish(world.repo_dir, world.path, version="1.1.0", files=files, build_info=False)
    result = await run(world)
    assert result.result is Result.BLOCKED and "'gateway-x'" in result.message and untouched(world)


async def test_downgrade(world: SimWorld) -> None:
    """An older version behind the tag: refused when policy.downgrade = "refuse"."""
    world.publish("0.9.0")
    result = await run(world, policy={"downgrade": "refuse"})
    assert result.result is Result.BLOCKED and "downgrade" in result.message and untouched(world)


async def test_path_escaping_the_repository(world: SimWorld) -> None:
    """An asset URL with '..' components: refused, no request leaves the repository."""
    world.publish("1.1.0")
    rewrite_tag(world, lambda doc: image_of(doc).update(url="../../../../etc/shadow"))
    result = await run(world)
    assert result.result is Result.FAILED and "leaves the repository" in result.message and untouched(world)


async def test_filename_with_dotdot(world: SimWorld) -> None:
    """An asset file name with '..': the document is rejected as malformed."""
    world.publish("1.1.0")
    rewrite_tag(world, lambda doc: image_of(doc).update(filename="../sim-device.img"))
    result = await run(world)
    assert result.result is Result.FAILED and "filename" in result.message and untouched(world)


async def test_absurd_size(world: SimWorld) -> None:
    """An image announced at an exabyte: refused by download.max_image_size before any fetch."""
    blob = image_of(world.publish("1.1.0").document)["url"]
    rewrite_tag(world, lambda doc: image_of(doc).update(size=10**18))
    with serve_directory(world.repo_dir) as server:
        result = await run(world, hub={"url": server.url})
        assert not any(r.endswith(blob) for r in server.requests)
    assert result.result is Result.FAILED and "max_image_size" in result.message and untouched(world)


async def test_larger_than_free_space(world: SimWorld) -> None:
    """An image that does not fit the cache: blocked with the numbers, nothing fetched."""
    blob = image_of(world.publish("1.1.0").document)["url"]
    rewrite_tag(world, lambda doc: image_of(doc).update(size=60 * 1024**3))
    with serve_directory(world.repo_dir) as server:
        result = await run(world, hub={"url": server.url}, download={"free_space_margin": "100T"})
        assert not any(r.endswith(blob) for r in server.requests)
    assert result.result is Result.BLOCKED and "not enough free space" in result.message and untouched(world)
