"""TUF's fetcher on the daemon's own HTTP client.

python-tuf's updater is synchronous; the daemon runs it in a worker thread, and this fetcher
hands each request back to the event loop, where the daemon's ``httpx.AsyncClient`` (its TLS
settings, proxies from the environment, timeouts) sends it. Every response is read as a stream
and cut at the size cap of its role (TUF's own limits, from :class:`UpdaterConfig`), and within
a total deadline: endless or slowly dripping metadata ends as a refusal, not a hang.
``file://`` URLs (a folder, a USB stick) are read from disk under the same caps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError
from tuf.ngclient import FetcherInterface, UpdaterConfig

from ota_daemon.download.client import HTTP_FAILURES, http_failure
from ota_daemon.redact import redact_url

#: TUF's caps, a little tighter than its defaults: metadata of a device repository is small
LIMITS = UpdaterConfig(
    max_root_rotations=32,
    root_max_length=256 * 1024,
    timestamp_max_length=16 * 1024,
    snapshot_max_length=1024 * 1024,
    targets_max_length=4 * 1024 * 1024,
)


def cap_for(url: str, limits: UpdaterConfig = LIMITS) -> int:
    """The most bytes a metadata file at ``url`` may have (by its role in the name)."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    if name.endswith("timestamp.json"):
        return limits.timestamp_max_length
    if name.endswith("snapshot.json"):
        return limits.snapshot_max_length
    if name.endswith("root.json"):
        return limits.root_max_length
    return limits.targets_max_length


class DaemonFetcher(FetcherInterface):
    """Fetches for a TUF updater running in a worker thread, through ``loop``'s client."""

    def __init__(
        self,
        http: httpx.AsyncClient | None,
        loop: asyncio.AbstractEventLoop | None,
        *,
        deadline: float = 60.0,
        limits: UpdaterConfig = LIMITS,
        resolver: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.http = http
        #: maps a URL of another scheme (metadata published as a hub's assets) to an issued
        #: http(s) URL, or None when there is no such file (answered as a 404)
        self.resolver = resolver
        self.loop = loop
        self.deadline = deadline
        self.limits = limits
        #: bytes already fetched this pass (the conditional timestamp request), by URL
        self.preloaded: dict[str, bytes] = {}
        #: requests sent (tests and the idle-pass benchmark read it)
        self.requests = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        if url in self.preloaded:
            return iter([self.preloaded.pop(url)])
        parts = urlsplit(url)
        if parts.scheme == "file" or self.loop is None:
            if parts.scheme != "file":
                raise DownloadError(f"{redact_url(url)}: only file:// URLs without an event loop")  # pragma: no cover
            status, data, _ = self._read_file(Path(unquote(parts.path)), cap_for(url, self.limits))
            if status != 200:
                raise DownloadHTTPError(f"{unquote(parts.path)}: not found", status)
            return iter([data])
        future = asyncio.run_coroutine_threadsafe(self.get(url), self.loop)
        try:
            status, data, _ = future.result(timeout=self.deadline + 5)
        except TimeoutError:
            future.cancel()
            raise DownloadError(f"{redact_url(url)}: no answer within {self.deadline:g} s") from None
        if status != 200:
            raise DownloadHTTPError(f"{redact_url(url)}: HTTP {status}", status)
        return iter([data])

    async def get(self, url: str, *, etag: str | None = None) -> tuple[int, bytes, str | None]:
        """(status, body cut at the cap, ETag) of one request; raises DownloadError kinds."""
        cap = cap_for(url, self.limits)
        parts = urlsplit(url)
        if parts.scheme == "file":
            return self._read_file(Path(unquote(parts.path)), cap)
        if parts.scheme not in ("http", "https"):
            issued = await self.resolver(url) if self.resolver is not None else None
            if issued is None:
                return 404, b"", None
            url = issued
        if self.http is None:
            raise DownloadError("signed metadata over HTTP needs an HTTP client")
        self.requests += 1
        headers = {"If-None-Match": etag} if etag else {}
        try:
            async with asyncio.timeout(self.deadline):
                async with self.http.stream("GET", url, headers=headers) as resp:
                    if resp.status_code != 200:
                        return resp.status_code, b"", None
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > cap:
                        raise DownloadLengthMismatchError(f"{redact_url(url)}: {declared} bytes, more than the {cap} allowed")
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > cap:
                            raise DownloadLengthMismatchError(f"{redact_url(url)}: more than the {cap} bytes allowed")
                    return 200, bytes(body), resp.headers.get("etag")
        except TimeoutError:
            raise DownloadError(f"{redact_url(url)}: not complete within {self.deadline:g} s") from None
        except HTTP_FAILURES as exc:
            raise DownloadError(f"{redact_url(url)}: {http_failure(exc)}") from None

    @staticmethod
    def _read_file(path: Path, cap: int) -> tuple[int, bytes, str | None]:
        try:
            with open(path, "rb") as fh:
                data = fh.read(cap + 1)
        except FileNotFoundError:
            return 404, b"", None
        except OSError as exc:
            raise DownloadError(f"{path}: {exc.strerror}") from None
        if len(data) > cap:
            raise DownloadLengthMismatchError(f"{path}: more than the {cap} bytes allowed")
        return 200, data, None
