"""pytest wiring of the HIL rig: options, the ``rig`` fixture, invariants after every
scenario, per-scenario artifacts and the run report.

    python -m pytest hil --target sim --report-dir hil-report
    python -m pytest hil --target rpi --bench hil/benches/example.toml --report-dir hil-report
    python -m pytest hil --target qemu -m hil_qemu_ci --report-dir hil-report   # CI subset
    python -m pytest hil --target rpi --bench FILE --check-bench     # validate, run nothing

Without ``--target`` every scenario skips with a reason naming the flag (labgrid's ``env``
fixture does the same); the rig's own self-tests (``hil/rig/test_hil_rig_*.py``) still run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.rig.checks import DEFAULT_REBOOT_BUDGET, check_invariants, timings
from hil.rig.device import Release, Rig
from hil.rig.faultproxy import FaultProxy
from hil.rig.hub import HubDouble
from hil.rig.timeline import Recorder

TARGETS = ("sim", "rpi", "qemu")
RESULTS_KEY = pytest.StashKey[dict[str, Any]]()
RECORDER_KEY = pytest.StashKey[Recorder]()
_RESULTS: list[dict[str, Any]] = []

#: sizes and versions of the sim target (small: time and sizes shrink, not coverage)
SIM_IMAGE_SIZE = 1 << 20
BASELINE = "1.0.0"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop rig")
    group.addoption("--target", choices=TARGETS, default=os.environ.get("HIL_TARGET") or None, help="run the HIL scenarios against this target (or $HIL_TARGET)")
    group.addoption("--bench", metavar="FILE", default=os.environ.get("HIL_BENCH") or None, help="bench file for --target rpi (TOML; see hil/benches/example.toml)")
    group.addoption("--check-bench", action="store_true", help="with --target rpi: validate the bench file and reach the board, run no scenario")
    group.addoption("--report-dir", metavar="DIR", default=None, help="write timelines, artifacts, summary.md, timeline.png and junit.xml here")
    group.addoption(
        "--shard", metavar="K/N", default=None,
        help="run only part K of N (1-based) of the selected scenarios, spread by their expected minutes (hil_qemu_ci(minutes=)); N runs side by side cover them all once",
    )  # fmt: skip
    group.addoption("--time-scale", type=float, default=float(os.environ.get("HIL_TIME_SCALE") or 0) or None, help="stretch every scenario wait by this factor (default: 1; qemu: 6 under KVM, 40 under TCG)")


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "hil: a HIL scenario (needs --target)",
        "hil_sim_only(reason): the scenario needs the sim target; skipped on others with the reason",
        "hil_needs(*capabilities): skip unless the device has these capabilities",
        "hil_reboots(n): the reboot budget of the scenario (default 3)",
        "hil_allow_traceback: the daemon may log a traceback in this scenario",
        "hil_device(**options): options of the sim device (volatile_try, watchdog)",
        "hil_qemu_ci(minutes=n): the subset CI runs on the qemu target (real bootloader, units, power cut); minutes: its wall time there under TCG, which --shard balances",
    ):
        config.addinivalue_line("markers", line)
    if config.getoption("--shard", None):
        parse_shard(config.getoption("--shard"))  # a bad value is a usage error before collection
    report_dir = config.getoption("--report-dir", None)
    if report_dir and not getattr(config.option, "xmlpath", None):
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        config.option.xmlpath = str(Path(report_dir) / "junit.xml")


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("--check-bench"):
        return
    from hil.rig.bench import BenchError, check_bench

    if config.getoption("--target") != "rpi":
        pytest.exit("--check-bench needs --target rpi", returncode=4)
    bench = config.getoption("--bench")
    if not bench:
        pytest.exit("--check-bench needs --bench FILE (see hil/benches/example.toml)", returncode=4)
    try:
        lines = check_bench(Path(bench))
    except BenchError as exc:
        pytest.exit(f"bench check failed: {exc}", returncode=1)
    pytest.exit("bench check passed:\n  " + "\n  ".join(lines), returncode=0)


@pytest.hookimpl(trylast=True)  # after -m and -k deselected: --shard splits what is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    target = config.getoption("--target")
    for item in items:
        marker = item.get_closest_marker("hil_sim_only")
        if marker is not None and target not in (None, "sim"):
            reason = marker.args[0] if marker.args else "sim only"
            item.add_marker(pytest.mark.skip(reason=f"sim only: {reason}"))
    shard = config.getoption("--shard")
    if shard:
        k, n = parse_shard(shard)
        parts = shard_of([(item.nodeid, _minutes(item)) for item in items], n)
        keep = [item for item in items if parts[item.nodeid] == k]
        config.hook.pytest_deselected(items=[item for item in items if parts[item.nodeid] != k])
        items[:] = keep


def _minutes(item: pytest.Item) -> float:
    marker = item.get_closest_marker("hil_qemu_ci")
    return float(marker.kwargs.get("minutes", DEFAULT_MINUTES)) if marker is not None else DEFAULT_MINUTES


#: expected minutes of a scenario without ``hil_qemu_ci(minutes=)`` (for --shard)
DEFAULT_MINUTES = 10.0


def parse_shard(value: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; a usage error names the option otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise pytest.UsageError(f"--shard {value!r}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(m[1]), int(m[2])


def shard_of(items: list[tuple[str, float]], shards: int) -> dict[str, int]:
    """Longest first onto the least loaded of ``shards`` parts (1-based), ties by node id:
    every run of the same selection splits it the same way, whatever the collection order."""
    loads = [0.0] * shards
    out: dict[str, int] = {}
    for nodeid, minutes in sorted(items, key=lambda it: (-it[1], it[0])):
        k = min(range(shards), key=lambda i: (loads[i], i))
        loads[k] += minutes
        out[nodeid] = k + 1
    return out


# =========================================================================== fixtures


@pytest.fixture(scope="session")
def hil_target(request: pytest.FixtureRequest) -> str:
    target = request.config.getoption("--target")
    if target is None:
        pytest.skip("HIL target not configured (use --target sim|rpi|qemu)")
    if target == "rpi" and not request.config.getoption("--bench"):
        pytest.skip("--target rpi needs a bench file (use --bench FILE; see hil/benches/example.toml)")
    from hil.rig import device

    scale = request.config.getoption("--time-scale")
    if target == "qemu":
        from hil.rig.qemu_image import ImageError
        from hil.rig.targets.qemu import accel

        try:
            chosen = accel()  # builds or reuses the image, then probes KVM
        except ImageError as exc:
            pytest.fail(str(exc), pytrace=False)
        if scale is None:
            scale = 6.0 if chosen == "kvm" else 40.0
    device.TIME_SCALE = float(scale or 1.0)
    return str(target)


@pytest.fixture(scope="session")
def report_dir(request: pytest.FixtureRequest) -> Path | None:
    value = request.config.getoption("--report-dir")
    return Path(value) if value else None


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1]).strip("_")[:120]


@pytest.fixture
def rig(request: pytest.FixtureRequest, hil_target: str, tmp_path: Path, report_dir: Path | None) -> Iterator[Rig]:
    """A fresh device on baseline 1.0.0 (committed in slot a), a hub whose tag points at it,
    and a pass-through fault proxy between them. The device is powered on."""
    out = (report_dir / "scenarios" / _slug(request.node.nodeid)) if report_dir else tmp_path / "artifacts"
    if out.exists():
        shutil.rmtree(out)
    recorder = Recorder(scenario=request.node.nodeid, path=out / "timeline.jsonl")
    request.node.stash[RECORDER_KEY] = recorder
    recorder.record("rig", "scenario-start", target=hil_target)
    if hil_target == "sim":
        rig = _sim_rig(request, tmp_path, recorder)
    elif hil_target == "qemu":
        from hil.rig.targets.qemu import qemu_rig

        rig = qemu_rig(request, tmp_path, recorder)
    else:
        from hil.rig.targets.rpi import rpi_rig

        rig = rpi_rig(request, tmp_path, recorder, bench=Path(request.config.getoption("--bench")))
    budget = request.node.get_closest_marker("hil_reboots")
    rig.budget["reboots"] = int(budget.args[0]) if budget else DEFAULT_REBOOT_BUDGET
    needs = request.node.get_closest_marker("hil_needs")
    try:
        if needs is not None:
            missing = [c for c in needs.args if c not in rig.device.capabilities]
            if missing:
                pytest.skip(f"target {hil_target} lacks {', '.join(missing)}")
        rig.device.power_on()
        yield rig
    finally:
        try:
            rig.device.collect(out)
            (out / "hub-requests.jsonl").write_text("".join(json.dumps(r.__dict__) + "\n" for r in rig.hub.requests()))
            (out / "proxy.jsonl").write_text("".join(json.dumps(c.__dict__) + "\n" for c in rig.proxy.connections))
        finally:
            rig.device.close()
            rig.proxy.stop()
            rig.hub.stop()
            recorder.record("rig", "scenario-end")


def _sim_rig(request: pytest.FixtureRequest, tmp_path: Path, recorder: Recorder) -> Rig:
    from hil.rig.images import build_image
    from hil.rig.targets.sim import SimDevice

    hub = HubDouble(tmp_path / "hub", recorder=recorder).start()
    proxy = FaultProxy(("127.0.0.1", hub.port), recorder=recorder).start()
    options = request.node.get_closest_marker("hil_device")
    kwargs = dict(options.kwargs) if options else {}
    system = "hil-sim"
    device = SimDevice(tmp_path / "device", recorder=recorder, hub_url=proxy.url, hub_path=hub.path, system=system, **kwargs)
    images = tmp_path / "images"

    def publish(version: str, *, behaviour: str = "ok", size: int = SIM_IMAGE_SIZE, system_name: str | None = None, move: bool = True, build_info: bool = True) -> Release:
        """Build and publish an image; ``system_name`` builds it (image header and build info)
        for another board, under this device's asset names."""
        image = build_image(images, system=system_name or system, version=version, size=size, behaviour=behaviour)
        hub.publish(version, image.path, system=system, built_for=system_name, filename=f"{system}.img", move=move, build_info=build_info)
        return Release(version, image.sha256, image.size, behaviour, hub.asset_url_part(version))

    baseline = build_image(images, system=system, version=BASELINE, size=SIM_IMAGE_SIZE)
    hub.publish(BASELINE, baseline.path, system=system, filename=f"{system}.img")
    device.provision(baseline)
    return Rig("sim", device, hub, proxy, recorder, publish)


