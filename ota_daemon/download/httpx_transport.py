"""Bodies read through httpx (proxies, clients not made by :func:`make_http_client`)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from concurrent.futures import Future

import httpx

from ota_daemon.download.base import (
    _DEPTH,
    _lane,
    _network_reason,
    _Retry,
    _Sink,
)


class _HttpxResponse:
    """A response read through httpx (proxies, other clients)."""

    def __init__(self, resp: httpx.Response, chunk_size: int) -> None:
        self.resp = resp
        self.status = resp.status_code
        self.reason = resp.reason_phrase
        self.headers = resp.headers
        self.chunk_size = chunk_size

    def body(self, sink: _Sink, limit: int) -> _HttpxBody:
        return _HttpxBody(self, sink, limit)

    async def aclose(self) -> None:
        await self.resp.aclose()


class _HttpxBody:
    """httpx's pieces, coalesced into chunks and processed on a lane in order."""

    def __init__(self, resp: _HttpxResponse, sink: _Sink, limit: int) -> None:
        self.resp = resp
        self.sink = sink
        self.remaining = limit
        self.pieces = resp.resp.aiter_raw()
        self.lane = _lane("process")
        self.pending: deque[Future[None]] = deque()
        self.last = time.monotonic()
        self.ended = False

    def __aiter__(self) -> _HttpxBody:
        return self

    async def __anext__(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while not self.ended and self.remaining - size > 0:
            try:
                piece = await self.pieces.__anext__()
            except StopAsyncIteration:
                self.ended = True
                break
            except (httpx.TransportError, ssl.SSLError) as exc:  # anyio lets a TLS alert through unwrapped
                self.ended = True
                if not parts:
                    raise _Retry(f"connection failed while reading the body: {_network_reason(exc)}") from None
                break
            parts.append(piece)
            size += len(piece)
            if size >= self.resp.chunk_size or time.monotonic() - self.last > 0.5:
                break
        if not parts:
            await self._drain()
            if self.remaining > 0 and self.resp.headers.get("content-length"):
                raise _Retry("the server closed the connection before the end of its response")
            raise StopAsyncIteration
        self.last = time.monotonic()
        chunk = (parts[0] if len(parts) == 1 else b"".join(parts))[: self.remaining]
        self.remaining -= len(chunk)
        future = self.lane.submit(self.sink.process, chunk)
        self.sink.watch(future)
        self.pending.append(future)
        while len(self.pending) > _DEPTH:
            await asyncio.wrap_future(self.pending.popleft())
        return chunk

    async def _drain(self) -> None:
        while self.pending:
            await asyncio.wrap_future(self.pending.popleft())

    async def stop(self) -> list[bytes]:
        self.ended = True
        try:
            await self._drain()
        finally:
            self.lane.shutdown(wait=False)
        return []
