"""The boot state in the bootloader environment: ``fw_printenv``'s output, the kernel command
line, and the table (``ustate`` x ``rootpart`` x booted slot -> slot facts) of the package
docstring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ota_daemon.errors import InstallerError
from ota_daemon.model import SlotInfo, SlotState

BACKEND = "swupdate"
#: ``ustate`` values (SWUpdate's ``update_state_t``)
USTATE_OK, USTATE_INSTALLED, USTATE_TESTING, USTATE_FAILED = 0, 1, 2, 3


def parse_selection(selection: str) -> tuple[str, tuple[str, str]]:
    """``"stable,copy1|copy2"`` as ``("stable", ("copy1", "copy2"))``."""
    software, _, modes = selection.partition(",")
    first, _, second = modes.partition("|")
    return software.strip(), (first.strip(), second.strip())


def parse_env(text: str) -> dict[str, str]:
    """``fw_printenv`` output: one ``name=value`` per line."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name:
            env[name] = value
    return env


def parse_cmdline(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for word in text.split():
        name, _, value = word.partition("=")
        out[name] = value
    return out


def slot_info_from_env(
    env: Mapping[str, str],
    booted: str,
    boot_id: str,
    *,
    slots: tuple[str, str],
    slot_var: str,
    version_var: str | None,
    watched: Sequence[str],
) -> SlotInfo:
    """Slot facts from the environment and the booted slot (the table in the package docstring)."""

    target = env.get(slot_var)
    if target not in slots:
        raise InstallerError(
            f"swupdate: bootloader variable {slot_var}={target!r} names no slot; expected {' or '.join(slots)}",
            backend=BACKEND,
            phase="slot_info",
        )
    assert target is not None
    other = slots[1] if target == slots[0] else slots[0]
    try:
        ustate: int | None = int(env.get("ustate", "0"))
    except ValueError:
        ustate = None
    recovery = env.get("recovery_status")
    good: dict[str, bool | None] = dict.fromkeys(slots)
    failed: str | None = None
    pending: str | None = None
    if ustate == USTATE_FAILED or recovery == "failed":
        primary, failed = target, other
        good[target] = True
        good[failed] = False
    elif ustate in (USTATE_INSTALLED, USTATE_TESTING):
        if booted == target:
            primary = other  # running the new slot on trial
        else:
            primary, pending = booted, target  # installed; tried on the next boot
        good[primary] = True
    else:
        primary = target
        good[target] = True
    states = {
        name: SlotState(
            name=name,
            version=env.get(version_var.format(slot=name)) if version_var else None,
            bootable=name != failed,
            good=good[name],
        )
        for name in slots
    }
    extra: dict[str, Any] = {"ustate": ustate, "bootEnv": {k: env[k] for k in watched if k in env}}
    if recovery is not None:
        extra["recoveryStatus"] = recovery
    if failed is not None:
        extra["failedSlot"] = failed
    return SlotInfo(booted=booted, primary=primary, slots=states, boot_id=boot_id, pending=pending, extra=extra)

