"""The device side: TUF's update workflow, then the verified release behind a tag.

Nothing of an image is fetched before this returns: the image's length and sha256 come from
here, and the existing downloader checks the bytes against them.

The trusted root is pinned locally (``hub.trusted_root``, installed with the daemon) and
copied into ``<state>/signed/<repository>/`` on first use; later roots arrive through the
repository (each signed by the previous root's threshold), so keys rotate without reflashing.

An idle pass is one conditional request: the timestamp is asked for with the ETag of the last
verified one; a 304 while every trusted role is still valid at the device's clock reuses the
last verification and writes nothing. Any other answer runs the full workflow (which also
picks up a new root). A 304 cannot freeze a device: the reuse ends at the earliest expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater

from ota_daemon.clock import Clock, iso
from ota_daemon.effects import effect
from ota_daemon.errors import HubError, HubUnavailable
from ota_daemon.signing.fetcher import LIMITS, DaemonFetcher
from ota_daemon.signing.layout import (
    SignedDataError,
    SignedFile,
    SignedTag,
    file_path,
    halted,
    parse_file,
    parse_tag,
    tag_path,
)


class SignatureRefused(HubError):
    """Signed metadata did not verify, or says no: nothing is downloaded or installed."""


class FreshnessUnknown(HubError):
    """The metadata looks expired, but the clock is not synchronised: no judgement possible."""


@dataclass(frozen=True)
class VerifiedRelease:
    tag: SignedTag
    files: dict[str, SignedFile]
    #: release keys halted by the timestamp
    halted: frozenset[str]
    #: the earliest expiry of the trusted roles (epoch seconds)
    expires: float
    timestamp_version: int

    @property
    def is_halted(self) -> bool:
        return self.tag.release_key in self.halted


def _refusal(exc: Exception) -> str:
    text = str(exc).strip()[:300]
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return f"signed metadata expired ({text}): a frozen or stale mirror"
    if isinstance(exc, tuf_errors.EqualVersionNumberError | tuf_errors.BadVersionNumberError):
        return f"signed metadata is older than what this device already trusts ({text}): a replay"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return f"signed metadata lacks the signatures its role needs ({text})"
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return f"signed metadata does not match what the snapshot or timestamp signed ({text}): mixed or altered"
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return f"signed metadata is larger than allowed ({text})"
    return f"signed metadata refused ({type(exc).__name__}: {text})"


class DeviceVerifier:
    def __init__(
        self,
        *,
        base_url: str,
        metadata_dir: Path,
        trusted_root: Path,
        http: httpx.AsyncClient | None,
        clock: Clock,
        deadline: float = 60.0,
        resolver: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.resolver = resolver
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.metadata_url = self.base_url + "metadata/"
        self.metadata_dir = metadata_dir
        self.trusted_root = trusted_root
        self.http = http
        self.clock = clock
        self.deadline = deadline
        self.requests = 0
        self._etag: str | None = None
        self._last: dict[tuple[str, str], VerifiedRelease] = {}

    # ------------------------------------------------------------------ the pass
    async def verify(self, package: str, tag: str) -> VerifiedRelease:
        loop = asyncio.get_running_loop()
        fetcher = DaemonFetcher(self.http, loop, deadline=self.deadline, resolver=self.resolver)
        timestamp_url = self.metadata_url + "timestamp.json"
        status, body, etag = await self._get(fetcher, timestamp_url, self._etag)
        if status == 304:
            cached = self._last.get((package, tag))
            if cached is not None and self.clock.now() < cached.expires:
                return cached
            status, body, etag = await self._get(fetcher, timestamp_url, None)
        if status in (404, 403):
            raise SignatureRefused(f"signed metadata: no timestamp at {self.metadata_url} (HTTP {status}); this device installs only signed releases")
        if status in (408, 429) or status >= 500:
            raise HubUnavailable(f"signed metadata: HTTP {status} for the timestamp")
        if status != 200:
            raise SignatureRefused(f"signed metadata: HTTP {status} for the timestamp")
        fetcher.preloaded[timestamp_url] = body
        return await self._full(fetcher, package, tag, etag)

    async def _get(self, fetcher: DaemonFetcher, url: str, etag: str | None) -> tuple[int, bytes, str | None]:
        before = fetcher.requests
        try:
            return await fetcher.get(url, etag=etag)
        except tuf_errors.DownloadLengthMismatchError as exc:
            raise SignatureRefused(_refusal(exc)) from None
        except tuf_errors.DownloadError as exc:
            raise HubUnavailable(f"signed metadata: {exc}") from None
        finally:
            self.requests += fetcher.requests - before

    async def _full(self, fetcher: DaemonFetcher, package: str, tag: str, etag: str | None) -> VerifiedRelease:
        now = self.clock.now()
        before = fetcher.requests
        try:
            result = await asyncio.to_thread(self._run, fetcher, package, tag, now)
        except tuf_errors.ExpiredMetadataError as exc:
            synchronised = getattr(self.clock, "synchronised", None)
            if callable(synchronised) and synchronised() is False:
                raise FreshnessUnknown(
                    f"cannot judge the freshness of signed metadata: the clock is not synchronised (it reads {iso(now)}); "
                    "waiting for time synchronisation"
                ) from None
            raise SignatureRefused(_refusal(exc)) from None
        except tuf_errors.DownloadLengthMismatchError as exc:
            raise SignatureRefused(_refusal(exc)) from None
        except tuf_errors.DownloadHTTPError as exc:
            if exc.status_code in (408, 429) or exc.status_code >= 500:
                raise HubUnavailable(f"signed metadata: {exc}") from None
            raise SignatureRefused(f"signed metadata: {exc}") from None
        except tuf_errors.DownloadError as exc:
            raise HubUnavailable(f"signed metadata: {exc}") from None
        except tuf_errors.RepositoryError as exc:
            raise SignatureRefused(_refusal(exc)) from None
        except SignedDataError as exc:
            raise SignatureRefused(f"signed metadata: {exc}") from None
        except OSError as exc:
            raise HubError(f"signed metadata: cannot write {self.metadata_dir}: {exc.strerror}") from None
        finally:
            self.requests += fetcher.requests - before
        if etag != self._etag:
            self._etag, self._last = etag, {}
        self._last[(package, tag)] = result
        return result

    # ------------------------------------------------------------------ in the worker thread
    def _updater(self, fetcher: DaemonFetcher, now: float) -> Updater:
        self.metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.metadata_dir.glob("tmp*"):  # the updater's temporary files, left by a power cut
            with effect("tuf.metadata"):
                leftover.unlink(missing_ok=True)
        bootstrap: bytes | None = None
        if not (self.metadata_dir / "root.json").exists():
            try:
                bootstrap = self.trusted_root.read_bytes()
            except OSError as exc:
                raise SignatureRefused(f"hub.trusted_root: cannot read {self.trusted_root}: {exc.strerror}") from None
        updater = Updater(str(self.metadata_dir), self.metadata_url, fetcher=fetcher, config=LIMITS, bootstrap=bootstrap)
        # expiry is judged at the daemon's clock (injected in tests), not the process's own
        updater._trusted_set.reference_time = datetime.fromtimestamp(now, UTC)
        return updater

    def _run(self, fetcher: DaemonFetcher, package: str, tag: str, now: float) -> VerifiedRelease:
        updater = self._updater(fetcher, now)
        with effect("tuf.metadata"):  # python-tuf writes the metadata files it trusts (atomically)
            updater.refresh()
        entry = updater.get_targetinfo(tag_path(package, tag))
        if entry is None:
            raise SignatureRefused(f"tag {package}/{tag} is not in the signed targets: the repository never signed it")
        signed_tag = parse_tag(entry)
        files: dict[str, SignedFile] = {}
        for name in signed_tag.files:
            info = updater.get_targetinfo(file_path(package, signed_tag.version, name))
            if info is None:
                raise SignatureRefused(f"tag {package}/{tag} names file {name!r} of {signed_tag.version}, which is not signed")
            parsed = parse_file(info)
            if parsed.version != signed_tag.version or parsed.release != signed_tag.release:
                raise SignatureRefused(
                    f"tag {package}/{tag} (version {signed_tag.version}, release {signed_tag.release}) and its file {name!r} "
                    f"(version {parsed.version}, release {parsed.release}) disagree: mixed releases"
                )
            files[name] = parsed
        ts = self._local("timestamp")
        expires = min(self._expiry(self._local(role)) for role in ("root", "timestamp", "snapshot", "targets"))
        signed = ts.get("signed", {})
        return VerifiedRelease(
            tag=signed_tag,
            files=files,
            halted=halted(signed if isinstance(signed, dict) else {}),
            expires=expires,
            timestamp_version=int(signed.get("version", 0)) if isinstance(signed, dict) else 0,
        )

    def _local(self, role: str) -> dict[str, Any]:
        """A role's metadata as the updater left it: only verified metadata is persisted."""
        data: dict[str, Any] = json.loads((self.metadata_dir / f"{role}.json").read_bytes())
        return data

    @staticmethod
    def _expiry(data: dict[str, Any]) -> float:
        return datetime.strptime(data["signed"]["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def check_repository(folder: Path, trusted_root: Path, *, now: float, work_dir: Path) -> tuple[list[str], int]:
    """``ota-daemon repo verify``: check a repository folder as a device would.

    TUF's workflow from ``trusted_root`` (a fresh device), then every tag and every signed file:
    entries that parse, tags that agree with their files, assets present with the signed length
    and sha256. Returns (problems, number of files checked); no problems: the repository is good.
    """
    import hashlib

    from ota_daemon.signing.fetcher import DaemonFetcher as _Fetcher

    folder = folder.resolve()
    try:
        bootstrap = trusted_root.read_bytes()
    except OSError as exc:
        return [f"trusted root {trusted_root}: {exc.strerror}"], 0
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = Updater(str(work_dir), (folder / "metadata").as_uri() + "/", fetcher=_Fetcher(None, None), config=LIMITS, bootstrap=bootstrap)
        updater._trusted_set.reference_time = datetime.fromtimestamp(now, UTC)
        updater.refresh()
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
        return [_refusal(exc)], 0
    except ValueError as exc:
        return [f"trusted root {trusted_root}: not root metadata ({str(exc)[:200]})"], 0
    targets = json.loads((work_dir / "targets.json").read_bytes())["signed"]["targets"]
    problems: list[str] = []
    checked = 0
    for path in sorted(targets):
        info = updater.get_targetinfo(path)
        if info is None:  # pragma: no cover - listed by the same verified targets
            continue
        try:
            if "/tags/" in path:
                tag = parse_tag(info)
                package = path.split("/tags/", 1)[0]
                for name in tag.files:
                    entry = targets.get(file_path(package, tag.version, name))
                    if entry is None:
                        problems.append(f"tag {path}: names file {name!r} of {tag.version}, which is not signed")
                        continue
                    release = entry.get("custom", {}).get("ota", {}).get("release")
                    if release != tag.release:
                        problems.append(f"tag {path}: release {tag.release}, its file {name!r} says {release}: mixed releases")
                continue
            signed = parse_file(info)
        except SignedDataError as exc:
            problems.append(str(exc))
            continue
        asset = folder / signed.url
        try:
            h = hashlib.sha256()
            size = 0
            with open(asset, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
                    size += len(block)
        except OSError as exc:
            problems.append(f"{path}: asset {signed.url}: {exc.strerror}")
            continue
        if size != signed.length or h.hexdigest() != signed.sha256:
            problems.append(f"{path}: asset {signed.url} is {size} bytes with sha256 {h.hexdigest()[:16]}…, the signed entry says {signed.length} bytes, {signed.sha256[:16]}…")
        checked += 1
    return problems, checked
