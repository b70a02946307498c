"""Fetching images: verified, resumable, retried, at line speed.

Three hand-offs (``download.mode``): ``url`` (the installer fetches), ``stream`` (bytes piped
into the installer while hashed here), ``file`` (downloaded to the cache with resume, verified,
then installed from the file). Every byte the daemon handles is counted and hashed; a file
that fails verification is deleted, never installed.

URLs come from a provider so that an expired, issued URL can be re-issued mid-download
without starting over. URLs are credentials: messages carry only :func:`redact_url` forms.

How a file download survives bad links and power cuts:

- ``<dest>.partial`` holds the bytes so far; ``<dest>.partial.json`` (written atomically,
  fsynced) the pinned digest and size, the object's validator (ETag / Last-Modified, sent
  back as ``If-Range``), the boot id, and *checkpoints*: the SHA-256 state every
  ``download.sync_interval`` bytes (OpenSSL's ``SHA256_CTX`` through ctypes where available).
  A restart in the same boot (SIGKILL, daemon restart) trusts the whole partial file: a killed
  process loses nothing that reached the page cache; only the bytes after the newest
  checkpoint are reread to rebuild the hash. After a reboot the partial file is reread and
  checked against the checkpoints, and cut back to the last one that matches (bytes the kernel
  had not written back before the power cut are fetched again). The data itself is never
  fsynced: at line speed that would cost the writeback in our own time, and nothing depends
  on it — every byte is verified before use.
- A changed object (validator differs, or a 200 answers a range request) restarts from zero;
  bytes of two objects are never spliced. A resumed download whose digest does not verify is
  downloaded once more from zero; only a fresh download that does not verify is final.
- Retries (tenacity, sleeping on the injected clock): exponential backoff with jitter on
  connection errors, stalls (``download.read_timeout``), links slower than
  ``download.min_rate`` over ``download.min_rate_window``, 408/429/5xx (``Retry-After``
  honoured). ``download.max_retries`` counts failures in a row *without progress*.
  401/403/410 ask the provider for a new URL (``download.max_url_reissues``); other 4xx, a
  wrong size, a wrong digest, an untrusted TLS certificate and a full disk stop at once.

Speed: when the client came from :func:`make_http_client` and no proxy applies, the body is
read straight from the socket by one thread in large ``recv(MSG_WAITALL)`` chunks (one copy
out of the kernel) that hashes (the GIL is released) and writes each chunk before passing a
reference to the event loop, which only keeps the books (progress, rate cap, low-speed guard)
and hands chunks on in stream mode. Otherwise (proxies, other clients) httpx reads, and a
worker thread hashes and writes. At most a few ``download.chunk_size`` chunks are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import email.utils
import errno
import hashlib
import json
import os
import random
import re
import shutil
import socket
import ssl
import struct
import threading
import time
import urllib.request
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import unquote, urljoin, urlsplit

import h11
import httpx
import structlog
import tenacity

from ota_daemon import __version__
from ota_daemon.clock import Clock, SystemClock
from ota_daemon.config import DownloadConfig, TlsConfig
from ota_daemon.errors import (
    ConfigError,
    IntegrityError,
    NoSpace,
    OtaError,
    TransientError,
    UpdateFailed,
)
from ota_daemon.faults import fault_threshold
from ota_daemon.model import Asset, Progress, ProgressCallback, report_progress
from ota_daemon.redact import redact_url
from ota_daemon.state import atomic_write, fsync_dir

UrlProvider = Callable[[], Awaitable[str]]
_T = TypeVar("_T")

log = structlog.get_logger("ota_daemon.download").bind(component="download")

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_EXPIRED_STATUS = {401, 403, 410}
_REDIRECT_STATUS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 10
_MAX_RESTARTS = 3  # the object changed under us this often: give up (two replicas disagreeing)
_PROGRESS_INTERVAL = 0.25  # seconds between progress callbacks, at most
_DEPTH = 2  # chunks in flight per stage: memory stays at a few chunk_size
_USER_AGENT = f"ota-daemon/{__version__}"
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_META_SCHEMA = 1

#: Where the kernel names this boot; tests point it elsewhere to simulate a reboot.
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


# ---------------------------------------------------------------------------- public helpers


def local_path(url: str) -> Path | None:
    """The path of a ``file://`` URL (or a plain path), else ``None``."""
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    if url.startswith("/"):
        return Path(url)
    return None


@dataclass(frozen=True)
class _ClientInfo:
    ssl_context: ssl.SSLContext


#: Clients made by :func:`make_http_client`, with what the fast path needs to behave the same.
_CLIENTS: weakref.WeakKeyDictionary[httpx.AsyncClient, _ClientInfo] = weakref.WeakKeyDictionary()


def make_ssl_context(tls: TlsConfig | None = None) -> ssl.SSLContext:
    """Verification always on: ``tls.ca_file`` alone when set, else the default trust store
    (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured, as httpx does); plus the client
    certificate and key when configured."""
    try:
        if tls is not None and tls.ca_file:
            what = f"tls.ca_file {tls.ca_file}"
            ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        else:
            what = "the default trust store"
            ctx = httpx.create_ssl_context(trust_env=True)
        if tls is not None and tls.client_cert:
            what = f"tls.client_cert {tls.client_cert}" + (f" with tls.client_key {tls.client_key}" if tls.client_key else "")
            ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot load {what}: {reason}; expected PEM files readable by the daemon") from None
    return ctx


