"""ota-daemon-guard: reboot a system that booted an update on trial and was never committed.

The dead man's switch behind the daemon (issue 6). A trial boot (Rugix's one-shot
``tryNext``, the simulated device's ``try_next``) falls back to the committed slot at the
next reboot, but only a reboot brings it back: if the new system hangs, or the daemon in it
never commits, the device would run the uncommitted system for ever. A systemd timer starts
this program once per boot (``OnBootSec`` = ``guard.timeout``); when the booted system is
still uncommitted ``guard.timeout`` after boot, it reboots.

It is deliberately tiny and separate from the daemon: standard library only (no pydantic,
httpx, structlog or asyncio), so it still runs when the new system's Python environment or
the daemon itself is what broke. It reads only the keys it needs from the daemon's TOML file
(``--config``, ``OTA_DAEMON_CONFIG``, ``OTA_DAEMON_<SECTION>__<KEY>`` as the daemon does).
Three modules: ``guard_settings`` (those keys), ``guard_probes`` (what each tool says about
the booted system), and this one (the journal, the decision, the record, the reboot).

Uncommitted, per ``installer.kind``:

- ``rugix``: ``rugix-ctrl system info`` ``boot.activeGroup != boot.defaultGroup``.
- ``rauc``: ``rauc status --output-format=json``: the slot in state ``booted`` is not
  ``boot_primary`` (slot names, as the RAUC backend reports them) and the primary is not
  marked bad (a bad primary is what the booted fallback fell back from) — or, since RAUC makes the
  new slot primary at install and cannot show a trial (``traits.trial_visible`` false), the
  daemon's journal holds an uncommitted attempt whose target is the booted slot, requested in
  an earlier boot, whose health gate has not passed (:func:`with_journal_trial`; once it passed
  the commit may be done in RAUC though not yet journaled). Rebooting then marks the booted slot bad
  first (``rauc status mark-bad booted``): a plain reboot would boot the trial slot again.
- ``swupdate``: ``fw_printenv ustate rootpart``: ``ustate`` is ``1`` (INSTALLED) or ``2``
  (TESTING) and the booted slot is the one ``rootpart`` names (``0`` is OK, ``3`` FAILED: the
  bootloader fell back — installer-backends.md §3.3). The booted slot comes from where the
  SWUpdate backend takes it (kernel command line, or the value it pinned for this boot);
  ``ustate=1`` with the other slot booted is an install waiting for its reboot, not a trial.
- ``simulated``: ``<device_dir>/boot.json`` ``booted != default``.

Decisions (:func:`decide`, a pure function; the order is the precedence):

1. Committed → nothing.
2. The daemon's journal says phase ``rebooting`` with the boot id of *this* boot: the update
   was installed in this boot and waits for its reboot (reboot policy ``window`` or
   ``manual``). RAUC switches the primary slot at install time, so "booted != primary" is
   that, not a trial; rebooting would activate the update behind the policy's back →
   nothing. (The SWUpdate probe tells the two apart by itself.)
3. Less than ``guard.timeout`` since boot → wait for the rest (``--no-wait``: exit 0).
4. The journal says ``installing`` or ``committing``: the daemon is acting right now (the
   health gate and the commit of the trial, or RAUC/SWUpdate switching slots). Rebooting in
   the middle of a commit is the race the original watchdog script had (it took no lock);
   we take no lock either — the daemon may hold its lock for a whole pass — but look again
   every few seconds for up to ``guard.commit_grace``; if the system is committed by then,
   nothing happens. After the grace the facts decide, whatever the journal says (a daemon
   hung in ``committing`` is exactly what the guard exists for).
5. The guard already rebooted ``guard.max_reboots`` times in a row for the same situation
   (same booted/primary slots and attempt) → give up and exit 1 (a bootloader that never
   falls back, or a ``ustate`` nobody resets, must not become a reboot loop).
6. Otherwise → reboot. The facts are read afresh right before (each loop iteration probes
   again), ``<state.dir>/guard.json`` is written atomically — ``{"at", "action": "reboot",
   "reason", "booted", "primary", "kind", "bootId", "attemptId", "journalPhase", "uptime",
   "count"}`` — so the daemon can report the rollback's cause after the reboot, and the
   reboot command runs (``guard.reboot_command``, default ``systemctl reboot``; the simulated
   device applies its own bootloader instead).

Exit codes: 0 nothing to do, or rebooted; 1 an error (configuration, a tool that failed, the
reboot command failed) or gave up after ``guard.max_reboots``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon.durations import parse_duration
from ota_daemon.faults import effect
from ota_daemon.guard_probes import (
    COMMAND_TIMEOUT,
    PROBES,
    SWUPDATE_UNCOMMITTED,
    Runner,
    SlotFacts,
    _rauc_env,
    probe_rauc,
    probe_rugix,
    probe_simulated,
    probe_swupdate,
    run_tool,
    swupdate_booted,
)
from ota_daemon.guard_settings import (
    BOOT_ID_FILE,
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_PREFIX,
    KINDS,
    GuardError,
    GuardSettings,
    load_settings,
)
from ota_daemon.traits import TRAITS

__all__ = [
    "BOOT_ID_FILE",
    "BUSY_PHASES",
    "COMMAND_TIMEOUT",
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "KINDS",
    "POLL_INTERVAL",
    "PROBES",
    "SWUPDATE_UNCOMMITTED",
    "Action",
    "Decision",
    "Env",
    "GuardError",
    "GuardSettings",
    "JournalFacts",
    "Runner",
    "SlotFacts",
    "decide",
    "load_settings",
    "main",
    "parse_duration",
    "prior_reboots",
    "probe_rauc",
    "probe_rugix",
    "probe_simulated",
    "probe_swupdate",
    "read_journal",
    "reboot_system",
    "run",
    "run_tool",
    "swupdate_booted",
    "with_journal_trial",
    "write_record",
]

UPTIME_FILE = Path("/proc/uptime")
GUARD_FILE = "guard.json"
JOURNAL_FILE = "journal.json"
#: how often to look again while the daemon is installing or committing
POLL_INTERVAL = 5.0
BUSY_PHASES = frozenset({"installing", "committing"})


# =========================================================================== facts


@dataclass(frozen=True)
class JournalFacts:
    """The few journal fields the guard looks at (no lock taken; may be a moment old)."""

    phase: str | None = None
    attempt_id: str | None = None
    boot_id: str | None = None
    target_slot: str | None = None
    from_slot: str | None = None  # the slot the attempt started from
    committed: bool = False  # the daemon journaled the installer's commit of this attempt
    gate_passed: bool = False  # the gate passed and the installer's commit was asked for (maybe done)
    problem: str | None = None  # why the journal could not be read, if it could not


def read_journal(state_dir: Path) -> JournalFacts:
    """The daemon's journal, tolerantly: absent or unreadable → no phase (and a note why)."""
    path = state_dir / JOURNAL_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return JournalFacts()
    except (OSError, ValueError) as exc:
        return JournalFacts(problem=f"{path}: unreadable ({exc}); deciding from the slots alone")
    if not isinstance(raw, dict):
        return JournalFacts(problem=f"{path}: not a JSON object; deciding from the slots alone")
    attempt = raw.get("attempt")
    if not isinstance(attempt, dict):
        attempt = {}

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    return JournalFacts(
        phase=text(raw.get("phase")),
        attempt_id=text(attempt.get("id")),
        boot_id=text(attempt.get("boot_id")),
        target_slot=text(attempt.get("target_slot")),
        from_slot=text(attempt.get("from_slot")),
        committed=attempt.get("committed") is True,
        gate_passed=bool(text(attempt.get("gate_passed_boot"))),
    )


