"""What the signed metadata of a repository says, in one place for the publisher and the device.

A repository (``<root>/<repository>/``) is one TUF repository::

    metadata/root.json, metadata/<N>.root.json   root, every version kept (rotation chain)
    metadata/<N>.targets.json                     targets (consistent snapshots: immutable)
    metadata/<N>.snapshot.json                    snapshot
    metadata/timestamp.json                       timestamp: the only file rewritten in place
    assets/sha256_<hex>                           the files, content-addressed

Two kinds of target entries live in ``targets``, each with ``custom.ota``:

- a **file** ``<package>/<version>/<filename>``: length and hashes of the bytes, plus the system
  it is built for, the version, the release counter, the asset URL (relative to the repository)
  and, where the installer has its own pin, that pin;
- a **tag** ``<package>/tags/<tag>``: the version the tag points at, its release counter, the
  file names of that version, whether going back to it is an intended rollback, and the
  rollout schedule. A tag is a signed entry: moving it re-signs targets. Its length and hashes
  are those of the canonical JSON of its ``custom.ota`` object, so the entry checks itself.

The halt flags of rollouts live in the timestamp (``ota.halted``: release keys
``<package>/<version>``), which is re-signed often, so a halt reaches devices within one poll.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from tuf.api.metadata import TargetFile

from ota_daemon.signing.rollout import Schedule, ScheduleError

OTA = "ota"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ASSET_URL = re.compile(r"^assets/sha256_[0-9a-f]{64}$")
PIN_KINDS = ("bundleHash",)


class SignedDataError(ValueError):
    """Signed metadata that verified but does not say what the daemon needs (a publisher bug
    or a repository for something else)."""


def file_path(package: str, version: str, filename: str) -> str:
    return f"{package}/{version}/{filename}"


def tag_path(package: str, tag: str) -> str:
    return f"{package}/tags/{tag}"


def release_key(package: str, version: str) -> str:
    """What rollout buckets and halt flags are keyed by."""
    return f"{package}/{version}"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class SignedFile:
    path: str
    filename: str
    length: int
    sha256: str
    url: str
    system: str | None
    version: str
    release: int
    pin: dict[str, str]


@dataclass(frozen=True)
class SignedTag:
    path: str
    package: str
    tag: str
    version: str
    release: int
    files: tuple[str, ...]
    rollback: bool
    rollout: Schedule | None

    @property
    def release_key(self) -> str:
        return release_key(self.package, self.version)


def _ota(entry: TargetFile) -> dict[str, Any]:
    custom = entry.custom
    ota = custom.get(OTA) if isinstance(custom, dict) else None
    if not isinstance(ota, dict):
        raise SignedDataError(f"target {entry.path!r}: no custom.{OTA} object")
    return ota


def _str(ota: dict[str, Any], key: str, where: str, *, pattern: re.Pattern[str] = _NAME) -> str:
    value = ota.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise SignedDataError(f"{where}: custom.{OTA}.{key} is missing or not a usable name")
    return value


def _release(ota: dict[str, Any], where: str) -> int:
    value = ota.get("release")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SignedDataError(f"{where}: custom.{OTA}.release must be a positive integer")
    return value


def parse_file(entry: TargetFile) -> SignedFile:
    where = f"target {entry.path!r}"
    ota = _ota(entry)
    sha = entry.hashes.get("sha256")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise SignedDataError(f"{where}: no sha256 hash")
    system = ota.get("system")
    if system is not None and (not isinstance(system, str) or not _NAME.match(system)):
        raise SignedDataError(f"{where}: custom.{OTA}.system is not a usable name")
    pin_raw = ota.get("pin") or {}
    if not isinstance(pin_raw, dict) or not all(k in PIN_KINDS and isinstance(v, str) and _HEX64.match(v) for k, v in pin_raw.items()):
        raise SignedDataError(f"{where}: custom.{OTA}.pin must map {', '.join(PIN_KINDS)} to a sha256 hex digest")
    version = _str(ota, "version", where)
    filename = entry.path.rsplit("/", 1)[-1]
    if entry.path != file_path(entry.path.split("/", 1)[0], version, filename):
        raise SignedDataError(f"{where}: path does not match its version {version!r}")
    return SignedFile(
        path=entry.path,
        filename=filename,
        length=entry.length,
        sha256=sha,
        url=_str(ota, "url", where, pattern=_ASSET_URL),
        system=system,
        version=version,
        release=_release(ota, where),
        pin=dict(pin_raw),
    )


def parse_tag(entry: TargetFile) -> SignedTag:
    where = f"tag entry {entry.path!r}"
    ota = _ota(entry)
    body = canonical(ota)
    if entry.length != len(body) or entry.hashes.get("sha256") != hashlib.sha256(body).hexdigest():
        raise SignedDataError(f"{where}: length/hashes do not match its custom.{OTA} object")
    package, _, tag = entry.path.partition("/tags/")
    files = ota.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and _NAME.match(f) for f in files):
        raise SignedDataError(f"{where}: custom.{OTA}.files must list the version's file names")
    rollout_raw = ota.get("rollout")
    try:
        rollout = Schedule.from_json(rollout_raw) if rollout_raw is not None else None
    except ScheduleError as exc:
        raise SignedDataError(f"{where}: custom.{OTA}.rollout: {exc}") from None
    return SignedTag(
        path=entry.path,
        package=package,
        tag=tag,
        version=_str(ota, "version", where),
        release=_release(ota, where),
        files=tuple(files),
        rollback=ota.get("rollback") is True,
        rollout=rollout,
    )


def tag_entry(package: str, tag: str, body: dict[str, Any]) -> TargetFile:
    """A signed tag entry whose length and hashes are those of its own ``custom.ota``."""
    raw = canonical(body)
    return TargetFile(len(raw), {"sha256": hashlib.sha256(raw).hexdigest()}, tag_path(package, tag), {"custom": {OTA: body}})


def halted(timestamp_fields: dict[str, Any]) -> frozenset[str]:
    """The release keys halted by the (verified) timestamp's ``ota.halted``."""
    ota = timestamp_fields.get(OTA)
    if not isinstance(ota, dict):
        return frozenset()
    raw = ota.get("halted")
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(item for item in raw if isinstance(item, str))
