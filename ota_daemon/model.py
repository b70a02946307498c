"""Domain types shared by every layer: the pinned version, its assets, slots, sources, progress."""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ota_daemon.errors import HubError, OtaError

_DIGEST_RE = re.compile(r"^(sha256|sha512_256|sha512-256|sha512)[_:]([0-9a-fA-F]+)$")
_HEX_LEN = {"sha256": 64, "sha512_256": 64, "sha512": 128}
_FILENAME_RE = re.compile(r"^[^/\x00][^\x00]{0,255}$")


def parse_digest(text: str) -> tuple[str, str]:
    """``sha256_<hex>`` (or ``sha256:<hex>``) as (algorithm, lowercase hex).

    Raises ``ValueError`` naming what is expected.
    """
    match = _DIGEST_RE.match(text)
    if match is None:
        raise ValueError(f"digest {text[:80]!r} is not of the form sha256_<64 hex digits>")
    algorithm = match.group(1).replace("-", "_")
    hexdigest = match.group(2).lower()
    if len(hexdigest) != _HEX_LEN[algorithm]:
        raise ValueError(f"digest {text[:80]!r} has {len(hexdigest)} hex digits, expected {_HEX_LEN[algorithm]}")
    return algorithm, hexdigest


class Asset(BaseModel):
    """One file of a version, as the hub describes it (Nexigon's ``assets[]`` entry)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    filename: str = Field(min_length=1, max_length=256)
    size: int = Field(ge=0)
    digest: str
    asset_id: str | None = Field(default=None, alias="assetId")
    url: str | None = None
    status: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("digest")
    @classmethod
    def _check_digest(cls, value: str) -> str:
        parse_digest(value)
        return value

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str) -> str:
        if not _FILENAME_RE.match(value) or ".." in value.split("/") or "\\" in value:
            raise ValueError("filename must be a relative name without '..' components")
        return value

    @property
    def sha256(self) -> str:
        algorithm, hexdigest = parse_digest(self.digest)
        if algorithm != "sha256":
            raise HubError(f"asset {self.filename!r} has a {algorithm} digest; only sha256 is verified")
        return hexdigest


class Tag(BaseModel):
    model_config = ConfigDict(extra="allow")

    tag: str
    locked: bool = False


class VersionDocument(BaseModel):
    """The version document: the shape of Nexigon's ``repositories versions info`` output."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    version_id: str = Field(alias="versionId", min_length=1, max_length=128)
    repository_id: str | None = Field(default=None, alias="repositoryId")
    package_id: str | None = Field(default=None, alias="packageId")
    name: str | None = None
    assets: list[Asset] = Field(default_factory=list)
    tags: list[Tag] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def asset(self, filename: str) -> Asset | None:
        for asset in self.assets:
            if asset.filename == filename:
                return asset
        return None


@dataclass(frozen=True)
class ReleaseGate:
    """What a hub that verifies signed metadata adds to a version (no gate: an unsigned hub).

    The engine compares ``release`` (a signed, monotonic counter), not version strings, for
    downgrades; ``rollback`` marks going back to an older release as intended by the signers;
    ``hold`` is a reason to wait without installing (a staged rollout, a halt).
    """

    release: int
    rollback: bool = False
    hold: str | None = None
    #: the system the signed entries say the release is built for
    system: str | None = None


@dataclass(frozen=True)
class PinnedVersion:
    """A tag resolved once: everything later in the pass uses this, never the tag again."""

    path: str
    document: VersionDocument
    version: str
    image: Asset
    version_source: str  # "build-info" | "imageVersion"
    system_name: str | None = None
    #: set by a hub that verified signed metadata (release counter, intended rollback, hold)
    gate: ReleaseGate | None = None

    @property
    def version_id(self) -> str:
        return self.document.version_id


class SourceKind(enum.StrEnum):
    FILE = "file"
    URL = "url"
    STREAM = "stream"


@dataclass(frozen=True)
class FileSource:
    path: Path
    kind: SourceKind = SourceKind.FILE


@dataclass(frozen=True)
class UrlSource:
    """A URL the installer fetches itself. ``url`` is a credential: never log it."""

    url: str
    size: int | None = None
    sha256: str | None = None
    kind: SourceKind = SourceKind.URL


@dataclass
class StreamSource:
    """Bytes the daemon pipes into the installer while it hashes them."""

    chunks: AsyncIterator[bytes]
    size: int | None = None
    kind: SourceKind = SourceKind.STREAM


InstallSource = FileSource | UrlSource | StreamSource


@dataclass(frozen=True)
class Progress:
    """Normalised progress of one step: percent in 0..100 plus words."""

    phase: str
    percent: float
    message: str = ""
    done_bytes: int | None = None
    total_bytes: int | None = None
    rate: float | None = None  # bytes per second
    eta: float | None = None  # seconds


ProgressCallback = Callable[[Progress], Awaitable[None] | None]


async def report_progress(callback: ProgressCallback | None, item: Progress) -> None:
    """Hand ``item`` to ``callback`` (plain or async; none: nothing)."""
    if callback is None:
        return
    result = callback(item)
    if result is not None:
        await result


@dataclass(frozen=True)
class SlotState:
    name: str
    version: str | None = None
    bootable: bool = True
    good: bool | None = None
    #: try-boots of this slot since it was written, where the tool counts them (None: unknown)
    tries: int | None = None


@dataclass(frozen=True)
class SlotInfo:
    """What the installer knows about the A/B slots right now."""

    booted: str
    primary: str
    slots: dict[str, SlotState] = field(default_factory=dict)
    boot_id: str = ""
    pending: str | None = None  # slot that boots once on the next reboot, when the tool tells
    #: the booted slot runs on trial (try-once boot, not yet marked good); None: booted != primary
    trial: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def committed(self) -> bool:
        """Nothing waits for a commit: the booted slot is not on trial."""
        if self.trial is not None:
            return not self.trial
        return self.booted == self.primary

    def other(self, slot: str | None = None) -> str:
        """The other slot of an A/B pair."""
        slot = slot or self.booted
        names = sorted(self.slots) or ["a", "b"]
        for name in names:
            if name != slot:
                return name
        raise OtaError(f"no slot other than {slot!r} in {names}")

    def version_of(self, slot: str) -> str | None:
        state = self.slots.get(slot)
        return state.version if state else None
