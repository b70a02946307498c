"""NexigonHub over both transports (agent socket, CLI alone) against the double."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ota_daemon.clock import FakeClock
from ota_daemon.errors import HubError
from ota_daemon.hubs.base import Hub
from ota_daemon.hubs.nexigon import NexigonHub
from ota_daemon.model import VersionDocument

from .conftest import make_nexigon_hub
from .double.fixture import NexigonDouble

IMAGE = "customized-pi5.rugixb"


async def fetch(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url)


def hub_cost(double: NexigonDouble, transport: str, mark: object) -> int:
    """Hub actions over the socket, agent runs over the CLI."""
    if transport == "socket":
        return len(double.action_names(via="socket", since=mark))  # type: ignore[arg-type]
    return len(double.invocations(since=mark))  # type: ignore[arg-type]


async def test_hub_satisfies_protocol(nexigon_hub: NexigonHub) -> None:
    """The registry builds a NexigonHub that satisfies the Hub protocol, kind "nexigon"."""
    assert isinstance(nexigon_hub, Hub)
    assert nexigon_hub.kind == "nexigon"


async def test_resolve_gives_version_document(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """resolve(path) gives the pinned version: id, assets with id/size/digest, tags, metadata."""
    release = nexigon_hub_double.publish_release("build-1", bundle_hash="h" * 64)
    doc = await nexigon_hub.resolve("fleet/system/stable")
    assert isinstance(doc, VersionDocument)
    assert doc.version_id == release.version_id
    assert doc.metadata == {"imageVersion": "build-1"}
    image = doc.asset(IMAGE)
    assert image is not None
    assert (image.asset_id, image.size, image.sha256) == (release.image_asset_id, len(release.image), release.sha256)
    assert image.metadata["rugix"] == {"bundleHash": "h" * 64}
    assert {t.tag for t in doc.tags} == {"build-1", "stable"}


async def test_resolve_missing_tag_names_path(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """A tag that does not exist is a HubError naming the path and the tag."""
    nexigon_hub_double.publish_release("build-1")
    with pytest.raises(HubError, match=r"fleet/system/beta.*'beta'"):
        await nexigon_hub.resolve("fleet/system/beta")


async def test_resolve_rejects_bad_path_before_asking(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """A path that is not repository/package/tag fails at once, naming what is expected."""
    mark = nexigon_hub_double.mark()
    with pytest.raises(HubError, match="repository/package/tag"):
        await nexigon_hub.resolve("fleet/system")
    assert nexigon_hub_double.action_names(since=mark) == []


async def test_resolve_by_version_id(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """A full version id is accepted as the path (no tag resolution)."""
    release = nexigon_hub_double.publish_release("build-1")
    doc = await nexigon_hub.resolve(release.version_id)
    assert doc.version_id == release.version_id
    assert "repositories_ResolveVersionByPath" not in nexigon_hub_double.action_names()


async def test_malformed_details_are_a_clear_hub_error(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """Details with a bad digest are a HubError naming the version and the field."""
    release = nexigon_hub_double.publish_release("build-1")
    bad = {
        "versionId": release.version_id,
        "assets": [{"filename": IMAGE, "assetId": release.image_asset_id, "size": 1, "digest": "md5_abc", "status": "Available", "metadata": {}}],
        "tags": [],
        "metadata": {},
    }
    nexigon_hub_double.hub.override_details(release.version_id, bad)
    with pytest.raises(HubError, match=rf"{release.version_id}.*malformed.*assets\.0\.digest"):
        await nexigon_hub.resolve("fleet/system/stable")


async def test_issue_url_by_asset_id_only(
    nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub, nexigon_transport: str
) -> None:
    """issue_url asks by asset id (never the tag path again) and the URL serves the image."""
    release = nexigon_hub_double.publish_release("build-1")
    doc = await nexigon_hub.resolve("fleet/system/stable")
    image = doc.asset(IMAGE)
    assert image is not None
    mark = nexigon_hub_double.mark()
    url = await nexigon_hub.issue_url(doc, image)
    issued = [a for a in nexigon_hub_double.actions()[mark.actions :] if a["action"].startswith("repositories_")]
    assert [(a["action"], a["input"]) for a in issued] == [
        ("repositories_IssueAssetDownloadUrl", {"assetId": release.image_asset_id})
    ]
    if nexigon_transport == "cli":
        assert nexigon_hub_double.invocations(since=mark) == [["repositories", "issue-url", release.image_asset_id]]
    response = await fetch(url)
    assert response.status_code == 200 and response.content == release.image


async def test_tag_moved_between_resolve_and_issue_url(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """When the floating tag moves after resolve, the URL still serves the pinned version's asset."""
    first = nexigon_hub_double.publish_release("build-1", image=b"first image " * 100)
    doc = await nexigon_hub.resolve("fleet/system/stable")
    second = nexigon_hub_double.publish_release("build-2", image=b"second image " * 100)
    assert (await nexigon_hub.resolve("fleet/system/stable")).version_id == second.version_id
    image = doc.asset(IMAGE)
    assert image is not None
    response = await fetch(await nexigon_hub.issue_url(doc, image))
    assert response.content == first.image


