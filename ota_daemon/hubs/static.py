"""A static repository: any web server, S3 bucket, CDN, or a local folder.

Layout below ``hub.url`` (``http://``, ``https://`` or ``file://``)::

    <repository>/<package>/tags/<tag>.json           the version document the tag points to
    <repository>/<package>/versions/<versionId>.json the same document, immutable
    <repository>/assets/sha256_<hex>                 asset bytes, content-addressed, immutable

A version document has the shape of Nexigon's ``repositories versions info`` output; each
asset also has ``url``, relative to ``<repository>/`` or absolute. Moving a tag rewrites one
small file atomically (``ota-daemon repo tag``); assets are uploaded before the tag moves
(``ota-daemon repo publish``). Idle polls are conditional GETs: the last document and its
ETag are kept in the state directory, so a 304 costs no parsing and no download.

A hub is outside input: a tag document is read as a stream and abandoned once it passes
:data:`MAX_DOCUMENT` (an endless body costs at most that much memory), ``hub.timeout``
bounds the whole answer (not each read), and an asset URL may not leave the repository —
checked after percent-decoding, and for ``file://`` repositories on the resolved path.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import zlib
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from pydantic import ValidationError

from ota_daemon.clock import Clock
from ota_daemon.download.client import HTTP_FAILURES, http_failure
from ota_daemon.effects import effect
from ota_daemon.errors import ConfigError, HubError, HubUnavailable, TransientError
from ota_daemon.model import Asset, VersionDocument
from ota_daemon.redact import redact_url
from ota_daemon.state import atomic_write

MAX_DOCUMENT = 1 << 20


def _read_local(path: Path, limit: int, where: str) -> bytes:
    """At most ``limit`` bytes of a regular file (never blocks on a FIFO); HubError beyond."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HubError(f"{where}: not a regular file")
        raw = fh.read(limit + 1) or b""
    if len(raw) > limit:
        raise HubError(f"{where}: version document is more than {limit} bytes; not read further")
    return raw


