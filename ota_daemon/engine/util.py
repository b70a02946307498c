"""Small helpers shared by the engine's modules: summaries for status documents and hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ota_daemon.config import Config
from ota_daemon.installers.base import Installer
from ota_daemon.model import PinnedVersion
from ota_daemon.state import JournalData

# =========================================================================== small helpers


def _target_summary(target: PinnedVersion) -> dict[str, Any]:
    return {
        "path": target.path,
        "versionId": target.version_id,
        "version": target.version,
        "versionSource": target.version_source,
        "image": {"filename": target.image.filename, "size": target.image.size, "digest": target.image.digest, "assetId": target.image.asset_id},
    }


def _config_view(config: Config, installer: Installer) -> dict[str, Any]:
    """The status document's ``config``: the effective path, plus what the installer publishes
    of its own settings (Rugix: the local-only ``useBundleHash``), as the script published its
    merged config."""
    return {"path": config.hub.path, **installer.hub_config()}


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
