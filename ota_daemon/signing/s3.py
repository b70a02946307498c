"""Publish a signed repository folder to an S3-compatible bucket (boto3), keeping the order
devices rely on: assets, then new roots, targets and snapshots (immutable names, uploaded
once), and ``timestamp.json`` last — the one object whose change makes a new state visible.
An interrupted sync leaves devices on the previous state; running it again completes it.

The bucket layout mirrors the folder (``s3://bucket/prefix/<repository>/metadata/…``), so
``hub.url`` is the bucket's (or its CDN's) URL for ``prefix/``. Credentials come from boto3's
usual chain (environment, config files, instance roles); never from the command line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ota_daemon.errors import UsageError

IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "no-cache"


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix ending in '/' or empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UsageError(f"{url!r}: expected s3://BUCKET[/PREFIX]")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def make_client(endpoint_url: str | None) -> Any:
    try:
        import boto3
    except ImportError:
        raise UsageError("publishing to S3 needs boto3: pip install 'ota-daemon[s3]'") from None
    return boto3.client("s3", endpoint_url=endpoint_url)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class SyncReport:
    uploaded: list[str] = field(default_factory=list)
    skipped: int = 0


def _order(name: str) -> int:
    """Upload rank of a metadata file: roots, targets, snapshots, then root.json, timestamp."""
    if name == "timestamp.json":
        return 5
    if name == "root.json":
        return 4
    for rank, role in enumerate(("root", "targets", "snapshot"), start=1):
        if name.endswith(f".{role}.json"):
            return rank
    return 3


def sync(folder: Path, url: str, *, client: Any, acl: str | None = None) -> SyncReport:
    """Upload what the bucket lacks, in the order above; returns the keys uploaded."""
    bucket, prefix = parse_url(url)
    base = f"{prefix}{folder.name}/"
    if not (folder / "metadata" / "timestamp.json").is_file():
        raise UsageError(f"{folder}: no metadata/timestamp.json; is it a signed repository ('ota-daemon repo init')?")
    remote: dict[str, str] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=base):
        for item in page.get("Contents", []):
            remote[item["Key"]] = str(item.get("ETag", "")).strip('"')
    report = SyncReport()
    extra = {"ACL": acl} if acl else {}

    def upload(path: Path, key: str, *, mutable: bool, content_type: str) -> None:
        if key in remote:
            same = "-" in remote[key] or remote[key] == _md5(path)  # multipart ETags are no MD5
            if same:
                report.skipped += 1
                return
            if not mutable:
                raise UsageError(
                    f"s3://{bucket}/{key} differs from {path}: an immutable file is never overwritten "
                    "(is another repository published under this prefix?)"
                )
        args = {"CacheControl": MUTABLE if mutable else IMMUTABLE, "ContentType": content_type, **extra}
        client.upload_file(str(path), bucket, key, ExtraArgs=args)
        report.uploaded.append(key)

    assets = folder / "assets"
    for path in sorted(assets.glob("sha256_*")) if assets.is_dir() else []:
        if not path.name.endswith(".partial"):
            upload(path, f"{base}assets/{path.name}", mutable=False, content_type="application/octet-stream")
    metadata = sorted((folder / "metadata").glob("*.json"), key=lambda p: (_order(p.name), p.name))
    for path in metadata:
        if path.name.startswith("."):
            continue
        upload(path, f"{base}metadata/{path.name}", mutable=path.name in ("timestamp.json", "root.json"), content_type="application/json")
    return report
