"""A power cut at every cut point of the side-effect seam, in-process, on the simulated device.

The cut points are enumerated from the code (:func:`ota_daemon.effects.cut_points`: before and
after every effect in ``effects.EFFECTS``). Each scenario below runs whole passes of the real
engine on a simulated device with an injected clock; the in-process hook raises
:class:`~ota_daemon.effects.PowerCut` at the chosen point, the device power-cycles (its
bootloader decides what boots) and passes go on until the device settles. Then: one committed
version (the one the scenario ends with), the journal idle, each ending reported once, no
second install of what completed, no temporary file left. A point that no scenario reaches
fails :func:`test_every_cut_point_is_reached`, so a new effect cannot go untested.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ota_daemon import effects
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.download import Downloader
from ota_daemon.engine import Engine, PassResult, Result
from ota_daemon.errors import HubError, TransientError
from ota_daemon.health import HealthGate
from ota_daemon.hubs import get_hub
from ota_daemon.installers import get_installer
from ota_daemon.state import Journal, Phase
from ota_daemon.telemetry import Telemetry
from ota_daemon.testing import SimWorld, serve_directory


class RefusingHub:
    """A hub that refuses the first batch of events for good (the spool drops them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.refuse = 1

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        if self.refuse:
            self.refuse -= 1
            raise HubError("events refused: bad request")
        await self.inner.publish_events(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Scenario:
    name: str
    final_version: str
    overrides: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[SimWorld, FakeClock], None] | None = None
    #: after the first pass that settles, run this and keep going (e.g. ota-daemon retry)
    then: Callable[[Engine], Any] | None = None
    fail_trial_boot: bool = False
    final_outcome: str = "completed"
    refuse_events: bool = False
    #: a power cut the scenario itself causes, before the one under test
    own_cut: str | None = None
    #: the scenario's own cut is a crash of the daemon alone: the device keeps running
    own_cut_is_crash: bool = False
    #: publish 1.1.0 built for another system, without build info (the installer refuses it)
    foreign: bool = False
    #: the repository over loopback HTTP (else file URLs, which the downloader reads in place):
    #: the downloader's partial file, checkpoints and rename, the static hub's ETag cache
    http: bool = False


def _corrupt(world: SimWorld, clock: FakeClock) -> None:
    published = world.versions["1.1.0"]
    image = next(a for a in published.document["assets"] if a["filename"].endswith(".img"))
    blob = world.repo_dir / "fleet" / image["url"]
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


def _stale_temporary(world: SimWorld, clock: FakeClock) -> None:
    """A checkpoint's temporary file left by a killed download (issue 12, defect 6)."""
    cache = world.state_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f".1.1.0.img.partial.json.{_dead_pid()}.tmp").write_text("{")


def _dead_pid() -> int:
    pid = 4_000_000  # above the kernel's pid_max: no process has it
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def _hook(world: SimWorld, point: str, body: str) -> None:
    folder = world.root / "hooks.d" / point
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "10-test"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _failing_pre_install(world: SimWorld, clock: FakeClock) -> None:
    _hook(world, "pre-install", "exit 1")


def _lease_on(what: str) -> Callable[[SimWorld, FakeClock], None]:
    def prepare(world: SimWorld, clock: FakeClock) -> None:
        directory = world.root / "inhibit.d"
        directory.mkdir(exist_ok=True)
        (directory / "app.json").write_text(
            json.dumps({"pid": os.getpid(), "reason": "app is busy", "what": [what], "max_duration": 600, "created": clock.now()})
        )

    return prepare


async def _retry(engine: Engine) -> None:
    await engine.retry("1.1.0")


FAILING_GATE = {"deadline": "1s", "interval": "1s", "checks": [{"kind": "command", "name": "app", "command": ["false"]}]}

