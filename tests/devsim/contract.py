"""Contract scenarios: the same scripts against an installer model and the real tool.

Each script drives an :class:`~ota_daemon.installers.base.Installer` (the real backend over
the real RAUC, SWUpdate or the Rugix double; or the simulator's model) and a power switch,
and returns what is observable through the Installer protocol after every step. The tests in
``tests/rauc``, ``tests/swupdate`` and ``tests/rugix`` (``test_*_model_contract.py``) run each
script on both and compare the transcripts, so the models cannot drift from the tools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from ota_daemon.devsim.models import MODELS, Model, PowerCut, sim_image
from ota_daemon.errors import InstallerError
from ota_daemon.installers.base import Installer
from ota_daemon.model import FileSource


class Subject(Protocol):
    """One side of a contract: an installer, images for it, and the power switch."""

    installer: Installer

    def image(self, version: str, *, refused: bool = False) -> Path: ...

    def bundle_hash(self, path: Path, *, refused: bool = False) -> str | None: ...

    async def power_cycle(self, *, boot_fails: bool = False) -> None: ...


async def observe(installer: Installer) -> dict[str, Any]:
    """Slot facts by position (A/B), as the engine reads them."""
    info = await installer.slot_info()
    names = sorted(info.slots)
    return {
        "booted": names.index(info.booted),
        "primary": names.index(info.primary),
        "pending": names.index(info.pending) if info.pending in names else None,
        "committed": info.committed,
        "slots": [{"version": info.slots[n].version, "bootable": info.slots[n].bootable, "good": info.slots[n].good} for n in names],
    }


async def _install(subject: Subject, version: str, *, refused: bool = False) -> str:
    path = subject.image(version, refused=refused)
    try:
        outcome = await subject.installer.install(FileSource(path), version=version, bundle_hash=subject.bundle_hash(path, refused=refused))
    except InstallerError:
        return "refused"
    names = sorted((await subject.installer.slot_info()).slots)
    return f"installed into {names.index(outcome.target_slot)}"


Script = Callable[[Subject], Awaitable[list[Any]]]


async def install_reboot_commit(s: Subject) -> list[Any]:
    seen: list[Any] = [await observe(s.installer), await _install(s, "1.1.0"), await observe(s.installer)]
    await s.installer.reboot(spare=True)
    await s.power_cycle()
    seen.append(await observe(s.installer))
    await s.installer.commit()
    seen.append(await observe(s.installer))
    await s.power_cycle()
    seen.append(await observe(s.installer))
    return seen


async def install_refused(s: Subject) -> list[Any]:
    seen: list[Any] = [await _install(s, "1.1.0", refused=True), await observe(s.installer)]
    await s.power_cycle()
    seen.append(await observe(s.installer))
    return seen


async def trial_dies_falls_back(s: Subject) -> list[Any]:
    seen: list[Any] = [await _install(s, "1.1.0")]
    await s.installer.reboot(spare=True)
    await s.power_cycle(boot_fails=True)
    seen.append(await observe(s.installer))
    await s.power_cycle()
    seen.append(await observe(s.installer))
    return seen


async def mark_bad_rolls_back(s: Subject) -> list[Any]:
    seen: list[Any] = [await _install(s, "1.1.0")]
    await s.installer.reboot(spare=True)
    await s.power_cycle()
    info = await s.installer.slot_info()
    await s.installer.mark_bad(info.booted)
    seen.append(await observe(s.installer))
    await s.installer.reboot(spare=False)
    await s.power_cycle()
    seen.append(await observe(s.installer))
    return seen


async def guard_marks_trial_bad(s: Subject) -> list[Any]:
    """The rollback guard's own call on a trial: the booted slot marked bad alone (``rauc
    status mark-bad booted``, no partner activated), then the reboot; and one more boot."""
    mark = getattr(s, "mark_bad_booted_alone", None)
    if mark is None:
        return ["no tool-level mark-bad for this subject"]
    seen: list[Any] = [await _install(s, "1.1.0")]
    await s.installer.reboot(spare=True)
    await s.power_cycle()
    await mark()
    seen.append(await observe(s.installer))
    await s.power_cycle()
    seen.append(await observe(s.installer))
    await s.power_cycle()
    seen.append(await observe(s.installer))
    return seen


async def reboot_without_install(s: Subject) -> list[Any]:
    """A plain reboot and a spare reboot of a committed device with an empty other slot."""
    await s.installer.reboot(spare=False)
    await s.power_cycle()
    return [await observe(s.installer)]


async def cut_after_write_before_arm(s: Subject) -> list[Any]:
    """The power goes after the tool wrote the slot, before it armed it (RAUC: between the
    copy and ``set-primary``), then the device boots again."""
    cut = getattr(s, "cut_install", None)
    if cut is None:
        return ["no cut for this subject"]
    await cut("1.1.0")
    await s.power_cycle()
    return [await observe(s.installer)]


SCRIPTS: dict[str, Script] = {
    "install_reboot_commit": install_reboot_commit,
    "install_refused": install_refused,
    "trial_dies_falls_back": trial_dies_falls_back,
    "mark_bad_rolls_back": mark_bad_rolls_back,
    "reboot_without_install": reboot_without_install,
    "guard_marks_trial_bad": guard_marks_trial_bad,
    "cut_after_write_before_arm": cut_after_write_before_arm,
}


class ModelSubject:
    """The simulator's model of ``kind`` as a contract subject."""

    def __init__(self, kind: str, root: Path, *, system: str = "devsim", version: str = "1.0.0") -> None:
        self.root = root
        self.system = system
        self.model: Model = MODELS[kind](system, version, root=root / "device")
        self.installer: Installer = self.model  # type: ignore[assignment]

    def image(self, version: str, *, refused: bool = False) -> Path:
        path = self.root / f"{version}{'-refused' if refused else ''}.img"
        path.write_bytes(sim_image("other-board" if refused else self.system, version))
        return path

    def bundle_hash(self, path: Path, *, refused: bool = False) -> str | None:
        return None

    async def cut_install(self, version: str) -> None:
        def effect(name: str) -> None:
            if name == "model:install:written":
                raise PowerCut(name)

        self.model.effect = effect
        with contextlib.suppress(PowerCut):
            await self.model.install(FileSource(self.image(version)))

    async def mark_bad_booted_alone(self) -> None:
        if self.model.kind != "rauc":
            raise NotImplementedError(self.model.kind)
        self.model.state["boot"][self.model.booted] = "bad"

    async def power_cycle(self, *, boot_fails: bool = False) -> None:
        booted = self.model.booted
        self.model.power_on(dies=(lambda slot: slot != booted) if boot_fails else None)


async def run_both(script: str, real: Subject, model: Subject) -> tuple[list[Any], list[Any]]:
    if script == "guard_marks_trial_bad" and not hasattr(real, "mark_bad_booted_alone"):
        import pytest

        pytest.skip("the rollback guard marks a trial bad by itself only on RAUC")
    if script == "cut_after_write_before_arm" and not hasattr(real, "cut_install"):
        import pytest

        pytest.skip("no way to cut this tool between its write and its arming")
    return await SCRIPTS[script](real), await SCRIPTS[script](model)
