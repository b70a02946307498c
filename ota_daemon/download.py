"""Fetching images: verified, resumable, retried.

Three hand-offs (``download.mode``): ``url`` (the installer fetches), ``stream`` (bytes piped
into the installer while hashed here), ``file`` (downloaded to the cache with resume, verified,
then installed from the file). Every byte the daemon handles is counted and hashed; a file
that fails verification is deleted, never installed.

URLs come from a provider so that an expired, issued URL can be re-issued mid-download
without starting over. URLs are credentials: messages carry only :func:`redact_url` forms.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.config import DownloadConfig, TlsConfig
from ota_daemon.errors import IntegrityError, TransientError, UpdateFailed
from ota_daemon.faults import fault_threshold
from ota_daemon.model import Asset, Progress, ProgressCallback
from ota_daemon.redact import redact_url

UrlProvider = Callable[[], Awaitable[str]]

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_EXPIRED_STATUS = {401, 403, 410}


def local_path(url: str) -> Path | None:
    """The path of a ``file://`` URL (or a plain path), else ``None``."""
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    if url.startswith("/"):
        return Path(url)
    return None


def make_http_client(tls: TlsConfig | None = None, *, timeout: float = 30.0) -> httpx.AsyncClient:
    """The one HTTP client of the daemon: TLS verification on, proxies from the environment."""
    verify: object = True
    cert = None
    if tls is not None:
        if tls.ca_file:
            import ssl

            ctx = ssl.create_default_context(cafile=str(tls.ca_file))
            if tls.client_cert:
                ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
            verify = ctx
        elif tls.client_cert:
            cert = (str(tls.client_cert), str(tls.client_key)) if tls.client_key else str(tls.client_cert)
    kwargs: dict[str, object] = {"verify": verify, "timeout": httpx.Timeout(timeout), "trust_env": True, "follow_redirects": True}
    if cert is not None:
        kwargs["cert"] = cert
    return httpx.AsyncClient(**kwargs)  # type: ignore[arg-type]


async def _emit(progress: ProgressCallback | None, item: Progress) -> None:
    if progress is None:
        return
    result = progress(item)
    if result is not None:
        await result


