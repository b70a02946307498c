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


# ---------------------------------------------------------------------------- hostile or broken hubs


class BodyServer:
    """A loopback HTTP server whose one answer is a 200 with a body from ``body()`` (a
    generator of pieces), sent until it ends or the client goes; counts what it sent."""

    def __init__(self, body: Any, headers: str = "") -> None:
        import socket
        import threading

        self.body = body
        self.headers = headers
        self.sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n{self.headers}\r\n".encode())
                    for piece in self.body():
                        if self.stop.is_set():
                            break
                        conn.sendall(piece)
                        self.sent += len(piece)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def endless() -> Iterator[BodyServer]:
    def body() -> Iterator[bytes]:
        yield b'{"versionId": "'
        while True:
            yield b"x" * 65536

    srv = BodyServer(body)
    try:
        yield srv
    finally:
        srv.close()


async def test_an_endless_tag_document_is_cut_at_its_limit_while_streaming(world: SimWorld, endless: BodyServer) -> None:
    """A tag document that never ends: the read stops once it passes 1 MiB (not after reading
    it all into memory), with a HubError naming the limit; the server sent little more."""
    import asyncio

    from ota_daemon.hubs.static import MAX_DOCUMENT

    async with httpx.AsyncClient() as http:
        hub = StaticHub(base_url=endless.url, http=http, allow_insecure=True)
        with pytest.raises(HubError, match=f"more than {MAX_DOCUMENT} bytes"):
            async with asyncio.timeout(20):
                await hub.resolve(world.path)
    assert endless.sent < MAX_DOCUMENT + 16 * (1 << 20)  # the limit plus what socket buffers hold


async def test_hub_timeout_bounds_the_whole_read_of_a_dripping_document(world: SimWorld) -> None:
    """A server that sends a byte now and then (never stalling long enough for a read timeout):
    hub.timeout bounds the whole answer; the hub is unavailable, not a verdict on the version."""
    import asyncio
    import time

    def body() -> Iterator[bytes]:
        while True:
            yield b" "
            time.sleep(0.02)

    srv = BodyServer(body)
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            hub = StaticHub(base_url=srv.url, http=http, allow_insecure=True, timeout=0.5)
            with pytest.raises(HubUnavailable, match=r"hub\.timeout"):
                async with asyncio.timeout(20):
                    await hub.resolve(world.path)
    finally:
        srv.close()


async def test_a_document_announcing_more_than_the_limit_is_not_read(world: SimWorld) -> None:
    """A Content-Length above the limit is refused before the body is read."""
    from ota_daemon.hubs.static import MAX_DOCUMENT

    def body() -> Iterator[bytes]:
        yield b"{}"

    srv = BodyServer(body, headers=f"Content-Length: {MAX_DOCUMENT * 4}\r\n")
    try:
        async with httpx.AsyncClient() as http:
            hub = StaticHub(base_url=srv.url, http=http, allow_insecure=True)
            with pytest.raises(HubError, match="more than"):
                await hub.resolve(world.path)
    finally:
        srv.close()


async def test_a_huge_local_tag_document_is_not_read_whole(world: SimWorld) -> None:
    """A file:// repository whose tag document is a huge file: refused after the limit."""
    from ota_daemon.hubs.static import MAX_DOCUMENT

    tag = world.repo_dir / "fleet/system/tags/stable.json"
    with tag.open("wb") as fh:
        fh.truncate(MAX_DOCUMENT * 64)
    hub = StaticHub(base_url=world.repo_dir.as_uri(), http=None)
    with pytest.raises(HubError, match=f"more than {MAX_DOCUMENT}"):
        await hub.resolve(world.path)


@pytest.mark.parametrize(
    "url",
    [
        "%2e%2e/%2e%2e/outside.img",
        "%2E%2E/outside.img",
        "assets/%2e%2e/%2e%2e/outside.img",
        "assets/..%2f..%2foutside.img",
        "%2e%2e%2f%2e%2e%2foutside.img",
        ".%2e/outside.img",
        "%2fetc%2fpasswd",
        "assets/%00x",
    ],
)
async def test_percent_encoded_asset_urls_cannot_escape_a_file_repository(world: SimWorld, url: str) -> None:
    """Encoded dots and slashes in an asset URL: refused, and nothing outside the repository
    folder is ever handed out as the asset."""
    outside = world.root / "outside.img"
    outside.write_bytes(b"not from the repository")
    hub = StaticHub(base_url=world.repo_dir.as_uri(), http=None)
    doc = await hub.resolve(world.path)
    bad = doc.assets[0].model_copy(update={"url": url})
    with pytest.raises(HubError, match="leaves the repository"):
        await hub.issue_url(doc, bad)


