"""The three endings of an attempt: completed, rolled back, failed."""

from __future__ import annotations

from ota_daemon.engine.base import EngineBase
from ota_daemon.engine.decisions import PassResult, Result, quarantine_key
from ota_daemon.engine.util import _quarantine_list
from ota_daemon.hooks import HookPoint
from ota_daemon.model import SlotInfo
from ota_daemon.state import Attempt, Outcome, Phase
from ota_daemon.telemetry import Event, State


class Endings(EngineBase):
    """How an attempt ends: completed, rolled back or failed (reported first, journaled last)."""

    # The three endings below report first (status, then an event with a dedupe key) and write
    # the journal last: a power cut in between repeats the report, which the key makes
    # harmless, instead of losing it.

    async def _complete(self, attempt: Attempt, current: str) -> PassResult:
        await self.telemetry.update_status(state=State.COMPLETED.value, currentVersion=current, targetVersion=None, failureCount=0, lastError=None, phase=Phase.IDLE.value, progress=None, attemptId=attempt.id, reason=None)
        await self.telemetry.emit(Event.COMPLETED, key=f"{attempt.id}:completed", currentVersion=current, fromVersion=attempt.from_version)
        data = self.journal.data
        self._forget_entries(attempt.target_version)
        data.attempts_per_version.pop(attempt.target_version, None)
        data.attempts_per_version.pop(quarantine_key(attempt.target_version, attempt.image.digest), None)
        self._end_attempt(
            failure_count=0,
            last_error=None,
            last_outcome=Outcome(state="completed", attempt_id=attempt.id, version=attempt.target_version, at=self.clock.now()),
        )
        self._clean_cache()
        await self._note_committed(attempt.target_version)
        if attempt.source != "adopted":
            await self._hooks(HookPoint.POST_COMMIT, attempt, current, attempt.from_slot, attempt.target_slot)
        return PassResult(Result.COMPLETED, current, attempt.target_version, f"{attempt.target_version} committed in slot {attempt.target_slot}")

    async def _rolled_back(self, attempt: Attempt, info: SlotInfo, current: str) -> PassResult:
        reason = attempt.failure or self._guard_reason(attempt) or (
            f"slot {attempt.target_slot} did not stay booted; the bootloader returned to slot {info.booted}"
        )
        message = f"update rolled back (expected {attempt.target_version}, running {current}): {reason}"
        data = self.journal.data
        self._quarantine(attempt, reason)
        await self.telemetry.update_status(
            state=State.ROLLBACK.value, currentVersion=current, targetVersion=None, failureCount=data.failure_count + 1,
            lastError=message, phase=Phase.IDLE.value, progress=None, quarantined=_quarantine_list(data), reason=reason,
        )
        await self.telemetry.emit(Event.ROLLBACK, key=f"{attempt.id}:rollback", targetVersion=attempt.target_version, currentVersion=current, error=message, reason=reason)
        self._end_attempt(
            failure_count=data.failure_count + 1,
            last_error=message,
            last_outcome=Outcome(state="rollback", attempt_id=attempt.id, version=attempt.target_version, error=reason, at=self.clock.now()),
        )
        await self._hooks(HookPoint.ON_ROLLBACK, attempt, current, attempt.from_slot, attempt.target_slot)
        return PassResult(Result.ROLLED_BACK, current, attempt.target_version, message)

    async def _failed(self, attempt: Attempt, error: str, current: str, *, detail: str | None = None, quarantine: bool = True) -> PassResult:
        data = self.journal.data
        if quarantine:
            self._quarantine(attempt, error)
        await self.telemetry.update_status(
            state=State.FAILED.value, failureCount=data.failure_count + 1, lastError=error, targetVersion=attempt.target_version,
            phase=Phase.IDLE.value, progress=None, quarantined=_quarantine_list(data), reason=error,
        )
        await self.telemetry.emit(Event.FAILED, key=f"{attempt.id}:failed", error=error, output=detail, targetVersion=attempt.target_version)
        self._end_attempt(
            failure_count=data.failure_count + 1,
            last_error=error,
            last_outcome=Outcome(state="failed", attempt_id=attempt.id, version=attempt.target_version, error=error, at=self.clock.now()),
        )
        await self._hooks(HookPoint.ON_FAILURE, attempt, current, attempt.from_slot, attempt.target_slot)
        return PassResult(Result.FAILED, current, attempt.target_version, error)

