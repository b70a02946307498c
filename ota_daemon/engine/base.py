"""The engine's state and shared helpers: journal bookkeeping, hooks, deferrals, reporting."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon.clock import Clock
from ota_daemon.config import Config
from ota_daemon.download import Downloader
from ota_daemon.effects import effect
from ota_daemon.elapsed import Elapsed
from ota_daemon.engine.decisions import quarantine_key
from ota_daemon.engine.seam import seamed
from ota_daemon.engine.util import _quarantine_list
from ota_daemon.errors import UpdateFailed
from ota_daemon.health import HealthGate
from ota_daemon.hooks import HookPoint, HookReport, hook_env, run_hooks
from ota_daemon.hubs.base import Hub
from ota_daemon.inhibit import deferral_decision, scan
from ota_daemon.installers.base import Installer
from ota_daemon.model import PinnedVersion
from ota_daemon.state import Attempt, Journal, JournalData, Phase, QuarantineEntry
from ota_daemon.telemetry import Event, State, Telemetry


class LoopDetected(UpdateFailed):
    """A phase entered too often without progress: the attempt stops and counts against the version."""


@dataclass
class EngineBase:
    """What every part of the pass shares: its collaborators, the journal helpers and reporting."""

    config: Config
    hub: Hub
    installer: Installer
    journal: Journal
    telemetry: Telemetry
    downloader: Downloader
    clock: Clock
    health: HealthGate | None = None
    #: the effective config of the last pass (local ⊕ hub overlay)
    effective: Config | None = None
    _overlay_flags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every installer call with an effect is a cut point (ota_daemon.effects)
        self.installer = seamed(self.installer)

    def _loop_guard(self, phase: Phase, count: int) -> None:
        limit = self.config.policy.max_phase_entries
        if count > limit:
            raise LoopDetected(
                f"entered {phase.value} {count} times without progress (a crash or power loss each time); stopped "
                f"after policy.max_phase_entries = {limit}",
                phase=phase.value,
            )

    def _quarantine(self, attempt: Attempt, reason: str) -> None:
        """Count a failure this device proved against the version's content (an installer
        refusal, a failed install, a trial that died, a failed gate, the wrong version after
        boot), keyed by version and image digest; quarantine it at policy.max_attempts."""
        data = self.journal.data
        if attempt.source == "adopted":
            return
        key = quarantine_key(attempt.target_version, attempt.image.digest)
        count = data.attempts_per_version.get(key, 0) + 1
        data.attempts_per_version[key] = count
        if count >= self.config.policy.max_attempts:
            data.quarantine[key] = QuarantineEntry(
                version=attempt.target_version, version_id=attempt.version_id, digest=attempt.image.digest,
                reason=reason, at=self.clock.now(), attempts=count,
            )

    async def _hooks(self, point: HookPoint, attempt: Attempt, current: str, from_slot: str | None, target_slot: str | None) -> HookReport:
        """Run a hook point; a failing report-only hook becomes a warning event, never an error."""
        env = hook_env(current_version=current, target_version=attempt.target_version, attempt_id=attempt.id, from_slot=from_slot, target_slot=target_slot)
        report = await run_hooks(point, config=self.config.hooks, env=env, clock=self.clock)
        if report.failures or report.skipped:
            await self.telemetry.emit(Event.WARNING, f"{point.value} hooks: {report.reason}", **report.to_attributes())
        return report

    def _elapsed(self) -> float:
        """Elapsed seconds that survive reboots: every duration is measured with it."""
        return Elapsed(self.journal.dir, self.clock).now()

    async def _deferred(self, what: str, subject: str, config: Config) -> str | None:
        """An application's lease holds ``what`` back: the reason, or None to go on (also past the cap)."""
        state = scan(config.policy.inhibit_dir, now=self.clock.now(), boot=(self.clock.boot_id(), self.clock.monotonic()))
        for problem in state.problems:
            await self._warn_once(f"lease:{problem}", f"inhibitor lease ignored: {problem}")
        key = f"{what}:{subject}"
        since = self.journal.data.deferred_at.get(key)
        if not state.for_(what).inhibited:
            if since is not None:
                del self.journal.data.deferred_at[key]
                self.journal.save("deferral")
            return None
        now = self._elapsed()
        defer, reason = deferral_decision(state, what, blocked_since=since, now=now, max_deferral=config.policy.max_deferral)
        if defer:
            if since is None:
                self.journal.data.deferred_at[key] = now
                self.journal.save("deferral")
            return reason
        if since is not None:
            del self.journal.data.deferred_at[key]
            self.journal.save("deferral")
        if state.for_(what).inhibited:  # past policy.max_deferral: proceeding, say so
            await self.telemetry.emit(Event.WARNING, reason, what=what)
        return None

    async def _defer_capped(self, what: str, subject: str, reason: str, config: Config) -> str | None:
        """A deferral asked for by a hook, capped by policy.max_deferral like a lease."""
        key = f"{what}:{subject}"
        now = self._elapsed()
        since = self.journal.data.deferred_at.setdefault(key, now)
        if since == now:
            self.journal.save("deferral")
        if now - since >= config.policy.max_deferral:
            del self.journal.data.deferred_at[key]
            self.journal.save("deferral")
            await self.telemetry.emit(Event.WARNING, f"{reason}; deferred past policy.max_deferral: proceeding anyway", what=what)
            return None
        return reason

    def _guard_reason(self, attempt: Attempt) -> str | None:
        """What ota-daemon-guard recorded, when it rebooted the trial slot of this attempt."""
        try:
            record = json.loads((self.config.state.dir / "guard.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("action") not in (None, "reboot"):
            return None
        if isinstance(record.get("attemptId"), str):
            # the guard names the attempt it found on trial: no wall-clock comparison, which a
            # clock that jumped either way would get wrong
            if record["attemptId"] != attempt.id:
                return None
        elif not isinstance(record.get("at"), int | float) or record["at"] < attempt.started_at:
            return None  # a record without an attempt (no journal then): judged by its time
        return f"rebooted by ota-daemon-guard: {str(record.get('reason') or 'still uncommitted')[:300]}"

    def _forget_entries(self, version: str) -> None:
        """Reset the loop guard's counts for ``version`` (written with the next journal write)."""
        entries = self.journal.data.phase_entries
        for key in [k for k in entries if k.startswith(f"{version}:")]:
            del entries[key]

    def _end_attempt(self, **changes: Any) -> None:
        """Back to idle (one journal write), recording ``changes`` with it."""
        if self.journal.data.phase is not Phase.IDLE:
            self.journal.transition(Phase.IDLE, attempt=None, **changes)
        elif changes:
            for key, value in changes.items():
                setattr(self.journal.data, key, value)
            self.journal.save("outcome")

    def _clean_cache(self, keep: Path | None = None) -> None:
        """The download cache holds at most ``keep`` (the pinned target's image) and its partial."""
        with effect("cache.clean"):
            self.downloader.prune(self.config.cache_dir, keep=keep)

    async def _note_committed(self, version: str) -> None:
        """Tell a hub that keeps a rollback floor (signed release counters) what runs committed."""
        note = getattr(self.hub, "committed", None)
        if callable(note):
            await note(version)

    # ------------------------------------------------------------------ reporting helpers
    async def _up_to_date(self, current: str, data: JournalData) -> None:
        """The tag names the running version. Whatever the status said about another target
        (a failure, a rollback, a deferral) no longer applies: it is cleared, and the state is
        ``completed`` only when the last attempt completed (a fresh device is ``idle``). The
        quarantine list keeps what failed."""
        status = self.telemetry.status
        fields: dict[str, Any] = {"currentVersion": current, "targetVersion": None, "phase": Phase.IDLE.value, "progress": None, "reason": None}
        state = status.get("state")
        resting = State.COMPLETED.value if data.last_outcome is not None and data.last_outcome.state == "completed" else State.IDLE.value
        announce = state is not None and (state not in (State.COMPLETED.value, State.IDLE.value) or bool(status.get("lastError")))
        if announce:
            fields.update(state=resting, failureCount=0, lastError=None)
        elif state is None:
            fields["state"] = State.IDLE.value
        await self.telemetry.update_status(**fields)
        if announce:
            await self.telemetry.emit(Event.UP_TO_DATE, currentVersion=current)

    async def _refused(self, target: PinnedVersion, reason: str, current: str) -> None:
        changed = self.telemetry.status.get("reason") != reason
        state = State.ROLLBACK.value if self.telemetry.status.get("state") == State.ROLLBACK.value else State.BLOCKED.value
        await self.telemetry.update_status(state=state, targetVersion=None, reason=reason, quarantined=_quarantine_list(self.journal.data))
        if changed:
            await self.telemetry.emit(Event.REFUSED, reason, targetVersion=target.version, currentVersion=current)

    async def _blocked(self, target: PinnedVersion, reason: str, current: str) -> None:
        def gist(text: object) -> str:  # the same reason with other numbers (free MiB, hours) is not news
            return re.sub(r"\d+(\.\d+)?", "#", str(text))

        changed = gist(self.telemetry.status.get("reason")) != gist(reason) or self.telemetry.status.get("state") != State.BLOCKED.value
        await self.telemetry.update_status(state=State.BLOCKED.value, targetVersion=target.version, reason=reason, phase=Phase.IDLE.value)
        if changed:
            await self.telemetry.emit(Event.BLOCKED, targetVersion=target.version, currentVersion=current, reason=reason)

    async def _report_error(self, error: str, current: str) -> None:
        if self.telemetry.status.get("lastError") != error:
            count = int(self.telemetry.status.get("failureCount") or 0) + 1
            await self.telemetry.update_status(state=State.FAILED.value, lastError=error, failureCount=count)
            await self.telemetry.emit(Event.FAILED, error=error, currentVersion=current)

    async def _warn_once(self, key: str, message: str) -> None:
        seen = self.telemetry.status.get("warnings") or []
        if message in seen:
            return
        self.telemetry.set_local(warnings=[*seen, message][-10:])
        await self.telemetry.emit(Event.WARNING, message)

    async def _probe_size(self, url: str) -> int:
        resp = await self.downloader.http.head(url)
        length = resp.headers.get("content-length")
        if resp.status_code != 200 or not length or not length.isdigit():
            raise UpdateFailed(f"cannot learn the image size (HTTP {resp.status_code}); download it and install the file")
        return int(length)