@pytest.fixture(autouse=True)
def _hil_invariants(request: pytest.FixtureRequest) -> Iterator[None]:
    """hil-rig.md §4.8 after every scenario that used the rig."""
    if "rig" not in request.fixturenames:
        yield
        return
    rig: Rig = request.getfixturevalue("rig")
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.skipped:
        return
    report = check_invariants(
        rig.device,
        rig.recorder,
        reboot_budget=int(rig.budget.get("reboots", DEFAULT_REBOOT_BUDGET)),
        allow_tracebacks=request.node.get_closest_marker("hil_allow_traceback") is not None,
    )
    request.node.stash[RESULTS_KEY] = {"invariants": report.checked, "invariant_failures": report.failures}
    if report.failures:
        pytest.fail("invariants violated after the scenario:\n  " + "\n  ".join(report.failures), pytrace=False)


# =========================================================================== reporting


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    recorder = item.stash.get(RECORDER_KEY, None)
    if rep.when == "teardown" and recorder is not None:
        outcomes = [getattr(item, f"rep_{w}", None) for w in ("setup", "call", "teardown")]
        outcome = "passed"
        for r in outcomes:
            if r is None:
                continue
            if r.failed:
                outcome = "failed" if r.when == "call" else "error"
                break
            if r.skipped:
                outcome = "xfailed" if hasattr(r, "wasxfail") else "skipped"
        call_rep = getattr(item, "rep_call", None)
        if call_rep is not None and call_rep.passed and hasattr(call_rep, "wasxfail"):
            outcome = "xpassed"
        events = list(recorder)
        extra = item.stash.get(RESULTS_KEY, {})
        doc = item.obj.__doc__ if hasattr(item, "obj") else ""
        _RESULTS.append(
            {
                "nodeid": item.nodeid,
                "name": item.name,
                "outcome": outcome,
                "duration": round(sum(r.duration for r in outcomes if r is not None), 3),
                "doc": " ".join((doc or "").split()),
                "faults": [str(e.get("what") or e["kind"]) for e in events if e["source"] == "fault"],
                "timings": timings(events),
                "events": events,
                "longrepr": str(next((r.longrepr for r in outcomes if r is not None and r.failed), "") or "")[-1500:],
                **extra,
            }
        )
    return rep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report_dir = session.config.getoption("--report-dir")
    if not report_dir or not _RESULTS:
        return
    from hil.rig.report import write_report

    write_report(Path(report_dir), _RESULTS, target=session.config.getoption("--target") or "none", bench=session.config.getoption("--bench"), started=_STARTED)


_STARTED = time.time()

