"""The engine's entry points: the reconcile pass and the operator commands built on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

import structlog

from ota_daemon.download import local_path
from ota_daemon.engine.decisions import Action, PassResult, Result, choose_mode, decide, quarantined
from ota_daemon.engine.identity import clock_unsynchronised, system_identity
from ota_daemon.engine.resume import PostReboot
from ota_daemon.engine.util import (
    _agent,
    _config_view,
    _quarantine_list,
    _sha256_file,
    _target_summary,
)
from ota_daemon.errors import ConfigError, HubError, NoSpace, TransientError, UpdateFailed
from ota_daemon.installers.base import ImageFacts
from ota_daemon.model import Asset, PinnedVersion, SourceKind, VersionDocument
from ota_daemon.state import Phase
from ota_daemon.telemetry import IN_FLIGHT_STATES, Event, State


class Engine(PostReboot):
    """One reconcile pass and the operator's entry points (check, install, commit, reboot, retry)."""

    # ------------------------------------------------------------------ entry points
    @contextlib.asynccontextmanager
    async def _reporting(self) -> AsyncIterator[None]:
        """Around each entry point: what it reported reaches the hub before it returns (or is
        spooled), and the status published is complete — with what the hub's status has before
        anything is known, and on the first start the status found there (the replaced
        script's) carried over."""
        self.telemetry.defaults = {"config": _config_view(self.config, self.installer), "currentVersion": system_identity(self.config)[1] or "unknown"}
        await self.telemetry.adopt()
        try:
            yield
        finally:
            await self.telemetry.flush()

    async def reconcile(self, *, dry_run: bool = False) -> PassResult:
        """One full pass; what it reported reaches the hub before it returns (or is spooled)."""
        async with self._reporting():
            try:
                return await self._reconcile(dry_run=dry_run)
            except TransientError as exc:
                # the hub may be what is away: at least `ota-daemon status` tells (not the hub)
                self.telemetry.set_local(lastError=str(exc))
                raise

    async def _status_follows_journal(self) -> None:
        """A cut after the journal ended an attempt (or a resume started it over) and before the
        status said so: the journal is the truth, and the status follows it before anything
        can fail at the hub."""
        data = self.journal.data
        if data.phase is not Phase.IDLE or self.telemetry.status.get("state") not in IN_FLIGHT_STATES:
            return
        outcome = data.last_outcome
        ended = outcome is not None and outcome.attempt_id == self.telemetry.status.get("attemptId")
        await self.telemetry.update_status(state=outcome.state if ended and outcome is not None else State.IDLE.value, phase=Phase.IDLE.value, progress=None)

    async def _reconcile(self, *, dry_run: bool) -> PassResult:
        structlog.contextvars.clear_contextvars()
        info = await self.installer.slot_info()
        data = self.journal.load()
        if self.journal.recovered_from:
            await self.telemetry.emit(Event.WARNING, self.journal.recovered_from, problem="journal")
        for warning in self.config.warnings:
            await self._warn_once(f"config:{warning}", warning)
        name, current = system_identity(self.config, info)
        current = current or "unknown"
        await self.telemetry.update_status(currentVersion=current, runningSlot=info.booted, agent=_agent())

        # one effective configuration for the whole pass, before anything acts on it: a reboot
        # policy or window from the hub holds for the resume step too
        config = await self._effective_config()
        finished = await self._resume(data, info, current, dry_run=dry_run)
        if finished is not None:
            return finished
        await self._status_follows_journal()

        path = config.hub.path
        if not path:
            raise ConfigError("hub.path: required ('repository/package/tag'), in the config file or the hub's config property")
        try:
            document = await self.hub.resolve(path)
            self.telemetry.checked()
            target = await self.pin(document, path=path, system_name=name, config=config, current=current)
        except HubError as exc:
            await self._report_error(str(exc), current)
            return PassResult(Result.FAILED, current, None, str(exc))
        if self._overlay_flags.get("retryFailed") and quarantined(data, target.version, target.image.digest) is not None:
            await self.retry(target.version, by="hub config property retryFailed")
        decision = decide(
            journal=self.journal.data,
            current_version=current,
            system_name=name,
            target=target,
            policy=config.policy,
            now_local=datetime.fromtimestamp(self.clock.now()),
            clock_unsynced=clock_unsynchronised(config, self.clock.now()),
        )
        summary = _target_summary(target)
        structlog.contextvars.bind_contextvars(target_version=target.version, current_version=current)
        if decision.note:
            await self._warn_once(f"order:{current}:{target.version}", decision.note)
        if not dry_run:  # the cache holds at most the pinned target's image (nothing when there is nothing to install)
            self._clean_cache(keep=None if decision.action in (Action.NONE, Action.REFUSE) else self._cache_file(target.image))
        if decision.action is Action.NONE:
            await self._note_committed(current)
            await self._up_to_date(current, data)
            return PassResult(Result.UP_TO_DATE, current, target.version, decision.reason, summary)
        if decision.action is Action.REFUSE:
            await self._refused(target, decision.reason, current)
            return PassResult(Result.BLOCKED, current, target.version, decision.reason, summary)
        if decision.action is Action.HOLD:
            await self._blocked(target, decision.reason, current)
            return PassResult(Result.BLOCKED, current, target.version, decision.reason, summary)
        if dry_run:
            msg = f"update available: {current} -> {target.version}"
            if decision.action is Action.DEFER:
                msg += f" (deferred: {decision.reason})"
            return PassResult(Result.UPDATE_AVAILABLE, current, target.version, msg, summary)
        if decision.action is Action.DEFER:
            # download now, install when the window opens
            if choose_mode(config.download.mode, self.installer.source_kinds, local=False) is SourceKind.FILE:
                with contextlib.suppress(TransientError, NoSpace):
                    await self._download(target, document)
            await self._blocked(target, decision.reason, current)
            return PassResult(Result.BLOCKED, current, target.version, decision.reason, summary)
        held = await self._deferred("install", target.version, config)
        if held is not None:
            await self._blocked(target, held, current)
            return PassResult(Result.BLOCKED, current, target.version, held, summary)
        return await self._install(target, document, info, current, config)

    async def install_local(self, source: str, *, version: str | None = None, sha256: str | None = None) -> PassResult:
        """``ota-daemon install FILE|URL``: the same verification, journal and reboot handling."""
        async with self._reporting():
            return await self._install_local(source, version=version, sha256=sha256)

    async def _install_local(self, source: str, *, version: str | None, sha256: str | None) -> PassResult:
        info = await self.installer.slot_info()
        data = self.journal.load()
        name, current = system_identity(self.config, info)
        current = current or "unknown"
        finished = await self._resume(data, info, current, dry_run=False)
        if finished is not None and finished.result not in (Result.UP_TO_DATE, Result.COMPLETED):
            return finished
        signed = getattr(self.hub, "local_release", None)
        if callable(signed):  # a hub that installs only verified releases verifies this one too
            document = await signed(source, path=self.config.hub.path or "")
            target = await self.pin(document, path="local", system_name=name, config=self.config)
            if target.system_name and name and target.system_name != name:
                raise UpdateFailed(f"{source}: the release is built for system {target.system_name!r}, this is {name!r}")
            return await self._install(target, document, info, current, self.config, source_kind="local")
        path = local_path(source)
        if path is not None:
            if not path.is_file():
                raise UpdateFailed(f"{path}: no such file")
            size = path.stat().st_size
            digest = sha256 or await _sha256_file(path)
            url = path.resolve().as_uri()
        else:
            if not sha256:
                raise UpdateFailed("installing from a URL needs --sha256 (and the size is taken from the server)")
            digest, size, url = sha256, -1, source
        # the version: the image's own (RAUC manifest, sw-description, simulator header), else
        # the flag; else a placeholder the commit does not compare with the running version
        facts = await self.installer.image_facts(path) if path else ImageFacts()
        header_name = facts.system
        target_version = facts.version or version or f"local-{digest[:12]}"
        if facts.version and version and facts.version != version:
            raise UpdateFailed(f"{source}: the image says version {facts.version}, --image-version says {version}")
        version_known = bool(facts.version or version)
        if size < 0:
            size = await self._probe_size(url)
        asset = Asset(filename=(path.name if path else "image"), size=size, digest=f"sha256_{digest}", url=url)
        document = VersionDocument.model_validate(
            {"versionId": f"local-{digest[:16]}", "assets": [asset.model_dump(by_alias=True)], "metadata": {"imageVersion": target_version}, "local": True}
        )
        target = PinnedVersion(path="local", document=document, version=target_version, image=asset, version_source="local", system_name=header_name)
        if header_name and name and header_name != name:
            raise UpdateFailed(f"{source}: image is for system {header_name!r}, this is {name!r}")
        return await self._install(target, document, info, current, self.config, source_kind="local", version_known=version_known)

    async def commit_now(self, *, run_health: bool = False) -> PassResult:
        """``ota-daemon commit``: commit the booted trial slot (health gate only when asked)."""
        async with self._reporting():
            return await self._commit_now(run_health=run_health)

    async def _commit_now(self, *, run_health: bool) -> PassResult:
        info = await self.installer.slot_info()
        data = self.journal.load()
        _, current = system_identity(self.config, info)
        current = current or "unknown"
        attempt = data.attempt if data.phase in (Phase.REBOOTING, Phase.COMMITTING) and data.attempt and data.attempt.target_slot == info.booted else None
        if attempt is None and info.committed:
            return PassResult(Result.UP_TO_DATE, current, None, f"nothing to commit: slot {info.booted} is committed")
        if attempt is None:
            attempt = self._adopted_attempt(info, current)
            self.journal.data.attempt = attempt
            if data.phase is Phase.IDLE:
                self.journal.transition(Phase.INSTALLING)
            if self.journal.data.phase is Phase.INSTALLING:
                self.journal.transition(Phase.REBOOTING)
        return await self._commit(attempt, info, current, run_health=run_health)

    async def reboot_now(self) -> PassResult:
        """``ota-daemon reboot``: reboot into an installed update that waits for its reboot."""
        async with self._reporting():
            return await self._reboot_now()

    async def _reboot_now(self) -> PassResult:
        info = await self.installer.slot_info()
        data = self.journal.load()
        _, current = system_identity(self.config, info)
        attempt = data.attempt
        if data.phase is not Phase.REBOOTING or attempt is None or info.booted == attempt.target_slot:
            return PassResult(Result.UP_TO_DATE, current, None, "no installed update waits for a reboot")
        attempt.reboot_requested = True
        self.journal.save("reboot-requested")
        await self.telemetry.update_status(state=State.REBOOTING.value, phase=Phase.REBOOTING.value)
        await self.telemetry.emit(Event.REBOOTING, key=f"{attempt.id}:reboot:{info.boot_id}", targetVersion=attempt.target_version, by="operator")
        await self.telemetry.flush()
        await self.installer.reboot(spare=True)
        return PassResult(Result.REBOOTING, current, attempt.target_version, f"rebooting into slot {attempt.target_slot} for {attempt.target_version}")

    async def retry(self, version: str, *, by: str = "operator") -> bool:
        """Clear a version's quarantine and attempt count. True when there was something to clear."""
        data = self.journal.load()
        had = False
        for key in [k for k, e in data.quarantine.items() if e.version == version or k == version]:
            del data.quarantine[key]
            had = True
        for key in [k for k in data.attempts_per_version if k == version or k.startswith(f"{version}@")]:
            del data.attempts_per_version[key]
            had = True
        if any(k.startswith(f"{version}:") for k in data.phase_entries):
            self._forget_entries(version)
            had = True
        if had:
            self.journal.save("quarantine-cleared")
            await self.telemetry.update_status(quarantined=_quarantine_list(data))
            await self.telemetry.emit(Event.WARNING, f"quarantine of {version} cleared by {by}", version=version)
        return had

