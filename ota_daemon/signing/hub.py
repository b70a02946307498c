"""The static hub with ``hub.verify = "tuf"``: the version document is built from verified,
signed metadata only — never from an unsigned file, and never falling back to one.

``resolve`` runs TUF's workflow (:mod:`.verify`), then:

- refuses a release whose signed counter is below the highest this device committed, unless
  the signed tag marks it as an intended rollback;
- evaluates the signed rollout schedule and the halt flag, handing a reason to wait to the
  engine as the version's :class:`~ota_daemon.model.ReleaseGate` ``hold``;
- returns a document whose assets carry the signed length and sha256 (and the installer's
  pin), so the downloader checks every image byte against signed data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urljoin

import httpx

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.effects import effect
from ota_daemon.errors import ConfigError
from ota_daemon.hubs.base import Hub
from ota_daemon.hubs.static import StaticHub
from ota_daemon.model import Asset, ReleaseGate, VersionDocument
from ota_daemon.signing.layout import SignedFile
from ota_daemon.signing.rollout import evaluate
from ota_daemon.signing.verify import (
    DeviceVerifier,
    SignatureRefused,
    VerifiedRelease,
)
from ota_daemon.state import atomic_write

MACHINE_ID = Path("/etc/machine-id")


def device_id_from(config: Any) -> str:
    """``hub.device_id``, else the machine id; also checks ``hub.trusted_root`` is there."""
    device_id = config.hub.device_id
    if not device_id:
        try:
            device_id = MACHINE_ID.read_text().strip()
        except OSError:
            device_id = ""
    if not device_id:
        raise ConfigError(f"hub.device_id: required with hub.verify = 'tuf' when {MACHINE_ID} is not readable (the rollout bucket is computed from it)")
    if not config.hub.trusted_root.is_file():
        raise ConfigError(f"hub.trusted_root: {config.hub.trusted_root} is not a file (the root metadata installed with the daemon)")
    return str(device_id)


class ReleaseFloor:
    """The highest release counter this device committed, per repository (state directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._value: int | None = None

    @property
    def value(self) -> int:
        if self._value is None:
            try:
                data = json.loads(self.path.read_bytes())
                raw = data.get("release") if isinstance(data, dict) else None
                self._value = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else 0
            except (OSError, ValueError):
                self._value = 0
        return self._value

    def raise_to(self, release: int, version: str) -> bool:
        """Keep ``release`` if it is higher; True when that wrote the file."""
        if release <= self.value:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with effect("tuf.floor"):
            atomic_write(self.path, json.dumps({"release": release, "version": version}).encode())
        self._value = release
        return True


class SignedStaticHub:
    kind: ClassVar[str] = "static"

    def __init__(
        self,
        *,
        inner: Hub,
        state_dir: Path,
        trusted_root: Path,
        device_id: str,
        http: httpx.AsyncClient | None,
        clock: Clock,
        deadline: float = 60.0,
    ) -> None:
        self.inner = inner
        self.state_dir = state_dir
        self.trusted_root = trusted_root
        self.device_id = device_id
        self.http = http
        self.clock = clock
        self.deadline = deadline
        self._verifiers: dict[str, DeviceVerifier] = {}
        self._hub_assets: dict[str, Asset] = {}
        #: version string -> (repository, release) of recently verified releases (persisted:
        #: the commit that raises the floor happens after a reboot, in another process)
        self._seen: dict[str, tuple[str, int]] | None = None

    @classmethod
    def from_config(cls, *, config: Any, http: httpx.AsyncClient | None = None, clock: Clock | None = None, **_: Any) -> SignedStaticHub:
        return cls._around(StaticHub.from_config(config=config, http=http, clock=clock), config=config, http=http, clock=clock)

    @classmethod
    def _around(cls, inner: Any, *, config: Any, http: httpx.AsyncClient | None, clock: Clock | None) -> Self:
        """The signed hub over ``inner``, wired from the configuration (one place for every hub kind)."""
        return cls(
            inner=inner,
            state_dir=config.state.dir,
            trusted_root=config.hub.trusted_root,
            device_id=device_id_from(config),
            http=http,
            clock=clock or SystemClock(),
            deadline=float(config.hub.timeout) * 2,
        )

    @property
    def requests(self) -> int:
        return sum(v.requests for v in self._verifiers.values())

    def _base(self, repository: str) -> str:
        """Where the repository's files are: ``metadata/`` and the signed asset URLs below it."""
        base_url = getattr(self.inner, "base_url", None)
        if not isinstance(base_url, str):
            raise ConfigError("a signed hub needs a base URL")
        return urljoin(base_url, f"{repository}/")

    def _verifier(self, repository: str) -> DeviceVerifier:
        verifier = self._verifiers.get(repository)
        if verifier is None:
            verifier = DeviceVerifier(
                base_url=self._base(repository),
                metadata_dir=self.state_dir / "signed" / repository,
                trusted_root=self.trusted_root,
                http=self.http,
                clock=self.clock,
                deadline=self.deadline,
            )
            self._verifiers[repository] = verifier
        return verifier

    def floor(self, repository: str) -> ReleaseFloor:
        return ReleaseFloor(self.state_dir / "signed" / repository / "committed-release.json")

    # ------------------------------------------------------------------ Hub
    async def resolve(self, path: str) -> VersionDocument:
        repository, package, tag = path.split("/")
        verified = await self._verify(repository, package, tag)
        signed = verified.tag
        floor = self.floor(repository).value
        if signed.release < floor and not signed.rollback:
            raise SignatureRefused(
                f"refused {signed.version} (release {signed.release}): this device committed release {floor}; "
                "the signed metadata does not mark going back as an intended rollback"
            )
        self._remember(signed.version, repository, signed.release)
        return self._document(repository, verified)

    async def _verify(self, repository: str, package: str, tag: str) -> VerifiedRelease:
        return await self._verifier(repository).verify(package, tag)

    def _asset(self, name: str, entry: SignedFile, metadata: dict[str, Any]) -> Asset:
        """The document's asset for a signed file: the signed length and sha256, always."""
        return Asset(filename=name, size=entry.length, digest=f"sha256_{entry.sha256}", url=entry.url, status="Available", metadata=metadata)

    @property
    def _seen_file(self) -> Path:
        return self.state_dir / "signed" / "verified-releases.json"

    def _load_seen(self) -> dict[str, tuple[str, int]]:
        if self._seen is None:
            self._seen = {}
            try:
                raw = json.loads(self._seen_file.read_bytes())
            except (OSError, ValueError):
                raw = {}
            for version, item in (raw.items() if isinstance(raw, dict) else []):
                if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int):
                    self._seen[version] = (item[0], item[1])
        return self._seen

    def _remember(self, version: str, repository: str, release: int) -> None:
        """Keep version -> release; writes only when that is news (an idle pass writes nothing)."""
        seen = self._load_seen()
        if seen.get(version) == (repository, release):
            return
        seen[version] = (repository, release)
        while len(seen) > 16:
            seen.pop(next(iter(seen)))
        self._seen_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with effect("tuf.seen"):
            atomic_write(self._seen_file, json.dumps({v: list(r) for v, r in seen.items()}).encode())

    def _document(self, repository: str, verified: VerifiedRelease, *, local: bool = False) -> VersionDocument:
        signed = verified.tag
        verdict = evaluate(
            signed.rollout, device_id=self.device_id, release_key=signed.release_key, now=self.clock.now(), halted=verified.is_halted
        )
        assets = []
        for name, entry in verified.files.items():
            metadata: dict[str, Any] = {"signed": {"release": entry.release, "system": entry.system}}
            if "bundleHash" in entry.pin:
                metadata["rugix"] = {"bundleHash": entry.pin["bundleHash"]}
            assets.append(SignedStaticHub._asset(self, name, entry, metadata) if local else self._asset(name, entry, metadata))
        document = VersionDocument.model_validate(
            {
                "versionId": f"signed-{signed.package[:64]}-r{signed.release}",
                "assets": [a.model_dump(by_alias=True, exclude_none=True) for a in assets],
                "tags": [{"tag": signed.tag, "locked": False}, {"tag": signed.version, "locked": True}],
                "metadata": {"imageVersion": signed.version, "release": signed.release, "rollout": verdict.reason},
            }
        )
        systems = {entry.system for entry in verified.files.values() if entry.system}
        if len(systems) > 1:
            raise SignatureRefused(f"release {signed.version}: its signed files name several systems ({', '.join(sorted(systems))})")
        gate = ReleaseGate(
            release=signed.release, rollback=signed.rollback, hold=None if verdict.install else verdict.reason, system=next(iter(systems), None)
        )
        extra: dict[str, Any] = {"_gate": gate}
        if isinstance(getattr(self.inner, "base_url", None), str):
            extra["_base"] = self._base(repository)
        document.__pydantic_extra__ = {**(document.__pydantic_extra__ or {}), **extra}
        return document

    async def local_release(self, source: str, *, path: str) -> VersionDocument:
        """``ota-daemon install FOLDER``: a folder carrying the signed repository (``metadata/``
        and ``assets/``, as published — a USB stick), verified against this device's trusted
        state exactly as a download would be. A bare image is refused."""
        from ota_daemon.download import local_path

        folder = local_path(source) or Path(source)
        if not (folder / "metadata" / "timestamp.json").is_file():
            raise SignatureRefused(
                f"{source}: this device installs only signed releases (hub.verify = 'tuf'); "
                "install from a folder that carries the signed repository (metadata/ and assets/)"
            )
        if path.count("/") != 2:
            raise SignatureRefused("hub.path: required ('repository/package/tag') to find the release in the signed metadata")
        repository, package, tag = path.split("/")
        verifier = DeviceVerifier(
            base_url=folder.resolve().as_uri() + "/",
            metadata_dir=self.state_dir / "signed" / repository,
            trusted_root=self.trusted_root,
            http=None,
            clock=self.clock,
        )
        verified = await verifier.verify(package, tag)
        floor = self.floor(repository).value
        if verified.tag.release < floor and not verified.tag.rollback:
            raise SignatureRefused(f"refused {verified.tag.version} (release {verified.tag.release}): this device committed release {floor}")
        self._remember(verified.tag.version, repository, verified.tag.release)
        document = self._document(repository, verified, local=True)
        document.__pydantic_extra__ = {**(document.__pydantic_extra__ or {}), "_folder": folder.resolve().as_uri() + "/"}
        return document

    async def committed(self, version: str) -> None:
        """The engine committed (or runs, up to date) ``version``: raise the rollback floor."""
        seen = self._load_seen().get(version)
        if seen is not None:
            repository, release = seen
            self.floor(repository).raise_to(release, version)

    async def issue_url(self, document: VersionDocument, asset: Asset) -> str:
        folder = (document.__pydantic_extra__ or {}).get("_folder")
        if isinstance(folder, str) and asset.url:  # a verified local folder: its signed asset path
            return urljoin(folder, asset.url)
        return await self.inner.issue_url(document, asset)

    async def read_config(self) -> Any | None:
        return await self.inner.read_config()

    async def read_status(self) -> Any | None:
        return None

    async def publish_status(self, status: dict[str, Any]) -> None:
        await self.inner.publish_status(status)

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        await self.inner.publish_events(events)

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()
