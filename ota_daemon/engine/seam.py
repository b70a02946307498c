"""The installer as the engine sees it: every call with an effect passes the side-effect seam.

:class:`InstallerSeam` wraps the configured installer. Reads (:meth:`slot_info`) pass
straight through; ``install``, ``reboot``, ``commit`` and ``mark_bad`` are the effects
``installer.<method>`` of :mod:`ota_daemon.effects`, each with a cut point before and after.
Anything else (attributes a test reaches for) is the wrapped installer's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ota_daemon.effects import effect
from ota_daemon.installers.base import ImageFacts, Installer, InstallOutcome
from ota_daemon.model import InstallSource, ProgressCallback, SlotInfo, SourceKind


class InstallerSeam:
    """An :class:`Installer` whose effects are cut points."""

    def __init__(self, inner: Installer) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.image_ext = inner.image_ext
        self.traits = inner.traits

    @property
    def source_kinds(self) -> frozenset[SourceKind]:
        return self.inner.source_kinds

    async def slot_info(self) -> SlotInfo:
        return await self.inner.slot_info()

    async def install(
        self,
        source: InstallSource,
        *,
        progress: ProgressCallback | None = None,
        version: str | None = None,
        bundle_hash: str | None = None,
    ) -> InstallOutcome:
        with effect("installer.install"):
            return await self.inner.install(source, progress=progress, version=version, bundle_hash=bundle_hash)

    async def reboot(self, *, spare: bool) -> None:
        with effect("installer.reboot"):
            await self.inner.reboot(spare=spare)

    async def commit(self) -> None:
        with effect("installer.commit"):
            await self.inner.commit()

    async def mark_bad(self, slot: str) -> None:
        with effect("installer.mark_bad"):
            await self.inner.mark_bad(slot)

    async def image_facts(self, path: Path) -> ImageFacts:
        return await self.inner.image_facts(path)

    def bundle_hash(self, metadata: Mapping[str, Any]) -> str | None:
        return self.inner.bundle_hash(metadata)

    def hub_config(self) -> dict[str, Any]:
        return self.inner.hub_config()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def seamed(installer: Installer) -> Installer:
    """``installer`` behind the seam (once)."""
    # kind and image_ext are the wrapped class's ClassVars, forwarded per instance
    return installer if isinstance(installer, InstallerSeam) else cast("Installer", InstallerSeam(installer))
