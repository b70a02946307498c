"""Helpers of the download tests: a fault-injecting HTTP/1.1 server on loopback (real
sockets), and downloader factories.

The server holds objects by path, serves ranges and If-Range like object storage, counts
the body bytes it hands to the kernel, and follows a *plan*: one action per request (reset
the connection after N bytes, stall, truncate, answer with a status, drip slowly …), then
serves normally.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from ota_daemon.clock import FakeClock
from ota_daemon.config import DownloadConfig, TlsConfig
from ota_daemon.download import Downloader, make_http_client
from ota_daemon.model import Asset

PIECE = 64 * 1024


@dataclass
class Obj:
    data: bytes
    etag: str | None
    last_modified: str | None = None


@dataclass
class Action:
    """What the server does with one request."""

    kind: str = "ok"  # ok | reset | stall | truncate | status | drip | ignore_if_range | chunked | until_close
    after: int = 0  # body bytes before the fault (reset, stall, truncate)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    before: Callable[[], object] | None = None  # runs when the request arrives
    drip: int = 1024  # drip: bytes per piece
    on_piece: Callable[[], object] | None = None  # drip: called after each piece


@dataclass
class Seen:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class FaultServer:
    def __init__(self, *, tls: ssl.SSLContext | None = None, pace: float | None = None) -> None:
        self.objects: dict[str, Obj] = {}
        self.plan: deque[Action] = deque()
        self.requests: list[Seen] = []
        self.bytes_sent = 0
        self.valid_tokens: set[str] | None = None  # when set: ?token= must be one of these (else 403)
        self.release = threading.Event()
        self.tls = tls
        self.pace = pace  # bytes per second, for tests that need few bytes in flight
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    # -- test API
    def put(self, path: str, data: bytes, *, etag: str | None = "auto", last_modified: str | None = None) -> Asset:
        digest = hashlib.sha256(data).hexdigest()
        self.objects[path] = Obj(data, f'"{digest[:12]}"' if etag == "auto" else etag, last_modified)
        return Asset(filename=path.rsplit("/", 1)[-1], size=len(data), digest=f"sha256_{digest}")

    def url(self, path: str, token: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{path}" + (f"?token={token}" if token else "")

    def close(self) -> None:
        self.closed = True
        self.release.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- serving
    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
            parts = urlsplit(target)
            seen = Seen(method, target, parts.path, parse_qs(parts.query), headers)
            with self.lock:
                self.requests.append(seen)
                action = self.plan.popleft() if self.plan else Action()
            if action.before is not None:
                action.before()
            self._respond(conn, seen, action)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _send_head(self, conn: socket.socket, status: int, headers: dict[str, str]) -> None:
        reason = {200: "OK", 206: "Partial Content", 403: "Forbidden", 404: "Not Found", 416: "Range Not Satisfiable", 429: "Too Many Requests"}.get(status, "Status")
        text = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
        conn.sendall(text.encode("latin-1"))

    def _respond(self, conn: socket.socket, seen: Seen, action: Action) -> None:
        if action.kind == "status":
            body = f"status {action.status}\n".encode()
            self._send_head(conn, action.status, {"Content-Length": str(len(body)), **action.headers})
            conn.sendall(body)
            return
        if self.valid_tokens is not None and (seen.query.get("token") or [""])[0] not in self.valid_tokens:
            body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self._send_head(conn, 403, {"Content-Length": str(len(body))})
            conn.sendall(body)
            return
        obj = self.objects.get(seen.path)
        if obj is None:
            self._send_head(conn, 404, {"Content-Length": "0"})
            return
        size = len(obj.data)
        start = 0
        status = 200
        headers: dict[str, str] = {"Accept-Ranges": "bytes"}
        if obj.etag:
            headers["ETag"] = obj.etag
        if obj.last_modified:
            headers["Last-Modified"] = obj.last_modified
        rng = seen.headers.get("range", "")
        if_range = seen.headers.get("if-range")
        honour = action.kind == "ignore_if_range" or if_range is None or if_range in (obj.etag, obj.last_modified)
        if rng.startswith("bytes=") and honour:
            start = int(rng[6:].split("-")[0])
            if start >= size:
                self._send_head(conn, 416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        view = memoryview(obj.data)[start:]
        if action.kind == "chunked":  # Transfer-Encoding: chunked, pieces of PIECE bytes
            self._send_head(conn, status, {**headers, "Transfer-Encoding": "chunked"})
            for at in range(0, len(view), PIECE):
                part = bytes(view[at : at + PIECE])
                conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                with self.lock:
                    self.bytes_sent += len(part)
            conn.sendall(b"0\r\n\r\n")
            return
        if action.kind != "until_close":  # until_close: no length, the body ends with the connection
            headers["Content-Length"] = str(size - start)
        self._send_head(conn, status, headers)
        limit = len(view) if action.kind not in ("reset", "stall", "truncate") else min(action.after, len(view))
        step = action.drip if action.kind == "drip" else PIECE
        sent = 0
        while sent < limit:
            piece = view[sent : min(limit, sent + step)]
            conn.sendall(piece)
            sent += len(piece)
            with self.lock:
                self.bytes_sent += len(piece)
            if action.kind == "drip":
                if action.on_piece is not None:
                    action.on_piece()
                time.sleep(0.002)
            elif self.pace:
                time.sleep(len(piece) / self.pace)
        if action.kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif action.kind == "stall":
            self.release.wait(30)


def blob(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that differ between seeds and along the file."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def make_config(**overrides: Any) -> DownloadConfig:
    values: dict[str, Any] = {
        "read_timeout": 0.4,
        "connect_timeout": 2,
        "free_space_margin": 0,
        "chunk_size": "64k",
        "sync_interval": "256k",
    }
    values.update(overrides)
    return DownloadConfig(**values)



def provider_of(*urls: str) -> tuple[Callable[[], Any], list[str]]:
    """A UrlProvider handing out ``urls`` in turn (the last one again when they run out)."""
    handed: list[str] = []
    queue = list(urls)

    async def provide() -> str:
        url = queue.pop(0) if len(queue) > 1 else queue[0]
        handed.append(url)
        return url

    return provide, handed


@contextlib.asynccontextmanager
async def downloader(path: str, clock: FakeClock, *, tls: TlsConfig | None = None, **overrides: Any) -> AsyncIterator[Downloader]:
    """A downloader on the fast path (the daemon's own client) or on plain httpx."""
    config = make_config(**overrides)
    client = make_http_client(tls, timeout=config.connect_timeout) if path == "fast" else httpx.AsyncClient(trust_env=False)
    async with client:
        yield Downloader(config=config, http=client, clock=clock, rng=random.Random(7))


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def fd_count() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())
