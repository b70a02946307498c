"""A userspace TCP fault proxy between the daemon and the hub (hil-rig.md §4.5).

It replaces toxiproxy and ``tc netem`` (neither is available on the CI kernel). Every
connection's first request line is read, so a toxic can be limited to the requests whose
path contains ``match`` (``"/assets/"``: only image downloads). Offsets count **body** bytes
of the response (after the blank line ending the headers), so "cut after 300 KiB" means
300 KiB of the image, whatever the headers weigh.

Toxics (downstream, hub → device), combined freely:

- ``latency`` seconds (+ ``jitter``) before each forwarded segment;
- ``rate``: bytes per second;
- ``slice``: forward in segments of at most this many bytes;
- ``stall_after`` + ``stall_for``: stop forwarding at a body offset (``stall_for=None``:
  for ever, the connection stays open — a stall a low-speed timeout must catch);
- ``reset_after``: RST the connection after that many body bytes; ``close_after``: FIN;
- ``corrupt_at``: flip one byte at that body offset;
- ``blackhole``: accept, read, never answer, never close (until cleared);
- ``times``: apply to this many matching connections, then pass through.

``down()`` closes the listening socket (connection refused), ``up()`` opens it again on the
same port. Every toxic change is recorded on the timeline as a ``fault`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from hil.rig.timeline import Recorder


@dataclass
class Toxics:
    match: str = ""
    times: int | None = None
    latency: float = 0.0
    jitter: float = 0.0
    rate: int | None = None
    slice: int | None = None
    stall_after: int | None = None
    stall_for: float | None = 0.0
    reset_after: int | None = None
    close_after: int | None = None
    corrupt_at: int | None = None
    blackhole: bool = False

    def label(self) -> str:
        skip = {"match", "times"}
        parts = [f"{k}={v}" for k, v in asdict(self).items() if k not in skip and v not in (None, 0, 0.0, False)]
        if self.stall_after is not None and self.stall_for is None:
            parts.append("stall_for=forever")
        scope = f"{self.match or '*'}" + (f" x{self.times}" if self.times else "")
        return f"{scope}: {', '.join(parts) or 'pass-through'}"


@dataclass
class Connection:
    mono: float
    request: str = ""
    down_bytes: int = 0
    body_bytes: int = 0
    toxic: str | None = None
    end: str = ""


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], *, recorder: Recorder | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.recorder = recorder
        self.host = host
        self.port = port
        self.toxics: Toxics | None = None
        self._applied = 0
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="hil-proxy", daemon=True)
        self._release = asyncio.Event()
        self._held: set[asyncio.StreamWriter] = set()
        self._active: set[asyncio.StreamWriter] = set()
        self._rng = random.Random(0x0DA)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> FaultProxy:
        self._thread.start()
        self.up()
        return self

    def stop(self) -> None:
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def up(self) -> None:
        if self._server is not None:
            return
        self._server = self._call(self._listen())
        self._record("fault" if self.connections else "proxy", "proxy-up", what=f"proxy up on :{self.port}")

    def down(self, *, drop: bool = False) -> None:
        """Close the listening socket: new connections are refused; ``drop`` also resets the
        open ones (the hub vanishes mid-download)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self._call(self._unlisten(server))
        if drop:
            self._call(self._drop_all())
        self._record("fault", "proxy-down", what="hub unreachable (connection refused" + (", open connections reset)" if drop else ")"))

    async def _drop_all(self) -> None:
        for writer in list(self._active):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def _listen(self) -> asyncio.base_events.Server:
        server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _unlisten(self, server: asyncio.base_events.Server) -> None:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 0.5)

    async def _close_all(self) -> None:
        self._release.set()
        if self._server is not None:
            await self._unlisten(self._server)
            self._server = None
        for writer in list(self._held):
            writer.close()

    # ------------------------------------------------------------------ control
    def set(self, toxics: Toxics | None = None, **kwargs: Any) -> Toxics:
        toxics = toxics or Toxics(**kwargs)
        with self._lock:
            self.toxics = toxics
            self._applied = 0
        self._loop.call_soon_threadsafe(self._release.clear)
        self._record("fault", "toxic", what=f"proxy: {toxics.label()}")
        return toxics

    def clear(self) -> None:
        with self._lock:
            had = self.toxics is not None
            self.toxics = None
        self._loop.call_soon_threadsafe(self._release.set)
        if had:
            self._record("fault", "toxic-cleared", what="proxy: toxics cleared")

    def _take(self, request: str) -> Toxics | None:
        with self._lock:
            toxics = self.toxics
            if toxics is None or toxics.match not in request:
                return None
            if toxics.times is not None and self._applied >= toxics.times:
                return None
            self._applied += 1
            return toxics

    def _record(self, source: str, kind: str, **data: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(source, kind, **data)

    def delivered(self, match: str = "") -> int:
        """Body bytes the device received for requests whose line contains ``match``."""
        with self._lock:
            return sum(c.body_bytes for c in self.connections if match in c.request)

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(mono=self.recorder.elapsed() if self.recorder else time.monotonic())
        with self._lock:
            self.connections.append(conn)
        self._active.add(writer)
        try:
            await self._serve_one(reader, writer, conn)
        finally:
            self._active.discard(writer)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> None:
        try:
            first = await asyncio.wait_for(reader.read(65536), 30)
        except (TimeoutError, ConnectionError):
            writer.close()
            return
        conn.request = first.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        toxics = self._take(conn.request)
        conn.toxic = toxics.label() if toxics else None
        if toxics is not None and toxics.blackhole:
            conn.end = "blackholed"
            self._record("proxy", "blackhole", request=conn.request)
            self._held.add(writer)
            try:
                drain = asyncio.ensure_future(self._drain(reader))
                await self._release.wait()
                drain.cancel()
            finally:
                self._held.discard(writer)
                writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            conn.end = f"upstream: {exc}"
            writer.close()
            return
        up_writer.write(first)
        upward = asyncio.ensure_future(self._pipe(reader, up_writer))
        try:
            conn.end = await self._downstream(up_reader, writer, conn, toxics)
        except (ConnectionError, OSError) as exc:
            conn.end = f"error: {type(exc).__name__}"
        finally:
            upward.cancel()
            up_writer.close()
            if conn.end not in ("reset",):
                writer.close()
            self._record("proxy", "connection", request=conn.request, body_bytes=conn.body_bytes, toxic=conn.toxic, end=conn.end)

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _downstream(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, toxics: Toxics | None) -> str:
        header_done = False
        head = b""
        started = time.monotonic()
        body_sent = 0
        stalled = False
        while True:
            data = await up.read(65536)
            if not data:
                return "eof"
            body_part = data
            if not header_done:
                head += data
                idx = head.find(b"\r\n\r\n")
                if idx < 0:
                    writer.write(data)
                    conn.down_bytes += len(data)
                    continue
                header_done = True
                header_len = len(data) - (len(head) - idx - 4)
                writer.write(data[:header_len])
                conn.down_bytes += header_len
                body_part = data[header_len:]
            if toxics is None:
                writer.write(body_part)
                await writer.drain()
                conn.body_bytes += len(body_part)
                conn.down_bytes += len(body_part)
                continue
            pos = 0
            while pos < len(body_part):
                step = len(body_part) - pos
                if toxics.slice:
                    step = min(step, toxics.slice)
                for limit in (toxics.reset_after, toxics.close_after, toxics.stall_after if not stalled else None):
                    if limit is not None and body_sent < limit:
                        step = min(step, limit - body_sent)
                piece = body_part[pos : pos + step]
                if toxics.corrupt_at is not None and body_sent <= toxics.corrupt_at < body_sent + len(piece):
                    i = toxics.corrupt_at - body_sent
                    piece = piece[:i] + bytes([piece[i] ^ 0x01]) + piece[i + 1 :]
                    self._record("proxy", "corrupted", request=conn.request, offset=toxics.corrupt_at)
                if toxics.latency or toxics.jitter:
                    await asyncio.sleep(max(0.0, toxics.latency + self._rng.uniform(-toxics.jitter, toxics.jitter)))
                if piece:
                    writer.write(piece)
                    await writer.drain()
                    body_sent += len(piece)
                    conn.body_bytes = body_sent
                    conn.down_bytes += len(piece)
                pos += len(piece)
                if toxics.rate:
                    ahead = body_sent / toxics.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if toxics.reset_after is not None and body_sent >= toxics.reset_after:
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return "reset"
                if toxics.close_after is not None and body_sent >= toxics.close_after:
                    return "closed"
                if toxics.stall_after is not None and not stalled and body_sent >= toxics.stall_after:
                    stalled = True
                    self._record("proxy", "stall", request=conn.request, at=body_sent, seconds=toxics.stall_for)
                    if toxics.stall_for is None:
                        await self._release.wait()
                        return "stalled"
                    await asyncio.sleep(toxics.stall_for)
