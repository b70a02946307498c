"""Shared pieces of the download package: limits, the retry signal, a download's books
(:class:`_Job`), and the protocols between the transports and the sinks."""

from __future__ import annotations

import asyncio
import email.utils
import re
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import structlog

from ota_daemon import __version__
from ota_daemon.model import Asset, report_progress

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



def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


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


class _SerialLane:
    """Tasks run one after another, in order, on the shared worker threads: a download's
    write, hash and sync lanes need no threads of their own. Threads are made once and reused,
    download after download (a thread made per download costs a malloc arena's worth of
    memory that is never given back)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self.running = False

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        future: Future[_T] = Future()
        with self.lock:
            self.queue.append((future, fn, args))
            if not self.running:
                self.running = True
                self.pool.submit(self._drain)
        return future

    def _drain(self) -> None:
        while True:
            with self.lock:
                if not self.queue:
                    self.running = False
                    return
                future, fn, args = self.queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = False) -> None:
        """Nothing to stop: the threads belong to the shared pool."""
        return None


_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(name: str, workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of reusable threads (made on demand, up to ``workers``)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            pool = _POOLS[name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"ota-download-{name}")
        return pool


def _lane(name: str) -> _SerialLane:
    """A serial lane (``name`` is for the reader: all lanes share the ``lanes`` threads)."""
    return _SerialLane(_pool("lanes", 16))


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
