"""What each installer declares about its tool's semantics; the engine and the guard obey it.

Standard library only: ``ota-daemon-guard`` reads :data:`TRAITS` without importing the
installers (which pull in pydantic and the tools' clients). Each installer class carries its
entry as ``traits`` (checked by ``tests/test_installer_traits.py``).

The declarations:

``armed_at``
    When the new slot becomes the next boot. ``install``: the tool arms it while installing
    (RAUC makes it primary, SWUpdate's bootenv switches ``rootpart`` with ``ustate=1``), so any
    reboot after a completed install boots it, journaled or not. ``reboot``: nothing is armed
    until :meth:`Installer.reboot` with ``spare=True`` (Rugix ``system reboot --spare``, the
    simulated try-once bootloader), so a reboot that did not go through it boots the old slot.
``trial_visible``
    Whether the tool tells a trial boot from a committed one. RAUC 1.8 cannot: after the
    reboot into the new slot ``booted == primary`` and only the journal knows a commit is due.
    Rugix and the simulator show ``booted != default``; SWUpdate ``ustate`` 1/2 with the booted
    slot being ``rootpart``.
``disarms_failed_target``
    The tool makes its target unbootable before it writes and leaves it so when it fails
    (RAUC marks the slot bad first; SWUpdate sets ``ustate=3``/switches nothing). The engine
    then never calls ``mark_bad`` after a failed or refused install: doing so could only
    degrade a slot the attempt never wrote (the committed fallback).
``slot_version`` / ``image_version``
    Where the version of a slot and of a local image file come from (documentation; the
    installer's :meth:`slot_info` and :meth:`image_facts` implement it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ArmedAt(enum.StrEnum):
    INSTALL = "install"
    REBOOT = "reboot"


@dataclass(frozen=True)
class InstallerTraits:
    armed_at: ArmedAt
    trial_visible: bool
    disarms_failed_target: bool
    slot_version: str
    image_version: str

    @property
    def arms_at_install(self) -> bool:
        return self.armed_at is ArmedAt.INSTALL


TRAITS: dict[str, InstallerTraits] = {
    "rauc": InstallerTraits(
        armed_at=ArmedAt.INSTALL,
        trial_visible=False,
        disarms_failed_target=True,
        slot_version="bundle.version RAUC recorded for the slot",
        image_version="the bundle manifest's version (RAUC's D-Bus Info)",
    ),
    "swupdate": InstallerTraits(
        armed_at=ArmedAt.INSTALL,
        trial_visible=True,
        disarms_failed_target=True,
        slot_version="installer.swupdate.version_var in the bootloader environment",
        image_version="the sw-description's version (first cpio entry of the .swu)",
    ),
    "rugix": InstallerTraits(
        armed_at=ArmedAt.REBOOT,
        trial_visible=True,
        disarms_failed_target=False,
        slot_version="none (Rugix records no version per boot group): the booted system's build info",
        image_version="none (a Rugix bundle carries no version the tool reports): --image-version or none",
    ),
    "simulated": InstallerTraits(
        armed_at=ArmedAt.REBOOT,
        trial_visible=True,
        disarms_failed_target=False,
        slot_version="the image header recorded in boot.json",
        image_version="the image's JSON header line",
    ),
}