async def test_an_absolute_file_url_outside_a_file_repository_is_refused(world: SimWorld) -> None:
    """A file:// repository's asset may not name a file elsewhere on the device; one inside
    the repository (absolute or relative) is fine."""
    hub = StaticHub(base_url=world.repo_dir.as_uri(), http=None)
    doc = await hub.resolve(world.path)
    outside = doc.assets[0].model_copy(update={"url": (world.root / "outside.img").as_uri()})
    with pytest.raises(HubError, match="leaves the repository"):
        await hub.issue_url(doc, outside)
    sneaky = doc.assets[0].model_copy(update={"url": (world.repo_dir / "fleet" / "assets" / ".." / ".." / ".." / "outside.img").as_uri().replace("..", "%2e%2e")})
    with pytest.raises(HubError, match="leaves the repository"):
        await hub.issue_url(doc, sneaky)
    inside = doc.assets[0].model_copy(update={"url": (world.repo_dir / "fleet" / "assets" / "x").as_uri()})
    assert (await hub.issue_url(doc, inside)).startswith("file://")
    assert (await hub.issue_url(doc, doc.assets[0])).startswith(world.repo_dir.as_uri())


async def test_percent_encoded_dots_install_nothing_from_outside_the_repository(world: SimWorld, clock: FakeClock) -> None:
    """The whole pass: a version document whose image URL climbs out of the file:// repository
    with %2e%2e is refused; the inactive slot is untouched."""
    published = world.publish("1.1.0")
    outside = world.root / "evil.img"
    outside.write_bytes(world.image("1.1.0").read_bytes())
    document = published.document
    for asset in document["assets"]:
        if asset["filename"].endswith(".img"):
            asset["url"] = "%2e%2e/%2e%2e/evil.img"
    tag = world.repo_dir / "fleet/system/tags/stable.json"
    tag.write_text(json.dumps(document))
    before = world.device.slot_path("b").read_bytes()
    config = build_config(world.tables(), source="t", env={})
    async with open_engine(config, clock=clock) as engine:
        result = await engine.reconcile()
    assert result.result is Result.FAILED and "leaves the repository" in result.message
    assert world.device.slot_path("b").read_bytes() == before


def build_info_asset(published: Any, world: SimWorld) -> dict[str, Any]:
    return next(a for a in published.document["assets"] if a["filename"] == f"{world.system}.build-info.json")


def rewrite_tag(world: SimWorld, document: dict[str, Any]) -> None:
    (world.repo_dir / "fleet/system/tags/stable.json").write_text(json.dumps(document))


@pytest.mark.parametrize("transport", ["http", "file"])
@pytest.mark.parametrize("problem", ["missing", "wrong digest", "oversize"])
async def test_build_info_problems_reach_the_status_and_an_event(world: SimWorld, server: Any, clock: FakeClock, problem: str, transport: str) -> None:
    """The build-info asset is missing (404), does not match its digest, or is far larger than
    build info can be: the pass fails with the reason in status.json and a 'failed' event,
    and nothing is installed."""
    published = world.publish("1.1.0")
    info = build_info_asset(published, world)
    blob = world.repo_dir / "fleet" / info["url"]
    if problem == "missing":
        blob.unlink()
        expected = "HTTP 404" if transport == "http" else "not found"
    elif problem == "wrong digest":
        blob.write_bytes(blob.read_bytes().replace(b"1.1.0", b"6.6.6"))
        expected = "sha256"
    else:
        info["size"] = 64 << 20
        rewrite_tag(world, published.document)
        expected = "bytes is more than"
    before = world.device.slot_path("b").read_bytes()
    config = build_config(world.tables(url=server.url if transport == "http" else None), source="t", env={})
    async with open_engine(config, clock=clock) as engine:
        result = await engine.reconcile()
    assert result.result is Result.FAILED, result.message
    assert "build-info.json" in result.message and expected in result.message
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["state"] == "failed" and expected in status["lastError"] and "build-info.json" in status["lastError"]
    events = [json.loads(line) for line in (world.state_dir / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["attributes"]["event"] == "failed"]
    assert failed and expected in json.dumps(failed[-1])
    assert world.device.slot_path("b").read_bytes() == before


async def test_a_compressed_document_cannot_expand_past_the_limit(world: SimWorld) -> None:
    """A small gzip body that inflates to 64 MiB: refused once the inflated bytes pass 1 MiB."""
    import gzip

    from ota_daemon.hubs.static import MAX_DOCUMENT

    bomb = gzip.compress(b" " * (64 << 20))

    def body() -> Iterator[bytes]:
        yield bomb

    srv = BodyServer(body, headers=f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n")
    try:
        async with httpx.AsyncClient() as http:
            hub = StaticHub(base_url=srv.url, http=http, allow_insecure=True)
            with pytest.raises(HubError, match=f"more than {MAX_DOCUMENT} bytes"):
                await hub.resolve(world.path)
    finally:
        srv.close()
