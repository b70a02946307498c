"""The downloader: file, stream and small-file modes over one retry loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import h11
import httpx
import tenacity

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.config import DownloadConfig
from ota_daemon.download.base import (
    _CONTENT_RANGE_RE,
    _END,
    _EXPIRED_STATUS,
    _MAX_RESTARTS,
    _TRANSIENT_STATUS,
    _USER_AGENT,
    UrlProvider,
    _cert_error,
    _in_thread,
    _Job,
    _lane,
    _mib,
    _network_reason,
    _Response,
    _Retry,
    _retry_after,
    _Sink,
    _UseHttpx,
    log,
)
from ota_daemon.download.client import _CLIENTS, local_path, tls_failure
from ota_daemon.download.hashing import Sha256
from ota_daemon.download.httpx_transport import _HttpxResponse
from ota_daemon.download.memory import cap_malloc_arenas, release_free_memory
from ota_daemon.download.pacing import _Meter, _SpeedGuard, _TokenBucket
from ota_daemon.download.partial import (
    _commit,
    _discard,
    _discard_empty,
    _file_error,
    _open_partial,
    prune_cache,
)
from ota_daemon.download.sinks import _FileSink, _StreamSink
from ota_daemon.download.socket_transport import _raw_open
from ota_daemon.effects import effect
from ota_daemon.errors import (
    IntegrityError,
    NoSpace,
    TransientError,
    UpdateFailed,
)
from ota_daemon.model import Asset, ProgressCallback
from ota_daemon.redact import redact_url
from ota_daemon.tempfiles import sweep_temporaries


class Downloader:
    def __init__(self, *, config: DownloadConfig, http: httpx.AsyncClient, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.http = http
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        #: Requests sent by this downloader (tests and benchmarks read it).
        self.requests = 0
        cap_malloc_arenas()

    # ------------------------------------------------------------------ file mode
    async def to_file(self, *, url: UrlProvider, asset: Asset, dest: Path, progress: ProgressCallback | None = None) -> Path:
        """Download ``asset`` to ``dest`` (resuming ``dest.partial``), verify, return the path."""
        try:
            return await self._to_file(url=url, asset=asset, dest=dest, progress=progress)
        finally:
            release_free_memory()

    async def _to_file(self, *, url: UrlProvider, asset: Asset, dest: Path, progress: ProgressCallback | None) -> Path:
        first = await url()
        local = local_path(first)
        if local is not None:
            await self._verify_file(local, asset, progress)
            return local
        try:
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise _file_error(exc, dest.parent, "create") from None
        for stale in await asyncio.to_thread(sweep_temporaries, dest.parent, depth=1):
            log.info("removed a temporary file of a killed writer", path=str(stale))
        if dest.exists():
            with contextlib.suppress(IntegrityError):
                await self._verify_file(dest, asset, None)
                return dest
            with effect("download.discard"):
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
                await asyncio.wrap_future(sink.close())
                _discard(partial, meta_path)
                raise
            except Exception:
                closed = sink.close()
                if sink.offset == 0:  # nothing to resume (a 404, a refused request): no empty partial file stays
                    await asyncio.wrap_future(closed)
                    await asyncio.to_thread(_discard_empty, partial, meta_path)
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

    # ------------------------------------------------------------------ the cache
    def prune(self, directory: Path, *, keep: Path | None = None) -> list[Path]:
        """Make the download cache ``directory`` hold at most ``keep`` (the pinned target's
        image) and its partial download: everything else is removed (an image the installer
        refused, one for a tag that has moved, a partial download of another version).
        A file that cannot be removed stays (logged); returns what was removed."""
        try:
            removed = prune_cache(directory, keep)
        except OSError as exc:
            log.warning("cannot clean the download cache", directory=str(directory), error=exc.strerror or str(exc))
            return []
        for path in removed:
            log.info("removed from the download cache", file=path.name)
        return removed

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
            release_free_memory()
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
                with open(local, "rb") as fh:
                    data = fh.read(asset.size + 1)  # a larger file is wrong: never read it whole
            except FileNotFoundError:
                raise UpdateFailed(f"{asset.filename}: {local} not found") from None
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
        except (httpx.TransportError, ssl.SSLError) as exc:  # anyio lets a TLS alert through unwrapped
            self._raise_network(url, exc)
        except httpx.TooManyRedirects:
            raise UpdateFailed(f"more than the allowed redirects from {redact_url(url)}", phase="downloading") from None
        return _HttpxResponse(resp, self._read_size())

    def _raise_network(self, url: str, exc: BaseException) -> NoReturn:
        if _cert_error(exc) is not None:
            raise TransientError(f"{redact_url(url)}: {tls_failure(exc)}; not retried") from None
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
