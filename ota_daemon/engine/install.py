"""The install half of a pass: pin the version, acquire the image, install, request the reboot."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from ota_daemon.config import OVERLAY_FLAGS, Config, apply_overlay
from ota_daemon.download import local_path
from ota_daemon.effects import effect
from ota_daemon.engine.base import LoopDetected
from ota_daemon.engine.decisions import PassResult, Result, choose_mode, in_windows
from ota_daemon.engine.endings import Endings
from ota_daemon.engine.identity import clock_unsynchronised
from ota_daemon.engine.util import _config_view, _target_summary
from ota_daemon.errors import (
    HubError,
    InstallerError,
    IntegrityError,
    NoSpace,
    OtaError,
    TransientError,
    UpdateFailed,
)
from ota_daemon.hooks import HookDecision, HookPoint
from ota_daemon.model import (
    Asset,
    FileSource,
    InstallSource,
    PinnedVersion,
    ReleaseGate,
    SlotInfo,
    SourceKind,
    StreamSource,
    UrlSource,
    VersionDocument,
)
from ota_daemon.redact import redact_url
from ota_daemon.state import AssetRef, Attempt, Phase, _read_regular, atomic_write, new_attempt_id
from ota_daemon.telemetry import Event, State


class InstallHalf(Endings):
    """Pinning the version, acquiring the image, installing it and asking for the reboot."""

    # ------------------------------------------------------------------ pinning
    async def pin(
        self, document: VersionDocument, *, path: str, system_name: str | None, config: Config, current: str | None = None
    ) -> PinnedVersion:
        """Choose the image asset and the version to compare, from the one resolved document.

        When ``metadata.imageVersion`` is the running version (``current``) the build-info
        asset is not fetched: nothing will be installed, and fetching it costs a hub call.
        """
        system = system_name or "system"
        ext = self.installer.image_ext
        image_name = config.hub.image_asset.format(system=system, ext=ext)
        image = document.asset(image_name)
        if image is None:
            # a version may still be uploading: do not trust a cached copy of it next time
            invalidate = getattr(self.hub, "invalidate", None)
            if callable(invalidate):
                invalidate(document.version_id)
            names = ", ".join(a.filename for a in document.assets) or "none"
            raise HubError(f"version {document.version_id} at {path!r} has no asset {image_name!r} (has: {names})")
        if image.size > config.download.max_image_size:
            raise HubError(
                f"asset {image_name!r} of version {document.version_id} claims {image.size} bytes, more than "
                f"download.max_image_size ({config.download.max_image_size}); refused"
            )
        if image.status not in (None, "Available"):
            raise HubError(f"asset {image_name!r} of version {document.version_id} is {image.status}, not Available")
        version: str | None = None
        source = "imageVersion"
        built_for: str | None = None
        info_name = config.hub.build_info_asset.format(system=system, ext=ext)
        info_asset = document.asset(info_name)
        running = current is not None and document.metadata.get("imageVersion") == current
        if info_asset is not None and not running:
            try:
                build = await self._build_info(document, info_asset)
            except (UpdateFailed, HubError) as exc:  # missing, wrong digest, oversize: the hub's problem, reported
                raise HubError(f"version {document.version_id}: build info {info_name!r} unusable: {exc}") from None
            release = build.get("release")
            if isinstance(release, dict) and isinstance(release.get("version"), str) and release["version"]:
                version, source = release["version"], "build-info"
            if isinstance(build.get("name"), str):
                built_for = build["name"]
        if version is None:
            meta = document.metadata.get("imageVersion")
            if isinstance(meta, str) and meta.strip():
                version = meta.strip()
        if version is None:
            raise HubError(
                f"version {document.version_id} at {path!r} names no version: no {info_name!r} asset with release.version "
                "and no metadata.imageVersion"
            )
        if len(version) > 128 or not version.strip() or any(c == "/" or (c.isspace() and c != " ") or not c.isprintable() for c in version):
            raise HubError(f"version {document.version_id} at {path!r}: version string {version[:40]!r}… is not usable")
        gate = (document.__pydantic_extra__ or {}).get("_gate")
        gate = gate if isinstance(gate, ReleaseGate) else None
        if gate is not None and gate.system:
            if built_for and built_for != gate.system:
                raise HubError(f"version {version}: build info says system {built_for!r}, the signed entries {gate.system!r}")
            built_for = gate.system
        return PinnedVersion(
            path=path, document=document, version=version, image=image, version_source=source, system_name=built_for, gate=gate
        )

    async def _build_info(self, document: VersionDocument, asset: Asset) -> dict[str, Any]:
        cache = self.journal.dir / "build-info-cache.json"
        cached: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError, RecursionError):
            loaded = json.loads(cache.read_text())
            cached = loaded if isinstance(loaded, dict) else {}
        hit = cached.get(asset.digest)
        if isinstance(hit, dict):
            return hit

        raw = await self.downloader.fetch_bytes(url=self._url_provider(document, asset), asset=asset, limit=64 * 1024)
        try:
            build = json.loads(raw)
        except (ValueError, RecursionError):
            raise HubError(f"{asset.filename}: not valid JSON (or nested too deeply)") from None
        if not isinstance(build, dict):
            raise HubError(f"{asset.filename}: expected a JSON object")
        cached = {asset.digest: build, **dict(list(cached.items())[:15])}
        with effect("cache.build-info"):
            atomic_write(cache, json.dumps(cached).encode())
        return build

    # ------------------------------------------------------------------ the install half
    async def _effective_config(self) -> Config:
        """Local config ⊕ the hub's config property: computed once, first thing in a pass, and
        used by every step of it (resume, schedule, windows, deferral, reboot policy).

        The last overlay the hub gave is kept in ``<state.dir>/hub-config.json``: when the hub
        does not answer (after a reboot, before the network is up) it still holds."""
        saved = self.journal.dir / HUB_CONFIG_FILE
        fresh = True
        try:
            overlay = await self.hub.read_config()
        except (HubError, TransientError) as exc:
            fresh = False
            overlay = _read_saved_overlay(saved)
            held = "the last one it gave holds" if overlay is not None else "local config in force"
            await self._warn_once("config-property", f"hub config property unreadable: {exc}; {held}")
        if fresh:
            _save_overlay(saved, overlay)
        else:
            overlay = {k: v for k, v in overlay.items() if k not in OVERLAY_FLAGS} if isinstance(overlay, dict) else None
        config, problems = apply_overlay(self.config, overlay)
        self._overlay_flags = {k: overlay.get(k) for k in ("retryFailed",)} if isinstance(overlay, dict) else {}
        for problem in problems:
            await self._warn_once(f"overlay:{problem}", problem)
        self.effective = config
        await self.telemetry.update_status(config=_config_view(config, self.installer))
        return config

    def _url_provider(self, document: VersionDocument, asset: Asset) -> Callable[[], Awaitable[str]]:
        """Issues (and re-issues) the asset's URL; plain http only with hub.allow_insecure."""

        async def provide() -> str:
            local = bool((document.__pydantic_extra__ or {}).get("local")) and asset.url
            url = asset.url if local and asset.url else await self.hub.issue_url(document, asset)
            if url.lower().startswith("http://") and not self.config.hub.allow_insecure:
                raise HubError(
                    f"asset {asset.filename!r}: the hub gave a plain http:// URL ({redact_url(url)}); "
                    "refused without hub.allow_insecure = true in the local config"
                )
            return url

        return provide

    def _cache_file(self, asset: Asset) -> Path:
        return self.config.cache_dir / f"{asset.digest}.{self.installer.image_ext}"

    async def _download(self, target: PinnedVersion, document: VersionDocument, *, quiet: bool = False) -> Path:
        if not quiet:
            await self.telemetry.emit(Event.DOWNLOADING, size=target.image.size, targetVersion=target.version)
        self.telemetry.reset_progress()
        self._clean_cache(keep=self._cache_file(target.image))
        path = await self.downloader.to_file(
            url=self._url_provider(document, target.image),
            asset=target.image,
            dest=self._cache_file(target.image),
            progress=self.telemetry.progress,
        )
        await self.telemetry.emit(Event.DOWNLOADED, targetVersion=target.version)
        return path

    async def _install(
        self,
        target: PinnedVersion,
        document: VersionDocument,
        info: SlotInfo,
        current: str,
        config: Config,
        *,
        source_kind: str = "hub",
        version_known: bool = True,
    ) -> PassResult:
        try:
            bundle_hash = self.installer.bundle_hash(target.image.metadata)
        except HubError as exc:
            raise HubError(f"asset {target.image.filename!r}: {exc}") from None
        attempt = Attempt(
            id=new_attempt_id(),
            target_version=target.version,
            version_id=target.version_id,
            path=target.path,
            image=AssetRef(filename=target.image.filename, size=target.image.size, digest=target.image.digest, asset_id=target.image.asset_id),
            from_version=current,
            from_slot=info.booted,
            started_at=self.clock.now(),
            bundle_hash=bundle_hash,
            source=source_kind,
            other_version=info.version_of(info.other(info.booted)),
            version_known=version_known,
        )
        structlog.contextvars.bind_contextvars(attempt_id=attempt.id)
        report = await self._hooks(HookPoint.PRE_INSTALL, attempt, current, info.booted, info.other(info.booted))
        if report.decision is HookDecision.DEFER:
            reason = await self._defer_capped("pre-install", target.version, report.reason, config)
            if reason is not None:
                await self._blocked(target, reason, current)
                return PassResult(Result.BLOCKED, current, target.version, reason, _target_summary(target))
        elif report.decision is HookDecision.FAIL:
            return await self._failed(attempt, report.reason, current, detail=report.deciding.output_tail if report.deciding else None)
        is_local = local_path(target.image.url or "") is not None if source_kind == "local" else False
        mode = choose_mode(config.download.mode, self.installer.source_kinds, local=is_local)
        # a pass that finds the same update still blocked (no space, a window, a lease) says
        # nothing new until something changes
        # (or failed on the way there, backing off: an image not there yet)
        quiet = self.telemetry.status.get("state") in (State.BLOCKED.value, State.FAILED.value) and self.telemetry.status.get("targetVersion") == target.version
        # `installing update` as the script sent it: before the download, with both groups
        installing = {"currentVersion": current, "targetVersion": target.version, "attemptId": attempt.id, "mode": mode.value, "fromSlot": info.booted, "targetSlot": info.other(info.booted)}
        handed_over = False  # the installer has the image: what fails now is the content's doing
        try:
            source: InstallSource
            # the journal first: a status or event is never ahead of it (a cut in between
            # would leave the status saying `installing` over an idle journal)
            first = Phase.DOWNLOADING if mode is SourceKind.FILE else Phase.INSTALLING
            count = self.journal.transition(first, attempt=attempt)
            self._loop_guard(first, count)
            if not quiet:
                await self.telemetry.update_status(state=State.INSTALLING.value, targetVersion=target.version, attemptId=attempt.id, phase=first.value, progress=0, reason=None)
                await self.telemetry.emit(Event.UPDATE_AVAILABLE, currentVersion=current, targetVersion=target.version, attemptId=attempt.id)
                await self.telemetry.emit(Event.INSTALLING, **installing)
                await self.telemetry.flush()  # the hub shows `installing` for the whole download
            if mode is SourceKind.FILE:
                path = await self._download(target, document, quiet=quiet)
                source = FileSource(path)
            elif mode is SourceKind.STREAM:
                source = StreamSource(
                    self.downloader.stream(url=self._url_provider(document, target.image), asset=target.image, progress=self.telemetry.progress),
                    size=target.image.size,
                )
            else:
                source = UrlSource(await self._url_provider(document, target.image)(), size=target.image.size, sha256=target.image.sha256)
            if first is not Phase.INSTALLING:
                count = self.journal.transition(Phase.INSTALLING, attempt=attempt)
                self._loop_guard(Phase.INSTALLING, count)
            await self.telemetry.update_status(state=State.INSTALLING.value, targetVersion=target.version, attemptId=attempt.id, phase=Phase.INSTALLING.value, progress=0, reason=None)
            if quiet:
                await self.telemetry.emit(Event.INSTALLING, **installing)
            self.telemetry.reset_progress()
            handed_over = True
            try:
                outcome = await self.installer.install(source, progress=self.telemetry.progress, version=target.version, bundle_hash=attempt.bundle_hash)
            except BaseException:
                # whatever happened, a half-written slot must not boot
                await self._disarm_failed_target(attempt, info)
                raise
        except TransientError as exc:
            # nothing counted against the version: the next pass resumes (partial download kept);
            # a pass that ended by itself is no crash, so the loop guard starts over
            self._forget_entries(target.version)
            self._end_attempt()
            await self.telemetry.update_status(state=State.FAILED.value, lastError=str(exc), phase=Phase.IDLE.value)
            raise
        except NoSpace as exc:
            # the device, not the version: wait (blocked) and try again next pass
            self._forget_entries(target.version)
            self._end_attempt()
            await self._blocked(target, str(exc), current)
            return PassResult(Result.BLOCKED, current, target.version, str(exc), _target_summary(target))
        except UpdateFailed as exc:
            if self.journal.data.phase is Phase.INSTALLING:
                self._clean_cache()  # the installer refused or failed on this image: it goes at once
            if _proven(exc, installing=handed_over):
                return await self._failed(attempt, str(exc), current, detail=exc.detail)
            return await self._not_proven(attempt, target, str(exc), current, detail=exc.detail)
        except HubError as exc:  # an unusable instruction in the pinned document (a bad asset URL)
            return await self._not_proven(attempt, target, str(exc), current)
        attempt.target_slot = outcome.target_slot
        attempt.boot_id = info.boot_id
        self.journal.transition(Phase.REBOOTING, attempt=attempt)
        await self._hooks(HookPoint.POST_INSTALL, attempt, current, attempt.from_slot, attempt.target_slot)
        return await self._reboot(attempt, current, config)

    async def _disarm_failed_target(self, attempt: Attempt, info: SlotInfo) -> None:
        """After a failed or cut install: the target must not boot. Not when the installer
        disarms it by itself (its declaration), nor when the slot still holds what it held
        before the attempt (nothing was written: it may be the committed fallback), and never
        the booted slot."""
        if self.installer.traits.disarms_failed_target:
            return
        with contextlib.suppress(OtaError, OSError):
            now = await self.installer.slot_info()
            target = now.other(attempt.from_slot)
            if target == now.booted:
                return
            if attempt.other_version is not None and now.version_of(target) == attempt.other_version:
                return
            await self.installer.mark_bad(target)

    async def _not_proven(self, attempt: Attempt, target: PinnedVersion, error: str, current: str, *, detail: str | None = None) -> PassResult:
        """The attempt failed for a reason that says nothing about the version's content (the
        image answered 404, the bytes differ from the document, the hub gave an unusable URL):
        no quarantine. The result asks the daemon to back off and try again (its exponential
        backoff, capped at the poll interval); a local install just fails."""
        if attempt.source == "local":
            return await self._failed(attempt, error, current, detail=detail, quarantine=False)
        self._forget_entries(target.version)
        self._end_attempt()
        news = self.telemetry.status.get("lastError") != error
        reason = f"{error}; not held against {target.version}, trying again later"
        await self.telemetry.update_status(
            state=State.FAILED.value, lastError=error, reason=reason, targetVersion=target.version, phase=Phase.IDLE.value, progress=None,
        )
        if news:
            await self.telemetry.emit(Event.FAILED, error=error, output=detail, targetVersion=target.version, retry=True)
        return PassResult(Result.FAILED, current, target.version, reason, _target_summary(target), backoff=True)

    async def _reboot_gate(self, attempt: Attempt, current: str, config: Config) -> PassResult | None:
        """Policy, inhibitors and pre-reboot hooks: a REBOOT_PENDING result when the reboot must wait."""
        policy = config.policy.reboot
        reason: str | None = None
        if policy == "manual":
            reason = "reboot policy 'manual': waiting for 'ota-daemon reboot' or a reboot by someone else"
        elif policy == "window" and (unsynced := clock_unsynchronised(config, self.clock.now())):
            reason = unsynced
        elif policy == "window" and not in_windows(config.policy.reboot_window, datetime.fromtimestamp(self.clock.now())):
            windows = ", ".join(w.text for w in config.policy.reboot_window or [])
            reason = f"outside the reboot window ({windows})"
        if reason is None:
            reason = await self._deferred("reboot", attempt.id, config)
        if reason is None:
            report = await self._hooks(HookPoint.PRE_REBOOT, attempt, current, attempt.from_slot, attempt.target_slot)
            if report.decision is not HookDecision.OK:
                reason = await self._defer_capped("pre-reboot", attempt.id, report.reason, config)
        if reason is None:
            return None
        await self.telemetry.update_status(state=State.REBOOTING.value, phase=Phase.REBOOTING.value, progress=100, reason=reason)
        await self.telemetry.emit(Event.REBOOT_PENDING, key=f"{attempt.id}:reboot_pending:{reason}", targetVersion=attempt.target_version, reason=reason)
        return PassResult(Result.REBOOT_PENDING, current, attempt.target_version, f"installed {attempt.target_version} into slot {attempt.target_slot}; {reason}")

    async def _reboot(self, attempt: Attempt, current: str, config: Config, *, gated: bool = False) -> PassResult:
        if not gated:
            waiting = await self._reboot_gate(attempt, current, config)
            if waiting is not None:
                return waiting
        if attempt.target_slot is not None:
            # how often the bootloader tried the slot so far: after the reboot, more means it ran
            with contextlib.suppress(OtaError):
                state = (await self.installer.slot_info()).slots.get(attempt.target_slot)
                attempt.tries_seen = state.tries if state else None
        attempt.reboot_requested = True
        self.journal.save("reboot-requested")
        # the state stays `installing` through an immediate reboot: one status write less,
        # and the next pass reports the outcome (`rebooting` is for a reboot that waits)
        await self.telemetry.update_status(phase=Phase.REBOOTING.value, progress=100)
        await self.telemetry.emit(Event.REBOOTING, targetVersion=attempt.target_version, targetSlot=attempt.target_slot)
        await self.telemetry.flush()
        await self.installer.reboot(spare=True)
        return PassResult(Result.REBOOTING, current, attempt.target_version, f"installed {attempt.target_version} into slot {attempt.target_slot}; rebooting")



def _proven(exc: UpdateFailed, *, installing: bool) -> bool:
    """Did this failure prove something about the version's content (quarantine), or was it
    the way there (back off)?"""
    if isinstance(exc, LoopDetected | InstallerError):
        return True
    if isinstance(exc, IntegrityError) or exc.phase == "downloading":
        return False
    return installing


#: the hub's last config property, for passes in which the hub does not answer
HUB_CONFIG_FILE = "hub-config.json"


def _read_saved_overlay(path: Path) -> Any:
    try:
        raw = _read_regular(path, 1 << 20)
        return json.loads(raw) if isinstance(raw, bytes) else None
    except (OSError, ValueError, RecursionError):
        return None


def _save_overlay(path: Path, overlay: Any) -> None:
    """Keep the hub's property (written only when it changed; removed when the hub has none)."""
    try:
        if overlay is None:
            if path.exists():
                with effect("state.hub-config"):
                    path.unlink(missing_ok=True)
            return
        data = json.dumps(overlay, sort_keys=True).encode()
        if _read_saved_overlay(path) != json.loads(data):
            with effect("state.hub-config"):
                atomic_write(path, data)
    except (OSError, ValueError, TypeError, RecursionError):
        return  # the overlay applies this pass all the same
