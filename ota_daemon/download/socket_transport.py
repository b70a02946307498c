"""The fast path: HTTP/1.1 on a socket of our own, one thread receiving large chunks with
``recv(MSG_WAITALL)``, hashing and writing each before handing a reference to the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import urllib.request
from concurrent.futures import Future
from urllib.parse import urljoin, urlsplit

import h11
import httpx

from ota_daemon.download.base import (
    _DEPTH,
    _END,
    _MAX_REDIRECTS,
    _REDIRECT_STATUS,
    _network_reason,
    _pool,
    _Retry,
    _Sink,
    _UseHttpx,
)
from ota_daemon.errors import (
    UpdateFailed,
)
from ota_daemon.redact import redact_url


def _proxied(scheme: str) -> bool:
    """Whether the environment configures a proxy for ``scheme`` (then httpx handles it)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all"))


_RECEIVING = 0
_RECEIVING_LOCK = threading.Lock()


def receiving() -> int:
    """How many bodies are being received right now (tests: none after a cancel)."""
    with _RECEIVING_LOCK:
        return _RECEIVING


class _RawResponse:
    """An HTTP/1.1 response on a socket of our own."""

    def __init__(
        self,
        sock: socket.socket,
        status: int,
        reason: str,
        headers: httpx.Headers,
        initial: bytes,
        length: int | None,
        chunked: h11.Connection | None,
    ) -> None:
        self.sock = sock
        self.status = status
        self.reason = reason
        self.headers = headers
        self.initial = initial
        self.length = length
        self.chunked = chunked
        self.chunk_size = 1 << 20
        self.read_timeout = 60.0
        self.reading: _RawBody | None = None

    def body(self, sink: _Sink, limit: int) -> _RawBody:
        self.reading = _RawBody(self, sink, limit)
        return self.reading

    async def aclose(self) -> None:
        if self.reading is None:
            self.sock.close()
        else:
            await self.reading.stop()


