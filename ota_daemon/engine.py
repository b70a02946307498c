"""The reconcile pass: one state machine, used by the daemon, ``check``, ``install`` and the demo.

A pass:

1. loads the journal and the installer's slot facts and reads the running version;
2. finishes what a reboot interrupted (:func:`resume_action`: commit when booted into the
   target, rollback when not, ask again for a reboot that did not happen);
3. computes the effective config (local file ⊕ the hub's allow-listed config property);
4. resolves the tag **once** to a pinned version; everything later uses the pin;
5. decides (:func:`decide`, a pure function): nothing, install, refuse, or defer;
6. acquires the image (URL hand-off, verified stream, or verified resumable file);
7. installs into the inactive slot;
8. journals ``rebooting`` before asking for the reboot.

Every transition is written to the journal before its side effect (:mod:`ota_daemon.state`).
Decisions are pure functions of (journal, slot info, pinned version, config, time) so they can
be tested as tables without processes.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from ota_daemon.clock import Clock
from ota_daemon.config import Config, PolicyConfig, Window, apply_overlay
from ota_daemon.download import Downloader, local_path
from ota_daemon.errors import (
    ConfigError,
    HealthCheckFailed,
    HubError,
    NoSpace,
    OtaError,
    TransientError,
    UpdateFailed,
)
from ota_daemon.health import HealthGate
from ota_daemon.hooks import HookDecision, HookPoint, HookReport, hook_env, run_hooks
from ota_daemon.hubs.base import Hub
from ota_daemon.inhibit import deferral_decision, scan
from ota_daemon.installers.base import Installer
from ota_daemon.model import (
    Asset,
    FileSource,
    InstallSource,
    PinnedVersion,
    SlotInfo,
    SourceKind,
    StreamSource,
    UrlSource,
    VersionDocument,
)
from ota_daemon.redact import redact_url
from ota_daemon.state import (
    AssetRef,
    Attempt,
    Journal,
    JournalData,
    Outcome,
    Phase,
    QuarantineEntry,
    atomic_write,
    new_attempt_id,
)
from ota_daemon.telemetry import Event, State, Telemetry

log = structlog.get_logger("ota_daemon.engine")


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
    ABANDON_INSTALL = "abandon_install"  # crashed while writing the slot: disarm it, start over
    REQUEST_REBOOT = "request_reboot"  # installed, the reboot has not happened yet
    WAIT_REBOOT = "wait_reboot"  # installed, the policy says someone else reboots
    COMMIT = "commit"  # booted the target on trial: health gate, then commit
    COMPLETE = "complete"  # booted the target and it is committed already
    ROLLED_BACK = "rolled_back"  # after the reboot the old slot runs: the new one did not stick
    ADOPT_TRIAL = "adopt_trial"  # no journal, but the booted slot is on trial: gate and commit it


def resume_action(journal: JournalData, info: SlotInfo, *, reboot_policy: str) -> Resume:
    """What a pass must finish before anything else, one case per phase."""
    attempt = journal.attempt
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
            # The inactive slot may be half written: it must not boot. Start the install again.
            return Resume.ABANDON_INSTALL
        case Phase.REBOOTING if attempt.boot_id == info.boot_id or (
            not attempt.reboot_requested and info.booted != attempt.target_slot
        ):
            # Same boot as when the install finished, or a reboot that was not ours and did not
            # try the new slot (tools that arm it only when we reboot): the trial is still to come.
            if reboot_policy == "manual":
                return Resume.WAIT_REBOOT
            return Resume.REQUEST_REBOOT
        case Phase.REBOOTING | Phase.COMMITTING if info.booted == attempt.target_slot:
            # Running the new slot: gate and commit (idempotent) unless our commit went through
            # already. Not from info.committed: RAUC cannot tell a trial boot from a good one.
            return Resume.COMPLETE if attempt.committed else Resume.COMMIT
        case Phase.REBOOTING | Phase.COMMITTING:
            # Rebooted, but the old slot runs: the bootloader fell back, or we rolled back.
            return Resume.ROLLED_BACK
    return Resume.NOTHING  # pragma: no cover - every phase is matched above


class Action(enum.StrEnum):
    NONE = "none"
    INSTALL = "install"
    REFUSE = "refuse"
    DEFER = "defer"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: ``1.10.0 > 1.9.2``, ``build-20260401 > build-20251231``."""
    parts: list[tuple[int, int | str]] = []
    for chunk in re.findall(r"\d+|[A-Za-z]+", version):
        parts.append((1, int(chunk)) if chunk.isdigit() else (0, chunk.lower()))
    return tuple(parts)


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
) -> Decision:
    """Install, do nothing, refuse or defer: a pure function of its arguments."""
    if target.version == current_version:
        return Decision(Action.NONE, f"running {current_version}, the version behind {target.path}")
    if target.system_name and system_name and target.system_name != system_name:
        return Decision(Action.REFUSE, f"version {target.version} is built for system {target.system_name!r}, this is {system_name!r}")
    entry = journal.quarantine.get(target.version)
    if entry is not None:
        return Decision(Action.REFUSE, f"version {target.version} is quarantined: {entry.reason} (clear with 'ota-daemon retry {target.version}')")
    if not policy.allow_downgrade and version_key(target.version) < version_key(current_version):
        return Decision(Action.REFUSE, f"version {target.version} is older than the running {current_version}; downgrades need policy.allow_downgrade")
    if not in_windows(policy.install_window, now_local):
        windows = ", ".join(w.text for w in policy.install_window or [])
        return Decision(Action.DEFER, f"outside the install window ({windows})")
    return Decision(Action.INSTALL, f"{current_version} -> {target.version}")


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


