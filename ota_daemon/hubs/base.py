"""The Hub protocol: desired versions in, status and events out."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from ota_daemon.model import Asset, VersionDocument


@runtime_checkable
class Hub(Protocol):
    kind: ClassVar[str]

    async def resolve(self, path: str) -> VersionDocument:
        """Resolve ``repository/package/tag`` once, to the full version document.

        Raises :class:`~ota_daemon.errors.HubError` when the tag does not exist or the
        document is malformed, :class:`~ota_daemon.errors.TransientError` when the hub
        does not answer.
        """
        ...

    async def issue_url(self, document: VersionDocument, asset: Asset) -> str:
        """A URL to fetch ``asset`` of the pinned ``document`` (never via the tag again).

        The URL may be a credential (pre-signed): never log it. Called again when a URL
        has expired.
        """
        ...

    async def read_config(self) -> Any | None:
        """The hub's config property value, or ``None`` when there is none."""
        ...

    async def read_status(self) -> Any | None:
        """The status document the hub holds now (``None``: none). Read once per state
        directory, on the first start, so that a status written before (by the replaced
        script) is carried over, not overwritten."""
        ...

    async def publish_status(self, status: dict[str, Any]) -> None:
        """Write the status document (the caller writes only when it changed)."""
        ...

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        """Deliver events, oldest first. Raise TransientError when they cannot be delivered."""
        ...

    async def ping(self) -> None:
        """Raise unless the hub answers."""
        ...

    async def aclose(self) -> None: ...
