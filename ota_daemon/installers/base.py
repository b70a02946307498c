"""The Installer protocol: what the engine asks of Rugix Ctrl, RAUC, SWUpdate or the simulator.

The engine owns the decisions (when to install, when to reboot, when to commit); an
installer only does what it is told, reports slot facts, and maps its tool's failures to
:class:`~ota_daemon.errors.InstallerError` carrying the tool's own error text.

Phases and who handles them (after Mender's PayloadUpdatePerformer):

======================  ==================================================
install                 :meth:`Installer.install` (inactive slot only)
needs reboot            :class:`InstallOutcome` ``needs_reboot``
reboot                  :meth:`Installer.reboot` (``spare=True``: try the new slot once)
verify after reboot     the engine, from :meth:`Installer.slot_info`
commit                  :meth:`Installer.commit` (only when booted into the target)
rollback                :meth:`Installer.mark_bad` then :meth:`Installer.reboot`
cleanup                 the engine (cache, journal)
======================  ==================================================

Each installer also *declares* its tool's semantics in ``traits``
(:class:`~ota_daemon.traits.InstallerTraits`: when the new slot is armed, whether a trial boot
is visible, whether a failed install already disarms its target, where versions come from).
The engine and ``ota-daemon-guard`` decide from the journal plus these declarations, never
from the installer's name. :meth:`Installer.image_facts` reads the version (and system) of a
local image the way the tool would; :meth:`Installer.bundle_hash` takes the installer's own
check value from an asset's metadata; :meth:`Installer.hub_config` is what the installer
publishes in the status's ``config``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from ota_daemon.errors import InstallerError, OtaError
from ota_daemon.model import InstallSource, ProgressCallback, SlotInfo, SourceKind
from ota_daemon.traits import InstallerTraits


@dataclass(frozen=True)
class InstallOutcome:
    target_slot: str
    needs_reboot: bool = True
    version: str | None = None


@dataclass(frozen=True)
class ImageFacts:
    """What an image file says about itself (``None``: the installer cannot read it)."""

    version: str | None = None
    system: str | None = None


@runtime_checkable
class Installer(Protocol):
    kind: ClassVar[str]
    #: file extension of this installer's images, for the asset name pattern
    image_ext: ClassVar[str]
    #: what :meth:`install` accepts
    source_kinds: frozenset[SourceKind]
    #: the tool's semantics, declared (:mod:`ota_daemon.traits`)
    traits: ClassVar[InstallerTraits]

    async def slot_info(self) -> SlotInfo:
        """Booted slot, primary slot, per-slot version where known, boot id."""
        ...

    async def install(
        self,
        source: InstallSource,
        *,
        progress: ProgressCallback | None = None,
        version: str | None = None,
        bundle_hash: str | None = None,
    ) -> InstallOutcome:
        """Write the image into the inactive slot. Never reboots."""
        ...

    async def reboot(self, *, spare: bool) -> None:
        """Reboot. ``spare``: boot the newly installed slot once (try-once)."""
        ...

    async def commit(self) -> None:
        """Make the booted slot the primary one. Idempotent."""
        ...

    async def mark_bad(self, slot: str) -> None:
        """``slot`` must not boot again: the other slot stays (or becomes) the boot target."""
        ...

    async def image_facts(self, path: Path) -> ImageFacts:
        """Version and system name of the image file ``path``, as far as the tool can tell."""
        ...

    def bundle_hash(self, metadata: Mapping[str, Any]) -> str | None:
        """The installer's check value for an image from its asset's metadata (or None).

        Raises :class:`~ota_daemon.errors.HubError` when the configuration demands one and
        the metadata has none."""
        ...

    def hub_config(self) -> dict[str, Any]:
        """Installer settings for the ``config`` field of the status document."""
        ...

    async def aclose(self) -> None: ...


@contextlib.contextmanager
def map_installer_errors(backend: str, phase: str) -> Iterator[None]:
    """Turn low-level failures of a backend into :class:`InstallerError`."""
    try:
        yield
    except OtaError:
        raise
    except FileNotFoundError as exc:
        raise InstallerError(
            f"{backend}: {phase}: {exc.filename or 'a file'} not found", backend=backend, phase=phase
        ) from exc
    except PermissionError as exc:
        raise InstallerError(f"{backend}: {phase}: permission denied ({exc.filename})", backend=backend, phase=phase) from exc
    except TimeoutError as exc:
        raise InstallerError(f"{backend}: {phase}: timed out", backend=backend, phase=phase) from exc
    except OSError as exc:
        raise InstallerError(f"{backend}: {phase}: {exc.strerror or exc}", backend=backend, phase=phase) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallerError(f"{backend}: {phase}: unexpected answer from the tool: {exc}", backend=backend, phase=phase) from exc


def tail(text: str | bytes, lines: int = 20, limit: int = 2000) -> str:
    """The last lines of a tool's output, for events and messages."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = "\n".join(text.strip().splitlines()[-lines:])
    return out[-limit:]
