"""Small helpers shared by the engine's modules: summaries for status documents and hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ota_daemon.config import Config
from ota_daemon.model import Asset, PinnedVersion
from ota_daemon.state import JournalData

# =========================================================================== small helpers


def _bundle_hash(asset: Asset) -> str | None:
    rugix = asset.metadata.get("rugix")
    if isinstance(rugix, dict) and isinstance(rugix.get("bundleHash"), str):
        return str(rugix["bundleHash"])
    return None


def _target_summary(target: PinnedVersion) -> dict[str, Any]:
    return {
        "path": target.path,
        "versionId": target.version_id,
        "version": target.version,
        "versionSource": target.version_source,
        "image": {"filename": target.image.filename, "size": target.image.size, "digest": target.image.digest, "assetId": target.image.asset_id},
    }


def _config_view(config: Config, local: Config) -> dict[str, Any]:
    """The status document's ``config``: the effective path (and, with Rugix, the local-only
    ``useBundleHash``), as the script published its merged config."""
    view: dict[str, Any] = {"path": config.hub.path}
    if local.installer.kind == "rugix":
        view["rugix"] = {"useBundleHash": local.installer.rugix.use_bundle_hash}
    return view


def _quarantine_list(data: JournalData) -> list[dict[str, Any]]:
    return [{"version": q.version, "reason": q.reason, "attempts": q.attempts, "at": _iso(q.at)} for q in data.quarantine.values()]


def _iso(ts: float) -> str:
    from ota_daemon.clock import iso

    return iso(ts)


def _agent() -> str:
    from ota_daemon import __version__

    return f"ota-daemon/{__version__}"


async def _sha256_file(path: Path) -> str:
    import asyncio

    def run() -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    return await asyncio.to_thread(run)


def _peek_sim_header(path: Path) -> tuple[str | None, str | None]:
    from ota_daemon.installers.simulated import parse_header

    try:
        with open(path, "rb") as fh:
            header = parse_header(fh.read(4096))
    except OSError:
        return None, None
    if not header:
        return None, None
    version = header.get("version")
    name = header.get("name")
    return (str(version) if version else None), (str(name) if name else None)