SCENARIOS = [
    Scenario("update in file mode", "1.1.0", prepare=_stale_temporary, http=True),
    Scenario("update in stream mode", "1.1.0", {"download": {"mode": "stream"}}, http=True),
    Scenario("hub refuses events", "1.1.0", refuse_events=True),
    Scenario("trial boot fails", "1.0.0", fail_trial_boot=True, final_outcome="rollback"),
    Scenario("health gate fails", "1.0.0", {"health": FAILING_GATE}, final_outcome="rollback"),
    Scenario("corrupt image", "1.0.0", prepare=_corrupt, final_outcome="failed", http=True),
    Scenario("pre-install hook fails", "1.0.0", prepare=_failing_pre_install, final_outcome="failed"),
    Scenario("lease defers the install", "1.1.0", {"policy": {"max_deferral": "1m"}}, prepare=_lease_on("install")),
    Scenario("lease defers the reboot", "1.1.0", {"policy": {"max_deferral": "1m"}}, prepare=_lease_on("reboot")),
    Scenario("power cut during the commit", "1.1.0", own_cut="after:journal:rebooting->committing"),
    Scenario("daemon crash during the commit", "1.1.0", own_cut="after:journal:rebooting->committing", own_cut_is_crash=True),
    Scenario("built for another system", "1.0.0", foreign=True, final_outcome="failed"),
    Scenario("quarantined, then retried", "1.1.0", {"policy": {"max_attempts": 1}}, prepare=_failing_pre_install, then=_retry),
]


def _engine(world: SimWorld, config_tables: dict[str, Any], clock: FakeClock, http: httpx.AsyncClient, scenario: Scenario, hub_state: dict[str, Any]) -> Engine:
    config = build_config(config_tables, source="test", env={})
    hub: Any = get_hub(config.hub.kind, config=config, http=http, clock=clock)
    if scenario.refuse_events:
        refusing = RefusingHub(hub)
        refusing.refuse = hub_state.setdefault("refuse", 1)
        hub = refusing
        hub_state["hub"] = refusing
    return Engine(
        config=config,
        hub=hub,
        installer=get_installer(config.installer.kind, config=config, clock=clock),
        journal=Journal(config.state.dir),
        # a delivering telemetry (the static hub accepts and drops): spool and hub writes run
        telemetry=Telemetry(config.state.dir, clock=clock, hub=hub, deliver=True, max_events=4),
        downloader=Downloader(config=config.download, http=http, clock=clock),
        clock=clock,
        health=HealthGate(config.health, hub=hub, clock=clock, http=http),
    )


def _events(world: SimWorld) -> list[dict[str, Any]]:
    path = world.state_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@dataclass
class Run:
    reached: list[str]
    cut: bool
    results: list[PassResult]


async def run_scenario(root: Path, scenario: Scenario, cut_at: str | None) -> Run:
    """Run ``scenario`` cutting the power at the first ``cut_at``; assert the invariants."""
    clock = FakeClock()
    world = SimWorld(root)
    world.create_device("1.0.0")
    world.publish("1.0.0")
    if scenario.foreign:
        world.publish("1.1.0", size=64 << 10, system="other-board", build_info=False)
    else:
        world.publish("1.1.0", size=64 << 10)
    if scenario.prepare:
        scenario.prepare(world, clock)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serve_directory(world.repo_dir)) if scenario.http else None
        tables = world.tables(url=server.url if server else None, **scenario.overrides)  # type: ignore[attr-defined]
        run = await _run_passes(world, scenario, cut_at, clock, tables)
        if server is not None and scenario.final_outcome == "completed" and "mode" not in scenario.overrides.get("download", {}):
            # file mode: every byte of the image comes once (a resume fetches only the rest);
            # nothing is fetched again once the download finished
            image = next(a for a in world.versions["1.1.0"].document["assets"] if a["filename"].endswith(".img"))
            path = "/" + os.path.normpath(f"fleet/{image['url']}")
            assert 0 < server.sent_by_path.get(path, 0) <= image["size"], (scenario.name, cut_at, server.sent_by_path, image)
    # the downloader left nothing behind: no partial file, no metadata, no temporary file
    cache = world.state_dir / "cache"
    partials = [p.name for p in cache.iterdir() if ".partial" in p.name] if cache.is_dir() else []
    assert not partials, (scenario.name, cut_at, partials)
    return run