def with_journal_trial(facts: SlotFacts, journal: JournalFacts) -> SlotFacts:
    """The facts with the trial only the journal knows of, for tools that cannot show one.

    RAUC makes the new slot primary when it installs, so after the reboot into it ``booted ==
    primary`` whether or not the daemon committed (``traits.trial_visible`` is false). The
    journal tells: an attempt whose target is the booted slot, in phase ``rebooting`` or
    ``committing``, not committed, and requested in an earlier boot is a trial boot — unless
    its health gate passed and the commit was asked of the tool: a power cut between RAUC's
    ``mark-good`` and the journal's ``committed`` leaves exactly that, and marking the slot bad
    then would destroy a committed version (the daemon finishes the commit on its next pass).
    An attempt still in ``installing`` whose booted slot is not the one it started from is a
    trial too: the install finished and armed the slot, the daemon died before it journaled
    ``rebooting`` (a watchdog or OOM kill), and the device booted the new slot since.
    """
    if facts.uncommitted or TRAITS[facts.kind].trial_visible:
        return facts
    trial = (
        journal.phase in ("rebooting", "committing")
        and journal.target_slot is not None
        and journal.target_slot == facts.booted
        and not journal.committed
        and not journal.gate_passed
        and journal.boot_id != facts.boot_id
    ) or (
        journal.phase == "installing"
        and journal.from_slot is not None
        and facts.booted is not None
        and facts.booted != journal.from_slot
        and not journal.committed
    )
    if not trial:
        return facts
    detail = f"{facts.detail}; the journal holds attempt {journal.attempt_id or '?'} on trial in slot {facts.booted}, not committed"
    return dataclasses.replace(facts, uncommitted=True, detail=detail)


