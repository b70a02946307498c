"""The simulator's rules: what can happen to a device, as steps over a :class:`~.world.World`.

Shared by the hypothesis state machine (``tests/devsim/test_stateful.py``, where failures
shrink) and the seeded exploration (:mod:`.explore`). Each step returns a short line for the
scenario's transcript.
"""

from __future__ import annotations

import importlib
from typing import Any

from ota_daemon.devsim.models import MODEL_CUT_POINTS
from ota_daemon.devsim.world import RELEASE_KINDS, World
from ota_daemon.state import TRANSITIONS
from ota_daemon.traits import TRAITS

#: hub config properties a step can set (the allow-listed overlay keys)
HUB_CONFIGS: tuple[dict[str, Any] | None, ...] = (
    None,
    {"pollInterval": "1h"},
    {"rebootPolicy": "manual"},
    {"maxDeferral": "1h"},
    {"retryFailed": True},
)
#: clock jumps: NTP correcting a slow or fast clock, both ways
CLOCK_JUMPS = (-30 * 86400.0, -3600.0, 600.0, 3 * 86400.0)
#: the installer calls whose start and end are cut points
INSTALLER_CALLS = ("install", "mark_bad", "reboot", "commit")


#: effects a world reaches only when its repository is served over loopback HTTP (``World(http=True)``):
#: the downloader's files in the cache and the static hub's ETag cache (a ``file://`` repository is read in place)
HTTP_ONLY = frozenset({"download.open", "download.checkpoint", "download.finish", "download.discard", "hub.etag-cache"})
#: the guard's effects: the ``guard_cut`` rule cuts there while ``ota-daemon-guard`` runs
GUARD_EFFECTS = frozenset({"guard.record", "guard.reboot", "guard.mark-bad"})
#: the guard's effects that only some installers have: it marks a trial bad itself only where the
#: install armed the slot for every boot and nothing counts tries (RAUC)
GUARD_ONLY = {"guard.mark-bad": frozenset({"rauc"})}
#: effects of the seam left out of the pass cut points: no rule of this world reaches them
#: (deferral leases and hooks with the elapsed-time file they read, operator retries, a hub
#: refusing events for good, the events file's trim, a killed writer's temporary file, signed
#: hubs, the Nexigon hub's files, an unreadable journal moved aside, the SWUpdate backend's
#: booted-slot pin: the model answers for the tool), so tests/test_cut_points.py cuts there; the HTTP ones only in HTTP worlds
#: (``cut_points(kind, http=True)``), the guard's by the ``guard_cut`` rule (:data:`GUARD_POINTS`)
UNMODELLED = frozenset(
    {
        "events.trim", "journal:deferral", "journal:outcome", "journal:quarantine-cleared", "spool.drop",
        "temp.sweep", "tuf.metadata", "tuf.floor", "tuf.seen", "state.elapsed", "hub.device-id", "hub.details-cache",
        "swupdate.booted-pin", "journal.aside", *HTTP_ONLY, *GUARD_EFFECTS,
    }
)
GUARD_POINTS = tuple(sorted(f"{side}:{name}" for name in GUARD_EFFECTS for side in ("before", "after")))


def guard_points(kind: str) -> tuple[str, ...]:
    """The guard's cut points a device with installer ``kind`` reaches."""
    return tuple(p for p in GUARD_POINTS if kind in GUARD_ONLY.get(p.split(":", 1)[1], frozenset({kind})))


def cut_points(kind: str, *, http: bool = False) -> list[str]:
    """Every enumerated cut point of a device with installer ``kind``.

    With the side-effect seam (``ota_daemon.effects``): its registry, ``before:``/``after:``
    every effect. Else the journal transitions (after each is written) and each installer
    call. Plus the tools' own steps (RAUC and SWUpdate arm the slot inside the install) and
    the simulator's hub writes."""
    try:
        seam = importlib.import_module("ota_daemon.effects")
    except ImportError:
        seam = None
    if seam is not None and hasattr(seam, "cut_points"):
        points = [str(p) for p in seam.cut_points() if p.split(":", 1)[1] not in UNMODELLED or (http and p.split(":", 1)[1] in HTTP_ONLY)]
        if kind == "rauc":  # RAUC takes no stream: nothing goes from idle straight to installing
            points = [p for p in points if not p.endswith("journal:idle->installing")]
        if TRAITS[kind].arms_at_install:  # a trial cut mid-gate is armed again only at reboot
            points = [p for p in points if not p.endswith("journal:committing->rebooting")]
        return points + [p for p in MODEL_CUT_POINTS if kind in ("rauc", "swupdate") or p != "model:install:armed"]
    points = sorted(f"journal:{a.value}->{b.value}" for a, b in TRANSITIONS)
    if kind == "rauc":  # RAUC takes no stream: nothing goes from idle straight to installing
        points.remove("journal:idle->installing")
    if TRAITS[kind].arms_at_install:  # a trial cut mid-gate is armed again only at reboot
        points.remove("journal:committing->rebooting")
    points += [f"installer:{call}:{when}" for call in INSTALLER_CALLS for when in ("before", "after")]
    points += [p for p in MODEL_CUT_POINTS if kind in ("rauc", "swupdate") or p != "model:install:armed"]
    points += ["hub:publish_status", "hub:publish_events"]
    return points