async def _run_passes(world: SimWorld, scenario: Scenario, cut_at: str | None, clock: FakeClock, tables: dict[str, Any]) -> Run:
    reached: list[str] = []
    armed = [p for p in (scenario.own_cut, cut_at) if p]
    crash_only = {"next": scenario.own_cut_is_crash and scenario.own_cut is not None}

    def hook(point: str) -> None:
        reached.append(point)
        if armed and point == armed[0]:
            armed.pop(0)
            raise effects.PowerCut(point)

    results: list[PassResult] = []
    cut = False
    then_done = scenario.then is None
    failed_trial = False
    trial_cut = False
    hub_state: dict[str, Any] = {}
    async with httpx.AsyncClient() as http:
        with effects.hooked(hook):
            for _ in range(14):
                engine = _engine(world, tables, clock, http, scenario, hub_state)
                if scenario.refuse_events:
                    hub_state["refuse"] = 0  # refused once, for good
                try:
                    result = await engine.reconcile()
                    results.append(result)
                except effects.PowerCut:
                    cut = True
                    effects.power_on()
                    now = world.device.info()
                    if now.booted == "b" and not now.committed and not crash_only["next"]:
                        # the cut hits a trial boot: on a try-once bootloader that is a failed
                        # trial, which may be reported as a rollback
                        trial_cut = True
                    if crash_only["next"]:
                        crash_only["next"] = False  # the daemon died; the system runs on
                    else:
                        world.device.boot()  # the power comes back: the bootloader decides
                    clock.advance(60)
                    continue
                except TransientError:
                    clock.advance(60)
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        await engine.installer.aclose()
                clock.advance(60)
                info = world.device.info()
                if scenario.fail_trial_boot and not failed_trial and info.booted == "b" and not info.committed:
                    world.device.boot()  # the trial system dies before it can commit
                    failed_trial = True
                if result.result in (Result.UP_TO_DATE, Result.BLOCKED) and info.committed:
                    if not then_done:
                        assert scenario.then is not None
                        try:
                            await scenario.then(engine)
                        except effects.PowerCut:
                            cut = True
                            effects.power_on()
                            world.device.boot()
                            continue  # the operator runs it again
                        (world.root / "hooks.d" / "pre-install" / "10-test").unlink(missing_ok=True)
                        then_done = True
                        continue
                    if result.result is Result.UP_TO_DATE or scenario.final_outcome != "completed":
                        break
    # the device settled on one committed version
    info = world.device.info()
    kinds = [e["attributes"]["event"] for e in _events(world)]
    final_version, final_outcome = scenario.final_version, scenario.final_outcome
    if trial_cut and scenario.final_outcome == "completed" and "rollback" in kinds:
        final_version, final_outcome = "1.0.0", "rollback"  # the trial boot was cut: a failed trial
    assert info.committed and info.pending is None, (scenario.name, cut_at, info)
    assert info.version_of(info.booted) == final_version, (scenario.name, cut_at, info, [r.result for r in results])
    assert Journal(world.state_dir).load().phase is Phase.IDLE
    assert kinds.count("completed") == (1 if final_outcome == "completed" else 0), (scenario.name, cut_at, kinds)
    assert kinds.count("rollback") == (1 if final_outcome == "rollback" else 0), (scenario.name, cut_at, kinds)
    if "completed" in kinds:
        assert "installing" not in kinds[kinds.index("completed") :], (scenario.name, cut_at, kinds)
    if final_outcome == "rollback":
        assert info.slots["a"].bootable, (scenario.name, cut_at, info)  # the fallback is whole
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["currentVersion"] == final_version, (scenario.name, cut_at, status)
    leftovers = [p.name for p in world.state_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, (scenario.name, cut_at, leftovers)
    return Run(reached=reached, cut=cut, results=results)


@pytest.fixture(scope="module")
def reached_by(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:
    """Which scenarios reach which point, from one uncut run of each."""
    import asyncio

    out: dict[str, list[int]] = {}
    for index, scenario in enumerate(SCENARIOS):
        run = asyncio.run(run_scenario(tmp_path_factory.mktemp(f"plain{index}"), scenario, None))
        for point in set(run.reached):
            out.setdefault(point, []).append(index)
    return out


#: cut by their own tests: the guard's record and reboot below (the guard runs beside the
#: engine, not in a pass); a signed hub's writes in tests/signing/test_power_cuts.py (a signed
#: repository); the Nexigon hub's files in tests/nexigon/test_power_cuts.py (the agent double);
#: SWUpdate's booted-slot pin in tests/swupdate/test_swupdate_power_cuts.py (the real SWUpdate);
#: an unreadable journal moved aside below (a scenario of its own, cut only there)
OWN_TESTS = frozenset(
    f"{side}:{name}"
    for side in ("before", "after")
    for name in (
        "guard.record", "guard.reboot", "guard.mark-bad",
        "tuf.metadata", "tuf.floor", "tuf.seen",
        "hub.device-id", "hub.details-cache",
        "swupdate.booted-pin",
        "journal.aside",
    )
)


#: reached and cut by the device simulator's scenarios (tests/devsim: its hub-config rule)
BY_DEVSIM = frozenset({"before:state.hub-config", "after:state.hub-config"})


def test_every_cut_point_is_reached(reached_by: dict[str, list[int]]) -> None:
    """Every before/after point of every effect is reached by some scenario."""
    from ota_daemon.devsim.rules import cut_points as devsim_points

    assert set(devsim_points("simulated")) >= BY_DEVSIM  # tests/devsim/test_cut_coverage.py reaches them
    missing = [p for p in effects.cut_points() if p not in reached_by and p not in OWN_TESTS | BY_DEVSIM]
    assert not missing, f"cut points no scenario reaches (add a scenario to SCENARIOS): {missing}"


@pytest.mark.parametrize("point", [p for p in effects.cut_points() if p not in OWN_TESTS | BY_DEVSIM])
async def test_power_cut_at_every_point(tmp_path: Path, point: str, reached_by: dict[str, list[int]]) -> None:
    """Power cut at ``point`` (in each scenario that reaches it): the device converges."""
    indices = reached_by.get(point)
    if not indices:
        pytest.fail(f"no scenario reaches {point}")
    for index in indices:
        run = await run_scenario(tmp_path / f"s{index}", SCENARIOS[index], point)
        assert run.cut, (SCENARIOS[index].name, point)


def _guard_cases() -> list[tuple[str, str]]:
    from ota_daemon.devsim.rules import guard_points

    return [(kind, p) for kind in ("simulated", "rauc") for p in guard_points(kind) if p in OWN_TESTS and (kind == "simulated" or p not in guard_points("simulated"))]


@pytest.mark.parametrize(("kind", "point"), _guard_cases())
async def test_power_cut_around_the_guards_rollback(kind: str, point: str) -> None:
    """``ota-daemon-guard`` rolls back a trial whose daemon never starts; the power goes just
    before or after it writes ``guard.json``, before or after it marks RAUC's trial bad, or
    before or after its reboot. Once the power is back the device converges to the fallback,
    the rollback reported once, no temporary file of the record left."""
    from ota_daemon.devsim.world import World, scratch_dir

    with scratch_dir() as root:
        world = World(root / "w", kind)
        try:
            world.publish("1.1.0", "no-daemon")
            for _ in range(3):
                if world.daemon_alive:
                    await world.run_pass()
            assert not world.daemon_alive, "the trial of 1.1.0 should have booted"
            world.arm_cut(point)
            cuts = world.counters.results["cut"]
            world.run_guard()  # the cut, then the power comes back
            assert world.reached[point] == 1 and world.counters.results["cut"] == cuts + 1, (point, dict(world.reached))
            assert await world.converge() is None, world.violations
            assert world.violations == []
            assert world.running_version() == "1.0.0"
            kinds = [e["attributes"]["event"] for e in world.events()]
            assert kinds.count("rollback") == 1 and "completed" not in kinds, kinds
            leftovers = [p.name for p in world.state_dir.rglob("*") if p.name.endswith(".tmp")]
            assert not leftovers, leftovers
        finally:
            await world.aclose()


def _unreadable_journal(world: SimWorld, clock: FakeClock) -> None:
    world.state_dir.mkdir(parents=True, exist_ok=True)
    (world.state_dir / "journal.json").write_text('{"phase": "installing", "attempt": ')  # torn


@pytest.mark.parametrize("point", ["before:journal.aside", "after:journal.aside"])
async def test_power_cut_around_moving_an_unreadable_journal_aside(tmp_path: Path, point: str) -> None:
    """The journal is unreadable (planted torn); the pass keeps it aside for a post-mortem and
    starts from an empty one. A cut before or after that rename: the update still converges
    with every invariant of :func:`run_scenario`, and exactly one copy is kept aside."""
    scenario = Scenario("unreadable journal", "1.1.0", prepare=_unreadable_journal)
    run = await run_scenario(tmp_path, scenario, point)
    assert run.cut and point in run.reached
    kept = sorted(p.name for p in tmp_path.rglob("journal.corrupt.*.json"))
    assert len(kept) == 1, kept