# =========================================================================== the decision


class Action(enum.StrEnum):
    NONE = "none"
    WAIT = "wait"
    REBOOT = "reboot"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    delay: float = 0.0
    early: bool = False  # a WAIT because guard.timeout has not passed yet


def decide(
    facts: SlotFacts,
    journal: JournalFacts,
    *,
    uptime: float,
    timeout: float,
    commit_grace: float,
    grace_waited: float = 0.0,
    prior_reboots: int = 0,
    max_reboots: int = 3,
) -> Decision:
    """What the guard does now: a pure function of its arguments (see the module docstring)."""
    if not facts.uncommitted:
        return Decision(Action.NONE, f"committed ({facts.detail})")
    if journal.phase == "rebooting" and journal.boot_id is not None and journal.boot_id == facts.boot_id:
        return Decision(
            Action.NONE,
            f"slot {journal.target_slot or '?'} was installed in this boot and waits for its reboot "
            f"(journal phase rebooting); not a trial boot ({facts.detail})",
        )
    if uptime < timeout:
        return Decision(
            Action.WAIT,
            f"uncommitted ({facts.detail}) but only {uptime:.0f}s since boot; guard.timeout is {timeout:.0f}s",
            delay=timeout - uptime,
            early=True,
        )
    if journal.phase in BUSY_PHASES and grace_waited < commit_grace:
        return Decision(
            Action.WAIT,
            f"uncommitted ({facts.detail}) and the daemon's journal says {journal.phase}; "
            f"waiting up to guard.commit_grace ({commit_grace:.0f}s) for it to finish",
            delay=min(POLL_INTERVAL, commit_grace - grace_waited),
        )
    reason = f"still uncommitted {uptime:.0f}s after boot (guard.timeout {timeout:.0f}s): {facts.detail}"
    if journal.phase in BUSY_PHASES:
        reason += f"; the daemon's journal still says {journal.phase} after guard.commit_grace ({commit_grace:.0f}s)"
    if prior_reboots >= max_reboots:
        return Decision(
            Action.GIVE_UP,
            f"{reason}; the guard rebooted {prior_reboots} times in a row for this already "
            f"(guard.max_reboots = {max_reboots}): not rebooting again; the boot flow does not fall back",
        )
    return Decision(Action.REBOOT, reason)


# =========================================================================== doing it


def _situation(facts: SlotFacts, journal: JournalFacts) -> dict[str, Any]:
    return {"kind": facts.kind, "booted": facts.booted, "primary": facts.primary, "attemptId": journal.attempt_id}


def prior_reboots(state_dir: Path, facts: SlotFacts, journal: JournalFacts) -> int:
    """How often in a row the guard rebooted for this same situation (from ``guard.json``)."""
    try:
        previous = json.loads((state_dir / GUARD_FILE).read_bytes())
    except (OSError, ValueError):
        return 0
    if not isinstance(previous, dict) or previous.get("action") != "reboot":
        return 0
    count = previous.get("count", 1)
    if not isinstance(count, int) or not all(previous.get(k) == v for k, v in _situation(facts, journal).items()):
        return 0
    if previous.get("bootId") == facts.boot_id:
        return max(count - 1, 0)  # the reboot recorded never happened (this is still that boot)
    return count