def _parse_document(raw: bytes, where: str) -> VersionDocument:
    if len(raw) > MAX_DOCUMENT:
        raise HubError(f"{where}: version document is {len(raw)} bytes, more than {MAX_DOCUMENT}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise HubError(f"{where}: version document is not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise HubError(f"{where}: version document is nested too deeply") from None
    if not isinstance(data, dict):
        raise HubError(f"{where}: version document must be a JSON object")
    try:
        return VersionDocument.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise HubError(f"{where}: version document field '{loc[:100]}': {err['msg']}") from None


#: an ETag we send back: visible ASCII only (RFC 9110 entity-tag), bounded
_ETAG_RE = re.compile(r'^(W/)?"[\x21\x23-\x7e]{0,200}"$|^[\x21-\x7e]{1,200}$')


def _usable_etag(value: Any) -> str | None:
    """``value`` if it can go into an If-None-Match header as it is, else ``None``."""
    return value if isinstance(value, str) and _ETAG_RE.match(value) else None


def _read_cache(cache: Path) -> tuple[str, VersionDocument] | None:
    """The cached (ETag, document) of a tag, or ``None`` when there is none we can trust.

    A cache entry that does not parse is ignored (and the next 200 replaces it): sending its
    ETag would make the server answer 304 for a document we cannot use, forever.
    """
    try:
        raw = cache.read_bytes()
        if len(raw) > MAX_DOCUMENT * 2:
            return None
        cached = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(cached, dict):
        return None
    etag = _usable_etag(cached.get("etag"))
    document = cached.get("document")
    if etag is None or not isinstance(document, dict):
        return None
    try:
        return etag, VersionDocument.model_validate(document)
    except (ValidationError, RecursionError):
        return None


class StaticHub:
    kind: ClassVar[str] = "static"

    def __init__(
        self,
        *,
        base_url: str,
        http: httpx.AsyncClient | None,
        cache_dir: Path | None = None,
        allow_insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https", "file"):
            raise ConfigError(f"hub.url: expected an http://, https:// or file:// URL, got scheme {scheme or 'none'!r}")
        if scheme == "http" and not allow_insecure:
            raise ConfigError("hub.url: plain http:// is refused; use https:// or set hub.allow_insecure = true locally")
        self.base_url = base_url
        self.http = http
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.requests = 0

    @classmethod
    def from_config(cls, *, config: Any, http: httpx.AsyncClient | None = None, clock: Clock | None = None, **_: Any) -> StaticHub:
        if not config.hub.url:
            raise ConfigError("hub.url: required for hub.kind = 'static' (an http(s):// or file:// base URL)")
        return cls(
            base_url=config.hub.url,
            http=http,
            cache_dir=config.state.dir,
            allow_insecure=config.hub.allow_insecure,
            timeout=config.hub.timeout,
        )

    # ------------------------------------------------------------------ helpers
    def _url(self, relative: str) -> str:
        return urljoin(self.base_url, relative)

    def _local(self, url: str) -> Path | None:
        parts = urlsplit(url)
        return Path(unquote(parts.path)) if parts.scheme == "file" else None

    def _cache_path(self, path: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / "hub-cache" / (path.replace("/", "__") + ".json")

    async def _get(self, url: str, *, etag: str | None = None, limit: int | None = MAX_DOCUMENT, where: str = "") -> tuple[httpx.Response, bytes]:
        """GET ``url``: the response and, for a 200, its body of at most ``limit`` bytes, read
        as it arrives (``None``: the body is not read). ``hub.timeout`` bounds the whole of it."""
        if self.http is None:
            raise ConfigError("static hub over HTTP needs an HTTP client")
        headers = {"Accept-Encoding": "gzip, identity"}
        if etag:
            headers["If-None-Match"] = etag
        self.requests += 1
        try:
            async with asyncio.timeout(self.timeout):
                async with self.http.stream("GET", url, headers=headers) as resp:
                    body = b""
                    if resp.status_code == 200 and limit is not None:
                        body = await _bounded_body(resp, limit, where or redact_url(url))
                    return resp, body
        except TimeoutError:
            raise HubUnavailable(f"static hub {redact_url(url)}: no complete answer within hub.timeout ({self.timeout:g} s)") from None
        except HTTP_FAILURES as exc:
            raise HubUnavailable(f"static hub {redact_url(url)}: {http_failure(exc)}") from None

    # ------------------------------------------------------------------ Hub
    async def resolve(self, path: str) -> VersionDocument:
        repository, package, tag = path.split("/")
        url = self._url(f"{repository}/{package}/tags/{tag}.json")
        where = f"tag {path!r} ({redact_url(url)})"
        local = self._local(url)
        if local is not None:
            self.requests += 1
            try:
                raw = _read_local(local, MAX_DOCUMENT, where)
            except FileNotFoundError:
                raise HubError(f"tag {path!r} not found: no {local}") from None
            except OSError as exc:
                raise HubUnavailable(f"{local}: {exc.strerror}") from None
            return self._with_base(_parse_document(raw, where), repository)
        cache = self._cache_path(path)
        cached = _read_cache(cache) if cache is not None else None
        resp, body = await self._get(url, etag=cached[0] if cached else None, where=where)
        if resp.status_code == 304 and cached is not None:
            return self._with_base(cached[1], repository)
        if resp.status_code == 404:
            raise HubError(f"{where}: not found (HTTP 404)")
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            retry_after = _retry_after(resp)
            raise TransientError(f"{where}: HTTP {resp.status_code}", retry_after=retry_after)
        if resp.status_code != 200:
            raise HubError(f"{where}: HTTP {resp.status_code}")
        document = _parse_document(body, where)
        etag = _usable_etag(resp.headers.get("etag"))
        if cache is not None and etag is not None:
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with effect("hub.etag-cache"):
                atomic_write(cache, json.dumps({"etag": etag, "document": document.model_dump(mode="json", by_alias=True, exclude_none=True)}).encode())
        return self._with_base(document, repository)

    def _with_base(self, document: VersionDocument, repository: str) -> VersionDocument:
        # remember where relative asset URLs are anchored (not part of the wire document)
        document.__pydantic_extra__ = {**(document.__pydantic_extra__ or {}), "_base": self._url(f"{repository}/")}
        return document

    async def issue_url(self, document: VersionDocument, asset: Asset) -> str:
        base = str((document.__pydantic_extra__ or {}).get("_base") or self.base_url)
        relative = asset.url or f"assets/{asset.digest}"
        parts = urlsplit(relative)
        leaves = f"asset {asset.filename!r}: url {relative[:200]!r} leaves the repository"
        decoded = unquote(parts.path)
        if "\0" in decoded:
            raise HubError(leaves)
        if not parts.scheme and (parts.netloc or relative.startswith("/") or decoded.startswith("/") or {"..", "."} & set(decoded.split("/"))):
            raise HubError(leaves)
        if parts.scheme and parts.scheme not in ("http", "https", "file"):
            raise HubError(f"asset {asset.filename!r}: url scheme {parts.scheme!r} not supported")
        url = urljoin(base, relative)
        local = self._local(url)
        if local is not None:
            root = self._local(base)
            if root is None:
                raise HubError(f"asset {asset.filename!r}: a remote repository may not point at local files")
            # the path as the downloader will open it (percent-decoded), with links resolved
            if not Path(os.path.realpath(local)).is_relative_to(os.path.realpath(root)):
                raise HubError(leaves)
        return url

    async def read_config(self) -> Any | None:
        return None

    async def read_status(self) -> Any | None:
        return None

    async def publish_status(self, status: dict[str, Any]) -> None:
        return None

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        return None

    async def ping(self) -> None:
        local = self._local(self.base_url)
        if local is not None:
            if not local.is_dir():
                raise HubUnavailable(f"static hub folder {local} is not there")
            return
        resp, _ = await self._get(self.base_url, limit=None)
        if resp.status_code >= 500:
            raise HubUnavailable(f"static hub {redact_url(self.base_url)}: HTTP {resp.status_code}")

    async def aclose(self) -> None:
        return None


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


async def _bounded_body(resp: httpx.Response, limit: int, where: str) -> bytes:
    """The body of ``resp``, read as it arrives and abandoned once it passes ``limit`` bytes
    (decompressed: a small gzip body cannot expand past it either)."""
    too_big = f"{where}: version document is more than {limit} bytes; not read further"
    declared = resp.headers.get("content-length", "")
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") and declared.isdigit() and int(declared) > limit:
        raise HubError(too_big)
    if resp.is_stream_consumed:  # a client that read the answer already (a test transport): it is in memory
        if len(resp.content) > limit:
            raise HubError(too_big)
        return resp.content
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise HubError(f"{where}: Content-Encoding {encoding!r} is not supported (expected identity or gzip)")
    inflate = None if encoding in ("", "identity") else zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding != "deflate" else zlib.MAX_WBITS)
    body = bytearray()
    async for piece in resp.aiter_raw():
        if inflate is not None:
            try:
                piece = inflate.decompress(piece, limit + 1 - len(body))
            except zlib.error as exc:
                raise HubError(f"{where}: the compressed body does not decompress: {exc}") from None
        body += piece
        if len(body) > limit:
            raise HubError(too_big)
    return bytes(body)