# =========================================================================== reading the system


def read_build_info(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_os_release(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def system_identity(config: Config, info: SlotInfo | None = None) -> tuple[str | None, str | None]:
    """(system name, running version): config, then build info, then os-release, then the installer."""
    build = read_build_info(config.system.build_info) or {}
    raw_release = build.get("release")
    release: dict[str, Any] = raw_release if isinstance(raw_release, dict) else {}
    osr = read_os_release(config.system.os_release)
    name = config.system.name or (build.get("name") if isinstance(build.get("name"), str) else None) or osr.get("IMAGE_ID")
    version = config.system.version or (release.get("version") if isinstance(release.get("version"), str) else None) or osr.get("IMAGE_VERSION")
    if not version and info is not None:
        version = info.version_of(info.booted)
    return name, version


# =========================================================================== the engine

HubFactory = Callable[[], Awaitable[Hub]]


@dataclass
class Engine:
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

    # ------------------------------------------------------------------ entry points
    async def reconcile(self, *, dry_run: bool = False) -> PassResult:
        """One full pass; what it reported reaches the hub before it returns (or is spooled)."""
        try:
            return await self._reconcile(dry_run=dry_run)
        except TransientError as exc:
            # the hub may be what is away: at least `ota-daemon status` tells
            self.telemetry.set_local(lastError=str(exc))
            raise
        finally:
            await self.telemetry.flush()

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
        self.telemetry.set_local(lastCheck=_iso(self.clock.now()))

        finished = await self._resume(data, info, current, dry_run=dry_run)
        if finished is not None:
            return finished

        config = await self._effective_config()
        path = config.hub.path
        if not path:
            raise ConfigError("hub.path: required ('repository/package/tag'), in the config file or the hub's config property")
        try:
            document = await self.hub.resolve(path)
            target = await self.pin(document, path=path, system_name=name, config=config)
        except HubError as exc:
            await self._report_error(str(exc), current)
            return PassResult(Result.FAILED, current, None, str(exc))
        if self._overlay_flags.get("retryFailed") and target.version in data.quarantine:
            await self.retry(target.version, by="hub config property retryFailed")
        decision = decide(
            journal=self.journal.data,
            current_version=current,
            system_name=name,
            target=target,
            policy=config.policy,
            now_local=datetime.fromtimestamp(self.clock.now()),
        )
        summary = _target_summary(target)
        structlog.contextvars.bind_contextvars(target_version=target.version, current_version=current)
        if decision.action is Action.NONE:
            await self._up_to_date(current, data)
            return PassResult(Result.UP_TO_DATE, current, target.version, decision.reason, summary)
        if decision.action is Action.REFUSE:
            await self._refused(target, decision.reason, current)
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
        info = await self.installer.slot_info()
        data = self.journal.load()
        name, current = system_identity(self.config, info)
        current = current or "unknown"
        finished = await self._resume(data, info, current, dry_run=False)
        if finished is not None and finished.result not in (Result.UP_TO_DATE, Result.COMPLETED):
            return finished
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
        header_version, header_name = _peek_sim_header(path) if path else (None, None)
        target_version = version or header_version or f"local-{digest[:12]}"
        if size < 0:
            size = await self._probe_size(url)
        asset = Asset(filename=(path.name if path else "image"), size=size, digest=f"sha256_{digest}", url=url)
        document = VersionDocument.model_validate(
            {"versionId": f"local-{digest[:16]}", "assets": [asset.model_dump(by_alias=True)], "metadata": {"imageVersion": target_version}, "local": True}
        )
        target = PinnedVersion(path="local", document=document, version=target_version, image=asset, version_source="local", system_name=header_name)
        if header_name and name and header_name != name:
            raise UpdateFailed(f"{source}: image is for system {header_name!r}, this is {name!r}")
        return await self._install(target, document, info, current, self.config, source_kind="local")

    async def commit_now(self, *, run_health: bool = False) -> PassResult:
        """``ota-daemon commit``: commit the booted trial slot (health gate only when asked)."""
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
        info = await self.installer.slot_info()
        data = self.journal.load()
        _, current = system_identity(self.config, info)
        attempt = data.attempt
        if data.phase is not Phase.REBOOTING or attempt is None or info.booted == attempt.target_slot:
            return PassResult(Result.UP_TO_DATE, current, None, "no installed update waits for a reboot")
        attempt.reboot_requested = True
        self.journal.save()
        await self.telemetry.update_status(state=State.REBOOTING.value, phase=Phase.REBOOTING.value)
        await self.telemetry.emit(Event.REBOOTING, key=f"{attempt.id}:reboot:{info.boot_id}", targetVersion=attempt.target_version, by="operator")
        await self.telemetry.flush()
        await self.installer.reboot(spare=True)
        return PassResult(Result.REBOOTING, current, attempt.target_version, f"rebooting into slot {attempt.target_slot} for {attempt.target_version}")

    async def retry(self, version: str, *, by: str = "operator") -> bool:
        """Clear a version's quarantine and attempt count. True when there was something to clear."""
        data = self.journal.load()
        had = data.quarantine.pop(version, None) is not None
        had = data.attempts_per_version.pop(version, None) is not None or had
        if any(k.startswith(f"{version}:") for k in data.phase_entries):
            self._forget_entries(version)
            had = True
        if had:
            self.journal.save()
            await self.telemetry.update_status(quarantined=_quarantine_list(data))
            await self.telemetry.emit(Event.WARNING, f"quarantine of {version} cleared by {by}", version=version)
        return had

    # ------------------------------------------------------------------ pinning
    async def pin(self, document: VersionDocument, *, path: str, system_name: str | None, config: Config) -> PinnedVersion:
        """Choose the image asset and the version to compare, from the one resolved document."""
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
        if info_asset is not None:
            build = await self._build_info(document, info_asset)
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
        return PinnedVersion(path=path, document=document, version=version, image=image, version_source=source, system_name=built_for)

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
        atomic_write(cache, json.dumps(cached).encode())
        return build

    # ------------------------------------------------------------------ the install half
    async def _effective_config(self) -> Config:
        try:
            overlay = await self.hub.read_config()
        except HubError as exc:
            overlay = None
            await self._warn_once("config-property", f"hub config property unreadable: {exc}; local config in force")
        config, problems = apply_overlay(self.config, overlay)
        self._overlay_flags = {k: overlay.get(k) for k in ("retryFailed",)} if isinstance(overlay, dict) else {}
        for problem in problems:
            await self._warn_once(f"overlay:{problem}", problem)
        self.effective = config
        publish = {"path": config.hub.path}
        if self.config.installer.kind == "rugix":
            publish["rugix"] = {"useBundleHash": self.config.installer.rugix.use_bundle_hash}  # type: ignore[assignment]
        await self.telemetry.update_status(config=publish)
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
    ) -> PassResult:
        attempt = Attempt(
            id=new_attempt_id(),
            target_version=target.version,
            version_id=target.version_id,
            path=target.path,
            image=AssetRef(filename=target.image.filename, size=target.image.size, digest=target.image.digest, asset_id=target.image.asset_id),
            from_version=current,
            from_slot=info.booted,
            started_at=self.clock.now(),
            bundle_hash=_bundle_hash(target.image) if config.installer.kind == "rugix" and config.installer.rugix.use_bundle_hash else None,
            source=source_kind,
        )
        if config.installer.kind == "rugix" and config.installer.rugix.use_bundle_hash and not attempt.bundle_hash:
            raise HubError(f"asset {target.image.filename!r} has no metadata.rugix.bundleHash, and installer.rugix.use_bundle_hash is set")
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
        quiet = self.telemetry.status.get("state") == State.BLOCKED.value and self.telemetry.status.get("targetVersion") == target.version
        if not quiet:
            await self.telemetry.emit(Event.UPDATE_AVAILABLE, currentVersion=current, targetVersion=target.version, attemptId=attempt.id)
            await self.telemetry.update_status(state=State.INSTALLING.value, targetVersion=target.version, attemptId=attempt.id, phase=Phase.DOWNLOADING.value, progress=0, reason=None)
        try:
            source: InstallSource
            if mode is SourceKind.FILE:
                count = self.journal.transition(Phase.DOWNLOADING, attempt=attempt)
                self._loop_guard(Phase.DOWNLOADING, count)
                path = await self._download(target, document, quiet=quiet)
                source = FileSource(path)
            elif mode is SourceKind.STREAM:
                source = StreamSource(
                    self.downloader.stream(url=self._url_provider(document, target.image), asset=target.image, progress=self.telemetry.progress),
                    size=target.image.size,
                )
            else:
                source = UrlSource(await self._url_provider(document, target.image)(), size=target.image.size, sha256=target.image.sha256)
            count = self.journal.transition(Phase.INSTALLING, attempt=attempt)
            self._loop_guard(Phase.INSTALLING, count)
            await self.telemetry.update_status(state=State.INSTALLING.value, targetVersion=target.version, attemptId=attempt.id, phase=Phase.INSTALLING.value, progress=0, reason=None)
            await self.telemetry.emit(Event.INSTALLING, targetVersion=target.version, mode=mode.value, fromSlot=info.booted)
            self.telemetry.reset_progress()
            try:
                outcome = await self.installer.install(source, progress=self.telemetry.progress, version=target.version, bundle_hash=attempt.bundle_hash)
            except BaseException:
                # whatever happened, the half-written slot must not boot
                with contextlib.suppress(OtaError, OSError):
                    await self.installer.mark_bad(info.other(info.booted))
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
            return await self._failed(attempt, str(exc), current, detail=exc.detail)
        except HubError as exc:  # an unusable instruction in the pinned document (a bad asset URL)
            return await self._failed(attempt, str(exc), current)
        attempt.target_slot = outcome.target_slot
        attempt.boot_id = info.boot_id
        self.journal.transition(Phase.REBOOTING, attempt=attempt)
        await self._hooks(HookPoint.POST_INSTALL, attempt, current, attempt.from_slot, attempt.target_slot)
        return await self._reboot(attempt, current, config)

    def _loop_guard(self, phase: Phase, count: int) -> None:
        limit = self.config.policy.max_phase_entries
        if count > limit:
            raise UpdateFailed(
                f"entered {phase.value} {count} times without progress (a crash or power loss each time); stopped "
                f"after policy.max_phase_entries = {limit}",
                phase=phase.value,
            )

    async def _reboot_gate(self, attempt: Attempt, current: str, config: Config) -> PassResult | None:
        """Policy, inhibitors and pre-reboot hooks: a REBOOT_PENDING result when the reboot must wait."""
        policy = config.policy.reboot
        reason: str | None = None
        if policy == "manual":
            reason = "reboot policy 'manual': waiting for 'ota-daemon reboot' or a reboot by someone else"
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
        await self.telemetry.emit(Event.REBOOT_PENDING, f"update installed, reboot deferred: {reason}", key=f"{attempt.id}:reboot_pending:{reason}", targetVersion=attempt.target_version, reason=reason)
        return PassResult(Result.REBOOT_PENDING, current, attempt.target_version, f"installed {attempt.target_version} into slot {attempt.target_slot}; {reason}")

    async def _reboot(self, attempt: Attempt, current: str, config: Config, *, gated: bool = False) -> PassResult:
        if not gated:
            waiting = await self._reboot_gate(attempt, current, config)
            if waiting is not None:
                return waiting
        attempt.reboot_requested = True
        self.journal.save()
        await self.telemetry.update_status(state=State.REBOOTING.value, phase=Phase.REBOOTING.value, progress=100)
        await self.telemetry.emit(Event.REBOOTING, targetVersion=attempt.target_version, targetSlot=attempt.target_slot)
        await self.telemetry.flush()
        await self.installer.reboot(spare=True)
        return PassResult(Result.REBOOTING, current, attempt.target_version, f"installed {attempt.target_version} into slot {attempt.target_slot}; rebooting")

    # ------------------------------------------------------------------ the post-reboot half
    async def _resume(self, data: JournalData, info: SlotInfo, current: str, *, dry_run: bool) -> PassResult | None:
        action = resume_action(data, info, reboot_policy=(self.effective or self.config).policy.reboot)
        attempt = data.attempt
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
                with contextlib.suppress(OtaError):
                    await self.installer.mark_bad(info.other(attempt.from_slot))
                # the next try goes through the loop guard; keep the count
                self._end_attempt()
                return None
            case Resume.WAIT_REBOOT:
                assert attempt is not None
                return PassResult(Result.REBOOT_PENDING, current, attempt.target_version, f"{attempt.target_version} installed in slot {attempt.target_slot}; waiting for a reboot")
            case Resume.REQUEST_REBOOT:
                assert attempt is not None
                config = self.effective or self.config
                waiting = await self._reboot_gate(attempt, current, config)
                if waiting is not None:
                    return waiting  # a deferred reboot is no crash loop: not counted
                count = self.journal.transition(Phase.REBOOTING)
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
            if attempt.source != "adopted" and current != attempt.target_version and not self.config.system.version:
                raise HealthCheckFailed(
                    f"the new slot runs version {current}, expected {attempt.target_version}", check="version"
                )
            if run_health and self.health is not None:
                await self.health.run()
            await self.installer.commit()
            attempt.committed = True
            self.journal.save()
        except UpdateFailed as exc:
            check = exc.check if isinstance(exc, HealthCheckFailed) else None
            attempt.failure = str(exc)
            self.journal.save()
            await self.telemetry.emit(Event.HEALTH_CHECK_FAILED if check else Event.FAILED, str(exc), key=f"{attempt.id}:gate", check=check, error=str(exc), output=exc.detail)
            with contextlib.suppress(OtaError):
                await self.installer.mark_bad(info.booted)
            await self._hooks(HookPoint.ON_FAILURE, attempt, current, attempt.from_slot, attempt.target_slot)
            await self.telemetry.flush()
            await self.installer.reboot(spare=False)
            return PassResult(Result.ROLLED_BACK, current, attempt.target_version, f"{exc}; rolling back to slot {attempt.from_slot}")
        return await self._complete(attempt, current)

    # The three endings below report first (status, then an event with a dedupe key) and write
    # the journal last: a power cut in between repeats the report, which the key makes
    # harmless, instead of losing it.

    async def _complete(self, attempt: Attempt, current: str) -> PassResult:
        await self.telemetry.update_status(state=State.COMPLETED.value, currentVersion=current, targetVersion=None, failureCount=0, lastError=None, phase=Phase.IDLE.value, progress=None, attemptId=attempt.id, reason=None)
        await self.telemetry.emit(Event.COMPLETED, key=f"{attempt.id}:completed", currentVersion=current, fromVersion=attempt.from_version)
        data = self.journal.data
        self._forget_entries(attempt.target_version)
        data.attempts_per_version.pop(attempt.target_version, None)
        self._end_attempt(
            failure_count=0,
            last_error=None,
            last_outcome=Outcome(state="completed", attempt_id=attempt.id, version=attempt.target_version, at=self.clock.now()),
        )
        self._clean_cache()
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
        await self.telemetry.emit(Event.ROLLBACK, message, key=f"{attempt.id}:rollback", targetVersion=attempt.target_version, currentVersion=current, error=reason)
        self._end_attempt(
            failure_count=data.failure_count + 1,
            last_error=message,
            last_outcome=Outcome(state="rollback", attempt_id=attempt.id, version=attempt.target_version, error=reason, at=self.clock.now()),
        )
        await self._hooks(HookPoint.ON_ROLLBACK, attempt, current, attempt.from_slot, attempt.target_slot)
        return PassResult(Result.ROLLED_BACK, current, attempt.target_version, message)

    async def _failed(self, attempt: Attempt, error: str, current: str, *, detail: str | None = None) -> PassResult:
        data = self.journal.data
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

    def _quarantine(self, attempt: Attempt, reason: str) -> None:
        data = self.journal.data
        if attempt.source == "adopted":
            return
        count = data.attempts_per_version.get(attempt.target_version, 0) + 1
        data.attempts_per_version[attempt.target_version] = count
        if count >= self.config.policy.max_attempts:
            data.quarantine[attempt.target_version] = QuarantineEntry(
                version=attempt.target_version, version_id=attempt.version_id, reason=reason, at=self.clock.now(), attempts=count
            )

    async def _hooks(self, point: HookPoint, attempt: Attempt, current: str, from_slot: str | None, target_slot: str | None) -> HookReport:
        """Run a hook point; a failing report-only hook becomes a warning event, never an error."""
        env = hook_env(current_version=current, target_version=attempt.target_version, attempt_id=attempt.id, from_slot=from_slot, target_slot=target_slot)
        report = await run_hooks(point, config=self.config.hooks, env=env, clock=self.clock)
        if report.failures or report.skipped:
            await self.telemetry.emit(Event.WARNING, f"{point.value} hooks: {report.reason}", **report.to_attributes())
        return report

    async def _deferred(self, what: str, subject: str, config: Config) -> str | None:
        """An application's lease holds ``what`` back: the reason, or None to go on (also past the cap)."""
        state = scan(config.policy.inhibit_dir, now=self.clock.now())
        for problem in state.problems:
            await self._warn_once(f"lease:{problem}", f"inhibitor lease ignored: {problem}")
        key = f"{what}:{subject}"
        since = self.journal.data.deferred_since.get(key)
        defer, reason = deferral_decision(state, what, blocked_since=since, now=self.clock.now(), max_deferral=config.policy.max_deferral)
        if defer:
            if since is None:
                self.journal.data.deferred_since[key] = self.clock.now()
                self.journal.save()
            return reason
        if since is not None:
            del self.journal.data.deferred_since[key]
            self.journal.save()
        if state.for_(what).inhibited:  # past policy.max_deferral: proceeding, say so
            await self.telemetry.emit(Event.WARNING, reason, what=what)
        return None

    async def _defer_capped(self, what: str, subject: str, reason: str, config: Config) -> str | None:
        """A deferral asked for by a hook, capped by policy.max_deferral like a lease."""
        key = f"{what}:{subject}"
        now = self.clock.now()
        since = self.journal.data.deferred_since.setdefault(key, now)
        if since == now:
            self.journal.save()
        if now - since >= config.policy.max_deferral:
            del self.journal.data.deferred_since[key]
            self.journal.save()
            await self.telemetry.emit(Event.WARNING, f"{reason}; deferred past policy.max_deferral: proceeding anyway", what=what)
            return None
        return reason

    def _guard_reason(self, attempt: Attempt) -> str | None:
        """What ota-daemon-guard recorded, when it rebooted the trial slot of this attempt."""
        try:
            record = json.loads((self.config.state.dir / "guard.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("at"), int | float) or record["at"] < attempt.started_at:
            return None
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
            self.journal.save()

    def _clean_cache(self) -> None:
        cache = self.config.cache_dir
        with contextlib.suppress(OSError):
            for entry in cache.iterdir():
                if entry.is_file():
                    entry.unlink()

    # ------------------------------------------------------------------ reporting helpers
    async def _up_to_date(self, current: str, data: JournalData) -> None:
        if data.last_outcome is not None and data.last_outcome.state in ("rollback", "failed") and data.quarantine:
            return  # keep the failure visible until the tag moves
        status = self.telemetry.status
        fields: dict[str, Any] = {"currentVersion": current, "targetVersion": None, "phase": Phase.IDLE.value, "progress": None, "reason": None}
        announce = status.get("state") not in (State.COMPLETED.value, State.IDLE.value) or bool(status.get("lastError"))
        if announce:
            fields.update(state=State.COMPLETED.value, failureCount=0, lastError=None)
        elif "state" not in status:
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
            await self.telemetry.emit(Event.BLOCKED, f"update deferred: {reason}", targetVersion=target.version, currentVersion=current, reason=reason)

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


# =========================================================================== small helpers


def _bundle_hash(asset: Asset) -> str | None:
    rugix = asset.metadata.get("rugix")
    if isinstance(rugix, dict) and isinstance(rugix.get("bundleHash"), str):
        return str(rugix["bundleHash"])
    return None


def _target_summary(target: PinnedVersion) -> dict[str, Any]:
    return {
        "path": target.path,
        "versionId": target.version_id,
        "version": target.version,
        "versionSource": target.version_source,
        "image": {"filename": target.image.filename, "size": target.image.size, "digest": target.image.digest, "assetId": target.image.asset_id},
    }


def _quarantine_list(data: JournalData) -> list[dict[str, Any]]:
    return [{"version": q.version, "reason": q.reason, "attempts": q.attempts, "at": _iso(q.at)} for q in data.quarantine.values()]


def _iso(ts: float) -> str:
    from ota_daemon.clock import iso

    return iso(ts)


def _agent() -> str:
    from ota_daemon import __version__

    return f"ota-daemon/{__version__}"


async def _sha256_file(path: Path) -> str:
    import asyncio

    def run() -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    return await asyncio.to_thread(run)


def _peek_sim_header(path: Path) -> tuple[str | None, str | None]:
    from ota_daemon.installers.simulated import parse_header

    try:
        with open(path, "rb") as fh:
            header = parse_header(fh.read(4096))
    except OSError:
        return None, None
    if not header:
        return None, None
    version = header.get("version")
    name = header.get("name")
    return (str(version) if version else None), (str(name) if name else None)
