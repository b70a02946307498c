"""``ota-daemon repo``: build and maintain a static repository (the layout of
:mod:`ota_daemon.hubs.static`) in a local folder, to serve with any web server or to sync to
object storage (sync ``assets/`` and ``versions/`` before ``tags/``).

Publishing writes assets first, then the immutable version document, and moves the tag last,
each file atomically — a device polling meanwhile sees the old version or the new one, whole.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ota_daemon.errors import UsageError
from ota_daemon.ids import random_b58
from ota_daemon.model import VersionDocument
from ota_daemon.state import atomic_write


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _split_path(path: str) -> tuple[str, str, str]:
    parts = path.split("/")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"path {path!r}: expected 'repository/package/tag'")
    return parts[0], parts[1], parts[2]


@dataclass
class Published:
    version_id: str
    document: dict[str, Any]
    tag_file: Path


def publish(
    root: Path,
    path: str,
    *,
    version: str,
    files: list[tuple[str, Path]],
    system: str | None = None,
    extra_tags: list[str] | None = None,
    build_info: bool = True,
) -> Published:
    """Publish ``files`` (asset name, local file) as a new version and point the tag at it."""
    repository, package, tag = _split_path(path)
    if not files:
        raise UsageError("repo publish: name at least one file")
    repo_dir = root / repository
    (repo_dir / "assets").mkdir(parents=True, exist_ok=True)
    assets: list[dict[str, Any]] = []
    if build_info and system:
        info = json.dumps({"name": system, "release": {"id": f"{system}@{version}", "version": version}}, indent=2).encode()
        tmp = repo_dir / "assets" / f".build-info.{secrets.token_hex(4)}"
        tmp.write_bytes(info)
        files = [*files, (f"{system}.build-info.json", tmp)]
    for name, file in files:
        if not file.is_file():
            raise UsageError(f"repo publish: {file}: no such file")
        digest = _sha256(file)
        target = repo_dir / "assets" / f"sha256_{digest}"
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(file, partial)
            partial.replace(target)
        assets.append({"filename": name, "size": file.stat().st_size, "digest": f"sha256_{digest}", "status": "Available", "url": f"assets/sha256_{digest}", "metadata": {}})
        if file.name.startswith(".build-info."):
            file.unlink()
    version_id = "pkg_v_" + random_b58(22)
    tags = [{"tag": version, "locked": True}, {"tag": tag, "locked": False}] + [{"tag": t, "locked": False} for t in extra_tags or []]
    document = {"versionId": version_id, "assets": assets, "tags": tags, "metadata": {"imageVersion": version}}
    VersionDocument.model_validate(document)
    versions = repo_dir / package / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    atomic_write(versions / f"{version_id}.json", json.dumps(document, indent=2).encode(), mode=0o644)
    tag_file = Path()
    for name in [version, tag, *(extra_tags or [])]:
        tag_file = move_tag(root, f"{repository}/{package}/{name}", version_id)
    return Published(version_id, document, tag_file)


def move_tag(root: Path, path: str, version: str) -> Path:
    """Point ``repository/package/tag`` at a version (by id, or by its version string)."""
    repository, package, tag = _split_path(path)
    versions = root / repository / package / "versions"
    source = versions / f"{version}.json"
    if not source.exists():
        matches = []
        for candidate in sorted(versions.glob("*.json")) if versions.is_dir() else []:
            doc = json.loads(candidate.read_text())
            if doc.get("metadata", {}).get("imageVersion") == version:
                matches.append(candidate)
        if not matches:
            raise UsageError(f"repo tag: no version {version!r} in {versions}")
        source = matches[-1]
    document = json.loads(source.read_text())
    tags_dir = root / repository / package / "tags"
    tags_dir.mkdir(parents=True, exist_ok=True)
    target = tags_dir / f"{tag}.json"
    atomic_write(target, json.dumps(document, indent=2).encode(), mode=0o644)
    return target