def make_http_client(tls: TlsConfig | None = None, *, timeout: float = 30.0) -> httpx.AsyncClient:
    """The one HTTP client of the daemon: TLS verification on, proxies from the environment."""
    ctx = make_ssl_context(tls)
    client = httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(timeout), trust_env=True, follow_redirects=True)
    _CLIENTS[client] = _ClientInfo(ssl_context=ctx)
    return client


# ---------------------------------------------------------------------------- SHA-256 with a savable state

_CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len — unchanged since OpenSSL 0.9.8


def _load_libcrypto() -> Any:
    """OpenSSL's libcrypto (the one hashlib already loaded), checked by a self-test; or None."""
    try:
        import _hashlib  # noqa: F401  (loads libcrypto into the process)

        path = None
        with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
            for line in maps:
                if "libcrypto" in line:
                    path = line.split()[-1]
                    break
        lib = ctypes.CDLL(path or ctypes.util.find_library("crypto") or "libcrypto.so.3")
        for name in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
            getattr(lib, name).restype = ctypes.c_int
        lib.SHA256_Init.argtypes = [ctypes.c_void_p]
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        # self-test: save the state mid-block, restore it into fresh memory, finish both ways
        sample = bytes(range(256)) * 5
        ctx = ctypes.create_string_buffer(_CTX_SIZE)
        lib.SHA256_Init(ctx)
        lib.SHA256_Update(ctx, sample[:100], 100)
        copy = ctypes.create_string_buffer(ctx.raw, _CTX_SIZE)
        lib.SHA256_Update(copy, sample[100:], len(sample) - 100)
        out = ctypes.create_string_buffer(32)
        lib.SHA256_Final(out, copy)
        if out.raw != hashlib.sha256(sample).digest() or struct.unpack_from("<II", ctx.raw, 32) != (800, 0):
            return None
        return lib
    except (OSError, AttributeError, ImportError):
        return None


_LIBCRYPTO: Any = None
_LIBCRYPTO_LOADED = False


def _libcrypto() -> Any:
    global _LIBCRYPTO, _LIBCRYPTO_LOADED
    if not _LIBCRYPTO_LOADED:
        _LIBCRYPTO = _load_libcrypto()
        _LIBCRYPTO_LOADED = True
    return _LIBCRYPTO


class Sha256:
    """SHA-256 whose running state can be saved and restored, so that a resumed download
    need not reread what it already hashed. Falls back to :mod:`hashlib` (no saved state)
    where OpenSSL's low-level functions are not reachable. Both release the GIL."""

    def __init__(self, state: bytes | None = None, *, savable: bool = True) -> None:
        self.length = 0
        self._lib: Any = _libcrypto() if savable else None
        self._ctx: Any = None
        self._py: Any = None
        if self._lib is not None:
            self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
            if state is None:
                self._lib.SHA256_Init(self._ctx)
            else:
                ctypes.memmove(self._ctx, state, _CTX_SIZE)
                low, high = struct.unpack_from("<II", state, 32)
                self.length = ((high << 32) | low) // 8
        elif state is not None:
            raise ValueError("no savable SHA-256 in this process")
        else:
            self._py = hashlib.sha256()

    @classmethod
    def restore(cls, state: bytes, offset: int) -> Sha256 | None:
        """The hasher saved at ``offset``, or None if the state is unusable here."""
        if len(state) != _CTX_SIZE or _libcrypto() is None:
            return None
        hasher = cls(state)
        return hasher if hasher.length == offset else None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        if self._ctx is not None:
            if isinstance(data, bytes):
                self._lib.SHA256_Update(self._ctx, data, n)
            else:
                view = memoryview(data)
                buf = (ctypes.c_char * n).from_buffer(view) if not view.readonly else bytes(view)
                self._lib.SHA256_Update(self._ctx, buf, n)
        else:
            self._py.update(data)
        self.length += n

    def state(self) -> bytes | None:
        return bytes(self._ctx.raw) if self._ctx is not None else None

    def matches(self, state: bytes) -> bool:
        """Whether this hasher stands where ``state`` was saved: the same bytes went in."""
        mine = self.state()
        if mine is None or len(state) != _CTX_SIZE:
            return False
        (num,) = struct.unpack_from("<I", state, 104)
        if num >= 64:
            return False
        # h[8], Nl, Nh; num; the buffered bytes of the last partial block (the rest is stale)
        return mine[:40] == state[:40] and mine[104:108] == state[104:108] and mine[40 : 40 + num] == state[40 : 40 + num]

    def hexdigest(self) -> str:
        if self._ctx is None:
            return str(self._py.hexdigest())
        copy = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, copy)
        return out.raw.hex()