async def test_expired_url_is_reissued(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """An expired URL answers 403; issuing again for the same asset gives one that works."""
    release = nexigon_hub_double.publish_release("build-1")
    doc = await nexigon_hub.resolve("fleet/system/stable")
    image = doc.asset(IMAGE)
    assert image is not None
    url = await nexigon_hub.issue_url(doc, image)
    nexigon_hub_double.expire_urls()
    assert (await fetch(url)).status_code == 403
    fresh = await nexigon_hub.issue_url(doc, image)
    assert fresh != url
    assert (await fetch(fresh)).content == release.image


async def test_issue_url_needs_asset_id(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """An asset without an id (not from this hub) cannot be issued: HubError, nothing asked."""
    nexigon_hub_double.publish_release("build-1")
    doc = await nexigon_hub.resolve("fleet/system/stable")
    image = doc.asset(IMAGE)
    assert image is not None
    mark = nexigon_hub_double.mark()
    with pytest.raises(HubError, match="no asset id"):
        await nexigon_hub.issue_url(doc, image.model_copy(update={"asset_id": None}))
    assert nexigon_hub_double.action_names(since=mark) == []


async def test_read_config(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """read_config gives the config property's value, or None when it is absent."""
    assert await nexigon_hub.read_config() is None
    nexigon_hub_double.set_config({"path": "fleet/system/beta", "pollInterval": "1h"})
    assert await nexigon_hub.read_config() == {"path": "fleet/system/beta", "pollInterval": "1h"}


async def test_publish_status_writes_property(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """publish_status writes the whole document to dev.nexigon.ota.status, each call once."""
    doc = {"state": "idle", "currentVersion": "build-1", "targetVersion": None, "failureCount": 0, "lastError": None}
    await nexigon_hub.publish_status(doc)
    assert nexigon_hub_double.status == doc
    await nexigon_hub.publish_status({**doc, "state": "completed"})
    assert nexigon_hub_double.status["state"] == "completed"
    assert nexigon_hub_double.writes().count("devices_SetProperty") == 2
    assert await nexigon_hub.read_status() == {**doc, "state": "completed"}


async def test_publish_events(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub, nexigon_transport: str) -> None:
    """Events arrive with severity, category, body, attributes and emittedAt kept; oldest first.
    Over the socket our event ids are kept (one batch); the CLI makes its own (one run each)."""
    events = [
        {
            "eventId": f"d_ev_20260515-070{i}-AbCdEfG{i}",
            "severity": severity,
            "category": "ota",
            "body": f"message {i} with \"quotes\" and \\",
            "attributes": {"event": "x", "progress": i * 10, "targetVersion": "build-2"},
            "emittedAt": f"2026-05-15T07:0{i}:18.25Z",
        }
        for i, severity in enumerate(["Info", "Warning", "Error"], start=1)
    ]
    mark = nexigon_hub_double.mark()
    await nexigon_hub.publish_events(events)
    got = nexigon_hub_double.events
    assert [(e["severity"], e["category"], e["body"], e["attributes"], e["emittedAt"]) for e in got] == [
        (e["severity"], "ota", e["body"], e["attributes"], e["emittedAt"]) for e in events
    ]
    if nexigon_transport == "socket":
        assert [e["eventId"] for e in got] == [e["eventId"] for e in events]
        assert nexigon_hub_double.writes(since=mark) == ["devices_PublishEvents"]
    else:
        runs = nexigon_hub_double.invocations(since=mark)
        assert len(runs) == 3
        assert runs[1][:6] == ["events", "emit", "--severity", "warning", "--category", "ota"]
        assert "--emitted-at" in runs[1]


async def test_ping(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub, nexigon_transport: str) -> None:
    """ping costs one hub action (GetActor over the socket, `device id` over the CLI)."""
    mark = nexigon_hub_double.mark()
    await nexigon_hub.ping()
    assert nexigon_hub_double.action_names(since=mark) == ["actor_GetActor"]
    if nexigon_transport == "cli":
        assert nexigon_hub_double.invocations(since=mark) == [["device", "id"]]


async def test_idle_pass_budget(
    nexigon_hub_double: NexigonDouble, nexigon_transport: str, tmp_path: Path
) -> None:
    """A pass with nothing to do (read_config + resolve of an unmoved tag) costs at most 2 hub
    actions over the socket / 2 agent runs over the CLI, and writes nothing — also after a restart."""
    nexigon_hub_double.publish_release("build-1")
    nexigon_hub_double.set_config({"path": "fleet/system/stable"})
    hub = make_nexigon_hub(nexigon_hub_double, nexigon_transport, tmp_path / "state")
    await hub.read_config()
    await hub.resolve("fleet/system/stable")  # first pass: learns the device id and the details
    await hub.aclose()
    for _ in range(2):  # a restarted daemon (new object, same state dir), then a second idle pass
        hub = make_nexigon_hub(nexigon_hub_double, nexigon_transport, tmp_path / "state")
        mark = nexigon_hub_double.mark()
        assert await hub.read_config() == {"path": "fleet/system/stable"}
        await hub.resolve("fleet/system/stable")
        assert hub_cost(nexigon_hub_double, nexigon_transport, mark) <= 2
        assert "repositories_GetVersionDetails" not in nexigon_hub_double.action_names(since=mark)
        assert nexigon_hub_double.writes(since=mark) == []
        if nexigon_transport == "socket":
            assert nexigon_hub_double.invocations(since=mark) == []
            assert hub.socket_connects == 1
        await hub.aclose()


async def test_details_cache_follows_the_tag(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """When the tag moves, the new version's details are fetched (the cache is by version id)."""
    nexigon_hub_double.publish_release("build-1")
    await nexigon_hub.resolve("fleet/system/stable")
    second = nexigon_hub_double.publish_release("build-2")
    mark = nexigon_hub_double.mark()
    doc = await nexigon_hub.resolve("fleet/system/stable")
    assert doc.version_id == second.version_id
    assert "repositories_GetVersionDetails" in nexigon_hub_double.action_names(since=mark)


async def test_details_cache_expires_and_skips_unsettled(
    nexigon_hub_double: NexigonDouble, nexigon_transport: str, tmp_path: Path
) -> None:
    """Cached details expire after hub.details_cache_ttl; a version whose assets are not all
    available (upload in progress) is never cached; invalidate() forgets."""
    clock = FakeClock()
    release = nexigon_hub_double.publish_release("build-1")
    hub = make_nexigon_hub(nexigon_hub_double, nexigon_transport, tmp_path / "state", clock=clock, details_cache_ttl="1h")

    async def details_fetched() -> bool:
        mark = nexigon_hub_double.mark()
        await hub.resolve("fleet/system/stable")
        return "repositories_GetVersionDetails" in nexigon_hub_double.action_names(since=mark)

    assert await details_fetched()
    assert not await details_fetched()
    clock.advance(3601)
    assert await details_fetched()
    hub.invalidate(release.version_id)
    assert await details_fetched()
    nexigon_hub_double.hub.set_asset_status(release.image_asset_id, "Dangling")
    hub.invalidate()
    assert await details_fetched()
    assert await details_fetched()
    await hub.aclose()


async def test_device_id_cached_on_disk(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """GetActor runs once per state dir; a stale cached id (Forbidden) is re-learnt and the call retried."""
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    await hub.read_config()
    await hub.aclose()
    assert (tmp_path / "state" / "nexigon" / "device.json").exists()
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    mark = nexigon_hub_double.mark()
    await hub.read_config()
    assert nexigon_hub_double.action_names(since=mark) == ["devices_GetProperty"]
    await hub.aclose()
    (tmp_path / "state" / "nexigon" / "device.json").write_text('{"deviceId": "d_111111111111111111111A"}')
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    nexigon_hub_double.set_config({"a": 1})
    assert await hub.read_config() == {"a": 1}
    assert nexigon_hub_double.device_id in (tmp_path / "state" / "nexigon" / "device.json").read_text()
    await hub.aclose()


async def test_closed_hub_refuses(nexigon_hub: NexigonHub) -> None:
    """After aclose every call raises RuntimeError."""
    await nexigon_hub.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await nexigon_hub.read_config()
