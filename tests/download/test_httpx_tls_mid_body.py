"""A TLS alert that reaches the httpx path unwrapped (anyio lets ``ssl.SSLError`` through,
httpx does not always map it) is a network failure like any other: the download retries,
nothing escapes as a traceback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any, cast

import httpx
import pytest

from ota_daemon.download.base import _Retry
from ota_daemon.download.httpx_transport import _HttpxResponse


class _Sink:
    offset = 0

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def process(self, chunk: bytes) -> None:
        self.seen.append(chunk)

    def watch(self, worker: Future[None]) -> None:
        pass


class _Resp:
    status_code = 200
    reason_phrase = "OK"
    headers = httpx.Headers({"content-length": "100"})

    def __init__(self, first: bytes | None) -> None:
        self.first = first

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self.first is not None:
            yield self.first
        raise ssl.SSLError(1, "[SSL: TLSV1_ALERT_INTERNAL_ERROR] tlsv1 alert internal error")

    async def aclose(self) -> None:
        pass


async def _read(first: bytes | None) -> list[bytes]:
    resp = _HttpxResponse(cast("Any", _Resp(first)), 16)
    body = resp.body(cast("Any", _Sink()), 100)
    got: list[bytes] = []
    try:
        async for chunk in body:
            got.append(chunk)
    finally:
        await body.stop()
    return got


def test_a_tls_alert_before_any_byte_retries() -> None:
    with pytest.raises(_Retry, match="SSLError"):
        asyncio.run(_read(None))


def test_a_tls_alert_after_some_bytes_keeps_them_and_then_retries() -> None:
    with pytest.raises(_Retry):
        asyncio.run(_read(b"x" * 10))