class _RawBody:
    """A thread receives into large chunks and processes them (hash, write); the event loop
    gets references, a few at a time."""

    def __init__(self, resp: _RawResponse, sink: _Sink, limit: int) -> None:
        self.resp = resp
        self.sink = sink
        self.remaining = limit if resp.length is None else min(limit, resp.length)
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.permits = threading.Semaphore(_DEPTH)
        self.halt = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.stopped = False
        self.done: Future[None] = _pool("recv", 8).submit(self._run)
        sink.watch(self.done)

    def __aiter__(self) -> _RawBody:
        return self

    async def __anext__(self) -> bytes:
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.queue.put_nowait(_END)
            raise item
        assert isinstance(item, bytes)
        if item:
            self.permits.release()
        return item

    async def stop(self) -> list[bytes]:
        if not self.stopped:
            self.stopped = True
            self.halt.set()
            self.permits.release()
            with contextlib.suppress(OSError):
                self.resp.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self.done)
        left: list[bytes] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, bytes) and item:
                left.append(item)
        return left

    # -- the receiving thread
    def _put(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _run(self) -> None:
        global _RECEIVING
        with _RECEIVING_LOCK:
            _RECEIVING += 1
        try:
            if self.resp.chunked is not None:
                self._run_chunked()
            else:
                self._run_plain()
        except (OSError, h11.ProtocolError) as exc:
            if not self.halt.is_set():
                self._put(_Retry(f"connection failed while reading the body: {_network_reason(exc)}"))
        except BaseException as exc:  # the sink's errors (disk full) end the download
            self._put(exc)
        finally:
            self.resp.sock.close()
            with _RECEIVING_LOCK:
                _RECEIVING -= 1

    def _take(self, data: bytes) -> None:
        self.sink.process(data)
        self._put(data)

    def _run_plain(self) -> None:
        sock = self.resp.sock
        read_timeout = self.resp.read_timeout
        tick = max(0.01, min(0.5, read_timeout / 4))
        if self.resp.initial and self.remaining > 0:
            data = self.resp.initial[: self.remaining]
            self.remaining -= len(data)
            self.permits.acquire()
            self._take(data)
        tls = isinstance(sock, ssl.SSLSocket)
        if tls:
            sock.settimeout(tick)
        else:
            sock.settimeout(None)
            secs = int(tick)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", secs, int((tick - secs) * 1e6)))
        idle = 0.0
        while self.remaining > 0:
            if not self.permits.acquire(timeout=tick) or self.halt.is_set():
                if self.halt.is_set():
                    return
                continue
            want = min(self.resp.chunk_size, self.remaining)
            try:
                data = self._recv_tls(want) if tls else sock.recv(want, socket.MSG_WAITALL)
            except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
                self.permits.release()
                idle += tick
                if idle >= read_timeout:
                    self._put(_Retry(f"no data for {read_timeout:g} s: the connection stalled"))
                    return
                self._put(b"")
                continue
            if not data:
                if self.halt.is_set():
                    return
                if self.resp.length is None:
                    break  # the body ends with the connection
                self._put(_Retry(f"the server closed the connection {self.remaining} bytes before the end of its response"))
                return
            idle = 0.0
            self.remaining -= len(data)
            self._take(data)
        self._put(_END)

    def _recv_tls(self, want: int) -> bytes:
        buf = bytearray(want)
        view = memoryview(buf)
        n = 0
        while n < want:
            try:
                got = self.resp.sock.recv_into(view[n:])
            except (TimeoutError, ssl.SSLWantReadError):
                if n:
                    break
                raise
            if got == 0:
                break
            n += got
        return bytes(buf) if n == want else bytes(view[:n])

    def _run_chunked(self) -> None:
        conn = self.resp.chunked
        assert conn is not None
        self.resp.sock.settimeout(self.resp.read_timeout)
        while not self.halt.is_set() and self.remaining > 0:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(self.resp.sock.recv(1 << 16))
                except TimeoutError:
                    self._put(_Retry(f"no data for {self.resp.read_timeout:g} s: the connection stalled"))
                    return
            elif isinstance(event, h11.Data):
                data = bytes(event.data)[: self.remaining]
                self.remaining -= len(data)
                self.permits.acquire()
                self._take(data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        self._put(_END)


def _raw_open(url: str, headers: list[tuple[str, str]], ctx: ssl.SSLContext, connect_timeout: float, read_timeout: float) -> _RawResponse:
    """Send a GET and read the response head, following redirects (blocking; in a thread)."""
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or parts.username or parts.password or not parts.hostname or _proxied(scheme):
            raise _UseHttpx
        port = parts.port or (443 if scheme == "https" else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=connect_timeout)
        try:
            if scheme == "https":
                sock = ctx.wrap_socket(sock, server_hostname=parts.hostname)
            sock.settimeout(read_timeout)
            conn = h11.Connection(h11.CLIENT)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            request = h11.Request(method="GET", target=target, headers=[("Host", parts.netloc), *headers, ("Connection", "close")])
            sock.sendall((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(1 << 16))
                elif isinstance(event, h11.Response):
                    break
                elif not isinstance(event, h11.InformationalResponse):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before the response")
            response_headers = httpx.Headers([(bytes(k), bytes(v)) for k, v in event.headers])
            location = response_headers.get("location")
            if event.status_code in _REDIRECT_STATUS and location:
                sock.close()
                url = urljoin(url, location)
                continue
            chunked = "chunked" in response_headers.get("transfer-encoding", "").lower()
            length_text = response_headers.get("content-length")
            length = int(length_text) if length_text and length_text.isdigit() and not chunked else None
            return _RawResponse(
                sock,
                event.status_code,
                bytes(event.reason).decode("latin-1"),
                response_headers,
                conn.trailing_data[0],
                length,
                conn if chunked else None,
            )
        except BaseException:
            sock.close()
            raise
    raise UpdateFailed(f"more than {_MAX_REDIRECTS} redirects from {redact_url(url)}", phase="downloading")
