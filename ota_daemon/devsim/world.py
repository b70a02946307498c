"""One simulated device in its world: repository, hub, power, clock — and the invariants.

A :class:`World` runs the real :class:`~ota_daemon.daemon.Daemon` pass by pass (its
``one_pass``: backoff, jitter, the loop's error handling) with the real engine, journal,
telemetry, downloader, health gate loop and static hub, on a :class:`FakeClock`, over an
installer model from :mod:`.models`. The hub is wrapped to fail on demand (outages, refused
writes) and to count what it is asked.

Power cuts: :meth:`World.arm_cut` names a cut point; when the code reaches it the disk (state
directory, cache) and the model are frozen as they are at that instant and the pass ends with
:class:`~.models.PowerCut`; whatever the dying process still did is thrown away at the next
power-on. Cut points are the daemon's (:mod:`ota_daemon.faults`: ``journal:<from>-><to>``,
``download:<bytes>``, ``install:<percent>``), the models' (``model:install:*``) and the hub
wrapper's (``hub:publish_status``, ``hub:publish_events`` before the write reaches the hub).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon import faults
from ota_daemon.clock import FakeClock
from ota_daemon.config import Config, HealthCheckConfig, build_config
from ota_daemon.devsim.models import (
    MODELS,
    Behaviour,
    BrickedError,
    Model,
    PowerCut,
    sim_image,
)
from ota_daemon.engine import Engine, PassResult
from ota_daemon.errors import HubError, TransientError
from ota_daemon.health import CheckResult, HealthGate
from ota_daemon.model import Asset, VersionDocument
from ota_daemon.state import Journal, Phase, atomic_write
from ota_daemon.telemetry import IN_FLIGHT_STATES, Telemetry

SYSTEM = "devsim"
TAG_PATH = "fleet/devsim/stable"
START = 1_780_000_000.0

#: what a release can be
RELEASE_KINDS = ("good", "corrupt", "refused", "gate-fails", "dies", "no-daemon", "foreign")
#: terminal outcomes of an attempt, by the suffix of the event's dedupe key
TERMINAL = ("completed", "rollback", "failed")


@dataclass
class Release:
    version: str
    kind: str
    version_id: str
    image_file: Path
    image_bytes: bytes


@dataclass
class Counters:
    """What the hub was asked (per kind of call) and the passes run."""

    calls: Counter[str] = field(default_factory=Counter)
    passes: int = 0
    cuts: int = 0
    reboots: int = 0
    guard_reboots: int = 0
    results: Counter[str] = field(default_factory=Counter)


class SimHub:
    """The static hub, wrapped: outages, refused writes, counters, and cut points on writes.

    Writes are delivered nowhere (a static hub has no write side); the last status written is
    kept so tests can compare it with the journal."""

    kind = "static"

    def __init__(self, inner: Any, world: World) -> None:
        self.inner = inner
        self.world = world
        self.invalidate = getattr(inner, "invalidate", None)

    def _up(self, what: str) -> None:
        self.world.counters.calls[what] += 1
        if self.world.hub_down:
            raise TransientError(f"hub unreachable ({what}): connection refused")

    async def resolve(self, path: str) -> VersionDocument:
        self._up("resolve")
        document: VersionDocument = await self.inner.resolve(path)
        return document

    async def issue_url(self, document: VersionDocument, asset: Asset) -> str:
        self._up("issue_url")
        url: str = await self.inner.issue_url(document, asset)
        return url

    async def read_config(self) -> Any | None:
        self._up("read_config")
        return self.world.hub_config

    async def publish_status(self, status: dict[str, Any]) -> None:
        self.world.effect("hub:publish_status")
        self._up("publish_status")
        if self.world.refuse_writes:
            raise HubError("the hub refused the status write: property dev.nexigon.ota.status is protected")
        self.world.hub_status = dict(status)

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        self.world.effect("hub:publish_events")
        self._up("publish_events")
        if self.world.refuse_writes:
            raise HubError("the hub refused the events")
        self.world.hub_events.extend(events)

    async def ping(self) -> None:
        self._up("ping")

    async def aclose(self) -> None:
        await self.inner.aclose()


class SimHealth(HealthGate):
    """The real gate loop (deadline, interval, the clock); the checks ask the simulated system."""

    def __init__(self, world: World, config: Config) -> None:
        super().__init__(config.health, hub=None, clock=world.clock)
        self.world = world

    async def run_check(self, check: HealthCheckConfig) -> CheckResult:
        behaviour = self.world.model.behaviour()
        ok = behaviour is not Behaviour.GATE_FAILS
        return CheckResult(check.label, ok, "" if ok else "app: exited with 3 (simulated failing application)")

    async def run(self) -> list[CheckResult]:
        results = await super().run()
        self.world.gate_passed_boots.add(self.world.model.boot_id)
        return results


class _Armed(list[str]):
    """What :mod:`ota_daemon.faults` sees as armed: records every point it is asked about."""

    def __init__(self, world: World) -> None:
        super().__init__([world.cut_at] if world.cut_at else [])
        self.world = world

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.world.reached[name] += 1
        return super().__contains__(name)


class World:
    def __init__(
        self, root: Path, kind: str = "simulated", *, seed: int = 0, interval: str = "4h", jitter: str = "5m",
        heartbeat: str | None = None, hub: dict[str, Any] | None = None, publish_base: bool = True, http: bool = False,
    ) -> None:
        self.root = root
        self.kind = kind
        self.rng = random.Random(seed)
        self.clock = FakeClock(START)
        self.repo_dir = root / "repository"
        self.state_dir = root / "state"
        self.device_dir = root / "device"
        self.model: Model = MODELS[kind](SYSTEM, "1.0.0", effect=self.effect, root=self.device_dir)
        self.counters = Counters()
        self.reached: Counter[str] = Counter()
        self.violations: list[str] = []
        self.cut_at: str | None = None
        self.crash_only = False
        self.powered = True
        self._frozen: tuple[Path, dict[str, Any]] | None = None
        self.hub_down = False
        self.refuse_writes = False
        self.disk_full = False
        #: download.mode = "stream" where the installer takes a stream (else "file")
        self.stream = False
        self.hub_config: dict[str, Any] | None = None
        self.hub_status: dict[str, Any] = {}
        self.hub_events: list[dict[str, Any]] = []
        self.releases: dict[str, Release] = {}
        self.hidden_assets: dict[Path, bytes] = {}
        self.tagged: str = "1.0.0"
        self.committed_good: set[str] = {"1.0.0"}
        #: (slot, content) of every commit the installer made of a good system
        self.committed_slots: list[tuple[str, dict[str, Any]]] = [(self.model.booted, self.model.booted_content() or {})]
        self.gate_passed_boots: set[str] = set()
        #: attempt id -> the slot its install wrote
        self.attempt_wrote: dict[str, str] = {}
        self.daemon_alive = True
        self.next_number = 1
        self.interval, self.jitter, self.heartbeat = interval, jitter, heartbeat
        #: the ``[hub]`` table of another hub (the Nexigon agent double): used as it is, unwrapped
        self.hub_tables = hub
        self._http: Any = None
        self._config: tuple[Any, Config] | None = None
        #: serve the repository over loopback HTTP (downloads into the cache, with its space check)
        self.server: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._sync_stack = contextlib.ExitStack()
        if http:
            from ota_daemon.testing import serve_directory

            self.repo_dir.mkdir(parents=True, exist_ok=True)
            self.server = self._sync_stack.enter_context(serve_directory(self.repo_dir))
        if publish_base:
            self.publish("1.0.0", "good")
        from ota_daemon.daemon import Daemon

        self.daemon = Daemon(None, config=self.config(), clock=self.clock, notifier=_Silent(), rng=random.Random(seed))
        self.daemon.engine_factory = self.open_engine
        self._wrap_installer()

    # ------------------------------------------------------------------ config and wiring
    def config(self) -> Config:
        key = (self.disk_full, self.heartbeat, self.interval, self.jitter, self.stream)
        if self._config is None or self._config[0] != key:
            self._config = (key, self._build_config())
        return self._config[1]

    def _build_config(self) -> Config:
        tables: dict[str, Any] = {
            "system": {"build_info": str(self.device_dir / "build-info.json"), "os_release": str(self.root / "os-release")},
            "hub": {"kind": "static", "url": self.server.url if self.server is not None else self.repo_dir.as_uri() + "/", "path": TAG_PATH, "allow_insecure": True},
            "installer": {"kind": self.kind},
            "state": {"dir": str(self.state_dir)},
            "poll": {"interval": self.interval, "jitter": self.jitter},
            "health": {"deadline": "60s", "interval": "10s", "checks": [{"kind": "command", "name": "app", "command": ["true"]}]},
            "policy": {"inhibit_dir": str(self.root / "inhibit.d"), "reboot": "immediate"},
            "hooks": {"dir": str(self.root / "hooks.d")},
            "download": {"free_space_margin": (1 << 50) if self.disk_full else 0, "mode": "stream" if self.stream and self.kind != "rauc" else "auto"},
        }
        if self.heartbeat is not None:
            tables["telemetry"] = {"heartbeat": self.heartbeat}
        if self.hub_tables is not None:
            tables["hub"] = self.hub_tables
        return build_config(tables, source="devsim", env={})

    @contextlib.asynccontextmanager
    async def open_engine(self, config: Config, *, clock: Any = None) -> AsyncIterator[Engine]:
        from ota_daemon.download import Downloader, make_http_client
        from ota_daemon.hubs import get_hub

        config = self.config()  # the local file as it is now (disk, heartbeat)
        if self._http is None:
            self._http = await self._stack.enter_async_context(make_http_client(config.tls, timeout=config.download.connect_timeout))
        hub: Any = get_hub(config.hub.kind, config=config, http=self._http, clock=self.clock)
        if config.hub.kind == "static":
            hub = SimHub(hub, self)
        # a static hub has no write side; the simulator's wrapper takes the writes to count and refuse them
        telemetry = Telemetry(config.state.dir, clock=self.clock, hub=hub, deliver=True, heartbeat=config.telemetry.heartbeat)
        engine = Engine(
            config=config, hub=hub, installer=self.model, journal=Journal(config.state.dir),  # type: ignore[arg-type]
            telemetry=telemetry, downloader=Downloader(config=config.download, http=self._http, clock=self.clock),
            clock=self.clock, health=SimHealth(self, config),
        )
        try:
            yield engine
        finally:
            with contextlib.suppress(Exception):
                await hub.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._sync_stack.close()

    def _wrap_installer(self) -> None:
        """Cut points around every installer call, and the commit invariant: nothing is
        committed without its gate passing on that boot."""
        model = self.model
        originals = {name: getattr(model, name) for name in ("install", "mark_bad", "reboot", "commit")}

        def wrapped(name: str) -> Any:
            original = originals[name]

            async def call(*args: Any, **kwargs: Any) -> Any:
                if name == "commit":
                    self._check_commit()
                if name == "mark_bad" and args and args[0] == model.booted:
                    self._check_mark_booted_bad()
                if name == "install":
                    # which slot each attempt writes: it may degrade that one, and only that one
                    attempt = self._journal_attempts()[0]
                    if attempt:
                        self.attempt_wrote[attempt] = model.other(model.booted)
                self.effect(f"installer:{name}:before")
                result = await original(*args, **kwargs)
                self.effect(f"installer:{name}:after")
                if name == "commit" and model.behaviour() is Behaviour.GOOD:
                    self.committed_good.add(str((model.booted_content() or {}).get("version")))
                    self.committed_slots.append((model.booted, model.booted_content() or {}))
                return result

            return call

        for name in originals:
            setattr(model, name, wrapped(name))

    def _check_mark_booted_bad(self) -> None:
        """Invariant: the booted slot is marked bad only when its gate (or version check)
        failed in this boot, i.e. while the journal says ``committing``."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads((self.state_dir / "journal.json").read_text()).get("phase") == "committing":
                return
        content = self.model.booted_content() or {}
        self.violate(f"the booted slot {self.model.booted} ({content.get('version')}) was marked bad without its gate failing in this boot")

    def _check_commit(self) -> None:
        model = self.model
        version = str((model.booted_content() or {}).get("version"))
        if model.boot_id not in self.gate_passed_boots:
            self.violate(f"commit of {version} in boot {model.boot_id} without the health gate passing in that boot")
        if model.behaviour() is Behaviour.GATE_FAILS:
            self.violate(f"committed {version}, whose health gate fails")

    # ------------------------------------------------------------------ the repository
    def publish(self, version: str, kind: str = "good", *, move_tag: bool = True) -> Release:
        """Publish ``version`` as a release of ``kind`` (:data:`RELEASE_KINDS`) and move the tag."""
        repo = self.repo_dir / "fleet"
        (repo / "assets").mkdir(parents=True, exist_ok=True)
        behaviour = {"gate-fails": Behaviour.GATE_FAILS, "dies": Behaviour.DIES, "no-daemon": Behaviour.NO_DAEMON}.get(kind, Behaviour.GOOD)
        built_for = "other-board" if kind == "refused" else SYSTEM
        payload = hashlib.sha256(f"{version}/{kind}".encode()).digest() * 64
        image = sim_image(built_for, version, behaviour, payload)
        digest = hashlib.sha256(image).hexdigest()
        stored = bytearray(image)
        if kind == "corrupt":
            stored[len(stored) // 2] ^= 0xFF
        asset_file = repo / "assets" / f"sha256_{digest}"
        asset_file.write_bytes(bytes(stored))
        info = json.dumps({"name": "other-system" if kind == "foreign" else SYSTEM, "release": {"id": f"x@{version}", "version": version}}).encode()
        info_digest = hashlib.sha256(info).hexdigest()
        (repo / "assets" / f"sha256_{info_digest}").write_bytes(info)
        version_id = f"pkg_v_devsim{self.next_number:05d}"
        self.next_number += 1
        document = {
            "versionId": version_id,
            "assets": [
                {"filename": f"{SYSTEM}.{self.model.image_ext}", "size": len(image), "digest": f"sha256_{digest}", "status": "Available", "url": f"assets/sha256_{digest}"},
                {"filename": f"{SYSTEM}.build-info.json", "size": len(info), "digest": f"sha256_{info_digest}", "status": "Available", "url": f"assets/sha256_{info_digest}"},
            ],
            "metadata": {"imageVersion": version},
        }
        versions = repo / "devsim" / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        atomic_write(versions / f"{version_id}.json", json.dumps(document).encode(), mode=0o644)
        release = Release(version, kind, version_id, asset_file, image)
        self.releases[version] = release
        if move_tag:
            self.move_tag(version)
        return release

    def move_tag(self, version: str) -> None:
        release = self.releases[version]
        document = (self.repo_dir / "fleet" / "devsim" / "versions" / f"{release.version_id}.json").read_bytes()
        tags = self.repo_dir / "fleet" / "devsim" / "tags"
        tags.mkdir(parents=True, exist_ok=True)
        atomic_write(tags / "stable.json", document, mode=0o644)
        self.tagged = version

    def hide_asset(self, version: str) -> None:
        """The image 404s (an upload still propagating)."""
        release = self.releases[version]
        if release.image_file.exists():
            self.hidden_assets[release.image_file] = release.image_file.read_bytes()
            release.image_file.unlink()

    def show_assets(self) -> None:
        for path, data in self.hidden_assets.items():
            path.write_bytes(data)
        self.hidden_assets.clear()

    # ------------------------------------------------------------------ power
    def arm_cut(self, point: str | None, *, crash: bool = False) -> None:
        """Cut the power at ``point`` (``crash``: only the daemon's process dies there; the
        system keeps running, no reboot)."""
        self.cut_at = point
        self.crash_only = crash

    def effect(self, name: str) -> None:
        """A cut point: record it; cut the power if it is the armed one; nothing runs after a cut."""
        if not self.powered:
            raise PowerCut(f"after the cut: {name}")
        self.reached[name] += 1
        if name == self.cut_at:
            self._cut(name)

    def _cut(self, name: str) -> None:
        snapshot = self.root / "at-cut"
        if snapshot.exists():
            shutil.rmtree(snapshot)
        if self.state_dir.exists():
            shutil.copytree(self.state_dir, snapshot, symlinks=True)
        self._frozen = (snapshot, self.model.snapshot())
        self.powered = False
        self.cut_at = None
        self.counters.cuts += 1
        raise PowerCut(name)

    @contextlib.contextmanager
    def _fault_hooks(self) -> Iterator[None]:
        """Route the daemon's cut points into :meth:`effect` (in-process, no SIGKILL): the
        side-effect seam's hook (``ota_daemon.effects``) where there is one, and the points
        of :mod:`ota_daemon.faults`."""
        saved = (faults._armed, faults._fire, os.environ.get(faults.ENV), os.fsync)
        faults._armed = lambda: _Armed(self)
        # what is on the simulated disk at a cut is decided by the snapshot: fsync buys nothing
        os.fsync = lambda fd: None

        def fire(name: str) -> None:
            self.reached[name] += 1
            self._cut(name)

        faults._fire = fire
        os.environ[faults.ENV] = "devsim"
        seam = _effects()
        try:
            with contextlib.ExitStack() as stack:
                if seam is not None:
                    stack.enter_context(seam.hooked(self._seam_hook))
                yield
        finally:
            faults._armed, faults._fire = saved[0], saved[1]
            os.fsync = saved[3]
            if saved[2] is None:
                os.environ.pop(faults.ENV, None)
            else:
                os.environ[faults.ENV] = saved[2]

    def _seam_hook(self, point: str) -> None:
        """The side-effect seam's hook: record the point; cut the power when it is armed."""
        seam = _effects()
        if not self.powered:
            raise seam.PowerCut(point) if seam is not None else PowerCut(point)
        self.reached[point] += 1
        if point == self.cut_at:
            try:
                self._cut(point)
            except PowerCut:
                raise (seam.PowerCut(point) if seam is not None else PowerCut(point)) from None

    def _thaw(self) -> None:
        """Put back the state directory and the tool's state as the cut froze them."""
        if self._frozen is None:
            return
        snapshot, model_state = self._frozen
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        if snapshot.exists():
            snapshot.rename(self.state_dir)
        self.model.restore(model_state)
        self._frozen = None

    def restart_process(self) -> None:
        """The daemon died at the cut point; the system runs on: the files and the tool's
        state are what they were when it died, and no reboot happens."""
        self._thaw()
        self.powered = True
        self.crash_only = False

    def power_on(self) -> None:
        """Reboot or power on: the disk as the cut left it, then the bootloader's choice."""
        self._thaw()
        self.powered = True
        self.counters.reboots += 1
        try:
            self.model.power_on()
        except BrickedError as exc:
            self.violate(f"bricked: {exc}")
            raise
        self.daemon_alive = self.model.behaviour() is not Behaviour.NO_DAEMON
        self.clock.advance(30.0)  # a boot takes a while

    # ------------------------------------------------------------------ running
    async def run_pass(self) -> PassResult | str:
        """One pass of the daemon loop (if the daemon runs in this boot); then the clock moves
        on by the delay the loop chose. Returns the result, or ``"cut"``/``"dead"``/an error."""
        if not self.daemon_alive:
            return "dead"
        self.counters.passes += 1
        self.daemon.config = self.config()
        fallback = self._fallback()
        delay: float = 0.0
        outcome: PassResult | str = "error"
        self.daemon.last_result = None
        with self._fault_hooks():
            try:
                delay = await self.daemon.one_pass()
                outcome = self.daemon.last_result or f"error ({self.daemon.last_status})"
            except BaseException as exc:
                if not _is_power_cut(exc):
                    raise
                outcome = "cut"
        self.counters.results[str(getattr(outcome, "result", outcome)).split(" (")[0]] += 1
        if outcome == "cut":
            if self.crash_only:
                self.restart_process()
                return "crash"
            self.power_on()
            return "cut"
        self.check_after_pass(fallback)
        if self.model.state.get("reboot_requested"):
            self.power_on()
        else:
            self.clock.advance(delay)
        return outcome

    def run_guard(self) -> int:
        """``ota-daemon-guard`` as its timer starts it: guard.timeout after boot. A cut armed at
        one of its effects (``guard.record``, ``guard.mark-bad`` on RAUC, ``guard.reboot``) cuts the power there."""
        from ota_daemon import guard
        from ota_daemon.guard import Env, GuardSettings, run

        if not self.powered:
            return 0
        settings = GuardSettings(kind=self.kind, timeout=1800.0, commit_grace=120.0, state_dir=self.state_dir,
                                 boot_id_file=self.device_dir / "boot_id", booted_from="cmdline",
                                 cmdline_path=self.device_dir / "cmdline", cmdline_map={})
        rebooted: list[bool] = []

        def reboot(settings: GuardSettings) -> None:
            """The guard's own reboot (``guard.reboot_system``): what it asks of the tool goes to
            the model, its reboot command does nothing here; then the power cycle."""
            rebooted.append(True)
            if self.kind == "simulated":
                return  # the guard applies the file-backed simulated device itself; the model reboots below
            saved = guard.run_tool
            guard.run_tool = self._tool_runner
            try:
                guard.reboot_system(dataclasses.replace(settings, reboot_command=("true",)))
            finally:
                guard.run_tool = saved

        env = Env(uptime=lambda: 1800.0 + 60.0, now=self.clock.now, sleep=self.clock.advance,
                  probe=self.model.guard_facts, reboot=reboot, log=lambda message, level: None)
        booted, content = self.model.booted, self.model.booted_content()
        try:
            with self._fault_hooks():
                code = run(settings, env)
        except BaseException as exc:
            if not _is_power_cut(exc):
                raise
            self.counters.results["cut"] += 1
            if (booted, content) in self.committed_slots and not self._slot_bootable(booted):
                self.violate(f"the guard made slot {booted} holding {(content or {}).get('version')}, which the installer had committed, unbootable")
            self.power_on()
            return 0
        if rebooted:
            self.counters.guard_reboots += 1
            # the guard is for trials nobody committed: never a system the installer committed
            if (booted, content) in self.committed_slots:
                self.violate(f"the guard rebooted away from slot {booted} holding {(content or {}).get('version')}, which the installer had committed")
            self.power_on()
        return code

    def _tool_runner(self, argv: Any, env: Any = None) -> Any:
        """Tool commands the guard runs, answered by the model (``rauc status mark-bad booted``)."""
        import subprocess

        args = list(argv)[1:]
        if self.kind == "rauc" and args[:2] == ["status", "mark-bad"]:
            slot = self.model.booted if args[2:3] in (["booted"], []) else args[2]
            # ``rauc status mark-bad`` alone: the boot state goes bad; the primary stays where it
            # is, as with the custom bootloader backend of tests/rauc (U-Boot's would move it)
            self.model.state["boot"][slot] = "bad"
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    # ------------------------------------------------------------------ invariants
    def violate(self, message: str) -> None:
        if message not in self.violations:
            self.violations.append(message)

    def _fallback(self) -> tuple[str, dict[str, Any]] | None:
        """The slot other than the booted one when it holds a committed good version."""
        other = self.model.other(self.model.booted)
        content = self.model.content(other)
        if content and content.get("complete") and content.get("version") in self.committed_good and content.get("behaviour") == "good":
            return other, content
        return None

    def check_after_pass(self, fallback: tuple[str, dict[str, Any]] | None) -> None:
        # the fallback is never degraded by an attempt that did not write it
        if fallback is not None:
            slot, content = fallback
            wrote = {self.attempt_wrote.get(a) for a in self._journal_attempts() if a}
            if self.model.content(slot) == content and slot not in wrote and not self._slot_bootable(slot):
                self.violate(f"fallback slot {slot} holding committed {content.get('version')} was made unbootable by an attempt that did not write it")
        self.check_invariants()
        # the status matches the journal once a pass has run (a cut between the journal write
        # and the status write that follows it leaves the status behind until the next pass)
        journal = Journal(self.state_dir).load() if (self.state_dir / "journal.json").exists() else None
        status = self.status()
        if journal is not None and journal.phase is Phase.IDLE and status.get("state") in IN_FLIGHT_STATES:
            self.violate(f"status says {status.get('state')} while the journal is idle")
        # no temporary file outlives a pass
        for path in self.state_dir.rglob("*"):
            if path.name.endswith(".tmp"):
                self.violate(f"temporary file {path.relative_to(self.root)} outlived a pass")

    def _journal_attempts(self) -> tuple[str | None, str | None]:
        """(the journal's current attempt, the attempt its last outcome names)."""
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((self.state_dir / "journal.json").read_text())
            attempt = data.get("attempt") if isinstance(data, dict) else None
            outcome = data.get("last_outcome") if isinstance(data, dict) else None
            return (
                str(attempt["id"]) if isinstance(attempt, dict) and attempt.get("id") else None,
                str(outcome["attempt_id"]) if isinstance(outcome, dict) and outcome.get("attempt_id") else None,
            )
        return None, None

    def _slot_bootable(self, slot: str) -> bool:
        state = self.model.info().slots.get(slot)
        return state is None or state.bootable

    def check_invariants(self) -> None:
        """At rest: whatever fails from now on, some bootable slot holds a committed good version;
        each attempt's ending was reported exactly once; the status matches the journal."""
        model = self.model
        saved = model.snapshot()
        try:
            def untrusted(slot: str) -> bool:
                content = model.content(slot)
                return not (content and content.get("complete") and content.get("version") in self.committed_good and content.get("behaviour") == "good")

            try:
                model.power_on(dies=untrusted, what_if=True)
            except BrickedError:
                self.violate(f"no committed good version would boot if the new one failed: {json.dumps(saved)[:300]}")
        finally:
            model.restore(saved)
        self._check_reports()

    def _check_reports(self) -> None:
        events = self.events()
        endings: Counter[str] = Counter()
        for event in events:
            key = str(event.get("attributes", {}).get("dedupe") or "")
            attempt, _, suffix = key.rpartition(":")
            if suffix in TERMINAL and attempt:
                endings[attempt] += 1
        for attempt, count in endings.items():
            if count > 1:
                self.violate(f"attempt {attempt} reported {count} endings")
        journal = Journal(self.state_dir).load() if (self.state_dir / "journal.json").exists() else None
        if journal is None:
            return
        outcome = journal.last_outcome
        if journal.phase is Phase.IDLE and outcome is not None and outcome.attempt_id and outcome.state in TERMINAL and endings[outcome.attempt_id] != 1:
            self.violate(f"attempt {outcome.attempt_id} ended {outcome.state} in the journal but was reported {endings[outcome.attempt_id]} times")

    def events(self) -> list[dict[str, Any]]:
        path = self.state_dir / "events.jsonl"
        out = []
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((self.state_dir / "status.json").read_text())
            return data if isinstance(data, dict) else {}
        return {}

    def running_version(self) -> str | None:
        content = self.model.booted_content() or {}
        return content.get("version")

    async def converge(self, *, passes: int = 12) -> str | None:
        """Faults off; run passes (and the guard) until the device runs the tag's version or
        names a reason tied to it. Returns the violation, or None."""
        self.hub_down = False
        self.refuse_writes = False
        self.disk_full = False
        self.hub_config = None
        self.show_assets()
        self.cut_at = None
        if not self.powered:
            self.power_on()
        for _ in range(passes):
            if self.running_version() == self.tagged and self.model.next_boot() == self.model.booted:
                journal = Journal(self.state_dir).load()
                if journal.phase is Phase.IDLE:
                    return None
            await self.run_pass()
            if not self.daemon_alive:
                # nobody commits in this boot: the guard's timer fires guard.timeout after boot
                self.run_guard()
            self.clock.advance(3600.0)
        target = self.tagged
        status = self.status()
        named = f"{status.get('reason')} {status.get('lastError')} {[q.get('version') for q in status.get('quarantined') or [] if isinstance(q, dict)]}"
        if target in named:
            return None
        message = f"did not converge to {target}: running {self.running_version()} (booted system: {self.model.behaviour().value}), status {json.dumps({k: self.status().get(k) for k in ('state', 'reason', 'lastError', 'targetVersion')})}"
        self.violate(message)
        return message


def _effects() -> Any:
    """The side-effect seam module (``ota_daemon.effects``), where the code has one."""
    try:
        module = importlib.import_module("ota_daemon.effects")
    except ImportError:
        return None
    return module if hasattr(module, "hooked") else None


def _is_power_cut(exc: BaseException) -> bool:
    seam = _effects()
    return isinstance(exc, PowerCut) or (seam is not None and isinstance(exc, seam.PowerCut))


@contextlib.contextmanager
def scratch_dir(prefix: str = "devsim-") -> Iterator[Path]:
    """A temporary directory in memory (``/dev/shm``) when there is one: the simulator writes
    and renames many small files, and a power cut is a snapshot, not the disk's behaviour."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as tmp:
        yield Path(tmp)


class _Silent:
    def notify(self, state: str) -> None:
        return None
