"""The engine's decisions as tables: journal x slot info x desired version x config -> action.

No processes, no files: :func:`resume_action`, :func:`decide` and :func:`choose_mode` are pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from ota_daemon.config import PolicyConfig, build_config
from ota_daemon.engine import (
    Action,
    Resume,
    choose_mode,
    decide,
    in_windows,
    resume_action,
)
from ota_daemon.errors import ConfigError
from ota_daemon.model import Asset, PinnedVersion, SlotInfo, SlotState, SourceKind, VersionDocument
from ota_daemon.state import AssetRef, Attempt, JournalData, Phase, QuarantineEntry
from ota_daemon.traits import TRAITS, InstallerTraits

DIGEST = "sha256_" + "ab" * 32


def attempt(**kw: Any) -> Attempt:
    base: dict[str, Any] = dict(
        id="att1", target_version="1.1.0", version_id="v1", path="r/p/t",
        image=AssetRef(filename="x.img", size=1, digest=DIGEST), from_version="1.0.0",
        from_slot="a", target_slot="b", started_at=0.0, boot_id="boot-1", reboot_requested=True,
    )
    base.update(kw)
    return Attempt(**base)


def slots(
    booted: str,
    primary: str,
    boot_id: str = "boot-1",
    trial: bool | None = None,
    *,
    tries: int | None = None,
    versions: tuple[str | None, str | None] = (None, None),
    pending: str | None = None,
) -> SlotInfo:
    return SlotInfo(
        booted=booted,
        primary=primary,
        slots={"a": SlotState("a", version=versions[0]), "b": SlotState("b", version=versions[1], tries=tries)},
        boot_id=boot_id,
        trial=trial,
        pending=pending,
    )


@dataclass
class ResumeCase:
    name: str
    phase: Phase
    info: SlotInfo
    expected: Resume
    attempt: Attempt | None = field(default_factory=attempt)
    policy: str = "immediate"
    traits: InstallerTraits = TRAITS["simulated"]
    guard_rebooted: bool = False


RAUC = TRAITS["rauc"]


RESUME_CASES = [
    ResumeCase("nothing pending, committed", Phase.IDLE, slots("a", "a"), Resume.NOTHING, attempt=None),
    ResumeCase("nothing journaled but booted on trial", Phase.IDLE, slots("b", "a"), Resume.ADOPT_TRIAL, attempt=None),
    ResumeCase("crash while downloading", Phase.DOWNLOADING, slots("a", "a"), Resume.ABANDON_DOWNLOAD),
    ResumeCase("crash while installing", Phase.INSTALLING, slots("a", "a"), Resume.ABANDON_INSTALL),
    ResumeCase("installed, reboot not yet happened", Phase.REBOOTING, slots("a", "a"), Resume.REQUEST_REBOOT),
    ResumeCase("installed, manual reboot policy", Phase.REBOOTING, slots("a", "a"), Resume.WAIT_REBOOT, policy="manual"),
    ResumeCase("rebooted into the target, on trial", Phase.REBOOTING, slots("b", "a", "boot-2"), Resume.COMMIT),
    ResumeCase("rebooted into the target, tool says good (RAUC)", Phase.REBOOTING, slots("b", "b", "boot-2"), Resume.COMMIT),
    ResumeCase("rebooted, the trial ran and the bootloader fell back", Phase.REBOOTING, slots("a", "a", "boot-2", tries=1), Resume.ROLLED_BACK),
    ResumeCase("reboot journaled, try-boot never armed (cut)", Phase.REBOOTING, slots("a", "a", "boot-2", tries=0), Resume.REQUEST_REBOOT),
    ResumeCase("back on the old slot, tries unknown: arm once more", Phase.REBOOTING, slots("a", "a", "boot-2"), Resume.REQUEST_REBOOT),
    ResumeCase("tried before an earlier re-arm, not since", Phase.REBOOTING, slots("a", "a", "boot-3", tries=1), Resume.REQUEST_REBOOT, attempt=attempt(tries_seen=1)),
    ResumeCase("back on the old slot again after re-arming", Phase.REBOOTING, slots("a", "a", "boot-3"), Resume.ROLLED_BACK, attempt=attempt(rearms=1)),
    ResumeCase("the guard rebooted the trial", Phase.REBOOTING, slots("a", "a", "boot-2", tries=0), Resume.ROLLED_BACK, guard_rebooted=True),
    ResumeCase("a reboot that was not ours, trial not armed", Phase.REBOOTING, slots("a", "a", "boot-2"), Resume.REQUEST_REBOOT, attempt=attempt(reboot_requested=False)),
    ResumeCase("not ours, but the armed slot booted (RAUC-like)", Phase.REBOOTING, slots("b", "a", "boot-2"), Resume.COMMIT, attempt=attempt(reboot_requested=False)),
    ResumeCase("crash during commit, still on trial", Phase.COMMITTING, slots("b", "a", "boot-2"), Resume.COMMIT),
    ResumeCase("crash after commit, before the journal", Phase.COMMITTING, slots("b", "b", "boot-2"), Resume.COMMIT),
    ResumeCase("commit journaled, completion not yet", Phase.COMMITTING, slots("b", "b", "boot-2"), Resume.COMPLETE, attempt=attempt(committed=True)),
    ResumeCase("health failed, rolled back to old slot", Phase.COMMITTING, slots("a", "a", "boot-3"), Resume.ROLLED_BACK, attempt=attempt(failure="gate failed")),
    ResumeCase("cut during the gate, try-once fell back: try again", Phase.COMMITTING, slots("a", "a", "boot-3", tries=1), Resume.REQUEST_REBOOT),
    # RAUC: armed at install, trial invisible, a failed install disarms its target by itself
    ResumeCase("RAUC: cut after install, rebooted into the new slot", Phase.INSTALLING, slots("b", "b", "boot-2", versions=("1.0.0", "1.1.0")), Resume.INSTALLED_BOOTED, attempt=attempt(target_slot=None), traits=RAUC),
    ResumeCase("RAUC: cut after install, no reboot yet", Phase.INSTALLING, slots("a", "b", versions=("1.0.0", "1.1.0"), pending="b"), Resume.INSTALLED, attempt=attempt(target_slot=None), traits=RAUC),
    ResumeCase("RAUC: cut mid-install", Phase.INSTALLING, slots("a", "a", versions=("1.0.0", None)), Resume.ABANDON_INSTALL, attempt=attempt(target_slot=None), traits=RAUC),
    ResumeCase("RAUC: booted == primary on trial", Phase.REBOOTING, slots("b", "b", "boot-2", versions=("1.0.0", "1.1.0")), Resume.COMMIT, traits=RAUC),
    ResumeCase("RAUC: bootloader fell back", Phase.REBOOTING, slots("a", "a", "boot-2", versions=("1.0.0", "1.1.0")), Resume.ROLLED_BACK, traits=RAUC),
    ResumeCase("RAUC: new boot, slot still armed", Phase.REBOOTING, slots("a", "b", "boot-2", pending="b"), Resume.REQUEST_REBOOT, traits=RAUC),
    ResumeCase("tool reports trial explicitly (RAUC-like)", Phase.REBOOTING, slots("b", "b", "boot-2", trial=True), Resume.COMMIT),
    ResumeCase("in-flight phase without attempt", Phase.INSTALLING, slots("a", "a"), Resume.NOTHING, attempt=None),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=lambda c: c.name)
def test_resume_action(case: ResumeCase) -> None:
    """Each journal phase with each slot situation leads to exactly one documented action."""
    journal = JournalData(phase=case.phase, attempt=case.attempt)
    assert resume_action(journal, case.info, reboot_policy=case.policy, traits=case.traits, guard_rebooted=case.guard_rebooted) is case.expected


def pinned(version: str, *, system: str | None = None) -> PinnedVersion:
    image = Asset(filename="s.img", size=1, digest=DIGEST)
    doc = VersionDocument.model_validate({"versionId": "v-" + version, "assets": [image.model_dump(by_alias=True)]})
    return PinnedVersion(path="r/p/stable", document=doc, version=version, image=image, version_source="imageVersion", system_name=system)


MONDAY_3AM = datetime(2026, 11, 23, 3, 0)
MONDAY_NOON = datetime(2026, 11, 23, 12, 0)


@dataclass
class DecideCase:
    name: str
    current: str
    target: PinnedVersion
    expected: Action
    policy: dict[str, Any] = field(default_factory=dict)
    quarantine: tuple[str, ...] = ()
    system: str | None = "sim"
    now: datetime = MONDAY_NOON
    reason: str = ""


DECIDE_CASES = [
    DecideCase("same version: nothing", "1.0.0", pinned("1.0.0"), Action.NONE),
    DecideCase("newer version: install", "1.0.0", pinned("1.1.0"), Action.INSTALL),
    DecideCase("natural order: 1.10 > 1.9", "1.9.0", pinned("1.10.0"), Action.INSTALL),
    DecideCase("downgrade refused on request", "1.1.0", pinned("1.0.0"), Action.REFUSE, policy={"downgrade": "refuse"}, reason="older than the running"),
    DecideCase("downgrade: the tag is the intent", "1.1.0", pinned("1.0.0"), Action.INSTALL),
    DecideCase("foreign system refused", "1.0.0", pinned("1.1.0", system="other"), Action.REFUSE, reason="built for system 'other'"),
    DecideCase("same system fine", "1.0.0", pinned("1.1.0", system="sim"), Action.INSTALL),
    DecideCase("quarantined refused", "1.0.0", pinned("1.1.0"), Action.REFUSE, quarantine=("1.1.0",), reason="quarantined"),
    DecideCase("other version quarantined: fine", "1.0.0", pinned("1.2.0"), Action.INSTALL, quarantine=("1.1.0",)),
    DecideCase("install window closed: defer", "1.0.0", pinned("1.1.0"), Action.DEFER, policy={"install_window": "Mon-Fri 02:00-04:00"}, reason="install window"),
    DecideCase("install window open", "1.0.0", pinned("1.1.0"), Action.INSTALL, policy={"install_window": "Mon-Fri 02:00-04:00"}, now=MONDAY_3AM),
    DecideCase("build versions in order", "build-20260101120000-a", pinned("build-20260401120000-b"), Action.INSTALL),
]


@pytest.mark.parametrize("case", DECIDE_CASES, ids=lambda c: c.name)
def test_decide(case: DecideCase) -> None:
    """decide() installs only what is newer, for this system, not quarantined, inside the window."""
    policy = build_config({"policy": case.policy}, source="t", env={}).policy
    journal = JournalData(quarantine={v: QuarantineEntry(version=v, reason="rolled back", at=0.0) for v in case.quarantine})
    decision = decide(journal=journal, current_version=case.current, system_name=case.system, target=case.target, policy=policy, now_local=case.now)
    assert decision.action is case.expected
    assert case.reason in decision.reason


def test_windows_across_midnight() -> None:
    """A window that crosses midnight belongs to the day it opens."""
    config = build_config({"policy": {"install_window": "Sat 22:00-05:00"}}, source="t", env={})
    windows = config.policy.install_window
    assert in_windows(windows, datetime(2026, 11, 28, 23, 0))  # Saturday 23:00
    assert in_windows(windows, datetime(2026, 11, 29, 4, 59))  # Sunday 04:59
    assert not in_windows(windows, datetime(2026, 11, 29, 5, 0))
    assert not in_windows(windows, datetime(2026, 11, 27, 23, 0))  # Friday
    assert in_windows(None, MONDAY_NOON)
    assert isinstance(PolicyConfig().reboot, str)


@pytest.mark.parametrize(
    ("configured", "kinds", "local", "expected"),
    [
        ("auto", {SourceKind.FILE, SourceKind.STREAM, SourceKind.URL}, False, SourceKind.FILE),
        ("auto", {SourceKind.STREAM, SourceKind.URL}, False, SourceKind.STREAM),
        ("auto", {SourceKind.URL}, False, SourceKind.URL),
        ("stream", {SourceKind.FILE, SourceKind.STREAM}, False, SourceKind.STREAM),
        ("url", {SourceKind.FILE, SourceKind.URL}, False, SourceKind.URL),
    ],
)
def test_choose_mode(configured: str, kinds: set[SourceKind], local: bool, expected: SourceKind) -> None:
    """The hand-off mode follows the config, within what the installer accepts."""
    assert choose_mode(configured, frozenset(kinds), local=local) is expected


def test_choose_mode_unsupported() -> None:
    """Asking for a mode the installer cannot take names the valid ones."""
    with pytest.raises(ConfigError, match="valid: auto, file, url"):
        choose_mode("stream", frozenset({SourceKind.FILE, SourceKind.URL}), local=False)
