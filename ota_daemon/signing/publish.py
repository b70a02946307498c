"""The signing side of ``ota-daemon repo``: a TUF repository in a folder (see :mod:`.layout`).

Every change writes, in this order, each file atomically: the assets, then a new
``<N>.targets.json``, a new ``<M>.snapshot.json``, and last ``timestamp.json`` — the only file
rewritten in place. A device polling meanwhile sees the old state or the new one, whole, and
the immutable files of the old state stay for devices in the middle of a pass.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from ota_daemon.errors import UsageError
from ota_daemon.signing import keys as keystore
from ota_daemon.signing.layout import (
    OTA,
    SignedDataError,
    SignedTag,
    file_path,
    parse_file,
    parse_tag,
    release_key,
    tag_entry,
    tag_path,
)
from ota_daemon.signing.rollout import Schedule
from ota_daemon.state import atomic_write

#: how long each role's metadata stays valid after it is signed (seconds)
LIFETIMES: dict[str, float] = {"root": 365 * 86400.0, "targets": 90 * 86400.0, "snapshot": 30 * 86400.0, "timestamp": 86400.0}

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _dump(md: Metadata[Any]) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


@dataclass
class State:
    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]


class SignedRepository:
    """One repository folder (``<root>/<repository>``) and the keys that sign it."""

    def __init__(self, folder: Path, keys_dir: Path, *, now: Callable[[], float] = time.time, lifetimes: dict[str, float] | None = None) -> None:
        self.folder = folder
        self.metadata = folder / "metadata"
        self.assets = folder / "assets"
        self.keys_dir = keys_dir
        self.now = now
        self.lifetimes = {**LIFETIMES, **(lifetimes or {})}

    # ------------------------------------------------------------------ reading
    def _read(self, name: str, kind: type[Signed]) -> Metadata[Any]:
        path = self.metadata / name
        try:
            md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise UsageError(f"{path}: missing; is {self.folder} a signed repository ('ota-daemon repo init')?") from None
        except Exception as exc:  # the metadata API raises several kinds for a bad file
            raise UsageError(f"{path}: not readable metadata ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(md.signed, kind):
            raise UsageError(f"{path}: expected {kind.type} metadata, found {md.signed.type}")
        return md

    def load(self) -> State:
        root = self._read("root.json", Root)
        timestamp = self._read("timestamp.json", Timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise UsageError(f"{self.metadata}: snapshot lists no targets.json")
        targets = self._read(f"{targets_meta.version}.targets.json", Targets)
        return State(root, targets, snapshot, timestamp)

    # ------------------------------------------------------------------ signing
    def _expires(self, role: str) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC).replace(microsecond=0) + timedelta(seconds=self.lifetimes[role])

    def _sign(self, md: Metadata[Any], root: Root, role: str, signers: dict[str, CryptoSigner], *, extra: Iterable[CryptoSigner] = ()) -> None:
        md.signatures.clear()
        wanted = root.roles[role]
        used = 0
        for keyid in wanted.keyids:
            signer = signers.get(keyid)
            if signer is not None:
                md.sign(signer, append=True)
                used += 1
        for signer in extra:
            if signer.public_key.keyid not in md.signatures:
                md.sign(signer, append=True)
        if used < wanted.threshold:
            raise UsageError(
                f"{role}: needs {wanted.threshold} signature(s), {self.keys_dir} holds {used} of its {len(wanted.keyids)} key(s)"
            )

    def _write(self, name: str, md: Metadata[Any]) -> None:
        self.metadata.mkdir(parents=True, exist_ok=True)
        atomic_write(self.metadata / name, _dump(md), mode=0o644)

    def commit(self, state: State, *, targets_changed: bool, signers: dict[str, CryptoSigner] | None = None, first: bool = False) -> None:
        """Sign and write what changed: targets (if changed), snapshot, then timestamp."""
        signers = signers if signers is not None else keystore.load(self.keys_dir)
        root = state.root.signed
        step = 0 if first else 1
        if targets_changed:
            state.targets.signed.version += step
            state.targets.signed.expires = self._expires("targets")
            self._sign(state.targets, root, "targets", signers)
            self._write(f"{state.targets.signed.version}.targets.json", state.targets)
            raw = _dump(state.targets)
            state.snapshot.signed.meta["targets.json"] = MetaFile(
                version=state.targets.signed.version, length=len(raw), hashes={"sha256": hashlib.sha256(raw).hexdigest()}
            )
            state.snapshot.signed.version += step
            state.snapshot.signed.expires = self._expires("snapshot")
            self._sign(state.snapshot, root, "snapshot", signers)
            self._write(f"{state.snapshot.signed.version}.snapshot.json", state.snapshot)
        raw_snapshot = _dump(state.snapshot)
        state.timestamp.signed.snapshot_meta = MetaFile(
            version=state.snapshot.signed.version, length=len(raw_snapshot), hashes={"sha256": hashlib.sha256(raw_snapshot).hexdigest()}
        )
        state.timestamp.signed.version += step
        state.timestamp.signed.expires = self._expires("timestamp")
        self._sign(state.timestamp, root, "timestamp", signers)
        self._write("timestamp.json", state.timestamp)

    # ------------------------------------------------------------------ init and rotation
    def init(self, *, thresholds: dict[str, int] | None = None) -> dict[str, list[str]]:
        """New keys (threshold many per role), and version 1 of every role. Returns key ids."""
        if (self.metadata / "root.json").exists():
            raise UsageError(f"{self.metadata / 'root.json'}: the repository is already signed; use 'repo rotate' to change keys")
        thresholds = {role: 1 for role in keystore.ROLES} | (thresholds or {})
        root = Root(expires=self._expires("root"), consistent_snapshot=True)
        signers: dict[str, CryptoSigner] = {}
        ids: dict[str, list[str]] = {}
        for role in keystore.ROLES:
            count = thresholds[role]
            if count < 1:
                raise UsageError(f"threshold of {role}: expected at least 1")
            for _ in range(count):
                signer = keystore.generate(self.keys_dir, role)
                root.add_key(signer.public_key, role)
                signers[signer.public_key.keyid] = signer
                ids.setdefault(role, []).append(signer.public_key.keyid)
            root.roles[role].threshold = count
        root_md = Metadata(root)
        self._sign(root_md, root, "root", signers)
        self._write("1.root.json", root_md)
        self._write("root.json", root_md)
        state = State(
            root_md,
            Metadata(Targets(expires=self._expires("targets"))),
            Metadata(Snapshot(expires=self._expires("snapshot"))),
            Metadata(Timestamp(expires=self._expires("timestamp"))),
        )
        self.commit(state, targets_changed=True, signers=signers, first=True)
        return ids

    def rotate(self, role: str, *, count: int = 1, threshold: int | None = None) -> list[str]:
        """Replace every key of ``role`` with ``count`` new ones; a new root version signed by
        the old root keys (threshold) and the new ones, then everything re-signed."""
        if role not in keystore.ROLES:
            raise UsageError(f"role {role!r}: expected one of {', '.join(keystore.ROLES)}")
        state = self.load()
        old_signers = keystore.load(self.keys_dir)
        root = state.root.signed
        old_root_signers = [old_signers[k] for k in root.roles["root"].keyids if k in old_signers]
        if len(old_root_signers) < root.roles["root"].threshold:
            raise UsageError(f"root: rotating needs {root.roles['root'].threshold} of the current root keys in {self.keys_dir}")
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        new_ids = []
        for _ in range(count):
            signer = keystore.generate(self.keys_dir, role)
            root.add_key(signer.public_key, role)
            new_ids.append(signer.public_key.keyid)
        root.roles[role].threshold = threshold or count
        root.version += 1
        root.expires = self._expires("root")
        signers = keystore.load(self.keys_dir)
        self._sign(state.root, root, "root", signers, extra=old_root_signers)
        self._write(f"{root.version}.root.json", state.root)
        self._write("root.json", state.root)
        self.commit(state, targets_changed=True, signers=signers)
        return new_ids

    # ------------------------------------------------------------------ releases
    def _store_asset(self, file: Path) -> tuple[str, int]:
        if not file.is_file():
            raise UsageError(f"{file}: no such file")
        digest = _sha256_file(file)
        self.assets.mkdir(parents=True, exist_ok=True)
        target = self.assets / f"sha256_{digest}"
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(file, partial)
            partial.replace(target)
        return digest, file.stat().st_size

    def next_release(self, state: State) -> int:
        highest = 0
        for path, entry in state.targets.signed.targets.items():
            ota = entry.custom.get(OTA) if isinstance(entry.custom, dict) else None
            if "/tags/" not in path and isinstance(ota, dict) and isinstance(ota.get("release"), int):
                highest = max(highest, int(ota["release"]))
        return highest + 1

    def publish(
        self,
        package: str,
        tag: str,
        *,
        version: str,
        files: list[tuple[str, Path]],
        system: str | None = None,
        pins: dict[str, dict[str, str]] | None = None,
        extra_tags: list[str] | None = None,
        rollout: Schedule | None = None,
    ) -> int:
        """Assets, then the signed file entries and the tag(s); returns the release counter."""
        if not files:
            raise UsageError("repo publish: name at least one file")
        state = self.load()
        targets = state.targets.signed.targets
        for path in targets:
            if path.startswith(f"{package}/{version}/"):
                raise UsageError(f"version {version!r} of {package!r} is already published; versions are immutable")
        release = self.next_release(state)
        pins = pins or {}
        entries: list[tuple[str, Path]] = list(files)
        info_tmp: Path | None = None
        if system:
            info = json.dumps({"name": system, "release": {"id": f"{system}@{version}", "version": version}}, indent=2).encode()
            info_tmp = self.folder / f".build-info.{release}"
            self.folder.mkdir(parents=True, exist_ok=True)
            info_tmp.write_bytes(info)
            entries.append((f"{system}.build-info.json", info_tmp))
        try:
            names = []
            for name, file in entries:
                digest, size = self._store_asset(file)
                ota: dict[str, Any] = {"version": version, "release": release, "url": f"assets/sha256_{digest}"}
                if system:
                    ota["system"] = system
                if name in pins:
                    ota["pin"] = pins[name]
                path = file_path(package, version, name)
                targets[path] = TargetFile(size, {"sha256": digest}, path, {"custom": {OTA: ota}})
                parse_file(targets[path])  # the device's own check, before anything is signed
                names.append(name)
        finally:
            if info_tmp is not None:
                info_tmp.unlink(missing_ok=True)
        for name in [tag, *(extra_tags or [])]:
            self._point(state, package, name, version, files=names, release=release, rollback=False, rollout=rollout)
        self.commit(state, targets_changed=True)
        return release

    def _point(self, state: State, package: str, tag: str, version: str, *, files: list[str], release: int, rollback: bool, rollout: Schedule | None) -> None:
        body: dict[str, Any] = {"version": version, "release": release, "files": sorted(files)}
        if rollback:
            body["rollback"] = True
        if rollout is not None:
            body["rollout"] = rollout.to_json()
        entry = tag_entry(package, tag, body)
        parse_tag(entry)
        state.targets.signed.targets[entry.path] = entry

    def version_files(self, state: State, package: str, version: str) -> tuple[list[str], int]:
        names, release = [], 0
        for path, entry in state.targets.signed.targets.items():
            if path.startswith(f"{package}/{version}/"):
                parsed = parse_file(entry)
                names.append(parsed.filename)
                release = parsed.release
        if not names:
            raise UsageError(f"no signed version {version!r} of {package!r} in {self.folder}")
        return names, release

    def tag(self, state: State, package: str, tag: str) -> SignedTag:
        entry = state.targets.signed.targets.get(tag_path(package, tag))
        if entry is None:
            raise UsageError(f"no tag {package}/{tag} in {self.folder}")
        return parse_tag(entry)

    def promote(self, package: str, tag: str, version: str, *, rollback: bool = False, rollout: Schedule | None = None) -> int:
        """Move a tag (a signed act: re-signs targets). Pointing it at an older release than it
        points at now needs ``rollback`` — then devices take it as an intended rollback."""
        state = self.load()
        names, release = self.version_files(state, package, version)
        current = state.targets.signed.targets.get(tag_path(package, tag))
        if current is not None and not rollback and parse_tag(current).release > release:
            raise UsageError(
                f"{package}/{tag} points at release {parse_tag(current).release}; {version} is release {release}: "
                "moving a tag back needs --rollback (devices then take it as an intended rollback)"
            )
        self._point(state, package, tag, version, files=names, release=release, rollback=rollback, rollout=rollout)
        self.commit(state, targets_changed=True)
        return release

    def set_rollout(self, package: str, tag: str, schedule: Schedule | None) -> None:
        state = self.load()
        current = self.tag(state, package, tag)
        self._point(state, package, tag, current.version, files=list(current.files), release=current.release, rollback=current.rollback, rollout=schedule)
        self.commit(state, targets_changed=True)

    def advance(self, package: str, tag: str) -> float:
        """Open the next stage now (shifts the schedule's start); returns its percent."""
        state = self.load()
        current = self.tag(state, package, tag)
        if current.rollout is None:
            raise UsageError(f"{package}/{tag} has no rollout schedule")
        schedule = current.rollout
        now = self.now()
        upcoming = [s for s in schedule.stages if schedule.start + s.after > now]
        if not upcoming:
            raise UsageError(f"{package}/{tag}: the rollout is at its last stage ({schedule.percent_at(now):g} %)")
        nxt = upcoming[0]
        moved = Schedule(start=now - nxt.after, stages=schedule.stages, canaries=schedule.canaries, stagger=schedule.stagger)
        self._point(state, package, tag, current.version, files=list(current.files), release=current.release, rollback=current.rollback, rollout=moved)
        self.commit(state, targets_changed=True)
        return nxt.percent

    def halt(self, package: str, tag: str, *, halted: bool = True) -> str:
        """Set (or clear) the halt flag of the release behind the tag, in the timestamp."""
        state = self.load()
        current = self.tag(state, package, tag)
        key = release_key(package, current.version)
        fields = state.timestamp.signed.unrecognized_fields
        ota = fields.get(OTA) if isinstance(fields.get(OTA), dict) else {}
        keys = {k for k in (ota or {}).get("halted", []) if isinstance(k, str)}
        keys = keys | {key} if halted else keys - {key}
        fields[OTA] = {**(ota or {}), "halted": sorted(keys)}
        self.commit(state, targets_changed=False)
        return key

    def refresh(self) -> int:
        """Re-sign the timestamp with a fresh expiry (for a CI timer); returns its version."""
        state = self.load()
        self.commit(state, targets_changed=False)
        return state.timestamp.signed.version


def parse_stages(items: list[str]) -> list[tuple[float, float]]:
    """``AFTER:PERCENT`` items (AFTER a duration such as 0, 6h, 2d) as (seconds, percent)."""
    from ota_daemon.durations import parse_duration

    stages = []
    for item in items:
        after, sep, percent = item.partition(":")
        try:
            if not sep:
                raise ValueError("missing ':'")
            after = after.strip() or "0"
            seconds = float(after) if after.replace(".", "", 1).isdigit() else parse_duration(after)
            stages.append((seconds, float(percent.rstrip("% "))))
        except ValueError as exc:
            raise UsageError(f"--stage {item!r}: expected AFTER:PERCENT such as 0:10 or 2d:50 ({exc})") from None
    return stages


def schedule_from_args(stages: list[str], *, start: float, canaries: list[str], stagger: float) -> Schedule:
    from ota_daemon.signing.rollout import ScheduleError, Stage

    try:
        for _, percent in parse_stages(stages):
            if percent != int(percent):
                raise ScheduleError(f"percent {percent:g}: whole points only (signed metadata has no fractions)")
        return Schedule(start=start, stages=tuple(Stage(a, p) for a, p in parse_stages(stages)), canaries=frozenset(canaries), stagger=stagger)
    except ScheduleError as exc:
        raise UsageError(f"rollout schedule: {exc}") from None


__all__ = ["LIFETIMES", "Role", "SignedDataError", "SignedRepository", "State"]