class Driver:
    """Steps on one world. ``await driver.step(name, arg)``."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.minor = 0

    def next_version(self) -> str:
        self.minor += 1
        return f"1.{self.minor}.0"

    async def publish(self, kind: str) -> str:
        version = self.next_version()
        self.world.publish(version, kind)
        return f"publish {version} ({kind})"

    async def tag(self, index: int) -> str:
        versions = list(self.world.releases)
        version = versions[index % len(versions)]
        self.world.move_tag(version)
        return f"tag -> {version}"

    async def run(self) -> str:
        result = await self.world.run_pass()
        return f"pass: {getattr(result, 'result', result)} {getattr(result, 'message', '')[:100]}".rstrip()

    async def cut(self, point: str) -> str:
        self.world.arm_cut(point)
        result = await self.world.run_pass()
        reached = result == "cut"
        self.world.arm_cut(None)
        return f"cut at {point}: {'cut' if reached else getattr(result, 'result', result)}"

    async def guard_cut(self, point: str) -> str:
        """The power goes while ``ota-daemon-guard`` acts (after its record, around its reboot)."""
        cuts = self.world.counters.cuts
        self.world.arm_cut(point)
        self.world.run_guard()
        reached = self.world.counters.cuts > cuts
        self.world.arm_cut(None)
        return f"guard, cut at {point}: running {self.world.running_version()}{'' if reached else ' (not reached)'}"

    async def crash(self, point: str) -> str:
        """The daemon's process dies at ``point`` (OOM kill, a bug); the system keeps running."""
        self.world.arm_cut(point, crash=True)
        result = await self.world.run_pass()
        self.world.arm_cut(None)
        return f"crash at {point}: {getattr(result, 'result', result)}"

    async def stream(self, on: bool) -> str:
        self.world.stream = on
        return f"download.mode stream: {on}"

    async def reboot(self) -> str:
        self.world.power_on()
        return f"reboot: booted {self.world.model.booted} ({self.world.running_version()})"

    async def guard(self) -> str:
        code = self.world.run_guard()
        return f"guard: exit {code}, running {self.world.running_version()}"

    async def clock_jump(self, seconds: float) -> str:
        self.world.clock._now += seconds
        return f"clock jumps {seconds:+.0f}s"

    async def boot_at_1970(self) -> str:
        """A device without an RTC: powers on at the epoch, NTP corrects it a pass later."""
        real = self.world.clock.now()
        self.world.power_on()
        self.world.clock._now = 60.0
        first = await self.world.run_pass()
        self.world.clock._now = max(real, self.world.clock.now())
        return f"boot at 1970: {getattr(first, 'result', first)}; clock corrected"

    async def outage(self, hours: float) -> str:
        """The hub is away for ``hours``: the daemon loop backs off and retries meanwhile."""
        world = self.world
        world.hub_down = True
        end = world.clock.now() + hours * 3600.0
        passes = 0
        while world.clock.now() < end and passes < 400:
            await world.run_pass()
            passes += 1
        world.hub_down = False
        return f"hub away {hours:.0f}h: {passes} passes"

    async def refuse_writes(self, on: bool) -> str:
        self.world.refuse_writes = on
        return f"hub refuses writes: {on}"

    async def hide_asset(self) -> str:
        self.world.hide_asset(self.world.tagged)
        return f"image of {self.world.tagged} 404s"

    async def show_assets(self) -> str:
        self.world.show_assets()
        return "assets appear"

    async def hub_config(self, index: int) -> str:
        self.world.hub_config = HUB_CONFIGS[index % len(HUB_CONFIGS)]
        return f"hub config property: {self.world.hub_config}"

    async def disk(self, full: bool) -> str:
        self.world.disk_full = full
        return f"disk nearly full: {full}"


#: the steps the exploration picks from, with weights
WEIGHTS: dict[str, int] = {
    "publish": 6, "tag": 2, "run": 10, "cut": 8, "reboot": 2, "guard": 2, "clock_jump": 2, "boot_at_1970": 1,
    "crash": 2, "guard_cut": 1, "stream": 1, "outage": 1, "refuse_writes": 1, "hide_asset": 1, "show_assets": 1, "hub_config": 1, "disk": 1,
}


def release_kinds() -> tuple[str, ...]:
    return RELEASE_KINDS
