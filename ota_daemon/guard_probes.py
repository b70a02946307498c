"""What each installer's own tool says about the booted system, for the guard: one probe
per ``installer.kind`` (``rugix-ctrl system info``, ``rauc status``, ``fw_printenv``, the
simulated device's file), standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ota_daemon.guard_settings import GuardError, GuardSettings

#: limit for one tool call (``system info``, ``rauc status``, ``fw_printenv``)
COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class SlotFacts:
    """What the installer's own tool says about the booted system."""

    kind: str
    uncommitted: bool
    booted: str | None
    primary: str | None
    detail: str
    boot_id: str | None = None


Runner = Callable[[Sequence[str], Mapping[str, str] | None], "subprocess.CompletedProcess[str]"]


def run_tool(argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one status command; failures become :class:`GuardError` naming the command."""
    shown = " ".join(argv)
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=None if env is None else {**os.environ, **env},
            check=False,
        )
    except FileNotFoundError:
        raise GuardError(f"'{shown}': {argv[0]} not found (is the installer's tool installed and on PATH?)") from None
    except PermissionError:
        raise GuardError(f"'{shown}': {argv[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise GuardError(f"'{shown}': no answer within {COMMAND_TIMEOUT:g}s") from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise GuardError(f"'{shown}' exited with {result.returncode}: {' | '.join(last) or '(no output)'}")
    return result


def _json(result: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise GuardError(f"'{what}': expected JSON on stdout, got {result.stdout.strip()[:80]!r}") from None
    if not isinstance(data, dict):
        raise GuardError(f"'{what}': expected a JSON object, got {type(data).__name__}")
    return data


def _boot_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def probe_rugix(settings: GuardSettings, run: Runner = run_tool) -> SlotFacts:
    argv = [settings.rugix_bin, "system", "info"]
    boot = _json(run(argv, None), " ".join(argv)).get("boot")
    active = boot.get("activeGroup") if isinstance(boot, dict) else None
    default = boot.get("defaultGroup") if isinstance(boot, dict) else None
    if not isinstance(active, str) or not isinstance(default, str):
        raise GuardError(
            f"'{' '.join(argv)}': expected boot.activeGroup and boot.defaultGroup, got boot={boot!r}; "
            "cannot tell whether the booted system is committed"
        )
    return SlotFacts(
        kind="rugix",
        uncommitted=active != default,
        booted=active,
        primary=default,
        detail=f"activeGroup {active}, defaultGroup {default}",
        boot_id=_boot_id(settings.boot_id_file),
    )


def _rauc_env(bus: str) -> dict[str, str]:
    """The RAUC CLI uses the system bus unless ``DBUS_STARTER_BUS_TYPE=session`` (§2.1)."""
    if bus == "session":
        return {"DBUS_STARTER_BUS_TYPE": "session"}
    if bus == "system":
        return {}
    return {"DBUS_SYSTEM_BUS_ADDRESS": bus}


def probe_rauc(settings: GuardSettings, run: Runner = run_tool) -> SlotFacts:
    argv = [settings.rauc_bin, "status", "--output-format=json"]
    data = _json(run(argv, _rauc_env(settings.rauc_bus)), " ".join(argv))
    booted_slot: str | None = None
    for entry in data.get("slots") or []:
        if isinstance(entry, dict):
            for name, slot in entry.items():
                if isinstance(slot, dict) and slot.get("state") == "booted":
                    booted_slot = str(name)
    primary = data.get("boot_primary")
    primary_bad = False
    for entry in data.get("slots") or []:
        if isinstance(entry, dict) and isinstance(entry.get(primary), dict):
            primary_bad = entry[primary].get("boot_status") == "bad"
    if booted_slot is None or not isinstance(primary, str):
        raise GuardError(
            f"'{' '.join(argv)}': expected a slot in state 'booted' and boot_primary, got booted={data.get('booted')!r}, "
            f"boot_primary={primary!r}; cannot tell whether the booted system is committed"
        )
    return SlotFacts(
        kind="rauc",
        # a primary marked bad is no trial to roll back: the bootloader fell back from it (a
        # custom backend may keep reporting it primary; U-Boot's drops it from the order)
        uncommitted=booted_slot != primary and not primary_bad,
        booted=booted_slot,
        primary=primary,
        detail=f"booted {booted_slot} ({data.get('booted')}), primary {primary}{' (marked bad)' if primary_bad else ''}",
        boot_id=_boot_id(settings.boot_id_file),
    )


#: SWUpdate's ``ustate`` values that mean "installed, not confirmed": 1 INSTALLED, 2 TESTING
SWUPDATE_UNCOMMITTED = frozenset({"1", "2"})


def swupdate_booted(settings: GuardSettings, rootpart: str | None, boot_id: str | None) -> tuple[str | None, str]:
    """The booted slot as the SWUpdate backend determines it, and how it was found.

    ``booted_from = "cmdline"``: the kernel argument (through ``cmdline_map``). ``"env"``: the
    value the backend pinned for this boot id; without a pin for this boot the daemon has not
    looked yet in this boot, so nothing was installed in it and ``slot_var`` is still what the
    bootloader booted.
    """
    if settings.booted_from == "cmdline":
        try:
            words = settings.cmdline_path.read_text().split()
        except OSError as exc:
            raise GuardError(f"{settings.cmdline_path}: cannot read the kernel command line: {exc}") from None
        args = dict(w.partition("=")[::2] for w in words)
        value = args.get(settings.cmdline_arg)
        slot = settings.cmdline_map.get(value, value) if value is not None else None
        return slot, f"{settings.cmdline_arg}= on the kernel command line"
    with contextlib.suppress(OSError, ValueError):
        pinned = json.loads(settings.pinned_boot_file.read_bytes())
        if isinstance(pinned, dict) and boot_id and pinned.get("bootId") == boot_id and isinstance(pinned.get("booted"), str):
            return pinned["booted"], f"pinned for this boot in {settings.pinned_boot_file}"
    return rootpart, f"{settings.slot_var} as booted (no install in this boot)"


def probe_swupdate(settings: GuardSettings, run: Runner = run_tool) -> SlotFacts:
    """On trial: ``ustate`` 1 or 2 and the booted slot is the one ``slot_var`` names. With
    ``ustate`` 1 and another slot booted, the update is installed and waits for its reboot."""
    argv = [*settings.fw_printenv, "ustate", settings.slot_var]
    values: dict[str, str] = {}
    for line in run(argv, None).stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    ustate = values.get("ustate", "")
    target = values.get(settings.slot_var) or None
    boot_id = _boot_id(settings.boot_id_file)
    booted, how = swupdate_booted(settings, target, boot_id)
    installed = ustate in SWUPDATE_UNCOMMITTED
    trial = installed and booted == target
    detail = f"ustate={ustate or '(unset)'}, {settings.slot_var}={target or '(unset)'}, booted {booted or '?'} ({how})"
    if installed and not trial:
        detail += "; installed, waits for its reboot"
    # the committed slot: the one the env names, except on trial (then the other one)
    primary = target
    if trial:
        primary = next((slot for slot in settings.slots if slot != target), None)
    elif installed:
        primary = booted
    return SlotFacts(kind="swupdate", uncommitted=trial, booted=booted, primary=primary, detail=detail, boot_id=boot_id)


def probe_simulated(settings: GuardSettings, run: Runner = run_tool) -> SlotFacts:
    path = settings.device_dir / "boot.json"
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise GuardError(f"simulated device {settings.device_dir}: no boot.json (create the device first)") from None
    except (OSError, ValueError) as exc:
        raise GuardError(f"simulated device {path}: unreadable: {exc}") from None
    booted, default = (state.get("booted"), state.get("default")) if isinstance(state, dict) else (None, None)
    if not isinstance(booted, str) or not isinstance(default, str):
        raise GuardError(f"simulated device {path}: expected 'booted' and 'default' slot names")
    return SlotFacts(
        kind="simulated",
        uncommitted=booted != default,
        booted=booted,
        primary=default,
        detail=f"booted {booted}, default {default}",
        boot_id=f"sim-boot-{state.get('boot_count', 0)}",
    )


PROBES: dict[str, Callable[[GuardSettings, Runner], SlotFacts]] = {
    "rugix": probe_rugix,
    "rauc": probe_rauc,
    "swupdate": probe_swupdate,
    "simulated": probe_simulated,
}
