"""Shared by the signed-release tests: run a pass, read status and events, fingerprint a device."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.engine import PassResult
from tests.signing.conftest import Signed


async def run_pass(signed: Signed, **hub: Any) -> PassResult:
    async with open_engine(signed.config(**hub), clock=signed.clock) as engine:
        return await engine.reconcile()


def events(signed: Signed) -> list[dict[str, Any]]:
    path = signed.world.state_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status(signed: Signed) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((signed.world.state_dir / "status.json").read_text())
    return data


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file of the simulated device (slots, boot state) by content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def asset_requests(signed: Signed) -> list[str]:
    """Requests for image bytes (the small signed build-info is fetched to pin a version)."""
    root = signed.world.repo_dir
    return [r for r in signed.server.requests if "/assets/" in r and (not (root / r.lstrip("/")).exists() or (root / r.lstrip("/")).stat().st_size > 4096)]
