"""Where a body goes: a file (written and hashed on lanes, checkpointed) or a stream (hashed,
handed on to the installer)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ota_daemon.config import DownloadConfig
from ota_daemon.download.base import (
    _DEPTH,
    _Job,
    _lane,
    _mib,
    log,
)
from ota_daemon.download.hashing import Sha256
from ota_daemon.download.partial import (
    _boot_id,
)
from ota_daemon.effects import effect
from ota_daemon.errors import (
    NoSpace,
    OtaError,
    TransientError,
    UpdateFailed,
)
from ota_daemon.faults import fault_threshold
from ota_daemon.state import atomic_write


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
        with effect("download.checkpoint"):
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
        await self._on_syncer(self._truncate)
        self.sync_future = None
        self.hasher = Sha256()
        self.offset = self.synced_at = self.job.have = 0
        self.job.etag = self.job.last_modified = None
        self.job.single = True
        await self._on_syncer(self._write_meta, {"etag": None, "last_modified": None, "checkpoints": []})

    def _truncate(self) -> None:
        """Drop the bytes so far (the metadata that says so follows: a checkpoint)."""
        with effect("download.discard"):
            os.ftruncate(self.fd, 0)

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

    def close(self) -> Future[None]:
        """Close the descriptor on the sync lane, once no worker or lane can touch it (the
        future is done when it is closed)."""

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

        return self.syncer.submit(close_fd)


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
