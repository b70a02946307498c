"""Stream mode (bytes piped into the installer while hashed) and small in-memory fetches."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

import pytest
from dlfaults import Action, FaultServer, blob, downloader, provider_of

from ota_daemon.clock import FakeClock
from ota_daemon.download.socket_transport import receiving
from ota_daemon.errors import IntegrityError, TransientError, UpdateFailed
from ota_daemon.model import Asset, Progress

MiB = 1 << 20


def pinned(data: bytes, name: str = "a.img") -> Asset:
    return Asset(filename=name, size=len(data), digest=f"sha256_{hashlib.sha256(data).hexdigest()}")


async def collect(chunks: object) -> tuple[bytes, BaseException | None]:
    """Every byte the consumer saw, and the exception that ended the stream (if any)."""
    got = bytearray()
    try:
        async for chunk in chunks:  # type: ignore[attr-defined]
            got += chunk
    except Exception as exc:
        return bytes(got), exc
    return bytes(got), None


async def test_stream_yields_exactly_the_object(server: FaultServer, clock: FakeClock, path: str) -> None:
    """The consumer gets the object's bytes in order, with progress up to 100 %."""
    data = blob(3 * MiB + 1)
    asset = server.put("/a.img", data)
    url, _ = provider_of(server.url("/a.img"))
    seen: list[Progress] = []
    async with downloader(path, clock) as dl:
        got, error = await collect(dl.stream(url=url, asset=asset, progress=seen.append))
    assert error is None and got == data
    assert seen[-1].percent == 100.0 and seen[-1].done_bytes == len(data)


async def test_a_broken_connection_resumes_invisibly(server: FaultServer, clock: FakeClock, path: str) -> None:
    """A reset mid-stream is resumed with a range request: the consumer sees one unbroken stream."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    server.plan.extend([Action("reset", after=MiB + 1000), Action("stall", after=MiB), Action("truncate", after=300_000)])
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock, read_timeout=0.3) as dl:
        got, error = await collect(dl.stream(url=url, asset=asset))
    assert error is None and got == data
    assert len(server.requests) == 4
    assert all(r.headers["range"] != "bytes=0-" for r in server.requests[1:])


async def test_digest_mismatch_raises_after_the_last_chunk(server: FaultServer, clock: FakeClock, path: str) -> None:
    """Wrong bytes are all streamed first (the installer has them), then IntegrityError ends the stream."""
    data = blob(2 * MiB)
    server.put("/a.img", data)
    asset = Asset(filename="a.img", size=len(data), digest="sha256_" + hashlib.sha256(b"other").hexdigest())
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        got, error = await collect(dl.stream(url=url, asset=asset))
    assert got == data
    assert isinstance(error, IntegrityError) and "streamed 2097152 bytes" in str(error)


async def test_an_object_that_changes_mid_stream_ends_the_stream(server: FaultServer, clock: FakeClock) -> None:
    """A stream cannot restart from zero: a changed object ends it with TransientError, unspliced."""
    old, new = blob(2 * MiB, seed=1), blob(2 * MiB, seed=2)
    server.put("/a.img", old)
    server.plan.append(Action("truncate", after=MiB))
    server.plan.append(Action(before=lambda: server.put("/a.img", new, etag='"new"')))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        got, error = await collect(dl.stream(url=url, asset=pinned(new)))
    assert isinstance(error, TransientError) and "cannot restart from zero" in str(error)
    assert got == old[:MiB]


async def test_404_ends_the_stream_at_once(server: FaultServer, clock: FakeClock, path: str) -> None:
    """A permanent status ends the stream before any byte, with one request."""
    url, _ = provider_of(server.url("/missing.img"))
    async with downloader(path, clock) as dl:
        got, error = await collect(dl.stream(url=url, asset=pinned(b"x" * 10)))
    assert got == b"" and isinstance(error, UpdateFailed) and "HTTP 404" in str(error)
    assert len(server.requests) == 1


async def test_a_consumer_that_stops_early_leaves_no_thread_behind(server: FaultServer, clock: FakeClock) -> None:
    """Closing the stream after the first chunk stops the receiving thread and closes the connection."""
    data = blob(4 * MiB)
    asset = server.put("/a.img", data)
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock) as dl:
        chunks = cast("AsyncGenerator[bytes, None]", dl.stream(url=url, asset=asset))
        first = await chunks.__anext__()
        await chunks.aclose()
    assert first == data[: len(first)]
    for _ in range(200):
        if not receiving():
            break
        await asyncio.sleep(0.01)
    assert not receiving()


async def test_a_local_file_is_streamed_and_verified(clock: FakeClock, tmp_path: Path) -> None:
    """A file:// source streams its blocks; a wrong one raises IntegrityError after the last block."""
    data = blob(MiB + 7)
    src = tmp_path / "a.img"
    src.write_bytes(data)
    url, _ = provider_of(f"file://{src}")
    async with downloader("fast", clock) as dl:
        got, error = await collect(dl.stream(url=url, asset=pinned(data)))
        assert error is None and got == data
        got, error = await collect(dl.stream(url=url, asset=pinned(data + b"!")))
    assert got == data and isinstance(error, IntegrityError)


async def test_fetch_bytes_retries_and_verifies(server: FaultServer, clock: FakeClock, path: str) -> None:
    """A small asset is fetched into memory, through a 503, and verified."""
    data = b'{"version": "2.0.0"}'
    asset = server.put("/build-info.json", data)
    server.plan.append(Action("status", status=503))
    url, _ = provider_of(server.url("/build-info.json"))
    async with downloader(path, clock) as dl:
        assert await dl.fetch_bytes(url=url, asset=asset) == data
    assert len(server.requests) == 2


async def test_fetch_bytes_refuses_big_and_wrong_assets(server: FaultServer, clock: FakeClock) -> None:
    """More than the limit is refused before any request; a wrong digest raises IntegrityError."""
    data = b"x" * 100
    server.put("/b.json", data)
    url, _ = provider_of(server.url("/b.json"))
    async with downloader("fast", clock) as dl:
        with pytest.raises(UpdateFailed, match="more than the 64 expected"):
            await dl.fetch_bytes(url=url, asset=pinned(data), limit=64)
        assert server.requests == []
        with pytest.raises(IntegrityError):
            await dl.fetch_bytes(url=url, asset=pinned(b"y" * 100))
