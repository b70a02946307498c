"""Waits, the invariants checked after every scenario (hil-rig.md §4.8), and the timings
derived from a timeline (§4.9)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hil.rig.device import Device, wait_until
from hil.rig.timeline import Recorder
from ota_daemon.state import JournalData

#: reboots a scenario may cause unless it declares a budget (``hil_reboots`` marker)
DEFAULT_REBOOT_BUDGET = 3


def kinds(device: Device, *, progress: bool = False) -> list[str]:
    """The ``event`` attribute of every event the daemon recorded, in order."""
    return [str(e.get("attributes", {}).get("event")) for e in device.events() if progress or e.get("attributes", {}).get("event") != "progress"]


def events_of(device: Device, kind: str) -> list[dict[str, Any]]:
    return [e for e in device.events() if e.get("attributes", {}).get("event") == kind]


def describe(device: Device) -> str:
    try:
        st = device.boot_state()
        boot = f"booted {st.booted}, default {st.default}, try {st.try_next}"
    except Exception as exc:
        boot = f"boot state unreadable: {exc}"
    status = device.status()
    journal = device.journal()
    return (
        f"{boot}; journal phase {journal.get('phase')}; status state {status.get('state')}, current {status.get('currentVersion')}, "
        f"lastError {str(status.get('lastError'))[:160]!r}; daemon running {device.daemon_running()}; events {kinds(device)[-8:]}"
    )


def wait_settled(device: Device, version: str, *, timeout: float = 30.0) -> None:
    """Booted and committed on ``version``, the journal idle, the daemon running and reporting it."""

    def settled() -> bool:
        st = device.boot_state()
        return (
            device.daemon_running()
            and st.committed
            and st.try_next is None
            and st.slots[st.booted].version == version
            and device.journal().get("phase", "idle") == "idle"
            and device.status().get("currentVersion") == version
        )

    wait_until(settled, timeout=timeout, what=f"the device settled on {version}", describe=lambda: describe(device))


def wait_event(device: Device, kind: str, *, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]]:
        found = events_of(device, kind)
        return found if len(found) >= count else []

    return wait_until(
        enough,
        timeout=timeout,
        what=f"{count} '{kind}' event(s)",
        describe=lambda: describe(device),
    )


def reboots(device: Device) -> int:
    """Boots after the first power-on."""
    return sum(1 for b in device.boots() if b.reason != "power-on")


@dataclass
class InvariantReport:
    failures: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str, recorder: Recorder) -> None:
        self.checked.append(name)
        recorder.record("check", name, ok=ok, detail=detail)
        if not ok:
            self.failures.append(f"{name}: {detail}")


def check_invariants(device: Device, recorder: Recorder, *, reboot_budget: int, allow_tracebacks: bool, settle_timeout: float = 30.0) -> InvariantReport:
    """hil-rig.md §4.8, after every scenario. Returns every failure, not just the first."""
    report = InvariantReport()

    # 1. never bricked: booted, committed, the daemon running and idle within T
    def up() -> bool:
        st = device.boot_state()
        return device.daemon_running() and st.committed and device.journal().get("phase", "idle") == "idle"

    try:
        wait_until(up, timeout=settle_timeout, what="booted, committed, daemon running and idle", describe=lambda: describe(device))
        report.check("never-bricked", True, "booted and the daemon running", recorder)
    except AssertionError as exc:
        report.check("never-bricked", False, str(exc), recorder)
        return report
    st = device.boot_state()

    # 2. booted slot valid; the default slot bootable and its version is the daemon's current version
    default = st.slots.get(st.default)
    report.check("booted-slot", st.booted in st.slots and st.booted in ("a", "b"), f"booted {st.booted!r}", recorder)
    report.check("default-bootable", default is not None and not default.bad and default.version is not None, f"default slot {st.default}: {default}", recorder)
    try:
        wait_until(lambda: device.status().get("currentVersion") == (default.version if default else None), timeout=10, what="the daemon to report the running version")
        report.check("current-version", True, f"{default.version if default else None}", recorder)
    except AssertionError:
        report.check("current-version", False, f"daemon reports {device.status().get('currentVersion')!r}, default slot runs {default.version if default else None!r}", recorder)

    # 3. no slot other than the booted one armed
    report.check("nothing-armed", st.try_next is None, f"try_next = {st.try_next!r}", recorder)

    # 4. persistent state parses; no orphaned partial files at rest; no stale lock
    try:
        JournalData.model_validate(device.journal() or {})
        report.check("journal-parses", True, "journal.json validates", recorder)
    except ValueError as exc:
        report.check("journal-parses", False, f"journal.json does not validate: {str(exc)[:200]}", recorder)
    state = device.status().get("state")
    partial = [f for f in device.cache_files() if ".partial" in f]
    report.check(
        "no-orphan-partials",
        not (partial and state in ("completed", "idle")),
        f"status {state!r}, partial files {partial}",
        recorder,
    )
    holder = device.lock_holder()
    stale = holder is not None and not device.daemon_running()
    report.check("no-stale-lock", not stale, f"lock holder {holder}", recorder)

    # 5. the report log agrees with the final state
    completed = events_of(device, "completed")
    per_attempt = Counter(e["attributes"].get("attemptId") or e["attributes"].get("dedupe") for e in completed)
    dupes = [a for a, n in per_attempt.items() if n > 1]
    report.check("no-duplicate-success", not dupes, f"attempts reported completed twice: {dupes}", recorder)
    terminal = [e for e in device.events() if e.get("attributes", {}).get("event") in ("completed", "rollback")]
    running = default.version if default else None
    if terminal and terminal[-1]["attributes"]["event"] == "completed":
        said = terminal[-1]["attributes"].get("currentVersion")
        report.check("success-matches-running", said == running, f"last success reported {said!r}, running {running!r}", recorder)
    else:
        report.check("success-matches-running", True, "no success reported last", recorder)

    # 6. reboots within budget
    count = reboots(device)
    report.check("reboot-budget", count <= reboot_budget, f"{count} reboots, budget {reboot_budget}", recorder)

    # 7. no tracebacks unless the scenario expects them
    tracebacks = sum(1 for e in recorder.select("daemon", "traceback"))
    report.check("no-tracebacks", allow_tracebacks or tracebacks == 0, f"{tracebacks} traceback(s) in the daemon log", recorder)
    report.check("no-crash-loop", not recorder.select("rig", "start-limit-hit"), "the supervisor never gave up restarting", recorder)
    return report


def timings(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-state timings and counters derived from a scenario's timeline."""

    def first(source: str, kind: str, after: float = -1.0) -> float | None:
        for e in events:
            if e["source"] == source and e["kind"] == kind and e["mono"] > after:
                return float(e["mono"])
        return None

    out: dict[str, Any] = {}
    start = first("daemon", "update_available")
    done = first("daemon", "completed", start or -1.0) if start is not None else None
    if start is not None and done is not None:
        out["time_to_update_s"] = round(done - start, 3)
    dl = first("daemon", "downloading")
    dld = first("daemon", "downloaded", dl or -1.0) if dl is not None else None
    if dl is not None and dld is not None:
        out["download_s"] = round(dld - dl, 3)
    inst = first("daemon", "installing")
    reb = first("daemon", "rebooting", inst or -1.0) if inst is not None else None
    if inst is not None and reb is not None:
        out["install_s"] = round(reb - inst, 3)
    if reb is not None:
        up = first("rig", "daemon-start", reb)
        if up is not None:
            out["reboot_downtime_s"] = round(up - reb, 3)
        commit = first("daemon", "completed", reb)
        if commit is not None:
            out["reboot_to_commit_s"] = round(commit - reb, 3)
    requests = [e for e in events if e["source"] == "hub" and e["kind"] == "request"]
    out["hub_requests"] = len(requests)
    out["hub_bytes"] = sum(int(e.get("bytes") or 0) for e in requests)
    out["range_requests"] = sum(1 for e in requests if e.get("range"))
    out["reboots"] = sum(1 for e in events if e["source"] == "boot" and e["kind"] == "boot" and e.get("reason") != "power-on")
    out["power_cuts"] = sum(1 for e in events if e["source"] == "power" and e["kind"] == "cut")
    out["faults"] = sum(1 for e in events if e["source"] == "fault")
    return out
