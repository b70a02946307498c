"""Signed metadata through the Nexigon hub: the metadata is published as assets of each
version (``tuf.timestamp.json``, ``tuf.<N>.snapshot.json``, ``tuf.<N>.targets.json`` and every
``tuf.<N>.root.json``), fetched through issued URLs, and verified exactly as for the static hub.
A compromised hub account alone cannot install anything: it can move the hub's tag, but the
version it points at must carry metadata signed by the repository's keys, newer than what the
device already trusts, whose signed tag names that version and whose entries match its assets.

The publisher side is :func:`nexigon_assets`: what to upload with a version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import httpx

from ota_daemon.clock import Clock
from ota_daemon.model import Asset
from ota_daemon.signing.hub import SignedStaticHub
from ota_daemon.signing.layout import SignedFile
from ota_daemon.signing.publish import SignedRepository
from ota_daemon.signing.verify import DeviceVerifier, SignatureRefused, VerifiedRelease

PREFIX = "tuf."


def nexigon_assets(folder: Path) -> dict[str, bytes]:
    """The metadata assets to publish with a version: the current timestamp, snapshot and
    targets, and every root (devices walk the chain from the one they pinned)."""
    repo = SignedRepository(folder, folder / "no-keys-needed")
    state = repo.load()
    names = [
        "timestamp.json",
        f"{state.snapshot.signed.version}.snapshot.json",
        f"{state.targets.signed.version}.targets.json",
        *(f"{v}.root.json" for v in range(1, state.root.signed.version + 1)),
    ]
    return {PREFIX + name: (repo.metadata / name).read_bytes() for name in names}


class SignedNexigonHub(SignedStaticHub):
    kind: ClassVar[str] = "nexigon"

    @classmethod
    def from_config(cls, *, config: Any, http: httpx.AsyncClient | None = None, clock: Clock | None = None, **kwargs: Any) -> SignedNexigonHub:
        from ota_daemon.hubs.nexigon import NexigonHub

        return cls._around(NexigonHub.from_config(config=config, http=http, clock=clock, **kwargs), config=config, http=http, clock=clock)

    async def _verify(self, repository: str, package: str, tag: str) -> VerifiedRelease:
        document = await self.inner.resolve(f"{repository}/{package}/{tag}")
        by_name = {asset.filename: asset for asset in document.assets}
        self._hub_assets = by_name

        async def resolver(url: str) -> str | None:
            asset = by_name.get(PREFIX + url.rsplit("/", 1)[-1])
            return None if asset is None else await self.inner.issue_url(document, asset)

        verifier = self._verifiers.get(repository)
        if verifier is None:
            verifier = DeviceVerifier(
                base_url=f"nexigon-asset://{repository}/",
                metadata_dir=self.state_dir / "signed" / repository,
                trusted_root=self.trusted_root,
                http=self.http,
                clock=self.clock,
                deadline=self.deadline,
            )
            self._verifiers[repository] = verifier
        verifier.resolver = resolver
        verified = await verifier.verify(package, tag)
        if verified.tag.version not in {t.tag for t in document.tags}:
            raise SignatureRefused(
                f"the hub's {package}/{tag} is version {document.version_id}, which is not {verified.tag.version}, "
                "the version the signed tag names"
            )
        return verified

    def _asset(self, name: str, entry: SignedFile, metadata: dict[str, Any]) -> Asset:
        unsigned = self._hub_assets.get(name)
        if unsigned is None:
            raise SignatureRefused(f"the hub's version has no asset {name!r}, which the signed metadata names")
        if unsigned.size != entry.length or unsigned.digest.lower() != f"sha256_{entry.sha256}":
            raise SignatureRefused(f"asset {name!r}: the hub's size or digest differs from the signed entry")
        return Asset(
            filename=name, size=entry.length, digest=f"sha256_{entry.sha256}", assetId=unsigned.asset_id, status="Available", metadata=metadata
        )