# ---------------------------------------------------------------------------- small helpers


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _proxied(scheme: str) -> bool:
    """Whether the environment configures a proxy for ``scheme`` (then httpx handles it)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all"))


_emit = report_progress


class _Retry(Exception):
    """One attempt failed for a passing reason; the retry loop decides what next."""

    def __init__(self, reason: str, *, retry_after: float | None = None, immediate: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.immediate = immediate  # not a failure: re-issued URL or restart from zero


class _UseHttpx(Exception):
    """The fast path cannot serve this request (proxy, odd URL): use httpx."""


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# ---------------------------------------------------------------------------- sinks


def _lane(name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ota-download-{name}")


@dataclass
class _Job:
    """One download: where it stands, across attempts."""

    asset: Asset
    provider: UrlProvider
    url: str
    what: str
    have: int = 0  # bytes processed (hashed; written in file mode)
    etag: str | None = None
    last_modified: str | None = None
    high_water: int = 0
    failures: int = 0
    reissues: int = 0
    reissue_mark: int = 0
    restarts: int = 0
    single: bool = True  # every byte came from one response that started at zero

    def if_range(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


class _Sink(Protocol):
    """Where the body goes. ``process`` runs on a worker thread, one chunk after another;
    the rest on the event loop."""

    offset: int

    def process(self, chunk: bytes) -> None: ...

    def watch(self, worker: Future[None]) -> None:
        """A worker that calls ``process``: closing waits for it."""
        ...

    async def deliver(self, chunk: bytes) -> None: ...

    async def restart(self, reason: str) -> None: ...

    async def validator(self, etag: str | None, last_modified: str | None) -> None: ...


class _FileSink:
    """Writes on one lane and hashes on another, in parallel with the next receive; checkpoints
    go to a third."""

    def __init__(
        self,
        *,
        job: _Job,
        fd: int,
        hasher: Sha256,
        partial: Path,
        meta_path: Path,
        meta: dict[str, Any],
        config: DownloadConfig,
    ) -> None:
        self.job = job
        self.fd = fd
        self.hasher = hasher
        self.offset = job.have
        self.partial = partial
        self.meta_path = meta_path
        self.meta = meta
        self.sync_interval = config.sync_interval
        self.synced_at = job.have
        self.writing = _lane("write")
        self.write_failed: OtaError | None = None
        self.hashing = _lane("hash")
        self.pending: deque[tuple[Future[None], Future[None]]] = deque()
        self.syncer = _lane("sync")
        self.sync_future: Future[None] | None = None
        self.workers: list[Future[None]] = []

    # -- on a worker thread
    def process(self, chunk: bytes) -> None:
        offset = self.offset
        self.offset = offset + len(chunk)
        wrote = self.writing.submit(self._write, chunk, offset)
        hashed = self.hashing.submit(self._hash, chunk, self.offset)
        self.pending.append((wrote, hashed))
        while len(self.pending) > _DEPTH:
            wrote, hashed = self.pending.popleft()
            wrote.result()
            hashed.result()

    def _write(self, chunk: bytes, offset: int) -> None:
        """On the write lane. After a failed write no later one runs: a write past a gap
        would leave a hole that a resume would take for data."""
        if self.write_failed is not None:
            raise self.write_failed
        view = memoryview(chunk)
        done = 0
        try:
            while done < len(chunk):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as exc:
            self.write_failed = self._write_error(exc, offset + done)
            raise self.write_failed from None
        fault_threshold("download", offset + len(chunk))

    def _hash(self, chunk: bytes, end: int) -> None:
        """On the hash lane: the running hash, and a checkpoint every sync_interval bytes."""
        self.hasher.update(chunk)
        if end - self.synced_at >= self.sync_interval and (self.sync_future is None or self.sync_future.done()):
            self._raise_sync_error()
            self.synced_at = end
            state = self.hasher.state()
            if state is not None:
                self.sync_future = self.syncer.submit(self._checkpoint, end, state)

    def _write_error(self, exc: OSError, at: int) -> OtaError:
        where = self.partial.parent
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(where).free
            return NoSpace(
                f"no space left in {where} while writing {self.partial.name} at byte {at} of {self.job.asset.size} "
                f"({_mib(free)} free); the partial download is kept for a later resume"
            )
        return UpdateFailed(f"cannot write {self.partial}: {exc.strerror}", phase="downloading")

    def _raise_sync_error(self) -> None:
        future = self.sync_future
        if future is not None and future.done():
            self.sync_future = None
            future.result()

    def _checkpoint(self, end: int, state: bytes) -> None:
        """Record the hash state at ``end``. The data is not fsynced (that costs the writeback
        in our time, at line speed): after a reboot it is verified against these states."""
        try:
            self._write_meta({"checkpoints": [*self.meta.get("checkpoints", []), [end, state.hex()]]})
        except OSError as exc:
            raise self._write_error(exc, end) from None

    def _write_meta(self, changes: dict[str, Any]) -> None:
        self.meta.update(changes)
        self.meta["boot"] = _boot_id()
        atomic_write(self.meta_path, json.dumps(self.meta).encode())

    # -- on the event loop
    def watch(self, worker: Future[None]) -> None:
        self.workers = [w for w in self.workers if not w.done()] + [worker]

    async def deliver(self, chunk: bytes) -> None:
        return None

    async def _on_syncer(self, fn: Callable[..., object], *args: Any) -> None:
        await asyncio.wrap_future(self.syncer.submit(fn, *args))

    async def _settle(self) -> None:
        """Wait until every chunk handed to the lanes is written and hashed."""
        while self.pending:
            wrote, hashed = self.pending.popleft()
            await asyncio.wrap_future(wrote)
            await asyncio.wrap_future(hashed)

    async def restart(self, reason: str) -> None:
        """Discard the bytes so far: the object changed (or never matched)."""
        log.warning("download restarts from zero", asset=self.job.asset.filename, reason=reason, discarded=self.offset)
        with contextlib.suppress(OtaError, OSError):
            await self._settle()
        await self._on_syncer(os.ftruncate, self.fd, 0)
        self.sync_future = None
        self.hasher = Sha256()
        self.offset = self.synced_at = self.job.have = 0
        self.job.etag = self.job.last_modified = None
        self.job.single = True
        await self._on_syncer(self._write_meta, {"etag": None, "last_modified": None, "checkpoints": []})

    async def validator(self, etag: str | None, last_modified: str | None) -> None:
        if self.meta.get("etag") != etag or self.meta.get("last_modified") != last_modified:
            await self._on_syncer(self._write_meta, {"etag": etag, "last_modified": last_modified})

    async def finish(self) -> str:
        """Everything written (not synced: the finished file is verified before every use, and
        a torn one is downloaded again; waiting here for the writeback would buy nothing): the
        hex digest."""
        for worker in self.workers:
            await asyncio.wrap_future(worker)
        await self._settle()
        await self._on_syncer(self._raise_sync_error)
        return self.hasher.hexdigest()

    def close(self) -> None:
        """Close the descriptor on the sync lane, once no worker or lane can touch it."""

        def close_fd() -> None:
            for worker in list(self.workers):  # the receiving thread has stopped …
                with contextlib.suppress(BaseException):
                    worker.result()
            for wrote, hashed in list(self.pending):  # … and what it handed on is done
                with contextlib.suppress(BaseException):
                    wrote.result()
                    hashed.result()
            os.close(self.fd)
            for lane in (self.writing, self.hashing, self.syncer):
                lane.shutdown(wait=False)

        self.syncer.submit(close_fd)


class _StreamSink:
    """Hashes on the receiving thread; the chunks go on to the consumer."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.hasher = Sha256(savable=False)
        self.offset = 0
        self.out: asyncio.Queue[object] = asyncio.Queue()
        self.space = asyncio.Semaphore(_DEPTH)
        self.workers: list[Future[None]] = []

    def process(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.offset += len(chunk)

    def watch(self, worker: Future[None]) -> None:
        self.workers = [w for w in self.workers if not w.done()] + [worker]

    async def deliver(self, chunk: bytes) -> None:
        await self.space.acquire()
        self.out.put_nowait(chunk)

    async def restart(self, reason: str) -> None:
        if self.offset == 0:
            return
        raise TransientError(
            f"{self.job.what}: {reason} after {self.offset} bytes went to the installer; a stream cannot restart from zero",
        )

    async def validator(self, etag: str | None, last_modified: str | None) -> None:
        return None

    async def finish(self) -> str:
        for worker in self.workers:
            await asyncio.wrap_future(worker)
        return self.hasher.hexdigest()


# ---------------------------------------------------------------------------- responses


class _Body(Protocol):
    """A response body being received and processed. Iterating yields processed chunks
    (``b""``: a tick without data); ``stop`` ends the reception and returns the chunks that
    were processed but not yet handed out."""

    def __aiter__(self) -> _Body: ...

    async def __anext__(self) -> bytes: ...

    async def stop(self) -> list[bytes]: ...


class _Response(Protocol):
    status: int
    reason: str
    headers: httpx.Headers

    def body(self, sink: _Sink, limit: int) -> _Body: ...

    async def aclose(self) -> None: ...


_END = object()


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
        self.done: Future[None] = Future()
        self.loop = asyncio.get_running_loop()
        self.stopped = False
        sink.watch(self.done)
        threading.Thread(target=self._run, name="ota-download-recv", daemon=True).start()

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
            self.done.set_result(None)

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
            except httpx.TransportError as exc:
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


# ---------------------------------------------------------------------------- pacing and progress


class _TokenBucket:
    """``download.max_rate`` on the injected clock."""

    def __init__(self, rate: int, burst: int, clock: Clock) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock.monotonic()

    async def take(self, n: int) -> None:
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            await self.clock.sleep(-self.tokens / self.rate)


class _SpeedGuard:
    """Below ``download.min_rate`` for ``download.min_rate_window``: reconnect."""

    def __init__(self, min_rate: int, window: float, clock: Clock) -> None:
        self.min_rate = min_rate
        self.window = window
        self.clock = clock
        self.start = clock.monotonic()
        self.bytes = 0

    def check(self, n: int) -> None:
        self.bytes += n
        if not self.min_rate or self.window <= 0:
            return
        now = self.clock.monotonic()
        elapsed = now - self.start
        if elapsed < self.window:
            return
        rate = self.bytes / elapsed
        if rate < self.min_rate:
            raise _Retry(f"slower than download.min_rate: {rate:.0f} B/s over {elapsed:.0f} s (minimum {self.min_rate} B/s)")
        self.start, self.bytes = now, 0


class _Meter:
    """Progress callbacks, a few per second at most, with rate and ETA from the clock."""

    def __init__(self, progress: ProgressCallback | None, asset: Asset, clock: Clock, phase: str = "downloading") -> None:
        self.progress = progress
        self.asset = asset
        self.clock = clock
        self.phase = phase
        self.last = -1e18
        self.samples: deque[tuple[float, int]] = deque(maxlen=20)

    async def update(self, done: int, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = self.clock.monotonic()
        if not force and now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
        self.samples.append((now, done))
        rate: float | None = None
        eta: float | None = None
        first_t, first_done = self.samples[0]
        if now > first_t and done >= first_done:
            rate = (done - first_done) / (now - first_t)
            if rate > 0:
                eta = max(0.0, (self.asset.size - done) / rate)
        total = self.asset.size
        percent = 100.0 if total == 0 else min(100.0, 100.0 * done / total)
        await _emit(self.progress, Progress(self.phase, percent, self.asset.filename, done, total, rate, eta))


# ---------------------------------------------------------------------------- the partial file


@dataclass
class _Partial:
    fd: int
    hasher: Sha256
    have: int
    meta: dict[str, Any] = field(default_factory=dict)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_partial(partial: Path, meta_path: Path, asset: Asset, fresh: bool, chunk: int) -> _Partial:
    """Open (or create) the partial file and rebuild the hash of what it holds (in a thread).

    Same boot as the last writer: the whole file is good (a killed process loses nothing that
    reached the page cache); the hash resumes from the newest checkpoint and rereads the rest.
    Another boot: the file is reread and checked against the checkpoints, and cut back to the
    last one that matches; what the kernel had not written back before the power cut is lost.
    """
    meta = _read_meta(meta_path)
    usable = (
        not fresh
        and meta.get("schema") == _META_SCHEMA
        and meta.get("digest") == asset.digest
        and meta.get("size") == asset.size
        and partial.exists()
    )
    boot = _boot_id()
    if not usable:
        partial.unlink(missing_ok=True)
        meta = {"schema": _META_SCHEMA, "digest": asset.digest, "size": asset.size, "etag": None, "last_modified": None, "checkpoints": [], "boot": boot}
        atomic_write(meta_path, json.dumps(meta).encode())  # before the partial file exists: no partial without its meta
    checkpoints: list[tuple[int, bytes]] = []
    with contextlib.suppress(TypeError, ValueError):
        checkpoints = sorted((int(offset), bytes.fromhex(state)) for offset, state in meta.get("checkpoints") or [])
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size > asset.size:
            size = 0
        buf = bytearray(chunk)
        view = memoryview(buf)

        def feed(hasher: Sha256, pos: int, end: int) -> None:
            while pos < end:
                n = os.preadv(fd, [view[: min(chunk, end - pos)]], pos)
                if n <= 0:
                    raise OSError(errno.EIO, "the partial file is shorter than it was")
                hasher.update(view[:n])
                pos += n

        def restored(offset: int) -> Sha256 | None:
            for at, state in checkpoints:
                if at == offset:
                    return Sha256.restore(state, at)
            return None

        trusted = 0
        hasher = Sha256()
        if bool(boot) and meta.get("boot") == boot:
            base = max((at for at, _ in checkpoints if at <= size), default=0)
            hasher = (restored(base) if base else None) or Sha256()
            feed(hasher, hasher.length, size)
            trusted = size
        elif hasher.state() is not None:
            pos = 0
            for at, state in checkpoints:
                if at > size:
                    break
                feed(hasher, pos, at)
                pos = at
                if not hasher.matches(state):
                    break
                trusted = at
            hasher = (restored(trusted) if trusted else None) or Sha256()
            if hasher.length != trusted:
                hasher, trusted = Sha256(), 0
        if trusted != os.fstat(fd).st_size:
            os.ftruncate(fd, trusted)
        meta["checkpoints"] = [[at, state.hex()] for at, state in checkpoints if at <= trusted]
        meta["boot"] = boot
        atomic_write(meta_path, json.dumps(meta).encode())  # the new boot only once the file is cut back
        return _Partial(fd, hasher, trusted, meta)
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------- the downloader


class Downloader:
    def __init__(self, *, config: DownloadConfig, http: httpx.AsyncClient, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.http = http
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        #: Requests sent by this downloader (tests and benchmarks read it).
        self.requests = 0

    # ------------------------------------------------------------------ file mode
    async def to_file(self, *, url: UrlProvider, asset: Asset, dest: Path, progress: ProgressCallback | None = None) -> Path:
        """Download ``asset`` to ``dest`` (resuming ``dest.partial``), verify, return the path."""
        first = await url()
        local = local_path(first)
        if local is not None:
            await self._verify_file(local, asset, progress)
            return local
        try:
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _file_error(exc, dest.parent, "create") from None
        if dest.exists():
            with contextlib.suppress(IntegrityError):
                await self._verify_file(dest, asset, None)
                return dest
            dest.unlink(missing_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        meta_path = dest.with_name(dest.name + ".partial.json")
        job = _Job(asset=asset, provider=url, url=first, what=f"download of {asset.filename}")
        meter = _Meter(progress, asset, self.clock)
        for fresh in (False, True):
            try:
                state = await _in_thread(_open_partial, partial, meta_path, asset, fresh, self.config.chunk_size, orphan=lambda p: os.close(p.fd))
            except OSError as exc:
                raise _file_error(exc, partial, "prepare") from None
            job.have = job.high_water = state.have
            job.etag, job.last_modified = state.meta.get("etag"), state.meta.get("last_modified")
            job.single = state.have == 0
            sink = _FileSink(
                job=job,
                fd=state.fd,
                hasher=state.hasher,
                partial=partial,
                meta_path=meta_path,
                meta=state.meta,
                config=self.config,
            )
            try:
                self._check_space(dest.parent, asset.size - state.have)
                if state.have:
                    log.info("download resumes", asset=asset.filename, offset=state.have, size=asset.size)
                await self._run(job, sink, meter)
                digest = await sink.finish()
            except IntegrityError:
                sink.close()
                _discard(partial, meta_path)
                raise
            except BaseException:
                sink.close()
                raise
            sink.close()
            if job.have == asset.size and digest == asset.sha256:
                try:
                    await asyncio.to_thread(_commit, partial, dest, meta_path)
                except OSError as exc:
                    raise _file_error(exc, dest, "rename the finished download to") from None
                await meter.update(job.have, force=True)
                return dest
            _discard(partial, meta_path)
            if job.single or fresh:
                raise IntegrityError(
                    f"{asset.filename}: got {job.have} bytes with sha256 {digest[:16]}…, expected {asset.size} bytes "
                    f"with {asset.digest[:23]}… from {redact_url(job.url)}; deleted, not installed",
                    phase="downloading",
                )
            log.warning("resumed download does not verify; downloading it again from zero", asset=asset.filename)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ stream mode
    async def stream(self, *, url: UrlProvider, asset: Asset, progress: ProgressCallback | None = None) -> AsyncIterator[bytes]:
        """Yield the asset's bytes; raise :class:`IntegrityError` after the last chunk if they do not verify.

        A broken connection resumes with a range request, invisibly to the consumer; an object
        that changed mid-stream ends it with :class:`TransientError`.
        """
        first = await url()
        local = local_path(first)
        if local is not None:
            async for chunk in self._read_local(local, asset, progress, phase="downloading"):
                yield chunk
            return
        job = _Job(asset=asset, provider=url, url=first, what=f"streaming {asset.filename}")
        sink = _StreamSink(job)
        meter = _Meter(progress, asset, self.clock)

        async def produce() -> str:
            try:
                await self._run(job, sink, meter)
                return await sink.finish()
            finally:
                sink.out.put_nowait(_END)

        task = asyncio.create_task(produce())
        try:
            while True:
                item = await sink.out.get()
                if item is _END:
                    break
                sink.space.release()
                assert isinstance(item, bytes)
                yield item
            digest = await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await meter.update(job.have, force=True)
        if job.have != asset.size or digest != asset.sha256:
            raise IntegrityError(
                f"{asset.filename}: streamed {job.have} bytes with sha256 {digest[:16]}…, expected {asset.size} bytes with {asset.digest[:23]}…",
                phase="installing",
            )

    async def _read_local(self, path: Path, asset: Asset, progress: ProgressCallback | None, *, phase: str) -> AsyncIterator[bytes]:
        """A local file's blocks, hashed on a thread; IntegrityError after the last one."""
        hasher = Sha256(savable=False)
        lane = _lane("hash")
        meter = _Meter(progress, asset, self.clock, phase=phase)

        def read_and_hash(fh: Any) -> bytes:
            block: bytes = fh.read(self.config.chunk_size)
            hasher.update(block)
            return block

        have = 0
        try:
            with open(path, "rb", buffering=0) as fh:
                while block := await asyncio.wrap_future(lane.submit(read_and_hash, fh)):
                    have += len(block)
                    await meter.update(have)
                    yield block
        except OSError as exc:
            raise UpdateFailed(f"{asset.filename}: cannot read {path}: {exc.strerror}", phase=phase) from None
        finally:
            lane.shutdown(wait=False)
        await meter.update(have, force=True)
        digest = hasher.hexdigest()
        if have != asset.size or digest != asset.sha256:
            raise IntegrityError(
                f"{path}: {have} bytes with sha256 {digest[:16]}…, expected {asset.size} bytes with {asset.digest[:23]}…; not installed",
                phase=phase,
            )

    # ------------------------------------------------------------------ small files
    async def fetch_bytes(self, *, url: UrlProvider, asset: Asset, limit: int = 1 << 20) -> bytes:
        """A small asset (build info) in memory, verified."""
        if asset.size > limit:
            raise UpdateFailed(f"{asset.filename}: {asset.size} bytes is more than the {limit} expected")
        first = await url()
        local = local_path(first)
        if local is not None:
            try:
                data = local.read_bytes()
            except OSError as exc:
                raise TransientError(f"{asset.filename}: cannot read {local}: {exc.strerror}") from None
            if len(data) != asset.size or hashlib.sha256(data).hexdigest() != asset.sha256:
                raise IntegrityError(f"{asset.filename}: size or sha256 differs from the version document")
            return data
        issued = [first]

        async def provider() -> str:
            return issued.pop() if issued else await url()

        parts = [chunk async for chunk in self.stream(url=provider, asset=asset)]
        return b"".join(parts)

    # ------------------------------------------------------------------ the retry loop
    async def _run(self, job: _Job, sink: _Sink, meter: _Meter) -> None:
        config = self.config

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, _Retry) or exc.immediate:
                return False
            if exc.retry_after is not None and exc.retry_after > config.retry_max_wait:
                return True
            return job.failures > config.max_retries

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, _Retry) or exc.immediate:
                return 0.0
            if exc.retry_after is not None:
                return exc.retry_after
            ceiling = min(config.retry_max_wait, config.retry_initial_wait * 2.0 ** max(0, job.failures - 1))
            return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = exc.reason if isinstance(exc, _Retry) else repr(exc)
            if isinstance(exc, _Retry) and exc.immediate:
                log.info("download continues", what=job.what, reason=reason, offset=job.have)
                return
            sleep = state.next_action.sleep if state.next_action else 0.0
            log.warning("download interrupted; retrying", what=job.what, reason=reason, offset=job.have, failures=job.failures, wait=round(sleep, 2), url=redact_url(job.url))

        retrying = tenacity.AsyncRetrying(
            sleep=self.clock.sleep,
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception_type(_Retry),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            await retrying(self._attempt, job, sink, meter)
        except _Retry as exc:
            if exc.retry_after is not None and exc.retry_after > config.retry_max_wait:
                raise TransientError(
                    f"{job.what}: the server at {redact_url(job.url)} asks to retry after {exc.retry_after:.0f} s "
                    f"(more than download.retry_max_wait {config.retry_max_wait:.0f} s); {exc.reason}",
                    retry_after=exc.retry_after,
                ) from None
            raise TransientError(
                f"{job.what} from {redact_url(job.url)}: gave up after {job.failures} failures in a row without progress "
                f"at byte {job.have} of {job.asset.size}; last: {exc.reason}",
                retry_after=exc.retry_after,
            ) from None

    async def _attempt(self, job: _Job, sink: _Sink, meter: _Meter) -> None:
        mark = job.high_water
        try:
            await self._attempt_once(job, sink, meter)
        except _Retry as exc:
            if not exc.immediate:
                job.failures = 1 if job.high_water > mark else job.failures + 1
            raise
        job.failures = 0

    async def _attempt_once(self, job: _Job, sink: _Sink, meter: _Meter) -> None:
        asset = job.asset
        if job.have >= asset.size and asset.size > 0:
            return
        headers = [("User-Agent", _USER_AGENT), ("Accept-Encoding", "identity")]
        if job.have:
            headers.append(("Range", f"bytes={job.have}-"))
            validator = job.if_range()
            if validator:
                headers.append(("If-Range", validator))
        async with contextlib.AsyncExitStack() as stack:
            resp = await self._open(job.url, headers, stack)
            status = resp.status
            if status in _EXPIRED_STATUS:
                await self._reissue(job, status, resp.reason)
            if status in _TRANSIENT_STATUS or 500 <= status < 600:
                raise _Retry(f"HTTP {status} {resp.reason}", retry_after=_retry_after(resp.headers.get("retry-after"), self.clock.now()))
            if status == 416 and job.have:
                await self._restart(job, sink, f"HTTP 416 for a range from byte {job.have}")
                raise _Retry("HTTP 416: the partial file does not fit the object; restarting from zero", immediate=True)
            if status not in (200, 206):
                raise UpdateFailed(f"{job.what}: HTTP {status} {resp.reason} from {redact_url(job.url)}; not retried", phase="downloading")
            etag = resp.headers.get("etag")
            last_modified = resp.headers.get("last-modified")
            encoding = resp.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise UpdateFailed(f"{job.what}: the server at {redact_url(job.url)} sent the body with Content-Encoding {encoding!r}; expected the object as is", phase="downloading")
            total: int | None
            if status == 206:
                match = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
                if match is None or int(match.group(1)) != job.have:
                    raise _Retry(f"HTTP 206 with Content-Range {resp.headers.get('content-range')!r} for a range from byte {job.have}")
                total = None if match.group(3) == "*" else int(match.group(3))
                if self._changed(job, etag, last_modified):
                    await self._restart(job, sink, f"the object changed (ETag {job.etag!r} → {etag!r})")
                    raise _Retry("the object changed; restarting from zero", immediate=True)
                job.single = False
            else:
                length = resp.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                if job.have:
                    await self._restart(job, sink, f"the server sent the whole object for a range request (If-Range {job.if_range()!r}, ETag now {etag!r})")
            if total is not None and total != asset.size:
                raise IntegrityError(
                    f"{asset.filename}: the server at {redact_url(job.url)} offers {total} bytes, the version document pins "
                    f"{asset.size}; not downloaded",
                    phase="downloading",
                )
            if (etag, last_modified) != (job.etag, job.last_modified):
                job.etag, job.last_modified = etag, last_modified
                await sink.validator(etag, last_modified)
            await self._body(job, resp, sink, meter)

    async def _body(self, job: _Job, resp: _Response, sink: _Sink, meter: _Meter) -> None:
        bucket = None
        if self.config.max_rate:
            bucket = _TokenBucket(self.config.max_rate, self._read_size(), self.clock)
        guard = _SpeedGuard(self.config.min_rate, self.config.min_rate_window, self.clock)
        body = resp.body(sink, job.asset.size - job.have)
        try:
            async for chunk in body:
                if chunk:
                    job.have += len(chunk)
                    job.high_water = max(job.high_water, job.have)
                    await sink.deliver(chunk)
                    if bucket is not None:
                        await bucket.take(len(chunk))
                    await meter.update(job.have)
                guard.check(len(chunk))
        except _Retry:
            for chunk in await body.stop():  # processed but not handed on yet: hand on (a stream must not skip)
                job.have += len(chunk)
                await sink.deliver(chunk)
            raise
        finally:
            await body.stop()
            job.have = sink.offset
            job.high_water = max(job.high_water, job.have)
        if job.have < job.asset.size:
            raise _Retry(f"the response ended at byte {job.have} of {job.asset.size}")

    async def _restart(self, job: _Job, sink: _Sink, reason: str) -> None:
        job.restarts += 1
        if job.restarts > _MAX_RESTARTS:
            raise TransientError(f"{job.what}: the object at {redact_url(job.url)} changed {job.restarts} times during the download; try again later")
        await sink.restart(reason)

    @staticmethod
    def _changed(job: _Job, etag: str | None, last_modified: str | None) -> bool:
        if job.etag and etag:
            return job.etag != etag
        if job.last_modified and last_modified:
            return job.last_modified != last_modified
        return False

    async def _reissue(self, job: _Job, status: int, reason: str) -> NoReturn:
        if job.high_water > job.reissue_mark:
            job.reissues = 0
        job.reissue_mark = job.high_water
        old = job.url
        if job.reissues >= self.config.max_url_reissues:
            raise UpdateFailed(
                f"{job.what}: HTTP {status} {reason} from {redact_url(old)} after re-issuing the URL {job.reissues} times; not retried",
                phase="downloading",
            )
        new = await job.provider()
        job.reissues += 1
        if new == old:
            raise UpdateFailed(f"{job.what}: HTTP {status} {reason} from {redact_url(old)}, and the hub issued the same URL again; not retried", phase="downloading")
        job.url = new
        raise _Retry(f"HTTP {status}: the URL expired; continuing at byte {job.have} with a re-issued URL", immediate=True)

    async def _open(self, url: str, headers: list[tuple[str, str]], stack: contextlib.AsyncExitStack) -> _Response:
        self.requests += 1
        info = _CLIENTS.get(self.http) if self.config.fast_path else None
        if info is not None:
            try:
                raw = await _in_thread(
                    _raw_open, url, headers, info.ssl_context, self.config.connect_timeout, self.config.read_timeout, orphan=lambda r: r.sock.close()
                )
            except (_UseHttpx, h11.LocalProtocolError):
                pass
            except (OSError, h11.RemoteProtocolError, UnicodeError) as exc:
                self._raise_network(url, exc)
            else:
                raw.chunk_size = self._read_size()
                raw.read_timeout = self.config.read_timeout
                stack.push_async_callback(raw.aclose)
                return raw
        timeout = httpx.Timeout(self.config.read_timeout, connect=self.config.connect_timeout)
        try:
            resp = await stack.enter_async_context(self.http.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True))
        except httpx.TransportError as exc:
            self._raise_network(url, exc)
        except httpx.TooManyRedirects:
            raise UpdateFailed(f"more than the allowed redirects from {redact_url(url)}", phase="downloading") from None
        return _HttpxResponse(resp, self._read_size())

    def _raise_network(self, url: str, exc: BaseException) -> NoReturn:
        cert = _cert_error(exc)
        if cert is not None:
            raise TransientError(f"TLS: the certificate of {redact_url(url)} is not trusted ({cert.verify_message}); not retried") from None
        raise _Retry(f"cannot reach {redact_url(url)}: {_network_reason(exc)}") from None

    def _read_size(self) -> int:
        size = self.config.chunk_size
        if self.config.max_rate:
            size = max(16384, min(size, self.config.max_rate // 4))
        return size

    # ------------------------------------------------------------------ helpers
    async def _verify_file(self, path: Path, asset: Asset, progress: ProgressCallback | None) -> None:
        async for _ in self._read_local(path, asset, progress, phase="verifying"):
            pass

    def _check_space(self, directory: Path, remaining: int) -> None:
        free = shutil.disk_usage(directory).free
        need = remaining + self.config.free_space_margin
        if free < need:
            raise NoSpace(
                f"not enough free space in {directory}: {_mib(free)} free, {_mib(need)} needed "
                f"({_mib(remaining)} still to download plus download.free_space_margin {_mib(self.config.free_space_margin)})"
            )


async def _in_thread(fn: Callable[..., _T], *args: Any, orphan: Callable[[_T], object]) -> _T:
    """Run a blocking call on the opener threads; if we are cancelled meanwhile, ``orphan``
    releases what it returns (a socket, a descriptor) once it is done."""
    future = _opener().submit(fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:

        def release(done: Future[_T]) -> None:
            if not done.cancelled() and done.exception() is None:
                orphan(done.result())

        future.add_done_callback(release)
        raise


_OPENER: ThreadPoolExecutor | None = None


def _opener() -> ThreadPoolExecutor:
    global _OPENER
    if _OPENER is None:
        _OPENER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ota-download-open")
    return _OPENER


def _file_error(exc: OSError, path: Path, doing: str) -> OtaError:
    """A local file problem as a clear failure (never a bare OSError to the engine)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left in {path.parent} to {doing} {path.name}")
    return UpdateFailed(f"cannot {doing} {path}: {exc.strerror or exc}", phase="downloading")


def _commit(partial: Path, dest: Path, meta_path: Path) -> None:
    os.replace(partial, dest)
    fsync_dir(dest.parent)
    meta_path.unlink(missing_ok=True)


def _discard(partial: Path, meta_path: Path) -> None:
    partial.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
