"""The post-reboot half of a pass: resume what a reboot or crash interrupted, and commit."""

from __future__ import annotations

import contextlib

import structlog

from ota_daemon.engine.decisions import PassResult, Result, Resume, resume_action
from ota_daemon.engine.install import InstallHalf
from ota_daemon.errors import HealthCheckFailed, OtaError, UpdateFailed
from ota_daemon.hooks import HookPoint
from ota_daemon.model import SlotInfo
from ota_daemon.state import AssetRef, Attempt, JournalData, Phase, new_attempt_id
from ota_daemon.telemetry import Event, State


class PostReboot(InstallHalf):
    """Finishing what a reboot or a crash interrupted: commit, report a rollback, reboot again."""

    # ------------------------------------------------------------------ the post-reboot half
    async def _resume(self, data: JournalData, info: SlotInfo, current: str, *, dry_run: bool) -> PassResult | None:
        attempt = data.attempt
        action = resume_action(
            data,
            info,
            reboot_policy=(self.effective or self.config).policy.reboot,
            traits=self.installer.traits,
            guard_rebooted=attempt is not None and self._guard_reason(attempt) is not None,
        )
        if action is Resume.NOTHING:
            return None
        if dry_run and action not in (Resume.WAIT_REBOOT,):
            return PassResult(Result.UP_TO_DATE, current, attempt.target_version if attempt else None, f"pending: {action.value} (not acted on in a dry run)")
        structlog.contextvars.bind_contextvars(attempt_id=attempt.id if attempt else None)
        match action:
            case Resume.ABANDON_DOWNLOAD:
                self._end_attempt()
                return None
            case Resume.ABANDON_INSTALL:
                assert attempt is not None
                await self._disarm_failed_target(attempt, info)
                # the next try goes through the loop guard; keep the count
                self._end_attempt()
                return None
            case Resume.INSTALLED | Resume.INSTALLED_BOOTED:
                # the install completed before the cut; the journal did not learn it
                assert attempt is not None
                attempt.target_slot = info.other(attempt.from_slot)
                attempt.boot_id = info.boot_id if action is Resume.INSTALLED else None
                self.journal.transition(Phase.REBOOTING, attempt=attempt)
                await self.telemetry.emit(
                    Event.WARNING,
                    f"slot {attempt.target_slot} holds {attempt.target_version}, installed before a power cut; continuing from there",
                    key=f"{attempt.id}:installed-before-cut",
                )
                if action is Resume.INSTALLED_BOOTED:
                    return await self._commit(attempt, info, current)
                config = self.effective or self.config
                if config.policy.reboot == "manual":
                    return PassResult(Result.REBOOT_PENDING, current, attempt.target_version, f"{attempt.target_version} installed in slot {attempt.target_slot}; waiting for a reboot")
                return await self._reboot(attempt, current, config)
            case Resume.WAIT_REBOOT:
                assert attempt is not None
                return PassResult(Result.REBOOT_PENDING, current, attempt.target_version, f"{attempt.target_version} installed in slot {attempt.target_slot}; waiting for a reboot")
            case Resume.REQUEST_REBOOT:
                assert attempt is not None
                config = self.effective or self.config
                waiting = await self._reboot_gate(attempt, current, config)
                if waiting is not None:
                    return waiting  # a deferred reboot is no crash loop: not counted
                if attempt.boot_id != info.boot_id and attempt.reboot_requested:
                    # a new boot that did not try the slot: arm it again (asked for afresh below)
                    attempt.rearms += 1
                    attempt.reboot_requested = False
                attempt.boot_id = info.boot_id
                count = self.journal.transition(Phase.REBOOTING, attempt=attempt)
                if count > self.config.policy.max_phase_entries + 1:
                    return await self._failed(attempt, f"the reboot into slot {attempt.target_slot} was requested {count - 1} times and never happened", current)
                return await self._reboot(attempt, current, config, gated=True)
            case Resume.COMMIT:
                assert attempt is not None
                return await self._commit(attempt, info, current)
            case Resume.COMPLETE:
                assert attempt is not None
                return await self._complete(attempt, current)
            case Resume.ROLLED_BACK:
                assert attempt is not None
                if attempt.target_slot is None:  # rolled back before the journal learnt the install ended
                    attempt.target_slot = info.other(attempt.from_slot)
                return await self._rolled_back(attempt, info, current)
            case Resume.ADOPT_TRIAL:
                attempt = self._adopted_attempt(info, current)
                self.journal.data.attempt = attempt
                self.journal.transition(Phase.INSTALLING)
                self.journal.transition(Phase.REBOOTING)
                await self.telemetry.emit(Event.WARNING, f"slot {info.booted} is on trial with no journaled attempt; gating and committing it", slot=info.booted)
                return await self._commit(attempt, info, current)
        return None  # pragma: no cover

    def _adopted_attempt(self, info: SlotInfo, current: str) -> Attempt:
        return Attempt(
            id=new_attempt_id(),
            target_version=current,
            version_id="adopted",
            path="local",
            image=AssetRef(filename="unknown", size=0, digest="sha256_" + "0" * 64),
            from_version=None,
            from_slot=info.primary,
            target_slot=info.booted,
            started_at=self.clock.now(),
            boot_id=None,
            source="adopted",
        )

    async def _commit(self, attempt: Attempt, info: SlotInfo, current: str, *, run_health: bool = True) -> PassResult:
        count = self.journal.transition(Phase.COMMITTING, attempt=attempt)
        await self.telemetry.update_status(state=State.COMMITTING.value, phase=Phase.COMMITTING.value, targetVersion=attempt.target_version, attemptId=attempt.id)
        await self.telemetry.emit(Event.COMMITTING, key=f"{attempt.id}:committing", activeGroup=info.booted, defaultGroup=info.primary)
        try:
            self._loop_guard(Phase.COMMITTING, count)
            if attempt.source != "adopted" and attempt.version_known and current != attempt.target_version and not self.config.system.version:
                raise HealthCheckFailed(
                    f"the new slot runs version {current}, expected {attempt.target_version}", check="version"
                )
            if run_health and self.health is not None:
                await self.health.run()
            # journaled before the commit: after a cut the tool may hold the slot as committed
            # while the journal does not know it; the guard then leaves the slot alone
            attempt.gate_passed_boot = info.boot_id
            self.journal.save("gate-passed")
            await self.installer.commit()
            attempt.committed = True
            self.journal.save("committed")
        except UpdateFailed as exc:
            check = exc.check if isinstance(exc, HealthCheckFailed) else None
            attempt.failure = str(exc)
            self.journal.save("failure")
            # until the reboot (and after it, if the reboot never comes) the status says so
            await self.telemetry.update_status(
                state=State.FAILED.value, lastError=str(exc), reason=f"{exc}; rolling back to slot {attempt.from_slot}",
                targetVersion=attempt.target_version, phase=Phase.COMMITTING.value,
            )
            await self.telemetry.emit(Event.HEALTH_CHECK_FAILED if check else Event.FAILED, str(exc), key=f"{attempt.id}:gate", check=check, error=str(exc), output=exc.detail)
            with contextlib.suppress(OtaError):
                await self.installer.mark_bad(info.booted)
            await self._hooks(HookPoint.ON_FAILURE, attempt, current, attempt.from_slot, attempt.target_slot)
            await self.telemetry.flush()
            await self.installer.reboot(spare=False)
            return PassResult(Result.ROLLED_BACK, current, attempt.target_version, f"{exc}; rolling back to slot {attempt.from_slot}")
        return await self._complete(attempt, current)

