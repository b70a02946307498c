"""The static hub against a real HTTP server on loopback (no mocked transport)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import Result
from ota_daemon.errors import ConfigError, HubError, HubUnavailable
from ota_daemon.hubs.static import StaticHub
from ota_daemon.testing import SimWorld, serve_directory


@pytest.fixture
def server(world: SimWorld) -> Iterator[Any]:
    with serve_directory(world.repo_dir) as srv:
        yield srv


async def test_resolve_and_304(world: SimWorld, server: Any) -> None:
    """The tag resolves to the version document; an idle repeat is a conditional GET answered 304."""
    async with httpx.AsyncClient() as http:
        hub = StaticHub(base_url=server.url, http=http, cache_dir=world.state_dir, allow_insecure=True)
        first = await hub.resolve(world.path)
        assert first.metadata["imageVersion"] == "1.0.0"
        second = await hub.resolve(world.path)
        assert second.version_id == first.version_id
    assert server.requests == ["/fleet/system/tags/stable.json"] * 2
    # the second answer had no body: it came from the local cache after a 304
    assert server.bytes_sent == len((world.repo_dir / "fleet/system/tags/stable.json").read_bytes())


async def test_moved_tag_is_seen(world: SimWorld, server: Any) -> None:
    """After the tag moves, the ETag differs and the new document is fetched."""
    async with httpx.AsyncClient() as http:
        hub = StaticHub(base_url=server.url, http=http, cache_dir=world.state_dir, allow_insecure=True)
        await hub.resolve(world.path)
        world.publish("1.1.0")
        assert (await hub.resolve(world.path)).metadata["imageVersion"] == "1.1.0"


async def test_missing_tag_and_malformed(world: SimWorld, server: Any) -> None:
    """A missing tag and a malformed document are HubErrors that say what is wrong."""
    async with httpx.AsyncClient() as http:
        hub = StaticHub(base_url=server.url, http=http, cache_dir=world.state_dir, allow_insecure=True)
        with pytest.raises(HubError, match="not found"):
            await hub.resolve("fleet/system/nightly")
        (world.repo_dir / "fleet/system/tags/stable.json").write_text("[1, 2]")
        with pytest.raises(HubError, match="must be a JSON object"):
            await hub.resolve(world.path)
        (world.repo_dir / "fleet/system/tags/stable.json").write_text('{"versionId": "x", "assets": [{"filename": "a", "size": 1, "digest": "sha256_zz"}]}')
        with pytest.raises(HubError, match=r"assets\.0\.digest"):
            await hub.resolve(world.path)


async def test_unreachable_is_transient(world: SimWorld) -> None:
    """A server that does not answer is HubUnavailable (retried with backoff), not a hard failure."""
    async with httpx.AsyncClient() as http:
        hub = StaticHub(base_url="http://127.0.0.1:9/", http=http, allow_insecure=True)
        with pytest.raises(HubUnavailable):
            await hub.resolve(world.path)


def test_plain_http_needs_allow_insecure() -> None:
    """http:// hubs are refused unless hub.allow_insecure is set locally."""
    with pytest.raises(ConfigError, match="allow_insecure"):
        StaticHub(base_url="http://example.invalid/", http=None)


async def test_asset_url_cannot_escape(world: SimWorld, server: Any) -> None:
    """An asset URL with '..' or a remote repository pointing at local files is refused."""
    async with httpx.AsyncClient() as http:
        hub = StaticHub(base_url=server.url, http=http, allow_insecure=True)
        doc = await hub.resolve(world.path)
        bad = doc.assets[0].model_copy(update={"url": "../../etc/passwd"})
        with pytest.raises(HubError, match="leaves the repository"):
            await hub.issue_url(doc, bad)
        local = doc.assets[0].model_copy(update={"url": "file:///etc/shadow"})
        with pytest.raises(HubError, match="local files"):
            await hub.issue_url(doc, local)


async def test_update_over_http(world: SimWorld, server: Any, clock: FakeClock) -> None:
    """A whole update over loopback HTTP; a corrupted image is never installed."""
    world.publish("1.1.0")
    config = build_config(world.tables(url=server.url), source="t", env={})
    async with open_engine(config, clock=clock) as engine:
        assert (await engine.reconcile()).result is Result.REBOOTING
    async with open_engine(config, clock=clock) as engine:
        assert (await engine.reconcile()).result is Result.COMPLETED
    # now a bad image for 1.2.0: same size, different bytes
    published = world.publish("1.2.0")
    image = next(a for a in published.document["assets"] if a["filename"].endswith(".img"))
    blob = world.repo_dir / "fleet" / image["url"]
    blob.write_bytes(b"\0" * blob.stat().st_size)
    slot_a = world.device.slot_path("a").read_bytes()
    async with open_engine(config, clock=clock) as engine:
        result = await engine.reconcile()
    assert result.result is Result.FAILED and "sha256" in result.message
    assert world.device.slot_path("a").read_bytes() == slot_a
    assert not list((world.state_dir / "cache").glob("*.partial"))
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["state"] == "failed"


async def test_issued_plain_http_url_refused(world: SimWorld, clock: FakeClock) -> None:
    """A hub that hands out plain http:// download URLs is refused unless allowed locally."""
    world.publish("1.1.0")
    config = build_config(world.tables(hub={"allow_insecure": False}), source="t", env={})
    async with open_engine(config, clock=clock) as engine:
        async def plain(document: Any, asset: Any) -> str:
            return "http://cdn.example/asset?sig=SECRET"

        engine.hub.issue_url = plain  # type: ignore[method-assign]
        result = await engine.reconcile()
    assert result.result is Result.FAILED
    assert "hub.allow_insecure" in result.message and "SECRET" not in result.message
