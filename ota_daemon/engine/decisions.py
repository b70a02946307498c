"""Pure decisions of a pass: results, what to resume, whether to install, how the image travels.

Every function here is a pure function of its arguments, tested as tables without processes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ota_daemon.config import PolicyConfig, Window
from ota_daemon.errors import ConfigError
from ota_daemon.model import PinnedVersion, SlotInfo, SourceKind
from ota_daemon.state import Attempt, JournalData, Phase, QuarantineEntry
from ota_daemon.traits import TRAITS, InstallerTraits
from ota_daemon.versions import check_downgrade

# =========================================================================== results


class Result(enum.StrEnum):
    UP_TO_DATE = "up_to_date"
    UPDATE_AVAILABLE = "update_available"  # dry run only
    REBOOTING = "rebooting"  # installed; reboot requested
    REBOOT_PENDING = "reboot_pending"  # installed; waiting for the reboot policy
    COMPLETED = "completed"
    ROLLED_BACK = "rollback"
    FAILED = "failed"
    BLOCKED = "blocked"  # deferred (window, inhibitor) or refused (downgrade, quarantine)


EXIT_CODES = {
    Result.UP_TO_DATE: 0,
    Result.COMPLETED: 0,
    Result.REBOOTING: 0,
    Result.REBOOT_PENDING: 0,
    Result.UPDATE_AVAILABLE: 3,
    Result.FAILED: 1,
    Result.ROLLED_BACK: 1,
    Result.BLOCKED: 4,
}


@dataclass
class PassResult:
    result: Result
    current_version: str | None = None
    target_version: str | None = None
    message: str = ""
    target: dict[str, Any] | None = None
    #: a failure that proved nothing against the version: the daemon backs off and tries again
    backoff: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result]

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result.value,
            "exitCode": self.exit_code,
            "currentVersion": self.current_version,
            "targetVersion": self.target_version,
            "message": self.message,
            "target": self.target,
        }


# =========================================================================== pure decisions


class Resume(enum.StrEnum):
    NOTHING = "nothing"
    ABANDON_DOWNLOAD = "abandon_download"  # crashed while downloading: nothing touched; start over (resumes)
    ABANDON_INSTALL = "abandon_install"  # crashed while writing the slot: disarm it (if needed), start over
    INSTALLED = "installed"  # crashed after the install completed, before `rebooting` was journaled
    INSTALLED_BOOTED = "installed_booted"  # ... and the armed slot booted since: go on to the commit
    REQUEST_REBOOT = "request_reboot"  # installed, the reboot (or the arming) has not happened yet
    WAIT_REBOOT = "wait_reboot"  # installed, the policy says someone else reboots
    COMMIT = "commit"  # booted the target on trial: health gate, then commit
    COMPLETE = "complete"  # booted the target and it is committed already
    ROLLED_BACK = "rolled_back"  # after the reboot the old slot runs: the new one did not stick
    ADOPT_TRIAL = "adopt_trial"  # no journal, but the booted slot is on trial: gate and commit it


def _holds_target(info: SlotInfo, slot: str, attempt: Attempt, traits: InstallerTraits) -> bool:
    """Whether ``slot`` holds the attempt's image, completely written (the installer's facts)."""
    version = info.version_of(slot)
    if version is not None:
        return version == attempt.target_version
    # no version recorded: an installer that arms at install arms only a complete write
    return traits.arms_at_install and (info.pending == slot or (info.booted == slot and not info.committed))


def resume_action(
    journal: JournalData,
    info: SlotInfo,
    *,
    reboot_policy: str,
    traits: InstallerTraits = TRAITS["simulated"],
    guard_rebooted: bool = False,
) -> Resume:
    """What a pass must finish before anything else: the journal's phase plus the installer's
    facts, read through its declared semantics (:mod:`ota_daemon.traits`)."""
    attempt = journal.attempt
    wait_or_reboot = Resume.WAIT_REBOOT if reboot_policy == "manual" else Resume.REQUEST_REBOOT
    match journal.phase:
        case Phase.IDLE:
            # A trial boot nobody journaled (journal lost, or an install by hand): gate it like ours.
            return Resume.NOTHING if info.committed else Resume.ADOPT_TRIAL
        case _ if attempt is None:
            # An in-flight phase without an attempt cannot happen through this code; treat as lost.
            return Resume.NOTHING if info.committed else Resume.ADOPT_TRIAL
        case Phase.DOWNLOADING:
            # No slot was touched. The partial file stays in the cache and the next attempt resumes it.
            return Resume.ABANDON_DOWNLOAD
        case Phase.INSTALLING:
            # Cut while installing: ask the installer what the other slot now holds. An
            # installer that arms at install may have finished (and the device rebooted into it).
            target = info.other(attempt.from_slot)
            if guard_rebooted and info.booted == attempt.from_slot:
                # the install finished, the device booted it before any pass, its trial never
                # committed and ota-daemon-guard sent it back: a rollback, not a fresh install
                return Resume.ROLLED_BACK
            if _holds_target(info, target, attempt, traits):
                if info.booted == target:
                    return Resume.INSTALLED_BOOTED
                if info.pending == target or not traits.arms_at_install:
                    return Resume.INSTALLED
            return Resume.ABANDON_INSTALL
        case Phase.REBOOTING if attempt.boot_id == info.boot_id:
            # Same boot as when the install finished: the trial is still to come.
            return wait_or_reboot
        case Phase.REBOOTING | Phase.COMMITTING if info.booted == attempt.target_slot:
            # Running the new slot: gate and commit (idempotent) unless our commit went through
            # already. Not from info.committed: RAUC cannot tell a trial boot from a good one.
            return Resume.COMPLETE if attempt.committed else Resume.COMMIT
        case Phase.REBOOTING | Phase.COMMITTING:
            # A new boot, on the old slot. A failed gate or the guard's reboot is a rollback.
            if attempt.failure or guard_rebooted:
                return Resume.ROLLED_BACK
            if traits.arms_at_install:
                # armed by the install: any reboot tries it, unless the slot is still armed
                return wait_or_reboot if info.pending == attempt.target_slot else Resume.ROLLED_BACK
            if journal.phase is Phase.COMMITTING:
                # the new system ran the daemon and was cut before the gate's verdict: try again
                # (bounded by the loop guard)
                return Resume.REQUEST_REBOOT
            if not attempt.reboot_requested:
                # a reboot that was not ours: the try-boot was never armed
                return wait_or_reboot
            tries = info.slots[attempt.target_slot].tries if attempt.target_slot in info.slots else None
            tried = None if tries is None else tries > (attempt.tries_seen or 0)
            if tried is False or (tried is None and attempt.rearms < 1):
                # the reboot was journaled but the try-boot never happened (cut before arming);
                # a tool that does not count tries gets one more arming before it is a rollback
                return Resume.REQUEST_REBOOT
            return Resume.ROLLED_BACK
    return Resume.NOTHING  # pragma: no cover - every phase is matched above


class Action(enum.StrEnum):
    NONE = "none"
    INSTALL = "install"
    REFUSE = "refuse"
    DEFER = "defer"
    HOLD = "hold"  # wait without downloading: the hub's signed rollout says not yet (or halted)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    #: something worth telling alongside the decision (policy.downgrade could not order the versions)
    note: str = ""


def in_windows(windows: list[Window] | None, when: datetime) -> bool:
    """Inside any of the weekly windows (local time). No windows: always open."""
    if not windows:
        return True
    now_t = when.time()
    weekday = when.weekday()
    for window in windows:
        if window.start <= window.end:
            if weekday in window.days and window.start <= now_t < window.end:
                return True
        else:  # crosses midnight: the day named is the day it opens
            if weekday in window.days and now_t >= window.start:
                return True
            if (weekday - 1) % 7 in window.days and now_t < window.end:
                return True
    return False


def decide(
    *,
    journal: JournalData,
    current_version: str,
    system_name: str | None,
    target: PinnedVersion,
    policy: PolicyConfig,
    now_local: datetime,
    clock_unsynced: str | None = None,
) -> Decision:
    """Install, do nothing, refuse or defer: a pure function of its arguments."""
    if target.version == current_version:
        return Decision(Action.NONE, f"running {current_version}, the version behind {target.path}")
    if target.system_name and system_name and target.system_name != system_name:
        return Decision(Action.REFUSE, f"version {target.version} is built for system {target.system_name!r}, this is {system_name!r}")
    entry = quarantined(journal, target.version, target.image.digest)
    if entry is not None:
        return Decision(Action.REFUSE, f"version {target.version} is quarantined: {entry.reason} (clear with 'ota-daemon retry {target.version}')")
    if target.gate is not None and target.gate.hold:
        return Decision(Action.HOLD, target.gate.hold)
    # the tag is the operator's intent: any other version is installed, older ones only
    # refused on request and when the order is certain (ota_daemon/versions.py). With signed
    # metadata the hub compared release counters (refusing a lower one unless it is an
    # intended rollback), not version strings.
    note = ""
    if target.gate is None:
        order = check_downgrade(target.version, current_version, policy.downgrade)
        if order.refuse:
            return Decision(Action.REFUSE, order.reason or "")
        note = order.reason or ""
    if policy.install_window and clock_unsynced:
        return Decision(Action.DEFER, clock_unsynced, note)
    if not in_windows(policy.install_window, now_local):
        windows = ", ".join(w.text for w in policy.install_window or [])
        return Decision(Action.DEFER, f"outside the install window ({windows})", note)
    return Decision(Action.INSTALL, f"{current_version} -> {target.version}", note)


def quarantine_key(version: str, digest: str) -> str:
    return f"{version}@{digest}"


def quarantined(journal: JournalData, version: str, digest: str) -> QuarantineEntry | None:
    """The quarantine entry that holds this image of ``version`` back, if any."""
    return journal.quarantine.get(quarantine_key(version, digest)) or next(
        (e for k, e in journal.quarantine.items() if k == version and e.digest is None), None
    )


def choose_mode(configured: str, kinds: frozenset[SourceKind], *, local: bool) -> SourceKind:
    """How the image reaches the installer."""
    if configured != "auto":
        mode = SourceKind(configured)
        if mode not in kinds:
            valid = ", ".join(sorted(k.value for k in kinds))
            raise ConfigError(f"download.mode: {configured!r} is not supported by this installer; valid: auto, {valid}")
        return mode
    if local and SourceKind.FILE in kinds:
        return SourceKind.FILE
    for mode in (SourceKind.FILE, SourceKind.STREAM, SourceKind.URL):
        if mode in kinds:
            return mode
    raise ConfigError("the installer accepts no image source")  # pragma: no cover