def write_record(state_dir: Path, record: Mapping[str, Any]) -> Path:
    """``guard.json``, atomically: temp file, fsync, rename, fsync of the directory."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / GUARD_FILE
    tmp = path.with_name(f".{GUARD_FILE}.{os.getpid()}.tmp")
    with effect("guard.record"):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record, indent=1) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def reboot_system(settings: GuardSettings) -> None:
    """Reboot: the configured command, or the simulated device's bootloader.

    Where the install armed the new slot for every boot (``traits.armed_at = install`` and no
    try-once), a plain reboot would boot the trial slot again: the booted slot is marked bad
    first (``rauc status mark-bad booted``), so the bootloader takes the other one."""
    if settings.kind == "rauc" and settings.booted_is_trial:
        with effect("guard.mark-bad"):  # a cut after it: the next boot takes the other slot
            run_tool([settings.rauc_bin, "status", "mark-bad", "booted"], _rauc_env(settings.rauc_bus))
    if settings.kind == "simulated":
        # the device's own boot rules (try-once); imported here: it pulls in pydantic
        from ota_daemon.installers.simulated import SimulatedDevice

        device = SimulatedDevice(settings.device_dir)
        state = device.read()
        state["reboot_requested"] = True
        device.write(state)
        if settings.sim_on_reboot == "apply":
            device.boot()
        return  # "exit": the rig applies the reboot it sees requested
    shown = " ".join(settings.reboot_command)
    try:
        result = subprocess.run(list(settings.reboot_command), timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuardError(f"guard.reboot_command '{shown}' failed: {exc}") from None
    if result.returncode != 0:
        raise GuardError(f"guard.reboot_command '{shown}' exited with {result.returncode}")


def read_uptime(path: Path = UPTIME_FILE) -> float:
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise GuardError(f"{path}: cannot read the uptime: {exc}") from None


@dataclass
class Env:
    """The guard's seams: time, sleeping, the status probe and the reboot (tests inject them)."""

    uptime: Callable[[], float] = read_uptime
    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    probe: Callable[[GuardSettings], SlotFacts] = field(default=lambda s: PROBES[s.kind](s, run_tool))
    reboot: Callable[[GuardSettings], None] = reboot_system
    log: Callable[[str, int], None] = field(default=lambda message, level: _log(message, level))


def _log(message: str, level: int) -> None:
    # journald reads "<N>" as the priority (SyslogLevelPrefix=yes, the default)
    prefix = f"<{level}>" if os.environ.get("JOURNAL_STREAM") else ""
    print(f"{prefix}ota-daemon-guard: {message}", file=sys.stderr, flush=True)


INFO, WARNING, ERROR = 6, 4, 3


def run(settings: GuardSettings, env: Env | None = None, *, wait_early: bool = True) -> int:
    """Look, wait while told to, then do nothing, reboot or give up. Returns the exit code."""
    env = env or Env()
    grace_waited = 0.0
    while True:
        journal = read_journal(settings.state_dir)
        facts = with_journal_trial(env.probe(settings), journal)
        if journal.problem:
            env.log(journal.problem, WARNING)
        uptime = env.uptime()
        prior = prior_reboots(settings.state_dir, facts, journal)
        decision = decide(
            facts,
            journal,
            uptime=uptime,
            timeout=settings.timeout,
            commit_grace=settings.commit_grace,
            grace_waited=grace_waited,
            prior_reboots=prior,
            max_reboots=settings.max_reboots,
        )
        if decision.action is Action.WAIT:
            if decision.early and not wait_early:
                env.log(f"{decision.reason}; --no-wait: nothing done", INFO)
                return 0
            env.log(f"{decision.reason}; looking again in {decision.delay:.0f}s", INFO)
            env.sleep(decision.delay)
            if not decision.early:
                grace_waited += decision.delay
            continue
        if decision.action is Action.NONE:
            env.log(f"nothing to do: {decision.reason}", INFO)
            return 0
        if decision.action is Action.GIVE_UP:
            env.log(decision.reason, ERROR)
            return 1
        record = {
            "at": env.now(),
            "action": "reboot",
            "reason": decision.reason,
            "booted": facts.booted,
            "primary": facts.primary,
            "kind": facts.kind,
            "bootId": facts.boot_id,
            "attemptId": journal.attempt_id,
            "journalPhase": journal.phase,
            "uptime": uptime,
            "count": prior + 1,
        }
        write_record(settings.state_dir, record)
        env.log(f"rebooting to roll back: {decision.reason}", WARNING)
        with effect("guard.reboot"):  # the trial slot marked bad where the tool needs it, then the reboot
            env.reboot(dataclasses.replace(settings, booted_is_trial=facts.booted == facts.primary))
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ota-daemon-guard",
        description="Reboot a system that booted an update on trial and is still uncommitted guard.timeout after boot.",
        epilog="Exit codes: 0 nothing to do or rebooted; 1 error, or gave up after guard.max_reboots.",
    )
    parser.add_argument("--config", help=f"configuration file (default: ${ENV_CONFIG} or {DEFAULT_CONFIG_PATH})")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="exit at once when guard.timeout has not passed yet (default: sleep until it has)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        return run(settings, wait_early=not args.no_wait)
    except GuardError as exc:
        _log(str(exc), ERROR)
        return 1


if __name__ == "__main__":
    sys.exit(main())