class Downloader:
    def __init__(self, *, config: DownloadConfig, http: httpx.AsyncClient, clock: Clock | None = None) -> None:
        self.config = config
        self.http = http
        self.clock = clock or SystemClock()

    # ------------------------------------------------------------------ file mode
    async def to_file(self, *, url: UrlProvider, asset: Asset, dest: Path, progress: ProgressCallback | None = None) -> Path:
        """Download ``asset`` to ``dest`` (resuming ``dest.partial``), verify, return the path."""
        first = await url()
        local = local_path(first)
        if local is not None:
            await self._verify_file(local, asset, progress)
            return local
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if dest.exists():
            with contextlib.suppress(IntegrityError):
                await self._verify_file(dest, asset, None)
                return dest
            dest.unlink(missing_ok=True)
        self._check_space(dest.parent, asset.size)
        partial = dest.with_name(dest.name + ".partial")
        meta_path = dest.with_name(dest.name + ".partial.json")
        meta = _read_meta(meta_path)
        if meta.get("digest") != asset.digest:
            partial.unlink(missing_ok=True)
            meta = {"digest": asset.digest}
        hasher = hashlib.sha256()
        have = 0
        if partial.exists():
            have = partial.stat().st_size
            if have > asset.size:
                partial.unlink()
                have = 0
            else:
                with open(partial, "rb") as fh:
                    while block := fh.read(1 << 20):
                        hasher.update(block)
        current = first
        attempts = 0
        while have < asset.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            if have and meta.get("validator"):
                headers["If-Range"] = meta["validator"]
            try:
                async with self.http.stream("GET", current, headers=headers) as resp:
                    if resp.status_code in _EXPIRED_STATUS:
                        current = await url()
                        attempts += 1
                        if attempts > self.config.max_retries:
                            raise UpdateFailed(f"download of {asset.filename}: HTTP {resp.status_code} from {redact_url(current)}")
                        continue
                    if resp.status_code in _TRANSIENT_STATUS or resp.status_code >= 500:
                        raise TransientError(f"download of {asset.filename}: HTTP {resp.status_code}")
                    if resp.status_code not in (200, 206):
                        raise UpdateFailed(f"download of {asset.filename}: HTTP {resp.status_code} from {redact_url(current)}")
                    if resp.status_code == 200 and have:
                        have = 0
                        hasher = hashlib.sha256()
                    validator = resp.headers.get("etag") or resp.headers.get("last-modified")
                    meta["validator"] = validator
                    _write_meta(meta_path, meta)
                    with open(partial, "r+b" if have else "wb") as fh:
                        fh.seek(have)
                        async for chunk in resp.aiter_bytes(self.config.chunk_size):
                            fh.write(chunk)
                            hasher.update(chunk)
                            have += len(chunk)
                            fault_threshold("download", have)
                            if have > asset.size:
                                break
                            await _emit(progress, Progress("downloading", 100.0 * have / max(1, asset.size), asset.filename, have, asset.size))
                        fh.flush()
                        os.fsync(fh.fileno())
            except httpx.HTTPError as exc:
                attempts += 1
                if attempts > self.config.max_retries:
                    raise TransientError(f"download of {asset.filename} failed: {type(exc).__name__}") from None
                await self.clock.sleep(min(self.config.retry_max_wait, 2.0**attempts))
                continue
            except TransientError:
                attempts += 1
                if attempts > self.config.max_retries:
                    raise
                await self.clock.sleep(min(self.config.retry_max_wait, 2.0**attempts))
                continue
        if have != asset.size or hasher.hexdigest() != asset.sha256:
            partial.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise IntegrityError(
                f"{asset.filename}: got {have} bytes with sha256 {hasher.hexdigest()[:16]}…, "
                f"expected {asset.size} bytes with {asset.digest[:23]}…; deleted, not installed",
                phase="downloading",
            )
        os.replace(partial, dest)
        meta_path.unlink(missing_ok=True)
        return dest

    # ------------------------------------------------------------------ stream mode
    async def stream(self, *, url: UrlProvider, asset: Asset, progress: ProgressCallback | None = None) -> AsyncIterator[bytes]:
        """Yield the asset's bytes; raise :class:`IntegrityError` after the last chunk if they do not verify."""
        first = await url()
        local = local_path(first)
        hasher = hashlib.sha256()
        have = 0
        if local is not None:
            with open(local, "rb") as fh:
                while block := fh.read(self.config.chunk_size):
                    hasher.update(block)
                    have += len(block)
                    await _emit(progress, Progress("downloading", 100.0 * have / max(1, asset.size), asset.filename, have, asset.size))
                    yield block
        else:
            async with self.http.stream("GET", first) as resp:
                if resp.status_code != 200:
                    kind = TransientError if resp.status_code in _TRANSIENT_STATUS else UpdateFailed
                    raise kind(f"download of {asset.filename}: HTTP {resp.status_code} from {redact_url(first)}")
                async for chunk in resp.aiter_bytes(self.config.chunk_size):
                    hasher.update(chunk)
                    have += len(chunk)
                    await _emit(progress, Progress("downloading", 100.0 * have / max(1, asset.size), asset.filename, have, asset.size))
                    yield chunk
        if have != asset.size or hasher.hexdigest() != asset.sha256:
            raise IntegrityError(
                f"{asset.filename}: streamed {have} bytes with sha256 {hasher.hexdigest()[:16]}…, expected {asset.size} bytes with {asset.digest[:23]}…",
                phase="installing",
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
        else:
            try:
                resp = await self.http.get(first)
            except httpx.HTTPError as exc:
                raise TransientError(f"{asset.filename}: {type(exc).__name__} fetching {redact_url(first)}") from None
            if resp.status_code != 200:
                kind = TransientError if resp.status_code in _TRANSIENT_STATUS else UpdateFailed
                raise kind(f"{asset.filename}: HTTP {resp.status_code} from {redact_url(first)}")
            data = resp.content
        if len(data) != asset.size or hashlib.sha256(data).hexdigest() != asset.sha256:
            raise IntegrityError(f"{asset.filename}: size or sha256 differs from the version document")
        return data

    # ------------------------------------------------------------------ helpers
    async def _verify_file(self, path: Path, asset: Asset, progress: ProgressCallback | None) -> None:
        hasher = hashlib.sha256()
        have = 0
        try:
            with open(path, "rb") as fh:
                while block := fh.read(self.config.chunk_size):
                    hasher.update(block)
                    have += len(block)
                    await _emit(progress, Progress("verifying", 100.0 * have / max(1, asset.size), asset.filename, have, asset.size))
        except OSError as exc:
            raise UpdateFailed(f"{asset.filename}: cannot read {path}: {exc.strerror}") from None
        if have != asset.size or hasher.hexdigest() != asset.sha256:
            raise IntegrityError(
                f"{path}: {have} bytes with sha256 {hasher.hexdigest()[:16]}…, expected {asset.size} bytes with {asset.digest[:23]}…; not installed"
            )

    def _check_space(self, directory: Path, size: int) -> None:
        free = shutil.disk_usage(directory).free
        need = size + self.config.free_space_margin
        if free < need:
            raise UpdateFailed(
                f"not enough free space in {directory}: {free // (1 << 20)} MiB free, {need // (1 << 20)} MiB needed "
                f"(image plus download.free_space_margin)",
                phase="downloading",
            )


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    from ota_daemon.state import atomic_write

    atomic_write(path, json.dumps(meta).encode())
